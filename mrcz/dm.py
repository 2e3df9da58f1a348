"""Reader for Gatan DigitalMicrograph DM3 and DM4 files.

A DM file is a tree of tag groups and data tags. The header (version,
root size, byte-order flag) and every structural field are big-endian; the
values stored in data tags follow the byte-order flag (1: little-endian).
DM3 uses 4-byte sizes and counts, DM4 uses 8-byte ones and also stores the
byte size of every tag, which lets the parser jump over whole subtrees.

Images live in the ``ImageList`` group: each entry has ``ImageData`` with the
payload (``Data``), its ``DataType``, the ``Dimensions`` (fast axis first) and
``Calibrations``, and ``ImageTags`` with the acquisition metadata. Images named
in the root ``Thumbnails`` group are previews and are not counted by
:func:`readDM`.

The parser never reads the image payload: it records its offset and size,
checks every count and size against the file size before using it, and
bounds the nesting depth, so a damaged file fails fast with
:class:`~mrcz.errors.FormatError`, :class:`~mrcz.errors.CorruptDataError` or
:class:`~mrcz.errors.UnsupportedError`.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from mrcz.errors import CorruptDataError, FormatError, UnsupportedError, describe

__all__ = ["readDM", "read_dm", "readDM4", "read_dm4", "DMImage", "DMFrameReader",
           "iter_dm_frames", "dm_header_for_mrc"]

_GROUP, _DATA = 20, 21
_STRUCT, _STRING, _ARRAY = 15, 18, 20
_UTF16 = 4
# Encoded element types of data tags and their numpy codes.
_ELEMENTS = {2: "i2", 3: "i4", 4: "u2", 5: "u4", 6: "f4", 7: "f8", 8: "?",
             9: "i1", 10: "u1", 11: "i8", 12: "u8"}
_MAX_DEPTH = 64          # real files nest about 12 deep
_MAX_INFO = 4096         # longest accepted info array of a data tag
#: Memory the parsed tag tree may take: this much, plus _TREE_BYTES_PER_BYTE per
#: byte of the file (estimated at _ITEM_BYTES per decoded number or type code).
_TREE_BYTES_FLOOR = 64 * 2**20
_TREE_BYTES_PER_BYTE = 16
_ITEM_BYTES = 64
_INLINE_BYTES = 1 << 16  # larger arrays are described, not decoded
_BLOCK = 1 << 16         # read-ahead of the header parser
_LEAN = {"ImageList": {"*": {"ImageData": None}},
         "Thumbnails": None}  # what DMFrameReader needs from the tree


# ---------------------------------------------------------------------------
# Low-level reading
# ---------------------------------------------------------------------------
class _Window:
    """Random access to a file through one cached block of bytes."""

    __slots__ = ("f", "size", "name", "buf", "start", "end")

    def __init__(self, f: Any, size: int, name: str):
        self.f, self.size, self.name = f, size, name
        self.buf, self.start, self.end = b"", 0, 0

    def get(self, offset: int, n: int) -> tuple[bytes, int]:
        """Return a buffer holding bytes ``[offset, offset + n)`` and their index in it."""
        if self.start <= offset and offset + n <= self.end:
            return self.buf, offset - self.start
        if offset + n > self.size:
            raise CorruptDataError(
                f"{self.name}: truncated DM file: {n} bytes needed at offset "
                f"{offset} but the file has {self.size} bytes")
        self.f.seek(offset)
        data = self.f.read(min(max(n, _BLOCK), self.size - offset))
        if len(data) < n:
            raise CorruptDataError(f"{self.name}: file shrank while being read")
        self.buf, self.start, self.end = data, offset, offset + len(data)
        return data, 0


def _text(raw: bytes) -> str:
    """Decode a tag name or a byte string (UTF-8, else Latin-1)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@functools.lru_cache(maxsize=None)
def _element(code: int, order: str) -> np.dtype:
    return np.dtype(order + _ELEMENTS[code])


@dataclass(frozen=True)
class _Layout:
    """How the value of a data tag is stored: ``count`` items of ``dtype``."""

    kind: str        # 'scalar', 'struct', 'string', 'array', 'strings'
    dtype: np.dtype
    count: int
    code: int        # element type code (the struct/string code for those)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


