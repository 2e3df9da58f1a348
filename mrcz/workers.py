"""The shared pool that compresses, decompresses and scans frames in parallel."""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

CORES = os.cpu_count() or 1
_POOL = ThreadPoolExecutor(max_workers=max(2, CORES), thread_name_prefix="mrcz-codec")


def ordered_map(func: Callable[[T], R], items: Iterable[T], n_threads: int) -> Iterator[R]:
    """Yield ``func(item)`` in order, with at most ``2 * n_threads`` items in flight.

    With ``n_threads <= 1`` everything runs in the calling thread. Callers must not
    be pool threads themselves (they would wait on their own pool).
    """
    if n_threads <= 1:
        yield from map(func, items)
        return
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(_POOL.submit(func, item))
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
