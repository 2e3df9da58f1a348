"""The ``mrcz`` command: info, validate, compress, decompress, convert, upgrade, demo.

Every sub-command takes many files, reports a failure per file on stderr
(never a traceback), prints a summary, and exits non-zero when any file
failed. Outputs are written atomically and never replace an existing file
unless ``--force`` is given.

Conversions stream: :func:`open_input` hands writeMRC a lazy frame reader
(``mrcz.stream.MRCZReader`` for MRC/MRCZ arrays, a memory map for DM files),
so only the frames in flight are in memory; lists of frames and whole-file
gz/bz2/zst inputs (decompressed to a temporary file first, until readMRC reads
them itself) are the exceptions.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import carry, header as hdr, wholefile
from .errors import MRCZError
from .mrc import (ANGSTROM, open_for_read, read_header_and_meta, readMRC, readMRCHeader,
                  writeMRC)
from .progress import Progress
from .upgrade import publish_no_clobber
from .version import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DM_SUFFIXES = (".dm3", ".dm4")
MRC_SUFFIXES = (".mrcz", ".mrcs", ".mrc", ".map", ".st", ".ali", ".rec")
#: Source dtypes --auto-dtype narrows, and the integer types it tries, narrowest first.
AUTO_FROM = ("float32", "float64", "int16", "uint16", "int32", "uint32")
AUTO_TO = ("int8", "int16", "uint16")
_COPY = 2**20


class CommandError(Exception):
    """A per-file failure with a message for the user (no traceback)."""


# ============================================================================= inputs

@dataclasses.dataclass
class Loaded:
    """An opened input: the image (array, frame reader or list) and the writeMRC
    keywords that keep its header values."""

    image: Any
    kwargs: dict
    kind: str


def whole_file_codec(path: str | os.PathLike) -> str | None:
    """``'gzip'``, ``'bz2'`` or ``'zstd'`` when the file is whole-file compressed."""
    with open(path, "rb") as f:
        codec = wholefile.detect(f.read(4))
    return "bz2" if codec == "bzip2" else codec


@contextlib.contextmanager
def readable_mrc(path: str | os.PathLike) -> Iterator[str]:
    """A path readMRC can read: ``path`` itself, or a decompressed temporary copy.

    readMRC is meant to read gz/bz2/zst files itself; until it does, they are
    decompressed into a temporary file first.
    """
    codec = whole_file_codec(path)
    if codec is None or _reads_natively(path):
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory(prefix="mrcz-") as tmp:
        plain = os.path.join(tmp, Path(path).stem)
        stream = wholefile.StreamReader(open(path, "rb"), "bzip2" if codec == "bz2" else codec,
                                        os.fspath(path))
        with stream as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY)
        yield plain


def _reads_natively(path: str | os.PathLike) -> bool:
    try:
        readMRCHeader(path)
    except MRCZError:
        return False
    return True


def is_dm(path: str | os.PathLike) -> bool:
    """True for a Gatan DM3/DM4 file name."""
    return os.fspath(path).lower().endswith(DM_SUFFIXES)


@contextlib.contextmanager
def open_input(path: str | os.PathLike, lazy: bool = True) -> Iterator[Loaded]:
    """Open an MRC, MRCZ, gz/bz2/zst or DM3/DM4 file with what it says about itself.

    With ``lazy`` the image is read frame by frame while it is written
    (``mrcz.stream.MRCZReader`` for MRC/MRCZ arrays, a memory map for DM files),
    so memory stays bounded; lists of frames are read whole (readMRC).
    """
    if is_dm(path):
        yield _load_dm(path)
        return
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(readable_mrc(path))
        with open_for_read(plain) as f:
            info, meta = read_header_and_meta(f, os.fspath(path))
        header, slices = readMRCHeader(plain)
        # a whole-file compressed stream only reads forwards: read it whole
        seekable = whole_file_codec(plain) is None
        reader = _frame_reader(plain) if lazy and seekable and not slices else None
        if reader is not None:
            image = stack.enter_context(reader)
        else:
            image, header = readMRC(plain)
        has_meta = info.extended_bytes > 0 and info.record["exttyp"] == b"json"
        template = carry.of_file(plain, open_for_read)  # what the output keeps of the rest
        kwargs = {"pixelsize": header["pixelsize"], "pixelunits": ANGSTROM,
                  "meta": meta if has_meta else None, "endian": header["endian"],
                  "template": template}
        if template.holds_microscope_values:  # elsewhere these header words are not defined
            kwargs.update(voltage=header["voltage"], C3=header["C3"],
                          gain=header["gain"] or None)  # writers store gain 0 as 1
        yield Loaded(image, kwargs, "MRCZ" if info.compressor else "MRC")


def _frame_reader(path: str) -> Any:
    """``mrcz.stream.MRCZReader(path)`` if the streaming module is there, else None."""
    try:
        from .stream import MRCZReader
    except ImportError:
        return None
    return MRCZReader(path, n_threads=1)


def _dm_module():
    try:
        from . import dm
    except ImportError:
        raise CommandError("DM3/DM4 support (mrcz.dm) is not available") from None
    return dm


def _load_dm(path: str | os.PathLike) -> Loaded:
    dm = _dm_module()
    image, meta = dm.readDM(path, lazy=True)
    kwargs = dict(dm.dm_header_for_mrc(meta)) if hasattr(dm, "dm_header_for_mrc") else {}
    kwargs.setdefault("pixelunits", ANGSTROM)
    return Loaded(image, kwargs, "DM")


# ============================================================================= outputs

def is_mrcz_output(path: str | os.PathLike) -> bool:
    """True when the output name asks for compressed MRCZ (``.mrcz``); ``.gz``, ``.bz2``
    and ``.zst`` names get a whole-file compressed plain MRC from writeMRC."""
    return os.fspath(path).lower().endswith(".mrcz")


def save_output(image: Any, out: str | os.PathLike, kwargs: dict, compressor: str | None,
                clevel: int, threads: int | None) -> None:
    """Write ``image`` to ``out`` (plain, MRCZ, or plain inside gz/bz2/zst), atomically."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writeMRC(image, out, compressor=compressor, clevel=clevel, n_threads=threads,
                 **kwargs)  # names ending .gz/.bz2/.zst: writeMRC compresses the whole file


