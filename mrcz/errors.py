"""Exceptions raised by mrcz.

Every error about a file's contents is an :class:`MRCZError`, which is a
``ValueError`` so that code written for the original package keeps catching
it. Operating-system problems (missing file, full disk, no permission) stay
``OSError``.
"""
from __future__ import annotations

import os


class MRCZError(ValueError):
    """Base class: the file or the arguments are not something mrcz can use."""


class FormatError(MRCZError):
    """The file is not a valid MRC/MRCZ/DM file, or its header is inconsistent."""


class CorruptDataError(MRCZError):
    """The data block is truncated or a compressed chunk cannot be decoded."""


class UnsupportedError(MRCZError):
    """The file uses a feature this package cannot handle (or needs an extra)."""


def describe(path: object) -> str:
    """Return a printable name for a path or file object, for error messages."""
    if isinstance(path, (str, bytes, os.PathLike)):
        return os.fsdecode(path)
    name = getattr(path, "name", None)
    if isinstance(name, (str, bytes)):
        return os.fsdecode(name)
    return repr(path)
