"""Check MRC2014 and MRCZ files: header words, sizes, chunk index and statistics.

:func:`validate_file` returns a list of :class:`Problem`; a file is valid when
none of them is an error (warnings point at things that are legal but
doubtful, or checks that could not be made).
"""
from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterable
from typing import Any, BinaryIO

import numpy as np

from . import codec, frameindex, header as hdr, meta as jsonmeta, wholefile
from .errors import MRCZError, describe
from .reader import MRCSource
from .stats import Stats
from .stream import MRCZReader

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


def validate_file(file: str | os.PathLike | BinaryIO, check_data: bool = True,
                  deep: bool = False, *, name: str | None = None) -> list[Problem]:
    """Check one MRC/MRCZ file; returns the problems found (empty: valid).

    The file is opened once (or not at all when an open file is given) and its
    data decoded in one pass, for the statistics and ``deep`` together.

    Parameters
    ----------
    file : the file (plain, MRCZ, or either inside a gzip/bzip2/zstd stream): a path,
        or a binary file open at its start (not closed here).
    check_data : also read the data: every compressed chunk against its CRC-32C
        in the frame index, a whole-file gzip/bzip2/zstd stream to its end (its
        own CRC and length), and the header statistics against the data.
    deep : also decode every z-slice, even where the statistics are not known.
    name : what messages call the file (default: the path, or the file's ``name``).
    """
    name = describe(file) if name is None else name
    if not isinstance(file, (str, bytes, os.PathLike)):
        return _validate(file, name, check_data or deep, deep)
    with open(file, "rb") as raw:
        return _validate(raw, name, check_data or deep, deep)


def _validate(raw: BinaryIO, name: str, check_data: bool, deep: bool) -> list[Problem]:
    """:func:`validate_file` of the open file ``raw`` (at its start)."""
    try:
        f = wholefile.wrap(raw, name, refuse_mrcz=False, closefd=False)
    except MRCZError as err:
        return [Problem(ERROR, str(err))]
    try:
        return _check_open(f, name, check_data, deep)
    finally:
        if f is not raw:
            f.close()  # the decompressing stream; raw stays open


def _check_open(f: BinaryIO, name: str, check_data: bool, deep: bool) -> list[Problem]:
    """The checks on ``f``: a regular file, or a decompressing stream, at its start."""
    try:
        src = MRCSource(f, name)
    except MRCZError:
        return _check_refused(f, name, check_data, deep)  # the header as it is
    if src.info.compressor is not None and src.fd is None:
        return _check_spooled(f, name, check_data, deep)
    problems = _header_problems(src.info)
    try:
        size = src.size if src.fd is not None else None
        layout = _check_layout(f, src.info, size, _check_meta_length(src), name, check_data)
    except MRCZError as err:
        return [Problem(ERROR, str(err))]
    problems += layout
    if check_data and is_valid(layout):  # the data can be read if its layout is sound
        problems += _check_data(src, deep and src.fd is not None)
    return problems


def _check_layout(f: BinaryIO, info: hdr.HeaderInfo, size: int | None,
                  meta_problems: list[Problem], name: str, check_data: bool) -> list[Problem]:
    """The data block against the header: a regular file's chunks (and frame index) or
    size; a stream (``size`` None) read to its end (``check_data``) if all else holds."""
    layout = list(meta_problems)
    if size is not None:
        layout += (_check_chunks(f.fileno(), info, size, name, check_data)
                   if info.compressor else _check_plain_size(info, size))
    elif check_data and is_valid(layout):
        layout += _check_stream(f, info)
    return layout


def _rewind(f: BinaryIO) -> None:
    """Back to the start of the file (a stream decompresses anew)."""
    if isinstance(f, wholefile.StreamReader):
        f.restart()
    else:
        f.seek(0)


