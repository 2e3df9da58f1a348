"""Blosc chunks: compress a frame, decompress a chunk into an array, index chunk headers.

This module knows nothing about MRC files. Each z-slice of an MRCZ file is one
blosc chunk whose 16-byte header records its own compressed size, so the chunks
of a data block can be indexed without decompressing anything.

python-blosc 1.x keeps the block size and thread count in process-global state
that it reads at the start of every call. :class:`_BloscSettings` serialises
changes of that state, so concurrent calls never see each other's block size
(and so write the same bytes as serial calls would).
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import blosc
import numpy as np

from .errors import CorruptDataError, UnsupportedError


class MissingCodecError(UnsupportedError, RuntimeError):
    """A blosc2 codec plugin is not installed."""

CHUNK_HEADER_BYTES = 16
#: Largest frame one blosc 1.x chunk can hold.
MAX_CHUNK_NBYTES = blosc.MAX_BUFFERSIZE
BLOSC1_CODECS = frozenset(blosc.compressor_list())
#: Block size used for large frames: best ratio and speed for counted movies (bench/).
LARGE_FRAME_BLOCKSIZE = 2**20

blosc.set_releasegil(True)


@dataclasses.dataclass(frozen=True)
class ChunkHeader:
    """The 16-byte header at the start of every blosc chunk."""

    version: int
    versionlz: int
    flags: int
    typesize: int
    nbytes: int
    blocksize: int
    cbytes: int

    @classmethod
    def parse(cls, raw: bytes) -> ChunkHeader:
        fields = np.frombuffer(raw[:CHUNK_HEADER_BYTES], dtype=np.uint8)
        sizes = np.frombuffer(raw[4:CHUNK_HEADER_BYTES], dtype="<u4")
        return cls(*(int(v) for v in fields[:4]), *(int(v) for v in sizes))

    @property
    def shuffle(self) -> str:
        """``'bit'``, ``'byte'`` or ``'none'`` as recorded in the flags."""
        if self.flags & 0x4:
            return "bit"
        return "byte" if self.flags & 0x1 else "none"


class _BloscSettings:
    """Lets calls that need the same global block size run together, others wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._blocksize: int | None = None

    @contextmanager
    def blocksize(self, blocksize: int) -> Iterator[None]:
        with self._cond:
            while self._active and self._blocksize != blocksize:
                self._cond.wait()
            if self._blocksize != blocksize:
                blosc.set_blocksize(blocksize)
                blosc.set_nthreads(1)
                self._blocksize = blocksize
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()


_SETTINGS = _BloscSettings()


def choose_blocksize(frame_nbytes: int) -> int:
    """Blosc block size for one frame (0 lets blosc choose).

    Frames of 4 MiB and more use 1 MiB blocks (measured best ratio and speed on
    counted movies); smaller frames use the largest power of two up to a quarter
    of the frame, at least 64 KiB, or blosc's own choice when smaller still.
    """
    if frame_nbytes >= 4 * LARGE_FRAME_BLOCKSIZE:
        return LARGE_FRAME_BLOCKSIZE
    if frame_nbytes >= 4 * 2**16:
        return 1 << int(np.log2(frame_nbytes // 4))
    return 0


def compress_frame(frame: np.ndarray, cname: str, clevel: int, blocksize: int,
                   backend: str | None = None) -> bytes:
    """Compress one frame into one bit-shuffled blosc chunk.

    ``backend='blosc2'`` writes blosc2-format chunks (only blosc2 reads them);
    anything else writes blosc 1.x chunks, which every mrcz release reads.
    """
    frame = np.ascontiguousarray(frame)
    if frame.nbytes > MAX_CHUNK_NBYTES:
        raise UnsupportedError(f"a frame of {frame.nbytes} bytes exceeds blosc's "
                               f"{MAX_CHUNK_NBYTES}-byte chunk limit")
    if backend == "blosc2":
        return _compress_blosc2(frame, cname, clevel, blocksize)
    with _SETTINGS.blocksize(blocksize):
        return blosc.compress_ptr(frame.ctypes.data, frame.size, frame.dtype.itemsize,
                                  clevel=clevel, shuffle=blosc.BITSHUFFLE, cname=cname)


def _compress_blosc2(frame: np.ndarray, cname: str, clevel: int, blocksize: int) -> bytes:
    blosc2 = _blosc2()
    try:
        codec = blosc2.Codec[cname.upper()]
    except KeyError:
        raise ValueError(f"blosc2 has no codec named {cname!r}") from None
    try:
        return blosc2.compress2(frame, codec=codec, clevel=clevel,
                                filters=[blosc2.Filter.BITSHUFFLE],
                                typesize=frame.dtype.itemsize, blocksize=blocksize, nthreads=1)
    except RuntimeError as err:
        raise MissingCodecError(f"blosc2 could not compress with {cname!r} ({err}); the codec "
                                f"may need the blosc2-{cname} plugin package") from None


def _blosc2():
    try:
        import blosc2
    except ImportError:
        raise UnsupportedError(
            "this file holds chunks written by blosc2 (the original's backend='blosc2'); "
            "reading them needs the blosc2 package: pip install 'mrcz[blosc2]'") from None
    return blosc2


def decompress_into(chunk: memoryview | bytes, out: np.ndarray, name: str) -> None:
    """Decompress one chunk straight into the contiguous array ``out``."""
    header = ChunkHeader.parse(bytes(chunk[:CHUNK_HEADER_BYTES]))
    if header.nbytes != out.nbytes:
        raise CorruptDataError(f"{name}: a chunk holds {header.nbytes} bytes where the header "
                               f"dimensions need {out.nbytes}")
    try:
        if header.version <= 2:
            written = blosc.decompress_ptr(chunk, out.ctypes.data)
        else:
            _blosc2().decompress(chunk, dst=out.view(np.uint8).reshape(-1))
            written = out.nbytes
    except (RuntimeError, ValueError, TypeError) as err:
        raise CorruptDataError(f"{name}: a compressed chunk cannot be decoded ({err})") from None
    if written != out.nbytes:
        raise CorruptDataError(f"{name}: a chunk decoded to {written} bytes, not {out.nbytes}")


def index_chunks(fd: int, start: int, count: int, end: int, frame_nbytes: int,
                 name: str) -> list[tuple[int, int]]:
    """Walk ``count`` chunk headers from byte ``start``; return ``(offset, cbytes)`` pairs.

    Every chunk must lie before byte ``end`` and decode to ``frame_nbytes``.
    """
    chunks = []
    offset = start
    for index in range(count):
        raw = os.pread(fd, CHUNK_HEADER_BYTES, offset)
        if len(raw) < CHUNK_HEADER_BYTES:
            raise CorruptDataError(f"{name}: data block ends before chunk {index} of {count} "
                                   "(truncated file)")
        header = ChunkHeader.parse(raw)
        if header.nbytes != frame_nbytes or header.cbytes < CHUNK_HEADER_BYTES:
            raise CorruptDataError(
                f"{name}: chunk {index} header is inconsistent (holds {header.nbytes} bytes in "
                f"{header.cbytes}; each frame needs {frame_nbytes})")
        if offset + header.cbytes > end:
            raise CorruptDataError(f"{name}: chunk {index} of {count} runs past the end of the "
                                   "file (truncated file)")
        chunks.append((offset, header.cbytes))
        offset += header.cbytes
    return chunks
