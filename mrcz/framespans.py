"""Where each z-slice of an MRC/MRCZ file lies, and reading slices by position alone.

:func:`index_frames` is the one place the lazy readers (``readMRC(useMemmap=True)``
on compressed files, :func:`mrcz.to_dask`) learn frame offsets from; today it
walks the blosc chunk headers of a compressed data block (one 32-byte read per
frame, nothing decompressed). A :class:`FrameSpan` is a few consecutive slices
as ``(path, offset, size)``: it holds no open file, pickles in a few hundred
bytes, and :func:`read_span` reads exactly its bytes and decodes them.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from . import codec, header as hdr
from .decode import to_native, unpack_uint4
from .errors import CorruptDataError, UnsupportedError, describe


@dataclasses.dataclass(frozen=True)
class FrameFormat:
    """How every z-slice of one file is stored; no position.

    ``stored`` is the on-disk dtype (file byte order); ``compressed``: one blosc
    chunk per slice; ``uint4``: two pixels per byte (mode 101); ``widened_uint8``:
    uint8 data stored as uint16.
    """

    name: str
    frame_shape: tuple[int, int]
    stored: np.dtype
    compressed: bool
    uint4: bool = False
    widened_uint8: bool = False

    @classmethod
    def of(cls, info: hdr.HeaderInfo, name: str) -> FrameFormat:
        return cls(name, tuple(info.shape[1:]), info.dtype, info.compressor is not None,
                   info.mode == hdr.MODE_UINT4, info.widened_uint8)

    @property
    def dtype(self) -> np.dtype:
        """The dtype readers return (native byte order)."""
        if self.stored.names:
            return np.dtype(np.complex64)
        if self.widened_uint8:
            return np.dtype(np.uint8)
        return self.stored.newbyteorder("=")

    @property
    def stored_shape(self) -> tuple[int, int]:
        ny, nx = self.frame_shape
        return (ny, (nx + 1) // 2) if self.uint4 else (ny, nx)

    def decode_into(self, raw: memoryview, out: np.ndarray) -> None:
        """Decode the bytes of ``len(out)`` consecutive slices into ``out`` (count, ny, nx)."""
        if not self.compressed:
            stored = np.frombuffer(raw, dtype=self.stored).reshape(len(out), *self.stored_shape)
            if self.uint4:
                out[...] = unpack_uint4(stored, self.frame_shape[1])
            else:
                out[...] = to_native(stored, self.widened_uint8)
            return
        direct = out.dtype == self.stored and out.flags.c_contiguous
        position = 0
        for frame in out:
            header = codec.ChunkHeader.parse(bytes(raw[position:position + codec.CHUNK_HEADER_BYTES]))
            chunk = raw[position:position + header.cbytes]
            target = frame if direct else np.empty(self.frame_shape, dtype=self.stored)
            codec.decompress_into(chunk, target, self.name)
            if not direct:
                frame[...] = to_native(target, self.widened_uint8)
            position += header.cbytes
        if position != len(raw):
            raise CorruptDataError(f"{self.name}: {len(out)} chunks hold {position} bytes, "
                                   f"not the {len(raw)} indexed")


@dataclasses.dataclass(frozen=True)
class FrameSpan:
    """Z-slices ``first .. first+count-1`` of ``path``: bytes ``offset .. offset+size-1``."""

    path: str
    first: int
    count: int
    offset: int
    size: int
    format: FrameFormat


def read_span(span: FrameSpan, out: np.ndarray | None = None) -> np.ndarray:
    """Read exactly the bytes of ``span`` and decode them into ``out`` (count, ny, nx)."""
    if out is None:
        out = np.empty((span.count, *span.format.frame_shape), dtype=span.format.dtype)
    raw = memoryview(np.empty(span.size, dtype=np.uint8))
    fd = os.open(span.path, os.O_RDONLY)
    try:
        done = 0
        while done < span.size:
            got = os.preadv(fd, [raw[done:]], span.offset + done)
            if not got:
                raise CorruptDataError(f"{span.format.name}: slices {span.first}.."
                                       f"{span.first + span.count - 1} are truncated")
            done += got
    finally:
        os.close(fd)
    span.format.decode_into(raw, out)
    return out


@dataclasses.dataclass(frozen=True)
class FrameIndex:
    """Every z-slice of one file: ``offsets[k]`` .. ``offsets[k+1]`` are slice k's bytes."""

    path: str
    format: FrameFormat
    offsets: np.ndarray  # int64, len nz + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.offsets) - 1, *self.format.frame_shape)

    @property
    def dtype(self) -> np.dtype:
        return self.format.dtype

    def span(self, first: int, count: int) -> FrameSpan:
        start, end = int(self.offsets[first]), int(self.offsets[first + count])
        return FrameSpan(self.path, first, count, start, end - start, self.format)

    def spans(self, frames_per_span: int = 1) -> list[FrameSpan]:
        """Consecutive spans of ``frames_per_span`` slices (the last may be shorter)."""
        if frames_per_span < 1:
            raise ValueError(f"frames_per_span must be at least 1, got {frames_per_span}")
        nz = self.shape[0]
        return [self.span(k, min(frames_per_span, nz - k)) for k in range(0, nz, frames_per_span)]

    def select(self, first: int, count: int) -> FrameIndex:
        """The index of slices ``first .. first+count-1`` only."""
        return FrameIndex(self.path, self.format, self.offsets[first:first + count + 1])

    def read(self, first: int, count: int) -> np.ndarray:
        """Slices ``first .. first+count-1`` as a (count, ny, nx) array."""
        out = np.empty((count, *self.format.frame_shape), dtype=self.dtype)
        if count:
            read_span(self.span(first, count), out)
        return out


