"""The ``mrcz`` command: info, validate, compress, decompress, convert, upgrade, preview, demo.

Every sub-command takes many files (folders are walked with ``-r``), reports a
failure per file on stderr (never a traceback), prints a summary, and exits 1
when any file failed, 2 on a usage error, 130 when interrupted. ``--json``
prints one shape for every command: a list of per-file records, each with a
``status`` and an ``error``. Outputs are written atomically and never replace
an existing file unless ``--force`` is given.

Each sub-command has one ``add_<name>_parser`` function building its parser;
:data:`COMMANDS` lists them, so a new command is one function and one entry.

Every command opens an input once (:func:`open_source`) and reads all it needs
from that one :class:`mrcz.reader.MRCSource`. Conversions stream:
:func:`open_input` hands writeMRC a lazy frame reader (``mrcz.stream.MRCZReader``
for MRC/MRCZ arrays, a memory map for DM files), so only the frames in flight
are in memory; lists of frames and whole-file gz/bz2/zst inputs (which read
forwards only) are the exceptions. An output is published only after its input
has been read and closed, so a stream whose CRC fails leaves no output.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np

from . import carry, fileops, header as hdr, preview, upgrade, wholefile
from .dm import dm_header_for_mrc, readDM
from .errors import MRCZError
from .mrc import readMRC, writeMRC
from .units import ANGSTROM
from .reader import MRCSource
from .stream import MRCZReader, image_of
from .progress import Progress, human_bytes, human_seconds
from .validate import is_valid, validate_file
from .version import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DM_SUFFIXES = (".dm3", ".dm4")
MRC_SUFFIXES = (".mrcz", ".mrcs", ".mrc", ".map", ".st", ".ali", ".rec")
#: Source dtypes --auto-dtype narrows, and the integer types it tries, narrowest first.
AUTO_FROM = ("float32", "float64", "int16", "uint16", "int32", "uint32")
AUTO_TO = ("int8", "int16", "uint16")
#: Header words this package reads as microscope values, and the JSON metadata key
#: listing those never given (see "Values not recorded" in the specification).
MICROSCOPE_KEYS = ("voltage", "C3", "gain")
NOT_RECORDED_KEY = "not_recorded"
NOT_RECORDED = "not recorded"


class CommandError(Exception):
    """A per-file failure with a message for the user (no traceback)."""


class UsageError(CommandError):
    """The command line asks for something impossible (exit status 2)."""


# ============================================================================= unknown values

def recorded_values(info: hdr.HeaderInfo, header: dict, meta: dict | None) -> dict:
    """``voltage``, ``C3``, ``gain`` and ``pixelsize`` ([z, y, x] Angstrom) as the file
    records them; ``None`` where the value was never given.

    Header words 132-143 are defined only in files labelled MRCZ. Voltage 0 means
    not recorded (no microscope runs at 0 kV); with it, C3 0 and gain 0 or 1 (what
    writers store when nothing is given) are not recorded either. A voxel size of 0
    is not recorded, and so is every name listed in ``meta["not_recorded"]``.
    """
    values: dict[str, Any] = dict.fromkeys(MICROSCOPE_KEYS)
    if info.mrcz_version is not None:
        values = {key: float(header[key]) for key in MICROSCOPE_KEYS}
        if values["gain"] == 0:
            values["gain"] = None
        if values["voltage"] == 0:
            values["voltage"] = None
            if values["C3"] == 0 and values["gain"] in (None, 1.0):
                values["C3"] = values["gain"] = None
    pixel = [float(v) for v in np.asarray(header["pixelsize"], float)]
    values["pixelsize"] = pixel if any(v > 0 for v in pixel) else None
    listed = (meta or {}).get(NOT_RECORDED_KEY, [])
    for key in listed if isinstance(listed, list) else []:
        if key in values:
            values[key] = None
    return values


def writer_keywords(values: dict, meta: dict | None) -> dict:
    """writeMRC keywords that store ``values`` (from :func:`recorded_values`) so that
    they read back the same, "not recorded" included."""
    kwargs: dict[str, Any] = {key: values[key] for key in MICROSCOPE_KEYS
                              if values.get(key) is not None}
    kwargs["pixelsize"] = values["pixelsize"] if values.get("pixelsize") else [0.0] * 3
    missing = [key for key in MICROSCOPE_KEYS if values.get(key) is None]
    meta = {k: v for k, v in (meta or {}).items() if k != NOT_RECORDED_KEY} or None
    if missing and len(missing) < len(MICROSCOPE_KEYS):  # header defaults cannot say it
        meta = {**(meta or {}), NOT_RECORDED_KEY: missing}
    kwargs["meta"] = meta
    return kwargs


# ============================================================================= inputs

@dataclasses.dataclass
class Loaded:
    """An opened input: the image (array, frame reader or list) and the writeMRC
    keywords that keep its header values."""

    image: Any
    kwargs: dict
    kind: str


def is_dm(path: str | os.PathLike) -> bool:
    """True for a Gatan DM3/DM4 file name."""
    return os.fspath(path).lower().endswith(DM_SUFFIXES)


@contextlib.contextmanager
def open_source(path: str | os.PathLike) -> Iterator[tuple[MRCSource, str | None]]:
    """``(source, codec)``: the MRC/MRCZ file ``path``, opened once, its header parsed once.

    ``codec`` names the whole-file stream around it (``'gzip'``, ``'bz2'``,
    ``'zstd'``; None for a regular file). Compressed MRCZ inside such a stream
    (its chunks need random access) is copied from that same open file into a
    temporary plain file, whose source is given instead; messages still name
    ``path``. Leaving the block without an exception once a stream's data has been
    read to its end checks the stream's CRC or checksum (and what follows the data).
    """
    src = MRCSource.wrap(open(path, "rb"), path, refuse_mrcz=False)
    codec = _codec_name(src.file)
    if src.fd is not None or src.info.compressor is None:
        with src:
            yield src, codec
        return
    with src, wholefile.spooled(src.file) as raw, MRCSource(raw, src.name) as copy:
        yield copy, codec


def _codec_name(f: BinaryIO) -> str | None:
    """The whole-file codec of a stream as `mrcz info` shows it (None: a regular file)."""
    if not isinstance(f, wholefile.StreamReader):
        return None
    return "bz2" if f.codec == "bzip2" else f.codec


@contextlib.contextmanager
def open_input(path: str | os.PathLike) -> Iterator[Loaded]:
    """Open an MRC, MRCZ, gz/bz2/zst or DM3/DM4 file with what it says about itself.

    The image is read frame by frame while it is written
    (``mrcz.stream.MRCZReader`` for MRC/MRCZ arrays, a memory map for DM files),
    so memory stays bounded; lists of frames and whole-file streams (which only
    read forwards) are read whole. The input is opened once; leaving the block
    closes it (a stream read to its end checks its CRC there).
    """
    if is_dm(path):
        yield _load_dm(path)
        return
    with open_source(path) as (src, _):
        yield _loaded(src)


def _loaded(src: MRCSource) -> Loaded:
    """The image of ``src`` and the writeMRC keywords keeping its header values."""
    info, meta = src.info, src.meta
    image, header = image_of(src)
    has_meta = info.extended_bytes > 0 and info.record["exttyp"] == b"json"
    template = src.template  # what the output keeps of the rest
    values = recorded_values(info, header, meta)
    if not template.holds_microscope_values:  # another program's bytes 132-151
        values.update(dict.fromkeys(MICROSCOPE_KEYS))
    kwargs = writer_keywords(values, meta if has_meta else None)
    kwargs.update(pixelunits=ANGSTROM, endian=header["endian"], template=template)
    return Loaded(image, kwargs, "MRCZ" if info.compressor else "MRC")


def _load_dm(path: str | os.PathLike) -> Loaded:
    image, meta = readDM(path, lazy=True)
    given = dict(dm_header_for_mrc(meta))
    values = {key: given.get(key) for key in MICROSCOPE_KEYS}
    values["pixelsize"] = given.get("pixelsize")
    kwargs = writer_keywords(values, given.get("meta"))
    kwargs["pixelunits"] = ANGSTROM
    return Loaded(image, kwargs, "DM")


# ============================================================================= outputs

def is_mrcz_output(path: str | os.PathLike) -> bool:
    """True when the output name asks for compressed MRCZ (``.mrcz``); ``.gz``, ``.bz2``
    and ``.zst`` names get a whole-file compressed plain MRC from writeMRC."""
    return os.fspath(path).lower().endswith(".mrcz")


def save_output(image: Any, out: str | os.PathLike, kwargs: dict, compressor: str | None,
                clevel: int, threads: int | None, shuffle: str | None = "bit") -> None:
    """Write ``image`` to ``out`` (plain, MRCZ, or plain inside gz/bz2/zst), atomically."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: writeMRC's default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writeMRC(image, out, compressor=compressor, clevel=clevel, n_threads=threads,
                 shuffle=shuffle, **kwargs)  # .gz/.bz2/.zst names: a whole-file stream


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

