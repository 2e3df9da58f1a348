"""Length units of the ``pixelsize`` keyword and header key, and voxel sizes in Angstrom."""
from __future__ import annotations

from typing import Any

import numpy as np

ANGSTROM = "\\AA"
#: How many of each unit make one Angstrom.
UNITS_PER_ANGSTROM = {"\\AA": 1.0, "A": 1.0, "Å": 1.0, "nm": 0.1, "\\mum": 1e-4, "um": 1e-4,
                      "µm": 1e-4, "pm": 100.0}


def units_per_angstrom(pixelunits: str) -> float:
    """Conversion factor from Angstrom to ``pixelunits``."""
    try:
        return UNITS_PER_ANGSTROM[pixelunits]
    except KeyError:
        raise ValueError(f"unknown pixelunits {pixelunits!r}; use one of "
                         f"{sorted(UNITS_PER_ANGSTROM)}") from None


def pixelsize_angstrom(pixelsize: Any, pixelunits: str) -> np.ndarray:
    """``[z, y, x]`` voxel size in Angstrom from 1, 2 or 3 values in ``pixelunits``."""
    values = np.atleast_1d(np.asarray(pixelsize, dtype=np.float64)).ravel()
    if values.size not in (1, 2, 3):
        raise ValueError(f"pixelsize must have 1, 2 or 3 elements, got {values.size}")
    angstrom = np.broadcast_to(values, (3,)) if values.size != 2 else values
    angstrom = angstrom / units_per_angstrom(pixelunits)
    if values.size == 2:  # [y, x]: z is 10 Angstrom, as the original package writes it
        angstrom = np.array([10.0, *angstrom])
    return angstrom
