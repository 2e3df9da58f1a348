"""Synthetic DigitalMicrograph (DM3/DM4) files for the tests.

A tag tree is written as Python values: a ``dict`` is a named tag group, a
``list`` a group of unnamed entries, a :class:`Group` one with repeated
names, and data tags are :class:`Tag` objects
(or plain ``bool``/``int``/``float``/``str``, typed as DM does by default).
:func:`encode` turns a tree into a list of byte strings and :class:`Hole`
placeholders, so that files with multi-gigabyte payloads can be written
sparsely by :func:`write`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Encoded element types of DM data tags.
SHORT, LONG, USHORT, ULONG, FLOAT, DOUBLE, BOOL, CHAR, OCTET, INT64, UINT64 = (
    2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
STRUCT, STRING, ARRAY = 15, 18, 20
NUMPY_CODES = {SHORT: "i2", LONG: "i4", USHORT: "u2", ULONG: "u4", FLOAT: "f4",
               DOUBLE: "f8", BOOL: "?", CHAR: "i1", OCTET: "u1", INT64: "i8",
               UINT64: "u8"}
# Image DataType for a numpy dtype, and the element type DM stores it as.
IMAGE_TYPES = {"int16": (1, SHORT), "float32": (2, FLOAT), "uint8": (6, OCTET),
               "int32": (7, LONG), "int8": (9, CHAR), "uint16": (10, USHORT),
               "uint32": (11, ULONG), "float64": (12, DOUBLE), "bool": (14, BOOL),
               "complex64": (3, FLOAT), "complex128": (13, DOUBLE)}


@dataclass(frozen=True)
class Hole:
    """``size`` bytes of payload that :func:`write` leaves unwritten (sparse)."""

    size: int


@dataclass(frozen=True)
class Tag:
    """A data tag: its info array (after the type) and its raw value."""

    infos: tuple[int, ...]
    value: bytes | Hole


class Group(tuple):
    """A tag group given as (name, value) pairs; names may repeat."""


def scalar(code: int, value: Any, order: str = "<") -> Tag:
    return Tag((code,), np.array(value, order + NUMPY_CODES[code]).tobytes())


def array(code: int, values: Any, order: str = "<") -> Tag:
    data = np.asarray(values, order + NUMPY_CODES[code]).ravel()
    return Tag((ARRAY, code, data.size), data.tobytes())


def text(value: str, order: str = "<") -> Tag:
    """A string the way DM stores it: an array of UTF-16 code units."""
    units = np.frombuffer(value.encode("utf-16-le"), "<u2")
    return array(USHORT, units, order)


def struct_tag(codes: list[int], values: list[Any], order: str = "<") -> Tag:
    infos = (STRUCT, 0, len(codes)) + sum(((0, c) for c in codes), ())
    data = b"".join(np.array(v, order + NUMPY_CODES[c]).tobytes()
                    for c, v in zip(codes, values))
    return Tag(infos, data)


def struct_array(codes: list[int], count: int, data: bytes | Hole) -> Tag:
    """An array of ``count`` structs whose raw values are ``data``."""
    fields = sum(((0, c) for c in codes), ())
    return Tag((ARRAY, STRUCT, 0, len(codes)) + fields + (count,), data)


def byte_string(value: bytes) -> Tag:
    return Tag((STRING, len(value)), value)


def _auto(value: Any, order: str) -> Tag:
    """Type plain Python values as DM does."""
    if isinstance(value, Tag):
        return value
    if isinstance(value, bool):
        return scalar(BOOL, value, order)
    if isinstance(value, int):
        return scalar(LONG, value, order)
    if isinstance(value, float):
        return scalar(FLOAT, value, order)
    if isinstance(value, str):
        return text(value, order)
    raise TypeError(f"cannot store {value!r} in a DM tag")


class Encoder:
    """Serialise tag trees for DM ``version`` 3 or 4 with data in ``order``."""

    def __init__(self, version: int = 4, order: str = "<"):
        self.version, self.order = version, order
        self.count = ">Q" if version == 4 else ">I"

    def pack(self, *values: int) -> bytes:
        return b"".join(struct.pack(self.count, v) for v in values)

    def group_body(self, tree: dict | list | Group) -> list:
        if isinstance(tree, Group):
            items = iter(tree)
        else:
            items = tree.items() if isinstance(tree, dict) else (("", v) for v in tree)
        parts: list = [b"\x01\x01", self.pack(len(tree))]
        for name, value in items:
            parts += self.entry(name, value)
        return parts

    def data_body(self, tag: Tag) -> list:
        return [b"%%%%", self.pack(len(tag.infos)), self.pack(*tag.infos), tag.value]

    def entry(self, name: str, value: Any) -> list:
        if isinstance(value, (dict, list, Group)):
            kind, body = b"\x14", self.group_body(value)
        else:
            kind, body = b"\x15", self.data_body(_auto(value, self.order))
        raw = name.encode("latin-1")
        head = [kind, struct.pack(">H", len(raw)), raw]
        if self.version == 4:
            head.append(struct.pack(">Q", length(body)))
        return head + body

    def file(self, root: dict) -> list:
        body = self.group_body(root)
        size = ">Q" if self.version == 4 else ">I"
        header = (struct.pack(">i", self.version) + struct.pack(size, length(body))
                  + struct.pack(">i", 1 if self.order == "<" else 0))
        return [header] + body + [b"\0" * 8]


def length(parts: list) -> int:
    return sum(p.size if isinstance(p, Hole) else len(p) for p in parts)


def encode(root: dict, version: int = 4, order: str = "<") -> list:
    """The parts of a DM file with root group ``root``."""
    return Encoder(version, order).file(root)


def to_bytes(parts: list) -> bytes:
    return b"".join(b"\0" * p.size if isinstance(p, Hole) else p for p in parts)


def write(path: str | Path, parts: list) -> Path:
    """Write the parts to ``path``, seeking over holes (sparse file)."""
    with open(path, "wb") as f:
        for part in parts:
            if isinstance(part, Hole):
                f.seek(part.size, 1)
            else:
                f.write(part)
        f.truncate()
    return Path(path)


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------
def payload(data: np.ndarray | None, data_type: int, order: str = "<",
            nbytes: int | None = None) -> Tag:
    """The ImageData/Data tag for ``data`` (or a hole of ``nbytes``)."""
    if data_type in (8, 23):                      # colour: RGBA -> 32-bit pixels
        rgba = np.asarray(data, np.uint8)
        packed = (rgba[..., 3].astype(np.uint32) << 24 | rgba[..., 0].astype(np.uint32) << 16
                  | rgba[..., 1].astype(np.uint32) << 8 | rgba[..., 2])
        return array(ULONG, packed, order)
    if data_type == 5:                            # packed complex: float storage
        return array(FLOAT, data, order)
    if data_type in (27, 28):                     # half-plane FFT: complex storage
        data = np.asarray(data, np.complex64 if data_type == 27 else np.complex128)
    dtype = np.dtype(data.dtype if data is not None else _dtype_of(data_type))
    code = IMAGE_TYPES[dtype.name][1]
    if dtype.kind == "c":
        raw = Hole(nbytes) if data is None else data.astype(dtype.newbyteorder(order)).tobytes()
        count = (nbytes if data is None else data.nbytes) // dtype.itemsize
        return struct_array([code, code], count, raw)
    if data is None:
        return Tag((ARRAY, code, nbytes // dtype.itemsize), Hole(nbytes))
    return array(code, data, order)


def _dtype_of(data_type: int) -> np.dtype:
    names = {t: n for n, (t, _) in IMAGE_TYPES.items()}
    return np.dtype(names[data_type])


def image_entry(data: np.ndarray | None = None, *, data_type: int | None = None,
                dims: tuple[int, ...] | None = None, order: str = "<",
                calibrations: list[tuple[float, float, str]] | None = None,
                brightness: tuple[float, float, str] = (0.0, 1.0, ""),
                image_tags: dict | None = None, name: str = "image",
                nbytes: int | None = None) -> dict:
    """An ImageList entry. ``dims`` and ``calibrations`` are in array order
    (slowest axis first); ``data=None`` with ``nbytes`` leaves a hole."""
    if data_type is None:
        data_type = IMAGE_TYPES[np.asarray(data).dtype.name][0]
    if dims is None:
        dims = data.shape[:-1] if data_type in (8, 23) else data.shape
    calibrations = calibrations or [(0.0, 1.0, "")] * len(dims)
    calib = {"Brightness": {"Origin": brightness[0], "Scale": brightness[1],
                            "Units": brightness[2]},
             "Dimension": [{"Origin": o, "Scale": s, "Units": u}
                           for o, s, u in calibrations[::-1]],
             "DisplayCalibratedUnits": True}
    image_data = {"Calibrations": calib, "Data": payload(data, data_type, order, nbytes),
                  "DataType": data_type,
                  "Dimensions": [scalar(ULONG, n, order) for n in dims[::-1]],
                  "PixelDepth": 4}
    return {"ImageData": image_data, "ImageTags": image_tags or {}, "Name": name,
            "UniqueID": {"0": 1, "1": 2, "2": 3, "3": 4}}


def dm_file(images: list[dict], *, version: int = 4, order: str = "<",
            thumbnail: bool = True) -> list:
    """Parts of a DM file holding ``images`` (after a thumbnail if asked)."""
    entries = list(images)
    root: dict = {"ApplicationBounds": array(LONG, [0, 0, 700, 1200], order)}
    if thumbnail:
        thumb = np.zeros((4, 4, 4), np.uint8)
        entries.insert(0, image_entry(thumb, data_type=23, order=order, name="thumb"))
    root["ImageList"] = entries
    if thumbnail:
        root["Thumbnails"] = [{"ImageIndex": 0, "SourceSize_Pixels": array(LONG, [4, 4], order)}]
    root["InImageMode"] = True
    return encode(root, version, order)


def legacy_dm4(image: np.ndarray) -> bytes:
    """The minimal DM4 file of mrcz 0.6's tests: float32 image without
    DataType, calibrated intensity, microscope info and detector flips."""
    ny, nx = image.shape
    image_data = {
        "Data": array(FLOAT, image),
        "Dimensions": [scalar(LONG, nx), scalar(LONG, ny)],
        "Calibrations": {"Brightness": {"Origin": 0.25, "Scale": 2.5, "Units": "e-"}},
    }
    tags = {
        "Microscope Info": {"Voltage": 300000.0, "Cs(mm)": 2.7},
        "Acquisition": {"Device": {"Q": {
            "Pixel Size (um)": struct_tag([LONG, FLOAT], [5, 14.0]),
            "R": {"Horizontal Flip": 1, "Vertical Flip": 0}}}},
    }
    return to_bytes(encode({"ImageList": [{"ImageData": image_data, "ImageTags": tags}]}))
