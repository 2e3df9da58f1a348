"""Background reads and writes on a shared thread pool, returning futures.

An acquisition program hands a movie to :func:`asyncWriteMRC` and goes straight
back to the detector. What it may rely on:

- **Same bytes.** A background write produces exactly the file that the same
  ``writeMRC`` call would produce on its own, whatever else runs at the same
  time (other async jobs, ``writeMRC`` in user threads, any codec, level or
  ``n_threads``).
- **Errors arrive with their own type.** ``future.result()`` re-raises what the
  job raised (a missing folder or a full disk is an ``OSError``). Failures no
  one looked at are raised by :func:`flushAsync` and logged at exit.
- **No half-written files.** Every write goes to a temporary file beside the
  target that replaces it only when complete; a failed, cancelled or killed
  write leaves the previous file as it was. (``idx=k`` into an existing file
  writes in place, as ``writeMRC`` documents.)
- **Order per file.** Jobs on the same path run in the order they were
  submitted (write then read gives what was written; the last write wins).
  Jobs on different paths run side by side and may finish in any order.
- **Bounded memory, if asked.** :func:`setAsyncLimits` caps the bytes and the
  number of writes waiting; the next ``asyncWriteMRC`` then blocks (or raises
  :class:`AsyncQueueFull`) until earlier writes finish.
- **Nothing lost at exit.** When the interpreter exits, it first waits for
  every pending job. A Ctrl-C during that wait only says what is pending; a
  second one abandons the unfinished writes (listed on stderr, their temporary
  files removed, earlier versions unchanged) and exits with status 130. A job
  that failed with no one looking at its future is reported on stderr, naming
  its file, and the exit status becomes 1 (by ``os._exit`` after the other exit
  handlers; those registered before ``mrcz.futures`` was imported are skipped).
- **The array is not copied** (as in mrcz 0.6): do not modify it until its
  future is done, or pass ``copy=True``.

``await awrite_mrc(...)``, ``await aread_mrc(...)`` and ``await aread_dm4(...)``
do the same from asyncio code without blocking the event loop.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import concurrent.futures as cf
import inspect
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

import numpy as np

from . import fileops
from .mrc import readMRC, writeMRC

logger = logging.getLogger("mrcz")

#: Background jobs that run at once (see :func:`set_async_workers`). Measured on the
#: 2-core machine (12 writes of 8x2048x2048 int8 counted movies submitted at once,
#: median of 11 runs, MiB/s for 1/2/3/4 workers): zstd clevel 1 734/971/790/946;
#: zstd with n_threads=1 697/623/738/757; plain MRC 661/1959/2000/1945. Each job
#: already compresses its frames on the shared codec pool (one thread per core),
#: so a second job mostly overlaps one job's disk writes and bookkeeping with
#: another's compression; beyond two, throughput stays flat while the time to the
#: first finished file doubles (0.05 s with 1 worker, 0.07 s with 2, 0.10 s with 4)
#: and more half-written files are open at once.
DEFAULT_WORKERS = 2

_WRITE_SIGNATURE = inspect.signature(writeMRC)


class AsyncQueueFull(queue.Full, RuntimeError):
    """:func:`setAsyncLimits` left no room for another background write."""


class AsyncStatus(NamedTuple):
    """What :func:`asyncStatus` reports."""

    jobs: int
    writes: int
    write_bytes: int
    workers: int


class _TrackedFuture(cf.Future):
    """A Future that remembers whether its outcome was ever looked at."""

    _observed = False
    #: The file the job reads or writes, for messages (None if unknown).
    label: str | None = None
    #: True for writes.
    writes = False

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        finally:
            self._observed = self._observed or self.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        finally:
            self._observed = self._observed or self.done()


def _failure(future: cf.Future) -> BaseException | None:
    """The exception a finished future holds, without marking it as looked at."""
    if future.cancelled():
        return None
    return cf.Future.exception(future)


# ----------------------------------------------------------------------------- limits

class _Ticket:
    """A place in the queue of callers waiting for room."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.event = asyncio.Event() if loop is not None else None

    def poke(self) -> None:
        if self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # the loop is closed: no one is waiting any more
            pass