# ---------------------------------------------------------------------------
# Tag tree parser
# ---------------------------------------------------------------------------
class _TagParser:
    """Walk the tag tree of an open DM file and build nested dicts."""

    def __init__(self, window: _Window, version: int, order: str):
        self.win = window
        self.order = order
        self.wide = version == 4
        self.count = struct.Struct(">Q" if self.wide else ">I")
        self.step = self.count.size
        # Layouts seen in this file (they repeat); dies with the parse.
        self.layouts: dict[tuple[int, ...], _Layout] = {}
        self.budget = _TREE_BYTES_FLOOR + _TREE_BYTES_PER_BYTE * window.size

    def charge(self, pos: int, items: int) -> None:
        """Account for ``items`` decoded values; refuse a tree too large for the file."""
        self.budget -= items * _ITEM_BYTES
        if self.budget < 0:
            raise self.corrupt(pos, "the tag tree would take more memory than a file of "
                                    f"{self.win.size} bytes can justify")

    # -- errors ------------------------------------------------------------
    def corrupt(self, offset: int, problem: str) -> CorruptDataError:
        return CorruptDataError(f"{self.win.name}: corrupt DM tag at offset {offset}: {problem}")

    def read_count(self, offset: int) -> int:
        buf, i = self.win.get(offset, self.step)
        return self.count.unpack_from(buf, i)[0]

    # -- groups --------------------------------------------------------------
    def group(self, pos: int, depth: int, spec: dict | None,
              gname: str = "") -> tuple[dict, int]:
        """Parse the body of group ``gname`` at ``pos``; return (dict, end offset).

        ``spec`` limits the parse to the named children (``'*'`` for unnamed
        ones, ``None`` as a value keeps a whole subtree); ``None`` keeps all.
        """
        if depth > _MAX_DEPTH:
            raise self.corrupt(pos, f"tag groups nested deeper than {_MAX_DEPTH}")
        ntags = self.read_count(pos + 2)
        pos += 2 + self.step
        if ntags * 3 > self.win.size - pos:
            raise self.corrupt(pos, f"group claims {ntags} tags, more than the file can hold")
        out: dict[str, Any] = {}
        repeats: dict[str, int] = {}
        for index in range(ntags):
            name, value, pos = self.entry(pos, depth + 1, spec, gname == "ImageData")
            if value is not _SKIPPED:
                _insert(out, repeats, name if name else str(index), value)
        return out, pos

    def entry(self, pos: int, depth: int, spec: dict | None,
              in_image: bool = False) -> tuple[str, Any, int]:
        """Parse one tag (group or data) at ``pos``; return (name, value, end)."""
        start = pos
        buf, i = self.win.get(pos, 3)
        kind, nlen = buf[i], int.from_bytes(buf[i + 1:i + 3], "big")
        buf, i = self.win.get(pos + 3, nlen + self.step)
        name = _text(buf[i:i + nlen]) if nlen else ""
        pos += 3 + nlen
        end = None
        if self.wide:
            end = pos + 8 + self.count.unpack_from(buf, i + nlen)[0]
            pos += 8
            if end > self.win.size:
                raise self.corrupt(start, f"tag '{name}' extends past the end of the file")
        sub = None if spec is None else spec.get(name if name else "*", _SKIPPED)
        if sub is _SKIPPED:
            if end is not None:
                return name, _SKIPPED, end
            return name, _SKIPPED, self.skip(kind, pos, depth, start)
        if kind == _GROUP:
            value, stop = self.group(pos, depth, sub, name)
        elif kind == _DATA:
            value, stop = self.data(pos, in_image and name == "Data")
        else:
            raise self.corrupt(start, f"unknown tag kind {kind}")
        if end is None:
            return name, value, stop
        if stop > end:
            raise self.corrupt(start, f"tag '{name}' is larger than its stored size")
        return name, value, end

    def skip(self, kind: int, pos: int, depth: int, start: int) -> int:
        """End offset of a DM3 tag whose body starts at ``pos``, decoding nothing."""
        if kind == _DATA:
            layout, pos = self.layout(pos)
            return pos + layout.nbytes
        if kind != _GROUP:
            raise self.corrupt(start, f"unknown tag kind {kind}")
        if depth > _MAX_DEPTH:
            raise self.corrupt(pos, f"tag groups nested deeper than {_MAX_DEPTH}")
        ntags = self.read_count(pos + 2)
        pos += 2 + self.step
        if ntags * 3 > self.win.size - pos:
            raise self.corrupt(pos, f"group claims {ntags} tags, more than the file can hold")
        for _ in range(ntags):
            pos = self.entry(pos, depth + 1, {})[2]
        return pos

    # -- data tags -------------------------------------------------------------
    def layout(self, pos: int) -> tuple[_Layout, int]:
        """Read the '%%%%' marker and info array at ``pos``; return (layout, data offset)."""
        buf, i = self.win.get(pos, 4 + self.step)
        if buf[i:i + 4] != b"%%%%":
            raise self.corrupt(pos, "missing '%%%%' marker of a data tag")
        ninfo = self.count.unpack_from(buf, i + 4)[0]
        pos += 4 + self.step
        if not 0 < ninfo <= _MAX_INFO:
            raise self.corrupt(pos, f"bad info array length {ninfo}")
        buf, i = self.win.get(pos, ninfo * self.step)
        infos = struct.unpack_from(f">{ninfo}{self.count.format[-1]}", buf, i)
        pos += ninfo * self.step
        layout = self.layouts.get(infos)
        if layout is None:
            self.charge(pos, 2 * ninfo)
            try:
                layout = _decode_layout(infos, self.order)
            except (KeyError, IndexError, ValueError, TypeError, OverflowError) as exc:
                raise self.corrupt(pos, f"bad type description {infos[:8]}") from exc
            self.layouts[infos] = layout
        if layout.count and not layout.dtype.itemsize:
            raise self.corrupt(pos, "array of empty items")
        if layout.nbytes > self.win.size - pos:
            raise self.corrupt(pos, f"value of {layout.nbytes} bytes runs past the end of the file")
        return layout, pos

    def data(self, pos: int, payload: bool) -> tuple[Any, int]:
        """Parse a data tag body; return (value, end offset)."""
        layout, pos = self.layout(pos)
        end = pos + layout.nbytes
        if payload or layout.nbytes > _INLINE_BYTES:
            return {"offset": pos, "nbytes": layout.nbytes, "count": layout.count,
                    "type": layout.code}, end
        fields = len(layout.dtype.names) if layout.dtype.names else 1
        self.charge(pos, 1 + layout.count * fields)
        buf, i = self.win.get(pos, layout.nbytes)
        return _decode_value(layout, buf, i), end


