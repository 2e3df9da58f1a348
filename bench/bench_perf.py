"""Write and read cost of mrcz against mrcz 0.6.0 and the codec alone (issue 19's table).

For each data kind, in fresh subprocesses and in rotating order: our writeMRC
and readMRC, the original mrcz 0.6.0's, and python-blosc alone (the same frames
compressed on 2 threads with our block size, typesize and filter; decoded on 2
threads into a new array). Reported: CPU-seconds per GB of raw data (user + sys
of all threads: robust to the other jobs of a shared machine), wall MB/s,
medians of the repeats; the load average; and the issue's "Done when" targets.

Usage::

    python bench/bench_perf.py [--quick] [--repeats 5] [--tmp DIR] [--json PATH] [--plot PNG]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _benchlib import GB, MB, bench_arguments, counted, gain_corrected, load_line, median, \
    particles, remove, run, save_figure, save_json, scratch

IMPLS = ("ours", "orig", "codec")


def datasets(quick: bool) -> list[tuple[str, callable, list[tuple[str, int]]]]:
    """``(label, builder, [(codec, level), ...])``."""
    n = 4 if quick else 16
    return [
        ("int8 4096² counted", lambda: counted(n, "int8"), [("zstd", 1), ("lz4", 9)]),
        ("uint16 4096² counted", lambda: counted(n, "uint16"), [("zstd", 1)]),
        ("float32 4096² gain-corrected", lambda: gain_corrected(max(2, n // 2)), [("zstd", 1)]),
        ("float32 128² particles", lambda: particles(2000 if quick else 10000), [("zstd", 1)]),
    ]


def measure(npy: Path, tmp: Path, cname: str, clevel: int, repeats: int) -> dict:
    """Median CPU-s/GB, MB/s and peak read memory per implementation and operation."""
    data = np.load(npy, mmap_mode="r")
    nbytes = data.nbytes
    samples: dict = {impl: {"write_cpu": [], "read_cpu": [], "write_s": [], "read_s": [],
                            "peak": []} for impl in IMPLS}
    ratio = {}
    for rep in range(repeats):
        order = IMPLS[rep % 3:] + IMPLS[:rep % 3]
        for impl in order:
            path = tmp / f"{impl}.mrcz"
            params = {"codec": cname, "clevel": clevel, "threads": 2}
            w = run(impl, "write", npy, path, **params)
            r = run(impl, "read", npy, path, **params)
            s = samples[impl]
            s["write_cpu"].append(w["cpu"])
            s["write_s"].append(w["seconds"])
            s["read_cpu"].append(r["cpu"])
            s["read_s"].append(r["seconds"])
            s["peak"].append(r["peak"])
            if path.exists():
                ratio[impl] = nbytes / (path.stat().st_size - 1024)
                remove(path)
    row: dict = {"nbytes": nbytes, "ratio": ratio}
    for impl, s in samples.items():
        row[impl] = {
            "write_cpu_per_gb": median(s["write_cpu"]) / nbytes * GB,
            "read_cpu_per_gb": median(s["read_cpu"]) / nbytes * GB,
            "write_mb_s": nbytes / median(s["write_s"]) / MB,
            "read_mb_s": nbytes / median(s["read_s"]) / MB,
            "read_peak": max(s["peak"]) / nbytes,
        }
    return row


def print_tables(rows: list[dict]) -> None:
    print("\nCPU-s per GB of raw data (median)")
    print(f"{'data, codec':<42}{'codec w':>8}{'ours w':>8}{'0.6.0 w':>8}"
          f"{'ours r':>8}{'codec r':>8}{'0.6.0 r':>8}")
    for row in rows:
        o, g, c = row["ours"], row["orig"], row["codec"]
        print(f"{row['label']:<42}{c['write_cpu_per_gb']:>8.2f}{o['write_cpu_per_gb']:>8.2f}"
              f"{g['write_cpu_per_gb']:>8.2f}{o['read_cpu_per_gb']:>8.2f}"
              f"{c['read_cpu_per_gb']:>8.2f}{g['read_cpu_per_gb']:>8.2f}")
    print("\nwall MB/s (median), ratio, read peak memory / array")
    print(f"{'data, codec':<42}{'ours w':>8}{'0.6.0 w':>8}{'x':>6}{'ours r':>8}{'0.6.0 r':>8}"
          f"{'x':>6}{'ratio':>7}{'peak':>6}")
    for row in rows:
        o, g = row["ours"], row["orig"]
        print(f"{row['label']:<42}{o['write_mb_s']:>8.0f}{g['write_mb_s']:>8.0f}"
              f"{o['write_mb_s'] / g['write_mb_s']:>6.2f}{o['read_mb_s']:>8.0f}"
              f"{g['read_mb_s']:>8.0f}{o['read_mb_s'] / g['read_mb_s']:>6.2f}"
              f"{row['ratio'].get('ours', 0):>7.3f}{o['read_peak']:>6.2f}")


def targets(rows: list[dict]) -> list[tuple[str, float, str, bool]]:
    """The issue's "Done when" points: ``(what, measured, target, holds)``."""
    by = {row["label"]: row for row in rows}
    checks = []

    def check(what: str, value: float, op: str, limit: float) -> None:
        holds = value <= limit if op == "<=" else value >= limit
        checks.append((what, value, f"{op} {limit}", holds))

    for label in by:
        row = by[label]
        o, c = row["ours"], row["codec"]
        if "particles" not in label:
            check(f"{label}: write CPU / codec", o["write_cpu_per_gb"] / c["write_cpu_per_gb"],
                  "<=", 1.1)
        check(f"{label}: read CPU / codec (new output)",
              o["read_cpu_per_gb"] / c["read_cpu_per_gb"], "<=", 1.1)
        check(f"{label}: read peak / array", o["read_peak"], "<=", 1.15)
    speed = {"int8 4096² counted, zstd 1": (1.25, 1.5), "int8 4096² counted, lz4 9": (1.15, None),
             "float32 128² particles, zstd 1": (2.5, 3.0)}
    for label, (write_x, read_x) in speed.items():
        if label not in by:
            continue
        o, g = by[label]["ours"], by[label]["orig"]
        check(f"{label}: write wall / 0.6.0", o["write_mb_s"] / g["write_mb_s"], ">=", write_x)
        if read_x:
            check(f"{label}: read wall / 0.6.0", o["read_mb_s"] / g["read_mb_s"], ">=", read_x)
    return checks