#: What happened to one file (``status`` of a record).
DONE, SKIPPED, FAILED, INTERRUPTED, NOT_STARTED = (
    "done", "skipped", "failed", "interrupted", "not started")


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
    skip_existing: bool = False
    shuffle: str | None = "bit"


@dataclasses.dataclass
class Outcome:
    """What happened to one file; :meth:`record` is its ``--json`` form."""

    source: str
    target: str
    status: str
    error: str | None = None
    in_bytes: int = 0
    out_bytes: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (DONE, SKIPPED)

    def record(self) -> dict:
        ratio = round(self.in_bytes / self.out_bytes, 3) if self.out_bytes else None
        return {"file": self.source, "output": self.target, "status": self.status,
                "error": self.error, "bytes_in": self.in_bytes, "bytes_out": self.out_bytes,
                "ratio": ratio, "seconds": round(self.seconds, 3), "note": self.note or None}

    def line(self) -> str:
        """One line for people."""
        if self.status == SKIPPED:
            return f"{self.source}: skipped, {self.target} exists and reads back"
        if not self.ok:
            return self.error or f"{self.source}: {self.status}"
        parts = [f"{self.source} -> {self.target}",
                 f"{human_bytes(self.in_bytes)} -> {human_bytes(self.out_bytes)}",
                 f"{self.seconds:.2f} s"]
        return ", ".join(parts + ([self.note] if self.note else []))


def run_task(task: Task, report: Any = None) -> Outcome:
    """Convert one file; never raises for file problems.

    ``report(source, done_bytes, total_bytes)`` is called as frames are written.
    """
    try:
        return _convert(task, report or _REPORTER)
    except (CommandError, MRCZError, OSError, ValueError, TypeError, IndexError) as err:
        return Outcome(task.source, task.target, FAILED, _message(err))


def _message(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError) and err.filename:
        return f"{err.filename}: no such file"
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    return str(err) or type(err).__name__


def reads_back(path: str) -> bool:
    """True when ``path`` is an MRC/MRCZ file whose header, frame index and last
    frame read without error (what ``--skip-existing`` asks of an output)."""
    try:
        with open_source(path) as (src, _):
            reader = MRCZReader.of_source(src, n_threads=1)  # closed with src
            if len(reader):
                reader[len(reader) - 1]
    except (MRCZError, OSError, ValueError, IndexError):
        return False
    return True


def _convert(task: Task, report: Any) -> Outcome:
    if not os.path.isfile(task.source):
        raise CommandError(f"{task.source}: no such file")
    if os.path.abspath(task.source) == os.path.abspath(task.target):
        raise CommandError(f"{task.source}: the output would be the input itself "
                           "(name another output with -o)")
    if os.path.exists(task.target) and not task.force:
        if task.skip_existing and reads_back(task.target):
            return Outcome(task.source, task.target, SKIPPED,
                           out_bytes=os.path.getsize(task.target))
        hint = " and does not read back" if task.skip_existing else ""
        raise CommandError(f"{task.target} exists{hint} (use --force to replace it)")
    start = time.perf_counter()
    # the input is closed (a stream's CRC checked) before the output is published
    with _staged(task.target, task.force) as temp, open_input(task.source) as loaded:
        if report is not None:
            loaded.image = _counted(loaded.image, task.source, report)
        note = _write_checked(task, loaded, temp)
    seconds = time.perf_counter() - start
    notes = [note if " stored as " in note else f"auto-dtype {note}"] if note else []
    notes += ["verified"] if task.verify else []
    return Outcome(task.source, task.target, DONE, None, os.path.getsize(task.source),
                   os.path.getsize(task.target), seconds, ", ".join(notes))


class CountedFrames:
    """A 3-D image that reports the bytes of every z-slice handed out."""

    def __init__(self, image: Any, name: str, report: Any) -> None:
        self.image, self.name, self.report = image, name, report
        self.shape, self.dtype = tuple(image.shape), np.dtype(image.dtype)
        self.total = int(np.prod(self.shape)) * self.dtype.itemsize
        self.served = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        frame = np.asarray(self.image[index])
        self.served = min(self.served + frame.nbytes, self.total)
        self.report(self.name, self.served, self.total)
        return frame


def _counted(image: Any, name: str, report: Any) -> Any:
    if isinstance(image, list) or len(getattr(image, "shape", ())) != 3:
        return image
    return CountedFrames(image, name, report)


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
                    task.clevel, task.threads, task.shuffle)
        if task.verify:
            verify_output(temp, image, kwargs)
    except (CommandError, MRCZError, ValueError, TypeError) as err:
        message = _message(err).replace(temp, task.target)
        message = message.removeprefix(f"{task.target}: ")
        raise CommandError(f"{task.source} -> {task.target}: {message}") from None
    return note


def _temp_name(target: str) -> str:
    folder, base = os.path.split(os.path.abspath(target))
    return os.path.join(folder, f".{os.getpid()}-{time.monotonic_ns()}.{base}")


def remove_partial_outputs(target: str) -> list[str]:
    """Remove the temporary files a stopped conversion to ``target`` left; returns them."""
    folder, base = os.path.split(os.path.abspath(target))
    pattern = re.compile(r"\.+\d+-\d+\." + re.escape(base) + r"(\.[0-9a-f]+\.partial)?")
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if pattern.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed.append(name)
    return removed


@contextlib.contextmanager
def _staged(target: str, force: bool) -> Iterator[str]:
    """A hidden temporary name beside ``target`` (same suffix) that becomes ``target``
    only if the body succeeds; without ``force`` an existing file is never replaced."""
    temp = _temp_name(target)
    try:
        yield temp
        if force:
            os.replace(temp, target)
        elif not upgrade.publish_no_clobber(temp, target):  # a file that appeared meanwhile stays
            raise CommandError(f"{target} exists (use --force to replace it)")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


# ============================================================================= running

_REPORTER: Any = None  # in a worker process: sends progress to the parent


