"""Every file of the compatibility corpus reads exactly as its writer recorded."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mrcz
from conftest import corpus_files

MRC_SUFFIXES = (".mrc", ".mrcz", ".mrcs")
FILES = (corpus_files("mrcz041", MRC_SUFFIXES) + corpus_files("mrcz060", MRC_SUFFIXES)
         + corpus_files("mrcfile", MRC_SUFFIXES))
UNITS_PER_ANGSTROM = {"\\AA": 1.0, "nm": 0.1, "\\mum": 1e-4, "pm": 100.0}


def _expected(path: Path) -> tuple[np.ndarray, dict]:
    return np.load(f"{path}.npy"), json.loads(Path(f"{path}.json").read_text())


def _as_stack(image) -> np.ndarray:
    return np.stack(image) if isinstance(image, list) else image


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_corpus_values_and_kind(path: Path) -> None:
    expected, record = _expected(path)
    image, header = mrcz.readMRC(path)
    assert isinstance(image, list) == (record["kind"] == "list")
    got = _as_stack(image)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert header["dimensions"].tolist()[-2:] == list(expected.shape[-2:])


@pytest.mark.parametrize("path", [p for p in FILES if "mrcz0" in p.parent.name],
                         ids=lambda p: p.name)
def test_corpus_header_fields(path: Path) -> None:
    _, record = _expected(path)
    kwargs = record.get("kwargs", {})
    units = kwargs.get("pixelunits", "\\AA")
    _, header = mrcz.readMRC(path, pixelunits=units)
    pixelsize = np.broadcast_to(np.atleast_1d(kwargs.get("pixelsize", 0.1)), (3,))
    expected_pixelsize = pixelsize.copy()
    ndim = np.load(f"{path}.npy", mmap_mode="r").ndim
    if ndim == 2 or (record["kind"] == "list" and len(np.atleast_1d(kwargs.get("pixelsize", 0.1))) < 3):
        expected_pixelsize = expected_pixelsize[1:]
        got = header["pixelsize"][1:]
    else:
        got = header["pixelsize"]
    np.testing.assert_allclose(got, expected_pixelsize, rtol=1e-5)
    assert header["voltage"] == pytest.approx(kwargs.get("voltage", 0.0))
    assert header["C3"] == pytest.approx(kwargs.get("C3", 0.0))
    assert header["gain"] == pytest.approx(kwargs.get("gain", 1.0))
    expected_compressor = kwargs.get("compressor")
    if expected_compressor == "lz4hc" and path.parent.name == "mrcz041":
        expected_compressor = "lz4"  # before 0.6 lz4hc was recorded as lz4's id, 2
    assert header["compressor"] == expected_compressor
    for key, value in kwargs.get("meta", {}).items():
        assert header[key] == value


@pytest.mark.parametrize("name", ["EMD-3197.map", "EMD-3001.map"])
def test_emdb_maps_match_mrcfile(corpus: Path, name: str) -> None:
    mrcfile = pytest.importorskip("mrcfile")
    path = corpus / "emdb" / name
    image, header = mrcz.readMRC(path)
    with mrcfile.open(path, permissive=True) as reference:
        np.testing.assert_array_equal(image, reference.data)
        voxel = reference.voxel_size
        np.testing.assert_allclose(header["pixelsize"], [voxel.z, voxel.y, voxel.x], rtol=1e-6)


def test_volume_stack_voxel_size_follows_sampling(corpus: Path) -> None:
    mrcfile = pytest.importorskip("mrcfile")
    path = corpus / "mrcfile" / "mrcfile_stack.mrcs"
    _, header = mrcz.readMRC(path)
    with mrcfile.open(path) as reference:
        voxel = reference.voxel_size
    np.testing.assert_allclose(header["pixelsize"], [voxel.z, voxel.y, voxel.x], rtol=1e-6)
