"""napari reader plugin (npe2): MRC, MRCZ and DM3/DM4 files as lazy layers scaled in Angstrom.

Declared in ``mrcz/napari.yaml``; napari finds it through the ``napari.manifest``
entry point once ``mrcz[napari]`` is installed. Frames are read (and
decompressed) only when napari shows them.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .dm import dm_header_for_mrc, readDM
from .reader import MRCSource
from .todask import source_to_dask, to_dask

#: Names this reader accepts (also listed in napari.yaml).
SUFFIXES = (".mrc", ".mrcs", ".mrcz", ".map", ".st", ".ali", ".dm3", ".dm4",
            ".mrc.gz", ".mrc.bz2", ".mrc.zst", ".mrcs.gz", ".mrcs.bz2", ".mrcs.zst")
_DM_SUFFIXES = (".dm3", ".dm4")

LayerData = tuple[Any, dict, str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari's ``get_reader`` hook: :func:`read_layers` for names this plugin reads, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(os.fspath(p).lower().endswith(SUFFIXES) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """One image layer per file: a dask array of its frames, ``scale`` = voxel size in Angstrom."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [_layer(os.fspath(p)) for p in paths]


def _layer(path: str) -> LayerData:
    data, zyx = _dm_layer(path) if path.lower().endswith(_DM_SUFFIXES) else _mrc_layer(path)
    scale = [float(s) for s in zyx][-data.ndim:]
    scale = [scale[0]] * (data.ndim - len(scale)) + scale
    attributes = {"name": os.path.basename(path), "scale": scale,
                  "metadata": {"path": path, "units": "Angstrom"}}
    return data, attributes, "image"


def _mrc_layer(path: str) -> tuple[Any, list[float]]:
    """The frames of an MRC/MRCZ file and its ``[z, y, x]`` voxel size in Angstrom (1.0
    where the file does not say), from one open of the file."""
    with MRCSource.open(path, permissive=True) as src:
        zyx = [float(s) if s > 0 else 1.0 for s in src.header_dict()["pixelsize"]]
        return source_to_dask(src), zyx


def _dm_layer(path: str) -> tuple[Any, list[float]]:
    """The frames of a DM3/DM4 file and its ``[z, y, x]`` voxel size in Angstrom."""
    _, meta = readDM(path, lazy=True)
    return to_dask(path), list(dm_header_for_mrc(meta).get("pixelsize", [1.0, 1.0, 1.0]))