class _Limiter:
    """Counts the writes (and their bytes) admitted and not yet finished.

    Callers waiting for room are served first come, first served. A write larger
    than the byte limit is admitted alone, when nothing else is pending.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: collections.deque[_Ticket] = collections.deque()
        self.max_bytes: int | None = None
        self.max_writes: int | None = None
        self.block = True
        self.timeout: float | None = None
        self.writes = 0
        self.bytes = 0

    def configure(self, max_bytes: int | None, max_writes: int | None, block: bool,
                  timeout: float | None) -> None:
        with self._cond:
            self.max_bytes, self.max_writes = max_bytes, max_writes
            self.block, self.timeout = block, timeout
            self._wake()

    def _room(self, nbytes: int) -> bool:
        if self.writes == 0:
            return True
        if self.max_writes is not None and self.writes >= self.max_writes:
            return False
        return self.max_bytes is None or self.bytes + nbytes <= self.max_bytes

    def _admit_now(self, ticket: _Ticket | None, nbytes: int) -> bool:
        first = self._waiting[0] is ticket if ticket else not self._waiting
        if first and self._room(nbytes):
            self.writes += 1
            self.bytes += nbytes
            return True
        return False

    def _full(self, nbytes: int, why: str) -> AsyncQueueFull:
        return AsyncQueueFull(
            f"no room for a {nbytes}-byte background write ({why}): {self.writes} writes "
            f"holding {self.bytes} bytes are pending (limits: max_pending_bytes="
            f"{self.max_bytes}, max_pending_writes={self.max_writes})")

    def try_acquire(self, nbytes: int) -> bool:
        """Admit a write of ``nbytes`` if there is room now and no one waits before it."""
        with self._cond:
            return self._admit_now(None, nbytes)

    def acquire(self, nbytes: int, may_wait: bool) -> None:
        """Admit a write of ``nbytes``, waiting for room if the limits say so."""
        with self._cond:
            if self._admit_now(None, nbytes):
                return
            if not self.block:
                raise self._full(nbytes, "setAsyncLimits(block=False)")
            if not may_wait:
                raise self._full(nbytes, "waiting inside an mrcz async job or callback "
                                         "would deadlock")
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            ticket = _Ticket()
            self._waiting.append(ticket)
            try:
                while not self._admit_now(ticket, nbytes):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise self._full(nbytes, f"waited {self.timeout} s")
                    self._cond.wait(remaining)
            finally:
                self._waiting.remove(ticket)
                self._wake()

    async def acquire_async(self, nbytes: int) -> None:
        """:meth:`acquire` for coroutines: waits without blocking the event loop."""
        with self._cond:
            if self._admit_now(None, nbytes):
                return
            if not self.block:
                raise self._full(nbytes, "setAsyncLimits(block=False)")
            timeout = self.timeout
            ticket = _Ticket(asyncio.get_running_loop())
            self._waiting.append(ticket)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                with self._cond:
                    if self._admit_now(ticket, nbytes):
                        return
                    ticket.event.clear()
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    await asyncio.wait_for(ticket.event.wait(), remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    raise self._full(nbytes, f"waited {timeout} s") from None
        finally:
            with self._cond:
                self._waiting.remove(ticket)
                self._wake()

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.writes -= 1
            self.bytes -= nbytes
            self._wake()

    def _wake(self) -> None:
        self._cond.notify_all()
        for ticket in self._waiting:
            ticket.poke()


# ----------------------------------------------------------------------------- scheduling

_Call = Callable[[], Any]


class _Scheduler:
    """Runs jobs on the executor: per-path order, a worker cap, failure bookkeeping."""

    def __init__(self, executor: cf.ThreadPoolExecutor, workers: int) -> None:
        self.executor = executor
        self.workers = workers
        self._gate = threading.Condition()
        self._running = 0
        self._lock = threading.Lock()
        self._chains: dict[str, collections.deque] = {}
        self.pending: set[_TrackedFuture] = set()
        self.failed: list[_TrackedFuture] = []
        self._local = threading.local()

    def in_job(self) -> bool:
        """True in a worker thread running a job (or its done-callbacks)."""
        return getattr(self._local, "active", False)

    def set_workers(self, workers: int) -> None:
        with self._gate:
            self.workers = workers
            self.executor._max_workers = max(self.executor._max_workers, workers)
            self._gate.notify_all()

    def submit(self, call: _Call, key: str | None,
               on_done: Callable[[], None] | None = None, label: str | None = None,
               writes: bool = False) -> _TrackedFuture:
        future = _TrackedFuture()
        future.label, future.writes = label, writes
        with self._lock:
            self.pending.add(future)
        future.add_done_callback(lambda f: self._finished(f, on_done))
        with self._lock:
            chain = self._chains.get(key) if key is not None else None
            if chain is not None:
                chain.append((future, call, key))
                return future
            if key is not None:
                self._chains[key] = collections.deque()
        self._dispatch(future, call, key)
        return future

    def _finished(self, future: _TrackedFuture, on_done: Callable[[], None] | None) -> None:
        if on_done is not None:
            on_done()
        with self._lock:
            self.pending.discard(future)
            if _failure(future) is not None:
                self.failed.append(future)

    def _dispatch(self, future: _TrackedFuture, call: _Call, key: str | None) -> None:
        try:
            self.executor.submit(self._run, future, call, key)
        except RuntimeError as err:
            if not getattr(self.executor, "closed_by_caller", True):  # interpreter exit:
                # the pool takes no more work, so the job runs in this thread
                self._run(future, call, key)
                return
            if future.set_running_or_notify_cancel():  # the caller shut the executor down
                future.set_exception(err)
            self._next(key)

    def _run(self, future: _TrackedFuture, call: _Call, key: str | None) -> None:
        with self._gate:
            while self._running >= self.workers:
                self._gate.wait()
            self._running += 1
        self._local.active = True
        try:
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as err:  # noqa: B036  (handed to the caller)
                    future.set_exception(err)
                else:
                    future.set_result(result)
        finally:
            self._local.active = False
            with self._gate:
                self._running -= 1
                self._gate.notify()
            self._next(key)

    def _next(self, key: str | None) -> None:
        """Start the next job waiting on ``key``, if any."""
        if key is None:
            return
        with self._lock:
            chain = self._chains[key]
            if not chain:
                del self._chains[key]
                return
            future, call, key = chain.popleft()
        self._dispatch(future, call, key)

    def wait(self, timeout: float | None) -> None:
        """Wait for every job pending now; TimeoutError if some are still pending."""
        with self._lock:
            snapshot = list(self.pending)
        _, left = cf.wait(snapshot, timeout)
        if left:
            raise TimeoutError(f"{len(left)} mrcz background jobs still pending after "
                               f"{timeout} s")

    def wait_all(self) -> None:
        """Wait until no job is pending, including jobs submitted meanwhile."""
        while True:
            with self._lock:
                pending = list(self.pending)
            if not pending:
                return
            cf.wait(pending)

    def pending_writes(self) -> list[str]:
        """Names of the files that pending write jobs write."""
        with self._lock:
            return sorted({f.label or "?" for f in self.pending if f.writes})

    def take_unobserved_failures(self) -> list[_TrackedFuture]:
        with self._lock:
            failed, self.failed = self.failed, []
        return [f for f in failed if not f._observed]


class _AsyncExecutor(cf.ThreadPoolExecutor):
    """A ThreadPoolExecutor that really starts ``max_workers`` threads when work comes.

    The base class skips starting a thread while its count of idle threads is
    positive, and that count overstates after bursts of jobs; then raising
    ``_max_workers`` (as :func:`set_async_workers` does) would add no thread.
    """

    closed_by_caller = False

    def _adjust_thread_count(self) -> None:
        if len(self._threads) < self._max_workers:
            while self._idle_semaphore.acquire(blocking=False):
                pass
        super()._adjust_thread_count()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ThreadPoolExecutor's; ``wait=True`` also waits for jobs queued behind
        earlier jobs on the same path (they reach the executor only then)."""
        self.closed_by_caller = True
        if wait and not cancel_futures:
            _SCHEDULER.wait_all()
        super().shutdown(wait, cancel_futures=cancel_futures)


