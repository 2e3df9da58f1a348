"""Does the one-engine refactor cost speed? The base tree against the new one, per workload.

Every workload runs in a fresh subprocess whose ``PYTHONPATH`` is one tree or the
other, alternating base / new (ABAB...), ``--repeats`` times each. Before the
timed runs each tree runs the workload once untimed: it checks what it read (or
reads back what it wrote) against the source data and warms the page cache.

Reported per workload and tree (medians of the repeats):

- child CPU s/GB: user + sys of the whole subprocess (``RUSAGE_CHILDREN``):
  interpreter start-up, imports, a tiny warm-up write and read, loading the
  input array, the operation;
- op CPU s/GB: user + sys of all threads during the operation alone
  (``time.process_time`` in the child); for the CLI the whole child;
- MB/s: data bytes over the operation's wall time;
- spread: (max - min) / median of child CPU over the repeats;
- identical: every output of a write workload has the same SHA-256 in both trees.

The load average (1 minute) is printed at the start and the end of every workload.

Usage::

    python bench/bench_engine.py [--quick] [--repeats 11] [--base COMMIT|DIR] [--new DIR]
                                 [--tmp DIR] [--out bench/results/engine.txt]

``--base`` is a commit of this repository (default b94d2ca, the tree before the
engine; its ``mrcz`` package is extracted with ``git archive`` into the scratch
folder) or a folder holding another tree.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _benchlib import (GB, MB, REPO, RESULTS, bench_arguments, counted, gain_corrected, median,
                       particles, save_json, scratch)

HERE = Path(__file__).resolve()
APPEND_FRAMES = 10
BASE_COMMIT = "b94d2ca"  # the tree before the engine (issue 14 item 2)
SIZES = {  # movie (frames, side), volume side, particles count, read range (first, last)
    "full": {"movie": (40, 2048), "volume": 368, "particles": 2000, "range": (10, 19)},
    "quick": {"movie": (8, 1024), "volume": 160, "particles": 200, "range": (2, 5)},
}


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    output: str | None = None  # file name a write workload produces
    seed_output: str | None = None  # input copied onto the output first (append)


WORKLOADS = [
    Workload("write_movie_zstd", "1  writeMRC movie zstd", "out.mrcz"),
    Workload("write_volume_plain", "2  writeMRC volume plain", "out.mrc"),
    Workload("read_movie_zstd", "3a readMRC movie zstd"),
    Workload("read_volume_plain", "3b readMRC volume plain"),
    Workload("read_range", "4  readMRC idx=(a,b) zstd"),
    Workload("stream_write", "5  MRCZWriter per frame", "out.mrcz"),
    Workload("stream_read", "6  MRCZReader iterate"),
    Workload("append", "7  writeMRC idx=nz append", "out.mrcz", "movie.mrcz"),
    Workload("write_zst", "8a writeMRC .mrc.zst", "out.mrc.zst"),
    Workload("read_zst", "8b readMRC .mrc.zst"),
    Workload("cli_compress", "9  mrcz compress (CLI)", "out.mrcz"),
    Workload("write_particles", "10a write particles list", "out.mrcz"),
    Workload("read_particles", "10b read particles list"),
]


# ----------------------------------------------------------------------------- child side

@dataclass
class Job:
    """What a child times: ``run()`` once; ``check(result)`` only on the untimed run."""
    nbytes: int
    run: Callable[[], object]
    check: Callable[[object], None]


def _same(got: object, want: np.ndarray, what: str) -> None:
    if isinstance(got, list):
        ok = len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
    else:
        ok = np.array_equal(np.asarray(got).reshape(want.shape), want)
    if not ok:
        raise AssertionError(f"{what}: the data differ from the source")


def _write_job(mrcz, data, out: str, read_back: np.ndarray, **kwargs) -> Job:
    def check(_: object) -> None:
        _same(mrcz.readMRC(out)[0], read_back, out)
    nbytes = sum(a.nbytes for a in data) if isinstance(data, list) else data.nbytes
    return Job(nbytes, lambda: mrcz.writeMRC(data, out, **kwargs), check)


def _read_job(mrcz, path: str, want: np.ndarray, **kwargs) -> Job:
    return Job(want.nbytes, lambda: mrcz.readMRC(path, **kwargs)[0],
               lambda got: _same(got, want, path))


def _stream_write(mrcz, movie: np.ndarray, out: str) -> Job:
    def run() -> None:
        with mrcz.MRCZWriter(out, movie.shape[1:], movie.dtype, compressor="zstd",
                             clevel=1) as writer:
            for frame in movie:
                writer.write(frame)
    return Job(movie.nbytes, run, lambda _: _same(mrcz.readMRC(out)[0], movie, out))


def _stream_read(mrcz, path: str, movie: np.ndarray) -> Job:
    def run() -> list:
        with mrcz.MRCZReader(path) as reader:
            return [frame for frame in reader]
    return Job(movie.nbytes, run, lambda got: _same(got, movie, path))


def job_for(mrcz, key: str, p: dict) -> Job:
    """The workload ``key`` on the files named in ``p``."""
    tmp = Path(p["tmp"])
    out = str(tmp / (p.get("output") or "none"))
    movie = np.load(tmp / "movie.npy")
    zstd = {"compressor": "zstd", "clevel": 1}
    if key == "write_movie_zstd":
        return _write_job(mrcz, movie, out, movie, **zstd)
    if key == "write_volume_plain":
        volume = np.load(tmp / "volume.npy")
        return _write_job(mrcz, volume, out, volume)
    if key == "read_movie_zstd":
        return _read_job(mrcz, str(tmp / "movie.mrcz"), movie)
    if key == "read_volume_plain":
        return _read_job(mrcz, str(tmp / "volume.mrc"), np.load(tmp / "volume.npy", mmap_mode="r"))
    if key == "read_range":
        first, last = p["range"]
        return _read_job(mrcz, str(tmp / "movie.mrcz"), movie[first:last + 1], idx=(first, last))
    if key == "stream_write":
        return _stream_write(mrcz, movie, out)
    if key == "stream_read":
        return _stream_read(mrcz, str(tmp / "movie.mrcz"), movie)
    if key == "append":
        extra = movie[:APPEND_FRAMES].copy()
        return _write_job(mrcz, extra, out, np.concatenate([movie, extra]), idx=len(movie),
                          **zstd)
    if key == "write_zst":
        return _write_job(mrcz, movie, out, movie, clevel=1)
    if key == "read_zst":
        return _read_job(mrcz, str(tmp / "movie.mrc.zst"), movie)
    if key == "write_particles":
        stack = np.load(tmp / "particles.npy")
        return _write_job(mrcz, list(stack), out, stack, **zstd)
    if key == "read_particles":
        return _read_job(mrcz, str(tmp / "particles.mrcz"), np.load(tmp / "particles.npy"))
    raise ValueError(f"unknown workload {key!r}")


def warm_up(mrcz, tmp: Path) -> None:
    """A tiny write and read of each kind: imports and thread pools are not timed."""
    tiny = np.arange(2 * 64 * 64, dtype=np.int8).reshape(2, 64, 64)
    for name, kwargs in (("warm.mrcz", {"compressor": "zstd"}), ("warm.mrc", {}),
                         ("warm.mrc.zst", {})):
        path = tmp / f"{os.getpid()}.{name}"
        mrcz.writeMRC(tiny, path, **kwargs)
        mrcz.readMRC(path)
        if kwargs:
            with mrcz.MRCZReader(path) as reader:
                list(reader)
        path.unlink()


def prepare(mrcz, tmp: Path) -> None:
    """The input files of the read workloads (written by the base tree)."""
    movie = np.load(tmp / "movie.npy")
    mrcz.writeMRC(movie, tmp / "movie.mrcz", compressor="zstd", clevel=1)
    mrcz.writeMRC(movie, tmp / "movie.mrc")
    mrcz.writeMRC(movie, tmp / "movie.mrc.zst", clevel=1)
    mrcz.writeMRC(np.load(tmp / "volume.npy"), tmp / "volume.mrc")
    mrcz.writeMRC(list(np.load(tmp / "particles.npy")), tmp / "particles.mrcz",
                  compressor="zstd", clevel=1)


def child(p: dict) -> dict:
    """Run in the subprocess: import the tree's mrcz, then prepare, or time one workload."""
    import mrcz
    if not Path(mrcz.__file__).resolve().is_relative_to(Path(p["tree"]).resolve()):
        raise RuntimeError(f"imported {mrcz.__file__}, not the tree {p['tree']}")
    tmp = Path(p["tmp"])
    if p["key"] == "prepare":
        prepare(mrcz, tmp)
        return {}
    warm_up(mrcz, tmp)
    job = job_for(mrcz, p["key"], p)
    start, cpu = time.perf_counter(), time.process_time()
    result = job.run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if p["check"]:
        job.check(result)
    return {"op_wall": seconds, "op_cpu": cpu, "nbytes": job.nbytes}


