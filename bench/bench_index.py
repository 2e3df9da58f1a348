"""What the frame index costs and what it buys.

1. Cost, on a Poisson(0.8) int8 4096 x 4096 movie written with zstd level 1:
   the CPU time of ``writeMRC`` with the index against ``writeMRC`` with the
   CRC-32C replaced by a constant (everything else the same), and of
   ``readMRC`` with ``verify=True`` against ``verify=False``; plus the CRC-32C
   of the compressed chunks timed on its own. Runs alternate, the median of
   ``--repeats`` is reported. Budget: under 5% of write and of read time.
2. Gain, on a stack of 10000 particles of 128 x 128 float32: the time of
   ``readMRC(path, idx=k)`` for random ``k`` with the index and on the same
   bytes without it (the chunk headers walked up to ``k``).

Usage::

    python bench/bench_index.py [--frames 16] [--repeats 5] [--particles 10000]
                                [--tmp DIR]

CPU time is the process's (all threads); wall time is printed beside it. The
machine has 2 cores shared with other jobs: the load average is printed.

Measured here (2 cores, load average 6-9 from other jobs, ``--repeats 11``):
16 frames, 60.5 MB compressed (ratio 4.44), 288-byte index. CRC-32C of all
chunks alone: 4.9 ms CPU (12.4 GB/s), 1.5% of the write's 0.326 s CPU and
2.0% of the read's 0.239 s; A/B: write +4.0%, read +1.3% (at this load the
A/B differences are mostly noise). One frame of 10000 particles (596 MB):
1.9 ms CPU / 4.0 ms wall with the index, 54 ms CPU / 132 ms wall walking the
chunk headers (33x).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import mrcz  # noqa: E402
from mrcz import frameindex  # noqa: E402


def timed(call: Callable[[], object]) -> tuple[float, float]:
    """``(cpu seconds, wall seconds)`` of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    return time.process_time() - cpu, time.perf_counter() - wall


def alternate(calls: dict[str, Callable[[], object]], repeats: int
              ) -> dict[str, tuple[float, float]]:
    """Median ``(cpu, wall)`` of each call, the calls alternating, the order flipped
    every round."""
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            seen[name].append(timed(calls[name]))
    return {name: (statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs))
            for name, runs in seen.items()}


def movie(nz: int, size: int = 4096) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.empty((nz, size, size), dtype=np.int8)
    for z in range(nz):
        out[z] = rng.poisson(0.8, (size, size))
    return out


def particles(n: int, size: int = 128) -> np.ndarray:
    """A Gaussian blob plus unit noise per particle (float32)."""
    rng = np.random.default_rng(2)
    y, x = np.mgrid[:size, :size] - size / 2
    blob = np.exp(-(x * x + y * y) / (2 * (size / 8) ** 2)).astype(np.float32) * 3
    out = np.empty((n, size, size), dtype=np.float32)
    for start in range(0, n, 500):
        part = out[start:start + 500]
        part[...] = rng.standard_normal(part.shape, dtype=np.float32)
        part += blob
    return out


def cost(tmp: Path, frames: int, repeats: int) -> None:
    data = movie(frames)
    path = tmp / "movie.mrcz"
    real = frameindex.checksum

    def write(with_crc: bool) -> Callable[[], None]:
        def run() -> None:
            frameindex.checksum = real if with_crc else (lambda _: 0)
            try:
                mrcz.writeMRC(data, path, compressor="zstd", clevel=1)
            finally:
                frameindex.checksum = real
        return run

    writes = alternate({"index": write(True), "no crc": write(False)}, repeats)
    mrcz.writeMRC(data, path, compressor="zstd", clevel=1)
    reads = alternate({"verify": lambda: mrcz.readMRC(path),
                       "no verify": lambda: mrcz.readMRC(path, verify=False)}, repeats)
    raw = path.read_bytes()
    index = frameindex.unpack(raw[-frameindex.trailer_bytes(frames):], "movie")
    chunks = [raw[o:o + n] for o, n in index.chunks()]
    crc_cpu = statistics.median(timed(lambda: [real(c) for c in chunks])[0]
                                for _ in range(repeats))
    packed = sum(len(c) for c in chunks)
    print(f"== cost: {frames} x 4096^2 int8 Poisson(0.8), zstd 1, {packed / 1e6:.1f} MB "
          f"compressed (ratio {data.nbytes / packed:.2f}); index {len(raw) - 1024 - packed} B")
    print(f"{'':18}{'cpu s':>9}{'wall s':>9}")
    for label, (c, w) in [("write, index", writes["index"]),
                          ("write, no CRC", writes["no crc"]),
                          ("read, verify", reads["verify"]),
                          ("read, no verify", reads["no verify"])]:
        print(f"{label:18}{c:9.3f}{w:9.3f}")
    print(f"CRC-32C alone: {crc_cpu * 1e3:.1f} ms CPU for {packed / 1e6:.1f} MB "
          f"({packed / crc_cpu / 1e9:.1f} GB/s)")
    print(f"index share of write CPU: {crc_cpu / writes['index'][0]:.2%} (CRC alone), "
          f"{writes['index'][0] / writes['no crc'][0] - 1:+.2%} (A/B)")
    print(f"verify share of read CPU: {crc_cpu / reads['verify'][0]:.2%} (CRC alone), "
          f"{reads['verify'][0] / reads['no verify'][0] - 1:+.2%} (A/B)")


def random_access(tmp: Path, n: int, repeats: int) -> None:
    data = particles(n)
    indexed = tmp / "particles.mrcz"
    mrcz.writeMRC(data, indexed, compressor="zstd", clevel=1)
    bare = tmp / "particles_bare.mrcz"
    shutil.copyfile(indexed, bare)
    with open(bare, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.truncate(size - frameindex.trailer_bytes(n))
        f.seek(144)
        f.write((size - frameindex.trailer_bytes(n) - 1024).to_bytes(8, "little"))
    picks = np.random.default_rng(3).integers(0, n, size=max(20, 4 * repeats)).tolist()

    def reads(path: Path) -> Callable[[], None]:
        def run() -> None:
            for k in picks:
                mrcz.readMRC(path, idx=k)
        return run

    result = alternate({"index": reads(indexed), "walk": reads(bare)}, repeats)
    np.testing.assert_array_equal(mrcz.readMRC(indexed, idx=picks[0])[0], data[picks[0]])
    print(f"== one-frame read: {n} x 128^2 float32 particles, zstd 1, "
          f"{indexed.stat().st_size / 1e6:.0f} MB; mean over {len(picks)} random frames")
    for label, (c, w) in result.items():
        print(f"{label:18}{c / len(picks) * 1e3:9.3f} ms cpu{w / len(picks) * 1e3:9.3f} ms wall")
    print(f"index speed-up (wall): {result['walk'][1] / result['index'][1]:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--particles", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tmp", default=None, help="scratch folder (removed afterwards)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-index-") as tmp:
        cost(Path(tmp), args.frames, args.repeats)
        random_access(Path(tmp), args.particles, args.repeats)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