_SKIPPED = object()


def _insert(group: dict, repeats: dict[str, int], key: str, value: Any) -> None:
    """Add ``value`` under ``key``, suffixing ``#2``, ``#3``... to repeated names."""
    if key in group:
        n = repeats.get(key, 1) + 1
        while f"{key}#{n}" in group:
            n += 1
        repeats[key] = n
        key = f"{key}#{n}"
    group[key] = value


def _decode_layout(infos: tuple[int, ...], order: str) -> _Layout:
    """Interpret a data tag's info array (raises KeyError/IndexError/ValueError)."""
    code = infos[0]
    if code == _ARRAY:
        inner = infos[1]
        if inner in _ELEMENTS and len(infos) == 3:
            return _Layout("array", _element(inner, order), infos[2], inner)
        if inner == _STRUCT:
            fields = _struct_dtype(infos[2:-1], order)
            return _Layout("array", fields, infos[-1], _STRUCT)
        if inner == _STRING and len(infos) == 4:
            return _Layout("strings", np.dtype(("S", infos[2])), infos[3], _STRING)
        if inner == _ARRAY and len(infos) == 5:
            sub = np.dtype((_element(infos[2], order), (infos[3],)))
            return _Layout("array", sub, infos[4], _ARRAY)
        raise ValueError("unknown array layout")
    if code == _STRUCT:
        return _Layout("struct", _struct_dtype(infos[1:], order), 1, _STRUCT)
    if code == _STRING and len(infos) == 2:
        return _Layout("string", np.dtype("S1"), infos[1], _STRING)
    if len(infos) != 1:
        raise ValueError("extra info entries")
    return _Layout("scalar", _element(code, order), 1, code)


def _struct_dtype(infos: tuple[int, ...], order: str) -> np.dtype:
    """Struct dtype from (name length, field count, (name length, type) * count)."""
    nfields = infos[1]
    if len(infos) != 2 + 2 * nfields or nfields == 0:
        raise ValueError("struct description has the wrong length")
    codes = infos[3::2]
    return np.dtype([(f"f{k}", _element(c, order)) for k, c in enumerate(codes)])


def _decode_value(layout: _Layout, buf: bytes, i: int) -> Any:
    """Python value (JSON-friendly) of a small data tag."""
    kind = layout.kind
    if kind == "scalar":
        return np.frombuffer(buf, layout.dtype, 1, i)[0].item()
    if kind == "string":
        return _text(bytes(buf[i:i + layout.nbytes]))
    if layout.code == _UTF16:
        raw = bytes(buf[i:i + layout.nbytes])
        codec = "utf-16-le" if layout.dtype.str[0] == "<" else "utf-16-be"
        return raw.decode(codec, errors="replace")
    values = np.frombuffer(buf, layout.dtype, layout.count, i)
    if kind == "strings":
        return [_text(v) for v in values.tolist()]
    if kind == "struct":
        return list(values[0].item())
    if layout.code == _STRUCT:
        return [list(v) for v in values.tolist()]
    return values.tolist()


# ---------------------------------------------------------------------------
# File structure
# ---------------------------------------------------------------------------
@dataclass
class _DMFile:
    """The parsed structure of a DM file (no image data)."""

    name: str
    version: int
    order: str       # byte order of tag values and image data: '<' or '>'
    tags: dict


def _parse(f: Any, name: str, lean: bool = False) -> _DMFile:
    """Parse the header and tag tree of the open binary file ``f``."""
    size = os.fstat(f.fileno()).st_size
    window = _Window(f, size, name)
    if size < 16:
        raise FormatError(f"{name}: not a DM file (only {size} bytes)")
    buf, _ = window.get(0, 16)
    version = int.from_bytes(buf[:4], "big")
    if version not in (3, 4):
        raise FormatError(f"{name}: not a DM3/DM4 file (version field {version})")
    width = 8 if version == 4 else 4
    head = 4 + width
    flag = int.from_bytes(buf[head:head + 4], "big")
    if flag not in (0, 1):
        raise FormatError(f"{name}: not a DM file (byte-order flag {flag})")
    parser = _TagParser(window, version, "<" if flag else ">")
    tags, _ = parser.group(head + 4, 0, _LEAN if lean else None)
    return _DMFile(name, version, parser.order, tags)


#: The first four bytes of a DM3 and of a DM4 file (its big-endian version number).
DM_MAGICS = (b"\x00\x00\x00\x03", b"\x00\x00\x00\x04")


def open_unless_dm(path: str | os.PathLike) -> BinaryIO | None:
    """``path`` open for binary reading at its start, or None (closed again) when its
    first bytes say it is a DM3/DM4 file."""
    raw = open(path, "rb")
    try:
        magic = raw.read(4)
        raw.seek(0)
    except BaseException:
        raw.close()
        raise
    if magic in DM_MAGICS:
        raw.close()
        return None
    return raw


