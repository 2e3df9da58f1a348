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

import collections
import dataclasses
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import blosc
import numpy as np

from . import frameindex
from .errors import CorruptDataError, UnsupportedError
from .workers import CORES


class MissingCodecError(UnsupportedError, RuntimeError):
    """A blosc2 codec plugin is not installed."""

CHUNK_HEADER_BYTES = 16
#: version, versionlz, flags, typesize (bytes), nbytes, blocksize, cbytes (little-endian).
_HEADER_LAYOUT = struct.Struct("<BBBBIII")
#: blosc2 chunks whose flags set both shuffle bits carry 16 more header bytes.
EXTENDED_HEADER_BYTES = 32
#: Largest frame one blosc 1.x chunk can hold.
MAX_CHUNK_NBYTES = blosc.MAX_BUFFERSIZE
BLOSC1_CODECS = frozenset(blosc.compressor_list())
#: Elements per block (times the typesize: bytes): best ratio and speed (bench/README.md).
LARGE_FRAME_BLOCKSIZE = 2**20
#: Larger blocks gain < 1% ratio but every decoding thread keeps ~10 MiB per MiB of block.
MAX_BLOCKSIZE = 2**21
#: zlib loses its ratio on 4-byte data with larger blocks.
ZLIB_WIDE_BLOCKSIZE = 2**16

#: Largest per-thread read buffer kept between calls.
READ_BUFFER_CAP = 64 * 2**20
#: Chunks larger than this are decoded one at a time, on blosc's threads (bounded memory).
SERIAL_READ_CBYTES = 8 * 2**20

blosc.set_releasegil(True)
blosc.set_nthreads(1)  # decompression of one frame per pool thread
_local = threading.local()


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
    def parse(cls, raw: bytes | memoryview) -> ChunkHeader:
        return cls(*_HEADER_LAYOUT.unpack_from(raw))

    @property
    def shuffle(self) -> str:
        """``'bit'``, ``'byte'`` or ``'none'`` as recorded in the flags."""
        if self.flags & 0x4:
            return "bit"
        return "byte" if self.flags & 0x1 else "none"


# What a chunk may ask of a codec library. Anything else (a user-defined codec or
# filter, a codec kept in a super-chunk, a lazy chunk) is refused before any library
# sees the chunk: blosc2 answers unknown codec and filter ids by loading a plugin,
# which runs Python and imports modules from the current folder.
#: Blosc chunk-format versions: 1-2 written by blosc 1.x, 3-5 by blosc2.
BLOSC1_VERSIONS = frozenset({1, 2})
BLOSC2_VERSIONS = frozenset({3, 4, 5})
#: Compressor format (flags bits 5-7) -> the codec ids blosc2 may name for it (byte 22).
_FORMAT_CODECS = {0: {0}, 1: {1, 2}, 2: set(), 3: {4}, 4: {5}}
#: blosc2 filter ids: none, byte shuffle, bit shuffle.
_KNOWN_FILTERS = frozenset({0, 1, 2})
#: blosc2_flags (byte 31): bit 0 (zstd dictionary) and special values 0-4 (bits 4-6).
_ALLOWED_BLOSC2_FLAGS = 0x01 | 0x70
_MAX_SPECIAL_VALUE = 4


def chunk_risk(raw: bytes | memoryview) -> str | None:
    """Why the chunk starting with ``raw`` must not reach a codec library (None: it may).

    ``raw`` holds the first :data:`EXTENDED_HEADER_BYTES` of the chunk (fewer
    where the chunk is shorter). Only the codecs and filters this package knows
    pass: blosclz, lz4, lz4hc, snappy (blosc 1.x), zlib, zstd; no filter, byte
    or bit shuffle.
    """
    raw = bytes(raw[:EXTENDED_HEADER_BYTES])
    if len(raw) < CHUNK_HEADER_BYTES:
        return "is shorter than a blosc chunk header"
    version, flags = raw[0], raw[2]
    compformat = flags >> 5
    if version not in BLOSC1_VERSIONS | BLOSC2_VERSIONS:
        return f"has an unknown blosc format version {version}"
    if compformat not in _FORMAT_CODECS:
        return f"names compressor format {compformat}, not a codec this package reads"
    if version in BLOSC1_VERSIONS or flags & 0x05 != 0x05:
        return None  # a plain 16-byte header: the codec is one of the built-in formats
    if len(raw) < EXTENDED_HEADER_BYTES:
        return "has a truncated blosc2 extended header"
    filters, codec_id, blosc2_flags = raw[16:22], raw[22], raw[31]
    if codec_id not in _FORMAT_CODECS[compformat]:
        return f"names codec id {codec_id}, not a codec this package reads"
    unknown = sorted(set(filters) - _KNOWN_FILTERS)
    if unknown:
        return f"names filter id {unknown[0]}, not a filter this package reads"
    if blosc2_flags & ~_ALLOWED_BLOSC2_FLAGS & 0xFF or (blosc2_flags >> 4) & 0x7 > _MAX_SPECIAL_VALUE:
        return f"sets blosc2 flags {blosc2_flags:#04x} this package does not read"
    return None


