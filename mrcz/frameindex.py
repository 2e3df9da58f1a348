"""The frame index trailer of an MRCZ file: pack, unpack and check it (bytes only).

After the last blosc chunk a file written by this package carries a table
with, per chunk, its offset, compressed size and the CRC-32C of its compressed
bytes, followed by a 32-byte footer that ends with :data:`MAGIC`, so a reader
finds it from the end of the file. The layout is in docs/specification.rst.
This module knows the trailer's bytes only: no image arrays, no MRC header.
"""
from __future__ import annotations

import dataclasses
import os
import struct

import crc32c
import numpy as np

from .errors import CorruptDataError

MAGIC = b"MRCZIDX1"
#: Footer: frame count, trailer length, checksum id, index checksum, magic.
FOOTER = struct.Struct("<QQII8s")
FOOTER_BYTES = FOOTER.size
ENTRY_DTYPE = np.dtype([("offset", "<u8"), ("cbytes", "<u4"), ("crc", "<u4")])
ENTRY_BYTES = ENTRY_DTYPE.itemsize
#: Checksum id 1: CRC-32C (Castagnoli), as in iSCSI, ext4 metadata and Zarr v3.
CRC32C = 1
#: Largest index read (2**26 entries, far more frames than any MRC file holds).
MAX_TRAILER_BYTES = 2**26 * ENTRY_BYTES + FOOTER_BYTES


def checksum(data: bytes | memoryview) -> int:
    """CRC-32C of ``data`` (hardware-accelerated where the CPU has it)."""
    return crc32c.crc32c(data)


def trailer_bytes(count: int) -> int:
    """Length of the trailer of an index of ``count`` chunks."""
    return count * ENTRY_BYTES + FOOTER_BYTES


@dataclasses.dataclass(frozen=True)
class FrameIndex:
    """Offsets, compressed sizes and CRC-32Cs of consecutive chunks (one per z-slice)."""

    entries: np.ndarray  # of ENTRY_DTYPE

    @classmethod
    def of(cls, chunks: list[tuple[int, int, int]]) -> FrameIndex:
        """From ``(offset, cbytes, crc)`` triples."""
        return cls(np.array([tuple(c) for c in chunks], dtype=ENTRY_DTYPE))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def end(self) -> int:
        """Byte just after the last chunk (0 for an empty index)."""
        if not len(self):
            return 0
        last = self.entries[-1]
        return int(last["offset"]) + int(last["cbytes"])

    def chunks(self, first: int = 0, count: int | None = None) -> list[tuple[int, int]]:
        """``(offset, cbytes)`` of chunks ``first .. first+count-1``."""
        part = self.entries[first:None if count is None else first + count]
        return list(zip(part["offset"].tolist(), part["cbytes"].tolist()))

    def crcs(self, first: int = 0, count: int | None = None) -> list[int]:
        """CRC-32Cs of chunks ``first .. first+count-1``."""
        return self.entries["crc"][first:None if count is None else first + count].tolist()

    def prefix(self, count: int) -> FrameIndex:
        """The index of the first ``count`` chunks."""
        return FrameIndex(self.entries[:count])

    def covers(self, start: int, count: int, limit: int) -> bool:
        """True when the first ``count`` entries are chunks laid end to end from byte
        ``start`` and ending at or before byte ``limit``."""
        if len(self) < count:
            return False
        part = self.entries[:count]
        if not count:
            return True
        offsets = part["offset"].astype(np.int64)
        ends = offsets + part["cbytes"].astype(np.int64)
        return (int(offsets[0]) == start and bool(np.all(offsets[1:] == ends[:-1]))
                and int(ends[-1]) <= limit and bool(np.all(part["cbytes"] >= 16)))

    def pack(self) -> bytes:
        """The trailer: the entries, then the footer with the index checksum."""
        table = self.entries.astype(ENTRY_DTYPE, copy=False).tobytes()
        head = FOOTER.pack(len(self), trailer_bytes(len(self)), CRC32C, 0, MAGIC)[:20]
        crc = crc32c.crc32c(head, crc32c.crc32c(table))
        return table + FOOTER.pack(len(self), trailer_bytes(len(self)), CRC32C, crc, MAGIC)


def unpack(trailer: bytes, name: str) -> FrameIndex:
    """Parse and check a whole trailer; :class:`CorruptDataError` if it is damaged."""
    if len(trailer) < FOOTER_BYTES:
        raise CorruptDataError(f"{name}: the frame index is truncated")
    count, length, checksum_id, crc, magic = FOOTER.unpack(trailer[-FOOTER_BYTES:])
    if magic != MAGIC:
        raise CorruptDataError(f"{name}: the frame index has no valid end marker")
    if length != len(trailer) or length != trailer_bytes(count):
        raise CorruptDataError(f"{name}: the frame index is damaged (its length field says "
                               f"{length} bytes for {count} frames)")
    if checksum_id != CRC32C:
        raise CorruptDataError(f"{name}: the frame index names checksum {checksum_id}, "
                               "which this package does not know (damaged or newer file)")
    body = memoryview(trailer)[:-FOOTER_BYTES + 20]
    if crc32c.crc32c(body) != crc:
        raise CorruptDataError(f"{name}: the frame index is damaged (its checksum does not "
                               "match)")
    entries = np.frombuffer(trailer, dtype=ENTRY_DTYPE, count=count).copy()
    return FrameIndex(entries)


def read_footer(fd: int, size: int) -> tuple[int, int] | None:
    """``(count, trailer length)`` from the footer at the end of the file, or None when the
    file does not end with :data:`MAGIC`."""
    if size < FOOTER_BYTES:
        return None
    raw = os.pread(fd, FOOTER_BYTES, size - FOOTER_BYTES)
    if len(raw) != FOOTER_BYTES or raw[-len(MAGIC):] != MAGIC:
        return None
    count, length = FOOTER.unpack(raw)[:2]
    return count, length


def read_index(fd: int, size: int, name: str) -> FrameIndex | None:
    """The frame index that ends the file (``size`` bytes), None when there is none.

    A file that ends with :data:`MAGIC` but whose index is damaged raises
    :class:`CorruptDataError`.
    """
    footer = read_footer(fd, size)
    if footer is None:
        return None
    count, length = footer
    if length != trailer_bytes(count) or not FOOTER_BYTES <= length <= min(size,
                                                                           MAX_TRAILER_BYTES):
        raise CorruptDataError(f"{name}: the frame index is damaged (its length field says "
                               f"{length} bytes for {count} frames)")
    return unpack(os.pread(fd, length, size - length), name)


def read_index_at(fd: int, position: int, count: int, name: str) -> FrameIndex | None:
    """An index of ``count`` chunks starting at byte ``position``, None when none is there
    (damaged or absent)."""
    raw = os.pread(fd, trailer_bytes(count), position)
    try:
        return unpack(raw, name)
    except CorruptDataError:
        return None