class _QueueReporter:
    """Progress from a worker process, at most a few messages a second per file."""

    def __init__(self, queue: Any) -> None:
        self.queue, self.last = queue, 0.0

    def __call__(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= 0.2 or done >= total:
            self.last = now
            self.queue.put((name, done, total))


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(EXIT_INTERRUPTED)  # unwinds, so temporary outputs are removed


def _worker_init(queue: Any) -> None:
    """Workers leave Ctrl-C to the parent and clean up when it terminates them."""
    global _REPORTER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    queue.cancel_join_thread()
    _REPORTER = _QueueReporter(queue)


class Jobs:
    """Run tasks one by one, or ``jobs`` at a time in worker processes.

    Leaving the ``with`` block by an exception (Ctrl-C) terminates the workers
    at once; they remove their temporary files as they stop.
    """

    def __init__(self, tasks: Sequence[Task], jobs: int, bar: Progress) -> None:
        self.tasks, self.bar = list(tasks), bar
        self.jobs = min(jobs, len(self.tasks))
        self.pool = self.queue = None

    def __enter__(self) -> Jobs:
        if self.jobs > 1:
            # forkserver/spawn: a forked child would inherit the codec pool without its threads
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn")
            self.queue = context.Queue()
            self.pool = context.Pool(self.jobs, _worker_init, (self.queue,))
        return self

    def outcomes(self) -> Iterator[Outcome]:
        """Outcomes in the order the files finish."""
        if self.pool is None:
            for task in self.tasks:
                yield run_task(task, self.bar.partial)
            return
        pending = self.pool.imap_unordered(run_task, self.tasks)
        for _ in self.tasks:
            while True:
                self._drain()
                try:
                    yield pending.next(timeout=0.2)
                    break
                except multiprocessing.TimeoutError:
                    continue

    def _drain(self) -> None:
        with contextlib.suppress(Exception):
            while not self.queue.empty():
                self.bar.partial(*self.queue.get_nowait())

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is None:
            return
        if exc_type is None:
            self.pool.close()
        else:
            self.pool.terminate()
        self.pool.join()


def _exit_now(signum: int, frame: Any) -> None:
    os.write(2, b"\nmrcz: interrupted again, exiting now\n")
    os._exit(EXIT_INTERRUPTED)


def run_tasks(tasks: Sequence[Task], jobs: int, label: str, args: argparse.Namespace) -> int:
    """Run tasks; print failures, progress and a summary; exit status (130: Ctrl-C)."""
    quiet, as_json = getattr(args, "quiet", False), getattr(args, "json", False)
    outcomes: dict[str, Outcome] = {}
    sizes = sum(_size(t.source) for t in tasks)
    start = time.perf_counter()
    interrupted = False
    with Progress(len(tasks), label, enabled=False if quiet else None,
                  total_bytes=sizes) as bar:
        try:
            with Jobs(tasks, jobs, bar) as runner:
                for outcome in runner.outcomes():
                    outcomes[outcome.source] = outcome
                    if not outcome.ok:
                        bar.write(f"mrcz {label}: {outcome.error}", sys.stderr)
                    elif args.verbose or outcome.status == SKIPPED:
                        bar.write(outcome.line(), sys.stderr if as_json else sys.stdout)
                    bar.update(item=outcome.source, in_bytes=outcome.in_bytes,
                               out_bytes=outcome.out_bytes)
        except KeyboardInterrupt:
            previous = signal.signal(signal.SIGINT, _exit_now)  # a second Ctrl-C exits now
            interrupted = True
    records = []
    for task in tasks:
        outcome = outcomes.get(task.source)
        if outcome is None:
            status = INTERRUPTED if interrupted and task.source in bar.in_flight else NOT_STARTED
            remove_partial_outputs(task.target)
            outcome = Outcome(task.source, task.target, status,
                              f"{task.source}: {status} (Ctrl-C)")
        records.append(outcome)
    if as_json:
        print_json([o.record() for o in records])
    if interrupted:
        _report_interrupted(label, records)
        signal.signal(signal.SIGINT, previous)  # clean-up done: Ctrl-C as before
    elif not quiet:
        print(summary_line(label, records, time.perf_counter() - start), file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(o.ok for o in records) else EXIT_FAILED


def _report_interrupted(label: str, records: list[Outcome]) -> None:
    finished = [o for o in records if o.ok]
    stopped = [o for o in records if o.status in (INTERRUPTED, NOT_STARTED)]
    lines = [f"mrcz {label}: interrupted: {len(finished)} finished, {len(stopped)} not "
             "(no partial output left)"]
    lines += [f"  finished:    {o.target}" for o in finished]
    lines += [f"  {o.status + ':':12s} {o.source}" for o in stopped]
    print("\n".join(lines), file=sys.stderr)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def summary_line(label: str, records: Sequence[Outcome], seconds: float) -> str:
    """Counts, sizes, ratio, speed and wall time of a run."""
    counts = {status: sum(o.status == status for o in records)
              for status in (DONE, SKIPPED, FAILED)}
    done = [o for o in records if o.status == DONE]
    text = (f"mrcz {label}: {counts[DONE]} done, {counts[SKIPPED]} skipped, "
            f"{counts[FAILED]} failed")
    total_in, total_out = sum(o.in_bytes for o in done), sum(o.out_bytes for o in done)
    if done and total_out:
        text += (f"; {human_bytes(total_in)} -> {human_bytes(total_out)}"
                 f" (ratio {total_in / total_out:.2f}), "
                 f"{total_in / 1e6 / max(seconds, 1e-9):.1f} MB/s")
    return text + f", {human_seconds(seconds)} wall time"


def print_json(records: list[dict]) -> None:
    """The ``--json`` document of every command: a list of per-file records."""
    json.dump(records, sys.stdout, indent=1, default=_json_default)
    print()
    sys.stdout.flush()


# ============================================================================= inputs and outputs

#: Output names this package writes, and the whole-file suffixes a plain name may carry.
PLAIN_OUTPUTS = (".mrc", ".mrcs", ".map", ".st", ".ali", ".rec")
COMPRESSED_OUTPUT = ".mrcz"


def check_output_name(path: str, wants: str) -> None:
    """Refuse an output name this package cannot write in the format ``wants``
    (``'compressed'``, ``'plain'`` or ``'any'``); raises :class:`UsageError`."""
    lowered = os.path.basename(path).lower()
    whole = next((s for s in wholefile.SUFFIXES if lowered.endswith(s)), "")
    inner = lowered[: len(lowered) - len(whole)]
    plain_name = inner.endswith(PLAIN_OUTPUTS)
    mrcz_name = inner.endswith(COMPRESSED_OUTPUT) and not whole
    allowed = ".mrc, .mrcs, .map, .mrcz, .mrc.gz, .mrc.bz2 or .mrc.zst"
    if not (plain_name or mrcz_name):
        raise UsageError(f"{path}: cannot write this kind of file; name the output {allowed}")
    if wants == "compressed" and plain_name and not whole:
        raise UsageError(f"{path}: a plain MRC name; `compress` writes .mrcz (or .mrc.gz, "
                         ".mrc.bz2, .mrc.zst); for plain MRC use `decompress` or `convert`")
    if wants == "plain" and not plain_name or wants == "plain" and whole:
        raise UsageError(f"{path}: `decompress` writes plain MRC (.mrc, .mrcs, .map); "
                         "use `convert` for other formats")


def _readable_suffixes(plain_only: bool) -> tuple[str, ...]:
    names = tuple(s for s in MRC_SUFFIXES if s != COMPRESSED_OUTPUT)
    names = names + DM_SUFFIXES if plain_only else names + (COMPRESSED_OUTPUT,)
    return tuple(n + w for n in names for w in ("", *wholefile.SUFFIXES))


#: What a walked folder yields for each command unless --ext says otherwise.
DEFAULT_INPUTS = {"compress": _readable_suffixes(True),
                  "decompress": (COMPRESSED_OUTPUT,
                                 *(n + w for n in MRC_SUFFIXES for w in wholefile.SUFFIXES)),
                  "convert": _readable_suffixes(True) + (COMPRESSED_OUTPUT,)}


def expand_inputs(paths: Sequence[str], recursive: bool,
                  suffixes: Sequence[str]) -> list[tuple[str, str]]:
    """``(file, name relative to its folder argument)`` for files and walked folders.

    A folder yields its files whose names end with one of ``suffixes`` (hidden
    files never), subfolders too with ``recursive``; a file (or a missing path,
    reported later) is taken as given.
    """
    lowered = tuple(s.lower() for s in suffixes)
    found: list[tuple[str, str]] = []
    for path in paths:
        if not os.path.isdir(path):
            found.append((path, os.path.basename(path)))
            continue
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")) \
                if recursive else []
            for name in sorted(names):
                if not name.startswith(".") and name.lower().endswith(lowered):
                    full = os.path.join(folder, name)
                    found.append((full, os.path.relpath(full, path)))
    return found


def _target(source: str, relative: str, args: argparse.Namespace, suffix: str,
            many: bool) -> str:
    """Output path: -o OUT (a file, or a folder for many inputs) or IN with a new suffix."""
    out = getattr(args, "output", None)
    if out and (many or os.path.isdir(out)):
        target = os.path.join(out, _with_suffix(relative, suffix))
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        return target
    if out:
        return out
    return _with_suffix(source, getattr(args, "suffix", None) or suffix)


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


def _two_positionals_hint(args: argparse.Namespace, command: str) -> None:
    """`mrcz compress a.mrc b.mrcz` names an output as an input: say how to do that."""
    if len(args.inputs) == 2 and not os.path.exists(args.inputs[1]) \
            and os.path.isfile(args.inputs[0]) and not getattr(args, "output", None):
        raise UsageError(f"{args.inputs[1]} does not exist; to name the output, use -o: "
                         f"mrcz {command} {args.inputs[0]} -o {args.inputs[1]}")


# ============================================================================= compress etc.

def cmd_compress(args: argparse.Namespace) -> int:
    """Compress MRC (or any readable input) to MRCZ."""
    return _run_conversions(args, args.compressor, COMPRESSED_OUTPUT, "compress", "compressed")


def cmd_decompress(args: argparse.Namespace) -> int:
    """Decompress MRCZ (or gz/bz2/zst) to plain MRC."""
    return _run_conversions(args, None, ".mrc", "decompress", "plain")


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert one file; the output format follows the output name."""
    args.inputs, args.output, args.suffix = [args.input], args.output_file, None
    return _run_conversions(args, args.compressor, "", "convert", "any")


def _run_conversions(args: argparse.Namespace, compressor: str | None, suffix: str,
                     label: str, wants: str) -> int:
    _two_positionals_hint(args, label)
    suffixes = args.ext or DEFAULT_INPUTS[label]
    inputs = expand_inputs(args.inputs, getattr(args, "recursive", False), suffixes)
    if not inputs:
        raise UsageError(f"no input files (folders take files ending {', '.join(suffixes)}; "
                         "choose others with --ext)")
    many = len(inputs) > 1 or any(os.path.isdir(p) for p in args.inputs)
    out = getattr(args, "output", None)
    if out and many and not os.path.isdir(out):
        if os.path.exists(out) or out.lower().endswith((*_readable_suffixes(False), ".mrcz")):
            raise UsageError(f"-o {out}: with several inputs -o must be a folder")
        os.makedirs(out)
    jobs = getattr(args, "jobs", 1)
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, jobs))
    tasks = []
    for source, relative in inputs:
        target = _target(source, relative, args, suffix, many)
        check_output_name(target, wants)
        tasks.append(Task(source, target, compressor, args.clevel, threads, args.force,
                          args.verify, getattr(args, "auto_dtype", False),
                          args.skip_existing,
                          SHUFFLE_CHOICES[getattr(args, "shuffle", "bit")]))
    if getattr(args, "scheduler", None):
        return run_on_scheduler(tasks, args, label)
    return run_tasks(tasks, jobs, label, args)


def run_on_scheduler(tasks: Sequence[Task], args: argparse.Namespace, label: str) -> int:
    """Run the conversions as one dask.distributed task per file (``--scheduler``)."""
    if args.verify or getattr(args, "auto_dtype", False) or \
            getattr(args, "shuffle", "bit") != "bit":
        raise UsageError("--scheduler converts with the default settings; --verify, "
                         "--auto-dtype and --shuffle run without it")
    from . import batch  # dask.distributed is imported there only for a cluster run

    jobs = [batch.Job(t.source, t.target, t.compressor, t.clevel) for t in tasks]
    local = args.scheduler == "local"
    start = time.perf_counter()
    try:
        results = batch.convert_files(
            jobs, scheduler=args.scheduler, skip_existing=args.skip_existing,
            overwrite=args.force, manifest=args.manifest, threads_per_worker=1,
            n_workers=args.jobs if local and args.jobs > 1 else None,
            progress=(lambda *_: None) if args.quiet or args.json else None)
    except ImportError as err:
        raise CommandError(f'--scheduler needs dask.distributed ({err}): '
                           'pip install "mrcz[dask]"') from None
    records = [{"file": r.source, "output": r.target, "status": r.status,
                "error": r.error or None, "bytes_in": r.source_bytes,
                "bytes_out": r.target_bytes, "seconds": round(r.seconds, 3)}
               for r in results]
    counts = {status: sum(r.status == status for r in results)
              for status in ("done", "skipped", "failed")}
    if args.json:
        print_json(records)
    for record in records:
        if record["error"]:
            print(f"mrcz {label}: {record['file']}: {record['error']}", file=sys.stderr)
    if not args.quiet:
        print(f"mrcz {label}: {counts['done']} done, {counts['skipped']} skipped, "
              f"{counts['failed']} failed on {args.scheduler}, "
              f"{time.perf_counter() - start:.1f} s wall time", file=sys.stderr)
    return EXIT_FAILED if counts["failed"] else EXIT_OK


# ============================================================================= info

def cmd_info(args: argparse.Namespace) -> int:
    """Print what files hold (text, or JSON with --json)."""
    records, failed = [], 0
    inputs = expand_inputs(args.files, args.recursive, args.ext or DEFAULT_INPUTS["convert"])
    for path, _ in inputs:
        try:
            record = describe_file(path, header=args.header, frames=args.frames)
        except (CommandError, MRCZError, OSError, ValueError, IndexError) as err:
            failed += 1
            print(f"mrcz info: {_message(err)}", file=sys.stderr)
            records.append({"file": path, "status": FAILED, "error": _message(err)})
            continue
        records.append(record)
        if not args.json:
            print(format_info(record))
    if args.json:
        print_json(records)
    return EXIT_FAILED if failed else EXIT_OK


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def describe_file(path: str | os.PathLike, header: bool = False,
                  frames: bool = False) -> dict:
    """A JSON-ready description of an MRC/MRCZ/gz/bz2/zst/DM3/DM4 file.

    With ``header`` it holds every header and extended-header field, with
    ``frames`` per-frame statistics (and for MRCZ each frame's chunk size and ratio).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    if is_dm(path):
        return _describe_dm(path, frames)
    with open_source(path) as (src, codec):
        info, meta = src.info, src.meta
        extended = src.extended_head(_EXTENDED_SHOWN) if header else b""
        head, slices = src.header_dict(ANGSTROM), src.slices()
        chunk_bytes = int(head["packedBytes"]) if info.compressor else None
        per_frame = _frame_table(src) if frames else None
    nz, ny, nx = info.shape
    raw_bytes = hdr.stored_nbytes(info)
    file_bytes = os.path.getsize(path)
    if info.compressor and not chunk_bytes:  # packedBytes not recorded by the writer
        chunk_bytes = file_bytes - info.data_offset if not codec else None
    stored = chunk_bytes if chunk_bytes else (file_bytes if codec else None)
    rec = info.record
    values = recorded_values(info, head, meta)
    record = {
        "file": path, "status": "ok", "error": None,
        "format": ("MRCZ" if info.compressor else "MRC") + (f" in {codec}" if codec else ""),
        "label": bytes(rec["label"][0]).rstrip(b"\0 ").decode("latin-1"),
        "dimensions": [nx, ny, nz], "dtype": head["dtype"],
        "mode": info.mode, "endian": head["endian"],
        "layout": _layout(slices, nz),
        "compressor": info.compressor, "clevel": head.get("clevel"),
        "bytes": {"file": file_bytes, "data": raw_bytes, "compressed_data": stored},
        "ratio": round(raw_bytes / stored, 3) if stored else None,
        "voxel_size_A": None if values["pixelsize"] is None
        else _float32_plain([float(v) for v in values["pixelsize"][::-1]]),
        "voltage_kV": _float32_plain(values["voltage"]), "C3_mm": _float32_plain(values["C3"]),
        "gain": _float32_plain(values["gain"]),
        "origin_A": _float32_plain([float(v) for v in rec["origin"]]),
        "start": [int(rec[k]) for k in ("nxstart", "nystart", "nzstart")],
        "axis_order": [int(rec[k]) for k in ("mapc", "mapr", "maps")],
        "cell_angles": _float32_plain([float(v) for v in rec["cellb"]]),
        "statistics": _stats(rec),
        "space_group": int(rec["ispg"]), "nversion": int(rec["nversion"]),
        "extended_header": {"bytes": info.extended_bytes,
                            "type": bytes(rec["exttyp"]).decode("latin-1")},
        "meta": meta,
    }
    if header:
        record["header"] = header_fields(rec)
        record["extended_header"]["fields"] = extended_fields(extended, rec, meta)
    if frames:
        record["frames"] = per_frame
    return record


#: At most this much of an extended header is shown by ``info --header``.
_EXTENDED_SHOWN = 2**20


def header_fields(rec: np.void) -> list[dict]:
    """Every field of the 1024-byte header in file order: name, byte offset, value."""
    fields = []
    for name in hdr.HEADER_DTYPE.names:
        offset = hdr.HEADER_DTYPE.fields[name][1]
        value = rec[name]
        if name == "label":
            value = [bytes(v).rstrip(b"\0 ").decode("latin-1") for v in value]
        elif isinstance(value, bytes):
            value = value.decode("latin-1")
        elif hdr.HEADER_DTYPE.fields[name][0].subdtype is None \
                and hdr.HEADER_DTYPE.fields[name][0].kind == "V":
            raw = bytes(value)
            value = "zero" if not any(raw) else raw.hex(" ")
        else:
            value = _float32_plain(np.asarray(value).tolist())
        fields.append({"name": name, "offset": offset, "value": value})
    return fields


def _float32_plain(value: Any) -> Any:
    """Floats read from float32 words with the digits float32 holds (2.7, not 2.70000005)."""
    if isinstance(value, list):
        return [_float32_plain(v) for v in value]
    return float(f"{value:.7g}") if isinstance(value, float) else value


def extended_fields(raw: bytes, rec: np.void, meta: dict | None) -> list[dict]:
    """The extended header as fields: JSON keys, 80-character text records, or hex rows."""
    kind = bytes(rec["exttyp"]).decode("latin-1")
    if kind == "json" and meta:
        return [{"name": key, "value": value} for key, value in meta.items()]
    if raw and all(32 <= b < 127 or b in (0, 10) for b in raw):
        text = raw.decode("latin-1")
        return [{"name": f"record {i}", "value": text[s:s + 80].rstrip("\0 ")}
                for i, s in enumerate(range(0, len(text), 80))]
    return [{"name": f"bytes {s}-{s + len(raw[s:s + 16]) - 1}", "value": raw[s:s + 16].hex(" ")}
            for s in range(0, len(raw), 16)]


def _frame_table(src: MRCSource) -> list[dict]:
    """Per z-slice statistics; for MRCZ the compressed size and ratio of each chunk."""
    info = src.info
    frame_bytes = hdr.stored_nbytes(info) // max(info.shape[0], 1)
    chunks = src.chunk_table().chunks if info.compressor else None
    table = []
    for index, frame in enumerate(MRCZReader.of_source(src, n_threads=1)):  # closed with src
        row = _frame_stats(index, frame)
        if chunks is not None:
            row.update(compressed_bytes=chunks[index][1],
                       ratio=round(frame_bytes / chunks[index][1], 3))
        table.append(row)
    return table


def _frame_stats(index: int, frame: np.ndarray) -> dict:
    data = np.abs(frame) if np.iscomplexobj(frame) else frame
    data = data.astype(np.float64)
    return {"frame": index, "min": float(data.min()), "max": float(data.max()),
            "mean": float(data.mean()), "std": float(data.std())}


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
    return {k: _float32_plain(v) for k, v in out.items()}


def _describe_dm(path: str, frames: bool) -> dict:
    image, meta = readDM(path, lazy=True)
    shape = list(image.shape)
    dims = shape[::-1] + [1] * max(0, 3 - len(shape))
    size = os.path.getsize(path)
    pixel = [float(v) if np.isfinite(v) else None  # None: axis not calibrated as a length
             for v in np.asarray(meta.get("pixelsize", []), float)][::-1]
    small = {k: v for k, v in meta.items() if k not in ("tags", "image_tags", "axes")}
    record = {
        "file": path, "status": "ok", "error": None, "format": f"DM{meta.get('version', '')}",
        "label": meta.get("title", ""), "dimensions": dims[:max(3, len(dims))],
        "dtype": np.dtype(image.dtype).str, "mode": None, "endian": None,
        "layout": f"{meta.get('frame_count') or 1} frame(s)", "compressor": None,
        "clevel": None, "bytes": {"file": size, "data": int(image.nbytes),
                                  "compressed_data": None},
        "ratio": None, "voxel_size_A": pixel if any(v for v in pixel) else None,
        "voltage_kV": meta.get("voltage"), "C3_mm": meta.get("C3"),
        "gain": dm_header_for_mrc(meta).get("gain"), "statistics": {"known": False},
        "space_group": None, "nversion": None,
        "extended_header": None, "meta": small,
    }
    if frames:
        record["frames"] = [_frame_stats(i, f) for i, f in enumerate(frames_of(image))]
    return record


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
                     f"{human_bytes(sizes['data'])} -> {human_bytes(sizes['compressed_data'])}"
                     f", ratio {r['ratio']:.2f}")
    elif r["ratio"]:
        lines.append(f"  compression  {human_bytes(sizes['data'])} -> "
                     f"{human_bytes(sizes['file'])}, ratio {r['ratio']:.2f}")
    else:
        lines.append(f"  size         {human_bytes(sizes['file'])}")
    voxel = NOT_RECORDED if not r["voxel_size_A"] else " x ".join(
        "?" if v is None else f"{v:.4g}" for v in r["voxel_size_A"]) + " A (x, y, z)"
    lines.append(f"  voxel size   {voxel}")
    lines.append(f"  microscope   voltage {_opt(r['voltage_kV'], 'kV')}, "
                 f"C3 {_opt(r['C3_mm'], 'mm')}, gain {_opt(r['gain'], '')}")
    if "origin_A" in r:
        lines.append(f"  origin       {' '.join(f'{v:g}' for v in r['origin_A'])} A; start "
                     f"{' '.join(map(str, r['start']))}; axes (c, r, s) "
                     f"{' '.join(map(str, r['axis_order']))}; cell angles "
                     f"{' '.join(f'{v:g}' for v in r['cell_angles'])}")
    stats = r["statistics"]
    lines.append("  statistics   " + (", ".join(
        f"{k} {stats[k]:.6g}" for k in ("min", "max", "mean", "rms") if k in stats)
        if stats.get("known") else "not recorded in the header"))
    lines.append(f"  metadata     {_meta_summary(r['meta'])}")
    if "header" in r:
        lines.append("  header fields (name, byte offset, value):")
        lines += [f"    {f['name']:13s} {f['offset']:4d}  {_field_text(f['value'])}"
                  for f in r["header"]]
        ext = r["extended_header"]
        lines.append(f"  extended header: {ext['bytes']} bytes, type {ext['type']!r}"
                     + ("" if ext["fields"] else ", empty"))
        lines += [f"    {f['name']}: {_field_text(f['value'])}" for f in ext["fields"]]
    if "frames" in r:
        lines.append(_frames_text(r["frames"]))
    return "\n".join(lines)


def _field_text(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], str):
        return " | ".join(v for v in value if v) or "(empty)"
    if isinstance(value, (dict, list)) or value is None:
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    return str(value)


def _frames_text(rows: list[dict]) -> str:
    compressed = rows and "compressed_bytes" in rows[0]
    head = f"  {'frame':>7s} {'min':>11s} {'max':>11s} {'mean':>11s} {'std':>11s}"
    head += f" {'chunk':>11s} {'ratio':>7s}" if compressed else ""
    lines = [head]
    for row in rows:
        line = (f"  {row['frame']:7d} {row['min']:11.5g} {row['max']:11.5g} "
                f"{row['mean']:11.5g} {row['std']:11.5g}")
        if compressed:
            line += f" {human_bytes(row['compressed_bytes']):>11s} {row['ratio']:7.2f}"
        lines.append(line)
    return "\n".join(lines)


def _opt(value: Any, unit: str) -> str:
    return NOT_RECORDED if value is None else f"{value:g} {unit}".rstrip()


def _meta_summary(meta: dict | None, width: int = 60) -> str:
    if not meta:
        return "none"
    items = []
    for key, value in list(meta.items())[:8]:
        text = json.dumps(value, default=_json_default, ensure_ascii=False)
        items.append(f"{key}={text[:width] + '...' if len(text) > width else text}")
    more = f", ... ({len(meta)} keys)" if len(meta) > 8 else ""
    return f"{len(meta)} key(s): " + ", ".join(items) + more


# ============================================================================= validate, upgrade

def cmd_validate(args: argparse.Namespace) -> int:
    """Check files against MRC2014 and the MRCZ layout; exit 1 if any is invalid."""
    invalid, report = 0, []
    for path, _ in expand_inputs(args.files, args.recursive,
                                 args.ext or DEFAULT_INPUTS["decompress"] + PLAIN_OUTPUTS):
        problems, error = [], None
        if not os.path.isfile(path):
            error = f"{path}: no such file"
        else:
            try:
                with open(path, "rb") as raw:
                    problems = validate_file(raw, check_data=not args.quick,
                                             deep=getattr(args, "deep", False), name=path)
            except OSError as err:
                error = _message(err)
        ok = error is None and is_valid(problems)
        invalid += not ok
        status = FAILED if error else ("valid" if ok else "invalid")
        report.append({"file": path, "status": status, "error": error, "valid": ok,
                       "problems": [dataclasses.asdict(p) for p in problems]})
        if error:
            print(f"mrcz validate: {error}", file=sys.stderr)
        elif not args.json:
            print(f"{path}: {'valid' if ok else 'INVALID'}")
            for problem in problems:
                print(f"  {problem}")
    if args.json:
        print_json(report)
    return EXIT_FAILED if invalid else EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    """Add frame indexes to the MRCZ files of a folder; see mrcz.upgrade.index_folder."""
    results = upgrade.index_folder(args.folder, recursive=args.recursive,
                                   backup_dir=args.backup_dir, dry_run=args.dry_run)
    for result in results:
        print(result.line())
    return EXIT_FAILED if any(r.status == upgrade.FAILED for r in results) else EXIT_OK


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Upgrade old MRCZ files (mrcz <= 0.4.1), given as files or folders; see mrcz.upgrade."""
    results, texts = [], []

    def report(result) -> str | None:
        results.append(result)
        if args.json or args.quiet:
            return None
        return result.line() if (result.status != upgrade.CURRENT or args.verbose) else None

    for path in args.paths:
        if os.path.isdir(path):
            summary = upgrade.upgrade_folder(path, recursive=args.recursive,
                                             backup_dir=args.backup_dir, dry_run=args.dry_run,
                                             report=report,
                                             progress=False if args.quiet or args.json else None)
            texts.append(f"{path}: {summary.text()}")
            continue
        if not os.path.isfile(path):
            raise CommandError(f"{path}: no such file or folder")
        folder = os.path.dirname(os.path.abspath(path))
        backup = os.path.join(args.backup_dir or os.path.join(folder, "backup"),
                              os.path.basename(path))
        line = report(upgrade.upgrade_file(path, backup, dry_run=args.dry_run))
        if line:
            print(line)
    if args.json:
        print_json([{"file": os.fspath(r.path), "status": r.status,
                     "error": r.detail if r.status == upgrade.FAILED else None,
                     "detail": r.detail or None} for r in results])
    elif not args.quiet:
        counts = {s: sum(r.status == s for r in results) for s in {r.status for r in results}}
        texts.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no files")
        print("mrcz upgrade: " + "; ".join(texts), file=sys.stderr)
    return EXIT_FAILED if any(r.status == upgrade.FAILED for r in results) else EXIT_OK


# ============================================================================= preview

def cmd_preview(args: argparse.Namespace) -> int:
    """Write a PNG of a frame (or the sum, or a power spectrum) above its histogram."""
    if not args.output.lower().endswith(".png"):
        raise UsageError(f"{args.output}: preview writes PNG; name the output .png")
    record = {"file": args.input, "output": args.output, "status": DONE, "error": None}
    try:
        frame = _picture_frame(args)
        picture = preview.preview_array(frame, args.size)
        with contextlib.ExitStack() as stack:
            temp = _temp_name(args.output)
            stack.callback(lambda: os.path.exists(temp) and os.unlink(temp))
            record["size"] = list(preview.save_png(picture, temp, preview.value_range(frame)))
            os.replace(temp, args.output)
    except (CommandError, MRCZError, OSError, ValueError, IndexError) as err:
        record.update(status=FAILED, error=_message(err))
        print(f"mrcz preview: {record['error']}", file=sys.stderr)
    if args.json:
        print_json([record])
    elif record["status"] == DONE and not args.quiet:
        width, height = record["size"]
        print(f"{args.input} -> {args.output} ({width} x {height} px)")
    return EXIT_OK if record["status"] == DONE else EXIT_FAILED


def _picture_frame(args: argparse.Namespace) -> np.ndarray:
    """The 2-D array preview draws: frame ``--frame``, the sum, or its power spectrum."""
    if not os.path.isfile(args.input):
        raise CommandError(f"{args.input}: no such file")
    with open_input(args.input) as loaded:
        image = loaded.image
        count = len(image) if isinstance(image, list) or len(image.shape) == 3 else 1
        if args.sum:
            frame = sum((np.asarray(f, np.float64) for f in _slices(frames_of(image))),
                        0.0)
        else:
            if not -count <= args.frame < count:
                raise CommandError(f"{args.input}: frame {args.frame} does not exist "
                                   f"(it has {count})")
            frame = np.asarray(image[args.frame] if count > 1 or isinstance(image, list)
                               else image)
            frame = frame[frame.shape[0] // 2] if frame.ndim == 3 else frame
    return preview.power_spectrum(frame) if args.fft else frame


# ============================================================================= demo

def cmd_demo(args: argparse.Namespace) -> int:
    """Write a synthetic counted movie as MRC and MRCZ, read both back, print speeds."""
    rng = np.random.default_rng(0)
    movie = rng.poisson(args.dose, size=(args.frames, args.size, args.size)).astype(np.int8)
    mb = movie.nbytes / 1e6
    load_before = os.getloadavg()[0]
    if not args.json:
        print(f"synthetic counted movie: {args.frames} frames of {args.size} x {args.size} "
              f"int8, {args.dose} e/pixel/frame, {mb:.1f} MB; 1 warm-up run, "
              f"median of {args.runs} timed runs")
    folder = args.dir or tempfile.mkdtemp(prefix="mrcz-demo-")
    os.makedirs(folder, exist_ok=True)
    records = []
    try:
        for name, compressor in (("demo.mrc", None), ("demo.mrcz", args.compressor)):
            path = os.path.join(folder, name)
            writes, reads = [], []
            for run in range(args.runs + 1):  # run 0 warms caches and thread pools up
                wrote, read = _timed_round_trip(movie, path, compressor, args.clevel)
                if run:
                    writes.append(wrote)
                    reads.append(read)
            size = os.path.getsize(path)
            record = {"file": name, "status": "ok", "error": None,
                      "compressor": compressor, "bytes": size,
                      "ratio": round(movie.nbytes / size, 3),
                      "write_MBps": round(mb / statistics.median(writes), 1),
                      "read_MBps": round(mb / statistics.median(reads), 1),
                      "runs": args.runs, "verified": True}
            records.append(record)
            if not args.json:
                print(f"  {name:10s} {compressor or 'plain':6s} {size / 1e6:8.2f} MB  "
                      f"ratio {record['ratio']:6.2f}  write {record['write_MBps']:7.0f} MB/s  "
                      f"read {record['read_MBps']:7.0f} MB/s  (verified)")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    note = (f"machine: {os.cpu_count()} cores, load average {load_before:.2f} before and "
            f"{os.getloadavg()[0]:.2f} after; other busy programs lower these numbers")
    if args.json:
        print_json([{**r, "machine": note} for r in records])
    else:
        print(note)
        if args.keep or args.dir:
            print(f"files kept in {folder}")
    return EXIT_OK


def _timed_round_trip(movie: np.ndarray, path: str, compressor: str | None,
                      clevel: int) -> tuple[float, float]:
    """Seconds to write ``movie`` to ``path`` and to read it back (checked)."""
    start = time.perf_counter()
    writeMRC(movie, path, pixelsize=1.0, voltage=300.0, C3=2.7, compressor=compressor,
             clevel=clevel)
    wrote = time.perf_counter() - start
    start = time.perf_counter()
    back, _ = readMRC(path)
    read = time.perf_counter() - start
    if not np.array_equal(back, movie):
        raise CommandError(f"demo: {path} did not read back identically")
    return wrote, read


# ============================================================================= parser

class Parser(argparse.ArgumentParser):
    """argparse with the hint to ``--help`` on a usage error (exit status 2)."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n"
                              f"(see `{self.prog} --help`)\n")


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


