"""Compatibility module: the original package's ``mrcz.ioMRC`` names."""
from . import BLOSC2_PRESENT, BLOSC_PRESENT, CAN_COMPRESS  # noqa: F401
from .futures import _asyncExecutor, _setAsyncWorkers, asyncReadMRC, asyncWriteMRC  # noqa: F401
from .header import (CCPEM_ENUM, COMPRESSOR_ENUM, EMAN2_ENUM, REVERSE_CCPEM_ENUM,  # noqa: F401
                     REVERSE_COMPRESSOR_ENUM)
from .mrc import (defaultHeader, readMRC, readMRCHeader, setDefaultThreads,  # noqa: F401
                  writeMRC, writeMRCHeader)
