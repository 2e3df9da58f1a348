"""Benchmark of the DM reader (mrcz.dm) on a large movie-sized DM4 stack.

Builds a ~800 MB DM4 stack by enlarging a real corpus file: its tag tree is
kept, the image payload is replaced by ``--frames`` frames of
``--size`` x ``--size`` pixels, and every enclosing size field, the Data
array count and the Dimensions tags are fixed. Then prints:

- eager ``readDM`` time against ``np.fromfile`` of the same bytes (target <= 1.3x),
- peak memory of an eager read, in a subprocess: resident-set growth from
  /proc (Linux) and tracemalloc's peak (target <= 1.1x the data),
- time to get one frame through the frame reader and a lazy read (target <= 30 ms),
- header-parse time of every corpus DM file (target <= 5 ms each).

Usage: ``python bench/bench_dm.py [--frames 48] [--size 4096] [--corpus DIR]``
"""
from __future__ import annotations

import argparse
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mrcz import dm  # noqa: E402

SOURCE = "3D/test-6.dm4"          # uint8 3-D stack saved by DigitalMicrograph


# ---------------------------------------------------------------------------
# Enlarging a DM4 file
# ---------------------------------------------------------------------------
def walk_dm4(raw: bytes) -> list[dict]:
    """Every tag of a DM4 file: path, offset of its size field, body offset, end."""
    tags: list[dict] = []

    def group(pos: int, path: tuple) -> int:
        (count,) = struct.unpack_from(">Q", raw, pos + 2)
        pos += 10
        for index in range(count):
            kind, nlen = struct.unpack_from(">BH", raw, pos)
            name = raw[pos + 3:pos + 3 + nlen].decode("latin-1") or str(index)
            size_at = pos + 3 + nlen
            (size,) = struct.unpack_from(">Q", raw, size_at)
            body = size_at + 8
            tags.append({"path": path + (name,), "kind": kind, "size_at": size_at,
                         "body": body, "end": body + size})
            if kind == 20:
                group(body, path + (name,))
            pos = body + size
        return pos

    group(16, ())
    return tags


def enlarge_dm4(source: Path, frames: int, size: int, out: Path,
                rng: np.random.Generator) -> int:
    """Write ``source`` with its main image replaced by a (frames, size, size) stack.

    Returns the byte size of the new payload. The image keeps its DataType.
    """
    raw = source.read_bytes()
    tags = walk_dm4(raw)
    by_path = {t["path"]: t for t in tags}
    _, meta = dm.readDM(source, lazy=True)
    image = list(meta["tags"]["ImageList"])[meta_index(meta)]
    data_tag = by_path[("ImageList", image, "ImageData", "Data")]
    (ninfo,) = struct.unpack_from(">Q", raw, data_tag["body"] + 4)
    count_at = data_tag["body"] + 12 + 8 * (ninfo - 1)
    (count,) = struct.unpack_from(">Q", raw, count_at)
    payload_at = count_at + 8
    itemsize = (data_tag["end"] - payload_at) // count
    new_count = frames * size * size
    delta = (new_count - count) * itemsize

    patched = bytearray(raw)
    struct.pack_into(">Q", patched, count_at, new_count)
    struct.pack_into(">Q", patched, 4, struct.unpack_from(">Q", raw, 4)[0] + delta)
    for depth in range(1, 5):                        # the Data tag and its ancestors
        tag = by_path[data_tag["path"][:depth]]
        struct.pack_into(">Q", patched, tag["size_at"], tag["end"] - tag["body"] + delta)
    dims = [t for t in tags if t["path"][:-1] == ("ImageList", image, "ImageData", "Dimensions")]
    order = "<" if meta["byteorder"] == "<" else ">"
    for tag, value in zip(dims, (size, size, frames)):
        code = struct.unpack_from(">Q", raw, tag["body"] + 12)[0]
        fmt = order + {3: "i", 5: "I", 2: "h", 4: "H"}[code]
        struct.pack_into(fmt, patched, tag["end"] - struct.calcsize(fmt), value)

    dtype = np.dtype(meta["dtype"]).newbyteorder(order)
    with open(out, "wb") as f:
        f.write(patched[:payload_at])
        for _ in range(frames):
            f.write(rng.integers(0, 200, (size, size), np.uint8).astype(dtype).tobytes())
        f.write(patched[data_tag["end"]:])
    return new_count * itemsize


def meta_index(meta: dict) -> int:
    """ImageList position of the image readDM returned (first non-thumbnail)."""
    thumbs = {t["ImageIndex"] for t in meta["tags"].get("Thumbnails", {}).values()}
    return [i for i in range(len(meta["tags"]["ImageList"])) if i not in thumbs][meta["image"]]


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------
def best_of(n: int, func) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