def _open_dm(filename: Any, lean: bool = False) -> tuple[Any, _DMFile]:
    """Open ``filename`` unbuffered and parse it; the caller closes the file."""
    name = describe(filename)
    f = open(filename, "rb", buffering=0)
    try:
        return f, _parse(f, name, lean)
    except BaseException:
        f.close()
        raise


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------
_PLAIN, _RGB, _HALF, _OLD = "plain", "rgb", "half-plane FFT", "packed FFT"
# Image DataType: (stored element code, storage kind). DataType 4 is obsolete.
_IMAGE_TYPES = {1: ("i2", _PLAIN), 2: ("f4", _PLAIN), 3: ("c8", _PLAIN),
                5: ("f4", _OLD), 6: ("u1", _PLAIN), 7: ("i4", _PLAIN),
                8: ("u1", _RGB), 9: ("i1", _PLAIN), 10: ("u2", _PLAIN),
                11: ("u4", _PLAIN), 12: ("f8", _PLAIN), 13: ("c16", _PLAIN),
                14: ("?", _PLAIN), 23: ("u1", _RGB), 27: ("c8", _HALF),
                28: ("c16", _HALF)}
# Byte positions of R, G, B, A in a stored 32-bit colour pixel, by byte order.
_RGBA_BYTES = {"<": [2, 1, 0, 3], ">": [1, 2, 3, 0]}
_MAX_DIMS = 8
# DataType implied by the element type of Data when the DataType tag is absent.
_IMPLIED_TYPES = {2: 1, 3: 7, 4: 10, 5: 11, 6: 2, 7: 12, 8: 14, 9: 9, 10: 6}


