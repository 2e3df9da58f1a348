"""Upgrade old MRCZ files (labelled ``MRCZ`` < 0.5) to the current layout, losing nothing.

mrcz 0.4.1 and older wrote the dimensions into (mx, my, mz), which later
releases read as "slices per frame". This module rewrites such files in the
current layout, keeping the data, dtype, compressor, compression level, pixel
size, microscope values and every JSON metadata key.

Safety, for every file that needs upgrading:

1. the original is copied byte for byte into the backup folder (through a
   temporary name, then renamed; an identical existing backup is reused, a
   different one is never overwritten);
2. the new file is written beside the original under a hidden temporary name,
   flushed to disk, read back and compared with the original (data, dtype,
   pixel size, voltage, C3, gain, compressor, level, metadata);
3. only then is it renamed over the original.

Whenever the process is killed, each file is therefore either the original or
the verified new file; a left-over temporary file is removed by the next run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blosc
import numpy as np

from . import codec, frameindex, header as hdr
from .fileops import blocks
from .errors import MRCZError, describe
from .mrc import writeMRC
from .progress import Progress
from .reader import MRCSource
from .stream import MRCZReader
from .units import ANGSTROM

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None

#: File name endings the upgrade looks at.
SUFFIXES = (".mrc", ".mrcz", ".mrcs")
#: Files labelled with an MRCZ version below this are upgraded.
CURRENT_FROM = (0, 5)
#: Chunks recompressed at most to pin down the compression level.
MAX_PROBE_CHUNKS = 8
DEFAULT_CLEVEL = 1
_TEMP_TAG = ".mrcz-upgrade-"
_LEVELS = range(1, 10)

UPGRADED, CURRENT, WOULD_UPGRADE, FAILED = "upgraded", "current", "would upgrade", "failed"


class UpgradeError(MRCZError):
    """A file could not be upgraded safely (the original is left untouched)."""


@dataclasses.dataclass(frozen=True)
class ClevelGuess:
    """Compressor and level found by recompressing chunks of an old file.

    Attributes
    ----------
    compressor : codec to write (``'lz4hc'`` where the header said lz4 but
        lz4hc reproduced the bytes).
    clevel : compression level to write.
    exact : True when exactly one level reproduced the bytes.
    note : a human-readable account of how the level was found.
    """

    compressor: str | None
    clevel: int
    exact: bool
    note: str


@dataclasses.dataclass
class FileResult:
    """What happened to one file: ``status`` is one of upgraded, current,
    would upgrade, failed."""

    path: Path
    status: str
    detail: str = ""

    def line(self) -> str:
        """One line for a log or terminal."""
        return f"{self.status}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclasses.dataclass
class UpgradeSummary:
    """Results of :func:`upgrade_folder`, one per file examined."""

    folder: Path
    backup_dir: Path
    dry_run: bool
    results: list[FileResult] = dataclasses.field(default_factory=list)

    def count(self, status: str) -> int:
        """Number of files with ``status``."""
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    def text(self) -> str:
        """The summary line printed at the end of a run."""
        if self.dry_run:
            return (f"dry run: {self.count(WOULD_UPGRADE)} would be upgraded, "
                    f"{self.count(CURRENT)} already current, {self.count(FAILED)} failed")
        return (f"{self.count(UPGRADED)} upgraded, {self.count(CURRENT)} already current, "
                f"{self.count(FAILED)} failed (originals in {self.backup_dir})")


# ----------------------------------------------------------------------------- finding files

def needs_upgrade(path: str | os.PathLike) -> bool:
    """True when ``path`` is labelled ``MRCZ<version>`` with a version below 0.5."""
    with MRCSource.open(path) as src:
        return is_legacy(src.info)


def is_legacy(info: hdr.HeaderInfo) -> bool:
    """True when the header is labelled ``MRCZ<version>`` with a version below 0.5."""
    return info.mrcz_version is not None and info.mrcz_version < CURRENT_FROM


def find_files(folder: str | os.PathLike, recursive: bool = False,
               exclude: Path | None = None) -> list[Path]:
    """MRC/MRCZ files in ``folder`` (sorted), skipping hidden names, symbolic links
    (replacing a link would cut it from its target) and the folder ``exclude``."""
    folder = Path(folder)
    exclude = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or (here / d).resolve() != exclude))
        found.extend(here / name for name in sorted(files)
                     if name.lower().endswith(SUFFIXES) and not name.startswith(".")
                     and (here / name).is_file() and not (here / name).is_symlink())
        if not recursive:
            break
    return found


# ----------------------------------------------------------------------------- clevel

def detect_clevel(path: str | os.PathLike) -> ClevelGuess:
    """Find the compressor and level that reproduce the chunks of a compressed file.

    The first chunk is recompressed at levels 1..9 with the same codec, typesize,
    block size and shuffle; where several levels reproduce it, later chunks (up
    to :data:`MAX_PROBE_CHUNKS`) narrow the choice, and the lowest remaining
    level is taken. A file that says lz4 is tried at lz4hc too (releases before
    0.6 recorded lz4hc as lz4); lz4 is kept unless only lz4hc reproduces the bytes.
    """
    with MRCSource.open(path) as src:
        return guess_clevel(src)


def guess_clevel(src: MRCSource) -> ClevelGuess:
    """:func:`detect_clevel` of the file already open as ``src``."""
    info = src.info
    if info.compressor is None:
        return ClevelGuess(None, DEFAULT_CLEVEL, True, "plain file")
    raws = [os.pread(src.fd, size, offset)
            for offset, size in src.chunk_table().chunks[:MAX_PROBE_CHUNKS]]
    names = [info.compressor] + (["lz4hc"] if info.compressor == "lz4" else [])
    candidates = [(cname, level) for cname in names for level in _LEVELS]
    for raw in raws:
        reason = _unprobeable(raw)
        if reason:
            return _fallback(info.compressor, reason)
        candidates = [c for c in candidates if _reproduces(raw, *c)]
        if len(candidates) <= 1:
            break
    if not candidates:
        return _fallback(info.compressor, "no level 1-9 reproduces the compressed bytes "
                         "(written by a different blosc build?)")
    if any(cname == info.compressor for cname, _ in candidates):
        candidates = [c for c in candidates if c[0] == info.compressor]
    cname, level = min(candidates, key=lambda c: c[1])
    levels = sorted(lv for _, lv in candidates)
    if len(levels) == 1:
        return ClevelGuess(cname, level, True, f"{cname} clevel {level} reproduces the bytes")
    return ClevelGuess(cname, level, False,
                       f"{cname} levels {levels[0]}-{levels[-1]} all reproduce the bytes; "
                       f"kept the lowest, {level}")


def _unprobeable(raw: bytes) -> str:
    """Why a chunk cannot be recompressed for comparison ('' if it can)."""
    head = codec.ChunkHeader.parse(raw)
    if head.version > 2:
        return "chunks are in blosc2 format"
    if head.shuffle != "bit":
        return f"chunks are {head.shuffle}-shuffled, not bit-shuffled"
    if head.typesize < 1 or head.nbytes % head.typesize:
        return "chunk typesize does not divide the frame"
    return ""


def _reproduces(raw: bytes, cname: str, level: int) -> bool:
    head = codec.ChunkHeader.parse(raw)
    plain = blosc.decompress(raw)
    frame = np.frombuffer(plain, dtype=np.dtype((np.void, head.typesize)))
    try:
        again = codec.compress_frame(frame, cname, level, head.blocksize)
    except (ValueError, RuntimeError):
        return False
    return again == raw


def _fallback(compressor: str, reason: str) -> ClevelGuess:
    return ClevelGuess(compressor, DEFAULT_CLEVEL, False,
                       f"{reason}; kept clevel {DEFAULT_CLEVEL}")


# ----------------------------------------------------------------------------- one file

def upgrade_file(path: str | os.PathLike, backup: str | os.PathLike,
                 dry_run: bool = False) -> FileResult:
    """Upgrade one file in place if it needs it, keeping its original at ``backup``.

    The file is opened once: its header decides, its chunks give the level, its
    bytes make the backup and its frames the new file.
    Returns a :class:`FileResult`; errors are reported in it, never raised
    (except KeyboardInterrupt), and the original is then left untouched.
    """
    path, backup = Path(path), Path(backup)
    try:
        if not dry_run:
            _remove_stale_temps(path)
            _remove_stale_temps(backup)
        with MRCSource.open(path) as src:
            if not is_legacy(src.info):
                return FileResult(path, CURRENT)
            if src.fd is None:
                raise UpgradeError(f"{path}: a whole-file compressed (gzip, bzip2, zstd) file "
                                   "cannot be upgraded in place; decompress it first")
            guess = guess_clevel(src)
            if dry_run:
                return FileResult(path, WOULD_UPGRADE, _describe(guess))
            notes = _upgrade(src, path, backup, guess)
        return FileResult(path, UPGRADED, "; ".join([_describe(guess), *notes]))
    except (OSError, MRCZError, ValueError, TypeError, RuntimeError) as err:
        return FileResult(path, FAILED, str(err) or type(err).__name__)


def _describe(guess: ClevelGuess) -> str:
    if guess.compressor is None:
        return "plain MRC"
    return f"{guess.compressor}, clevel {guess.clevel}: {guess.note}"


def _upgrade(src: MRCSource, path: Path, backup: Path, guess: ClevelGuess) -> list[str]:
    """Back up, rewrite, verify and rename the file open as ``src``; returns notes for
    the report."""
    ensure_backup(src.fd, path, backup)
    temp = path.with_name(f".{path.name}{_TEMP_TAG}{secrets.token_hex(4)}.partial")
    try:
        image = MRCZReader.of_source(src, n_threads=1)
        notes = _write_new(image, image.header, src.info, src.meta, guess, temp)
        _copy_owner_and_times(path, temp)
        _fsync_file(temp)
        verify_same(image, temp, src.meta, guess)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _fsync_dir(path.parent)
    return notes


def _copy_owner_and_times(source: Path, target: Path) -> None:
    """Give the new file the original's permissions, times and (if allowed) owner."""
    shutil.copystat(source, target)
    st = source.stat()
    with contextlib.suppress(PermissionError):
        os.chown(target, st.st_uid, st.st_gid)


