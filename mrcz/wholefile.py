"""Whole-file compressed MRC: plain MRC2014 streams inside gzip, bzip2 or zstd.

Reading: :func:`open_for_read` recognises the three codecs by their magic bytes
(whatever the file is called) and hands ``readMRC`` a forward-only file object
that decompresses straight into the caller's buffer (``readinto``), so the
compressed and the decompressed file are never both in memory.

Writing: :func:`write` turns a ``writeMRC`` call on a name ending ``.gz``,
``.bz2`` or ``.zst`` into a plain MRC2014 stream compressed with that codec.
A compressed stream cannot seek back to fix the header, so the header
statistics are computed first, in one pass over the frames (about 4 GB/s here,
a few percent of the compression time; lazy arrays such as dask compute each
frame twice); then the header, the JSON metadata and the data go out as one
stream, one frame at a time, so memory stays bounded. The alternative, a plain
temporary file compressed afterwards, would write and read the data twice and
need the disk space of the uncompressed file. The output is written beside the
target and renamed into place.

- zstd: one frame, content size and checksum recorded, compressed by zstd's
  own worker threads.
- gzip: one member, made of independently deflated pieces of at least
  :data:`PIECE_BYTES` joined pigz-style (sync flushes, one CRC): the pieces
  are deflated in parallel and every gzip reader sees an ordinary file.
- bzip2: one bzip2 stream per piece, compressed in parallel and concatenated
  (as pbzip2 does); bzip2, Python's ``bz2`` and mrcfile read such files.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
import zstandard

from . import carry, header as hdr
from .fileops import atomic_output
from .errors import CorruptDataError, UnsupportedError, describe
from .frames import FrameSource, frame_source
from .stats import Stats
from .units import ANGSTROM
from .workers import ordered_map, threads
from .writer import check_compressor, finish_header, plan_file, stats_wanted, stored_slice

#: File name endings that select a whole-file codec when writing.
SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".zst": "zstd"}
#: Levels each codec accepts (``clevel`` is passed through unchanged).
LEVELS = {"gzip": range(0, 10), "bzip2": range(1, 10), "zstd": range(1, 23)}
#: Smallest piece of data compressed independently (gzip and bzip2).
PIECE_BYTES = 8 * 2**20
_SKIP_BUFFER = 2**20
#: Decompressed bytes allowed after the data block of a whole-file stream.
MAX_TRAILING_BYTES = 16 * 2**20
_ZSTD_READ_BYTES = 2**20
_READ_CAP = 4 * 2**20  # largest read asked of the gzip and bzip2 readers at once
#: Bytes decoded after a stream's header that is not an MRC header, so that corrupt data
#: show as such (more than one bzip2 block, 900 kB, whose CRC comes at its end).
PROBE_BYTES = 4 * 2**20
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: What the codecs raise on bad data (OSError only without an errno: BadGzipFile, bz2).
_DECODE_ERRORS = (EOFError, zlib.error, zstandard.ZstdError, OSError)


# ----------------------------------------------------------------------------- detection

def detect(magic: bytes) -> str | None:
    """Codec (``'gzip'``, ``'bzip2'``, ``'zstd'``) whose magic bytes start ``magic``, or None."""
    if magic[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if magic[:3] == b"BZh" and magic[3:4].isdigit() and magic[3:4] != b"0":
        return "bzip2"
    if magic[:4] == _ZSTD_MAGIC:
        return "zstd"
    if len(magic) >= 4 and magic[0] & 0xF0 == 0x50 and magic[1:4] == b"\x2a\x4d\x18":
        return "zstd"  # a skippable frame first
    return None


def codec_for_name(path: Any) -> str | None:
    """Codec a file name asks for by its ending (``.gz``, ``.bz2``, ``.zst``), or None."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    lowered = os.fsdecode(path).lower()
    return next((codec for end, codec in SUFFIXES.items() if lowered.endswith(end)), None)


# ----------------------------------------------------------------------------- reading