def frames_of(image: Any) -> Iterator[np.ndarray]:
    """The z-slices (or frames) of an array or list, one at a time."""
    if isinstance(image, list):
        yield from (np.asarray(f) for f in image)
    elif len(image.shape) <= 2:  # np.ndim() would read a lazy image whole
        yield np.asarray(image)
    else:
        yield from (np.asarray(image[i]) for i in range(image.shape[0]))


# ============================================================================= auto-dtype

def narrowest_integer_dtype(image: Any) -> np.dtype | None:
    """The narrowest of int8/int16/uint16 holding every value of ``image`` exactly.

    Only float32/float64/int16/uint16/int32/uint32 data is considered, and only a
    type narrower than the current one is returned (``None`` otherwise). Floats
    qualify when every value is finite and integral.
    """
    dtype = _image_dtype(image)
    if dtype.name not in AUTO_FROM:
        return None
    low, high = np.inf, -np.inf
    for frame in frames_of(image):
        if dtype.kind == "f" and not (np.isfinite(frame).all()
                                      and np.array_equal(frame, np.rint(frame))):
            return None
        low, high = min(low, frame.min()), max(high, frame.max())
    for name in AUTO_TO:
        target = np.dtype(name)
        info = np.iinfo(target)
        if target.itemsize < dtype.itemsize and info.min <= low and high <= info.max:
            return target
    return None


class CastFrames:
    """An image seen through ``astype(dtype)``, one frame at a time (nothing held)."""

    def __init__(self, image: Any, dtype: np.dtype) -> None:
        self.image, self.dtype = image, np.dtype(dtype)
        self.shape = tuple(image.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.image[index]).astype(self.dtype)


def cast_image(image: Any, dtype: np.dtype) -> Any:
    """``image`` (array, lazy reader or list of frames) converted to ``dtype``."""
    if isinstance(image, list):
        return [np.asarray(f).astype(dtype) for f in image]
    if len(image.shape) <= 2:
        return np.asarray(image).astype(dtype)
    return CastFrames(image, dtype)


