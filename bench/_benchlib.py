"""What the bench scripts share: test data, the interpreters, one timed run, medians."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_worker.py"
RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9
MB = 1e6

#: The interpreter that runs each implementation (overridable by environment).
PYTHONS = {
    "ours": os.environ.get("MRCZ_BENCH_PYTHON", sys.executable),
    "orig": os.environ.get("MRCZ_BENCH_ORIGINAL",
                           "/work/refvenvs/mrcz-0.6.0/bin/python"),
    "alternatives": os.environ.get("MRCZ_BENCH_ALTERNATIVES", "/work/venvs/bench/bin/python"),
}
IMPL_PYTHON = {"ours": "ours", "codec": "ours", "mrc_zst": "ours", "orig": "orig",
               "blosc2": "alternatives", "hdf5": "alternatives", "zarr": "alternatives",
               "tiff_zstd": "alternatives", "tiff_lzw": "alternatives"}


# ----------------------------------------------------------------------------- data

def counted(nz: int, dtype: str, size: int = 4096, seed: int = 0) -> np.ndarray:
    """Poisson(0.8) counts, as a counting detector records them."""
    rng = np.random.default_rng(seed)
    out = np.empty((nz, size, size), dtype=dtype)
    for z in range(nz):
        out[z] = rng.poisson(0.8, (size, size))
    return out


def gain_corrected(nz: int, size: int = 4096, seed: int = 1) -> np.ndarray:
    """Counts times a per-pixel gain reference (float32)."""
    rng = np.random.default_rng(seed)
    gain = rng.normal(1.0, 0.05, (size, size)).astype(np.float32)
    out = np.empty((nz, size, size), dtype=np.float32)
    for z in range(nz):
        np.multiply(rng.poisson(0.8, (size, size)), gain, out=out[z], casting="unsafe")
    return out


def particles(n: int, size: int = 128, seed: int = 2) -> np.ndarray:
    """Normalised particle images: a blob plus Gaussian noise (float32)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * (size / 8) ** 2)).astype(np.float32)
    out = np.empty((n, size, size), dtype=np.float32)
    for start in range(0, n, 1000):
        stop = min(n, start + 1000)
        out[start:stop] = blob + rng.normal(0, 1, (stop - start, size, size))
    return out


# ----------------------------------------------------------------------------- runs

def run(impl: str, op: str, npy: Path, path: Path, **params) -> dict:
    """One write, read or one-frame read in a fresh subprocess (see worker.py)."""
    env = dict(os.environ)
    if impl in ("ours", "codec", "mrc_zst"):
        env["PYTHONPATH"] = str(REPO)
    else:
        env.pop("PYTHONPATH", None)
    if op == "write":
        os.sync()  # no run pays for another's dirty pages
    spec = {"impl": impl, "op": op, "npy": str(npy), "path": str(path), "repo": str(REPO),
            **params}
    done = subprocess.run([PYTHONS[IMPL_PYTHON[impl]], str(WORKER), json.dumps(spec)],
                          capture_output=True, text=True, cwd="/", env=env)
    if done.returncode:
        raise RuntimeError(f"{impl} {op} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result.get("equal") is False:
        raise RuntimeError(f"{impl} {op} read back different data from {path}")
    return result


def size_of(path: Path) -> int:
    """Bytes on disk of a file or of a folder (zarr)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def remove(path: Path) -> None:
    if path.is_dir():
        for f in sorted(path.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        path.rmdir()
    elif path.exists():
        path.unlink()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


def save_json(results: dict, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=1))
    print(f"results saved to {target}")


def bench_arguments(description: str, result_name: str) -> argparse.ArgumentParser:
    """The options every bench script takes: --quick, --repeats, --tmp, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--tmp", default="/work/bench_tmp" if Path("/work").is_dir()
                        else tempfile.gettempdir(), help="scratch folder (page cache)")
    parser.add_argument("--json", default=str(RESULTS / "raw" / f"{result_name}.json"),
                        help="where the raw medians go")
    return parser


@contextlib.contextmanager
def scratch(parent: str, prefix: str) -> Iterator[Path]:
    """A fresh folder under ``parent``, removed afterwards."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_figure(fig, target: str) -> None:
    fig.tight_layout()
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    print(f"plot saved to {target}")