class StreamReader(io.RawIOBase):
    """A forward-only, decompressing file object over a gzip, bzip2 or zstd file.

    Supports what ``readMRC`` needs: ``read``, ``readinto`` (straight into the
    caller's buffer) and ``seek`` forwards (by decompressing and discarding).
    It has no ``fileno``, so code that needs a regular file (memory maps,
    ``pread``) fails instead of reading compressed bytes as data.
    """

    def __init__(self, raw: BinaryIO, codec: str, name: str, closefd: bool = True) -> None:
        super().__init__()
        self.name, self.codec = name, codec
        self._raw, self._closefd = raw, closefd
        self._stream: Any = None
        self._start()

    def _start(self) -> None:
        """Start decompressing at the current position of the raw file."""
        self._pos = 0
        self._pending = b""
        if self.codec == "gzip":
            self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb")
        elif self.codec == "bzip2":
            self._stream = bz2.BZ2File(self._raw, mode="rb")
        else:
            self._stream = zstandard.ZstdDecompressor().stream_reader(
                self._raw, read_size=_ZSTD_READ_BYTES, read_across_frames=True, closefd=False)
        self._limit: int | None = None
        self._limit = _stream_limit(self.peek_header(), self.name)

    def restart(self) -> None:
        """Read the stream again from its start: the raw file is sought back to 0 and
        decompressed anew (the raw file must be seekable)."""
        if self.closed:
            raise ValueError(f"{self.name}: the {self.codec} stream is closed")
        self._stream.close()  # the codec's reader only: the raw file stays open
        self._raw.seek(0)
        self._start()

    def _check_limit(self, view: memoryview) -> memoryview:
        """``view`` cut to what may still be decompressed; refuse a stream that holds more."""
        if self._limit is None or not len(view):
            return view
        room = self._limit - self._pos
        if room > 0:
            return view[:room]
        if self._decompress_into(memoryview(bytearray(1))):
            raise CorruptDataError(
                f"{self.name}: the {self.codec} stream holds more than the {self._limit} "
                f"bytes its MRC header accounts for (data block and up to "
                f"{MAX_TRAILING_BYTES} bytes after it); refused")
        return view[:0]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation(f"{self.name}: a {self.codec} stream has no file "
                                      "descriptor")

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
        else:
            n = self._decompress_into(self._check_limit(view))
        self._pos += n
        return n

    def _decompress_into(self, view: memoryview) -> int:
        if self.codec != "zstd":
            # GzipFile.readinto is read() + copy: bound the temporary it makes
            view = view[:_READ_CAP]
        try:
            n = self._stream.readinto(view) or 0
        except _DECODE_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a real I/O error (disk, network), not bad data
            raise CorruptDataError(f"{self.name}: corrupt or truncated {self.codec} stream "
                                   f"after {self._pos} decompressed bytes ({exc})") from exc
        if not n and len(view) and self.codec == "zstd" and not _zstd_complete(self._raw):
            # python-zstandard ends a cut-off frame silently: check the frame structure
            raise CorruptDataError(f"{self.name}: zstd stream is cut off after {self._pos} "
                                   "decompressed bytes (truncated file)")
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buffer = bytearray(size)
        got = 0
        while got < size:
            n = self.readinto(memoryview(buffer)[got:])
            if not n:
                break
            got += n
        del buffer[got:]
        return bytes(buffer)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset}.get(whence)
        if target is None:
            raise io.UnsupportedOperation(f"{self.name}: cannot seek from the end of a "
                                          f"{self.codec} stream")
        if target < self._pos:
            raise io.UnsupportedOperation(f"{self.name}: cannot seek backwards in a "
                                          f"{self.codec} stream (at {self._pos}, asked "
                                          f"for {target})")
        self._skip(target - self._pos)
        return self._pos

    def _skip(self, count: int) -> None:
        scratch = memoryview(bytearray(min(count, _SKIP_BUFFER)))
        while count:
            n = self.readinto(scratch[:min(count, len(scratch))])
            if not n:
                raise CorruptDataError(f"{self.name}: {self.codec} stream ends after "
                                       f"{self._pos} decompressed bytes, before the data "
                                       "asked for (truncated file)")
            count -= n

    def peek_header(self) -> bytes:
        """The first header bytes, kept to be read again."""
        self._pending = self.read(hdr.HEADER_BYTES)
        self._pos = 0
        return self._pending

    def probe(self, count: int) -> None:
        """Decompress up to ``count`` more bytes (discarded) so the codec checks them.

        Raises CorruptDataError if it finds corruption; the stream is used up after.
        """
        scratch = memoryview(bytearray(min(count, _SKIP_BUFFER)))
        while count > 0:
            n = self._decompress_into(scratch)
            if not n:
                return
            count -= n

    def expect_end(self, end: int) -> None:
        """Where the MRC content ends: reading up to there verifies the stream's checksum."""
        self._end = end

    def __exit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None and self._pos == getattr(self, "_end", -1):
                self._verify_end()
        finally:
            self.close()

    def _verify_end(self) -> None:
        """Read on to the end of the stream, where the codec checks its CRC or checksum.

        Up to :data:`MAX_TRAILING_BYTES` after the data block are allowed (as in
        plain files) and decoded, so that the check covers them too; more are refused.
        """
        scratch = memoryview(bytearray(_SKIP_BUFFER))
        while self.readinto(scratch):
            pass

    def close(self) -> None:
        if not self.closed:
            try:
                if getattr(self, "_stream", None) is not None:
                    self._stream.close()
            finally:
                if getattr(self, "_closefd", True):
                    self._raw.close()
        super().close()