def _image_dtype(image: Any) -> np.dtype:
    return np.dtype(image[0].dtype if isinstance(image, list) else image.dtype)


def apply_auto_dtype(image: Any, kwargs: dict) -> tuple[Any, dict, str]:
    """Narrow ``image`` if possible; record it in ``meta['auto_dtype']``. Returns a note."""
    target = narrowest_integer_dtype(image)
    if target is None:
        return image, kwargs, ""
    source = _image_dtype(image).name
    meta = dict(kwargs.get("meta") or {})
    meta["auto_dtype"] = {"from": source, "to": target.name}
    return cast_image(image, target), {**kwargs, "meta": meta}, f"{source} -> {target.name}"


#: dtypes MRC cannot hold, and what they are stored as.
_MRC_CASTS = {np.dtype(bool): np.dtype(np.uint8), np.dtype(np.float64): np.dtype(np.float32),
              np.dtype(np.complex128): np.dtype(np.complex64)}


def mrc_compatible(image: Any) -> tuple[Any, str]:
    """Cast bool/float64/complex128 images to an MRC dtype; returns a note when cast."""
    dtype = _image_dtype(image)
    target = _MRC_CASTS.get(dtype)
    if target is None:
        return image, ""
    return cast_image(image, target), f"{dtype} stored as {target}"


# ============================================================================= verify

def verify_output(out: str | os.PathLike, image: Any, kwargs: dict) -> None:
    """Re-read ``out`` frame by frame and compare data and header values with the input."""
    with open_input(out) as got:
        _compare_frames(out, frames_of(got.image), frames_of(image))
        _compare_header(out, got.kwargs, kwargs,
                        3 if isinstance(image, list) else len(image.shape))


def _compare_frames(out: Any, have: Iterator[np.ndarray], want: Iterator[np.ndarray]) -> None:
    """Raise unless both sequences hold the same values (bit for bit where dtypes match)."""
    have_it, want_it = _slices(have), _slices(want)
    for index, (a, b) in enumerate(zip(have_it, want_it)):
        if a.size != b.size or not _same(a, b):
            raise CommandError(f"verify: slice {index} read back from {out} differs from the "
                               "input")
    if next(have_it, None) is not None or next(want_it, None) is not None:
        raise CommandError(f"verify: {out} holds a different number of slices")


