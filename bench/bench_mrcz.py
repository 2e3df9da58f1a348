"""Benchmark of mrcz (this repository) against the original mrcz 0.6.0.

Builds counted movies (Poisson(0.8) int8 and uint16, 40 x 4096 x 4096), a
gain-corrected float32 movie and a stack of 128 x 128 float32 particles as .npy
files, then writes and reads each with OURS and with the ORIGINAL (run as
subprocesses, alternating, same codec and level) and prints a side-by-side
table: MB/s, speed ratios, compression ratio and its fraction of the Shannon
limit (entropy of the value histogram), peak RSS (VmHWM of the subprocess).
Then: one-frame random read against a full read, and a 400-frame 4096^2 int8
stream through MRCZWriter / MRCZReader with its peak RSS.

Usage::

    python bench/bench_mrcz.py [--quick] [--repeats 3] [--tmp DIR]
                               [--original-python PATH]
                               [--no-stream] [--plot docs/_static/bench_mrcz.png]
    python bench/bench_mrcz.py blocksize [--quick]     # the block-size sweep
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _benchlib import counted, gain_corrected, particles

REPO = Path(__file__).resolve().parent.parent
ORIGINAL_PYTHON = "/work/venvs/orig/bin/python"
MB = 1e6


# ----------------------------------------------------------------------------- data

def shannon_ratio(data: np.ndarray) -> float:
    """Best lossless ratio for i.i.d. values with this histogram (first frames)."""
    sample = data[:min(4, data.shape[0])].ravel()
    _, counts = np.unique(sample, return_counts=True)
    p = counts / counts.sum()
    bits = float(-(p * np.log2(p)).sum())
    return data.dtype.itemsize * 8 / bits if bits else float("inf")


# ----------------------------------------------------------------------------- subprocess worker

def peak_rss() -> int:
    """Peak resident memory of this process in bytes.

    VmHWM from /proc where there is one: ru_maxrss also counts the parent's
    resident set at fork time (Linux keeps the high-water mark across exec), which
    here would be the benchmark's own data.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(impl: str, op: str, npy: str, path: str, compressor: str, clevel: int) -> dict:
    """Time one writeMRC or readMRC in this process; report seconds and peak RSS."""
    if impl == "ours":
        sys.path.insert(0, str(REPO))
    import mrcz
    comp = None if compressor == "none" else compressor
    result: dict = {}
    if op == "write":
        data = np.load(npy)
        start, cpu = time.perf_counter(), time.process_time()
        mrcz.writeMRC(data, path, compressor=comp, clevel=clevel)
        result["seconds"] = time.perf_counter() - start
        result["cpu"] = time.process_time() - cpu
    elif op == "read":
        start, cpu = time.perf_counter(), time.process_time()
        image, _ = mrcz.readMRC(path)
        result["seconds"] = time.perf_counter() - start
        result["cpu"] = time.process_time() - cpu
        result["maxrss"] = peak_rss()
        expected = np.load(npy, mmap_mode="r")
        result["equal"] = bool(np.array_equal(np.asarray(image).reshape(expected.shape),
                                              expected))
    else:  # random access: one middle frame against the whole movie
        nz = np.load(npy, mmap_mode="r").shape[0]
        times = []
        for _ in range(5):
            start = time.perf_counter()
            mrcz.readMRC(path, idx=nz // 2)
            times.append(time.perf_counter() - start)
        result["seconds"] = min(times)
    result.setdefault("maxrss", peak_rss())
    return result


def run_worker(python: str, impl: str, op: str, npy: Path, path: Path, compressor: str,
               clevel: int) -> dict:
    cmd = [python, __file__, "_worker", impl, op, str(npy), str(path), compressor, str(clevel)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    if done.returncode:
        raise RuntimeError(f"{impl} {op} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- comparison

def compare(case: str, npy: Path, tmp: Path, compressor: str, clevel: int, repeats: int,
            original: str) -> dict:
    """Best-of-``repeats`` write and read times of both implementations, alternating."""
    data = np.load(npy, mmap_mode="r")
    nbytes = data.nbytes
    row: dict = {"case": case, "codec": f"{compressor} {clevel}" if compressor != "none"
                 else "plain", "nbytes": nbytes}
    for impl in ("ours", "orig"):
        row[impl] = {"write": float("inf"), "read": float("inf"), "rss": 0,
                     "write_cpu": float("inf"), "read_cpu": float("inf")}
    for rep in range(repeats):
        order = ("ours", "orig") if rep % 2 == 0 else ("orig", "ours")
        for impl in order:
            python = sys.executable if impl == "ours" else original
            path = tmp / f"{impl}.mrc"
            os.sync()  # start every write with no dirty pages pending
            w = run_worker(python, impl, "write", npy, path, compressor, clevel)
            r = run_worker(python, impl, "read", npy, path, compressor, clevel)
            if not r["equal"]:
                raise RuntimeError(f"{impl} read back different data for {case}")
            stats = row[impl]
            stats["write"] = min(stats["write"], w["seconds"])
            stats["read"] = min(stats["read"], r["seconds"])
            stats["write_cpu"] = min(stats["write_cpu"], w["cpu"])
            stats["read_cpu"] = min(stats["read_cpu"], r["cpu"])
            stats["rss"] = max(stats["rss"], r["maxrss"])
            stats["ratio"] = nbytes / (path.stat().st_size - 1024)
            path.unlink()
    row["shannon"] = shannon_ratio(np.asarray(data[:4]))
    return row


def print_table(rows: list[dict]) -> None:
    head = (f"{'case':<31}{'codec':<8}{'write MB/s':>17}{'x':>6}{'read MB/s':>17}{'x':>6}"
            f"{'ratio':>13}{'/Shannon':>9}{'read peak / size':>18}")
    print(head)
    print(f"{'':<39}{'ours   orig':>17}{'':>6}{'ours   orig':>17}{'':>6}{'ours  orig':>13}"
          f"{'ours':>9}{'ours  orig':>18}")
    for row in rows:
        o, g, n = row["ours"], row["orig"], row["nbytes"]
        print(f"{row['case']:<31}{row['codec']:<8}"
              f"{n / o['write'] / MB:>9.0f}{n / g['write'] / MB:>8.0f}"
              f"{g['write'] / o['write']:>6.2f}"
              f"{n / o['read'] / MB:>9.0f}{n / g['read'] / MB:>8.0f}"
              f"{g['read'] / o['read']:>6.2f}"
              f"{o['ratio']:>7.3f}{g['ratio']:>6.3f}{o['ratio'] / row['shannon']:>9.3f}"
              f"{o['rss'] / n:>12.2f}{g['rss'] / n:>6.2f}")


def print_cpu_table(rows: list[dict]) -> None:
    """MB per CPU-second (all threads): what each spends, whatever else the machine runs."""
    print(f"{'CPU efficiency, MB per CPU-s':<39}{'write ours  orig':>18}{'x':>6}"
          f"{'read ours  orig':>18}{'x':>6}")
    for row in rows:
        o, g, n = row["ours"], row["orig"], row["nbytes"]
        print(f"{row['case']:<31}{row['codec']:<8}"
              f"{n / o['write_cpu'] / MB:>10.0f}{n / g['write_cpu'] / MB:>8.0f}"
              f"{g['write_cpu'] / o['write_cpu']:>6.2f}"
              f"{n / o['read_cpu'] / MB:>10.0f}{n / g['read_cpu'] / MB:>8.0f}"
              f"{g['read_cpu'] / o['read_cpu']:>6.2f}")


def random_access(npy: Path, tmp: Path) -> None:
    """One middle frame of a compressed movie against reading all of it (ours)."""
    path = tmp / "random.mrcz"
    run_worker(sys.executable, "ours", "write", npy, path, "zstd", 1)
    full = min(run_worker(sys.executable, "ours", "read", npy, path, "zstd", 1)["seconds"]
               for _ in range(2))
    one = run_worker(sys.executable, "ours", "random", npy, path, "zstd", 1)["seconds"]
    nz = np.load(npy, mmap_mode="r").shape[0]
    print(f"\nrandom access, {nz}-frame zstd movie: one frame {one * 1e3:.1f} ms, all frames "
          f"{full * 1e3:.0f} ms, ratio 1/{full / one:.0f} (target <= 1/20)")
    path.unlink()


# ----------------------------------------------------------------------------- streaming

def stream_worker(path: str, nframes: int, compressor: str) -> dict:
    """Stream ``nframes`` 4096^2 int8 counted frames through MRCZWriter and back."""
    sys.path.insert(0, str(REPO))
    from mrcz.stream import MRCZReader, MRCZWriter
    pool = counted(4, "int8")
    comp = None if compressor == "none" else compressor
    start = time.perf_counter()
    with MRCZWriter(path, pool[0].shape, np.int8, compressor=comp) as writer:
        for k in range(nframes):
            writer.write(pool[k % len(pool)])
    written = time.perf_counter() - start
    size = os.path.getsize(path)
    start = time.perf_counter()
    with MRCZReader(path) as reader:
        assert len(reader) == nframes
        for k, frame in enumerate(reader):
            if not np.array_equal(frame, pool[k % len(pool)]):
                raise RuntimeError(f"frame {k} differs")
    read = time.perf_counter() - start
    return {"write": written, "read": read, "size": size,
            "maxrss": peak_rss()}


def streaming(tmp: Path, nframes: int) -> None:
    raw = nframes * 4096 * 4096
    for compressor in ("none", "zstd"):
        if shutil.disk_usage(tmp).free < raw * 1.2:
            print(f"\nstreaming skipped: less than {raw * 1.2 / 1e9:.1f} GB free in {tmp}")
            return
        path = tmp / "stream.mrc"
        cmd = [sys.executable, __file__, "_stream", str(path), str(nframes), compressor]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if path.exists():
            path.unlink()
        if done.returncode:
            raise RuntimeError(f"streaming failed:\n{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"streaming {nframes} x 4096^2 int8 ({compressor}): {r['size'] / 1e9:.2f} GB on "
              f"disk, write {raw / r['write'] / MB:.0f} MB/s, read {raw / r['read'] / MB:.0f} "
              f"MB/s, peak RSS {r['maxrss'] / 1e9:.3f} GB (target < 0.5 GB)")


# ----------------------------------------------------------------------------- block sizes

def blocksize_sweep(quick: bool, repeats: int = 3) -> None:
    """Ratio and single-thread CPU speed (best of ``repeats``) per block size, codec and data."""
    import blosc
    sys.path.insert(0, str(REPO))
    from mrcz import codec
    shapes = {
        "int8 4096^2 counted": counted(1, "int8"),
        "uint16 4096^2 counted": counted(1, "uint16"),
        "float32 4096^2 gain-corr": gain_corrected(1),
        "float32 128^2 particles": particles(256),
        "int8 128^2 counted": counted(256, "int8", size=128),
    }
    codecs = [("zstd", 1), ("lz4", 9), ("lz4", 1), ("zlib", 1)]
    sizes = [0, 2**14, 2**16, 2**18, 2**20, 2**21, 2**22] if not quick else [0, 2**16, 2**20]
    print(f"{'data':<26}{'codec':<8}{'blocksize':>10}{'ratio':>8}{'comp MB/s':>11}"
          f"{'dec MB/s':>10}")
    for label, data in shapes.items():
        out = np.empty_like(data)
        for cname, clevel in codecs:
            for bs in sizes:
                if bs and bs > data[0].nbytes // 2:
                    continue
                t_comp = t_dec = float("inf")
                for _ in range(repeats):  # CPU time of this thread: robust to other load
                    start = time.thread_time()
                    chunks = [codec.compress_frame(f, cname, clevel, bs) for f in data]
                    t_comp = min(t_comp, time.thread_time() - start)
                    start = time.thread_time()
                    for c, o in zip(chunks, out):
                        blosc.decompress_ptr(c, o.ctypes.data)
                    t_dec = min(t_dec, time.thread_time() - start)
                ratio = data.nbytes / sum(len(c) for c in chunks)
                print(f"{label:<26}{cname + ' ' + str(clevel):<8}{bs or 'auto':>10}{ratio:>8.3f}"
                      f"{data.nbytes / t_comp / MB:>11.0f}{data.nbytes / t_dec / MB:>10.0f}",
                      flush=True)
        chosen = codec.choose_blocksize(data[0].nbytes, data.dtype.itemsize)  # zstd, lz4
        print(f"{label:<26}choose_blocksize -> {chosen or 'auto'}")


# ----------------------------------------------------------------------------- main

def plot(rows: list[dict], target: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    labels = [f"{r['case']}\n{r['codec']}" for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, op in zip(axes, ("write", "read")):
        for shift, impl in ((-0.2, "ours"), (0.2, "orig")):
            ax.bar(x + shift, [r["nbytes"] / r[impl][op] / MB for r in rows], 0.4,
                   label={"ours": "mrcz (this)", "orig": "mrcz 0.6.0"}[impl])
        ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel(f"{op} MB/s")
        ax.legend()
    fig.tight_layout()
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    print(f"plot saved to {target}")


def main(argv: list[str]) -> None:
    if argv and argv[0] == "_worker":
        impl, op, npy, path, compressor, clevel = argv[1:7]
        print(json.dumps(worker(impl, op, npy, path, compressor, int(clevel))))
        return
    if argv and argv[0] == "_stream":
        print(json.dumps(stream_worker(argv[1], int(argv[2]), argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "blocksize"])
    parser.add_argument("--quick", action="store_true", help="fewer frames, one repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--tmp", default="/work/bench_tmp" if Path("/work").is_dir()
                        else tempfile.gettempdir())
    parser.add_argument("--original-python", default=ORIGINAL_PYTHON)
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--stream-frames", type=int, default=None)
    parser.add_argument("--plot", default=None, help="PNG path for the speed plot")
    args = parser.parse_args(argv)
    if args.mode == "blocksize":
        blocksize_sweep(args.quick)
        return
    repeats = args.repeats or (2 if args.quick else 3)
    nz = 8 if args.quick else 40
    tmp = Path(tempfile.mkdtemp(prefix="bench_mrcz_", dir=args.tmp))
    try:
        run(args, tmp, nz, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, nz: int, repeats: int) -> None:
    datasets = {
        "counted int8 4096^2": lambda: counted(nz, "int8"),
        "counted uint16 4096^2": lambda: counted(nz, "uint16"),
        "gain-corr float32 4096^2": lambda: gain_corrected(max(2, nz // 4)),
        "particles float32 128^2": lambda: particles(nz * 250),
    }
    plan = {
        "counted int8 4096^2": [("zstd", 1), ("lz4", 9), ("none", 0)],
        "counted uint16 4096^2": [("zstd", 1), ("none", 0)],
        "gain-corr float32 4096^2": [("zstd", 1)],
        "particles float32 128^2": [("zstd", 1)],
    }
    rows = []
    for case, build in datasets.items():
        npy = tmp / "data.npy"
        np.save(npy, build())
        label = f"{case} x{np.load(npy, mmap_mode='r').shape[0]}"
        for compressor, clevel in plan[case]:
            rows.append(compare(label, npy, tmp, compressor, clevel, repeats,
                                args.original_python))
            print(f"done: {label} {rows[-1]['codec']}", flush=True)
        if case == "counted int8 4096^2":
            random_access(npy, tmp)
        npy.unlink()
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; best of "
          f"{repeats}, alternating")
    print_table(rows)
    print()
    print_cpu_table(rows)
    if args.plot:
        plot(rows, args.plot)
    if not args.no_stream:
        print()
        streaming(tmp, args.stream_frames or (40 if args.quick else 400))


if __name__ == "__main__":
    main(sys.argv[1:])
