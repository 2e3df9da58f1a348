"""Whether data may be stored in an existing file's dtype without changing a value."""
from __future__ import annotations

import numpy as np

#: numpy's casting rules, plus ``'same_value'`` (the default): any cast that keeps
#: every value (integers exactly, floats to the file's precision, never an overflow).
CASTINGS = ("no", "equiv", "safe", "same_kind", "unsafe", "same_value")


def check_casting(casting: str) -> None:
    """Raise ``ValueError`` unless ``casting`` is one of :data:`CASTINGS`."""
    if casting not in CASTINGS:
        raise ValueError(f"casting must be one of {CASTINGS}, got {casting!r}")


def _limits(target: np.dtype, uint4: bool) -> tuple[float, float]:
    if uint4:
        return 0, 15
    if target.kind in "iu":
        info = np.iinfo(target)
        return int(info.min), int(info.max)
    big = float(np.finfo(target).max)
    return -big, big


def _offending(data: np.ndarray, target: np.dtype, uint4: bool) -> str | None:
    """What in ``data`` would change when stored as ``target`` (None: nothing)."""
    if data.size == 0:
        return None
    if target.kind == "c":
        parts = [data.real, data.imag] if data.dtype.kind == "c" else [data]
        target = np.dtype(np.finfo(target).dtype)  # the dtype of each part
        found = [_offending(part, target, False) for part in parts]
        return next((f for f in found if f), None)
    low, high = _limits(target, uint4)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if target.kind in "iu" or uint4:
            if not finite.all():
                return f"NaN or infinite values (among {np.nanmin(data)}..{np.nanmax(data)})"
            if not np.array_equal(data, np.trunc(data)):
                bad = data[data != np.trunc(data)].flat[0]
                return f"fractional values such as {bad}"
        elif not finite.all():
            data = data[finite]
            if data.size == 0:
                return None
    lo, hi = data.min(), data.max()
    if lo < low or hi > high:
        return f"values {lo}..{hi}, outside the range {low}..{high}"
    if target.kind == "f" and data.dtype.kind in "iu":
        exact = 2 ** (np.finfo(target).nmant + 1)
        if max(-int(lo), int(hi)) > exact:
            return f"integers {lo}..{hi}, beyond the {target}'s exact range +-{exact}"
    return None


def check_values(data: np.ndarray, target: np.dtype, casting: str, name: str,
                 uint4: bool = False) -> None:
    """Refuse to store ``data`` in a file of dtype ``target`` where values would change.

    Parameters
    ----------
    data : the values about to be written.
    target : the file's dtype (``uint8`` with ``uint4=True`` for packed 4-bit files).
    casting : one of :data:`CASTINGS`; numpy's rules judge dtypes alone,
        ``'same_value'`` judges the values themselves.
    name : the file, for messages.

    Raises
    ------
    TypeError where numpy's rule forbids the cast, or for complex data in a
    real file; ValueError where ``'same_value'`` finds a value that would change (both name the file, the
    dtypes and the offending values).
    """
    source = np.dtype(data.dtype)
    if casting == "unsafe" or (source == target and not uint4):
        return
    if casting != "same_value":
        if not np.can_cast(source, target, casting):
            raise TypeError(f"{name}: cannot store {source} data in this {target} file "
                            f"with casting={casting!r}")
        return
    if np.can_cast(source, target, "safe") and not uint4:
        return
    if source.kind == "c" and target.kind != "c":
        raise TypeError(f"{name}: cannot store complex {source.name} data in this "
                        f"{target.newbyteorder('=').name} file (the imaginary parts would "
                        f"be lost); pass casting='unsafe' to drop them")
    problem = _offending(np.asarray(data), target, uint4)
    if problem is not None:
        kind = "uint4" if uint4 else target.newbyteorder("=").name
        raise ValueError(f"{name}: the {source.name} data hold {problem}, which the "
                         f"file's dtype {kind} cannot store unchanged; pass "
                         f"casting='unsafe' to store them anyway")