def _stream_limit(head: bytes, name: str) -> int:
    """Most bytes a stream starting with ``head`` may decompress to: the MRC file its
    header describes plus :data:`MAX_TRAILING_BYTES`; a stream without a valid MRC
    header gets enough to show what it is (:data:`PROBE_BYTES`)."""
    try:
        info = hdr.parse_header(head, name)
        size = info.data_offset + hdr.stored_nbytes(info)
    except (ValueError, TypeError, OverflowError):
        return hdr.HEADER_BYTES + PROBE_BYTES
    return size + MAX_TRAILING_BYTES


def _zstd_complete(raw: BinaryIO) -> bool:
    """Whether the zstd frames of a regular file run exactly to its end (none cut short)."""
    fd = raw.fileno()
    size, pos = os.fstat(fd).st_size, 0
    while pos < size:
        head = os.pread(fd, 14, pos)
        if len(head) < 8:
            return False
        if head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18":  # skippable frame
            pos += 8 + int.from_bytes(head[4:8], "little")
            continue
        if head[:4] != _ZSTD_MAGIC:
            return False
        descriptor = head[4]
        single = descriptor >> 5 & 1
        pos += (5 + (not single) + (0, 1, 2, 4)[descriptor & 3]
                + (single, 2, 4, 8)[descriptor >> 6])
        pos = _zstd_blocks_end(fd, pos)
        if pos < 0:
            return False
        pos += 4 * (descriptor >> 2 & 1)  # content checksum
    return pos == size


def _zstd_blocks_end(fd: int, pos: int) -> int:
    """Offset after the last block of a zstd frame whose first block is at ``pos`` (-1: cut)."""
    while True:
        head = os.pread(fd, 3, pos)
        if len(head) < 3:
            return -1
        word = int.from_bytes(head, "little")
        kind = word >> 1 & 3
        if kind == 3:
            return -1  # reserved block type: corrupt
        pos += 3 + (1 if kind == 1 else word >> 3)
        if word & 1:
            return pos


def _check_content(stream: StreamReader, head: bytes, codec: str, name: str,
                   refuse_mrcz: bool) -> None:
    """Arm the end-of-stream check of plain MRC content (reading its data block to the end
    verifies the codec's checksum); refuse compressed MRCZ, which a stream cannot index,
    unless ``refuse_mrcz`` is False."""
    try:
        info = hdr.parse_header(head, name)
    except (ValueError, TypeError):
        stream.probe(PROBE_BYTES)  # garbage may be corrupt data the codec detects later
        return  # not an MRC header: readMRC reports it in its own words
    if info.compressor is None:
        stream.expect_end(info.data_offset + hdr.stored_nbytes(info))
    elif refuse_mrcz:
        raise UnsupportedError(f"{name}: compressed MRCZ ({info.compressor}, mode "
                               f"{int(info.record['mode'])}) inside a whole-file {codec} "
                               f"stream is not supported; decompress the {codec} layer "
                               "first (MRCZ is already compressed)")


@contextlib.contextmanager
def spooled(stream: StreamReader) -> Iterator[BinaryIO]:
    """Everything ``stream`` decompresses to, from its start, in an unnamed temporary
    file open for reading at 0 (gone on leaving): for content that needs random
    access, such as compressed MRCZ, whose chunks a stream cannot index."""
    with tempfile.TemporaryFile() as spool:
        stream.restart()
        shutil.copyfileobj(stream, spool, _SKIP_BUFFER)
        spool.flush()
        spool.seek(0)
        with open(spool.fileno(), "rb", closefd=False) as copy:
            yield copy


def open_for_read(path: str | os.PathLike, memmap: bool = False) -> BinaryIO:
    """Open ``path`` for reading: the file itself, or a decompressing stream.

    Parameters
    ----------
    path : file to read; gzip, bzip2 and zstd are recognised by content, not name.
    memmap : the caller wants to memory-map the file; refused for compressed files.

    Raises
    ------
    UnsupportedError
        For a memory map of a compressed file, or compressed MRCZ inside one.
    """
    return wrap(open(path, "rb"), describe(path), memmap)


