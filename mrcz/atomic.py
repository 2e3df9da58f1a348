"""Atomic file output: write beside the target, rename into place only on success."""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from typing import BinaryIO

_BUFFER = 2**20


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file in ``path``'s folder; replace ``path`` with it on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed
    and whatever was at ``path`` before is untouched. A replaced file keeps its
    permission bits; a new one gets 0666 less the umask. Errors name ``path``.
    """
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    temp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.partial")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise type(err)(err.errno, f"cannot create {path}: {err.strerror}", path) from None
    try:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(fd, stat.S_IMODE(os.stat(path).st_mode))
        with os.fdopen(fd, "wb", buffering=_BUFFER) as f:
            yield f
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
