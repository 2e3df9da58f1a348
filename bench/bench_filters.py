"""The blosc filter against the data: ratio, write and read speed for every ``shuffle=``.

bit / byte / none / auto x zstd 1, lz4 9 x counted int8, counted uint16,
gain-corrected float32 (4096^2) and 128^2 float32 particles, written and read
with mrcz in fresh subprocesses (2 threads), filters rotated; medians. The
table says which filter ``shuffle='auto'`` picked.

Usage::

    python bench/bench_filters.py [--quick] [--repeats 3]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from _benchlib import GB, MB, REPO, bench_arguments, counted, gain_corrected, load_line, \
    median, particles, remove, run, save_json, scratch

FILTERS = ("bit", "byte", None, "auto")
CODECS = (("zstd", 1), ("lz4", 9))


def auto_choice(npy: Path, cname: str, clevel: int) -> str:
    """What ``shuffle='auto'`` picks for the first frame of ``npy``."""
    sys.path.insert(0, str(REPO))
    from mrcz import codec
    frame = np.load(npy, mmap_mode="r")[0].copy()
    blocksize = codec.choose_blocksize(frame.nbytes, frame.itemsize, cname)
    return str(codec.choose_shuffle(frame, cname, clevel, blocksize))


def measure(npy: Path, tmp: Path, cname: str, clevel: int, repeats: int) -> dict:
    nbytes = np.load(npy, mmap_mode="r").nbytes
    samples = {str(f): {"write_s": [], "read_s": [], "write_cpu": [], "read_cpu": []}
               for f in FILTERS}
    ratio = {}
    for rep in range(repeats):
        shift = rep % len(FILTERS)
        for shuffle in FILTERS[shift:] + FILTERS[:shift]:
            path = tmp / "f.mrcz"
            params = {"codec": cname, "clevel": clevel, "threads": 2, "shuffle": shuffle}
            w = run("ours", "write", npy, path, **params)
            r = run("ours", "read", npy, path, **params)
            s = samples[str(shuffle)]
            s["write_s"].append(w["seconds"])
            s["write_cpu"].append(w["cpu"])
            s["read_s"].append(r["seconds"])
            s["read_cpu"].append(r["cpu"])
            ratio[str(shuffle)] = nbytes / (path.stat().st_size - 1024)
            remove(path)
    return {key: {"ratio": ratio[key], "write_mb_s": nbytes / median(s["write_s"]) / MB,
                  "read_mb_s": nbytes / median(s["read_s"]) / MB,
                  "write_cpu_per_gb": median(s["write_cpu"]) / nbytes * GB,
                  "read_cpu_per_gb": median(s["read_cpu"]) / nbytes * GB}
            for key, s in samples.items()}


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0], "filters").parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    n = 2 if args.quick else 4
    data = {"int8 counted": lambda: counted(n, "int8"),
            "uint16 counted": lambda: counted(n, "uint16"),
            "float32 gain-corrected": lambda: gain_corrected(max(1, n // 2)),
            "float32 128² particles": lambda: particles(500 * n)}
    rows, loads = [], [load_line()]
    with scratch(args.tmp, "bench_filters_") as tmp:
        for label, build in data.items():
            npy = tmp / "data.npy"
            np.save(npy, build())
            for cname, clevel in CODECS:
                cells = measure(npy, tmp, cname, clevel, repeats)
                rows.append({"data": label, "codec": f"{cname} {clevel}", "cells": cells,
                             "auto": auto_choice(npy, cname, clevel)})
                loads.append(load_line())
                print(f"done: {label} {cname} {clevel} ({loads[-1]})", flush=True)
            npy.unlink()
    print(f"\nmedians of {repeats} runs, filters rotated; {loads[0]} at the start, "
          f"{loads[-1]} at the end")
    print("cells: ratio, write / read MB/s (wall), write / read CPU-s per GB")
    print(f"{'data':<24}{'codec':<8}" + "".join(f"{str(f):<34}" for f in FILTERS))
    for row in rows:
        line = f"{row['data']:<24}{row['codec']:<8}"
        for f in FILTERS:
            c = row["cells"][str(f)]
            text = (f"{c['ratio']:.3f} {c['write_mb_s']:.0f}/{c['read_mb_s']:.0f} "
                    f"{c['write_cpu_per_gb']:.2f}/{c['read_cpu_per_gb']:.2f}")
            if f == "auto":
                text += f" ={row['auto']}"
            line += f"{text:<34}"
        print(line)
    save_json({"rows": rows, "loads": loads, "repeats": repeats}, Path(args.json))


if __name__ == "__main__":
    main()