def wrap(raw: BinaryIO, name: str, memmap: bool = False, refuse_mrcz: bool = True,
         closefd: bool = True) -> BinaryIO:
    """``raw`` (a file open for binary reading, at its start) itself, or a decompressing
    stream over it when its content is gzip, bzip2 or zstd; closes ``raw`` on error.

    ``refuse_mrcz=False`` returns a stream even when it holds compressed MRCZ (which
    cannot be read from a stream), for a caller that copies it out first. A stream
    of plain MRC checks its CRC or checksum once its data block is read to the end.
    ``closefd=False``: neither an error nor closing the stream closes ``raw``.
    """
    try:
        codec = detect(raw.read(4))
        raw.seek(0)
        if codec is None:
            return raw
        if memmap:
            raise UnsupportedError(f"{name}: cannot memory-map a {codec}-compressed file; "
                                   "read it with useMemmap=False")
        stream = StreamReader(raw, codec, name, closefd)
    except BaseException:
        if closefd:
            raw.close()
        raise
    try:
        _check_content(stream, stream.peek_header(), codec, name, refuse_mrcz)
    except BaseException:
        stream.close()
        raise
    return stream  # type: ignore[return-value]


# ----------------------------------------------------------------------------- writing

def check_level(codec: str, clevel: int, name: str) -> int:
    """The codec level for ``clevel``; raise ValueError when the codec has no such level."""
    level = int(clevel)
    if level not in LEVELS[codec]:
        allowed = LEVELS[codec]
        raise ValueError(f"{name}: {codec} levels are {allowed.start}..{allowed.stop - 1}, "
                         f"got clevel={clevel}")
    return level


def _gather_stats(source: FrameSource, with_rms: bool | None, n_threads: int) -> Stats:
    """Exact statistics of every frame (the header must be final before it is written);
    "not known" without a pass over the data when ``with_rms`` is None."""
    total = Stats()
    if with_rms is None:
        total.known = False
        return total
    for stats in ordered_map(lambda z: Stats.of_frame(source.get(z), with_rms),
                             range(source.shape[0]), n_threads):
        total.add(stats)
    return total


def _stored_bytes(source: FrameSource, stored: np.dtype, mode: int,
                  name: str) -> Iterator[memoryview]:
    """Each z-slice as the bytes that go on disk."""
    for z in range(source.shape[0]):
        data = stored_slice(source.get(z), stored, mode, name)
        yield memoryview(data).cast("B")


def _pieces(prefix: bytes, slices: Iterator[memoryview]) -> Iterator[list[memoryview]]:
    """Group the stream into lists of buffers of at least PIECE_BYTES (slices are split)."""
    batch: list[memoryview] = [memoryview(prefix)]
    size = len(prefix)
    for data in slices:
        for start in range(0, len(data), PIECE_BYTES):
            part = data[start:start + PIECE_BYTES]
            batch.append(part)
            size += len(part)
            if size >= PIECE_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _deflate(level: int, last: bool, batch: list[memoryview]) -> bytes:
    """Raw deflate of one piece, ending on a byte boundary (or the final block)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = [compressor.compress(part) for part in batch]
    out.append(compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
    return b"".join(out)


def _bzip2(level: int, last: bool, batch: list[memoryview]) -> bytes:
    compressor = bz2.BZ2Compressor(level)
    out = [compressor.compress(part) for part in batch]
    out.append(compressor.flush())
    return b"".join(out)


def _lookahead(items: Iterator[Any]) -> Iterator[tuple[bool, Any]]:
    """``(is_last, item)`` pairs."""
    previous = next(items, None)
    for item in items:
        yield False, previous
        previous = item
    if previous is not None:
        yield True, previous


def _write_pieces(f: BinaryIO, codec: str, level: int, prefix: bytes,
                  slices: Iterator[memoryview], n_threads: int) -> None:
    """gzip (one member, pigz-style) or bzip2 (one stream per piece), pieces in parallel."""
    crc, length = 0, 0

    def checked() -> Iterator[tuple[bool, list[memoryview]]]:
        nonlocal crc, length
        for last, batch in _lookahead(_pieces(prefix, slices)):
            for part in batch:
                crc = zlib.crc32(part, crc)
                length += len(part)
            yield last, batch

    work = _deflate if codec == "gzip" else _bzip2
    if codec == "gzip":
        f.write(_GZIP_HEADER)
    for chunk in ordered_map(lambda item: work(level, *item), checked(), n_threads):
        f.write(chunk)
    if codec == "gzip":
        f.write(crc.to_bytes(4, "little") + (length & 0xFFFFFFFF).to_bytes(4, "little"))


def _write_zstd(f: BinaryIO, level: int, prefix: bytes, slices: Iterator[memoryview],
                total: int, n_threads: int) -> None:
    """One zstd frame with content size and checksum, compressed by zstd's threads."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True,
                                          threads=n_threads if n_threads > 1 else 0)
    writer = compressor.stream_writer(f, size=total, closefd=False)
    writer.write(prefix)
    for data in slices:
        writer.write(data)
    writer.flush(zstandard.FLUSH_FRAME)  # not on error: that would mask it ("Src size")


