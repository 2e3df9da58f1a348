"""Background reads and writes on a shared thread pool, returning futures."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .mrc import readMRC, writeMRC

_asyncExecutor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrcz-async")


def _setAsyncWorkers(N_workers: int) -> None:
    """Set how many background jobs run at once."""
    if N_workers <= 0:
        raise ValueError("N_workers must be greater than 0")
    _asyncExecutor._max_workers = int(N_workers)
    _asyncExecutor._adjust_thread_count()


def asyncReadMRC(*args: Any, **kwargs: Any) -> Future:
    """``readMRC`` in the background; ``future.result()`` gives ``(image, header)``."""
    return _asyncExecutor.submit(readMRC, *args, **kwargs)


def asyncWriteMRC(*args: Any, **kwargs: Any) -> Future:
    """``writeMRC`` in the background; ``future.result()`` waits and re-raises errors."""
    return _asyncExecutor.submit(writeMRC, *args, **kwargs)


def asyncReadDM4(*args: Any, **kwargs: Any) -> Future:
    """``readDM4`` in the background."""
    from .dm import readDM4
    return _asyncExecutor.submit(readDM4, *args, **kwargs)


async_read_mrc = asyncReadMRC
async_write_mrc = asyncWriteMRC
async_read_dm4 = asyncReadDM4
