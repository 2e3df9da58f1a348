"""A read-only lazy array over the z-slices of a file: indexing reads only what it selects.

:class:`LazyFrames` is what ``readMRC(useMemmap=True)`` returns for a compressed
file (a memory map cannot see through compression). It has ``shape``,
``dtype``, ``ndim``, ``size``, ``nbytes``, ``len()``; ``frames[k]``,
``frames[a:b, y0:y1]`` and so on decompress only the slices asked for, and
``numpy.asarray(frames)`` reads them all. ``dask.array.from_array`` and
HyperSpy's lazy signals use it as they use a memory map. It pickles without
an open file (the source reopens the file by name on every read).
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class SliceSource(Protocol):
    """What :class:`LazyFrames` reads from (e.g. :class:`mrcz.framespans.FrameIndex`)."""

    shape: tuple[int, int, int]
    dtype: np.dtype

    def read(self, first: int, count: int) -> np.ndarray: ...


class LazyFrames:
    """Slices ``first .. first+count-1`` of ``source``; 2-D when ``single`` (one slice)."""

    def __init__(self, source: SliceSource, first: int = 0, count: int | None = None,
                 single: bool = False) -> None:
        nz = source.shape[0]
        count = nz - first if count is None else count
        if not (0 <= first and 0 <= count and first + count <= nz) or (single and count != 1):
            raise IndexError(f"slices {first}..{first + count - 1} are outside 0..{nz - 1}")
        self._source, self._first, self._count, self._single = source, first, count, single

    @property
    def shape(self) -> tuple[int, ...]:
        frame = tuple(self._source.shape[1:])
        return frame if self._single else (self._count, *frame)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._source.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyFrames(shape={self.shape}, dtype={self.dtype})"

    def frames(self, first: int, count: int) -> LazyFrames:
        """A lazy view of ``count`` slices from ``first`` (nothing is read)."""
        if self._single or first < 0 or first + count > self._count:
            raise IndexError(f"slices {first}..{first + count - 1} are outside this view")
        return LazyFrames(self._source, self._first + first, count)

    def frame(self, k: int) -> LazyFrames:
        """A lazy 2-D view of slice ``k`` (nothing is read)."""
        view = self.frames(k, 1)
        return LazyFrames(view._source, view._first, 1, single=True)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if self._single:
            return self._read(0, 1)[0][key]
        key = _expand_ellipsis(key, self.ndim)
        if any(k is None for k in key):
            return np.asarray(self)[key]
        head, rest = key[0], key[1:]
        if isinstance(head, (int, np.integer)):
            k = int(head)
            if not -self._count <= k < self._count:
                raise IndexError(f"slice {k} is outside the {self._count} slices")
            return self._read(k % self._count, 1)[0][rest]
        if isinstance(head, slice):
            wanted = range(self._count)[head]
            if wanted.step == 1 or len(wanted) <= 1:
                block = self._read(wanted.start, len(wanted)) if len(wanted) else self._read(0, 0)
                return block[(slice(None), *rest)]
            return self._gather(list(wanted), rest)
        selection = np.asarray(head)
        if selection.dtype == bool:
            selection = np.flatnonzero(selection)
        return self._gather([int(k) for k in selection.ravel()], rest, selection.shape)

    def _gather(self, wanted: list[int], rest: tuple, shape: tuple[int, ...] | None = None
                ) -> np.ndarray:
        """Read the slices in ``wanted`` (any order, repeats allowed) one by one."""
        out = np.empty((len(wanted), *self._source.shape[1:]), dtype=self.dtype)
        for i, k in enumerate(wanted):
            if not -self._count <= k < self._count:
                raise IndexError(f"slice {k} is outside the {self._count} slices")
            out[i] = self._read(k % self._count, 1)[0]
        if shape is not None:
            out = out.reshape(*shape, *out.shape[1:])
        return out[(Ellipsis, *rest)] if rest else out

    def _read(self, first: int, count: int) -> np.ndarray:
        return self._source.read(self._first + first, count)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self._read(0, self._count)
        data = data[0] if self._single else data
        return data if dtype is None else data.astype(dtype, copy=False)

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        """numpy functions see the data read whole, except ``atleast_Nd`` of enough
        dimensions, which returns the lazy array itself (as HyperSpy calls it)."""
        wanted = _ATLEAST.get(func)
        if wanted is not None and len(args) == 1 and self.ndim >= wanted:
            return self
        return func(*_materialised(args), **dict(zip(kwargs, _materialised(kwargs.values()))))

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]


_ATLEAST = {np.atleast_1d: 1, np.atleast_2d: 2, np.atleast_3d: 3}


def _materialised(values: Any) -> list:
    """``values`` with every LazyFrames (also inside lists and tuples) read into an array."""
    out = []
    for value in values:
        if isinstance(value, LazyFrames):
            value = np.asarray(value)
        elif isinstance(value, (list, tuple)):
            value = type(value)(_materialised(value))
        out.append(value)
    return out


def _expand_ellipsis(key: tuple, ndim: int) -> tuple:
    """``key`` with its Ellipsis replaced by full slices and padded to ``ndim`` entries."""
    dims = sum(1 for k in key if k is not None and k is not Ellipsis)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - dims) + key[at + 1:]
        dims = ndim
    if dims > ndim:
        raise IndexError(f"too many indices for an array of {ndim} dimensions")
    return key + (slice(None),) * (ndim - dims)