def _slices(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """2-D slices of a sequence of 2-D or 3-D frames."""
    for frame in frames:
        yield from (frame if frame.ndim == 3 else [frame])


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype == b.dtype:
        return np.array_equal(np.ascontiguousarray(a).reshape(-1).view(np.uint8),
                              np.ascontiguousarray(b).reshape(-1).view(np.uint8))
    return np.array_equal(a.reshape(-1), b.reshape(-1))


def _compare_header(out: Any, have: dict, want: dict, ndim: int) -> None:
    if "pixelsize" in want:
        want_px = np.broadcast_to(np.atleast_1d(want["pixelsize"]), (3,))[-ndim:]
        if not np.allclose(have["pixelsize"][-ndim:], want_px, rtol=1e-5):
            raise CommandError(f"verify: pixel size of {out} is {have['pixelsize']}")
    for key in ("voltage", "C3", "gain"):
        if want.get(key) is not None and np.float32(have.get(key)) != np.float32(want[key]):
            raise CommandError(f"verify: {key} of {out} is {have.get(key)}")
    if _own_meta(want.get("meta")) != _own_meta(have.get("meta")):
        raise CommandError(f"verify: JSON metadata of {out} differ from the input")


def _own_meta(meta: dict | None) -> dict | None:
    """The JSON metadata without what a conversion displaced from the header."""
    meta = {k: v for k, v in (meta or {}).items() if k != carry.DISPLACED_KEY}
    return meta or None


# ============================================================================= tasks

@dataclasses.dataclass
class Task:
    """One file to convert: everything a worker process needs."""

    source: str
    target: str
    compressor: str | None
    clevel: int
    threads: int | None
    force: bool
    verify: bool
    auto_dtype: bool


@dataclasses.dataclass
class Outcome:
    """What happened to one file."""

    source: str
    ok: bool
    message: str
    in_bytes: int = 0
    out_bytes: int = 0


def run_task(task: Task) -> Outcome:
    """Convert one file (runs in a worker process); never raises for file problems."""
    try:
        return _convert(task)
    except (CommandError, MRCZError, OSError, ValueError, TypeError, IndexError) as err:
        return Outcome(task.source, False, _message(err))


def _message(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError) and err.filename:
        return f"{err.filename}: no such file"
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    return str(err) or type(err).__name__


def _convert(task: Task) -> Outcome:
    if not os.path.isfile(task.source):
        raise CommandError(f"{task.source}: no such file")
    if os.path.exists(task.target) and not task.force:
        raise CommandError(f"{task.target} exists (use --force to replace it)")
    start = time.perf_counter()
    with open_input(task.source) as loaded, _staged(task.target, task.force) as temp:
        note = _write_checked(task, loaded, temp)
    seconds = time.perf_counter() - start
    size_in, size_out = os.path.getsize(task.source), os.path.getsize(task.target)
    parts = [f"{task.source} -> {task.target}", f"{_mb(size_in)} -> {_mb(size_out)}",
             f"{seconds:.2f} s"]
    if note:
        parts.append(note if " stored as " in note else f"auto-dtype {note}")
    if task.verify:
        parts.append("verified")
    return Outcome(task.source, True, ", ".join(parts), size_in, size_out)


def _write_checked(task: Task, loaded: Loaded, temp: str) -> str:
    """Write (and verify) the output under its temporary name; returns a note."""
    image, kwargs, note = loaded.image, loaded.kwargs, ""
    if task.auto_dtype:
        image, kwargs, note = apply_auto_dtype(image, kwargs)
    if not note:
        image, note = mrc_compatible(image)
    compressed = is_mrcz_output(task.target)
    try:
        save_output(image, temp, kwargs, task.compressor if compressed else None,
                    task.clevel, task.threads)
        if task.verify:
            verify_output(temp, image, kwargs)
    except (CommandError, MRCZError, ValueError, TypeError) as err:
        message = _message(err).replace(temp, task.target)
        message = message.removeprefix(f"{task.target}: ")
        raise CommandError(f"{task.source} -> {task.target}: {message}") from None
    return note


@contextlib.contextmanager
def _staged(target: str, force: bool) -> Iterator[str]:
    """A hidden temporary name beside ``target`` (same suffix) that becomes ``target``
    only if the body succeeds; without ``force`` an existing file is never replaced."""
    folder, base = os.path.split(os.path.abspath(target))
    temp = os.path.join(folder, f".{os.getpid()}-{time.monotonic_ns()}.{base}")
    try:
        yield temp
        if force:
            os.replace(temp, target)
        elif not publish_no_clobber(temp, target):  # a file that appeared meanwhile stays
            raise CommandError(f"{target} exists (use --force to replace it)")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _mb(nbytes: float) -> str:
    """A byte count for people: B, kB, MB or GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"


def run_tasks(tasks: Sequence[Task], jobs: int, label: str, verbose: bool) -> int:
    """Run tasks (in a process pool when ``jobs > 1``); print failures and a summary."""
    outcomes: list[Outcome] = []
    with Progress(len(tasks), label) as bar:
        for outcome in _execute(tasks, jobs):
            outcomes.append(outcome)
            if not outcome.ok:
                bar.write(f"mrcz {label}: {outcome.message}", sys.stderr)
            elif verbose:
                bar.write(outcome.message)
            bar.update(item=outcome.source)
    return _summary(label, outcomes)


def _execute(tasks: Sequence[Task], jobs: int) -> Iterator[Outcome]:
    if jobs <= 1 or len(tasks) <= 1:
        yield from map(run_task, tasks)
        return
    # forkserver/spawn: a forked child would inherit the codec thread pool without its threads
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run_task, task) for task in tasks]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def _summary(label: str, outcomes: list[Outcome]) -> int:
    failed = sum(not o.ok for o in outcomes)
    done = len(outcomes) - failed
    total_in = sum(o.in_bytes for o in outcomes if o.ok)
    total_out = sum(o.out_bytes for o in outcomes if o.ok)
    ratio = f", {_mb(total_in)} -> {_mb(total_out)}" if done else ""
    if len(outcomes) > 1 or failed or sys.stderr.isatty():
        print(f"mrcz {label}: {done} done, {failed} failed{ratio}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _target(source: str, args: argparse.Namespace, default_suffix: str) -> str:
    """Output path: -o OUT (a file, or a folder for many inputs) or IN with a new suffix."""
    out = getattr(args, "output", None)
    if out and (os.path.isdir(out) or len(args.inputs) > 1):
        return os.path.join(out, _with_suffix(os.path.basename(source), default_suffix))
    if out:
        return out
    return _with_suffix(source, args.suffix or default_suffix)


def _with_suffix(path: str, suffix: str) -> str:
    base = path
    for whole in wholefile.SUFFIXES:
        if base.lower().endswith(whole):
            base = base[: -len(whole)]
            break
    for known in (*MRC_SUFFIXES, *DM_SUFFIXES):
        if base.lower().endswith(known):
            return base[: -len(known)] + suffix
    return base + suffix


# ============================================================================= commands

def cmd_compress(args: argparse.Namespace) -> int:
    """Compress MRC (or any readable input) to MRCZ."""
    return _run_conversions(args, args.compressor, ".mrcz", "compress")


def cmd_decompress(args: argparse.Namespace) -> int:
    """Decompress MRCZ (or gz/bz2/zst) to plain MRC."""
    return _run_conversions(args, None, ".mrc", "decompress")


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert one file; the output format follows the output name."""
    args.inputs, args.output, args.suffix = [args.input], args.output_file, None
    return _run_conversions(args, args.compressor, "", "convert")


def _run_conversions(args: argparse.Namespace, compressor: str | None, suffix: str,
                     label: str) -> int:
    if getattr(args, "output", None) and len(args.inputs) > 1 \
            and not os.path.isdir(args.output):
        raise CommandError(f"-o {args.output}: with several inputs -o must be a folder")
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    tasks = [Task(source, _target(source, args, suffix), compressor, args.clevel, threads,
                  args.force, args.verify, getattr(args, "auto_dtype", False))
             for source in args.inputs]
    return run_tasks(tasks, args.jobs, label, args.verbose)


def cmd_info(args: argparse.Namespace) -> int:
    """Print what a file holds (text, or JSON with --json)."""
    records, failed = [], 0
    for path in args.files:
        try:
            records.append(describe_file(path))
        except (CommandError, MRCZError, OSError, ValueError, IndexError) as err:
            failed += 1
            print(f"mrcz info: {_message(err)}", file=sys.stderr)
            continue
        if not args.json:
            print(format_info(records[-1]))
    if args.json:
        json.dump(records if len(args.files) > 1 else (records or [None])[0], sys.stdout,
                  indent=1, default=_json_default)
        print()
    return EXIT_FAILED if failed else EXIT_OK


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def describe_file(path: str | os.PathLike) -> dict:
    """A JSON-ready description of an MRC/MRCZ/gz/bz2/zst/DM3/DM4 file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    if is_dm(path):
        return _describe_dm(path)
    codec = whole_file_codec(path)
    with readable_mrc(path) as plain:
        with open_for_read(plain) as f:
            info, meta = read_header_and_meta(f, path)
        header, slices = readMRCHeader(plain)
        chunk_bytes = int(header["packedBytes"]) if info.compressor else None
    nz, ny, nx = info.shape
    raw_bytes = hdr.stored_nbytes(info)
    file_bytes = os.path.getsize(path)
    if info.compressor and not chunk_bytes:  # packedBytes not recorded by the writer
        chunk_bytes = file_bytes - info.data_offset if not codec else None
    stored = chunk_bytes if chunk_bytes else (file_bytes if codec else None)
    rec = info.record
    record = {
        "file": path,
        "format": ("MRCZ" if info.compressor else "MRC") + (f" in {codec}" if codec else ""),
        "label": bytes(rec["label"][0]).rstrip(b"\0 ").decode("latin-1"),
        "dimensions": [nx, ny, nz], "dtype": header["dtype"],
        "mode": info.mode, "endian": header["endian"],
        "layout": _layout(slices, nz),
        "compressor": info.compressor, "clevel": header.get("clevel"),
        "bytes": {"file": file_bytes, "data": raw_bytes, "compressed_data": stored},
        "ratio": round(raw_bytes / stored, 3) if stored else None,
        "voxel_size_A": [float(v) for v in header["pixelsize"][::-1]],
        "voltage_kV": header["voltage"], "C3_mm": header["C3"], "gain": header["gain"],
        "microscope_recorded": info.mrcz_version is not None,
        "statistics": _stats(rec),
        "space_group": int(rec["ispg"]), "nversion": int(rec["nversion"]),
        "extended_header": {"bytes": info.extended_bytes,
                            "type": bytes(rec["exttyp"]).decode("latin-1")},
        "meta": meta,
    }
    return record


def _layout(slices: int, nz: int) -> str:
    if slices == 1:
        return f"list of {nz} 2-D frames"
    if slices > 1:
        return f"list of {nz // slices} frames of {slices} slices"
    return "one array"


def _stats(rec: np.void) -> dict:
    dmin, dmax, dmean, rms = (float(rec[k]) for k in ("dmin", "dmax", "dmean", "rms"))
    if dmax < dmin:
        return {"known": False}
    out = {"known": True, "min": dmin, "max": dmax}
    if dmean >= dmin:
        out["mean"] = dmean
    if rms >= 0:
        out["rms"] = rms
    return out


def _describe_dm(path: str) -> dict:
    dm = _dm_module()
    image, meta = dm.readDM(path, lazy=True)
    shape = list(image.shape)
    dims = shape[::-1] + [1] * max(0, 3 - len(shape))
    size = os.path.getsize(path)
    pixel = [float(v) if np.isfinite(v) else None  # None: axis not calibrated as a length
             for v in np.asarray(meta.get("pixelsize", []), float)][::-1]
    small = {k: v for k, v in meta.items() if k not in ("tags", "image_tags", "axes")}
    return {
        "file": path, "format": f"DM{meta.get('version', '')}",
        "label": meta.get("title", ""), "dimensions": dims[:max(3, len(dims))],
        "dtype": np.dtype(image.dtype).str, "mode": None, "endian": None,
        "layout": f"{meta.get('frame_count') or 1} frame(s)", "compressor": None,
        "clevel": None, "bytes": {"file": size, "data": int(image.nbytes),
                                  "compressed_data": None},
        "ratio": None, "voxel_size_A": pixel, "voltage_kV": meta.get("voltage"),
        "C3_mm": meta.get("C3"), "gain": None, "statistics": {"known": False},
        "space_group": None, "nversion": None,
        "extended_header": None, "meta": small,
    }


def format_info(r: dict) -> str:
    """The text `mrcz info` prints for one file."""
    nx, ny, nz = r["dimensions"][:3]
    lines = [f"{r['file']}:",
             f"  format       {r['format']}  (label {r['label'] or '-'})",
             f"  dimensions   {nx} x {ny} x {nz} (x, y, z), {r['layout']}",
             f"  dtype        {np.dtype(r['dtype']).name}" +
             (f" (mode {r['mode']}, {'little' if r['endian'] == 'le' else 'big'}-endian)"
              if r["mode"] is not None else "")]
    sizes = r["bytes"]
    if r["compressor"]:
        level = "level not recorded" if r["clevel"] is None else f"clevel {r['clevel']}"
        lines.append(f"  compression  {r['compressor']} {level}: "
                     f"{_mb(sizes['data'])} -> {_mb(sizes['compressed_data'])}, "
                     f"ratio {r['ratio']:.2f}")
    elif r["ratio"]:
        lines.append(f"  compression  {_mb(sizes['data'])} -> {_mb(sizes['file'])}, "
                     f"ratio {r['ratio']:.2f}")
    else:
        lines.append(f"  size         {_mb(sizes['file'])}")
    voxel = " x ".join("?" if v is None or not np.isfinite(v) else f"{v:.4g}"
                       for v in r["voxel_size_A"]) or "unknown"
    lines.append(f"  voxel size   {voxel} A (x, y, z)")
    if r.get("microscope_recorded", True):
        lines.append(f"  microscope   voltage {_opt(r['voltage_kV'], 'kV')}, "
                     f"C3 {_opt(r['C3_mm'], 'mm')}, gain {_opt(r['gain'], '')}")
    else:
        lines.append("  microscope   not recorded (not an MRCZ file)")
    stats = r["statistics"]
    if stats.get("known"):
        lines.append("  statistics   " + ", ".join(f"{k} {stats[k]:.6g}"
                                                   for k in ("min", "max", "mean", "rms")
                                                   if k in stats))
    lines.append(f"  metadata     {_meta_summary(r['meta'])}")
    return "\n".join(lines)


def _opt(value: Any, unit: str) -> str:
    return "unknown" if value is None else f"{value:g} {unit}".rstrip()


def _meta_summary(meta: dict | None, width: int = 60) -> str:
    if not meta:
        return "none"
    items = []
    for key, value in list(meta.items())[:8]:
        text = json.dumps(value, default=_json_default, ensure_ascii=False)
        items.append(f"{key}={text[:width] + '...' if len(text) > width else text}")
    more = f", ... ({len(meta)} keys)" if len(meta) > 8 else ""
    return f"{len(meta)} key(s): " + ", ".join(items) + more


def cmd_validate(args: argparse.Namespace) -> int:
    """Check files against MRC2014 and the MRCZ layout; exit 1 if any is invalid."""
    from .validate import is_valid, validate_file

    invalid, report = 0, []
    for path in args.files:
        if not os.path.isfile(path):
            print(f"mrcz validate: {path}: no such file", file=sys.stderr)
            invalid += 1
            continue
        try:
            with readable_mrc(path) as plain:
                problems = validate_file(plain, check_data=not args.quick)
        except OSError as err:
            print(f"mrcz validate: {_message(err)}", file=sys.stderr)
            invalid += 1
            continue
        ok = is_valid(problems)
        invalid += not ok
        report.append({"file": path, "valid": ok,
                       "problems": [dataclasses.asdict(p) for p in problems]})
        if not args.json:
            print(f"{path}: {'valid' if ok else 'INVALID'}")
            for problem in problems:
                print(f"  {problem}")
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    return EXIT_FAILED if invalid else EXIT_OK


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Upgrade old MRCZ files (mrcz <= 0.4.1) in a folder; see mrcz.upgrade."""
    from .upgrade import CURRENT, upgrade_folder

    def report(result) -> str | None:
        return result.line() if (result.status != CURRENT or args.verbose) else None

    summary = upgrade_folder(args.folder, recursive=args.recursive,
                             backup_dir=args.backup_dir, dry_run=args.dry_run,
                             report=report)
    print(summary.text(), file=sys.stderr)
    return EXIT_OK if summary.ok else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    """Write a synthetic counted movie as MRC and MRCZ, read both back, print speeds."""
    rng = np.random.default_rng(0)
    movie = rng.poisson(args.dose, size=(args.frames, args.size, args.size)).astype(np.int8)
    mb = movie.nbytes / 1e6
    print(f"synthetic counted movie: {args.frames} frames of {args.size} x {args.size} int8, "
          f"{args.dose} e/pixel/frame, {mb:.1f} MB")
    folder = args.dir or tempfile.mkdtemp(prefix="mrcz-demo-")
    os.makedirs(folder, exist_ok=True)
    try:
        for name, compressor in (("demo.mrc", None), ("demo.mrcz", args.compressor)):
            path = os.path.join(folder, name)
            start = time.perf_counter()
            writeMRC(movie, path, pixelsize=1.0, voltage=300.0, C3=2.7,
                     compressor=compressor, clevel=args.clevel)
            wrote = time.perf_counter() - start
            start = time.perf_counter()
            back, _ = readMRC(path)
            read = time.perf_counter() - start
            if not np.array_equal(back, movie):
                raise CommandError(f"demo: {path} did not read back identically")
            size = os.path.getsize(path)
            print(f"  {name:10s} {compressor or 'plain':6s} {size / 1e6:8.2f} MB  "
                  f"ratio {movie.nbytes / size:6.2f}  write {mb / wrote:8.0f} MB/s  "
                  f"read {mb / read:8.0f} MB/s  (verified)")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    if args.keep or args.dir:
        print(f"files kept in {folder}")
    return EXIT_OK


# ============================================================================= parser

def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _clevel(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"must be 0..9, got {value}")
    return value


def _add_writing(p: argparse.ArgumentParser, compressor: bool, many: bool) -> None:
    if compressor:
        p.add_argument("--compressor", default="zstd",
                       choices=["zstd", "lz4", "lz4hc", "zlib", "blosclz"],
                       help="blosc codec for MRCZ output (default zstd)")
    p.add_argument("--clevel", type=_clevel, default=1,
                   help="compression level 0-9 (default 1)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="frames compressed in parallel per file (default: cores / jobs)")
    p.add_argument("-f", "--force", action="store_true", help="replace existing outputs")
    p.add_argument("--verify", action="store_true",
                   help="re-read every output and compare it with the input")
    if many:
        p.add_argument("-j", "--jobs", type=_positive, default=1,
                       help="files processed at once in a process pool (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per file")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser of the ``mrcz`` command."""
    parser = argparse.ArgumentParser(
        prog=prog or "mrcz",
        description="MRC/MRCZ cryo-EM files: inspect, check, compress, convert, upgrade.")
    parser.add_argument("--version", action="version", version=f"mrcz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="show dimensions, dtype, compression, voxel size, "
                       "microscope values and metadata")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("validate", help="check MRC2014 and MRCZ consistency (exit 1 if "
                       "any file is invalid)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--quick", action="store_true",
                   help="skip reading the data (no statistics check)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("compress", help="compress files to MRCZ")
    p.add_argument("inputs", nargs="+", metavar="IN")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="output file (or folder for several inputs)")
    out.add_argument("--suffix", default=None, help="output suffix (default .mrcz)")
    p.add_argument("--auto-dtype", action="store_true",
                   help="store integral data in the narrowest integer type that holds it")
    _add_writing(p, compressor=True, many=True)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="decompress MRCZ (or gz/bz2/zst) to plain MRC")
    p.add_argument("inputs", nargs="+", metavar="IN")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="output file (or folder for several inputs)")
    out.add_argument("--suffix", default=None, help="output suffix (default .mrc)")
    _add_writing(p, compressor=False, many=True)
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("convert", help="convert MRC/MRCZ/gz/bz2/zst/DM3/DM4 to the format "
                       "the output name says (.mrc, .mrcz, .mrc.gz, .mrc.bz2, .mrc.zst)")
    p.add_argument("input", metavar="IN")
    p.add_argument("output_file", metavar="OUT")
    p.add_argument("--auto-dtype", action="store_true",
                   help="store integral data in the narrowest integer type that holds it")
    _add_writing(p, compressor=True, many=False)
    p.set_defaults(func=cmd_convert, jobs=1)

    p = sub.add_parser("upgrade", help="upgrade a folder of old MRCZ files (mrcz <= 0.4.1) "
                       "in place, originals kept in a backup folder")
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("-r", "--recursive", action="store_true", help="include subfolders")
    p.add_argument("--backup-dir", help="where originals go (default FOLDER/backup)")
    p.add_argument("-n", "--dry-run", action="store_true", help="only list what would change")
    p.add_argument("-v", "--verbose", action="store_true", help="list current files too")
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("demo", help="write and read a synthetic counted movie; print speeds")
    p.add_argument("--frames", type=_positive, default=24)
    p.add_argument("--size", type=_positive, default=1024, help="frame edge in pixels")
    p.add_argument("--dose", type=float, default=1.0, help="electrons per pixel per frame")
    p.add_argument("--compressor", default="zstd",
                   choices=["zstd", "lz4", "lz4hc", "zlib", "blosclz"])
    p.add_argument("--clevel", type=_clevel, default=1)
    p.add_argument("--dir", help="write the files here and keep them")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the ``mrcz`` command; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    name = parser.prog + (f" {args.command}" if args.command else "")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mrcz info --json ... | head`: stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (CommandError, MRCZError, OSError, ValueError) as err:
        print(f"{name}: error: {_message(err)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
