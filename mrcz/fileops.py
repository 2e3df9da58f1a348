"""Safe output files: atomic, durable replacement of a target, and leftover cleanup.

:func:`atomic_output` is how every mrcz writer creates a file:

- The data go to a temporary file beside the target, named
  ``.NAME.mrcz-partial.<pid>.<host><random>``; the target is replaced by a
  rename only when the writer finished without an exception. Until then, and
  after any failure (an exception, Ctrl-C, ``kill -9``), whatever was at the
  target stays as it was.
- The target is what ``open(path, "wb")`` would write to: a symlink is
  followed (its target is replaced, the link stays); a directory, FIFO,
  device or socket is refused; a read-only file (no write bit at all, even for
  root) and a file the caller may not write are refused with
  ``PermissionError``. A replaced file keeps its permission bits (and its owner
  and group where the caller may set them).
- With ``durable=True`` (the default) the temporary file is ``fsync``-ed
  before the rename and the folder after it, so a completed write survives a
  power cut; ``durable=False`` leaves both to the page cache.
- Every ``OSError`` raised carries an errno and names the file; a write that
  the disk cannot take raises ``OSError(errno.ENOSPC, ..., path)``.
- Temporary files left behind by writers that no longer run (``kill -9``, a
  power cut) are removed by the next write into the same folder, and on demand
  by :func:`clean_folder`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputFile", "atomic_output", "clean_folder", "is_partial_name",
           "outputs_in_progress", "abandon_outputs", "fsync_folder", "named_error",
           "open_for_update"]

#: Bytes :class:`OutputFile` gathers before it writes (larger writes go straight through).
BUFFER_BYTES = 2**20
#: The marker in the names of temporary files.
PARTIAL_MARKER = ".mrcz-partial."
_PARTIAL_RE = re.compile(r"^\.(?P<base>.+)\.mrcz-partial\.(?P<pid>[0-9]+)\."
                         r"(?P<host>[0-9a-f]{8})(?P<rand>[0-9a-f]{8})$", re.DOTALL)
_NAME_MAX = 255
#: A process that started this many seconds after a leftover was last modified
#: cannot have written it (its pid was reused); covers /proc's 1 s boot-time rounding.
_START_SLACK_S = 2.0
#: Scans for leftovers may take at most this fraction of the time between writes.
_SCAN_SHARE = 0.01
_SHORT_WRITE_RE = re.compile(r"\d+ requested and \d+ written")


def _host_tag() -> str:
    """8 hex digits naming this host and pid namespace: pids are judged only there."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha1(f"{socket.gethostname()}\0{namespace}".encode()).hexdigest()[:8]


_HOST = _host_tag()
_registry_lock = threading.Lock()
_in_progress: dict[str, str] = {}  # temporary file -> target name as the caller gave it
_last_scan: dict[str, tuple[float, float]] = {}  # folder -> (when it ended, its duration)


# ----------------------------------------------------------------------------- errors

def named_error(err: OSError, path: str | os.PathLike, errno_if_none: int = errno.EIO,
                what: str | None = None) -> OSError:
    """``err`` re-made to carry an errno and name ``path`` (same ``OSError`` subclass).

    Parameters
    ----------
    err : the error to rename.
    path : the file the caller asked to write.
    errno_if_none : errno to use when ``err`` has none.
    what : replaces ``err.strerror`` (e.g. to say which step failed).
    """
    code = err.errno if err.errno is not None else errno_if_none
    message = what or err.strerror or os.strerror(code)
    cls = type(err) if err.errno is not None else OSError
    try:
        new = cls(code, message, os.fspath(path))
    except TypeError:  # a subclass with its own constructor
        new = OSError(code, message, os.fspath(path))
    return new


