"""The shared pool that compresses, decompresses and scans frames in parallel."""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

CORES = os.cpu_count() or 1
_default_threads = CORES
_in_pool = threading.local()
_POOL = ThreadPoolExecutor(max_workers=max(2, CORES), thread_name_prefix="mrcz-codec",
                           initializer=setattr, initargs=(_in_pool, "worker", True))


def default_threads() -> int:
    """How many frames readers and writers handle at once when ``n_threads`` is None."""
    return _default_threads


def set_default_threads(n_threads: int) -> None:
    """Set what :func:`default_threads` returns (at least 1)."""
    global _default_threads
    if int(n_threads) < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}")
    _default_threads = int(n_threads)


def threads(n_threads: int | None) -> int:
    """``n_threads`` as a count of at least 1; None means :func:`default_threads`."""
    return _default_threads if n_threads is None else max(1, int(n_threads))


def _submit(func: Callable[[T], R], item: T) -> Future:
    """Run ``func(item)`` on the pool, or at once in this thread where the pool cannot
    be used: from one of its own threads (which would wait on themselves, e.g. a
    lazy array whose frames are read with readMRC), or after interpreter shutdown
    began (a user thread still writing)."""
    if not getattr(_in_pool, "worker", False):
        try:
            return _POOL.submit(func, item)
        except RuntimeError:  # cannot schedule new futures after interpreter shutdown
            pass
    future: Future = Future()
    try:
        future.set_result(func(item))
    except BaseException as err:  # handed to the caller through the future, as the pool would
        future.set_exception(err)
    return future


def ordered_map(func: Callable[[T], R], items: Iterable[T], n_threads: int) -> Iterator[R]:
    """Yield ``func(item)`` in order, with at most ``2 * n_threads`` items in flight.

    With ``n_threads <= 1`` everything runs in the calling thread (so it does when
    the caller is itself a pool thread).
    """
    if n_threads <= 1:
        yield from map(func, items)
        return
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(_submit(func, item))
            if len(pending) >= 2 * n_threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()  # wait: no worker may outlive the caller's buffers


class Pipeline:
    """Run ``func`` on items as they are put, on the shared pool; consume results in order.

    At most ``depth`` (default ``2 * n_threads``) items are in flight, so memory stays
    bounded however many items pass through; ``put`` consumes finished results (in the caller's
    thread) when the window is full. With ``n_threads <= 1`` everything runs in
    the caller's thread.
    """

    def __init__(self, func: Callable[[T], R], consume: Callable[[R], None],
                 n_threads: int, depth: int | None = None) -> None:
        self._func, self._consume, self._n_threads = func, consume, n_threads
        self._depth = 2 * n_threads if depth is None else depth
        self._pending: deque[Future] = deque()

    def put(self, item: T) -> None:
        if self._n_threads <= 1:
            self._consume(self._func(item))
            return
        self._pending.append(_submit(self._func, item))
        while len(self._pending) >= self._depth:
            self._consume(self._pending.popleft().result())

    def finish(self) -> None:
        """Consume every result still in flight."""
        while self._pending:
            self._consume(self._pending.popleft().result())

    def cancel(self) -> None:
        """Drop what is in flight; return once no worker still uses an item."""
        pending, self._pending = self._pending, deque()
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()