def _write_new(image: Any, header: dict, info: hdr.HeaderInfo, meta: dict,
               guess: ClevelGuess, temp: Path) -> list[str]:
    has_meta = info.extended_bytes > 0 and info.record["exttyp"] == b"json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writeMRC(image, temp, meta=meta if has_meta else None,
                 endian="le" if info.byteorder == "<" else "be",
                 pixelsize=header["pixelsize"], pixelunits=ANGSTROM,
                 voltage=header["voltage"], C3=header["C3"], gain=header["gain"],
                 compressor=guess.compressor, clevel=guess.clevel, n_threads=1)
    return [str(w.message) for w in caught]


def verify_same(original: MRCZReader, new: Path, meta: dict, guess: ClevelGuess) -> None:
    """Raise :class:`UpgradeError` unless the file ``new`` holds what ``original`` (a
    reader of the old file) holds: every z-slice bit for bit, mode, compressor, level,
    pixel size, voltage, C3, gain and JSON metadata (``meta``, the original's)."""
    header = original.header
    with MRCSource.open(new) as src:
        got = MRCZReader.of_source(src, n_threads=1)
        problems = _compare_data(original, got)
        new_info, new_meta, got_header = src.info, src.meta, got.header
    if new_info.legacy_mrcz:
        problems.append("the new file still has the old layout")
    if got_header["MRCtype"] != header["MRCtype"]:
        problems.append(f"mode {got_header['MRCtype']} instead of {header['MRCtype']}")
    if got_header["compressor"] != guess.compressor:
        problems.append(f"compressor {got_header['compressor']} instead of {guess.compressor}")
    if guess.compressor and got_header.get("clevel") != guess.clevel:
        problems.append(f"clevel {got_header.get('clevel')} instead of {guess.clevel}")
    if not np.allclose(got_header["pixelsize"], header["pixelsize"], rtol=1e-6, atol=0):
        problems.append(f"pixel size {got_header['pixelsize']} instead of "
                        f"{header['pixelsize']}")
    for key in ("voltage", "C3", "gain"):
        if np.float32(got_header[key]) != np.float32(header[key]):
            problems.append(f"{key} {got_header[key]} instead of {header[key]}")
    if new_meta != meta:
        problems.append("JSON metadata differs")
    if problems:
        raise UpgradeError(f"{original.name}: verification of the rewritten file failed: "
                           + "; ".join(problems))


