"""Exact header statistics, gathered frame by frame and combined."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Stats:
    """Running min, max, mean and (optionally) variance over frames.

    Means and variances of frames are combined with Chan's parallel formula, so
    the result is exact whatever the order and size of the frames. An empty or
    complex-valued accumulation reports "not known" the MRC2014 way.
    """

    count: int = 0
    minimum: float = np.inf
    maximum: float = -np.inf
    mean: float = 0.0
    m2: float | None = 0.0
    known: bool = True

    @classmethod
    def of_frame(cls, frame: np.ndarray, with_rms: bool) -> Stats:
        if frame.dtype.kind == "c":
            return cls(known=False)
        minimum, maximum, total = min_max_sum(frame)
        mean = total / frame.size
        m2 = squared_deviations(frame, mean, total) if with_rms else None
        return cls(frame.size, minimum, maximum, mean, m2)

    def add(self, other: Stats) -> None:
        if not other.known:
            self.known = False
        if not (self.known and other.count):
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        if self.m2 is not None and other.m2 is not None:
            self.m2 += other.m2 + delta * delta * self.count * other.count / total
        else:
            self.m2 = None
        self.mean += delta * other.count / total
        self.count = total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def header_values(self) -> tuple[float, float, float, float]:
        """``(dmin, dmax, dmean, rms)``; "not known" is dmax < dmin, dmean < dmin, rms < 0."""
        if not (self.known and self.count) or not np.isfinite([self.minimum, self.maximum]).all():
            return 0.0, -1.0, -2.0, -1.0
        rms = float(np.sqrt(self.m2 / self.count)) if self.m2 is not None else -1.0
        return self.minimum, self.maximum, self.mean, rms


#: Rows are reduced in blocks of about this size, which stay in cache for all three passes.
_BLOCK_BYTES = 2**19


def min_max_sum(frame: np.ndarray) -> tuple[float, float, float]:
    """Min, max and sum of a frame; the sum exact for integers (floats: float64).

    One sweep over cache-sized blocks of rows, each reduced three times while
    it is in cache, with the narrowest exact accumulator. Measured on 4096^2
    frames (CPU ms, against min + max + one int64/float64 reduction): int8 1.7
    (5.5 + 1.1), uint16 3.4 (4.9), float32 7.1 (12.2).
    """
    rows = frame.reshape(-1, frame.shape[-1]) if frame.ndim != 2 else frame
    acc, axis, step = _accumulator(rows)
    lows, highs, total = [], [], 0
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step]
        lows.append(block.min())
        highs.append(block.max())
        part = np.add.reduce(block, axis=axis, dtype=acc)
        total += float(part.sum()) if acc == np.float64 else int(part.sum(dtype=np.int64))
    return float(np.min(lows)), float(np.max(highs)), float(total)


def _accumulator(rows: np.ndarray) -> tuple[type, int, int]:
    """``(accumulator dtype, axis, rows per block)`` that keep a block's sum exact."""
    kind, size = rows.dtype.kind, rows.dtype.itemsize
    step = max(1, _BLOCK_BYTES // max(1, rows[0].nbytes))
    if kind == "f":
        return np.float64, 1, step
    if size == 1:  # down 256-row columns: |sum| <= 256 * 255 fits 16 bits
        return (np.int16 if kind == "i" else np.uint16), 0, min(step, 256)
    if size == 2 and rows.shape[1] <= 2**15:  # along rows: 32768 * 65535 < 2**31
        return np.int32, 1, step
    return np.int64, 1, step


def squared_deviations(frame: np.ndarray, mean: float, total: float) -> float:
    """Sum of squared deviations from ``mean``, in cache-sized blocks of rows.

    8- and 16-bit integers: exact, from the integer sum of squares; others:
    float64 deviations from the frame's mean (no cancellation).
    """
    rows = frame.reshape(-1, frame.shape[-1]) if frame.ndim != 2 else frame
    step = max(1, _BLOCK_BYTES // max(1, rows[0].nbytes))
    if rows.dtype.kind == "f" or rows.dtype.itemsize > 2:
        total_sq = 0.0
        for i in range(0, rows.shape[0], step):
            deviation = np.subtract(rows[i:i + step], mean, dtype=np.float64)
            total_sq += float(np.add.reduce(deviation * deviation, axis=None))
        return total_sq
    wide = np.int32 if rows.dtype.itemsize == 1 else np.int64
    squares = 0
    for i in range(0, rows.shape[0], step):
        block = rows[i:i + step].astype(wide)
        squares += int(np.add.reduce(block * block, axis=None, dtype=np.int64))
    count = rows.size
    return float((squares * count - int(total) ** 2) / count)
