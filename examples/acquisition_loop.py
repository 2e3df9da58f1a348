"""An acquisition loop that hands every movie to mrcz and goes straight back to the camera.

A synthetic detector produces electron-counted frames (Poisson, about one count per
pixel); every ``--frames`` frames make a movie, written in the background as a
zstd-compressed MRCZ file with ``asyncWriteMRC``. ``setAsyncLimits`` bounds the
memory that movies waiting for the disk may hold: when the camera is faster than
the disk, the loop waits for room instead of filling the RAM. ``flushAsync`` at
the end waits for the last files and raises the first error of any write.

Run::

    python examples/acquisition_loop.py --movies 20 --frames 8 --size 2048
    python examples/acquisition_loop.py --fps 40 --max-pending-mb 256 --out /data/session1
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mrcz import readMRCHeader
from mrcz.futures import asyncStatus, asyncWriteMRC, flushAsync, setAsyncLimits


class SyntheticCamera:
    """Counted frames at a given frame rate (0: as fast as they can be made)."""

    def __init__(self, size: int, fps: float, dose: float = 0.8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # A bank of genuinely random frames, served in a shifting order: making
        # Poisson noise afresh for every frame would cost more than writing it.
        self._bank = rng.poisson(dose, size=(16, size, size)).astype(np.int8)
        self._rng = rng
        self._period = 1.0 / fps if fps > 0 else 0.0
        self._next = time.monotonic()

    def read_movie(self, frames: int) -> np.ndarray:
        """A new buffer holding the next ``frames`` frames."""
        order = self._rng.integers(0, len(self._bank), frames)
        movie = self._bank[order]  # fancy indexing: a fresh array, as a DMA buffer would be
        if self._period:
            self._next += frames * self._period
            time.sleep(max(0.0, self._next - time.monotonic()))
        return movie


def movie_names(folder: Path, count: int) -> Iterator[Path]:
    for index in range(count):
        yield folder / f"movie_{index:04d}.mrcz"


def acquire(args: argparse.Namespace, folder: Path) -> tuple[float, float, int]:
    """Run the loop; returns ``(seconds, seconds blocked by backpressure, bytes acquired)``."""
    camera = SyntheticCamera(args.size, args.fps)
    meta = {"detector": "synthetic", "dose_per_frame": 0.8, "frames": args.frames}
    blocked = 0.0
    acquired = 0
    start = time.perf_counter()
    for index, path in enumerate(movie_names(folder, args.movies)):
        movie = camera.read_movie(args.frames)
        acquired += movie.nbytes
        before = time.perf_counter()
        # The camera makes a new buffer for every movie, so it is safe not to copy:
        # a reused buffer would need copy=True (or waiting for the future).
        asyncWriteMRC(movie, path, compressor="zstd", clevel=1, pixelsize=0.83,
                      voltage=300.0, meta={**meta, "movie": index})
        blocked += time.perf_counter() - before
        if args.verbose:
            status = asyncStatus()
            print(f"{path.name}: queued; {status.writes} writes holding "
                  f"{status.write_bytes / 2**20:.0f} MiB pending")
    flushAsync()  # every file is complete (or the first error is raised here)
    return time.perf_counter() - start, blocked, acquired


def report(folder: Path, movies: int, seconds: float, blocked: float, acquired: int,
           where: str) -> None:
    on_disk = sum(p.stat().st_size for p in movie_names(folder, movies))
    header, _ = readMRCHeader(next(movie_names(folder, movies)))
    mib = acquired / 2**20
    print(f"{movies} movies, {mib:.0f} MiB acquired in {seconds:.2f} s: "
          f"{mib / seconds:.0f} MiB/s sustained")
    bottleneck = "writing" if blocked > 0.1 * seconds else "the camera"
    print(f"waited {blocked:.2f} s for room ({100 * blocked / seconds:.0f}% of the time; "
          f"the bottleneck is {bottleneck})")
    print(f"{on_disk / 2**20:.1f} MiB on disk (ratio {acquired / on_disk:.1f}), "
          f"compressor {header['compressor']}, in {where}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--movies", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8, help="frames per movie")
    parser.add_argument("--size", type=int, default=2048, help="frame edge in pixels")
    parser.add_argument("--fps", type=float, default=0.0,
                        help="camera frame rate (0: as fast as possible)")
    parser.add_argument("--max-pending-mb", type=float, default=128.0,
                        help="memory that movies waiting for the disk may hold")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: a temporary one, removed at the end)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    setAsyncLimits(max_pending_bytes=int(args.max_pending_mb * 2**20))
    with tempfile.TemporaryDirectory(prefix="mrcz-acq-") as scratch:
        folder = args.out or Path(scratch)
        os.makedirs(folder, exist_ok=True)
        seconds, blocked, acquired = acquire(args, folder)
        report(folder, args.movies, seconds, blocked, acquired,
               str(folder) if args.out else "a temporary folder (now removed)")


if __name__ == "__main__":
    main()