def index_frames(path: str | os.PathLike, convention: str = "ccpem") -> FrameIndex:
    """Index the z-slices of a plain or compressed MRC file (not a .gz/.bz2/.zst stream).

    ``convention`` is ``'ccpem'`` (MRC2014) or ``'eman2'`` mode numbers.

    Raises :class:`~mrcz.CorruptDataError` for a truncated or inconsistent file and
    :class:`~mrcz.UnsupportedError` for one that cannot be read by position.
    """
    name = describe(path)
    path = os.path.abspath(os.fspath(path))
    with open(path, "rb") as f:
        info = hdr.parse_header(f.read(hdr.HEADER_BYTES), name, convention)
        return index_open_file(path, info, f.fileno(), name)


def index_open_file(path: str, info: hdr.HeaderInfo, fd: int, name: str) -> FrameIndex:
    """As :func:`index_frames`, for the file ``path`` already open as ``fd``, its header
    parsed into ``info`` (nothing is opened or parsed again)."""
    size = os.fstat(fd).st_size
    nz, ny, nx = info.shape
    if info.compressor is None:
        slice_bytes = hdr.stored_nbytes(info) // nz
        end = info.data_offset + nz * slice_bytes
        if end > size:
            raise CorruptDataError(f"{name}: file is {size} bytes but its header "
                                   f"describes {end} (truncated or not an MRC file)")
        offsets = info.data_offset + slice_bytes * np.arange(nz + 1, dtype=np.int64)
    else:
        if info.mode == hdr.MODE_UINT4:
            raise UnsupportedError(f"{name}: compressed uint4 (mode 101) is not defined")
        chunks = codec.chunk_table(fd, info.data_offset, nz, size,
                                   ny * nx * info.dtype.itemsize, name).chunks
        offsets = np.array([offset for offset, _ in chunks] + [sum(chunks[-1])],
                           dtype=np.int64)
    return FrameIndex(os.path.abspath(path), FrameFormat.of(info, name), offsets)


def file_identity(path: str | os.PathLike) -> tuple[Any, ...]:
    """``(absolute path, size, mtime_ns)``: what names one version of a file."""
    stat = os.stat(path)
    return os.path.abspath(os.fspath(path)), stat.st_size, stat.st_mtime_ns
