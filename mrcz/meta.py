"""JSON metadata in the extended header: encode, decode, and reserved keys."""
from __future__ import annotations

import enum
import json as _stdlib_json
from typing import Any

import numpy as np

from .errors import FormatError

try:
    import rapidjson as _json
except ImportError:  # pragma: no cover - rapidjson is a declared dependency
    _json = _stdlib_json

#: Largest JSON extended header read (bytes); larger ones are refused as hostile.
MAX_META_BYTES = 256 * 2**20
#: Deepest nesting of JSON containers accepted on read.
MAX_META_DEPTH = 64
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)


def _to_json(value: Any) -> Any:
    """Convert what JSON cannot hold natively: numpy values, Enums, ``serialize()``."""
    if hasattr(value, "serialize"):
        return value.serialize()
    if hasattr(value, "__array_interface__"):
        return value.tolist()
    if isinstance(value, enum.Enum):
        return f"Enum.{type(value).__name__}.{value.name}"
    raise TypeError(f"cannot store {type(value).__name__} in JSON metadata: {value!r}")


#: The extended header is padded with spaces to a multiple of this: readers such as
#: gemmi expect the data block to start 4-byte aligned.
ALIGNMENT = 4


def encode(meta: dict) -> bytes:
    """Serialise a metadata dict to UTF-8 JSON bytes, space-padded to :data:`ALIGNMENT`."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        text = _json.dumps(meta, default=_to_json, ensure_ascii=False)
    except (TypeError, ValueError, OverflowError) as err:
        raise TypeError(f"metadata cannot be written as JSON: {err}") from err
    raw = text.encode("utf-8")
    return raw + b" " * (-len(raw) % ALIGNMENT)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of containers, stopping early past ``limit``."""
    depth, level = 0, [value]
    while level and depth <= limit:
        nxt: list = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
        if nxt or any(isinstance(item, (dict, list)) for item in level):
            depth += 1
        level = nxt
    return depth


def _naive_depth(raw: bytes) -> int:
    """Deepest bracket nesting, counting brackets inside strings too (an upper bound)."""
    codes = np.frombuffer(raw, dtype=np.uint8)
    steps = (np.isin(codes, _OPEN).astype(np.int32) - np.isin(codes, _CLOSE))
    return int(np.cumsum(steps).max(initial=0))


def decode(raw: bytes, name: str) -> dict:
    """Parse JSON metadata bytes; raise :class:`FormatError` naming ``name`` if bad."""
    if len(raw) > MAX_META_BYTES:
        raise FormatError(f"{name}: JSON metadata of {len(raw)} bytes exceeds the "
                          f"{MAX_META_BYTES}-byte limit")
    raw = raw.rstrip(b"\0 ")
    if not raw:
        return {}
    # rapidjson parses recursively in C; hand deep nesting to the stdlib parser,
    # which fails cleanly with RecursionError instead of exhausting the C stack.
    parser = _json if _naive_depth(raw) <= MAX_META_DEPTH else _stdlib_json
    try:
        meta = parser.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise FormatError(f"{name}: JSON metadata cannot be decoded: {err}") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{name}: JSON metadata is a {type(meta).__name__}, not an object")
    if _depth(meta, MAX_META_DEPTH) > MAX_META_DEPTH:
        raise FormatError(f"{name}: JSON metadata nests deeper than {MAX_META_DEPTH} levels")
    return meta