def _short_write_errno(fd: int) -> int:
    """The errno behind a write that stopped short: EFBIG at RLIMIT_FSIZE, else ENOSPC."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and os.fstat(fd).st_size >= limit:
            return errno.EFBIG
    except (ImportError, OSError, ValueError):
        pass
    return errno.ENOSPC


# ----------------------------------------------------------------------------- the file

class OutputFile(io.BufferedIOBase):
    """A buffered, seekable, write-only file whose every error names the target.

    Small writes are gathered up to :data:`BUFFER_BYTES`; larger ones go to the
    file descriptor directly, without a copy. A short write (a full disk)
    raises ``OSError(errno.ENOSPC, ..., name)``; any other ``OSError`` keeps its
    errno and gains ``name``. ``fileno()`` flushes first, so positioned writes
    on the descriptor see everything written before.

    Parameters
    ----------
    fd : an open, writable file descriptor; the object owns it from now on.
    name : the file name to report (the target, not the temporary file).
    buffer_size : bytes gathered before writing.
    """

    def __init__(self, fd: int, name: str, buffer_size: int = BUFFER_BYTES) -> None:
        super().__init__()
        self._fd = fd
        self.name = name
        self.mode = "wb"
        self._buffer = bytearray()
        self._buffer_size = int(buffer_size)

    # -- io.BufferedIOBase
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def write(self, data) -> int:  # noqa: ANN001  (any bytes-like object)
        """Write all of ``data`` (a bytes-like object); return its length in bytes."""
        self._check_open()
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        n = view.nbytes
        if len(self._buffer) + n > self._buffer_size:
            self._drain()
        if n >= self._buffer_size:
            self._write_all(view)
        else:
            self._buffer += view
        return n

    def flush(self) -> None:
        self._check_open()
        self._drain()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        self._drain()
        return self._call(os.lseek, self._fd, offset, whence)

    def tell(self) -> int:
        self._check_open()
        return self._call(os.lseek, self._fd, 0, os.SEEK_CUR) + len(self._buffer)

    def truncate(self, size: int | None = None) -> int:
        self._check_open()
        self._drain()
        size = self.tell() if size is None else int(size)
        self._call(os.ftruncate, self._fd, size)
        return size

    def fileno(self) -> int:
        self._check_open()
        self._drain()
        return self._fd

    def sync(self) -> None:
        """Flush and ``fsync``: the data are on the disk when this returns."""
        self.flush()
        self._call(os.fsync, self._fd)

    def close(self) -> None:
        """Flush and close the descriptor (errors name the file)."""
        if self.closed:
            return
        try:
            self._drain()
        finally:
            self._buffer = bytearray()
            fd, self._fd = self._fd, -1
            super().close()
            self._call(os.close, fd)

    def discard(self) -> None:
        """Close without writing what is still buffered; never raises."""
        self._buffer = bytearray()
        if not self.closed:
            fd, self._fd = self._fd, -1
            super().close()
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:  # never flush from the garbage collector
        self.discard()

    # -- helpers
    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.name}: I/O operation on a closed file")

    def _call(self, func, *args):  # noqa: ANN001, ANN202
        try:
            return func(*args)
        except OSError as err:
            raise named_error(err, self.name) from None

    def _drain(self) -> None:
        if self._buffer:
            data, self._buffer = self._buffer, bytearray()  # views of it may outlive a failure
            self._write_all(memoryview(data))

    def _write_all(self, view: memoryview) -> None:
        done, total = 0, view.nbytes
        while done < total:
            try:
                written = os.write(self._fd, view[done:])
            except OSError as err:
                raise named_error(err, self.name) from None
            if written <= 0:
                code = _short_write_errno(self._fd)
                raise OSError(code, f"{os.strerror(code)} ({total - done} of {total} "
                                    "bytes not written)", self.name)
            done += written


# ----------------------------------------------------------------------------- leftovers

def is_partial_name(name: str) -> bool:
    """True if ``name`` (a bare file name) is that of an mrcz temporary file."""
    return _PARTIAL_RE.match(name) is not None


def _partial_name(base: str) -> str:
    suffix = f"{PARTIAL_MARKER}{os.getpid()}.{_HOST}{secrets.token_hex(4)}"
    while len(os.fsencode(f".{base}{suffix}")) > _NAME_MAX:
        base = base[:-1]
    return f".{base}{suffix}"


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _proc_state(pid: int) -> tuple[str, float | None] | None:
    """``(state letter, start time as a Unix time)`` from /proc, or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    state = fields[0].decode(errors="replace")
    boot = _boot_time()
    try:
        start = None if boot is None else boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (ValueError, IndexError, OSError):
        start = None
    return state, start


def _writer_gone(pid: int, info: os.stat_result, temp: str) -> bool:
    """True only when the process that wrote a leftover surely no longer runs."""
    if pid == os.getpid():
        with _registry_lock:
            return temp not in _in_progress
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists (another user's)
        return False
    proc = _proc_state(pid)
    if proc is None:
        return False
    state, start = proc
    if state in ("Z", "X"):  # exited, not yet reaped
        return True
    return start is not None and start > info.st_mtime + _START_SLACK_S  # pid reused


def _stale_leftovers(folder: str) -> list[str]:
    """Paths of the leftovers in ``folder`` whose writer surely no longer runs."""
    euid = os.geteuid()
    stale = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _PARTIAL_RE.match(entry.name)
            if match is None or match["host"] != _HOST:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode) or (euid != 0 and info.st_uid != euid):
                continue
            if _writer_gone(int(match["pid"]), info, entry.path):
                stale.append(entry.path)
    return stale


