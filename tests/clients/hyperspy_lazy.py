"""Load a movie with HyperSpy ``lazy=True`` and compute one frame, measuring peak memory.

Run by ``tests/test_dask.py`` with the python that has hyperspy and rosettasciio::

    python hyperspy_lazy.py MOVIE FRAME RESULT.json WARMUP

``WARMUP`` is a small file loaded the same way first, so that the modules
HyperSpy imports on its first load are not counted.

``RESULT.json`` gets the signal class, whether it is lazy, the shape of the
data, the SHA-256 of frame FRAME as computed, and ``peak_growth``: how far the
process's peak resident memory rose (bytes) from just before ``hs.load`` to
after the frame was computed.
"""
from __future__ import annotations

import hashlib
import json
import resource
import sys
import warnings

import numpy as np


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_frame(path: str, frame: int) -> tuple[object, np.ndarray]:
    """``hs.load(path, lazy=True)`` and frame ``frame`` of it computed."""
    import hyperspy.api as hs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal = hs.load(path, lazy=True, reader="mrcz")
        return signal, np.asarray(signal.inav[frame].data.compute())


def main(path: str, frame: int, result_file: str, warmup: str) -> None:
    load_frame(warmup, 0)
    before = peak_rss()
    signal, data = load_frame(path, frame)
    result = {"signal": type(signal).__name__, "lazy": bool(signal._lazy),
              "shape": list(signal.data.shape), "frame_sha256": hashlib.sha256(
                  np.ascontiguousarray(data).tobytes()).hexdigest(),
              "frame_shape": list(data.shape), "peak_growth": peak_rss() - before,
              "peak_before": before}
    with open(result_file, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
