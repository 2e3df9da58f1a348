"""mrcz against what a user could pick instead, on the same counted movie in the same run.

Alternatives (installed in a venv of their own, whose python
``MRCZ_BENCH_ALTERNATIVES`` names: ``pip install blosc2 h5py hdf5plugin zarr
tifffile imagecodecs``): blosc2 NDArray (zstd 1, bit-shuffle, chunk = frame), HDF5 via
h5py + hdf5plugin (Blosc zstd 1 bit-shuffle, one chunk per frame), zarr v3
(BloscCodec zstd 1 bit-shuffle, chunk = frame), TIFF with zstd 1 and with LZW
(tifffile, one page per frame), a whole-file ``.mrc.zst`` (zstd 1), and the
original mrcz 0.6.0 (zstd 1, bit-shuffle: it has no choice). The Blosc-based
alternatives get the filter mrcz uses for the data (bit-shuffle for counts,
byte-shuffle for gain-corrected float32). Two threads wherever the library takes a thread
count. Each write, read and one-frame read runs in a fresh subprocess, the
implementations in rotating order; medians of the repeats.

Usage::

    python bench/bench_alternatives.py [--quick] [--repeats 5] [--frames 16] [--plot PNG]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _benchlib import GB, MB, bench_arguments, counted, gain_corrected, load_line, median, \
    remove, run, save_figure, save_json, scratch, size_of

IMPLS = ("ours", "ours_lz4", "orig", "blosc2", "hdf5", "zarr", "tiff_zstd", "tiff_lzw",
         "mrc_zst")
NAMES = {"ours": "mrcz (this), zstd 1", "ours_lz4": "mrcz (this), lz4 9 bit",
         "orig": "mrcz 0.6.0, zstd 1", "blosc2": "blosc2 NDArray", "hdf5": "HDF5 + Blosc",
         "zarr": "zarr v3 + Blosc", "tiff_zstd": "TIFF zstd", "tiff_lzw": "TIFF LZW",
         "mrc_zst": "whole-file .mrc.zst"}
SUFFIX = {"hdf5": ".h5", "zarr": ".zarr", "tiff_zstd": ".tif", "tiff_lzw": ".tif",
          "mrc_zst": ".mrc.zst", "blosc2": ".b2nd"}


def spec(impl: str, shuffle: str) -> tuple[str, dict]:
    """``(worker implementation, its parameters)``."""
    if impl == "ours_lz4":
        return "ours", {"codec": "lz4", "clevel": 9, "threads": 2, "shuffle": "bit"}
    return impl, {"codec": "zstd", "clevel": 1, "threads": 2, "shuffle": shuffle}


def measure(npy: Path, tmp: Path, repeats: int, shuffle: str) -> dict:
    nbytes = np.load(npy, mmap_mode="r").nbytes
    samples = {impl: {k: [] for k in ("write_s", "write_cpu", "read_s", "read_cpu", "frame_s")}
               for impl in IMPLS}
    ratio = {}
    for rep in range(repeats):
        shift = rep % len(IMPLS)
        for impl in IMPLS[shift:] + IMPLS[:shift]:
            worker_impl, params = spec(impl, shuffle)
            path = tmp / f"{impl}{SUFFIX.get(impl, '.mrcz')}"
            w = run(worker_impl, "write", npy, path, **params)
            r = run(worker_impl, "read", npy, path, **params)
            f = run(worker_impl, "frame", npy, path, **params)
            s = samples[impl]
            s["write_s"].append(w["seconds"])
            s["write_cpu"].append(w["cpu"])
            s["read_s"].append(r["seconds"])
            s["read_cpu"].append(r["cpu"])
            s["frame_s"].append(f["seconds"])
            ratio[impl] = nbytes / size_of(path)
            remove(path)
    rows = {}
    for impl, s in samples.items():
        rows[impl] = {"write_mb_s": nbytes / median(s["write_s"]) / MB,
                      "read_mb_s": nbytes / median(s["read_s"]) / MB,
                      "frame_ms": median(s["frame_s"]) * 1e3,
                      "ratio": ratio[impl],
                      "write_cpu_per_gb": median(s["write_cpu"]) / nbytes * GB,
                      "read_cpu_per_gb": median(s["read_cpu"]) / nbytes * GB}
    return {"nbytes": nbytes, "impls": rows}


def print_table(title: str, result: dict) -> None:
    print(f"\n{title}")
    print(f"{'':<24}{'write':>8}{'read':>8}{'1 frame':>9}{'ratio':>7}{'CPU-s/GB':>10}{'':>6}")
    print(f"{'':<24}{'MB/s':>8}{'MB/s':>8}{'ms':>9}{'':>7}{'write':>10}{'read':>6}")
    for impl, r in result["impls"].items():
        print(f"{NAMES[impl]:<24}{r['write_mb_s']:>8.0f}{r['read_mb_s']:>8.0f}"
              f"{r['frame_ms']:>9.1f}{r['ratio']:>7.3f}{r['write_cpu_per_gb']:>10.2f}"
              f"{r['read_cpu_per_gb']:>6.2f}")


def plot(results: dict, target: str) -> None:
    """Horizontal bars: write and read CPU-s/GB per implementation, ratio in the label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 1, figsize=(8, 4.6 * len(results)), squeeze=False)
    for ax, (title, result) in zip(axes[:, 0], results.items()):
        impls = list(result["impls"])
        y = np.arange(len(impls))
        for shift, op in ((-0.2, "write"), (0.2, "read")):
            ax.barh(y + shift, [result["impls"][i][f"{op}_cpu_per_gb"] for i in impls], 0.4,
                    label=f"{op} CPU-s/GB")
        ax.set_yticks(y, [f"{NAMES[i]}  (ratio {result['impls'][i]['ratio']:.2f})"
                          for i in impls], fontsize=12)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=12)
        ax.set_xlabel("CPU-s per GB (lower is better)", fontsize=12)
        ax.set_title(title.replace("gain-corrected", "gain-corr.").replace("mrcz shuffle",
                                                                           "shuffle"), fontsize=13)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=11, loc="lower right")
    save_figure(fig, target)


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0], "alternatives")
    parser.add_argument("--frames", type=int, default=None, help="4096² frames (default 16)")
    parser.add_argument("--plot", default=None, help="PNG path for the ratio / CPU figure")
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="only draw --plot from a saved JSON (any Python with matplotlib)")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text())["results"], args.plot)
        return
    repeats = args.repeats or (2 if args.quick else 5)
    n = args.frames or (4 if args.quick else 16)
    data = {"counted int8 4096²": (lambda: counted(n, "int8"), "bit"),
            "gain-corrected float32 4096²": (lambda: gain_corrected(max(2, n // 4)), "byte")}
    results, loads = {}, [load_line()]
    with scratch(args.tmp, "bench_alt_") as tmp:
        for label, (build, shuffle) in data.items():
            npy = tmp / "data.npy"
            np.save(npy, build())
            frames = np.load(npy, mmap_mode="r").shape[0]
            title = f"{label} x {frames} (mrcz shuffle={shuffle!r})"
            results[title] = measure(npy, tmp, repeats, shuffle)
            loads.append(load_line())
            print(f"done: {title} ({loads[-1]})", flush=True)
            npy.unlink()
    print(f"\nmedians of {repeats} runs, implementations rotated; {loads[0]} at the start, "
          f"{loads[-1]} at the end")
    for title, result in results.items():
        print_table(title, result)
    save_json({"results": results, "loads": loads, "repeats": repeats}, Path(args.json))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