def clean_folder(folder: str | os.PathLike, dry_run: bool = False) -> list[Path]:
    """Remove the temporary files that dead mrcz writers left in ``folder``.

    A leftover is removed only when it can be judged: its name records this
    host, the caller owns it (or is root), and its writer's pid no longer runs
    (or is a zombie, or belongs to a process started after the file was last
    written). Leftovers of live writers, of other hosts and of other users
    stay. Subfolders are not searched.

    Parameters
    ----------
    folder : the folder to clean.
    dry_run : only list what would be removed.

    Returns
    -------
    The leftovers removed (or, with ``dry_run``, that would be removed).

    Raises
    ------
    OSError naming ``folder`` if it cannot be listed (``NotADirectoryError``,
    ``FileNotFoundError``, ``PermissionError``), or if a leftover cannot be removed.
    """
    folder = os.fspath(folder)
    try:
        stale = _stale_leftovers(folder)
    except OSError as err:
        raise named_error(err, folder) from None
    removed = []
    for path in stale:
        if not dry_run:
            try:
                os.unlink(path)
            except FileNotFoundError:  # another cleaner was first
                continue
            except OSError as err:
                raise named_error(err, path) from None
        removed.append(Path(path))
    return removed


def _clean_if_due(folder: str) -> None:
    """:func:`clean_folder` on the way to a write, silently, at most ~1% of the time."""
    now = time.monotonic()
    last = _last_scan.get(folder)
    if last is not None and now - last[0] < last[1] / _SCAN_SHARE:
        return
    with contextlib.suppress(OSError):
        clean_folder(folder)
    end = time.monotonic()
    _last_scan[folder] = (end, end - now)


# ----------------------------------------------------------------------------- in progress

def outputs_in_progress() -> list[Path]:
    """Targets that :func:`atomic_output` is writing in this process now."""
    with _registry_lock:
        return [Path(target) for target in _in_progress.values()]


def abandon_outputs() -> list[Path]:
    """Remove the temporary files of every output in progress in this process.

    For a process about to end without finishing its writes (a second Ctrl-C):
    the writers' later renames fail, so no target changes. Returns the targets
    that will not be written.
    """
    with _registry_lock:
        taken = list(_in_progress.items())
        _in_progress.clear()
    for temp, _ in taken:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    return [Path(target) for _, target in taken]


# ----------------------------------------------------------------------------- input

def blocks(fd: int, size: int = 2**20) -> Iterator[bytes]:
    """The bytes of the file open as ``fd``, from its start, ``size`` at a time (read by
    position: the file's offset does not move)."""
    offset = 0
    while block := os.pread(fd, size, offset):
        yield block
        offset += len(block)


# ----------------------------------------------------------------------------- output

