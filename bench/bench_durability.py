"""What durability and locking cost a write: fsync on/off, flock on/off.

A counted movie (Poisson(0.8) counts, int8, 4096 x 4096, 8 frames by default)
is written with ``compressor='zstd'`` as a new file with ``durable=True``
(temp file and folder fsync-ed before the rename) and ``durable=False``, and
appended to in place (one frame, ``idx=nz``) with the advisory lock and with
``fcntl.flock`` replaced by a no-op. Runs alternate between the variants;
the table gives the median CPU time (all threads) and wall time per write.
The load average is printed: the machine is shared.

Usage::

    python bench/bench_durability.py [--frames N] [--repeats N] [--tmp DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mrcz  # noqa: E402
from mrcz import fileops  # noqa: E402


def counted_movie(frames: int, size: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    movie = np.empty((frames, size, size), dtype=np.int8)
    for z in range(frames):
        movie[z] = rng.poisson(0.8, size=(size, size))
    return movie


def timed(func: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of the whole process, wall seconds) of one call."""
    os.sync()  # no run pays for another's dirty pages
    cpu, wall = time.process_time(), time.perf_counter()
    func()
    return time.process_time() - cpu, time.perf_counter() - wall


@contextlib.contextmanager
def no_lock() -> Iterator[None]:
    with mock.patch.object(fileops.fcntl, "flock", lambda fd, op: None):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tmp", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    movie = counted_movie(args.frames, args.size)
    frame = movie[:1].copy()
    results: dict[str, list[tuple[float, float]]] = {
        "new file, durable=True": [], "new file, durable=False": [],
        "append 1 frame, locked": [], "append 1 frame, no lock": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "movie.mrcz"
        for repeat in range(args.repeats):
            order = [True, False] if repeat % 2 == 0 else [False, True]
            for durable in order:
                key = f"new file, durable={durable}"
                results[key].append(timed(lambda: mrcz.writeMRC(
                    movie, path, compressor="zstd", clevel=1, durable=durable)))
            for locked in order:
                nz = int(mrcz.readMRCHeader(path)[0]["dimensions"][0])
                key = "append 1 frame, " + ("locked" if locked else "no lock")
                guard = contextlib.nullcontext() if locked else no_lock()
                with guard:
                    results[key].append(timed(lambda: mrcz.writeMRC(
                        frame, path, compressor="zstd", clevel=1, idx=nz)))
        size = path.stat().st_size
    print(f"{args.frames} x {args.size}^2 int8 counted movie, zstd clevel 1, "
          f"file {size / 1e6:.1f} MB; median of {args.repeats} alternated runs; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'write':28s} {'CPU s':>8s} {'wall s':>8s}")
    for key, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        print(f"{key:28s} {cpu:8.3f} {wall:8.3f}")


if __name__ == "__main__":
    main()