#: The pool every background job runs on (the original's ``_asyncExecutor``).
async_executor = _AsyncExecutor(max_workers=DEFAULT_WORKERS, thread_name_prefix="mrcz-async")
_asyncExecutor = async_executor
_SCHEDULER = _Scheduler(async_executor, DEFAULT_WORKERS)
_LIMITER = _Limiter()


# ----------------------------------------------------------------------------- helpers

def _path_key(path: Any) -> str | None:
    """A key that is the same for every spelling of one file path."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    try:
        return os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError, OSError):
        return None


def _image_nbytes(image: Any) -> int:
    """Bytes the image holds in memory (0 when that cannot be known cheaply)."""
    if isinstance(image, (list, tuple)):
        return sum(_image_nbytes(frame) for frame in image)
    nbytes = getattr(image, "nbytes", None)
    if isinstance(nbytes, (int, np.integer)):
        return int(nbytes)
    try:
        return int(np.prod(image.shape)) * np.dtype(image.dtype).itemsize
    except (AttributeError, TypeError, ValueError):
        return 0


def _snapshot(image: Any) -> Any:
    """A private copy of the image (lists of frames are copied frame by frame)."""
    if isinstance(image, (list, tuple)):
        return [_snapshot(frame) for frame in image]
    if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        return np.array(image, copy=True)
    return np.stack([np.asarray(image[z]) for z in range(image.shape[0])])


def _bind_write(args: tuple, kwargs: dict) -> inspect.BoundArguments | None:
    try:
        return _WRITE_SIGNATURE.bind(*args, **kwargs)
    except TypeError:
        return None  # writeMRC raises the TypeError through the future


def _label(path: Any) -> str | None:
    """A printable name of a file argument, for messages."""
    if isinstance(path, (str, bytes, os.PathLike)):
        try:
            return os.fsdecode(path)
        except (TypeError, ValueError):
            return None
    return None


def _failed_future(err: BaseException, label: str | None) -> _TrackedFuture:
    future = _TrackedFuture()
    future.label, future.writes = label, True
    future.set_running_or_notify_cancel()
    future.set_exception(err)
    with _SCHEDULER._lock:
        _SCHEDULER.failed.append(future)
    return future


def _write_call(bound: inspect.BoundArguments | None, args: tuple, kwargs: dict,
                copy: bool) -> tuple[_Call, str | None]:
    """``(call, path key)`` for one writeMRC job, copying the image if asked."""
    if bound is None:
        return (lambda: writeMRC(*args, **kwargs)), None
    if copy:
        bound.arguments["input_image"] = _snapshot(bound.arguments["input_image"])
    call_args, call_kwargs = bound.args, bound.kwargs
    return (lambda: writeMRC(*call_args, **call_kwargs)), _path_key(
        bound.arguments["MRCfilename"])


def _submit_write(args: tuple, kwargs: dict, copy: bool, acquired: int | None) -> cf.Future:
    """Queue one write; ``acquired`` is the byte count the limiter already admitted.

    Room is taken before any copy is made, so a blocked caller holds no extra copy.
    """
    bound = _bind_write(args, kwargs)
    nbytes = _image_nbytes(bound.arguments["input_image"]) if bound else 0
    label = _label(bound.arguments["MRCfilename"]) if bound else None
    if acquired is None:
        _LIMITER.acquire(nbytes, may_wait=not _SCHEDULER.in_job())
    else:
        nbytes = acquired
    try:
        call, key = _write_call(bound, args, kwargs, copy)
    except Exception as err:  # e.g. MemoryError while copying: report it like a job error
        _LIMITER.release(nbytes)
        return _failed_future(err, label)
    return _SCHEDULER.submit(call, key, on_done=lambda: _LIMITER.release(nbytes),
                             label=label, writes=True)


def _first_arg(args: tuple, kwargs: dict, name: str) -> Any:
    return args[0] if args else kwargs.get(name)


# ----------------------------------------------------------------------------- public API

def set_async_workers(N_workers: int) -> None:
    """Set how many background jobs run at once (default :data:`DEFAULT_WORKERS`).

    Takes effect at once, also when lowering the number: jobs beyond the new
    limit wait for a running one to finish.
    """
    if int(N_workers) <= 0:
        raise ValueError("N_workers must be greater than 0")
    _SCHEDULER.set_workers(int(N_workers))


def asyncReadMRC(*args: Any, **kwargs: Any) -> cf.Future:
    """``readMRC`` in the background; ``future.result()`` gives ``(image, header)``.

    Takes the arguments of :func:`mrcz.readMRC`. A read runs after every
    background job submitted earlier for the same path.
    """
    path = _first_arg(args, kwargs, "MRCfilename")
    return _SCHEDULER.submit(lambda: readMRC(*args, **kwargs), _path_key(path),
                             label=_label(path))


def asyncWriteMRC(*args: Any, copy: bool = False, **kwargs: Any) -> cf.Future:
    """``writeMRC`` in the background; ``future.result()`` waits and re-raises errors.

    Takes the arguments of :func:`mrcz.writeMRC`. The image is not copied (as in
    mrcz 0.6): the caller must not modify it until the future is done, or the
    file may hold a mix of old and new values. ``copy=True`` writes a private
    copy instead (twice the memory, and a copy's time, in the caller's thread).

    Blocks, or raises :class:`AsyncQueueFull`, when :func:`setAsyncLimits` says
    there is no room. The file appears under its name only when complete.
    """
    return _submit_write(args, kwargs, copy, None)


def asyncReadDM4(*args: Any, **kwargs: Any) -> cf.Future:
    """``readDM4`` in the background; ``future.result()`` gives the ``readDM4`` object."""
    from .dm import readDM4

    path = _first_arg(args, kwargs, "filename")
    return _SCHEDULER.submit(lambda: readDM4(*args, **kwargs), _path_key(path),
                             label=_label(path))


def setAsyncLimits(*, max_pending_bytes: int | None = None,
                   max_pending_writes: int | None = None, block: bool = True,
                   timeout: float | None = None) -> None:
    """Bound the memory that background writes may hold (call with no arguments to lift).

    Parameters
    ----------
    max_pending_bytes : total in-memory size of the images of the writes queued or
        running (``None``: no limit). A single larger image is admitted alone.
    max_pending_writes : number of writes queued or running (``None``: no limit).
    block : when a limit is reached, the next ``asyncWriteMRC`` waits for room
        (``True``) or raises :class:`AsyncQueueFull` at once (``False``).
    timeout : longest wait in seconds before :class:`AsyncQueueFull` (``None``:
        wait as long as it takes).

    Reads are not limited. Waiting callers are admitted first come, first served.
    """
    for name, value in (("max_pending_bytes", max_pending_bytes),
                        ("max_pending_writes", max_pending_writes)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be at least 1 or None, got {value}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
    _LIMITER.configure(None if max_pending_bytes is None else int(max_pending_bytes),
                       None if max_pending_writes is None else int(max_pending_writes),
                       bool(block), timeout)


def asyncStatus() -> AsyncStatus:
    """How many background jobs and writes are pending, and the bytes the writes hold."""
    with _SCHEDULER._lock:
        jobs = len(_SCHEDULER.pending)
    return AsyncStatus(jobs, _LIMITER.writes, _LIMITER.bytes, _SCHEDULER.workers)


def flushAsync(timeout: float | None = None, raise_errors: bool = True) -> None:
    """Wait for every background job submitted before this call.

    Parameters
    ----------
    timeout : longest wait in seconds (``None``: as long as it takes); raises
        ``TimeoutError`` if jobs are still pending then.
    raise_errors : re-raise the first error of a job whose future no one has
        looked at (with ``result()`` or ``exception()``), so that fire-and-forget
        writes cannot fail unnoticed. ``False`` logs such errors instead.
    """
    _SCHEDULER.wait(timeout)
    failed = _SCHEDULER.take_unobserved_failures()
    if not failed:
        return
    if not raise_errors:
        _log_failures(failed)
        return
    err = cf.Future.exception(failed[0])
    if len(failed) > 1 and hasattr(err, "add_note"):
        err.add_note(f"({len(failed) - 1} other mrcz background jobs failed too)")
    raise err


def _log_failures(failed: list[cf.Future]) -> None:
    for future in failed:
        err = cf.Future.exception(future)
        logger.error("mrcz background job failed: %s: %s", type(err).__name__, err,
                     exc_info=(type(err), err, err.__traceback__))


async def aread_mrc(*args: Any, **kwargs: Any) -> tuple[Any, dict]:
    """``await aread_mrc(path, ...)``: :func:`asyncReadMRC` for asyncio code."""
    return await asyncio.wrap_future(asyncReadMRC(*args, **kwargs))


def awrite_mrc(*args: Any, copy: bool = False, **kwargs: Any) -> Coroutine[Any, Any, None]:
    """``await awrite_mrc(image, path, ...)``: :func:`asyncWriteMRC` for asyncio code.

    The write is handed to the background at once, when ``awrite_mrc`` is
    called, unless :func:`setAsyncLimits` leaves no room; then the awaitable
    waits for room without blocking the event loop. Once handed over, the
    write completes even if the awaiting task is cancelled, or never awaited,
    or still pending when ``asyncio.run`` returns (the interpreter waits for it
    at exit, like any background write; if it then fails, the failure is
    reported on stderr and the exit status is non-zero). Cancelling a task
    that still waits for room withdraws its write: that, and writes whose
    awaitable never ran, are listed on stderr at exit.
    """
    bound = _bind_write(args, kwargs)
    nbytes = _image_nbytes(bound.arguments["input_image"]) if bound else 0
    if _LIMITER.try_acquire(nbytes):
        return _await_job(_submit_write(args, kwargs, copy, nbytes))
    label = (_label(bound.arguments["MRCfilename"]) if bound else None) or "?"
    token = object()
    with _WITHDRAWN_LOCK:
        _WITHDRAWN[token] = label
    return _write_when_room(args, kwargs, copy, nbytes, token)


async def _write_when_room(args: tuple, kwargs: dict, copy: bool, nbytes: int,
                           token: object) -> None:
    try:
        await _LIMITER.acquire_async(nbytes)
    except asyncio.CancelledError:
        raise  # withdrawn: listed at exit
    except BaseException:
        with _WITHDRAWN_LOCK:  # e.g. AsyncQueueFull: the caller has seen it
            del _WITHDRAWN[token]
        raise
    with _WITHDRAWN_LOCK:
        del _WITHDRAWN[token]
    return await _await_job(_submit_write(args, kwargs, copy, nbytes))


async def _await_job(future: cf.Future) -> Any:
    """The job's outcome; cancelling the awaiting task leaves the job running."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def settle(_: cf.Future) -> None:
        if waiter.cancelled():
            return  # the outcome stays unobserved: a failure is reported at exit
        err = future.exception()
        if err is None:
            waiter.set_result(future.result())
        else:
            waiter.set_exception(err)

    def done(_: cf.Future) -> None:
        try:
            loop.call_soon_threadsafe(settle, future)
        except RuntimeError:  # the loop is closed: no one awaits the outcome any more
            pass

    future.add_done_callback(done)
    return await waiter