def fsync_folder(folder: str | os.PathLike) -> None:
    """``fsync`` a folder, so that a rename in it is on the disk (errors name it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:
        raise named_error(err, folder) from None
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):  # folders some filesystems
            raise named_error(err, folder) from None       # cannot sync
    finally:
        os.close(fd)


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _resolve_target(shown: str) -> tuple[str, os.stat_result | None]:
    """The real path a write to ``shown`` replaces, and its stat (None if it is new).

    Refuses what ``open(shown, "wb")`` would refuse, and read-only files.
    """
    target = os.path.realpath(shown)
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return target, None
    except OSError as err:
        raise named_error(err, shown) from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", shown)
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise OSError(errno.EINVAL, f"Target is {kind}; mrcz writes only regular files",
                      shown)
    if not info.st_mode & 0o222:
        raise PermissionError(errno.EACCES, "Permission denied (the file is read-only)",
                              shown)
    if not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, "Permission denied", shown)
    return target, info


def _create_temp(target: str, shown: str) -> tuple[int, str]:
    folder, base = os.path.split(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        temp = os.path.join(folder, _partial_name(base))
        try:
            with _registry_lock:
                fd = os.open(temp, flags, 0o666)
                _in_progress[temp] = shown
            return fd, temp
        except FileExistsError:
            continue
        except OSError as err:
            raise named_error(err, shown, what=f"cannot create a file in {folder}: "
                                                f"{err.strerror}") from None


def _copy_owner_and_mode(fd: int, info: os.stat_result) -> None:
    """Give the new file the old one's group, owner (where allowed) and permission bits."""
    if (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
        with contextlib.suppress(OSError):
            os.fchown(fd, info.st_uid, info.st_gid)
    with contextlib.suppress(OSError):
        os.fchmod(fd, stat.S_IMODE(info.st_mode))


def _put_in_place(temp: str, target: str, shown: str, replace: bool) -> None:
    try:
        if replace:
            os.replace(temp, target)
            return
        try:
            os.link(temp, target)  # fails if the target exists, atomically
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if os.path.lexists(target):  # no hard links here: check, then rename
                raise FileExistsError(errno.EEXIST, "File exists", shown) from None
            os.replace(temp, target)
            return
        os.unlink(temp)
    except OSError as err:
        if err.errno == errno.ENOENT and not os.path.exists(temp):
            raise OSError(errno.ENOENT, "the write was abandoned (its temporary file is "
                                        "gone)", shown) from None
        raise named_error(err, shown) from None


@contextlib.contextmanager
def _locked_old_target(target: str, info: os.stat_result | None) -> Iterator[None]:
    """Hold the lock of the file about to be replaced, so an update in place
    (:func:`open_for_update`) finishes before, or starts after, the rename."""
    if info is None:
        yield
        return
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # not readable, or gone: nothing to wait for
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_for_update(path: str | os.PathLike) -> Iterator[io.BufferedRandom]:
    """Open an existing file ``r+b`` holding an exclusive advisory lock (``flock``).

    Threads and processes updating the same file in place through this
    function take turns; a writer replacing the file (:func:`atomic_output`)
    waits for the update to end. If the file was replaced while the lock was
    awaited, the new file is opened and locked instead. Errors name ``path``.
    """
    shown = os.fsdecode(os.fspath(path))
    while True:
        try:
            f = open(shown, "r+b")  # noqa: SIM115 - closed below or by the caller's with
        except OSError as err:
            raise named_error(err, shown) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            now = os.stat(shown)
        except FileNotFoundError:
            f.close()
            continue
        except OSError as err:
            f.close()
            raise named_error(err, shown) from None
        opened = os.fstat(f.fileno())
        if (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
            break
        f.close()  # replaced while we waited: lock the new file
    with f:
        yield f


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, durable: bool = True, replace: bool = True,
                  clean: bool = True) -> Iterator[OutputFile]:
    """Write a file atomically: yield an :class:`OutputFile` that becomes ``path`` on success.

    Parameters
    ----------
    path : the file to write (a symlink is followed: its target is replaced).
    durable : ``fsync`` the data before the rename and the folder after it, so
        the file is on the disk when the ``with`` block ends. ``False`` skips
        both (faster; a power cut may then lose the file, never half of it).
    replace : ``False`` refuses to replace an existing file (``FileExistsError``
        at the end, atomically where the filesystem has hard links).
    clean : first remove leftovers of dead writers from the folder (see
        :func:`clean_folder`); scans are skipped when they would take more than
        1% of the time.

    On any exception (also KeyboardInterrupt) inside the block, the temporary
    file is removed, ``path`` is untouched and the exception propagates; a
    short write reported without an errno (numpy's ``tofile``) becomes
    ``OSError(errno.ENOSPC, ..., path)``.

    Raises
    ------
    IsADirectoryError, PermissionError (read-only or not writable target,
    folder not writable), FileNotFoundError (no such folder), OSError (a FIFO,
    device or socket target; a full disk; failed fsync): all name ``path``.
    """
    shown = os.fsdecode(os.fspath(path))
    target, info = _resolve_target(shown)
    if not replace and info is not None:
        raise FileExistsError(errno.EEXIST, "File exists", shown)
    folder = os.path.dirname(target)
    if clean:
        _clean_if_due(folder)
    fd, temp = _create_temp(target, shown)
    f = OutputFile(fd, shown)
    try:
        if info is not None:
            _copy_owner_and_mode(fd, info)
        yield f
        if durable:
            f.sync()
        f.close()
        with _locked_old_target(target, info):
            _put_in_place(temp, target, shown, replace)
    except BaseException as err:
        f.discard()
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if (isinstance(err, OSError) and err.errno is None
                and _SHORT_WRITE_RE.search(str(err))):
            code = errno.ENOSPC
            raise OSError(code, f"{os.strerror(code)} ({err})", shown) from err
        raise
    finally:
        with _registry_lock:
            _in_progress.pop(temp, None)
    if durable:
        fsync_folder(folder)
