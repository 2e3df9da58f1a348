"""The self-test :func:`mrcz.test` runs in an installed package: round trips of every layout.

A pytest module shipped with the package (the full suite lives in the source
tree's ``tests/``): each test writes a file with this installation, reads it
back and compares with numpy, so a broken codec library or a wrong build shows.
"""
from __future__ import annotations

import numpy as np
import pytest

import mrcz

DTYPES = ["int8", "int16", "uint16", "int32", "uint32", "float16", "float32", "complex64",
          "uint8"]
COMPRESSORS = [None, "zstd", "lz4", "lz4hc", "zlib", "blosclz"]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _movie(rng: np.random.Generator, dtype: str, shape=(3, 20, 24)) -> np.ndarray:
    values = rng.poisson(3.0, shape)
    if dtype == "complex64":
        return (values + 1j * rng.poisson(2.0, shape)).astype(dtype)
    return values.astype(dtype)


@pytest.mark.parametrize("compressor", COMPRESSORS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_array_round_trip(tmp_path, rng, dtype, compressor):
    movie = _movie(rng, dtype)
    path = tmp_path / "movie.mrcz"
    mrcz.writeMRC(movie, path, compressor=compressor, pixelsize=[1.5, 1.25, 1.25],
                  voltage=300.0, meta={"dose": 1.2})
    back, header = mrcz.readMRC(path)
    assert back.dtype == movie.dtype and np.array_equal(back, movie)
    np.testing.assert_allclose(header["pixelsize"], [1.5, 1.25, 1.25], rtol=1e-6)
    assert header["voltage"] == 300.0 and header["dose"] == 1.2
    assert header["compressor"] == compressor


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_list_of_frames_and_one_frame(tmp_path, rng, compressor):
    frames = list(_movie(rng, "float32", (4, 16, 18)))
    path = tmp_path / "frames.mrcz"
    mrcz.writeMRC(frames, path, compressor=compressor)
    back, _ = mrcz.readMRC(path)
    assert isinstance(back, list) and len(back) == 4
    assert all(np.array_equal(a, b) for a, b in zip(back, frames))
    one, header = mrcz.readMRC(path, idx=2)  # a list of one frame, as mrcz 0.6.0 gives
    assert isinstance(one, list) and len(one) == 1
    assert np.array_equal(one[0], frames[2]) and header["dimensions"][0] == 1


@pytest.mark.parametrize("suffix", [".mrc.gz", ".mrc.bz2", ".mrc.zst"])
def test_whole_file_compression(tmp_path, rng, suffix):
    movie = _movie(rng, "int16")
    path = tmp_path / f"movie{suffix}"
    mrcz.writeMRC(movie, path)
    back, _ = mrcz.readMRC(path)
    assert np.array_equal(back, movie)


def test_append_to_compressed_file(tmp_path, rng):
    movie = _movie(rng, "uint16", (5, 16, 16))
    path = tmp_path / "movie.mrcz"
    mrcz.writeMRC(movie[:3], path, compressor="zstd")
    mrcz.writeMRC(movie[3:], path, compressor="zstd", idx=3)
    back, header = mrcz.readMRC(path)
    assert np.array_equal(back, movie) and list(header["dimensions"]) == [5, 16, 16]


def test_damaged_file_is_refused(tmp_path, rng):
    path = tmp_path / "movie.mrcz"
    mrcz.writeMRC(_movie(rng, "int8"), path, compressor="zstd")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(mrcz.CorruptDataError, match="movie.mrcz"):
        mrcz.readMRC(path)
