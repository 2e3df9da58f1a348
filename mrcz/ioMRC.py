"""Compatibility module: the original package's ``mrcz.ioMRC`` names."""
from . import BLOSC2_PRESENT, BLOSC_PRESENT, CAN_COMPRESS  # noqa: F401
from .futures import async_executor, asyncReadMRC, asyncWriteMRC, set_async_workers  # noqa: F401
from .header import (CCPEM_ENUM, COMPRESSOR_ENUM, EMAN2_ENUM, REVERSE_CCPEM_ENUM,  # noqa: F401
                     REVERSE_COMPRESSOR_ENUM)
from .mrc import (defaultHeader, readMRC, readMRCHeader, setDefaultThreads,  # noqa: F401
                  writeMRC, writeMRCHeader)

_asyncExecutor, _setAsyncWorkers = async_executor, set_async_workers