class _BloscSettings:
    """Serialises python-blosc's global block size and thread count.

    A call states the ``(blocksize, nthreads)`` it needs (blocksize ``None``: any).
    Calls that agree with the current settings run together; others wait until
    no call is running, and new calls may not join while one waits, so a steady
    stream of calls of one kind cannot starve the others.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._blocksize: int | None = None
        self._nthreads: int | None = None
        self._saved = (0, 1)
        self._waiting: collections.Counter[tuple[int | None, int]] = collections.Counter()

    def _fits(self, request: tuple[int | None, int]) -> bool:
        blocksize, nthreads = request
        return nthreads == self._nthreads and blocksize in (None, self._blocksize)

    def _may_enter(self, request: tuple[int | None, int]) -> bool:
        if not self._active:
            return True
        return self._fits(request) and all(self._fits(r) for r, n in self._waiting.items() if n)

    @contextmanager
    def use(self, blocksize: int | None, nthreads: int = 1) -> Iterator[None]:
        request = (blocksize, nthreads)
        with self._cond:
            self._waiting[request] += 1
            while not self._may_enter(request):
                self._cond.wait()
            self._waiting[request] -= 1
            if not self._active:  # (re)apply: other code may have changed them meanwhile
                self._saved = blosc.get_blocksize(), blosc.set_nthreads(nthreads)
                if blocksize is not None:
                    blosc.set_blocksize(blocksize)
                self._blocksize, self._nthreads = blocksize, nthreads
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:  # leave python-blosc as its other users set it
                    blosc.set_blocksize(self._saved[0])
                    blosc.set_nthreads(self._saved[1])
                    self._cond.notify_all()


_SETTINGS = _BloscSettings()


def choose_blocksize(frame_nbytes: int, typesize: int = 1, cname: str = "zstd") -> int:
    """Blosc block size for one frame: 2**20 elements (at most 2 MiB), or the whole frame.

    Measured here (bench/README.md, single-thread CPU time, bit-shuffled): blocks of
    2**20 elements give the best ratio at full speed, e.g. Poisson(0.8) int8
    4096^2 with zstd 1: ratio 4.436 at 1484 MB/s against 4.229 at 1095 MB/s with
    64 KiB blocks; uint16: 8.870 (2 MiB blocks) against 8.390 (64 KiB); lz4 and
    lz4hc are flat within 1%. Blocks stop at 2 MiB: gain-corrected float32 gains
    0.7% more ratio with 4 MiB blocks, but a decoding thread holds about 10 MiB
    of blosc temporaries per MiB of block. Frames smaller than that go in one block (128^2
    float32 particles: zstd decompresses 2360 MB/s against 1650 with blosc's own
    choice). Exception: zlib on 4-byte data loses its ratio with blocks of 256 KiB
    and more (1.166 against 1.435 at 64 KiB on gain-corrected float32), so it
    gets 64 KiB blocks.
    """
    blocksize = min(frame_nbytes, LARGE_FRAME_BLOCKSIZE * typesize, MAX_BLOCKSIZE)
    if cname == "zlib" and typesize >= 4:
        blocksize = min(blocksize, ZLIB_WIDE_BLOCKSIZE)
    return blocksize


#: Filters a writer may ask for: ``shuffle=`` name -> python-blosc constant.
SHUFFLES = {"bit": blosc.BITSHUFFLE, "byte": blosc.SHUFFLE, None: blosc.NOSHUFFLE}
#: ``shuffle='auto'`` keeps bit-shuffle unless another filter makes the sample frame
#: at least this much smaller (bench/bench_filters.py: bit-shuffle compresses fastest).
AUTO_MIN_SAVING = 0.05
#: Codecs whose 1-byte chunks are declared with a wider typesize (see declared_typesize).
WIDE_TYPESIZE_CODECS = frozenset({"lz4", "lz4hc", "blosclz"})
#: The typesize declared for them: c-blosc 1.x has no SIMD bit-unshuffle for typesize 1.
WIDE_TYPESIZE = 4


def check_shuffle(shuffle: str | None) -> None:
    """Raise ValueError unless ``shuffle`` is ``'bit'``, ``'byte'``, ``None`` or ``'auto'``."""
    if shuffle != "auto" and shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be 'bit', 'byte', None or 'auto', got {shuffle!r}")


def declared_typesize(frame: np.ndarray, cname: str) -> int:
    """The typesize the chunk of ``frame`` declares to blosc.

    Measured (bench/bench_typesize.py, Poisson(0.8) int8 4096^2, one thread, 1 MiB
    blocks): lz4-9, lz4hc-1 and blosclz-5 keep their ratio with typesize 4 and
    decode in 0.31 / 0.30 / 0.36 instead of 0.52 / 0.51 / 0.57 CPU-s/GB,
    compressing 1-8% slower; zstd-1 would lose ratio (4.266 against 4.436), so
    it keeps the true typesize. Any typesize decodes to
    the same bytes in every blosc (and every mrcz) release. Frames whose size is
    not a multiple of the wider typesize, and raw bytes (void dtypes: a chunk
    re-encoded as it was), keep their own.
    """
    one_byte_integers = frame.dtype.kind in "iu" and frame.dtype.itemsize == 1
    if one_byte_integers and cname in WIDE_TYPESIZE_CODECS and frame.nbytes % WIDE_TYPESIZE == 0:
        return WIDE_TYPESIZE
    return frame.dtype.itemsize


def compress_frame(frame: np.ndarray, cname: str, clevel: int, blocksize: int,
                   backend: str | None = None, shuffle: str | None = "bit") -> bytes:
    """Compress one frame into one blosc chunk, bit-shuffled unless ``shuffle`` says
    ``'byte'`` or ``None`` (the filter is recorded in the chunk header).

    ``backend='blosc2'`` writes blosc2-format chunks (only blosc2 reads them);
    anything else writes blosc 1.x chunks, which every mrcz release reads.
    """
    frame = np.ascontiguousarray(frame)
    if frame.nbytes > MAX_CHUNK_NBYTES:
        raise UnsupportedError(f"a frame of {frame.nbytes} bytes exceeds blosc's "
                               f"{MAX_CHUNK_NBYTES}-byte chunk limit")
    if backend == "blosc2":
        return _compress_blosc2(frame, cname, clevel, blocksize, shuffle)
    if cname not in BLOSC1_CODECS or not 0 <= clevel <= 9:
        raise ValueError(f"blosc cannot compress with {cname!r} at level {clevel}")
    typesize = declared_typesize(frame, cname)
    with _SETTINGS.use(blocksize):
        # The extension itself: python-blosc's wrapper re-parses its version string
        # on every bit-shuffled call (47 us: more than compressing a 128^2 particle).
        return blosc.blosc_extension.compress_ptr(frame.ctypes.data, frame.nbytes, typesize,
                                                  clevel, SHUFFLES[shuffle], cname)


def choose_shuffle(sample: np.ndarray, cname: str, clevel: int, blocksize: int,
                   backend: str | None = None) -> str | None:
    """The filter ``shuffle='auto'`` picks for data like ``sample`` (one frame).

    Bit-shuffle, unless byte-shuffle or no filter makes the sample at least
    :data:`AUTO_MIN_SAVING` smaller. Decided by size alone, so the same data
    always get the same filter: gain-corrected float32 gets byte-shuffle under
    zstd (ratio 1.82 against 1.49), counted data keep bit-shuffle.
    """
    sizes = {name: len(compress_frame(sample, cname, clevel, blocksize, backend, name))
             for name in SHUFFLES}
    best = min(sizes, key=sizes.get)
    return best if sizes[best] <= (1 - AUTO_MIN_SAVING) * sizes["bit"] else "bit"


_BLOSC2_FILTERS = {"bit": "BITSHUFFLE", "byte": "SHUFFLE", None: "NOFILTER"}


def _compress_blosc2(frame: np.ndarray, cname: str, clevel: int, blocksize: int,
                     shuffle: str | None) -> bytes:
    blosc2 = _blosc2()
    try:
        codec = blosc2.Codec[cname.upper()]
    except KeyError:
        raise ValueError(f"blosc2 has no codec named {cname!r}") from None
    try:
        return blosc2.compress2(frame, codec=codec, clevel=clevel,
                                filters=[blosc2.Filter[_BLOSC2_FILTERS[shuffle]]],
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


def decompress_into(chunk: memoryview | bytes, out: np.ndarray, name: str,
                    nthreads: int = 1) -> None:
    """Decompress one chunk straight into the contiguous array ``out``.

    ``nthreads > 1`` splits the chunk's blocks over blosc's own threads: for one
    frame read alone (frames read together go one per pool thread instead).
    """
    risk = chunk_risk(chunk)
    if risk:
        raise CorruptDataError(f"{name}: a compressed chunk {risk}")
    header = ChunkHeader.parse(bytes(chunk[:CHUNK_HEADER_BYTES]))
    if header.cbytes != len(chunk):
        raise CorruptDataError(f"{name}: a chunk says it holds {header.cbytes} compressed "
                               f"bytes but {len(chunk)} were read")
    if header.nbytes != out.nbytes:
        raise CorruptDataError(f"{name}: a chunk holds {header.nbytes} bytes where the header "
                               f"dimensions need {out.nbytes}")
    try:
        if header.version <= 2:
            with _SETTINGS.use(None, nthreads) if nthreads > 1 else nullcontext():
                written = blosc.blosc_extension.decompress_ptr(chunk, out.ctypes.data)
        else:
            _blosc2().decompress(chunk, dst=out.view(np.uint8).reshape(-1))
            written = out.nbytes
    except (RuntimeError, ValueError, TypeError, blosc.blosc_extension.error) as err:
        raise CorruptDataError(f"{name}: a compressed chunk cannot be decoded ({err})") from None
    if written != out.nbytes:
        raise CorruptDataError(f"{name}: a chunk decoded to {written} bytes, not {out.nbytes}")


def read_chunk_into(fd: int, chunk: tuple[int, int], index: int, out: np.ndarray, name: str,
                    nthreads: int = 1, crc: int | None = None) -> None:
    """Read chunk ``index`` (``(offset, cbytes)`` from :func:`index_chunks`) and decode it
    into ``out``, through this thread's reusable buffer; with ``crc`` (from the frame
    index) its compressed bytes are checked first."""
    offset, cbytes = chunk
    view = read_buffer(cbytes)
    if os.preadv(fd, [view], offset) != cbytes:
        raise CorruptDataError(f"{name}: chunk {index} is truncated")
    if crc is not None:
        check_chunk(view, crc, index, name)
    decompress_into(view, out, name, nthreads)


def check_chunk(chunk: bytes | memoryview, crc: int, index: int, name: str) -> None:
    """:class:`CorruptDataError` naming z-slice ``index`` unless ``chunk`` has CRC-32C ``crc``."""
    actual = frameindex.checksum(chunk)
    if actual != crc:
        raise CorruptDataError(f"{name}: chunk {index} (z-slice {index}) is damaged: the "
                               f"CRC-32C of its compressed bytes is {actual:08x}, the frame "
                               f"index recorded {crc:08x}")


@dataclasses.dataclass(frozen=True)
class ChunkTable:
    """Where the chunks of a data block are, and their checksums when an index says.

    ``chunks`` holds ``(offset, cbytes)`` from chunk 0 on; ``crcs`` the CRC-32C of
    each (None: the file has no usable frame index, nothing to check against);
    ``source`` is ``'index'`` or ``'walk'``, ``note`` says why the index was not
    used (empty when it was, or when the file has none).
    """

    chunks: list[tuple[int, int]]
    crcs: list[int] | None
    source: str
    note: str = ""

    def frame_index(self, fd: int) -> frameindex.FrameIndex:
        """The chunks as a frame index; without ``crcs`` the chunks are read for theirs."""
        crcs = self.crcs
        if crcs is None:
            crcs = [frameindex.checksum(os.pread(fd, cbytes, offset))
                    for offset, cbytes in self.chunks]
        return frameindex.FrameIndex.of([(offset, cbytes, crc) for (offset, cbytes), crc
                                         in zip(self.chunks, crcs)])


def chunk_table(fd: int, start: int, count: int, size: int, frame_nbytes: int, name: str,
                wanted: int | None = None, partial: bool = False,
                verify: bool = True) -> ChunkTable:
    """Locate the ``count`` chunks of a data block starting at byte ``start``.

    The frame index at the end of the file is used when it is intact and lists
    chunks laid end to end from ``start`` (one read, whatever ``count``);
    otherwise the chunk headers are walked (:func:`index_chunks`, up to chunk
    ``wanted``, default all). An index that is present but damaged raises
    :class:`CorruptDataError` (with ``partial``: walked instead, and noted; without
    ``verify``: walked instead).
    """
    wanted = count if wanted is None else wanted
    note = ""
    try:
        index = frameindex.read_index(fd, size, name)
    except CorruptDataError as err:
        if verify and not partial:
            raise
        index, note = None, str(err) if verify else ""
    if index is not None:
        if index.covers(start, count, size - frameindex.trailer_bytes(len(index))):
            return ChunkTable(index.chunks(0, count), index.crcs(0, count), "index")
        note = (f"{name}: the frame index is stale (it lists {len(index)} chunks that do not "
                f"match the {count} of the header); chunk headers walked instead")
    chunks = index_chunks(fd, start, wanted, size, frame_nbytes, name, partial)
    if index is None and len(chunks) == count and count:
        end = chunks[-1][0] + chunks[-1][1]
        found = frameindex.read_index_at(fd, end, count, name)
        if found is not None and found.covers(start, count, end):
            return ChunkTable(found.chunks(), found.crcs(), "index")
        if size - end == frameindex.trailer_bytes(count) and verify and not note:
            note = (f"{name}: the frame index after the last chunk is damaged (its end "
                    "marker is wrong)")
            if not partial:
                raise CorruptDataError(note)
    return ChunkTable(chunks, None, "walk", note)


def index_chunks(fd: int, start: int, count: int, end: int, frame_nbytes: int,
                 name: str, partial: bool = False) -> list[tuple[int, int]]:
    """Walk ``count`` chunk headers from byte ``start``; return ``(offset, cbytes)`` pairs.

    Every chunk must lie before byte ``end`` and decode to ``frame_nbytes``;
    otherwise :class:`CorruptDataError`, or with ``partial`` the chunks before the
    first bad one.
    """
    chunks: list[tuple[int, int]] = []
    offset = start
    for index in range(count):
        raw = os.pread(fd, EXTENDED_HEADER_BYTES, offset)
        problem = chunk_problem(raw, offset, end, frame_nbytes)
        if problem:
            if partial:
                return chunks
            raise CorruptDataError(f"{name}: chunk {index} of {count} {problem}")
        cbytes = ChunkHeader.parse(raw).cbytes
        chunks.append((offset, cbytes))
        offset += cbytes
    return chunks


def chunk_problem(raw: bytes, offset: int, end: int, frame_nbytes: int) -> str | None:
    """What is wrong with the chunk whose header is ``raw`` (None: nothing)."""
    if len(raw) < CHUNK_HEADER_BYTES:
        return "is missing: the data block ends first (truncated file)"
    risk = chunk_risk(raw)
    if risk:
        return risk
    header = ChunkHeader.parse(raw)
    if header.nbytes != frame_nbytes or header.cbytes < CHUNK_HEADER_BYTES:
        return (f"has an inconsistent header (holds {header.nbytes} bytes in "
                f"{header.cbytes}; each frame needs {frame_nbytes})")
    if offset + header.cbytes > end:
        return "runs past the end of the file (truncated file)"
    return None


def read_buffer(nbytes: int) -> memoryview:
    """A per-thread buffer for one compressed chunk, reused between calls.

    Mapped straight from the kernel rather than malloc'ed: a malloc'ed buffer
    raises glibc's mmap threshold and blosc's per-call temporaries then stay in
    the heap of every thread (measured: +14 MiB per decoding thread).
    """
    if nbytes > READ_BUFFER_CAP:
        return memoryview(mmap.mmap(-1, nbytes))
    buf = getattr(_local, "buffer", None)
    if buf is None or len(buf) < nbytes:
        buf = mmap.mmap(-1, max(nbytes + nbytes // 4, 2**20))
        _local.buffer = buf
    return memoryview(buf)[:nbytes]


def read_plan(chunks: list[tuple[int, int]], n_threads: int) -> tuple[int, int]:
    """``(frames decoded at once, blosc threads per frame)`` for ``(offset, cbytes)`` chunks.

    Small chunks go one frame per pool thread. A frame alone, or chunks of more
    than 8 MiB (each thread would hold one in memory: 45 MB for a 4096^2 float32
    frame), go one at a time with the frame's blocks split over blosc's threads:
    as fast here, half the memory.
    """
    if len(chunks) == 1 or max(cbytes for _, cbytes in chunks) > SERIAL_READ_CBYTES:
        return 1, max(1, min(n_threads, CORES))
    return max(1, min(n_threads, len(chunks))), 1
