"""What a caller hands to writeMRC, seen as a sequence of 2-D z-slices in the stored dtype."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import MRCZError

logger = logging.getLogger("mrcz")

#: Modes for numpy dtypes a caller may write (uint8 is widened to mode 6 on disk).
WRITABLE_MODES = {
    np.dtype("int8"): 0, np.dtype("int16"): 1, np.dtype("float32"): 2,
    np.dtype("complex64"): 4, np.dtype("uint16"): 6, np.dtype("uint8"): 6,
    np.dtype("int32"): 7, np.dtype("uint32"): 8, np.dtype("float16"): 12,
}
_NARROWED = {np.dtype("float64"): np.dtype("float32"),
             np.dtype("complex128"): np.dtype("complex64")}
_warned: set[np.dtype] = set()


@dataclasses.dataclass
class FrameSource:
    """The image to write: shape ``(nz, ny, nx)``, dtype, and how it is grouped.

    ``slices`` is 0 for one monolithic array and k for a list of k-slice frames
    (1: a list of 2-D frames). ``get(z)`` returns z-slice ``z`` as a 2-D array.
    """

    shape: tuple[int, int, int]
    dtype: np.dtype
    slices: int
    _items: Any
    _list: bool

    def get(self, z: int) -> np.ndarray:
        if self._list and self.slices > 1:
            frame, within = divmod(z, self.slices)
            return np.asarray(self._items[frame][within])
        return np.asarray(self._items[z])


def _narrowed(dtype: np.dtype, name: str) -> np.dtype:
    narrow = _NARROWED.get(dtype)
    if narrow is None:
        return dtype
    if dtype not in _warned:
        logger.warning("casting %s data to %s for %s (MRC has no %s mode); further "
                       "warnings suppressed", dtype, narrow, name, dtype)
        _warned.add(dtype)
    return narrow


def frame_source(image: Any, name: str) -> FrameSource:
    """Describe a numpy/dask array or a list of 2-D or 3-D frames as a :class:`FrameSource`."""
    if isinstance(image, (list, tuple)):
        return _list_source(image, name)
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 2:
        image = image[None] if isinstance(image, np.ndarray) else _Lift2D(image)
        shape = (1, *shape)
    if len(shape) != 3:
        raise MRCZError(f"{name}: can only write 2-D or 3-D arrays or lists of them, "
                        f"got shape {shape}")
    if min(shape) < 1:
        raise MRCZError(f"{name}: cannot write an empty array of shape {shape}")
    dtype = _narrowed(np.dtype(image.dtype), name)
    return FrameSource(shape, dtype, 0, image, False)


class _Lift2D:
    """A 2-D array-like seen as a stack of one slice (without materialising it)."""

    def __init__(self, image: Any) -> None:
        self.image = image

    def __getitem__(self, z: int) -> Any:
        if z != 0:
            raise IndexError(z)
        return self.image


def _list_source(frames: Sequence[Any], name: str) -> FrameSource:
    if not frames:
        raise MRCZError(f"{name}: cannot write an empty list of frames")
    first = frames[0]
    first_shape = tuple(first.shape)
    first_dtype = np.dtype(first.dtype)
    for index, frame in enumerate(frames):
        if tuple(frame.shape) != first_shape:
            raise MRCZError(f"{name}: frame {index} has shape {tuple(frame.shape)}, "
                            f"expected {first_shape}")
        if np.dtype(frame.dtype) != first_dtype:
            raise TypeError(f"{name}: frame {index} has dtype {frame.dtype}, "
                            f"expected {first_dtype}")
    if len(first_shape) == 2:
        slices, (ny, nx) = 1, first_shape
    elif len(first_shape) == 3:
        slices, ny, nx = first_shape
    else:
        raise MRCZError(f"{name}: for a sequence of arrays, only 2-D or 3-D frames are "
                        f"handled, got shape {first_shape}")
    if min(slices, ny, nx) < 1:
        raise MRCZError(f"{name}: cannot write empty frames of shape {first_shape}")
    dtype = _narrowed(first_dtype, name)
    return FrameSource((len(frames) * slices, ny, nx), dtype, slices, frames, True)