@dataclass(frozen=True)
class _Image:
    """Where and how one image of a DM file is stored."""

    file: str
    index: int               # position in ImageList
    data_type: int
    dims: tuple[int, ...]    # array (C) order: slowest axis first
    offset: int
    order: str
    group: dict              # the ImageList entry

    @property
    def kind(self) -> str:
        return _IMAGE_TYPES[self.data_type][1]

    @property
    def stored_dtype(self) -> np.dtype:
        return np.dtype(self.order + _IMAGE_TYPES[self.data_type][0])

    @property
    def stored_shape(self) -> tuple[int, ...]:
        if self.kind == _RGB:
            return self.dims + (4,)
        if self.kind == _HALF:
            return self.dims[:-1] + (self.dims[-1] // 2 + 1,)
        return self.dims

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the returned array."""
        return self.dims + (4,) if self.kind == _RGB else self.dims

    @property
    def dtype(self) -> np.dtype:
        """Native dtype of the returned array."""
        if self.kind == _OLD:
            return np.dtype(np.complex64)
        return self.stored_dtype.newbyteorder("=")

    @property
    def nframes(self) -> int:
        """Number of frames: the slowest axis of a stack of three or more axes."""
        return self.dims[0] if len(self.dims) >= 3 else 1

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """Turn stored values (any leading frame axes) into the returned form."""
        if raw.dtype.byteorder not in "=|":
            raw = raw.byteswap(inplace=True).view(raw.dtype.newbyteorder("="))
        if self.kind == _RGB:
            raw[...] = raw[..., _RGBA_BYTES[self.order]]
        elif self.kind == _HALF:
            return _unpack_half_plane(raw, self.dims[-1])
        elif self.kind == _OLD:
            return _unpack_packed(raw)
        return raw


def _image_groups(dm: _DMFile) -> list[dict]:
    """The ImageList entries of a file, in file order."""
    images = dm.tags.get("ImageList")
    if not isinstance(images, dict) or not images:
        raise FormatError(f"{dm.name}: DM file without images (no ImageList)")
    return list(images.values())


def _main_indices(dm: _DMFile) -> list[int]:
    """ImageList positions of the images that are not thumbnails."""
    thumbs = dm.tags.get("Thumbnails")
    thumbs = thumbs.values() if isinstance(thumbs, dict) else ()
    skip = {i for t in thumbs if isinstance(i := _find(t, "ImageIndex"), int)}
    return [i for i in range(len(_image_groups(dm))) if i not in skip]


def _select(dm: _DMFile, image: int | None) -> tuple[int, _Image]:
    """Return (K, image K) where K counts non-thumbnail images."""
    mains = _main_indices(dm)
    k = 0 if image is None else int(image)
    if not mains:
        raise FormatError(f"{dm.name}: DM file has only thumbnail images")
    if not 0 <= k < len(mains):
        raise IndexError(f"{dm.name}: image {k} requested but the file has "
                         f"{len(mains)} image(s)")
    return k, _describe_image(dm, mains[k])


def _describe_image(dm: _DMFile, index: int) -> _Image:
    """Validate ImageList entry ``index`` and return where its data lives."""
    group = _image_groups(dm)[index]
    where = f"{dm.name}: image {index}"
    data = group.get("ImageData") if isinstance(group, dict) else None
    if not isinstance(data, dict):
        raise CorruptDataError(f"{where} has no ImageData group")
    payload, dims = data.get("Data"), data.get("Dimensions")
    data_type = data.get("DataType")
    if data_type is None and isinstance(payload, dict):
        data_type = _IMPLIED_TYPES.get(payload.get("type"))
    if data_type not in _IMAGE_TYPES:
        raise UnsupportedError(f"{where} has unsupported image DataType {data_type!r}")
    if not _is_payload(payload) or not isinstance(dims, dict):
        raise CorruptDataError(f"{where} lacks its Data or Dimensions tag")
    sizes = tuple(dims.values())[::-1]
    if not 0 < len(sizes) <= _MAX_DIMS or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise CorruptDataError(f"{where} has invalid Dimensions {sizes[::-1]}")
    img = _Image(dm.name, index, data_type, sizes, payload["offset"], dm.order, group)
    if img.kind == _OLD and (len(sizes) != 2 or sizes[0] != sizes[1] or sizes[0] % 2):
        raise UnsupportedError(f"{where}: packed complex data must be a square "
                               f"image of even size, not {sizes}")
    expected = math.prod(img.stored_shape) * img.stored_dtype.itemsize
    if expected != payload["nbytes"]:
        raise CorruptDataError(f"{where}: Dimensions {sizes} with DataType {data_type} "
                               f"need {expected} bytes but Data holds {payload['nbytes']}")
    return img


def _is_payload(value: Any) -> bool:
    """Whether ``value`` is the parser's description of an array tag."""
    return (isinstance(value, dict) and value.keys() == {"offset", "nbytes", "count", "type"}
            and all(type(v) is int for v in value.values()))


def _unpack_half_plane(raw: np.ndarray, width: int) -> np.ndarray:
    """Full, centred spectrum from DM's half-plane FFT storage (DataType 27/28).

    Stored column ``c`` holds frequency ``-c`` along x, rows are centred on
    zero frequency; the other half follows from Hermitian symmetry
    ``F(-ky, -kx) = conj(F(ky, kx))``.
    """
    rows, half = raw.shape[-2], raw.shape[-1]
    partner = (2 * (rows // 2) - np.arange(rows)) % rows
    out = np.empty(raw.shape[:-1] + (width,), raw.dtype)
    out[..., :half] = raw[..., ::-1]
    out[..., half:] = np.conj(raw[..., partner, 1:width - half + 1])
    return out


def _unpack_packed(raw: np.ndarray) -> np.ndarray:
    """Full 2N x 2N spectrum (DC at [0, 0]) from DM's packed complex storage (DataType 5).

    The 2N x 2N floats are read as 2N rows of N complex pairs. Pairs 1..N-1
    of rows 0..N hold columns N+1..2N-1 of those rows, rows N+1.. hold
    columns N..2N-1 of theirs, pair 0 of rows 1..N-1 holds column 0 of rows
    N+1..2N-1, and pair 0 of rows 0 and N packs the four real values at
    (N, 0), (0, 0), (N, N) and (0, N). The rest follows from Hermitian
    symmetry ``F[-i, -j] = conj(F[i, j])``.
    """
    size = raw.shape[-1]
    n = size // 2
    pairs = np.ascontiguousarray(raw, np.float32).view(np.complex64)  # (2N, N)
    out = np.zeros((size, size), np.complex64)
    known = np.zeros((size, size), bool)
    top, bottom = slice(None, n), slice(n + 1, None)
    placements = [((n, 0), pairs[0, 0].real), ((0, 0), pairs[0, 0].imag),
                  ((n, n), pairs[n, 0].real), ((0, n), pairs[n, 0].imag),
                  ((top, bottom), pairs[:n, 1:]), ((bottom, 0), pairs[1:n, 0]),
                  ((n, bottom), pairs[n, 1:]), ((bottom, slice(n, None)), pairs[n + 1:])]
    for where, values in placements:
        out[where] = values
        known[where] = True
    mirror = (-np.arange(size)) % size
    flipped = np.conj(out[mirror][:, mirror])
    return np.where(known, out, flipped)


def _read_into(f: Any, offset: int, out: np.ndarray, name: str) -> np.ndarray:
    """Fill ``out`` with the bytes at ``offset`` of ``f`` (no intermediate copy).

    Positional reads, so threads may read frames of one open file at once.
    """
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = f.fileno()
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if not n:
            raise CorruptDataError(f"{name}: truncated image data at offset {offset + done}")
        done += n
    return out


def _read_image(f: Any, img: _Image) -> np.ndarray:
    """Read a whole image into one preallocated array."""
    raw = np.empty(img.stored_shape, img.stored_dtype)
    return img.convert(_read_into(f, img.offset, raw, img.file))


def _map_image(filename: Any, img: _Image) -> np.ndarray:
    """Read-only memory map of a stored-as-is image."""
    return np.memmap(filename, img.stored_dtype, "r", img.offset, img.stored_shape)


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------
# Length units DM writes, in Angstrom (micro as U+00B5 or U+03BC).
_ANGSTROM = {"m": 1e10, "cm": 1e8, "mm": 1e7, "um": 1e4, "\u00b5m": 1e4,
             "\u03bcm": 1e4, "micron": 1e4, "nm": 10.0, "A": 1.0, "\u00c5": 1.0,
             "\u212b": 1.0, "pm": 0.01}
# Meta Data/Signal -> (units, name) of the spectral axis.
_SPECTRAL = {"EELS": ("eV", "Energy loss"), "CL": ("nm", "Wavelength"),
             "X-ray": ("keV", "Energy")}
_SPATIAL = ("x", "y", "z", "w")
_MISSING = object()


def _find(tree: Any, path: str) -> Any:
    """Value at the '/'-separated ``path`` of nested dicts, else ``_MISSING``."""
    node = tree
    for key in path.split("/"):
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number, else ``None``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _axis_names(units: list[str], signal: Any) -> list[str]:
    """Names in array order: the spectral axis if any, then x, y, z from the fast end."""
    names: list[str | None] = [None] * len(units)
    spectral = _SPECTRAL.get(signal) if isinstance(signal, str) else None
    if spectral and spectral[0] in units:
        names[units.index(spectral[0])] = spectral[1]
    free = [i for i, name in enumerate(names) if name is None][::-1]
    for n, i in enumerate(free):
        names[i] = _SPATIAL[n] if n < len(_SPATIAL) else f"axis{i}"
    return names


def _axes(img: _Image, signal: Any) -> list[dict]:
    """One dict per array axis: name, size, scale, offset, origin, units."""
    found = _find(img.group, "ImageData/Calibrations/Dimension")
    stored = list(found.values())[::-1] if isinstance(found, dict) else []
    stored = [None] * (len(img.dims) - len(stored)) + stored[-len(img.dims):]
    axes = []
    for size, cal in zip(img.dims, stored):
        cal = cal if isinstance(cal, dict) else {}
        scale = _number(cal.get("Scale"))
        origin = _number(cal.get("Origin"))
        scale = 1.0 if scale is None else scale
        origin = 0.0 if origin is None else origin
        units = cal.get("Units")
        axes.append({"size": size, "scale": scale, "offset": -origin * scale,
                     "origin": origin, "units": units if isinstance(units, str) else ""})
    for axis, name in zip(axes, _axis_names([a["units"] for a in axes], signal)):
        axis["name"] = name
    if img.kind == _RGB:
        axes.append({"size": 4, "scale": 1.0, "offset": 0.0, "origin": 0.0,
                     "units": "", "name": "RGBA"})
    return axes


def _pixelsize(axes: list[dict]) -> np.ndarray:
    """Angstrom per pixel of the image axes (not RGBA); NaN where not a length."""
    sizes = []
    for axis in axes:
        factor = _ANGSTROM.get(axis["units"].strip())
        spatial = axis["name"] in _SPATIAL
        sizes.append(axis["scale"] * factor if factor and spatial else math.nan)
    return np.array(sizes[:-1] if axes and axes[-1]["name"] == "RGBA" else sizes)


class _TagSource:
    """First-found lookups in an image's tags (and stack-builder source tags)."""

    def __init__(self, image_tags: Any):
        self.trees = [image_tags]
        created = _find(image_tags, "source/Tags at creation")
        if isinstance(created, dict):
            self.trees.append(created)

    def get(self, *paths: str) -> Any:
        for tree in self.trees:
            for path in paths:
                value = _find(tree, path)
                if value is not _MISSING:
                    return value
        return None

    def number(self, *paths: str) -> float | None:
        return _number(self.get(*paths))

    def text(self, *paths: str) -> str | None:
        value = self.get(*paths)
        return value if isinstance(value, str) and value else None


def _binning(tags: _TagSource) -> list | None:
    """Binning as stored (x, y)."""
    binning = tags.get("Acquisition/Parameters/High Level/Binning")
    if isinstance(binning, list):
        return binning
    pair = [tags.get(f"Acquisition/Parameters/Detector/{b}") for b in ("hbin", "vbin")]
    if all(isinstance(b, int) for b in pair):
        return pair
    single = tags.get("DataBar/Binning")
    return [single, single] if isinstance(single, int) else None


def _frame_count(img: _Image, axes: list[dict]) -> int | None:
    """Frames of a movie: 1 for an image, the z size of a 3-D stack, else None."""
    if len(img.dims) <= 2:
        return 1
    if len(img.dims) == 3 and axes[0]["name"] == "z":
        return img.dims[0]
    return None


def _meta(dm: _DMFile, img: _Image, k: int) -> dict:
    """The metadata dict returned by :func:`readDM`."""
    tags = _TagSource(img.group.get("ImageTags"))
    axes = _axes(img, tags.get("Meta Data/Signal"))
    brightness = _find(img.group, "ImageData/Calibrations/Brightness")
    brightness = brightness if isinstance(brightness, dict) else {}
    voltage = tags.number("Microscope Info/Voltage")
    exposure = tags.number("Acquisition/Parameters/High Level/Exposure (s)",
                           "Acquisition/Parameters/Detector/exposure (s)",
                           "DataBar/Exposure Time (s)")
    title = img.group.get("Name")
    frames = _frame_count(img, axes)
    return {
        "file": dm.name, "version": dm.version, "byteorder": dm.order,
        "image": k, "title": title if isinstance(title, str) else "",
        "data_type": img.data_type, "shape": list(img.shape), "dtype": img.dtype.name,
        "axes": axes, "pixelsize": _pixelsize(axes),
        "intensity": {"origin": _number(brightness.get("Origin")),
                      "scale": _number(brightness.get("Scale")),
                      "units": brightness.get("Units")},
        "voltage": None if voltage is None else voltage / 1000.0,
        "C3": tags.number("Microscope Info/Cs(mm)"),
        "magnification": tags.number("Microscope Info/Indicated Magnification"),
        "actual_magnification": tags.number("Microscope Info/Actual Magnification"),
        "exposure": exposure,
        "frame_count": frames,
        "frame_time": None if exposure is None or frames is None else exposure / frames,
        "binning": _binning(tags),
        "detector": tags.text("Acquisition/Device/Name", "DataBar/Device Name"),
        "detector_pixel_size": tags.get("Acquisition/Device/CCD/Pixel Size (um)"),
        "microscope": tags.text("Microscope Info/Name", "Microscope Info/Microscope"),
        "dose_rate_calibration": tags.get("Calibration/Dose Rate/Calibration"),
        "acquisition_date": tags.text("DataBar/Acquisition Date"),
        "acquisition_time": tags.text("DataBar/Acquisition Time"),
        "image_tags": tags.trees[0] if isinstance(tags.trees[0], dict) else {},
        "tags": dm.tags,
    }


def _gain(meta: dict) -> float | None:
    """Counts per electron, when the intensity is calibrated in electrons."""
    intensity = meta.get("intensity") or {}
    scale = intensity.get("scale")
    if intensity.get("units") in ("e-", "e") and scale:
        return 1.0 / scale
    return None


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------
def readDM(filename: str | os.PathLike, image: int | None = None,
           lazy: bool = False) -> tuple[np.ndarray, dict]:
    """Read one image of a DM3 or DM4 file.

    Parameters
    ----------
    filename
        Path of the file.
    image
        Which image, counting only non-thumbnail images (default: the first).
    lazy
        Return a read-only ``np.memmap`` instead of reading the data. Colour
        and packed-FFT images need conversion and come back as read-only
        in-memory arrays.

    Returns
    -------
    data, meta
        The image in the file's C order (slowest axis first, no flip; colour
        images gain a trailing RGBA axis of uint8) and its metadata: ``axes``,
        ``pixelsize`` (Angstrom per axis, NaN where not a length),
        ``voltage`` (kV), ``C3`` (mm), ``magnification``, ``exposure`` (s),
        ``frame_count``, ``frame_time`` (s), ``binning``, ``detector``,
        ``dose_rate_calibration``, ``acquisition_date``, ... and ``tags``,
        the whole tag tree as JSON-serialisable nested dicts (the image data
        described by offset and size).

    Raises
    ------
    FormatError, CorruptDataError, UnsupportedError
        Not a DM file, a damaged one, or an image type that cannot be read.
    IndexError
        ``image`` is out of range.
    """
    f, dm = _open_dm(filename)
    with f:
        k, img = _select(dm, image)
        if lazy and img.kind == _PLAIN:
            data = _map_image(filename, img)
        else:
            data = _read_image(f, img)
            data.flags.writeable = not lazy
    return data, _meta(dm, img, k)


class DMFrameReader:
    """Frame-by-frame access to a DM image stack; use as a context manager.

    Frames run along the slowest axis of an image with three or more axes;
    a 2-D image is a single frame. Only the frames asked for are read.
    """

    def __init__(self, filename: str | os.PathLike, image: int | None = None):
        self._f, dm = _open_dm(filename, lean=True)
        try:
            self.image, self._img = _select(dm, image)
        except BaseException:
            self._f.close()
            raise
        img = self._img
        self.shape: tuple[int, ...] = img.shape
        self.dtype: np.dtype = img.dtype
        stack = len(img.dims) >= 3
        self._stored = img.stored_shape[1:] if stack else img.stored_shape
        self.frame_shape: tuple[int, ...] = img.shape[1:] if stack else img.shape

    def __len__(self) -> int:
        return self._img.nframes

    def __getitem__(self, i: int) -> np.ndarray:
        """Read frame ``i`` into a new array."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"frame {i} out of range for {n} frame(s)")
        img = self._img
        raw = np.empty(self._stored, img.stored_dtype)
        offset = img.offset + (i % n) * raw.nbytes
        return img.convert(_read_into(self._f, offset, raw, img.file))

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> DMFrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_dm_frames(filename: str | os.PathLike,
                   image: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of a DM image stack one at a time (see :class:`DMFrameReader`).

    The file is opened on the first ``next()``, so errors surface there.
    """
    with DMFrameReader(filename, image) as reader:
        yield from reader


def dm_header_for_mrc(meta: dict) -> dict:
    """Keyword arguments for ``mrcz.writeMRC`` from the ``meta`` of :func:`readDM`.

    ``pixelsize`` is [z, y, x] in Angstrom: an axis without a length
    calibration takes the x (else y) pixel size; it is left out when no axis
    is calibrated. ``voltage``, ``C3`` and ``gain`` are given when known, and
    ``meta`` holds the microscope metadata and the image's tag tree.
    """
    sizes = [float(s) for s in np.asarray(meta.get("pixelsize", []), float)][-3:]
    known = [s for s in sizes[::-1] if math.isfinite(s)]
    kwargs: dict[str, Any] = {}
    if known:
        zyx = [known[0]] * (3 - len(sizes)) + [s if math.isfinite(s) else known[0]
                                                for s in sizes]
        kwargs.update(pixelsize=zyx, pixelunits="\\AA")
    for key in ("voltage", "C3"):
        if meta.get(key) is not None:
            kwargs[key] = meta[key]
    gain = _gain(meta)
    if gain is not None:
        kwargs["gain"] = gain
    kwargs["meta"] = _mrc_meta(meta)
    return kwargs


def _mrc_meta(meta: dict) -> dict:
    """JSON-serialisable microscope metadata to store in an MRCZ header."""
    skip = {"tags", "pixelsize", "file", "byteorder", "version", "dtype"}
    out = {key: value for key, value in meta.items() if key not in skip}
    # dtype would clash with the MRC header's own field: it goes with the source
    out["source"] = {"file": os.path.basename(str(meta.get("file", ""))),
                     "format": f"DM{meta.get('version', '')}", "dtype": meta.get("dtype")}
    return out


# ---------------------------------------------------------------------------
# Interface of mrcz 0.6
# ---------------------------------------------------------------------------
@dataclass(kw_only=True)
class DMImage:
    """One image of a :class:`readDM4` result: data, shape and selected tags."""

    imageInfo: dict = field(default_factory=dict)
    shape: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    imageData: np.ndarray = field(default_factory=lambda: np.zeros(1))


# imageInfo keys of mrcz 0.6: (key, group path below ImageTags, tag name).
_INFO_TAGS = [
    ("ActualMag", "Microscope Info", "Actual Magnification"),
    ("NominalMag", "Microscope Info", "Indicated Magnification"),
    ("C3", "Microscope Info", "Cs(mm)"),
    ("Voltage", "Microscope Info", "Voltage"),
    ("MicroscopeMode", "Microscope Info", "Mode"),
    ("EELSApertureIndex", "EELS Spectrometer", "Aperture index"),
    ("EELSApertureLabel", "EELS Spectrometer", "Aperture label"),
    ("EELSEnergyLoss", "EELS Spectrometer", "Energy loss (eV)"),
    ("EELSSlitIn", "EELS Spectrometer", "Slit inserted"),
    ("EELSSlitWidth", "EELS Spectrometer", "Slit width (eV)"),
    ("LatSDistanceToFocus", "Latitude-S", "Distance To Focus Position"),
    ("LatSIntendedDefocus", "Latitude-S", "Intended Defocus"),
    ("LatSBeamDiameter", "Latitude-S", "Beam Diameter (nm)"),
]
# Tags anywhere below ImageTags/Acquisition: tag name -> (key, ancestor, its distance).
_ACQUISITION_TAGS = {
    "Horizontal Flip": ("HorzFlip", "Device", 3),
    "Vertical Flip": ("VertFlip", "Device", 3),
    "Diagonal Flip": ("DiagFlip", "Device", 3),
    "Pixel Size (um)": ("DetectorPixelSize", "Device", 2),
    "Exposure": ("Exposure", "Detector", 1),
    "hbin": ("HorzBin", "Detector", 1),
    "vbin": ("VertBin", "Detector", 1),
}


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of every data tag below ``tree``, in file order."""
    if isinstance(tree, dict) and not _is_payload(tree):
        for key, value in tree.items():
            yield from _leaves(value, path + (key,))
    else:
        yield path, tree


def _image_info(group: dict) -> dict:
    """The ``imageInfo`` dict of mrcz 0.6 for one ImageList entry."""
    info: dict[str, Any] = {}
    calibrations = _find(group, "ImageData/Calibrations")
    brightness = _find(calibrations, "Brightness")
    for key in ("Origin", "Scale", "Units"):
        if _find(brightness, key) is not _MISSING:
            info["Intensity" + key] = brightness[key]
    dimensions = _find(calibrations, "Dimension")
    for axis, dim in zip("XYZ", dimensions.values() if isinstance(dimensions, dict) else ()):
        for key in ("Origin", "Scale", "Units"):
            if _find(dim, key) is not _MISSING:
                info[f"Dim{axis}{key}"] = dim[key]
    tags = group.get("ImageTags")
    for key, where, name in _INFO_TAGS:
        value = _find(tags, f"{where}/{name}")
        if value is not _MISSING:
            info[key] = value
    for path, value in _leaves(_find(tags, "Acquisition"), ("Acquisition",)):
        key, ancestor, distance = _ACQUISITION_TAGS.get(path[-1], (None, None, 0))
        if key and len(path) > distance and path[-1 - distance] == ancestor:
            info[key] = value
    dose = _find(tags, "Calibration/Dose Rate/Calibration")
    if dose is not _MISSING:
        info["DoseRateCalibration"] = [value for _, value in _leaves(dose)]
    return info


class readDM4:
    """Read every image of a DM file, with the interface of mrcz 0.6.

    ``im[i].imageData`` is image ``i`` of the ImageList (thumbnails included,
    usually ``im[0]``), flipped along axis 1 as mrcz 0.6 did
    (``data[:, ::-1, ...]``); ``im[i].shape`` is its unflipped shape and
    ``im[i].imageInfo`` a dict of selected tags (``'Voltage'`` in V, ``'C3'``,
    ``'IntensityScale'``, ``'HorzFlip'``, ``'DetectorPixelSize'``, ...). Reads
    DM3 as well as DM4. Use :func:`readDM` for new code.

    Parameters
    ----------
    filename
        Path of the file.
    verbose
        Log the images found on the ``'MRCZ'`` logger at debug level.
    """

    def __init__(self, filename: str | os.PathLike, verbose: bool = False):
        self.verbose = verbose
        self.im: list[DMImage] = []
        self.f, dm = _open_dm(filename)
        try:
            for index in range(len(_image_groups(dm))):
                self.im.append(self._load(dm, index))
        finally:
            self.f.close()
            self.f = None

    def _load(self, dm: _DMFile, index: int) -> DMImage:
        img = _describe_image(dm, index)
        data = _read_image(self.f, img)
        if self.verbose:
            logging.getLogger("MRCZ").debug(
                "%s: image %d, shape %s, %s at offset %d", dm.name, index,
                img.shape, img.dtype, img.offset)
        return DMImage(imageInfo=_image_info(img.group), shape=np.array(img.dims),
                       imageData=data[:, ::-1, ...] if data.ndim >= 2 else data)


read_dm = readDM
read_dm4 = readDM4
