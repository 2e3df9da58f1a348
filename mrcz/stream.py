"""Frame-level access: a writer that appends frames as they arrive, a reader of any frame.

:class:`MRCZWriter` is for acquisition software: frames are handed over one by
one (or a few at a time), compressed in the background on the shared pool and
appended in order, so only a few frames are ever held in memory. The header
(frame count, exact statistics, packed size) is written on ``close()`` and the
file renamed into place, so an interrupted acquisition leaves no file behind.

:class:`MRCZReader` returns any z-slice of a plain or compressed file without
loading the rest (compressed files: the chunk headers are walked once on open).

Both share the engine of every other reader and writer: :class:`MRCZWriter`
appends through :class:`mrcz.writer.FrameAppender`, :class:`MRCZReader` reads
from one :class:`mrcz.reader.MRCSource`.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import codec, header as hdr
from .casting import check_casting, check_values
from .fileops import atomic_output
from .errors import CorruptDataError, MRCZError, UnsupportedError, describe
from .frames import FrameSource
from .decode import to_native, unpack_uint4
from .reader import MRCSource, check_plain_size, read_image
from .units import ANGSTROM
from .workers import ordered_map, threads
from .writer import FrameAppender, check_compressor, plan_write, put_stats, stats_wanted

__all__ = ["MRCZWriter", "MRCZReader", "iter_frames", "image_of", "FrameAppender"]

# ----------------------------------------------------------------------------- writer

class MRCZWriter:
    r"""Write a movie frame by frame, as a detector delivers it.

    Use as a context manager::

        with MRCZWriter("movie.mrcz", (4096, 4096), np.int8, compressor="zstd") as w:
            for frame in camera:
                w.write(frame)

    The file is byte for byte what ``writeMRC(np.stack(frames), ...)`` writes
    with the same arguments (``slices=1``: what ``writeMRC(list_of_frames)``
    writes). An exception inside the ``with`` block (or :meth:`abort`) leaves no
    new file and whatever was at ``path`` untouched.

    Parameters
    ----------
    path : output path; written beside it and renamed into place on ``close()``.
    shape : ``(ny, nx)`` of every frame, or an example frame (its shape and dtype
        are used; it is not written).
    dtype : dtype of the frames (default: the example frame's).
    compressor, clevel, pixelsize, pixelunits, voltage, C3, gain, meta, endian,
    quickStats, backend, shuffle : as for :func:`mrcz.writeMRC` (``shuffle='auto'``
        decides from the first frame written).
    n_threads : frames compressed in parallel (default: the number of cores).
    slices : 0 (one 3-D array) or 1 (a list of 2-D frames), as writeMRC records it.

    Frames are compressed in the background: do not change a frame's contents
    after handing it to :meth:`write` (pass a copy if the camera reuses buffers).
    """

    def __init__(self, path: str | os.PathLike, shape: Any, dtype: Any = None,
                 compressor: str | None = None, clevel: int = 1,
                 pixelsize: Any = (0.1, 0.1, 0.1), pixelunits: str = ANGSTROM,
                 voltage: float = 0.0, C3: float = 0.0, gain: float = 1.0,
                 meta: dict | None = None, n_threads: int | None = None, endian: str = "le",
                 slices: int = 0, quickStats: bool = True, backend: str | None = None,
                 shuffle: str | None = "bit", *,
                 casting: str = "same_value", durable: bool = True) -> None:
        self.name = describe(path)
        check_casting(casting)
        self._casting = casting
        self._lock = threading.Lock()
        (self._ny, self._nx), self.dtype = _template(shape, dtype, self.name)
        target = dtype if isinstance(dtype, str) and "uint4" in dtype.lower() else self.dtype
        check_compressor(compressor, backend, clevel)
        codec.check_shuffle(shuffle)
        if slices not in (0, 1):
            raise ValueError(f"{self.name}: slices must be 0 or 1, got {slices}")
        self._slices = slices
        # Planned as a stack of frames: the extended header is fixed before the first
        # frame, and a list of one frame (which would need its grouping in the JSON)
        # reads back as one image.
        template = FrameSource((2, self._ny, self._nx), self.dtype, slices, None, False)
        self._plan = plan_write(template, target, self.name, meta, endian, pixelsize,
                                pixelunits, voltage, C3, gain, compressor, clevel)
        stored, mode, meta_bytes = self._plan.stored, self._plan.mode, self._plan.meta_bytes
        n_threads = threads(n_threads)
        self.nz = 0
        self._stack = contextlib.ExitStack()
        self._f = self._stack.enter_context(atomic_output(path, durable=durable))
        self._open = True
        try:
            self._f.write(bytes(hdr.HEADER_BYTES) + meta_bytes)
            self._appender = FrameAppender(self._f, stored, mode, compressor, clevel, backend,
                                           stats_wanted(quickStats, compressor),
                                           n_threads, self.name, shuffle=shuffle)
        except BaseException as err:
            self._discard(err)
            raise

    def write(self, frames: Any) -> None:
        """Append one 2-D frame or a 3-D stack of frames (thread-safe: the frames of
        one call stay together, calls from several threads take turns)."""
        with self._lock:
            self._write(frames)

    def _write(self, frames: Any) -> None:
        if not self._open:
            raise ValueError(f"{self.name}: the writer is closed")
        stack = np.asarray(frames)
        stack = stack[None] if stack.ndim == 2 else stack
        if stack.ndim != 3 or stack.shape[1:] != (self._ny, self._nx):
            raise ValueError(f"{self.name}: frames of shape {self._ny} x {self._nx} expected, "
                             f"got an array of shape {np.shape(frames)}")
        check_values(stack, self.dtype, self._casting, self.name)
        for frame in stack:
            self._appender.put(frame)
            self.nz += 1

    def close(self) -> None:
        """Finish compressing, write the final header and rename the file into place."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if not self._open:
            return
        try:
            self._appender.finish()
            if not self.nz:
                raise MRCZError(f"{self.name}: no frames were written")
            rec = self._final_header()
            self._f.seek(0)
            self._f.write(rec.tobytes())
        except BaseException as err:
            self._discard(err)
            raise
        self._open = False
        self._stack.close()

    def abort(self) -> None:
        """Stop writing and delete the partial file (the old file at ``path`` stays)."""
        with self._lock:
            if self._open:
                self._discard(MRCZError(f"{self.name}: writing aborted"))

    def _final_header(self) -> np.ndarray:
        source = FrameSource((self.nz, self._ny, self._nx), self.dtype, self._slices, None,
                             False)
        rec = self._plan.header(source)
        if self._plan.compressor:
            rec["packed_bytes"] = self._appender.data_bytes
        put_stats(rec, self._appender.stats)
        return rec

    def _discard(self, err: BaseException) -> None:
        self._open = False
        appender = getattr(self, "_appender", None)
        if appender is not None:
            appender.cancel()
        self._stack.__exit__(type(err), err, err.__traceback__)

    def __enter__(self) -> MRCZWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        with self._lock:
            if self._open:
                self._discard(exc)


def _template(shape: Any, dtype: Any, name: str) -> tuple[tuple[int, int], np.dtype]:
    """``((ny, nx), dtype)`` from a shape tuple or an example frame."""
    if hasattr(shape, "shape") and hasattr(shape, "dtype"):
        dtype = shape.dtype if dtype is None else dtype
        shape = shape.shape[-2:]
    if dtype is None:
        raise TypeError(f"{name}: give the frames' dtype (or an example frame)")
    try:
        ny, nx = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: shape must be (ny, nx), got {shape!r}") from None
    if ny < 1 or nx < 1:
        raise ValueError(f"{name}: frames of shape {ny} x {nx} are empty")
    if isinstance(dtype, str) and dtype.lower().strip("<>|=") == "uint4":
        return (ny, nx), np.dtype(np.uint8)
    return (ny, nx), np.dtype(dtype)


# ----------------------------------------------------------------------------- reader

class MRCZReader:
    r"""Random access to the z-slices of a plain or compressed MRC/MRCZ file.

    ``len(reader)`` is the number of z-slices; ``reader[k]`` is one slice (2-D),
    ``reader[a:b]`` (any slice or list of indices) a 3-D array; iterating yields
    slices in order, decompressing a few ahead on the shared pool. Only the
    slices asked for are read. ``header`` is the dict readMRC returns. Plain files
    inside gzip, bzip2 or zstd can be read forward only. With ``verify`` (the
    default) every compressed slice read is checked against the CRC-32C of the
    file's frame index; a file with an index finds any slice in one read.
    A reader opened by path pickles (the copy reopens the file by that absolute
    path).
    """

    def __init__(self, path: str | os.PathLike, n_threads: int | None = None,
                 pixelunits: str = ANGSTROM, fileConvention: str = "ccpem",
                 verify: bool = True) -> None:
        self._reopen_args = (os.path.abspath(os.fspath(path)), n_threads, pixelunits,
                             fileConvention, verify)
        src = MRCSource.open(path, fileConvention)
        try:
            self._attach(src, n_threads, pixelunits, verify)
        except BaseException:
            src.close()
            raise

    @classmethod
    def of_source(cls, src: MRCSource, n_threads: int | None = None,
                  pixelunits: str = ANGSTROM, verify: bool = True) -> MRCZReader:
        """A reader of the already open ``src`` (closing the reader closes it)."""
        reader = cls.__new__(cls)
        reader._reopen_args = (src.path, n_threads, pixelunits, src.convention, verify)
        reader._attach(src, n_threads, pixelunits, verify)
        return reader

    def _attach(self, src: MRCSource, n_threads: int | None, pixelunits: str,
                verify: bool) -> None:
        self.name, self.source = src.name, src
        self._f, self._fd, self._info = src.file, src.fd, src.info
        self._n_threads = threads(n_threads)
        self._lock = threading.Lock()
        info = src.info
        if info.compressor is not None:
            if info.mode == hdr.MODE_UINT4:
                raise UnsupportedError(f"{self.name}: compressed uint4 (mode 101) is not "
                                       "defined")
            if self._fd is None:
                raise UnsupportedError(f"{self.name}: compressed MRCZ can only be read from a "
                                       "regular file")
            table = src.chunk_table(verify)
            self._chunks, self._crcs = table.chunks, table.crcs if verify else None
        else:
            check_plain_size(self._f, info, self.name)
            self._slice_bytes = hdr.stored_nbytes(info) // info.shape[0]
        self.header = src.header_dict(pixelunits)
        self.shape = info.shape
        self.dtype = np.dtype(self.header["dtype"]).newbyteorder("=")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice | Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read(int(key), blosc_threads=self._plan([key])[1])
        indices = range(len(self))[key] if isinstance(key, slice) else [
            self._index(int(k)) for k in np.asarray(key).ravel()]
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        at_once, blosc_threads = self._plan(indices)
        for _ in ordered_map(lambda i: self.read(indices[i], out[i], blosc_threads),
                             range(len(indices)), at_once):
            pass
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        at_once, blosc_threads = self._plan(range(len(self)))
        return ordered_map(lambda k: self.read(k, blosc_threads=blosc_threads),
                           range(len(self)), at_once)

    def _plan(self, indices: Any) -> tuple[int, int]:
        """``(frames read at once, blosc threads per frame)``."""
        if self._fd is None:  # a forward-only stream (.gz, .bz2, .zst): in order
            return 1, 1
        if self._info.compressor is None or not len(indices):
            return max(1, min(self._n_threads, len(indices))), 1
        return codec.read_plan([self._chunks[self._index(int(k))] for k in indices],
                               self._n_threads)

    def read(self, k: int, out: np.ndarray | None = None, blosc_threads: int = 1) -> np.ndarray:
        """Z-slice ``k`` as a 2-D array (into ``out`` when given).

        ``blosc_threads > 1`` decompresses the frame's blocks in parallel (for a
        frame read alone).
        """
        k = self._index(k)
        info = self._info
        if out is None:
            out = np.empty(self.shape[1:], dtype=self.dtype)
        direct = (out.dtype == info.dtype and out.flags.c_contiguous
                  and info.mode != hdr.MODE_UINT4)
        raw = out if direct else np.empty(self._raw_shape(), dtype=info.dtype)
        if info.compressor is not None:
            codec.read_chunk_into(self._fd, self._chunks[k], k, raw, self.name, blosc_threads,
                                  None if self._crcs is None else self._crcs[k])
        else:
            self._read_plain(k, raw)
        if not direct:
            raw = unpack_uint4(raw, self.shape[2]) if info.mode == hdr.MODE_UINT4 else raw
            out[...] = to_native(raw, info.widened_uint8)
        return out

    def _raw_shape(self) -> tuple[int, int]:
        ny, nx = self.shape[1:]
        return (ny, (nx + 1) // 2) if self._info.mode == hdr.MODE_UINT4 else (ny, nx)

    def _index(self, k: int) -> int:
        nz = len(self)
        if not -nz <= k < nz:
            raise IndexError(f"{self.name}: slice {k} is outside the file's {nz} slices")
        return k % nz

    def _read_plain(self, k: int, out: np.ndarray) -> None:
        offset = self._info.data_offset + k * self._slice_bytes
        view = memoryview(out.reshape(-1).view(np.uint8))
        if self._fd is not None:
            got = os.preadv(self._fd, [view], offset)
        else:
            with self._lock:
                self._f.seek(offset)
                got = self._f.readinto(view)
        if got != len(view):
            raise CorruptDataError(f"{self.name}: slice {k} is truncated")

    def close(self) -> None:
        self._f.close()

    def __reduce__(self) -> tuple[type, tuple]:
        """Pickle by name: the copy reopens the file (and walks its index again)."""
        return MRCZReader, self._reopen_args

    def __enter__(self) -> MRCZReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_frames(path: str | os.PathLike, n_threads: int | None = None,
                verify: bool = True) -> Iterator[np.ndarray]:
    """Yield the z-slices of a plain or compressed file one by one."""
    with MRCZReader(path, n_threads, verify=verify) as reader:
        yield from reader


def image_of(src: MRCSource) -> tuple[Any, dict]:
    """``(image, header dict)`` of ``src`` for a copy: a one-thread frame reader of an
    array in a regular file (frames decoded as the writer asks; closed with ``src``),
    else what readMRC returns (lists of frames; streams, which read forwards only)."""
    if src.fd is not None and not src.slices():
        reader = MRCZReader.of_source(src, n_threads=1)
        return reader, reader.header
    return read_image(src)
