"""Write a small, valid DM4 movie for the documentation's examples.

Only what the examples need: one image stack in ``ImageList`` with data type,
dimensions, spatial calibrations in nm, and a few ``ImageTags`` (microscope
voltage and Cs, exposure, detector name). The layout follows the DM4 format:
a big-endian header (version 4, root length, byte-order flag), tag groups
(sorted flag, open flag, 8-byte count) and data tags (``%%%%``, 8-byte info
count, 8-byte info words, value), every tag preceded by its 8-byte size.
"""
from __future__ import annotations

import struct

import numpy as np

_LONG, _ULONG, _FLOAT, _USHORT, _BOOL = 3, 5, 6, 4, 8
_ARRAY = 20
_CODES = {_LONG: "i4", _ULONG: "u4", _FLOAT: "f4", _USHORT: "u2", _BOOL: "?"}
# numpy dtype -> (DM image DataType, DM element type)
_IMAGE = {"int16": (1, 2), "float32": (2, 6), "uint8": (6, 10), "int32": (7, 3),
          "int8": (9, 9), "uint16": (10, 4), "uint32": (11, 5)}
_ELEMENT = {2: "i2", 3: "i4", 4: "u2", 5: "u4", 6: "f4", 9: "i1", 10: "u1"}


def _q(*values: int) -> bytes:
    return b"".join(struct.pack(">Q", v) for v in values)


def _data(infos: tuple[int, ...], value: bytes) -> bytes:
    return b"%%%%" + _q(len(infos)) + _q(*infos) + value


def _scalar(code: int, value) -> bytes:
    return _data((code,), np.array(value, "<" + _CODES[code]).tobytes())


def _text(value: str) -> bytes:
    units = np.frombuffer(value.encode("utf-16-le"), "<u2")
    return _data((_ARRAY, _USHORT, units.size), units.tobytes())


def _value(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return _scalar(_BOOL, value)
    if isinstance(value, int):
        return _scalar(_LONG, value)
    if isinstance(value, float):
        return _scalar(_FLOAT, value)
    if isinstance(value, str):
        return _text(value)
    raise TypeError(value)


def _group(tree) -> bytes:
    items = tree.items() if isinstance(tree, dict) else (("", v) for v in tree)
    out = [b"\x01\x01", _q(len(tree))]
    for name, value in items:
        if isinstance(value, (dict, list)):
            kind, body = b"\x14", _group(value)
        else:
            kind, body = b"\x15", _value(value)
        raw = name.encode("latin-1")
        out += [kind, struct.pack(">H", len(raw)), raw, _q(len(body)), body]
    return b"".join(out)


def write_dm4_movie(path, movie: np.ndarray, pixelsize_nm: float = 0.1,
                    voltage_kv: float = 300.0, cs_mm: float = 2.7,
                    exposure_s: float = 1.0, detector: str = "K3") -> str:
    """Write ``movie`` (frames, ny, nx) as a DM4 image stack; return ``path``."""
    movie = np.ascontiguousarray(movie)
    data_type, element = _IMAGE[movie.dtype.name]
    payload = _data((_ARRAY, element, movie.size),
                    movie.astype("<" + _ELEMENT[element]).tobytes())
    nframes, ny, nx = movie.shape
    dims = [_scalar(_ULONG, n) for n in (nx, ny, nframes)]
    calib = [{"Origin": 0.0, "Scale": float(pixelsize_nm), "Units": "nm"},
             {"Origin": 0.0, "Scale": float(pixelsize_nm), "Units": "nm"},
             {"Origin": 0.0, "Scale": 1.0, "Units": ""}]
    image = {
        "ImageData": {
            "Calibrations": {"Brightness": {"Origin": 0.0, "Scale": 1.0, "Units": ""},
                             "Dimension": calib},
            "Data": payload, "DataType": data_type, "Dimensions": dims,
            "PixelDepth": movie.dtype.itemsize},
        "ImageTags": {
            "Microscope Info": {"Voltage": float(voltage_kv) * 1000.0,
                                "Cs(mm)": float(cs_mm)},
            "Acquisition": {"Parameters": {"High Level": {"Exposure (s)": float(exposure_s)}},
                            "Device": {"Name": detector}}},
        "Name": "movie"}
    body = _group({"ImageList": [image], "InImageMode": True})
    header = struct.pack(">i", 4) + _q(len(body)) + struct.pack(">i", 1)
    with open(path, "wb") as f:
        f.write(header + body + b"\0" * 8)
    return str(path)