def _compare_data(image: Any, got: Any) -> list[str]:
    """Problems found comparing two images (arrays or frame readers) slice by slice."""
    want, have = _as_slices(image), _as_slices(got)
    if np.dtype(want.dtype) != np.dtype(have.dtype) or tuple(want.shape) != tuple(have.shape):
        return [f"data {have.dtype}{tuple(have.shape)} instead of "
                f"{want.dtype}{tuple(want.shape)}"]
    for z in range(want.shape[0]):
        a, b = np.ascontiguousarray(want[z]), np.ascontiguousarray(have[z])
        if not np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)):
            return [f"data differ in z-slice {z}"]
    return []


def _as_slices(image: Any) -> Any:
    """An indexable stack of z-slices from an array, a frame reader or a list of frames."""
    if isinstance(image, list):
        image = np.stack(image)
    return np.asarray(image)[None] if len(image.shape) == 2 else image


def ensure_backup(original: int, path: Path, backup: Path) -> None:
    """Copy the file ``path``, open as descriptor ``original``, byte for byte to
    ``backup`` (reusing an identical existing copy); ``path`` itself is not reopened.

    Raises
    ------
    UpgradeError
        If ``backup`` exists with different contents (it is never overwritten).
    """
    if backup.exists():
        if backup.is_file() and same_bytes(original, backup):
            return
        raise UpgradeError(f"{path}: backup {backup} already exists with different "
                           "contents; not overwriting it (choose another --backup-dir)")
    backup.parent.mkdir(parents=True, exist_ok=True)
    temp = backup.with_name(f".{backup.name}{_TEMP_TAG}{secrets.token_hex(4)}.partial")
    try:
        copy_bytes(original, temp)
        shutil.copystat(path, temp)
        _fsync_file(temp)
        if not same_bytes(original, temp):
            raise UpgradeError(f"{path}: the backup copy {temp} differs from the original")
        if not publish_no_clobber(temp, backup) and not same_bytes(original, backup):
            raise UpgradeError(f"{path}: backup {backup} appeared with different contents; "
                               "not overwriting it")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _fsync_dir(backup.parent)


