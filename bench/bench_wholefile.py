"""Whole-file compressed MRC: gzip, bzip2 and zstd against MRCZ and mrcfile's gzip.

A counted movie (Poisson(0.8) counts, int8 by default) is written and read
back with each method; MB/s count uncompressed data bytes, the ratio is
data bytes / file bytes. mrcfile's gzip writer (gzip level 9, single
thread) runs about 1 MB/s on such data, so it is timed on the first
``--mrcfile-frames`` frames only (rates, not totals, are compared).

Usage::

    python bench/bench_wholefile.py [--quick] [--dtype int8|uint16] [--frames N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mrcz  # noqa: E402

LEVELS = (1, 3, 9)
SUFFIX = {"gzip": ".mrc.gz", "bzip2": ".mrc.bz2", "zstd": ".mrc.zst"}


def counted_movie(frames: int, size: int, dtype: str, seed: int = 1) -> np.ndarray:
    """Poisson(0.8) counts, generated frame by frame (no int64 temporary of the movie)."""
    rng = np.random.default_rng(seed)
    movie = np.empty((frames, size, size), dtype=dtype)
    for z in range(frames):
        movie[z] = rng.poisson(0.8, size=(size, size))
    return movie


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def measure(name: str, level: str, movie: np.ndarray, path: Path,
            write: Callable[[], object], read: Callable[[], np.ndarray]) -> dict:
    """Write once, read once, check the round trip; rates in MB/s of data."""
    write_s = timed(write)
    start = time.perf_counter()
    back = read()
    read_s = time.perf_counter() - start
    if not np.array_equal(np.asarray(back), movie):
        raise AssertionError(f"{name} {level}: round trip differs")
    size = path.stat().st_size
    path.unlink()
    mb = movie.nbytes / 1e6
    return {"method": name, "level": level, "write": mb / write_s, "read": mb / read_s,
            "ratio": movie.nbytes / size, "size": size / 1e6, "write_s": write_s}


def ours(movie: np.ndarray, folder: Path, codec: str, level: int) -> dict:
    path = folder / f"movie{SUFFIX[codec]}"
    return measure(f"mrcz {codec}", str(level), movie, path,
                   lambda: mrcz.writeMRC(movie, path, clevel=level),
                   lambda: mrcz.readMRC(path)[0])


def mrcz_blosc(movie: np.ndarray, folder: Path) -> dict:
    path = folder / "movie.mrcz"
    return measure("MRCZ blosc zstd", "1", movie, path,
                   lambda: mrcz.writeMRC(movie, path, compressor="zstd", clevel=1),
                   lambda: mrcz.readMRC(path)[0])


def plain(movie: np.ndarray, folder: Path) -> dict:
    path = folder / "movie.mrc"
    return measure("plain MRC", "-", movie, path, lambda: mrcz.writeMRC(movie, path),
                   lambda: mrcz.readMRC(path)[0])


def mrcfile_gzip(movie: np.ndarray, folder: Path, frames: int) -> dict | None:
    try:
        import mrcfile
    except ImportError:
        return None
    part = movie[:frames]
    path = folder / "mrcfile.mrc.gz"

    def write() -> None:
        with mrcfile.new(path, compression="gzip", overwrite=True) as out:
            out.set_data(part)

    def read() -> np.ndarray:
        with mrcfile.open(path) as src:
            return src.data.copy()

    row = measure("mrcfile gzip", f"9 ({frames} fr)", part, path, write, read)
    return row


def table(rows: list[dict]) -> str:
    lines = [f"| {'method':<16} | {'level':<9} | {'write MB/s':>10} | {'read MB/s':>9} | "
             f"{'ratio':>6} | {'file MB':>8} |",
             f"|{'-' * 18}|{'-' * 11}|{'-' * 12}|{'-' * 11}|{'-' * 8}|{'-' * 10}|"]
    for r in rows:
        lines.append(f"| {r['method']:<16} | {r['level']:<9} | {r['write']:>10.1f} | "
                     f"{r['read']:>9.1f} | {r['ratio']:>6.3f} | {r['size']:>8.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 x 1024 x 1024 frames")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--dtype", default="int8", choices=["int8", "uint16"])
    parser.add_argument("--mrcfile-frames", type=int, default=1,
                        help="frames given to mrcfile's gzip writer (about 1 MB/s)")
    parser.add_argument("--codecs", default="gzip,bzip2,zstd")
    parser.add_argument("--dir", default=None, help="folder for the files (default: tmp)")
    args = parser.parse_args(argv)
    frames, size = (4, 1024) if args.quick else (args.frames, args.size)
    movie = counted_movie(frames, size, args.dtype)
    print(f"counted movie {movie.shape} {movie.dtype}, {movie.nbytes / 1e6:.0f} MB, "
          f"Poisson(0.8); {os.cpu_count()} cores; mrcz threads {mrcz.mrc.DEFAULT_N_THREADS}",
          flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        rows.append(plain(movie, folder))
        rows.append(mrcz_blosc(movie, folder))
        for codec in args.codecs.split(","):
            for level in LEVELS:
                rows.append(ours(movie, folder, codec, level))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        reference = mrcfile_gzip(movie, folder, min(args.mrcfile_frames, frames))
        if reference:
            rows.append(reference)
    print()
    print(table(rows))
    zstd3 = next((r for r in rows if r["method"] == "mrcz zstd" and r["level"] == "3"), None)
    if reference and zstd3:
        print(f"\nzstd 3 vs mrcfile gzip: {zstd3['write'] / reference['write']:.0f}x the write "
              f"speed, ratio {zstd3['ratio']:.3f} vs {reference['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
