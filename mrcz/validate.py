"""Check MRC2014 and MRCZ files: header words, sizes, chunk index and statistics.

:func:`validate_file` returns a list of :class:`Problem`; a file is valid when
none of them is an error (warnings point at things that are legal but
doubtful, or checks that could not be made).
"""
from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import codec, frameindex, header as hdr, meta as jsonmeta
from .errors import MRCZError
from .mrc import open_for_read, readMRC
from .stats import Stats
from .stream import iter_frames

ERROR, WARNING = "error", "warning"
#: Extended header types MRC2014 defines, plus MRCZ's JSON.
KNOWN_EXTTYP = {b"CCP4", b"MRCO", b"SERI", b"AGAR", b"FEI1", b"FEI2", b"HDF5", b"json"}
MACHINE_STAMPS = {(0x44, 0x44), (0x44, 0x41), (0x11, 0x11)}
#: Relative tolerance of the header mean and RMS against the data.
STATS_RTOL = 1e-3
#: Bytes decompressed at a time when a whole-file stream is read to its end.
STREAM_READ_BYTES = 2**20


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` is ``'error'`` or ``'warning'``."""

    severity: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


def is_valid(problems: list[Problem]) -> bool:
    """True when no problem is an error."""
    return not any(p.severity == ERROR for p in problems)


def validate_file(path: str | os.PathLike, check_data: bool = True,
                  deep: bool = False) -> list[Problem]:
    """Check one MRC/MRCZ file; returns the problems found (empty: valid).

    Parameters
    ----------
    path : the file (plain, MRCZ, or whole-file compressed if readMRC reads it).
    check_data : also read the data: every compressed chunk against its CRC-32C
        in the frame index, a whole-file gzip/bzip2/zstd stream to its end (its
        own CRC and length), and the header statistics against the data.
    deep : also decode every z-slice, even where the statistics are not known.
    """
    name = os.fspath(path)
    try:
        with open_for_read(path) as f:
            raw = f.read(hdr.HEADER_BYTES)
            size = _regular_size(f)
            info, problems = _check_header(raw, name)
            if info is None:
                return problems
            layout = _check_meta(f, info, name)
            if size is not None:
                layout += (_check_chunks(f, info, size, name, check_data) if info.compressor
                           else _check_plain_size(info, size))
    except MRCZError as err:
        return [Problem(ERROR, str(err))]
    if (check_data or deep) and size is None and is_valid(layout):
        layout += _check_stream(path, info)
    problems += layout
    if (check_data or deep) and is_valid(layout):  # the data can be read if its layout is sound
        if deep and size is not None:
            problems += _check_frames(path)
        problems += _check_statistics(path, info, seekable=size is not None)
    return problems


def _regular_size(f: Any) -> int | None:
    """Size of a regular file, or None for a decompressing stream."""
    try:
        if not isinstance(f, (io.BufferedReader, io.FileIO)):
            return None
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


def _check_header(raw: bytes, name: str) -> tuple[hdr.HeaderInfo | None, list[Problem]]:
    """Header words: size, mode, dims (fatal), then map ID, stamp, sampling, ..."""
    try:
        info = hdr.parse_header(raw, name)
    except MRCZError as err:
        return None, [Problem(ERROR, str(err))]
    rec = info.record
    problems: list[Problem] = []
    strict = ERROR if info.compressor is None else WARNING
    if bytes(rec["map"]) != b"MAP ":
        problems.append(Problem(ERROR, f"map ID is {bytes(rec['map'])!r}, not b'MAP '"))
    if tuple(int(v) for v in rec["machst"][:2]) not in MACHINE_STAMPS:
        problems.append(Problem(ERROR, "machine stamp "
                                f"{bytes(rec['machst'].astype(np.uint8)).hex()} is not "
                                "4444/4441 (little-endian) or 1111 (big-endian)"))
    problems += _check_sampling(info, strict)
    ispg = int(rec["ispg"])
    if not (0 <= ispg <= 230 or 400 <= ispg <= 630):
        problems.append(Problem(ERROR, f"space group {ispg} is not 0-230 or 400-630"))
    nlabl, labels = int(rec["nlabl"]), [bytes(x).strip(b"\0 ") for x in rec["label"]]
    used = sum(1 for x in labels if x)
    if not 0 <= nlabl <= 10 or any(labels[nlabl:]):
        problems.append(Problem(ERROR, f"nlabl is {nlabl} but {used} labels are used"))
    if int(rec["nversion"]) not in (20140, 20141):
        problems.append(Problem(strict, "nversion is "
                                f"{int(rec['nversion'])}, not 20140 or 20141 (MRC2014)"))
    exttyp = bytes(rec["exttyp"])
    if info.extended_bytes and exttyp not in KNOWN_EXTTYP:
        problems.append(Problem(ERROR, f"extended header type {exttyp!r} is not recognised"))
    if info.legacy_mrcz:
        problems.append(Problem(WARNING, "old MRCZ layout (written by mrcz < 0.5: dimensions "
                                "in mx, my, mz); upgrade it with `mrcz upgrade FOLDER`"))
    return info, problems


def _check_sampling(info: hdr.HeaderInfo, severity: str) -> list[Problem]:
    rec = info.record
    if info.mz_is_slices or info.legacy_mrcz:
        return []
    sampling = [int(rec[k]) for k in ("mx", "my", "mz")]
    if min(sampling) < 1:
        return [Problem(severity, f"sampling mx, my, mz = {sampling} must be positive")]
    if np.any(np.asarray(rec["cella"], dtype=float) < 0):
        return [Problem(severity, f"cell dimensions {rec['cella'].tolist()} are negative")]
    return []


def _check_meta(f: Any, info: hdr.HeaderInfo, name: str) -> list[Problem]:
    if not info.extended_bytes or bytes(info.record["exttyp"]) != b"json":
        return []
    raw = f.read(info.extended_bytes)
    if len(raw) != info.extended_bytes:
        return [Problem(ERROR, f"file ends inside the {info.extended_bytes}-byte "
                               "extended header")]
    try:
        jsonmeta.decode(raw, name)
    except MRCZError as err:
        return [Problem(ERROR, str(err))]
    return []


def _check_plain_size(info: hdr.HeaderInfo, size: int) -> list[Problem]:
    need = info.data_offset + hdr.stored_nbytes(info)
    if size < need:
        return [Problem(ERROR, f"file is {size} bytes but the header describes {need} "
                               "(truncated)")]
    if size > need:
        return [Problem(ERROR, f"file is {size} bytes, {size - need} more than the header "
                               "describes")]
    return []


def _check_chunks(f: Any, info: hdr.HeaderInfo, size: int, name: str,
                  check_data: bool = True) -> list[Problem]:
    """Every chunk header consistent with the dimensions; sizes add up; the frame index
    matches the chunks and (``check_data``) every chunk its CRC-32C."""
    nz, ny, nx = info.shape
    fd = f.fileno()
    try:
        index = frameindex.read_index(fd, size, name)
    except MRCZError as err:
        index, problems = None, [Problem(ERROR, str(err))]
    else:
        problems = []
    start = size if index is None else size - frameindex.trailer_bytes(len(index))
    if index is not None and index.covers(info.data_offset, nz, start):
        chunks = index.chunks(0, nz)
        problems += _check_indexed(fd, chunks, index.crcs(0, nz), start, ny * nx *
                                   info.dtype.itemsize, name, check_data)
    else:
        try:
            chunks = codec.index_chunks(fd, info.data_offset, nz, size,
                                        ny * nx * info.dtype.itemsize, name)
        except MRCZError as err:
            return problems + [Problem(ERROR, str(err))]
        if index is not None:
            problems.append(Problem(ERROR, f"the frame index ({len(index)} chunks) does not "
                                           f"match the {nz} chunks of the data block (stale "
                                           "index)"))
        elif not problems:
            problems += _check_no_index(size, chunks[-1][0] + chunks[-1][1], nz)
    packed = sum(cbytes for _, cbytes in chunks)
    recorded = int(info.record["packed_bytes"])
    indexed = packed + (0 if index is None else frameindex.trailer_bytes(len(index)))
    if recorded and recorded not in (packed, indexed):
        problems.append(Problem(ERROR, f"header records {recorded} compressed bytes but the "
                                       f"{nz} chunks hold {packed}"
                                       + ("" if index is None else
                                          f" ({indexed} with the frame index)")))
    elif not recorded:
        problems.append(Problem(WARNING, "compressed size (packedBytes) not recorded"))
    if index is not None and len(index) != nz and not problems:
        problems.append(Problem(ERROR, f"the frame index lists {len(index)} chunks, the header "
                                       f"{nz} (an interrupted append?)"))
    elif index is not None and start != info.data_offset + packed and not problems:
        problems.append(Problem(ERROR, f"{start - info.data_offset - packed} bytes lie "
                                       "between the last chunk and the frame index (an "
                                       "interrupted append?)"))
    return problems


def _check_indexed(fd: int, chunks: list[tuple[int, int]], crcs: list[int], end: int,
                   frame_nbytes: int, name: str, check_data: bool) -> list[Problem]:
    """Each indexed chunk: its header agrees with the index, its bytes with their CRC."""
    problems = []
    for k, ((offset, cbytes), crc) in enumerate(zip(chunks, crcs)):
        head = os.pread(fd, codec.EXTENDED_HEADER_BYTES, offset)
        problem = codec.chunk_problem(head, offset, end, frame_nbytes)
        if problem is None and codec.ChunkHeader.parse(head).cbytes != cbytes:
            problem = f"says it holds {codec.ChunkHeader.parse(head).cbytes} bytes, the " \
                      f"frame index {cbytes}"
        if problem:
            problems.append(Problem(ERROR, f"{name}: chunk {k} (z-slice {k}) {problem}"))
        if check_data:
            try:
                codec.check_chunk(os.pread(fd, cbytes, offset), crc, k, name)
            except MRCZError as err:
                problems.append(Problem(ERROR, str(err)))
    return problems


def _check_no_index(size: int, end: int, nz: int) -> list[Problem]:
    """Findings for a data block that no frame index ends."""
    extra = size - end
    if not extra:
        return [Problem(WARNING, "no frame index (written by another program or an older "
                                 "version): the chunks' checksums cannot be checked; "
                                 "`mrcz index FOLDER` adds one")]
    if extra < frameindex.trailer_bytes(nz):
        return [Problem(ERROR, f"the {extra} bytes after the last chunk are a cut-off frame "
                               "index (truncated file)")]
    if extra == frameindex.trailer_bytes(nz):
        return [Problem(ERROR, "the frame index after the last chunk is damaged (its end "
                               "marker is wrong)")]
    return [Problem(ERROR, f"{extra} bytes follow the last chunk")]


def _check_stream(path: Any, info: hdr.HeaderInfo) -> list[Problem]:
    """Decompress a whole-file gzip/bzip2/zstd stream to its end (where the codec checks
    its CRC or checksum); its content must be as long as the header describes."""
    need = info.data_offset + hdr.stored_nbytes(info)
    total, buffer = 0, memoryview(bytearray(STREAM_READ_BYTES))
    try:
        with open_for_read(path) as f:
            while True:
                n = f.readinto(buffer)
                if not n:
                    break
                total += n
    except MRCZError as err:
        return [Problem(ERROR, str(err))]
    if total < need:
        return [Problem(ERROR, f"the stream holds {total} bytes but the header describes "
                               f"{need} (truncated)")]
    if total > need:
        return [Problem(ERROR, f"the stream holds {total} bytes, {total - need} more than "
                               "the header describes")]
    return []


def _check_frames(path: Any) -> list[Problem]:
    """Decode every z-slice (checked against the frame index where there is one)."""
    try:
        for _ in iter_frames(path):
            pass
    except MRCZError as err:
        return [Problem(ERROR, f"data cannot be read: {err}")]
    return []


def _check_statistics(path: Any, info: hdr.HeaderInfo, seekable: bool = True
                      ) -> list[Problem]:
    """Header dmin, dmax, dmean, rms against the data (or marked unknown)."""
    rec = info.record
    dmin, dmax, dmean, rms = (float(rec[k]) for k in ("dmin", "dmax", "dmean", "rms"))
    if dmax < dmin:
        return []  # MRC2014: statistics not known
    try:
        total = _data_stats(path, seekable)
    except MRCZError as err:
        return [Problem(ERROR, f"data cannot be read: {err}")]
    if total is None:
        return [Problem(WARNING, "statistics of complex data not checked")]
    actual = {"minimum": total.minimum, "maximum": total.maximum, "mean": total.mean}
    stated = {"minimum": dmin, "maximum": dmax, "mean": dmean}
    if dmean < min(dmin, dmax):
        del actual["mean"], stated["mean"]
    if rms >= 0:
        actual["RMS deviation"] = float(np.sqrt(total.m2 / total.count))
        stated["RMS deviation"] = rms
    scale = max(abs(total.minimum), abs(total.maximum), 1e-30)
    return [Problem(ERROR, f"header {key} is {stated[key]:.6g} but the data's is "
                           f"{actual[key]:.6g}")
            for key in actual
            if not np.isclose(stated[key], actual[key], rtol=STATS_RTOL, atol=1e-6 * scale)]


def _data_stats(path: Any, seekable: bool) -> Stats | None:
    """Exact min, max, mean and variance of the data, one z-slice at a time."""
    total = Stats()
    for frame in _slices(path, seekable):
        if frame.dtype.kind == "c":
            return None
        total.add(Stats.of_frame(frame, with_rms=True))
    return total


def _slices(path: Any, seekable: bool) -> Iterator[np.ndarray]:
    """The z-slices of a file: streamed from a regular file, else read whole (a
    whole-file compressed stream only reads forwards)."""
    if seekable:
        return iter_frames(path)
    image, _ = readMRC(path)
    data = np.stack(image) if isinstance(image, list) else np.asarray(image)
    return iter(data.reshape(-1, *data.shape[-2:]))