def short_label(label: str) -> str:
    """``'int8 4096² counted, zstd 1'`` -> ``'int8\ncounts\nzstd 1'`` (fits under a bar)."""
    data, codec_name = label.split(", ")
    dtype, size, kind = data.split(" ", 2)
    kind = {"gain-corrected": "gain", "counted": "counts"}.get(kind, kind)
    return f"{dtype}\n{kind}\n{codec_name}"


def plot(rows: list[dict], target: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [short_label(row["label"]) for row in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4), sharey=True)
    names = {"codec": "codec alone", "ours": "mrcz (this)", "orig": "mrcz 0.6.0"}
    for ax, op in zip(axes, ("write", "read")):
        for shift, impl in zip((-0.27, 0, 0.27), ("codec", "ours", "orig")):
            ax.bar(x + shift, [row[impl][f"{op}_cpu_per_gb"] for row in rows], 0.27,
                   label=names[impl])
        ax.set_xticks(x, labels, fontsize=10.5)
        ax.tick_params(axis="y", labelsize=12)
        ax.set_title(f"{op}: CPU-s per GB", fontsize=13)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=11)
    save_figure(fig, target)


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0], "perf")
    parser.add_argument("--plot", default=None, help="PNG path for the CPU-cost figure")
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="only draw --plot from a saved JSON (any Python with matplotlib)")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text())["rows"], args.plot)
        return
    repeats = args.repeats or (2 if args.quick else 5)
    rows, loads = [], [load_line()]
    with scratch(args.tmp, "bench_perf_") as tmp:
        for label, build, codecs in datasets(args.quick):
            npy = tmp / "data.npy"
            np.save(npy, build())
            for cname, clevel in codecs:
                row = measure(npy, tmp, cname, clevel, repeats)
                row["label"] = f"{label}, {cname} {clevel}"
                rows.append(row)
                loads.append(load_line())
                print(f"done: {row['label']} ({loads[-1]})", flush=True)
            npy.unlink()
    print(f"\nmedians of {repeats} runs each, ours / 0.6.0 / codec alternated; "
          f"{loads[0]} at the start, {loads[-1]} at the end")
    print_tables(rows)
    checks = targets(rows)
    print("\nDone when")
    for what, value, target, holds in checks:
        print(f"  {what:<62}{value:>7.2f}  target {target:<7} {'holds' if holds else 'MISSED'}")
    save_json({"rows": rows, "loads": loads, "repeats": repeats,
               "checks": [list(c) for c in checks]}, Path(args.json))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