PEAK_SCRIPT = """
import sys, tracemalloc
sys.path.insert(0, sys.argv[2])
from mrcz import dm

def status(key):
    # resident set in bytes from /proc (ru_maxrss would include the parent's
    # peak, which a child inherits across fork and exec)
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

before = status('VmRSS:')
tracemalloc.start()
data, meta = dm.readDM(sys.argv[1])
traced = tracemalloc.get_traced_memory()[1]
print(status('VmHWM:') - before, traced, data.nbytes)
"""


def peak_memory(path: Path) -> tuple[float, float]:
    """Peak RSS growth and peak traced allocations of an eager read, per data byte."""
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), str(REPO)],
                            capture_output=True, text=True, check=True)
    rss, traced, nbytes = map(int, result.stdout.split())
    return rss / nbytes, traced / nbytes


def eager_vs_fromfile(path: Path, repeat: int) -> tuple[float, float]:
    _, meta = dm.readDM(path, lazy=True)
    described = list(meta["tags"]["ImageList"].values())[meta_index(meta)]["ImageData"]["Data"]
    dtype = np.dtype(meta["dtype"])

    def fromfile():
        np.fromfile(path, dtype, described["nbytes"] // dtype.itemsize, offset=described["offset"])

    fromfile()                                       # warm the page cache
    return best_of(repeat, lambda: dm.readDM(path)), best_of(repeat, fromfile)


def one_frame(path: Path, frame: int) -> dict[str, float]:
    def iterator():
        next(iter(dm.iter_dm_frames(path)))

    def reader():
        with dm.DMFrameReader(path) as frames:
            frames[frame]

    def lazy():
        data, _ = dm.readDM(path, lazy=True)
        np.array(data[frame])

    return {"first frame, iter_dm_frames": best_of(5, iterator),
            f"frame {frame}, DMFrameReader": best_of(5, reader),
            f"frame {frame}, readDM(lazy=True)": best_of(5, lazy)}


def header_times(folder: Path) -> list[tuple[str, float]]:
    def parse(path):
        f, _ = dm._open_dm(path)
        f.close()

    files = sorted(p for p in folder.rglob("*") if p.suffix in (".dm3", ".dm4"))
    return [(p.relative_to(folder).as_posix(), best_of(20, lambda: parse(p))) for p in files]


# ---------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus" / "dm")
    args = parser.parse_args()
    source = args.corpus / SOURCE
    itemsize = np.dtype(dm.readDM(source, lazy=True)[1]["dtype"]).itemsize
    needed = args.frames * args.size ** 2 * itemsize

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dm_") as tmp:
        free = shutil.disk_usage(tmp).free
        if free < needed + (1 << 30):
            sys.exit(f"not enough free disk space in {tmp}: {free >> 20} MB, need {needed >> 20} MB")
        big = Path(tmp) / "movie.dm4"
        start = time.perf_counter()
        nbytes = enlarge_dm4(source, args.frames, args.size, big, np.random.default_rng(0))
        built = time.perf_counter() - start
        stack, meta = dm.readDM(big, lazy=True)
        print(f"built {big.name}: {stack.shape} {stack.dtype}, {nbytes / 1e6:.0f} MB "
              f"in {built:.1f} s from {SOURCE}")
        del stack

        eager, fromfile = eager_vs_fromfile(big, args.repeat)
        rows.append(("eager readDM", f"{eager * 1e3:.0f} ms", f"np.fromfile {fromfile * 1e3:.0f} ms",
                     f"ratio {eager / fromfile:.2f}x", "<= 1.3x"))
        rss, traced = peak_memory(big)
        rows.append(("eager peak RSS growth", f"{rss * nbytes / 1e6:.0f} MB",
                     f"data {nbytes / 1e6:.0f} MB", f"ratio {rss:.2f}x", "<= 1.1x"))
        rows.append(("eager peak allocations", f"{traced * nbytes / 1e6:.0f} MB",
                     "(tracemalloc)", f"ratio {traced:.3f}x", "<= 1.1x"))
        for label, seconds in one_frame(big, args.frames // 2).items():
            rows.append((label, f"{seconds * 1e3:.1f} ms", "", "", "<= 30 ms"))
    headers = header_times(args.corpus)
    worst = max(headers, key=lambda item: item[1])
    rows.append((f"header parse, {len(headers)} corpus files",
                 f"max {worst[1] * 1e3:.2f} ms",
                 f"median {np.median([t for _, t in headers]) * 1e3:.2f} ms",
                 worst[0], "<= 5 ms"))

    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    print()
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print("\nheader parse per file (best of 20):")
    for name, seconds in headers:
        print(f"  {seconds * 1e3:6.2f} ms  {name}")


if __name__ == "__main__":
    main()
