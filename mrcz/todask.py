"""``mrcz.to_dask``: a file's z-slices (or DM frames) as a dask array, one chunk per k frames.

Every task is a small picklable description of where its frames lie, never an
open file, so the graph runs on any dask scheduler, ``dask.distributed``
included, wherever the workers see the same path:

- MRC and MRCZ: a :class:`~mrcz.framespans.FrameSpan` ``(path, offset, size)``;
  the task reads exactly those bytes and decompresses them.
- ``.gz``, ``.bz2``, ``.zst`` (whole-file compressed plain MRC): ``(path, first,
  count)``; such a stream can only be read forward, so each task decompresses
  the stream from its start up to its last frame (bounded memory, but the work
  grows with the frame's position: prefer MRCZ for random access).
- DM3/DM4: ``(path, image, first, count)``; the task parses the tags and reads
  only its frames' bytes.

Needs the optional dependency dask: ``pip install "mrcz[dask]"``.
"""
from __future__ import annotations

import os

import dask.array as da
import numpy as np
from dask.base import tokenize

from .dm import DMFrameReader, open_unless_dm
from .framespans import file_identity, index_open_file, read_span
from .mrc import readMRC
from .reader import MRCSource, native_dtype

__all__ = ["to_dask", "source_to_dask", "read_span", "read_stream_frames", "read_dm_frames"]


def to_dask(path: str | os.PathLike, frames_per_chunk: int = 1, image: int | None = None
            ) -> da.Array:
    """The frames of an MRC, MRCZ, ``.gz``/``.bz2``/``.zst`` or DM3/DM4 file as a dask array.

    Parameters
    ----------
    path : the file; workers must see it under the same absolute path.
    frames_per_chunk : frames (z-slices) per chunk, hence per task.
    image : DM files only: which image (default: the first that is not a thumbnail).

    Returns
    -------
    A dask array of shape ``(frames, *frame_shape)``; nothing is read until it is
    computed, and computing a chunk reads only that chunk's frames.
    """
    frames_per_chunk = check_frames_per_chunk(frames_per_chunk)
    path = os.path.abspath(os.fspath(path))
    raw = open_unless_dm(path)
    if raw is None:
        return dm_to_dask(path, frames_per_chunk, image)
    with MRCSource.wrap(raw, path, permissive=True) as src:
        return source_to_dask(src, frames_per_chunk)


def source_to_dask(src: MRCSource, frames_per_chunk: int = 1) -> da.Array:
    """:func:`to_dask` of the MRC/MRCZ file already open as ``src`` (nothing is reopened;
    the tasks open the file by its absolute path when they run)."""
    frames_per_chunk = check_frames_per_chunk(frames_per_chunk)
    if src.fd is None:  # .gz, .bz2, .zst: forward only
        frames, *frame_shape = src.info.shape
        dtype = native_dtype(src.info)
        tasks = [(read_stream_frames, src.path, first, count, tuple(frame_shape))
                 for first, count in _runs(frames, frames_per_chunk)]
    else:
        index = index_open_file(src.path, src.info, src.fd, src.name)
        frames, frame_shape, dtype = index.shape[0], index.shape[1:], index.dtype
        tasks = [(read_span, span) for span in index.spans(frames_per_chunk)]
    return _array(src.path, frames_per_chunk, None, tasks, frames, frame_shape, dtype)


def dm_to_dask(path: str, frames_per_chunk: int, image: int | None) -> da.Array:
    """:func:`to_dask` of the DM3/DM4 file ``path``."""
    with DMFrameReader(path, image) as reader:
        frames, frame_shape, dtype = len(reader), reader.frame_shape, reader.dtype
    tasks = [(read_dm_frames, path, image, first, count)
             for first, count in _runs(frames, frames_per_chunk)]
    return _array(path, frames_per_chunk, image, tasks, frames, frame_shape, dtype)


def check_frames_per_chunk(frames_per_chunk: int) -> int:
    """``frames_per_chunk`` as an int; ValueError below 1."""
    frames_per_chunk = int(frames_per_chunk)
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be at least 1, got {frames_per_chunk}")
    return frames_per_chunk


def _array(path: str, frames_per_chunk: int, image: int | None, tasks: list,
           frames: int, frame_shape: tuple, dtype: np.dtype) -> da.Array:
    """The dask array of ``tasks``, one per run of ``frames_per_chunk`` frames."""
    name = "mrcz-" + tokenize(file_identity(path), frames_per_chunk, image)
    counts = tuple(count for _, count in _runs(frames, frames_per_chunk))
    zeros = (0,) * len(frame_shape)
    graph = {(name, i, *zeros): task for i, task in enumerate(tasks)}
    chunks = (counts, *((int(n),) for n in frame_shape))
    return da.Array(graph, name, chunks, dtype=dtype)


def _runs(frames: int, per_run: int) -> list[tuple[int, int]]:
    """``(first, count)`` of consecutive runs of ``per_run`` frames."""
    return [(first, min(per_run, frames - first)) for first in range(0, frames, per_run)]


def read_stream_frames(path: str, first: int, count: int, frame_shape: tuple[int, ...]
                       ) -> np.ndarray:
    """Frames ``first .. first+count-1`` of a whole-file compressed MRC, as (count, ...)."""
    data, _ = readMRC(path, idx=(first, first + count - 1), slices=0, n_threads=1)
    return np.reshape(data, (count, *frame_shape))


def read_dm_frames(path: str, image: int | None, first: int, count: int) -> np.ndarray:
    """Frames ``first .. first+count-1`` of a DM3/DM4 image, as (count, ...)."""
    with DMFrameReader(path, image) as reader:
        out = np.empty((count, *reader.frame_shape), dtype=reader.dtype)
        for i in range(count):
            out[i] = reader[first + i]
    return out