CODECS = ["zstd", "lz4", "lz4hc", "zlib", "blosclz"]


def _add_json_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print a JSON list with one record (status, error, ...) per file")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress and no summary; only errors")


def _add_walking(p: argparse.ArgumentParser) -> None:
    p.add_argument("-r", "--recursive", action="store_true",
                   help="walk subfolders of folder arguments too")
    p.add_argument("--ext", action="append", metavar="SUFFIX",
                   help="with folders: take files ending SUFFIX (repeatable; "
                        "e.g. --ext .mrcs --ext .dm4)")


#: ``--shuffle`` choices -> writeMRC's ``shuffle=``.
SHUFFLE_CHOICES = {"bit": "bit", "byte": "byte", "none": None, "auto": "auto"}


def _add_writing(p: argparse.ArgumentParser, compressor: bool, many: bool) -> None:
    if compressor:
        p.add_argument("--compressor", default="zstd", choices=CODECS,
                       help="blosc codec for .mrcz output (default zstd)")
        p.add_argument("--shuffle", default="bit", choices=list(SHUFFLE_CHOICES),
                       help="blosc filter for MRCZ output: bit (default, counted data), "
                       "byte (gain-corrected float data), none, or auto (from the first frame)")
        p.add_argument("--clevel", type=_clevel, default=1,
                       help="compression level 0-9: higher is smaller and slower (default 1)")
    else:
        p.set_defaults(clevel=1)
    p.add_argument("--threads", type=_positive, default=None,
                   help="frames compressed in parallel per file (default: cores / jobs)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("-f", "--force", action="store_true", help="replace existing outputs")
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave outputs that exist and read back; report them as skipped")
    p.add_argument("--verify", action="store_true",
                   help="re-read every output and compare it with the input")
    if many:
        p.add_argument("-j", "--jobs", type=_positive, default=1,
                       help="files processed at once in worker processes (default 1)")
        p.add_argument("--scheduler", metavar="ADDRESS",
                       help="one dask.distributed task per file: 'local' (a LocalCluster "
                            "of -j workers) or a scheduler address such as "
                            "tcp://host:8786 (needs the 'dask' extra)")
        p.add_argument("--manifest", metavar="FILE",
                       help="with --scheduler: a CSV (.csv) or JSON manifest of every file, "
                            "written as files finish")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per file")
    _add_json_quiet(p)


def add_info_parser(sub: Any) -> None:
    p = sub.add_parser("info", help="show dimensions, dtype, compression, voxel size, "
                       "microscope values and metadata")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="MRC, MRCZ, .gz/.bz2/.zst or DM3/DM4 files, or folders")
    p.add_argument("--header", action="store_true",
                   help="also every header and extended-header field")
    p.add_argument("--frames", action="store_true",
                   help="also per-frame statistics (and chunk size and ratio for MRCZ)")
    _add_walking(p)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list with one record (status, error, ...) per file")
    p.set_defaults(func=cmd_info)


