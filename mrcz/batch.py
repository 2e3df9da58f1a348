"""Convert many files, one task per file, on dask.distributed (or in this process).

:func:`convert_files` is the engine behind ``mrcz compress/decompress/convert
--scheduler``. Each file is one task: a :class:`Job` (two paths and the codec
settings, a few hundred bytes) goes to a worker, which reads the input and
writes the output itself (so workers must see the same paths) and sends back a
:class:`Result` (sizes, ratio, SHA-256 of the output, seconds, status). A
``LocalCluster`` on this machine is the default; an address (``tcp://host:8786``)
or a ``distributed.Client`` runs the same tasks on a real cluster.

Resumable: with ``skip_existing`` a job whose output exists and verifies is
not redone; the manifest (CSV or JSON by its name) is rewritten, atomically,
each time a file finishes, so a killed run leaves a manifest of what it
finished. Failures are listed in the results and the manifest, never fatal
to the other files.

dask.distributed is imported only for a cluster run: ``pip install "mrcz[dask]"``.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .fileops import atomic_output, blocks
from .dm import dm_header_for_mrc, open_unless_dm, readDM
from .errors import MRCZError
from .mrc import writeMRC
from .reader import MRCSource
from .stream import MRCZReader, image_of
from .units import ANGSTROM
from .progress import Progress

__all__ = ["Job", "Result", "convert_files", "convert_file", "verify_output", "read_manifest"]

MANIFEST_FIELDS = ("source", "target", "source_bytes", "target_bytes", "ratio", "sha256",
                   "seconds", "status", "error")
_HASH_BLOCK = 4 * 2**20


@dataclasses.dataclass(frozen=True)
class Job:
    """One file to convert. The output's name decides its format: ``.mrcz`` compressed
    with ``compressor`` (blosc), ``.gz``/``.bz2``/``.zst`` a whole-file compressed
    plain MRC, anything else plain MRC."""

    source: str
    target: str
    compressor: str | None = "zstd"
    clevel: int = 1


@dataclasses.dataclass(frozen=True)
class Result:
    """What happened to one job: a row of the manifest. ``status`` is ``'done'``,
    ``'skipped'`` (an existing output verified) or ``'failed'`` (``error`` says why)."""

    source: str
    target: str
    source_bytes: int = 0
    target_bytes: int = 0
    ratio: float = 0.0
    sha256: str = ""
    seconds: float = 0.0
    status: str = "failed"
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"


Converter = Callable[[Job, int], None]
ProgressCallback = Callable[[Result, int, int], None]


# ----------------------------------------------------------------------------- one file

def convert_file(job: Job, n_threads: int = 1) -> None:
    """Convert ``job.source`` (MRC, MRCZ, ``.gz/.bz2/.zst``, DM3/DM4) to ``job.target``.

    The source's header carries over as ``mrcz compress`` carries it (voxel size,
    voltage, C3, gain, JSON metadata and, through :mod:`mrcz.carry`, every field
    the data do not decide), so outputs are byte-identical to the command's. The
    source is opened once; arrays in regular files are read frame by frame while
    the output is written (bounded memory); the output appears only once it is
    complete. ``n_threads``: frames compressed at once.
    """
    compressor = job.compressor if job.target.lower().endswith(".mrcz") else None
    with _open_image(job.source) as (image, kwargs):
        writeMRC(image, job.target, compressor=compressor, clevel=job.clevel,
                 n_threads=n_threads, **kwargs)


@contextlib.contextmanager
def _open_image(source: str) -> Iterator[tuple[Any, dict]]:
    """The image and the writeMRC keywords that keep its header, from one open of
    ``source``: a frame reader of an array in a regular file (open in the block),
    else read whole and closed first (a stream's checksum checked at its end)."""
    raw = open_unless_dm(source)
    if raw is None:
        image, meta = readDM(source, lazy=True)
        yield image, {"pixelunits": ANGSTROM, **dm_header_for_mrc(meta)}
        return
    with MRCSource.wrap(raw, source) as src:
        image, header = image_of(src)
        kwargs = _keywords(src, header)
        if src.fd is not None:  # a regular file: frames are read while the output is written
            yield image, kwargs
            return
    yield image, kwargs  # a stream was read whole: closed (checksum checked) before writing


def _keywords(src: MRCSource, header: dict) -> dict:
    """writeMRC keywords that keep the header of ``src`` (``header``: its header dict)."""
    info, template = src.info, src.template  # the template: the rest of the header
    kwargs: dict = {"pixelsize": header["pixelsize"], "pixelunits": ANGSTROM,
                    "endian": header["endian"], "template": template}
    if info.extended_bytes and info.record["exttyp"] == b"json":
        kwargs["meta"] = src.meta
    if template.holds_microscope_values:  # other writers leave these words undefined
        kwargs.update(voltage=header["voltage"], C3=header["C3"], gain=header["gain"] or None)
    return {key: value for key, value in kwargs.items() if value is not None}


def verify_output(job: Job, sha256: str = "") -> str | None:
    """Why the existing ``job.target`` cannot stand for a finished job (None: it can).

    It must parse, hold as many slices of the same shape as the source, and
    (compressed outputs) every chunk header must be whole and its last frame
    decode; with ``sha256`` (from an earlier manifest) its checksum must match.
    Source and target are opened once each.
    """
    try:
        want = _source_shape(job.source)
        got, digest = _read_back(job.target, bool(sha256))
    except (MRCZError, OSError, ValueError) as err:
        return f"{job.target} does not read back: {err}"
    if want is not None and tuple(want) != tuple(got):
        return f"{job.target} holds shape {tuple(got)}, the source {tuple(want)}"
    if digest != sha256:
        return f"{job.target} does not match the checksum in the manifest"
    return None


def _source_shape(path: str) -> tuple[int, ...] | None:
    """The shape of an MRC/MRCZ source's z-slices (None for a DM file)."""
    raw = open_unless_dm(path)
    if raw is None:
        return None
    with MRCSource.wrap(raw, path) as src:
        return src.info.shape


def _read_back(path: str, hashed: bool) -> tuple[tuple[int, ...], str]:
    """The shape of ``path``'s z-slices, its last slice decoded (a .gz/.bz2/.zst
    stream: its header read), and its SHA-256 if ``hashed`` (else '')."""
    raw = open(path, "rb")
    with MRCSource.wrap(raw, path) as out:
        if out.fd is not None:
            MRCZReader.of_source(out, n_threads=1).read(-1)  # the last slice decodes
        return out.info.shape, _sha256(raw.fileno()) if hashed else ""


def _sha256(fd: int) -> str:
    """SHA-256 of the whole file open as ``fd`` (read by position: no seek)."""
    digest = hashlib.sha256()
    for block in blocks(fd, _HASH_BLOCK):
        digest.update(block)
    return digest.hexdigest()


def run_job(job: Job, convert: Converter = convert_file, n_threads: int = 1,
            skip_existing: bool = False, known_sha256: str = "",
            overwrite: bool = False) -> Result:
    """Run one job where it lands (a worker); never raises for a problem with the file."""
    start = time.perf_counter()
    try:
        if skip_existing and os.path.exists(job.target) \
                and verify_output(job, known_sha256) is None:
            return _result(job, "skipped", time.perf_counter() - start)
        if os.path.exists(job.target) and not (skip_existing or overwrite):
            raise MRCZError(f"{job.target} exists (skip_existing keeps it if it verifies, "
                            "overwrite replaces it)")
        convert(job, n_threads)
        return _result(job, "done", time.perf_counter() - start)
    except Exception as err:  # reported in the manifest; the other files go on
        message = str(err) or type(err).__name__
        return Result(job.source, job.target, seconds=round(time.perf_counter() - start, 4),
                      error=f"{type(err).__name__}: {message}")


def _result(job: Job, status: str, seconds: float) -> Result:
    source_bytes = os.path.getsize(job.source)
    with open(job.target, "rb") as f:
        target_bytes, sha256 = os.fstat(f.fileno()).st_size, _sha256(f.fileno())
    return Result(job.source, job.target, source_bytes, target_bytes,
                  round(source_bytes / max(target_bytes, 1), 4), sha256,
                  round(seconds, 4), status)


# ----------------------------------------------------------------------------- many files

def convert_files(jobs: Iterable[Job], scheduler: Any = "local", skip_existing: bool = False,
                  manifest: str | os.PathLike | None = None, threads_per_worker: int = 1,
                  n_workers: int | None = None, progress: ProgressCallback | None = None,
                  convert: Converter = convert_file, overwrite: bool = False) -> list[Result]:
    """Convert every job, one dask.distributed task per file; return one Result per job.

    Parameters
    ----------
    jobs : the files to convert (:class:`Job`).
    scheduler : ``'local'`` (a ``LocalCluster`` of worker processes, started and
        stopped here), a scheduler address such as ``'tcp://host:8786'``, a
        ``distributed.Client``, or ``None``/``'serial'`` (in this process, no dask).
    skip_existing : keep outputs that exist and verify (:func:`verify_output`,
        with the checksum an existing manifest records); without it an existing
        output is a failure of that job (unless ``overwrite``).
    manifest : CSV (``.csv``) or JSON (any other name) file, rewritten as each job
        finishes; rows of an existing manifest for other files are kept.
    threads_per_worker : threads of each worker, and frames each task compresses
        at once: workers x threads should not exceed the cores.
    n_workers : worker processes of a ``'local'`` cluster (default: cores /
        threads_per_worker).
    progress : called in this process as ``progress(result, done, total)`` after
        each job; default: a progress bar on stderr when it is a terminal.
    convert : the function that converts one job (``convert(job, n_threads)``,
        writing ``job.target`` atomically or raising); it must be importable by
        the workers (a module-level function or a picklable object).
    overwrite : replace existing outputs that ``skip_existing`` does not keep.

    Returns
    -------
    The results in the order of ``jobs``; failed jobs have ``status == 'failed'``.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    threads_per_worker = max(1, int(threads_per_worker))
    book = _Manifest(manifest, jobs)
    total = len(jobs)
    results: dict[int, Result] = {}
    with contextlib.ExitStack() as stack:
        bar = None
        if progress is None:
            bar = stack.enter_context(Progress(total, "mrcz batch"))
        arguments = [(job, convert, threads_per_worker, skip_existing, book.sha256(job),
                      overwrite) for job in jobs]
        outcomes = _run(jobs, arguments, scheduler, threads_per_worker, n_workers, stack)
        for position, result in outcomes:
            results[position] = result
            book.record(result)
            if bar is not None:
                bar.update(item=result.source)
            else:
                progress(result, len(results), total)
    return [results[i] for i in range(total)]


def _run(jobs: Sequence[Job], arguments: list[tuple], scheduler: Any, threads: int,
         n_workers: int | None, stack: contextlib.ExitStack) -> Iterator[tuple[int, Result]]:
    """``(position, result)`` of each job (``run_job(*arguments[position])``) as it finishes."""
    if scheduler in (None, "serial"):
        for position, args in enumerate(arguments):
            yield position, run_job(*args)
        return
    from distributed import as_completed  # the cluster engine is an optional extra

    client = stack.enter_context(_client(scheduler, threads, n_workers))
    futures = {client.submit(run_job, *args, pure=False, key=f"mrcz-convert-{i}-{os.getpid()}"
                             f"-{time.monotonic_ns()}"): i
               for i, args in enumerate(arguments)}
    for future in as_completed(futures):
        position = futures[future]
        try:
            yield position, future.result()
        except Exception as err:  # the worker died or the task could not run
            job = jobs[position]
            yield position, Result(job.source, job.target,
                                   error=f"{type(err).__name__}: {err}")


@contextlib.contextmanager
def _client(scheduler: Any, threads: int, n_workers: int | None) -> Iterator[Any]:
    """A distributed Client for ``scheduler``; clusters started here are stopped here."""
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler == "local":
        workers = n_workers or max(1, (os.cpu_count() or 1) // threads)
        with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    if isinstance(scheduler, str) and "://" in scheduler:
        with Client(scheduler) as client:
            yield client
        return
    raise ValueError(f"scheduler must be 'local', an address such as 'tcp://host:8786', a "
                     f"distributed.Client or None, got {scheduler!r}")


# ----------------------------------------------------------------------------- manifest

def read_manifest(path: str | os.PathLike) -> list[Result]:
    """The rows of a manifest written by :func:`convert_files` (CSV or JSON)."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    rows = list(csv.DictReader(io.StringIO(text))) if _is_csv(path) else json.loads(text)
    types = {f.name: f.type for f in dataclasses.fields(Result)}
    convert = {"int": int, "float": float, "str": str}
    return [Result(**{key: convert[types[key]](value) for key, value in row.items()
                      if key in types}) for row in rows]


def _is_csv(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(".csv")


class _Manifest:
    """The manifest rows by source; rewritten atomically on every :meth:`record`."""

    def __init__(self, path: str | os.PathLike | None, jobs: Sequence[Job]) -> None:
        self.path = path
        self.rows: dict[str, Result] = {}
        if path is not None and os.path.exists(path):
            self.rows = {row.source: row for row in read_manifest(path)}

    def sha256(self, job: Job) -> str:
        """The checksum an earlier run recorded for this job's output ('' if none)."""
        row = self.rows.get(job.source)
        return row.sha256 if row is not None and row.ok and row.target == job.target else ""

    def record(self, result: Result) -> None:
        self.rows[result.source] = result
        if self.path is None:
            return
        rows = [dataclasses.asdict(row) for row in self.rows.values()]
        with atomic_output(self.path) as f:
            text = io.StringIO(newline="")
            if _is_csv(self.path):
                writer = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS)
                writer.writeheader()
                writer.writerows(rows)
            else:
                json.dump(rows, text, indent=1)
            f.write(text.getvalue().encode("utf-8"))