# ----------------------------------------------------------------------------- parent side

def child_command(key: str, spec: dict) -> list[str]:
    if key != "cli_compress":
        return [sys.executable, str(HERE), "_child", json.dumps(spec)]
    tmp = Path(spec["tmp"])
    return [sys.executable, "-m", "mrcz", "compress", str(tmp / "movie.mrc"), "-o",
            str(tmp / spec["output"]), "-f", "--compressor", "zstd", "--clevel", "1", "-q"]


def run_child(tree: Path, key: str, spec: dict) -> dict:
    """One subprocess; adds its wall time and CPU (user + sys, from RUSAGE_CHILDREN)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    spec = {**spec, "tree": str(tree), "key": key}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(child_command(key, spec), capture_output=True, text=True, cwd="/",
                          env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{key} in {tree} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if key == "cli_compress":  # the command is the operation
        return {"child_wall": wall, "child_cpu": cpu, "op_wall": wall, "op_cpu": cpu}
    return {"child_wall": wall, "child_cpu": cpu,
            **json.loads(done.stdout.strip().splitlines()[-1])}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def one_run(w: Workload, tree: Path, tmp: Path, spec: dict, check: bool) -> dict:
    """One run of ``w`` in ``tree``: fresh output, sync first, hash and remove the output."""
    out = tmp / w.output if w.output else None
    if out is not None:
        out.unlink(missing_ok=True)
        if w.seed_output:
            shutil.copyfile(tmp / w.seed_output, out)
        os.sync()  # no run pays for another's dirty pages
    result = run_child(tree, w.key, {**spec, "output": w.output, "check": check})
    if out is not None:
        result["sha256"] = sha256(out)
        out.unlink()
    return result


def bench_workload(w: Workload, trees: dict[str, Path], tmp: Path, spec: dict,
                   repeats: int) -> dict:
    """A checked untimed run per tree, then ``repeats`` timed runs each, ABAB..."""
    row: dict = {"key": w.key, "label": w.label, "load_start": os.getloadavg()[0]}
    for name, tree in trees.items():
        row[f"check_{name}"] = one_run(w, tree, tmp, spec, check=True)
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(repeats):
        for name, tree in trees.items():
            runs[name].append(one_run(w, tree, tmp, spec, check=False))
    row["load_end"] = os.getloadavg()[0]
    row["runs"] = runs
    return row


def summary(row: dict) -> dict:
    """Medians per tree of CPU s/GB (child, op) and MB/s, the spread, identical outputs."""
    out: dict = {}
    for name, runs in row["runs"].items():
        nbytes = row["nbytes"]
        child = [r["child_cpu"] / (nbytes / GB) for r in runs]
        out[name] = {"child": median(child), "op": median([r["op_cpu"] / (nbytes / GB)
                                                           for r in runs]),
                     "op_min": min(r["op_cpu"] for r in runs),
                     "mbs": median([nbytes / MB / r["op_wall"] for r in runs]),
                     "spread": (max(child) - min(child)) / median(child)}
    hashes = {r.get("sha256") for runs in row["runs"].values() for r in runs}
    hashes |= {row[f"check_{n}"].get("sha256") for n in row["runs"]}
    out["identical"] = "-" if hashes == {None} else ("yes" if len(hashes) == 1 else "no")
    return out


def table(rows: list[dict]) -> list[str]:
    head = (f"{'workload':<27}{'MB':>6} | {'child CPU s/GB base':>19}{'new':>7}{'new/base':>9}"
            f" | {'op CPU s/GB base':>16}{'new':>7}{'new/base':>9}{'min n/b':>8} | {'MB/s base':>9}"
            f"{'new':>7} | {'spread b/n':>10} | {'load':>9} | identical")
    lines = [head, "-" * len(head)]
    for row in rows:
        s, nbytes = summary(row), row["nbytes"]
        b, n = s["base"], s["new"]
        lines.append(
            f"{row['label']:<27}{nbytes / MB:>6.0f} | {b['child']:>19.3f}{n['child']:>7.3f}"
            f"{n['child'] / b['child']:>9.3f} | {b['op']:>16.3f}{n['op']:>7.3f}"
            f"{n['op'] / b['op']:>9.3f}{n['op_min'] / b['op_min']:>8.3f} | "
            f"{b['mbs']:>9.0f}{n['mbs']:>7.0f} | "
            f"{100 * b['spread']:>4.0f}/{100 * n['spread']:<3.0f}% | "
            f"{row['load_start']:>4.2f}>{row['load_end']:<4.2f} | {s['identical']}")
    return lines


def describe_tree(tree: Path, commit: str | None = None) -> str:
    """Commit of the tree (``commit`` for one extracted by git archive), whether mrcz/
    differs from it, and a digest of mrcz/*.py."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(tree), *args],
                              capture_output=True, text=True).stdout.strip()
    dirty = git("diff", "HEAD", "--stat", "--", "mrcz").splitlines()
    digest = hashlib.sha256()
    for path in sorted((tree / "mrcz").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    if commit is not None:
        return f"{commit} (git archive); mrcz/*.py sha256 {digest.hexdigest()[:12]}"
    state = f"+ uncommitted: {dirty[-1].strip()}" if dirty else "(clean)"
    return f"{git('rev-parse', '--short', 'HEAD')} {state}; mrcz/*.py sha256 " \
           f"{digest.hexdigest()[:12]}"


def build_data(tmp: Path, size: dict) -> None:
    """The .npy inputs: counted int8 movie, float32 volume, 128^2 float32 particles."""
    frames, side = size["movie"]
    np.save(tmp / "movie.npy", counted(frames, "int8", size=side))
    np.save(tmp / "volume.npy", gain_corrected(size["volume"], size=size["volume"]))
    np.save(tmp / "particles.npy", particles(size["particles"]))


def report(rows: list[dict], trees: dict[str, str], size: dict, repeats: int,
           load: tuple[float, float]) -> str:
    frames, side = size["movie"]
    v, first, last = size["volume"], *size["range"]
    text = [
        f"bench_engine.py, {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}",
        *(f"{name}: {described}" for name, described in trees.items()),
        f"data: movie {frames} x {side}^2 int8 Poisson(0.8) counts; volume {v}^3 float32; "
        f"{size['particles']} particles 128^2 float32; range idx=({first}, {last}); "
        f"append {APPEND_FRAMES} frames at idx={frames}; zstd clevel 1, default threads",
        f"{repeats} repeats per tree, alternating base/new, each a fresh subprocess; medians",
        f"1-minute load average: {load[0]:.2f} at start, {load[1]:.2f} at end",
        "", *table(rows), "",
        "child: whole subprocess (start-up, imports, warm-up, np.load, op); op: the call alone",
        "(CLI: the whole command). min n/b: the smallest op CPU of new over that of base.",
        "spread: (max-min)/median of child CPU. load: 1-min load average start>end.",
    ]
    return "\n".join(text) + "\n"


def base_tree(base: str, tmp: Path) -> Path:
    """The folder of the base tree: ``base`` itself, or commit ``base`` extracted into
    ``tmp/base`` (its ``mrcz`` package only)."""
    if Path(base).is_dir():
        return Path(base).resolve()
    target = tmp / "base"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", base, "mrcz"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0], "engine")
    parser.add_argument("--base", default=BASE_COMMIT,
                        help=f"the base tree: a commit (default {BASE_COMMIT}) or a folder")
    parser.add_argument("--new", default=str(REPO), help="the new tree")
    parser.add_argument("--out", default=None,
                        help="table file (default: bench/results/engine.txt, none with --quick)")
    parser.add_argument("--only", nargs="*", default=None, help="workload keys to run")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 11)
    size = SIZES["quick" if args.quick else "full"]
    load_start = os.getloadavg()[0]
    with scratch(args.tmp, "engine-") as tmp:
        trees = {"base": base_tree(args.base, tmp), "new": Path(args.new).resolve()}
        for tree in trees.values():
            if not (tree / "mrcz" / "__init__.py").is_file():
                raise SystemExit(f"{tree}: no mrcz package there (see the usage in {HERE.name})")
        extracted = None if Path(args.base).is_dir() else args.base
        described = {"base": describe_tree(trees["base"], extracted),
                     "new": f"{trees['new']}  {describe_tree(trees['new'])}"}
        build_data(tmp, size)
        spec = {"tmp": str(tmp), "range": size["range"]}
        run_child(trees["base"], "prepare", spec)
        rows = []
        for w in WORKLOADS:
            if args.only and w.key not in args.only:
                continue
            row = bench_workload(w, trees, tmp, spec, repeats)
            row["nbytes"] = row["check_base"]["nbytes"] if "nbytes" in row["check_base"] \
                else np.load(tmp / "movie.npy", mmap_mode="r").nbytes
            rows.append(row)
            print(table([row])[-1], flush=True)
    text = report(rows, described, size, repeats, (load_start, os.getloadavg()[0]))
    print("\n" + text)
    out = args.out or (None if args.quick else str(RESULTS / "engine.txt"))
    if out:
        Path(out).write_text(text)
        print(f"table saved to {out}")
        save_json({"size": size, "repeats": repeats, "rows": rows}, Path(args.json))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        main()
