"""Batch conversion on dask.distributed against `mrcz compress -j 2` and the serial command.

A folder of plain MRC movies (Poisson(0.8) counts, int8) is compressed to MRCZ
(zstd, level 1) three ways, each in a fresh subprocess so that its wall time
and CPU time (its own and its reaped children's: the pool's and the
cluster's worker processes) are measured alike:

- serial: ``mrcz compress -o OUT FILES`` (one process, frames on the cores);
- pool: ``mrcz compress -j 2 -o OUT FILES`` (a 2-process pool);
- dask: :func:`mrcz.batch.convert_files` on a ``LocalCluster`` of 2 worker
  processes of 1 thread; the wall time includes starting the cluster, and the
  time of the conversion alone (cluster up) is reported too.

Runs alternate between the methods, ``--repeats`` times; medians are printed
with the load average, and every method's outputs are checked to be identical
to the serial ones. Then a scale-up note: tasks per file and bytes each task
moves through the scheduler, for a cluster.

Usage::

    python bench/bench_dask.py [--quick] [--files N] [--frames N] [--size N] [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import mrcz  # noqa: E402
from mrcz import framespans  # noqa: E402
from mrcz.batch import Job, Result  # noqa: E402

DASK_RUN = """
import json, os, sys, time
from distributed import Client, LocalCluster
from mrcz.batch import Job, convert_files
sources, out = sys.argv[1], sys.argv[2]
jobs = [Job(os.path.join(sources, n), os.path.join(out, n + "z"))
        for n in sorted(os.listdir(sources))]
if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        start = time.perf_counter()
        results = convert_files(jobs, scheduler=client, threads_per_worker=1,
                                progress=lambda *a: None)
        seconds = time.perf_counter() - start
    assert all(r.status == "done" for r in results), [r.error for r in results if r.error]
    print(json.dumps({"convert_s": seconds}))
"""


def make_movies(folder: Path, files: int, frames: int, size: int) -> int:
    """Write ``files`` plain MRC movies; return their total data bytes."""
    rng = np.random.default_rng(7)
    total = 0
    for i in range(files):
        movie = rng.poisson(0.8, (frames, size, size)).astype(np.int8)
        mrcz.writeMRC(movie, folder / f"movie{i:03d}.mrc", pixelsize=1.1, meta={"movie": i})
        total += movie.nbytes
    return total


def run(command: list[str], cwd: Path) -> tuple[float, float, float | None]:
    """(wall seconds, CPU seconds of the process and its reaped children, seconds the
    conversion itself took where the process reports it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MRCZ_NO_PROGRESS="1")
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{command[:4]} failed with exit code {proc.returncode}")
    reported = json.loads(output.splitlines()[-1])["convert_s"] if "convert_s" in output else None
    return wall, usage.ru_utime + usage.ru_stime, reported


def commands(sources: list[str], out: Path, script: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "mrcz", "compress", "-o", str(out)]
    return {"serial": [*cli, *sources], "pool -j 2": [*cli, "-j", "2", *sources],
            "dask local 2x1": [sys.executable, str(script), str(Path(sources[0]).parent),
                               str(out)]}


def scale_note(folder: Path, sample: Path) -> str:
    """What one task moves through the scheduler, against the data a worker moves itself."""
    job = Job(str(folder / "movie000.mrc"), str(folder / "movie000.mrcz"))
    result = Result(job.source, job.target, 10**9, 10**8, 10.0, "0" * 64, 12.5, "done")
    span = framespans.index_frames(sample).span(0, 1)
    frame_bytes = int(np.prod(span.format.frame_shape)) * span.format.dtype.itemsize
    job_b, result_b, span_b = (len(pickle.dumps(x)) for x in (job, result, span))
    movies = 100e12 / (40 * 4096 * 4096)  # 100 TB of 40-frame 4096^2 int8 movies
    return "\n".join([
        "Scale-up (simulated cluster; workers read and write the files on shared storage):",
        f"- batch conversion: 1 task per file; the scheduler carries the Job ({job_b} B) "
        f"out and the Result ({result_b} B) back; the movie itself (40 x 4096^2 int8 = "
        f"{40 * 4096**2 / 1e6:.0f} MB in, ~{40 * 4096**2 / 4.4e6:.0f} MB out) never passes "
        "through it.",
        f"- 100 TB of such movies = {movies:,.0f} tasks, {movies * (job_b + result_b) / 1e6:.0f}"
        " MB of task traffic in all: the scheduler (a few thousand tasks/s) is never the limit;"
        " storage bandwidth is.",
        f"- mrcz.to_dask: 1 task per frame (or per k frames); a task description is "
        f"{span_b} B (path, offset, size, format); its result is the decoded frame "
        f"({frame_bytes / 1e6:.2f} MB here), which stays on the worker unless the client asks "
        "for it (reduce on the workers, e.g. .mean(axis=0), to move one frame per worker).",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 files of 8 x 512^2")
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch folder (default: tmp)")
    args = parser.parse_args(argv)
    files, frames, size = (8, 8, 512) if args.quick else (args.files, args.frames, args.size)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        data_bytes = make_movies(folder / "in", files, frames, size)
        script = folder / "dask_run.py"
        script.write_text(DASK_RUN)
        sources = sorted(str(p) for p in (folder / "in").iterdir())
        print(f"{files} movies of {frames} x {size}^2 int8 ({data_bytes / 1e6:.0f} MB); "
              f"{os.cpu_count()} cores; load before {os.getloadavg()[0]:.2f}", flush=True)
        timings: dict[str, list[tuple[float, float]]] = {}
        reference: dict[str, bytes] = {}
        for repeat in range(args.repeats):
            methods = list(commands(sources, folder, script).items())
            methods = methods if repeat % 2 == 0 else methods[::-1]  # alternate the order
            for name, _ in methods:
                out = folder / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                command = commands(sources, out, script)[name]
                os.sync()
                timings.setdefault(name, []).append(run(command, folder))
                outputs = {p.name: p.read_bytes() for p in out.iterdir()}
                if name == "serial" and not reference:
                    reference = outputs
                elif reference and outputs != reference:
                    raise AssertionError(f"{name}: outputs differ from the serial ones")
        serial_wall = statistics.median(w for w, _, _ in timings["serial"])
        print(f"\n| method | wall s (median of {args.repeats}) | MB/s | CPU s | "
              "conversion s after start-up | MB/s after start-up |")
        print("|---|---|---|---|---|---|")
        for name, runs in timings.items():
            wall = statistics.median(w for w, _, _ in runs)
            # the pool's forkserver children are reaped by init, not by the command
            cpu = "n/a" if "pool" in name else f"{statistics.median(c for _, c, _ in runs):.2f}"
            steady = [r for _, _, r in runs if r is not None]
            after = (f"{statistics.median(steady):.2f} | "
                     f"{data_bytes / 1e6 / statistics.median(steady):.0f}") if steady else "- | -"
            print(f"| {name} | {wall:.2f} | {data_bytes / 1e6 / wall:.0f} | {cpu} | {after} |")
        print(f"\nserial wall {serial_wall:.2f} s; CPU s counts the command and the worker "
              "processes it reaped (cluster start-up included)")
        print(f"\nload after {os.getloadavg()[0]:.2f}; outputs of every method identical")
        print()
        print(scale_note(folder, folder / "in" / "movie000.mrc"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
