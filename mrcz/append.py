"""writeMRC(..., idx=k) on an existing file: overwrite or append z-slices in place.

Data are written first and the header last, so a write that dies half-way
leaves the old header (and with it the old, intact file contents) in force.
"""
from __future__ import annotations

import os

import numpy as np

from . import codec, frameindex, header as hdr
from .casting import check_values
from .errors import FormatError, UnsupportedError
from .fileops import named_error, open_for_update
from .frames import FrameSource
from .reader import MRCSource
from .stats import Stats
from .writer import FrameAppender, put_stats


def _old_stats(info: hdr.HeaderInfo) -> Stats:
    """The file's header statistics as a Stats (not known where the header says so)."""
    rec = info.record
    dmin, dmax, dmean, rms = (float(rec[k]) for k in ("dmin", "dmax", "dmean", "rms"))
    if dmax < dmin or dmean < dmin:
        return Stats(known=False)
    nz, ny, nx = info.shape
    count = nz * ny * nx
    return Stats(count, dmin, dmax, dmean, rms * rms * count if rms >= 0 else None)


def _check_source_values(source: FrameSource, info: hdr.HeaderInfo, casting: str,
                         name: str) -> None:
    """Refuse, before any byte is written, data the file's dtype would change."""
    uint4 = info.mode == hdr.MODE_UINT4
    target = np.dtype(np.uint8) if info.widened_uint8 else info.dtype
    for z in range(source.shape[0]):
        check_values(source.get(z), target, casting, name, uint4)


def write_at(source: FrameSource, path: str | os.PathLike, idx: int, clevel: int,
             backend: str | None, n_threads: int, with_rms: bool, name: str,
             casting: str = "same_value") -> None:
    """Write ``source`` at z-slice ``idx`` of the existing file ``path``.

    The file is locked (:func:`~mrcz.fileops.open_for_update`) for the whole
    update; values the file's dtype cannot keep are refused by ``casting``
    (:func:`~mrcz.casting.check_values`) before anything is written.
    """
    try:
        _update(source, path, idx, clevel, backend, n_threads, with_rms, name, casting)
    except OSError as err:  # e.g. a full disk: name the file, keep the errno
        raise named_error(err, name) from None


def _update(source: FrameSource, path: str | os.PathLike, idx: int, clevel: int,
            backend: str | None, n_threads: int, with_rms: bool, name: str,
            casting: str) -> None:
    with open_for_update(path) as f:
        info = MRCSource(f, name, path).info  # parsed off the update handle; f stays open
        _check_source_values(source, info, casting, name)
        nz, ny, nx = info.shape
        if source.shape[1:] != (ny, nx):
            raise FormatError(f"{name}: frames of {source.shape[1:]} cannot go into a file of "
                              f"{ny} x {nx} slices")
        if idx < 0:
            idx += nz
        if not 0 <= idx <= nz:
            raise IndexError(f"{name}: idx {idx} is outside 0..{nz} (the file's slices)")
        new_nz = max(nz, idx + source.shape[0])
        stats = _old_stats(info) if idx == nz else Stats(known=False)
        rec = np.array(info.record)
        if info.mode == hdr.MODE_COMPLEX_INT16:
            raise UnsupportedError(f"{name}: cannot write into a mode 3 (complex int16) file")
        if info.compressor is None:
            _write_plain_at(f, info, source, idx, n_threads, with_rms, name, stats)
        else:
            rec["packed_bytes"] = _append_compressed(f, info, source, idx, clevel, backend,
                                                     n_threads, with_rms, name, stats)
        if not info.mz_is_slices and int(rec["mz"]) == nz:
            rec["mz"] = new_nz
            rec["cella"][2] = rec["cella"][2] / nz * new_nz
        elif info.mz_is_slices or info.legacy_mrcz:
            rec["cella"][2] = rec["cella"][2] / nz * new_nz
        if nz == 1 < new_nz and info.written_by_us and info.compressor is None:
            rec["ispg"] = 1  # an image grown into a stack reads back as an array
        rec["nz"] = new_nz
        put_stats(rec, stats)
        f.seek(0)
        f.write(rec.tobytes())


def _write_plain_at(f, info: hdr.HeaderInfo, source: FrameSource, idx: int, n_threads: int,
                    with_rms: bool, name: str, total: Stats) -> None:
    slice_bytes = hdr.stored_nbytes(info) // info.shape[0]
    f.seek(info.data_offset + idx * slice_bytes)
    FrameAppender(f, info.dtype, info.mode, None, 0, None, with_rms, n_threads, name,
                  total).put_source(source)


def _append_compressed(f, info: hdr.HeaderInfo, source: FrameSource, idx: int, clevel: int,
                       backend: str | None, n_threads: int, with_rms: bool, name: str,
                       total: Stats) -> int:
    """Append compressed chunks after the last one; return the new size of the data block
    (chunks and frame index)."""
    nz, ny, nx = info.shape
    if idx != nz:
        raise UnsupportedError(f"{name}: compressed files can only be appended to "
                               f"(idx={nz}), not overwritten at idx={idx}")
    slices = int(info.record["mz"]) if info.mz_is_slices else 0
    if slices > 1 and source.shape[0] % slices:
        raise FormatError(f"{name}: the file holds frames of {slices} slices; "
                          f"{source.shape[0]} slices do not make whole frames")
    fd = f.fileno()
    index = _index_before_append(fd, info, source.shape[0], name)
    end = index.end
    f.seek(end)
    level = info.clevel if info.clevel is not None else clevel
    appender = FrameAppender(f, info.dtype, info.mode, info.compressor, level, backend,
                             with_rms, n_threads, name, total, end - info.data_offset,
                             index=index)
    appender.put_source(source)
    return appender.data_bytes


def _index_before_append(fd: int, info: hdr.HeaderInfo, new_slices: int,
                         name: str) -> frameindex.FrameIndex:
    """The verified frame index of the file's chunks, parked where the append cannot reach.

    A file without an index gets one now (its chunks are read once for their
    CRC-32C). A copy of the index is written past the furthest byte the new
    chunks can reach and the file cut there, so that until the append ends with
    a new index, the file still ends with an index of its old frames.
    """
    nz, ny, nx = info.shape
    frame_nbytes = ny * nx * info.dtype.itemsize
    index = codec.chunk_table(fd, info.data_offset, nz, os.fstat(fd).st_size, frame_nbytes,
                              name).frame_index(fd)
    parked = index.end + new_slices * (frame_nbytes + codec.EXTENDED_HEADER_BYTES)
    trailer = index.pack()
    os.ftruncate(fd, parked)
    os.pwrite(fd, trailer, parked)
    os.fsync(fd)
    return index