def write(input_image: Any, MRCfilename: str | os.PathLike, meta: dict | None = None,
          endian: str = "le", dtype: Any = None, pixelsize: Any = (0.1, 0.1, 0.1),
          pixelunits: str = ANGSTROM, voltage: float = 0.0, C3: float = 0.0,
          gain: float = 1.0, compressor: str | None = None, clevel: int = 1,
          n_threads: int | None = None, quickStats: bool = True, idx: int | None = None,
          backend: str | None = None, template: Any = None, durable: bool = True) -> None:
    """``writeMRC`` for names ending ``.gz``, ``.bz2`` or ``.zst``: a compressed plain MRC.

    ``clevel`` is the codec's own level (gzip 0-9, bzip2 1-9, zstd 1-22). MRCZ
    compression (``compressor=``) and in-place writes (``idx=``) are refused.
    """
    name = describe(MRCfilename)
    codec = codec_for_name(MRCfilename)
    if codec is None:
        raise ValueError(f"{name}: not a .gz, .bz2 or .zst file name")
    if compressor is not None:
        ending = os.fsdecode(MRCfilename).rsplit(".", 1)[-1]
        raise UnsupportedError(f"{name}: compressor={compressor!r} (MRCZ) cannot go inside a "
                               f"whole-file {codec} stream; write plain MRC (compressor=None) "
                               f"or use a name without the .{ending} ending")
    if idx not in (None, 0) or (idx is not None and os.path.exists(MRCfilename)):
        raise UnsupportedError(f"{name}: idx={idx}: slices cannot be written in place into "
                               f"a {codec}-compressed file; rewrite the whole file")
    check_compressor(None, backend, clevel)
    level = check_level(codec, clevel, name)
    n_threads = threads(n_threads)
    if template is not None and not isinstance(template, carry.Template):
        raise TypeError(f"{name}: template must be a mrcz.carry.Template (writeMRC opens "
                        "a path given as template)")
    source = frame_source(input_image, name)
    plan, rec, meta_bytes = plan_file(source, dtype, name, meta, endian, pixelsize, pixelunits,
                                      voltage, C3, gain, None, 0, template)
    finish_header(rec, _gather_stats(source, stats_wanted(quickStats, None), n_threads),
                  template)
    prefix = rec.tobytes() + meta_bytes
    slices = _stored_bytes(source, plan.stored, plan.mode, name)
    with atomic_output(MRCfilename, durable=durable) as f:
        if codec == "zstd":
            total = len(prefix) + _data_nbytes(source, plan.stored, plan.mode)
            _write_zstd(f, level, prefix, slices, total, n_threads)
        else:
            _write_pieces(f, codec, level, prefix, slices, n_threads)


def compress_to(f: BinaryIO, codec: str, payload: bytes, level: int | None = None,
                n_threads: int = 1) -> None:
    """Write a whole MRC file's bytes to ``f`` as one gzip, bzip2 or zstd stream.

    ``level`` defaults to gzip 6, bzip2 9, zstd 3.
    """
    level = {"gzip": 6, "bzip2": 9, "zstd": 3}[codec] if level is None else level
    check_level(codec, level, describe(f))
    if codec == "zstd":
        _write_zstd(f, level, payload, iter(()), len(payload), n_threads)
    else:
        _write_pieces(f, codec, level, payload, iter(()), n_threads)


def _data_nbytes(source: FrameSource, stored: np.dtype, mode: int) -> int:
    """Bytes of the data block on disk."""
    nz, ny, nx = source.shape
    row = (nx + 1) // 2 if mode == hdr.MODE_UINT4 else nx * stored.itemsize
    return nz * ny * row
