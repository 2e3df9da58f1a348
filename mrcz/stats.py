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
        acc = np.float64 if frame.dtype.kind == "f" else np.int64
        total = float(np.add.reduce(frame, axis=None, dtype=acc))
        mean = total / frame.size
        m2 = float(np.var(frame, dtype=np.float64)) * frame.size if with_rms else None
        return cls(frame.size, float(frame.min()), float(frame.max()), mean, m2)

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