def add_validate_parser(sub: Any) -> None:
    p = sub.add_parser("validate", help="check MRC2014 and MRCZ consistency (exit 1 if "
                       "any file is invalid)")
    p.add_argument("files", nargs="+", metavar="FILE", help="files or folders to check")
    p.add_argument("--quick", action="store_true",
                   help="skip reading the data (no statistics check)")
    p.add_argument("--deep", action="store_true",
                   help="also decode every frame (`mrcz verify` does the same)")
    _add_checking(p)
    p.set_defaults(func=cmd_validate)


def add_verify_parser(sub: Any) -> None:
    p = sub.add_parser("verify", help="validate --deep: decode and check every frame and "
                       "each file's checksums (exit 1 if any is invalid)")
    p.add_argument("files", nargs="+", metavar="FILE", help="files or folders to check")
    _add_checking(p)
    p.set_defaults(func=cmd_validate, deep=True, quick=False)


def _add_checking(p: argparse.ArgumentParser) -> None:
    """Folder walking and --json, shared by validate and verify."""
    _add_walking(p)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list with one record (status, error, ...) per file")


def add_index_parser(sub: Any) -> None:
    p = sub.add_parser("index", help="add a frame index (per-frame checksums) to the MRCZ "
                       "files of a folder that have none, originals kept in a backup folder")
    p.add_argument("folder", metavar="FOLDER", help="the folder of MRCZ files")
    p.add_argument("-r", "--recursive", action="store_true", help="include subfolders")
    p.add_argument("--backup-dir", help="where originals go (default FOLDER/backup)")
    p.add_argument("-n", "--dry-run", action="store_true", help="only list what would change")
    p.set_defaults(func=cmd_index)


