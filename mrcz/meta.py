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
#: Most memory the decoded metadata may take, estimated before parsing as
#: :data:`BYTES_PER_VALUE` per JSON value (about what Python needs for an empty
#: list or a float and the pointer to it).
MAX_META_MEMORY = 256 * 2**20
BYTES_PER_VALUE = 64
_SEPARATORS = np.frombuffer(b"[{,:", dtype=np.uint8)
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


def encode(meta: dict, name: str = "metadata") -> bytes:
    """Serialise a metadata dict to UTF-8 JSON bytes, space-padded to :data:`ALIGNMENT`.

    Refuses (``FormatError`` naming ``name``) metadata that :func:`decode` would
    refuse: larger than :data:`MAX_META_BYTES` or nested deeper than
    :data:`MAX_META_DEPTH`.
    """
    if not isinstance(meta, dict):
        raise TypeError(f"{name}: meta must be a dict, got {type(meta).__name__}")
    try:
        text = _json.dumps(meta, default=_to_json, ensure_ascii=False)
    except (TypeError, ValueError, OverflowError, RecursionError) as err:
        raise TypeError(f"{name}: metadata cannot be written as JSON: {err}") from err
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % ALIGNMENT)
    try:
        decode(raw, name)
    except FormatError as err:
        raise FormatError(f"{err}; such metadata could not be read back, so it is not "
                          f"written") from None
    return raw


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


def _naive_depth(codes: np.ndarray) -> int:
    """Deepest bracket nesting, counting brackets inside strings too (an upper bound)."""
    steps = (np.isin(codes, _OPEN).astype(np.int32) - np.isin(codes, _CLOSE))
    return int(np.cumsum(steps).max(initial=0))


def _memory_estimate(codes: np.ndarray) -> int:
    """Bytes the parsed JSON may take: values are at most one more than the brackets,
    commas and colons (inside strings too, an upper bound)."""
    return (int(np.count_nonzero(np.isin(codes, _SEPARATORS))) + 1) * BYTES_PER_VALUE


def decode(raw: bytes, name: str) -> dict:
    """Parse JSON metadata bytes; raise :class:`FormatError` naming ``name`` if bad."""
    if len(raw) > MAX_META_BYTES:
        raise FormatError(f"{name}: JSON metadata of {len(raw)} bytes exceeds the "
                          f"{MAX_META_BYTES}-byte limit")
    raw = raw.rstrip(b"\0 ")
    if not raw:
        return {}
    codes = np.frombuffer(raw, dtype=np.uint8)
    if _memory_estimate(codes) > MAX_META_MEMORY:
        raise FormatError(f"{name}: JSON metadata of {len(raw)} bytes holds up to "
                          f"{_memory_estimate(codes) // BYTES_PER_VALUE} values, more than "
                          f"the {MAX_META_MEMORY // BYTES_PER_VALUE} accepted")
    # rapidjson parses recursively in C; hand deep nesting to the stdlib parser,
    # which fails cleanly with RecursionError instead of exhausting the C stack.
    parser = _json if _naive_depth(codes) <= MAX_META_DEPTH else _stdlib_json
    try:
        meta = parser.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise FormatError(f"{name}: JSON metadata cannot be decoded: {err}") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{name}: JSON metadata is a {type(meta).__name__}, not an object")
    if _depth(meta, MAX_META_DEPTH) > MAX_META_DEPTH:
        raise FormatError(f"{name}: JSON metadata nests deeper than {MAX_META_DEPTH} levels")
    return meta