def _check_refused(f: BinaryIO, name: str, check_data: bool, deep: bool
                   ) -> list[Problem]:
    """What is wrong with a header (or JSON metadata) that the reader refuses."""
    try:
        _rewind(f)
        raw = f.read(hdr.HEADER_BYTES)
        try:
            info = hdr.parse_header(raw, name)
        except MRCZError:
            if isinstance(f, wholefile.StreamReader):  # the codec may see corrupt data
                f.restart()
                f.probe(wholefile.PROBE_BYTES)
            raise
        size = _regular_size(f)
        if info.compressor is not None and size is None:
            return _check_spooled(f, name, check_data, deep)
        problems = _header_problems(info)
        layout = _check_layout(f, info, size, _check_meta(f, info, name), name, check_data)
    except MRCZError as err:
        return [Problem(ERROR, str(err))]
    return problems + layout


def _check_spooled(f: BinaryIO, name: str, check_data: bool, deep: bool) -> list[Problem]:
    """Compressed MRCZ inside a whole-file stream: decompressed to an unnamed temporary
    file (the chunks need random access), then checked there under ``name``."""
    try:
        with wholefile.spooled(f) as copy:
            return _validate(copy, name, check_data, deep)
    except MRCZError as err:
        return [Problem(ERROR, str(err))]


def _regular_size(f: Any) -> int | None:
    """Size of a regular file, or None for a decompressing stream."""
    try:
        if not isinstance(f, (io.BufferedReader, io.FileIO)):
            return None
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


def _header_problems(info: hdr.HeaderInfo) -> list[Problem]:
    """Map ID, machine stamp, sampling, space group, labels, version, exttyp."""
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
    return problems


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


def _check_meta_length(src: MRCSource) -> list[Problem]:
    """JSON metadata the reader decoded must fill the extended header (a stream may end
    inside its padding)."""
    info = src.info
    if not info.extended_bytes or bytes(info.record["exttyp"]) != b"json" \
            or len(src.extended) == info.extended_bytes:
        return []
    return [Problem(ERROR, f"file ends inside the {info.extended_bytes}-byte extended header")]


def _check_plain_size(info: hdr.HeaderInfo, size: int) -> list[Problem]:
    need = info.data_offset + hdr.stored_nbytes(info)
    if size < need:
        return [Problem(ERROR, f"file is {size} bytes but the header describes {need} "
                               "(truncated)")]
    if size > need:
        return [Problem(ERROR, f"file is {size} bytes, {size - need} more than the header "
                               "describes")]
    return []


def _check_chunks(fd: int, info: hdr.HeaderInfo, size: int, name: str,
                  check_data: bool = True) -> list[Problem]:
    """Every chunk header consistent with the dimensions; sizes add up; the frame index
    matches the chunks and (``check_data``) every chunk its CRC-32C."""
    nz, ny, nx = info.shape
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


def _check_stream(f: BinaryIO, info: hdr.HeaderInfo) -> list[Problem]:
    """Decompress a whole-file gzip/bzip2/zstd stream from its start to its end (where the
    codec checks its CRC or checksum); its content must be as long as the header says."""
    need = info.data_offset + hdr.stored_nbytes(info)
    total, buffer = 0, memoryview(bytearray(STREAM_READ_BYTES))
    try:
        _rewind(f)
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


def _check_data(src: MRCSource, deep: bool) -> list[Problem]:
    """One pass over the data: every z-slice decoded (``deep``; checked against the frame
    index where there is one) and the header statistics checked against them."""
    rec = src.info.record
    dmin, dmax, dmean, rms = (float(rec[k]) for k in ("dmin", "dmax", "dmean", "rms"))
    known = dmax >= dmin  # MRC2014: dmax < dmin means not known
    if not (known or deep):
        return []
    try:
        if src.fd is None:
            _rewind(src.file)  # a stream read to its end by the stream check
        total = _data_stats(MRCZReader.of_source(src), stop_at_complex=not deep)
    except MRCZError as err:
        return [Problem(ERROR, f"data cannot be read: {err}")]
    if not known:
        return []
    if not total.known:
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


def _data_stats(frames: Iterable[np.ndarray], stop_at_complex: bool) -> Stats:
    """Exact min, max, mean and variance of the z-slices (not known for complex data;
    ``stop_at_complex``: then the rest is not read)."""
    total = Stats()
    for frame in frames:
        total.add(Stats.of_frame(frame, with_rms=True))
        if not total.known and stop_at_complex:
            break
    return total