def add_compress_parser(sub: Any) -> None:
    p = sub.add_parser("compress", help="compress files (or folders of them) to MRCZ")
    p.add_argument("inputs", nargs="+", metavar="IN",
                   help="MRC, .gz/.bz2/.zst or DM3/DM4 files, or folders of them")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="output file, or a folder for several inputs")
    out.add_argument("--suffix", default=None, help="output suffix (default .mrcz)")
    p.add_argument("--auto-dtype", action="store_true",
                   help="store integral data in the narrowest integer type that holds it")
    _add_walking(p)
    _add_writing(p, compressor=True, many=True)
    p.set_defaults(func=cmd_compress)


def add_decompress_parser(sub: Any) -> None:
    p = sub.add_parser("decompress", help="decompress MRCZ (or .gz/.bz2/.zst) to plain MRC")
    p.add_argument("inputs", nargs="+", metavar="IN",
                   help="MRCZ or .gz/.bz2/.zst files, or folders of them")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="output file, or a folder for several inputs")
    out.add_argument("--suffix", default=None, help="output suffix (default .mrc)")
    _add_walking(p)
    _add_writing(p, compressor=False, many=True)
    p.set_defaults(func=cmd_decompress)


def add_convert_parser(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert MRC/MRCZ/gz/bz2/zst/DM3/DM4 to the format "
                       "the output name says (.mrc, .mrcz, .mrc.gz, .mrc.bz2, .mrc.zst)")
    p.add_argument("input", metavar="IN", help="the file to convert")
    p.add_argument("output_file", metavar="OUT",
                   help="the output; its name picks the format")
    p.add_argument("--auto-dtype", action="store_true",
                   help="store integral data in the narrowest integer type that holds it")
    _add_writing(p, compressor=True, many=False)
    p.set_defaults(func=cmd_convert, jobs=1, ext=None, recursive=False)


