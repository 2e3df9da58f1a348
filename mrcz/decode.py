"""Stored MRC values to what callers get: native byte order, complex64, uint8, unpacked uint4."""
from __future__ import annotations

import numpy as np


def unpack_uint4(packed: np.ndarray, nx: int) -> np.ndarray:
    """Two pixels per byte, the even pixel in the low nibble; rows padded to whole bytes."""
    out = np.empty((*packed.shape[:-1], 2 * packed.shape[-1]), dtype=np.uint8)
    np.bitwise_and(packed, 0x0F, out=out[..., 0::2])
    np.right_shift(packed, 4, out=out[..., 1::2])
    return out[..., :nx]


def to_native(data: np.ndarray, widened_uint8: bool = False) -> np.ndarray:
    """Convert stored values to what the caller gets: native byte order, real dtypes.

    ``widened_uint8``: the file stores uint8 data as uint16 (mode 6), as the header says.
    """
    if data.dtype.names:  # mode 3: complex int16
        return (data["re"] + 1j * data["im"].astype(np.float32)).astype(np.complex64)
    if widened_uint8:
        return data.astype(np.uint8)
    if not data.dtype.isnative:
        data = data.byteswap(inplace=True).view(data.dtype.newbyteorder("="))
    return data