async def aread_dm4(*args: Any, **kwargs: Any) -> Any:
    """``await aread_dm4(path)``: :func:`asyncReadDM4` for asyncio code."""
    return await asyncio.wrap_future(asyncReadDM4(*args, **kwargs))


# ----------------------------------------------------------------------------- exit

#: awrite_mrc writes not yet handed to the background (waiting for room, or not run).
_WITHDRAWN: dict[object, str] = {}
_WITHDRAWN_LOCK = threading.Lock()
#: Exit status to end the process with after the exit hooks (None: leave it alone).
_exit_status: int | None = None
INTERRUPTED_STATUS = 130


def _say(message: str) -> None:
    """One line on stderr (the exit hooks' only way to reach the user)."""
    try:
        sys.stderr.write(f"mrcz: {message}\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


def _names(names: list[str], most: int = 20) -> str:
    shown = ", ".join(repr(name) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _raise_exit_status(status: int) -> None:
    global _exit_status
    _exit_status = max(_exit_status or 0, status)


def _report_failures() -> None:
    """Tell stderr about failed jobs no one looked at; the exit status becomes 1."""
    failed = _SCHEDULER.take_unobserved_failures()
    for future in failed:
        err = cf.Future.exception(future)
        what = "write of" if future.writes else "read of"
        _say(f"background {what} {future.label or '?'!r} failed: "
             f"{type(err).__name__}: {err}")
    if failed:
        _raise_exit_status(1)


def _report_withdrawn() -> None:
    with _WITHDRAWN_LOCK:
        labels = sorted(_WITHDRAWN.values())
        _WITHDRAWN.clear()
    if labels:
        _say(f"{len(labels)} awrite_mrc writes were cancelled while waiting for room, or "
             f"never ran; not written: {_names(labels)}")


class _ExitInterrupts:
    """While the interpreter waits for pending jobs: the first Ctrl-C (SIGINT) says
    what is pending and keeps waiting; the second abandons the unfinished writes
    (their temporary files are removed, the targets stay as they were) and ends
    the process with status 130."""

    def __init__(self) -> None:
        self.presses = 0
        self.previous: Any = None
        self.installed = False

    def __enter__(self) -> _ExitInterrupts:
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if callable(current):  # not SIG_IGN or SIG_DFL, which the user chose
                self.previous = signal.signal(signal.SIGINT, self._on_sigint)
                self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.presses += 1
        _raise_exit_status(INTERRUPTED_STATUS)
        if self.presses == 1:
            pending = _SCHEDULER.pending_writes()
            _say(f"finishing {len(pending)} background writes before exit "
                 f"({_names(pending, 5)}); press Ctrl-C again to abandon them")
            return
        _abandon_and_exit()


def _abandon_and_exit() -> None:
    abandoned = {os.fspath(p) for p in fileops.abandon_outputs()}
    abandoned.update(_SCHEDULER.pending_writes())
    names = sorted(abandoned)
    _say(f"abandoned {len(names)} unfinished background writes; these files are "
         f"incomplete and were not written (earlier versions are unchanged): "
         f"{_names(names, 1000)}")
    _hard_exit(INTERRUPTED_STATUS)


def _hard_exit(status: int) -> None:
    """End the process now with ``status``, after flushing logging and the std streams."""
    with contextlib.suppress(Exception):
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def _flush_at_exit() -> None:
    """Finish every pending job before the interpreter (and the codec pool) shut down."""
    with _ExitInterrupts():
        _SCHEDULER.wait_all()
    _report_failures()


def _final_exit_hook() -> None:
    """Last word at exit: late failures, withdrawn writes, and the exit status."""
    _report_failures()  # of jobs that user threads submitted during shutdown
    _report_withdrawn()
    if _exit_status is None:
        return
    status = _exit_status
    last = getattr(sys, "last_value", None)  # the script itself ended with an exception
    if isinstance(last, KeyboardInterrupt):
        status = max(status, INTERRUPTED_STATUS)
    elif last is not None:
        status = max(status, 1)
    _hard_exit(status)


def _register_exit_hooks() -> None:
    # threading runs these hooks newest first, before it joins thread pools
    # (concurrent.futures registered its own on import, above): so pending jobs
    # still find the codec pool accepting work. atexit would run too late for
    # that; it reports failures of jobs that user threads submitted even later
    # (those run in the submitting thread). The exit status can only be set by
    # ending the process (os._exit) in that last hook: atexit handlers registered
    # before this module was imported do not run then (logging is flushed).
    import atexit

    register = getattr(threading, "_register_atexit", atexit.register)
    register(_flush_at_exit)
    atexit.register(_final_exit_hook)


_register_exit_hooks()

setAsyncWorkers = _setAsyncWorkers = set_async_workers
async_read_mrc = asyncReadMRC
async_write_mrc = asyncWriteMRC
async_read_dm4 = asyncReadDM4
set_async_limits = setAsyncLimits
flush_async = flushAsync
async_status = asyncStatus