def add_upgrade_parser(sub: Any) -> None:
    p = sub.add_parser("upgrade", help="upgrade old MRCZ files (mrcz <= 0.4.1) in place, "
                       "originals kept in a backup folder")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to upgrade")
    p.add_argument("-r", "--recursive", action="store_true", help="include subfolders")
    p.add_argument("--backup-dir", help="where originals go (default: backup/ beside them)")
    p.add_argument("-n", "--dry-run", action="store_true", help="only list what would change")
    p.add_argument("-v", "--verbose", action="store_true", help="list current files too")
    _add_json_quiet(p)
    p.set_defaults(func=cmd_upgrade)


def add_preview_parser(sub: Any) -> None:
    p = sub.add_parser("preview", help="draw a frame (or the sum, or its power spectrum) "
                       "and a histogram into a PNG (needs the 'imaging' extra)")
    p.add_argument("input", metavar="FILE", help="an MRC, MRCZ or DM3/DM4 file")
    p.add_argument("-o", "--output", required=True, help="the PNG to write")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--frame", type=int, default=0,
                      help="which frame (z-slice) to draw (default 0; negative counts "
                           "from the end; the middle slice of a 3-D frame)")
    what.add_argument("--sum", action="store_true", help="draw the sum of all frames")
    p.add_argument("--fft", action="store_true",
                   help="draw the power spectrum (log |FFT|^2) instead")
    p.add_argument("--size", type=_positive, default=512,
                   help="longest side of the picture in pixels (default 512)")
    _add_json_quiet(p)
    p.set_defaults(func=cmd_preview)


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="write and read a synthetic counted movie; print speeds")
    p.add_argument("--frames", type=_positive, default=24,
                   help="frames in the synthetic movie (default 24)")
    p.add_argument("--size", type=_positive, default=1024,
                   help="frame edge in pixels (default 1024)")
    p.add_argument("--dose", type=float, default=1.0,
                   help="electrons per pixel per frame (default 1.0)")
    p.add_argument("--compressor", default="zstd", choices=CODECS,
                   help="blosc codec for the MRCZ file (default zstd)")
    p.add_argument("--clevel", type=_clevel, default=1,
                   help="compression level 0-9 (default 1)")
    p.add_argument("--runs", type=_positive, default=3,
                   help="timed runs after the warm-up; the median is shown (default 3)")
    p.add_argument("--dir", help="write the files here and keep them")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list with one record per file written")
    p.set_defaults(func=cmd_demo)


