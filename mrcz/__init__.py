"""mrcz: MRC2014 and compressed MRCZ files, Gatan DM3/DM4 files, for cryo-EM archives."""
from importlib.util import find_spec as _find_spec

from .codec import BLOSC1_CODECS
from .errors import CorruptDataError, FormatError, MRCZError, UnsupportedError
from .futures import (AsyncQueueFull, aread_dm4, aread_mrc, async_executor, async_read_dm4,
                      async_read_mrc, async_status, async_write_mrc, asyncReadDM4, asyncReadMRC,
                      asyncStatus, asyncWriteMRC, awrite_mrc, flush_async, flushAsync,
                      set_async_limits, set_async_workers, setAsyncLimits, setAsyncWorkers)
from .header import (CCPEM_ENUM, COMPRESSOR_ENUM, EMAN2_ENUM, REVERSE_CCPEM_ENUM,
                     REVERSE_COMPRESSOR_ENUM)
from .mrc import (default_header, defaultHeader, read_mrc, read_mrc_header, readMRC,
                  readMRCHeader, set_default_threads, setDefaultThreads, write_mrc,
                  write_mrc_header, writeMRC, writeMRCHeader)
from .stream import MRCZReader, MRCZWriter, iter_frames
from .fileobject import MrcFile, mmap, new, new_mmap, open, open_async, read, validate, write
from .version import __version__

#: The original package's names for the background pool and its size.
_asyncExecutor, _setAsyncWorkers = async_executor, set_async_workers

BLOSC_PRESENT = True
CAN_COMPRESS = True
# blosc2 is optional (it reads chunks written by the original's blosc2 backend);
# look for it without importing it, which would cost start-up time and memory.
BLOSC2_PRESENT = _find_spec("blosc2") is not None

__all__ = [
    "__version__", "readMRC", "writeMRC", "asyncReadMRC", "asyncWriteMRC", "readMRCHeader",
    "writeMRCHeader", "defaultHeader", "setDefaultThreads", "readDM", "readDM4",
    "asyncReadDM4", "read_mrc", "write_mrc", "async_read_mrc", "async_write_mrc",
    "read_mrc_header", "write_mrc_header", "default_header", "set_default_threads",
    "read_dm", "read_dm4", "async_read_dm4", "CCPEM_ENUM", "REVERSE_CCPEM_ENUM",
    "COMPRESSOR_ENUM", "REVERSE_COMPRESSOR_ENUM", "EMAN2_ENUM", "BLOSC_PRESENT",
    "BLOSC2_PRESENT", "CAN_COMPRESS", "MRCZError", "FormatError", "CorruptDataError",
    "UnsupportedError", "BLOSC1_CODECS", "test", "_asyncExecutor", "_setAsyncWorkers",
    "setAsyncWorkers", "set_async_workers", "MRCZReader", "MRCZWriter", "iter_frames",
    "setAsyncLimits", "set_async_limits", "flushAsync", "flush_async", "asyncStatus",
    "async_status", "aread_mrc", "awrite_mrc", "aread_dm4", "AsyncQueueFull",
    "DMFrameReader", "iter_dm_frames",
    "MrcFile", "open", "new", "read", "write", "mmap", "new_mmap", "open_async", "validate",
]  # to_dask is left out: ``from mrcz import *`` must not need the optional dask

_DM_NAMES = frozenset({"readDM", "readDM4", "read_dm", "read_dm4", "DMFrameReader",
                       "iter_dm_frames", "dm_header_for_mrc"})


def __getattr__(name: str):
    """Import the DM reader, and dask for ``to_dask``, on first use (neither is needed to
    read MRC files)."""
    if name in _DM_NAMES:
        from . import dm
        return getattr(dm, name)
    if name == "to_dask":
        from .todask import to_dask
        return to_dask
    raise AttributeError(f"module 'mrcz' has no attribute {name!r}")


def test(verbosity: int = 2) -> int:
    """Run the tests; returns pytest's exit code (0: all passed).

    In a source checkout this runs the full suite in ``tests/``; in an installed
    package, the self-test shipped with it (:mod:`mrcz.selftest`: round trips of
    every dtype, codec and layout). Needs pytest: ``pip install "mrcz[test]"``.
    """
    import pathlib

    try:
        import pytest
    except ImportError:
        raise ImportError('mrcz.test() needs pytest: pip install "mrcz[test]"') from None
    package = pathlib.Path(__file__).resolve().parent
    tests = package.parent / "tests"
    target = tests if (tests / "conftest.py").is_file() else package / "selftest.py"
    flag = {0: "-q", 1: "", 2: "-v"}.get(min(max(verbosity, 0), 2), "-v")
    return int(pytest.main([a for a in (str(target), flag, "-p", "no:cacheprovider") if a]))