def copy_bytes(fd: int, target: Path) -> None:
    """Write every byte of the file open as ``fd`` to the new file ``target``."""
    with open(target, "wb") as out:
        for block in blocks(fd):
            out.write(block)


def same_bytes(fd: int, other: Path) -> bool:
    """True when the file ``other`` holds exactly the bytes of the file open as ``fd``."""
    if os.fstat(fd).st_size != other.stat().st_size:
        return False
    with open(other, "rb") as f:
        return all(f.read(len(block)) == block for block in blocks(fd)) and not f.read(1)


def publish_no_clobber(temp: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Give the finished file ``temp`` the name ``target`` unless ``target`` exists.

    Uses a hard link, which never replaces an existing file (on file systems
    without hard links: a rename after a check). Returns False if ``target``
    already existed; ``temp`` itself is left for the caller to remove.
    """
    try:
        os.link(temp, target)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    if os.path.lexists(target):
        return False
    os.replace(temp, target)
    return True


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files a killed earlier upgrade of ``path`` left behind."""
    if not path.parent.is_dir():
        return
    for pattern in (f".{path.name}{_TEMP_TAG}*.partial", f"..{path.name}{_TEMP_TAG}*"):
        for stale in path.parent.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot sync a directory
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` so two upgrades never run on it at once."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpgradeError(f"{folder}: another upgrade is running on this folder") from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- folder

def upgrade_folder(folder: str | os.PathLike, recursive: bool = False,
                   backup_dir: str | os.PathLike | None = None, dry_run: bool = False,
                   progress: bool | None = None,
                   report: Callable[[FileResult], str | None] | None = None
                   ) -> UpgradeSummary:
    """Upgrade every old MRCZ file in ``folder``; leave current files untouched.

    Parameters
    ----------
    folder : the folder to scan (its ``.mrc``, ``.mrcz`` and ``.mrcs`` files).
    recursive : also scan subfolders (never the backup folder).
    backup_dir : where originals are copied (default ``folder/backup``); the
        relative path of each file is kept below it.
    dry_run : only report what would be upgraded.
    progress : draw a progress bar on stderr (default: when it is a terminal).
    report : called with each :class:`FileResult` as it is known; a line it
        returns is printed to stdout (without breaking the progress bar).

    Returns
    -------
    UpgradeSummary
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder", os.fspath(folder))
    backup_root = Path(backup_dir) if backup_dir is not None else folder / "backup"
    summary = UpgradeSummary(folder, backup_root, dry_run)
    files = find_files(folder, recursive, exclude=backup_root)
    lock = contextlib.nullcontext() if dry_run else _folder_lock(folder)
    with lock, Progress(len(files), "upgrade", enabled=progress) as bar:
        for path in files:
            result = upgrade_file(path, backup_root / path.relative_to(folder), dry_run)
            summary.results.append(result)
            line = report(result) if report is not None else None
            if line:
                bar.write(line)
            bar.update(item=path.name)
    return summary


# ----------------------------------------------------------------------------- frame index

INDEXED, WOULD_INDEX = "indexed", "would index"


def index_file(path: str | os.PathLike, backup: str | os.PathLike,
               dry_run: bool = False) -> FileResult:
    """Add a frame index to a compressed file that has none, keeping its original at
    ``backup``; its chunks are not rewritten.

    Every chunk is decoded first (a chunk that cannot be is not certified by a
    checksum: the file fails). The trailer is then written after the last chunk
    and flushed to disk; until that write completes, readers see the file as
    before (a cut-off trailer is ignored and a second run completes it).
    Returns a :class:`FileResult`; errors are reported in it, never raised.
    """
    path, backup = Path(path), Path(backup)
    try:
        with _open_to_index(path, dry_run) as raw:
            return _index(MRCSource(raw, describe(path), path), path, backup, dry_run)
    except (OSError, MRCZError, ValueError, TypeError, RuntimeError) as err:
        return FileResult(path, FAILED, str(err) or type(err).__name__)


def _open_to_index(path: Path, dry_run: bool) -> io.FileIO:
    """``path`` unbuffered (a descriptor the reader reads by position), open for update
    unless ``dry_run`` or the file is read-only."""
    if not dry_run:
        with contextlib.suppress(PermissionError):
            return open(path, "r+b", buffering=0)
    return open(path, "rb", buffering=0)


def _index(src: MRCSource, path: Path, backup: Path, dry_run: bool) -> FileResult:
    """:func:`index_file` of the file open as ``src`` (for update unless ``dry_run``)."""
    info = src.info
    if is_legacy(info):
        return FileResult(path, FAILED, "old MRCZ layout: run `mrcz upgrade` first, "
                          "which writes the index too")
    if info.compressor is None:
        return FileResult(path, CURRENT, "plain MRC: no index needed")
    table = src.chunk_table()
    if table.source == "index":
        return FileResult(path, CURRENT, "already indexed")
    nz = info.shape[0]
    if dry_run:
        return FileResult(path, WOULD_INDEX, f"{nz} chunks")
    if not src.file.writable():
        raise UpgradeError(f"{path}: the file is read-only; cannot add its frame index")
    for _ in MRCZReader.of_source(src):  # every chunk must decode
        pass
    ensure_backup(src.fd, path, backup)
    index = table.frame_index(src.fd)
    os.pwrite(src.fd, index.pack(), index.end)
    os.ftruncate(src.fd, index.end + frameindex.trailer_bytes(len(index)))
    os.fsync(src.fd)
    return FileResult(path, INDEXED, f"{nz} chunks")


def index_folder(folder: str | os.PathLike, recursive: bool = False,
                 backup_dir: str | os.PathLike | None = None,
                 dry_run: bool = False) -> list[FileResult]:
    """Add a frame index to every compressed file in ``folder`` that has none
    (originals copied to ``backup_dir``, default ``folder/backup``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder", os.fspath(folder))
    backup_root = Path(backup_dir) if backup_dir is not None else folder / "backup"
    lock = contextlib.nullcontext() if dry_run else _folder_lock(folder)
    with lock:
        return [index_file(path, backup_root / path.relative_to(folder), dry_run)
                for path in find_files(folder, recursive, exclude=backup_root)]