#: Every sub-command: its name and the function adding its parser.
def cmd_clean(args: argparse.Namespace) -> int:
    """Remove (or with -n list) the temporary files of dead mrcz writers in FOLDER."""
    for path in fileops.clean_folder(args.folder, dry_run=args.dry_run):
        print(path)
    return EXIT_OK


def add_clean_parser(sub: Any) -> None:
    p = sub.add_parser("clean", help="remove temporary files that killed mrcz writers left "
                       "in FOLDER (those of running writers stay)")
    p.add_argument("folder", metavar="FOLDER", help="the folder to clean")
    p.add_argument("-n", "--dry-run", action="store_true", help="only list what would go")
    p.set_defaults(func=cmd_clean)


COMMANDS = [("info", add_info_parser), ("validate", add_validate_parser),
            ("verify", add_verify_parser), ("index", add_index_parser),
            ("compress", add_compress_parser), ("decompress", add_decompress_parser),
            ("convert", add_convert_parser), ("upgrade", add_upgrade_parser),
            ("preview", add_preview_parser), ("demo", add_demo_parser),
            ("clean", add_clean_parser)]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser of the ``mrcz`` command."""
    parser = Parser(prog=prog or "mrcz",
                    description="MRC/MRCZ cryo-EM files: inspect, check, compress, convert, "
                                "upgrade, preview.")
    parser.add_argument("--version", action="version", version=f"mrcz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=Parser)
    for _, add_parser in COMMANDS:
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the ``mrcz`` command; returns the exit status (0 ok, 1 failure, 2 usage,
    130 interrupted)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    name = parser.prog + (f" {args.command}" if args.command else "")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `mrcz info --json ... | head`: stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except UsageError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, MRCZError, OSError, ValueError) as err:
        print(f"{name}: error: {_message(err)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
