"""Tests of the DigitalMicrograph reader, :mod:`mrcz.dm`."""
from __future__ import annotations

import json
import math
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import numpy.testing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dm_builders as dmb
from conftest import corpus_files
from mrcz import dm
from mrcz.errors import CorruptDataError, FormatError, UnsupportedError

DM_FILES = corpus_files("dm", (".dm3", ".dm4"))
FAILURES = (ValueError, OSError, EOFError)


def _id(path: Path | None) -> str:
    return "none" if path is None else path.relative_to(path.parents[1]).as_posix()


corpus_params = pytest.mark.parametrize("path", DM_FILES or [None], ids=_id)


def reference(path: Path) -> list[tuple[np.ndarray, dict]]:
    """(array, json description) of every image rosettasciio found in ``path``."""
    info = json.loads(Path(f"{path}.json").read_text())
    return [(np.load(f"{path}.npy" if k == 0 else f"{path}.{k}.npy"), image)
            for k, image in enumerate(info["images"])]


def write_dm(tmp_path: Path, parts: list, name: str = "synthetic.dm4") -> Path:
    return dmb.write(tmp_path / name, parts)


# ---------------------------------------------------------------------------
# Real files
# ---------------------------------------------------------------------------
@corpus_params
def test_corpus_matches_reference(corpus, path):
    images = reference(path)
    for k, (expected, info) in enumerate(images):
        data, meta = dm.readDM(path, image=k)
        sizes = tuple(axis["size"] for axis in info["axes"])
        if meta["data_type"] in (27, 28) and sizes[-1] % 2:
            # rosettasciio drops the last column of odd-width packed FFTs;
            # we return the full width the Dimensions tag declares.
            assert data.shape == sizes
            data = data[..., :expected.shape[-1]]
        assert data.dtype == expected.dtype
        assert data.shape == expected.shape
        npt.assert_array_equal(data, expected)
        assert meta["title"] == info["title"]
        for axis, ref in zip(meta["axes"], info["axes"]):
            assert axis["name"] == ref["name"]
            assert axis["size"] == ref["size"]
            assert axis["scale"] == ref["scale"]
            assert axis["offset"] == ref["offset"]
            assert axis["units"] == ref["units"]
        for key, field in (("beam_energy_keV", "voltage"), ("magnification", "magnification"),
                           ("exposure_s", "exposure")):
            if info.get(key) is not None:
                assert meta[field] == info[key]
    with pytest.raises(IndexError, match="image"):
        dm.readDM(path, image=len(images))


@corpus_params
def test_corpus_lazy_equals_eager(corpus, path):
    for k in range(len(reference(path))):
        eager, _ = dm.readDM(path, image=k)
        lazy, meta = dm.readDM(path, image=k, lazy=True)
        assert not lazy.flags.writeable
        if meta["data_type"] not in (5, 8, 23, 27, 28):
            assert isinstance(lazy, np.memmap)
        npt.assert_array_equal(lazy, eager)
        del lazy


@corpus_params
def test_corpus_frames_equal_stack(corpus, path):
    eager, _ = dm.readDM(path)
    frames = list(dm.iter_dm_frames(path))
    stack = frames[0] if len(frames) == 1 else np.stack(frames)
    assert stack.dtype == eager.dtype
    npt.assert_array_equal(stack, eager)


@corpus_params
def test_corpus_tags_are_json_without_payload(corpus, path):
    _, meta = dm.readDM(path)
    json.dumps(meta["tags"])
    entries = list(meta["tags"]["ImageList"].values())
    for entry in entries:
        described = entry["ImageData"]["Data"]
        assert set(described) == {"offset", "nbytes", "count", "type"}
    json.dumps(dm.dm_header_for_mrc(meta)["meta"])


@corpus_params
def test_corpus_legacy_interface(corpus, path):
    legacy = dm.readDM4(path)
    assert legacy.f is None
    data, meta = dm.readDM(path)
    flipped = data[:, ::-1, ...] if data.ndim >= 2 else data
    assert any(np.array_equal(im.shape, meta["shape"][:im.shape.size])
               and np.array_equal(im.imageData, flipped) for im in legacy.im)


def test_corpus_microscope_fields(corpus):
    folder = corpus / "dm"
    _, meta = dm.readDM(folder / "2D" / "test_diffraction_pattern.dm3")
    assert meta["voltage"] == 200.0
    assert meta["C3"] == 1.31
    assert meta["exposure"] == 0.2
    assert meta["frame_count"] == 1 and meta["frame_time"] == 0.2
    assert meta["binning"] == [1, 1]
    assert meta["detector"] == "BM-UltraScan"
    assert meta["microscope"] == "FEI Tecnai"
    assert (meta["acquisition_date"], meta["acquisition_time"]) == ("7/9/2014", "6:56:37 PM")
    assert meta["magnification"] == pytest.approx(320.0)
    assert np.isnan(meta["pixelsize"]).all()          # 1/nm is not a length

    _, meta = dm.readDM(folder / "openNCEM" / "dmTest_3D_int16_64,65,66.dm4")
    npt.assert_allclose(meta["pixelsize"], [4e4, 30.0, 0.02])   # um, nm, pm
    assert meta["frame_count"] == 66
    _, meta = dm.readDM(folder / "openNCEM" / "dmTest_float32_nonSquare_diffPixelSize.dm3")
    npt.assert_allclose(meta["pixelsize"], [2.0, 10.0])         # A, nm
    _, meta = dm.readDM(folder / "test_stackbuilder_imagestack.dm3")
    assert meta["voltage"] == 200.0                              # from the source tags
    assert meta["intensity"]["units"] == "e-"
    header = dm.dm_header_for_mrc(meta)
    assert header["gain"] == pytest.approx(1 / meta["intensity"]["scale"])
    x = 0.05998290330171585 * 1e4
    assert header["pixelsize"] == pytest.approx([x, x, x])


MUTATED = ["2D/test_STEM_image.dm3", "2D/test-MonarcCL_mono-image.dm4", "3D/test-8.dm4"]


@pytest.mark.parametrize("name", MUTATED)
def test_corrupted_copies_fail_cleanly(corpus, tmp_path, rng, name):
    source = corpus / "dm" / name
    raw = source.read_bytes()
    _, meta = dm.readDM(source)
    payloads = [(d["offset"], d["offset"] + d["nbytes"]) for d in
                (e["ImageData"]["Data"] for e in meta["tags"]["ImageList"].values())]
    tag_area = np.ones(len(raw), bool)
    for start, stop in payloads:
        tag_area[start:stop] = False
    positions = np.flatnonzero(tag_area)
    copies = [raw[:n] for n in [0, 4, 15, 16, 17, 40, *rng.integers(0, len(raw), 30)]]
    for _ in range(120):
        mutated = bytearray(raw)
        for pos in rng.choice(positions, size=int(rng.integers(1, 4))):
            mutated[pos] ^= int(rng.integers(1, 256))
        copies.append(bytes(mutated))
    target = tmp_path / source.name
    for copy in copies:
        target.write_bytes(copy)
        start = time.perf_counter()
        try:
            dm.readDM(target)
            list(dm.iter_dm_frames(target))
        except FAILURES:
            pass
        assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------
# The interface of mrcz 0.6
# ---------------------------------------------------------------------------
class TestReadDM4:

    @pytest.fixture
    def dm4_file(self, rng, tmp_path):
        image = rng.normal(size=(6, 8)).astype("float32")
        path = tmp_path / "synthetic.dm4"
        path.write_bytes(dmb.legacy_dm4(image))
        return str(path), image

    def test_image_data(self, dm4_file):
        path, image = dm4_file
        dm4 = dm.readDM4(path)
        assert len(dm4.im) == 1
        npt.assert_array_equal(dm4.im[0].imageData, image[:, ::-1])
        npt.assert_array_equal(dm4.im[0].shape, image.shape)

    def test_singleton_and_array_tags(self, dm4_file):
        info = dm.readDM4(dm4_file[0]).im[0].imageInfo
        npt.assert_almost_equal(info["Voltage"], 300000.0)
        npt.assert_almost_equal(info["C3"], 2.7, decimal=6)
        npt.assert_almost_equal(info["IntensityOrigin"], 0.25)
        npt.assert_almost_equal(info["IntensityScale"], 2.5)
        assert info["IntensityUnits"] == "e-"
        assert info["HorzFlip"] == 1
        assert info["VertFlip"] == 0

    def test_struct_tag(self, dm4_file):
        info = dm.readDM4(dm4_file[0]).im[0].imageInfo
        assert list(info["DetectorPixelSize"]) == [5, 14.0]

    def test_file_handle_is_released(self, dm4_file):
        assert dm.readDM4(dm4_file[0]).f is None

    def test_aliases(self):
        assert dm.read_dm4 is dm.readDM4
        assert dm.read_dm is dm.readDM

    def test_new_reader_reads_it_unflipped(self, dm4_file):
        path, image = dm4_file
        data, meta = dm.readDM(path)
        npt.assert_array_equal(data, image)
        assert meta["voltage"] == 300.0
        assert dm.dm_header_for_mrc(meta)["gain"] == 0.4


# ---------------------------------------------------------------------------
# Synthetic files: data types, byte orders, versions
# ---------------------------------------------------------------------------
PLAIN_DTYPES = ["int8", "int16", "int32", "uint8", "uint16", "uint32", "float32",
                "float64", "complex64", "complex128", "bool"]
FORMATS = pytest.mark.parametrize("version,order", [(3, "<"), (3, ">"), (4, "<"), (4, ">")])


def random_data(rng, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.startswith("complex"):
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    if dtype.startswith("float"):
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


@FORMATS
@pytest.mark.parametrize("dtype", PLAIN_DTYPES)
def test_plain_types_round_trip(tmp_path, rng, version, order, dtype):
    image = random_data(rng, dtype, (3, 5, 7))
    path = write_dm(tmp_path, dmb.dm_file([dmb.image_entry(image, order=order)],
                                          version=version, order=order))
    data, meta = dm.readDM(path)
    assert data.dtype == np.dtype(dtype) and data.dtype.isnative
    npt.assert_array_equal(data, image)
    lazy, _ = dm.readDM(path, lazy=True)
    npt.assert_array_equal(lazy, image)
    assert meta["version"] == version and meta["byteorder"] == order
    del lazy


@FORMATS
@pytest.mark.parametrize("data_type", [8, 23])
def test_colour_images(tmp_path, rng, version, order, data_type):
    rgba = rng.integers(0, 256, (2, 3, 5, 4)).astype(np.uint8)
    entry = dmb.image_entry(rgba, data_type=data_type, order=order)
    path = write_dm(tmp_path, dmb.dm_file([entry], version=version, order=order))
    data, meta = dm.readDM(path)
    assert data.dtype == np.uint8
    npt.assert_array_equal(data, rgba)
    assert [a["name"] for a in meta["axes"]] == ["z", "y", "x", "RGBA"]
    assert len(meta["pixelsize"]) == 3
    npt.assert_array_equal(np.stack(list(dm.iter_dm_frames(path))), rgba)
    lazy, _ = dm.readDM(path, lazy=True)
    npt.assert_array_equal(lazy, rgba)
    assert not lazy.flags.writeable


def half_plane(spectrum: np.ndarray) -> np.ndarray:
    """DM's stored half of a centred spectrum: column c holds x frequency -c."""
    width = spectrum.shape[-1]
    return spectrum[..., width // 2 - np.arange(width // 2 + 1)]


@pytest.mark.parametrize("shape", [(6, 8), (5, 7), (2, 4, 6)])
@pytest.mark.parametrize("data_type", [27, 28])
def test_half_plane_fft_is_unpacked(tmp_path, rng, shape, data_type):
    image = rng.normal(size=shape)
    spectrum = np.fft.fftshift(np.fft.fft2(image), axes=(-2, -1))
    dtype = np.complex64 if data_type == 27 else np.complex128
    entry = dmb.image_entry(half_plane(spectrum).astype(dtype), data_type=data_type, dims=shape,
                            order=">")
    path = write_dm(tmp_path, dmb.dm_file([entry], version=4, order=">"))
    data, meta = dm.readDM(path)
    assert data.dtype == dtype and data.shape == shape
    npt.assert_allclose(data, spectrum, rtol=1e-5, atol=1e-5 * np.abs(spectrum).max())
    frames = list(dm.iter_dm_frames(path))
    npt.assert_array_equal(np.stack(frames) if len(shape) == 3 else frames[0], data)


def pack_spectrum(spectrum: np.ndarray) -> np.ndarray:
    """DM's packed complex storage (DataType 5) of a 2N x 2N spectrum."""
    n = spectrum.shape[0] // 2
    pairs = np.zeros((2 * n, n), np.complex64)
    pairs[0, 0] = spectrum[n, 0].real + 1j * spectrum[0, 0].real
    pairs[n, 0] = spectrum[n, n].real + 1j * spectrum[0, n].real
    pairs[:n, 1:] = spectrum[:n, n + 1:]
    pairs[1:n, 0] = spectrum[n + 1:, 0]
    pairs[n, 1:] = spectrum[n, n + 1:]
    pairs[n + 1:] = spectrum[n + 1:, n:]
    return pairs.view(np.float32)


@pytest.mark.parametrize("size", [2, 8])
@FORMATS
def test_packed_complex_is_unpacked(tmp_path, rng, size, version, order):
    spectrum = np.fft.fft2(rng.normal(size=(size, size)))
    entry = dmb.image_entry(pack_spectrum(spectrum), data_type=5, dims=(size, size), order=order)
    path = write_dm(tmp_path, dmb.dm_file([entry], version=version, order=order))
    data, _ = dm.readDM(path)
    assert data.dtype == np.complex64 and data.shape == (size, size)
    npt.assert_allclose(data, spectrum, rtol=1e-5, atol=1e-5 * np.abs(spectrum).max())


def test_several_images_and_thumbnails(tmp_path, rng):
    first = random_data(rng, "uint16", (4, 6))
    second = random_data(rng, "float32", (7,))
    parts = dmb.dm_file([dmb.image_entry(first, name="HAADF"),
                         dmb.image_entry(second, name="Plot")])
    path = write_dm(tmp_path, parts)
    data, meta = dm.readDM(path)
    npt.assert_array_equal(data, first)
    assert meta["title"] == "HAADF" and meta["image"] == 0
    data, meta = dm.readDM(path, image=1)
    npt.assert_array_equal(data, second)
    assert meta["title"] == "Plot" and [a["name"] for a in meta["axes"]] == ["x"]
    with pytest.raises(IndexError):
        dm.readDM(path, image=2)
    assert len(dm.readDM4(path).im) == 3                  # thumbnail included
    path = write_dm(tmp_path, dmb.dm_file([dmb.image_entry(first)], thumbnail=False), "b.dm3")
    npt.assert_array_equal(dm.readDM(path)[0], first)


def acquisition_tags() -> dict:
    return {
        "Microscope Info": {"Voltage": 300000.0, "Cs(mm)": 2.7, "Name": "Krios",
                            "Indicated Magnification": 105000.0,
                            "Actual Magnification": 61000.0},
        "Acquisition": {
            "Device": {"Name": "K3", "CCD": {"Pixel Size (um)": dmb.array(dmb.FLOAT, [5, 5])}},
            "Parameters": {"High Level": {"Exposure (s)": 2.5,
                                          "Binning": dmb.array(dmb.LONG, [1, 1])}},
        },
        "DataBar": {"Acquisition Date": "1/2/2024", "Acquisition Time": "3:04:05 PM"},
        "Calibration": {"Dose Rate": {"Calibration": dmb.array(dmb.DOUBLE, [1.5, 2.0])}},
    }


def test_movie_metadata_and_mrc_header(tmp_path, rng):
    movie = random_data(rng, "uint8", (5, 6, 8))
    entry = dmb.image_entry(movie, calibrations=[(0.0, 1.0, ""), (0.0, 0.083, "nm"),
                                                 (2.0, 0.083, "nm")],
                            brightness=(0.0, 0.25, "e-"), image_tags=acquisition_tags())
    path = write_dm(tmp_path, dmb.dm_file([entry]))
    data, meta = dm.readDM(path)
    scale = float(np.float32(0.083))
    assert meta["voltage"] == 300.0
    assert meta["C3"] == float(np.float32(2.7))
    assert meta["magnification"] == 105000.0
    assert meta["actual_magnification"] == 61000.0
    assert meta["exposure"] == 2.5
    assert meta["frame_count"] == 5 and meta["frame_time"] == 0.5
    assert meta["binning"] == [1, 1]
    assert meta["detector"] == "K3" and meta["microscope"] == "Krios"
    assert meta["detector_pixel_size"] == [5.0, 5.0]
    assert meta["dose_rate_calibration"] == [1.5, 2.0]
    assert meta["acquisition_date"] == "1/2/2024"
    assert [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    assert meta["axes"][2]["offset"] == -2.0 * scale
    npt.assert_array_equal(meta["pixelsize"], [np.nan, scale * 10, scale * 10])

    header = dm.dm_header_for_mrc(meta)
    assert header["pixelsize"] == [scale * 10] * 3
    assert header["pixelunits"] == "\\AA"
    assert header["voltage"] == 300.0 and header["C3"] == meta["C3"]
    assert header["gain"] == 4.0
    text = json.dumps(header["meta"])
    assert "Krios" in text and "tags" not in header["meta"]


def test_mrc_header_without_calibration(tmp_path, rng):
    path = write_dm(tmp_path, dmb.dm_file([dmb.image_entry(random_data(rng, "int16", (4, 4)))]))
    header = dm.dm_header_for_mrc(dm.readDM(path)[1])
    assert "pixelsize" not in header and "voltage" not in header and "gain" not in header
    json.dumps(header["meta"])


def test_spectral_axis_names(tmp_path, rng):
    spectrum = random_data(rng, "float32", (3, 16))
    tags = {"Meta Data": {"Signal": "EELS"}}
    entry = dmb.image_entry(spectrum, calibrations=[(0.0, 2.0, "nm"), (-5.0, 0.5, "eV")],
                            image_tags=tags)
    _, meta = dm.readDM(write_dm(tmp_path, dmb.dm_file([entry])))
    assert [a["name"] for a in meta["axes"]] == ["x", "Energy loss"]
    assert meta["axes"][1]["offset"] == 2.5
    assert meta["frame_count"] == 1
    npt.assert_array_equal(meta["pixelsize"], [20.0, np.nan])


names = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12)
leaves = st.one_of(st.booleans(), st.integers(-2**31, 2**31 - 1),
                   st.floats(width=32, allow_nan=False), st.text(max_size=20),
                   st.tuples(st.integers(-2**15, 2**15 - 1)) | st.lists(
                       st.integers(-2**15, 2**15 - 1), max_size=10).map(tuple))
trees = st.recursive(leaves, lambda children: st.dictionaries(names, children, max_size=5),
                     max_leaves=30)


def as_tags(tree, order: str):
    """Tuples in a generated tree become int16 array tags."""
    if isinstance(tree, dict):
        return {k: as_tags(v, order) for k, v in tree.items()}
    return dmb.array(dmb.SHORT, tree, order) if isinstance(tree, tuple) else tree


def expected_value(tree):
    if isinstance(tree, dict):
        return {k: expected_value(v) for k, v in tree.items()}
    return list(tree) if isinstance(tree, tuple) else tree


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(names, trees, max_size=6), version=st.sampled_from([3, 4]),
       order=st.sampled_from(["<", ">"]))
def test_tag_tree_round_trip(tmp_path, tree, version, order):
    entry = dmb.image_entry(np.zeros((2, 2), np.int16), order=order,
                            image_tags={"Extra": as_tags(tree, order)})
    path = write_dm(tmp_path, dmb.dm_file([entry], version=version, order=order))
    _, meta = dm.readDM(path)
    assert meta["image_tags"]["Extra"] == expected_value(tree)


@pytest.mark.parametrize("version,order", [(3, ">"), (4, "<")])
def test_every_tag_encoding(tmp_path, version, order):
    big = np.arange(40000, dtype=order + "f4")
    tags = {
        "char": dmb.scalar(dmb.CHAR, -5, order), "octet": dmb.scalar(dmb.OCTET, 250, order),
        "int64": dmb.scalar(dmb.INT64, -2**40, order),
        "uint64": dmb.scalar(dmb.UINT64, 2**63 + 1, order),
        "double": dmb.scalar(dmb.DOUBLE, 0.1, order), "flag": True,
        "string": dmb.byte_string("µm".encode("latin-1")),
        "struct": dmb.struct_tag([dmb.SHORT, dmb.DOUBLE], [-3, 2.5], order),
        "structs": dmb.struct_array([dmb.LONG, dmb.FLOAT], 2,
                                    np.array([(1, 0.5), (2, 1.5)], order + "i4," + order + "f4")
                                    .tobytes()),
        "strings": dmb.Tag((dmb.ARRAY, dmb.STRING, 3, 2), b"abcxyz"),
        "arrays": dmb.Tag((dmb.ARRAY, dmb.ARRAY, dmb.SHORT, 2, 2),
                          np.array([1, 2, 3, 4], order + "i2").tobytes()),
        "empty": dmb.array(dmb.LONG, [], order), "unicode": "Å é 日本",
        "big": dmb.array(dmb.FLOAT, big, order),
        "Unnamed": [{"a": 1}, {"b": 2}],
        "Repeated": dmb.Group([("x", 1), ("x", 2), ("x", 3), ("", 4), ("x#4", 5), ("x", 6)]),
    }
    entry = dmb.image_entry(np.zeros((2, 2), np.int16), order=order, image_tags=tags)
    _, meta = dm.readDM(write_dm(tmp_path, dmb.dm_file([entry], version=version, order=order)))
    got = meta["image_tags"]
    assert (got["char"], got["octet"], got["int64"], got["uint64"]) == (-5, 250, -2**40, 2**63 + 1)
    assert got["double"] == 0.1 and got["flag"] is True
    assert got["string"] == "µm" and got["unicode"] == "Å é 日本"
    assert got["struct"] == [-3, 2.5]
    assert got["structs"] == [[1, 0.5], [2, 1.5]]
    assert got["strings"] == ["abc", "xyz"]
    assert got["arrays"] == [[1, 2], [3, 4]]
    assert got["empty"] == []
    assert got["Unnamed"] == {"0": {"a": 1}, "1": {"b": 2}}
    assert got["Repeated"] == {"x": 1, "x#2": 2, "x#3": 3, "3": 4, "x#4": 5, "x#5": 6}
    assert got["big"]["count"] == big.size and got["big"]["nbytes"] == big.nbytes
    with open(meta["file"], "rb") as f:
        f.seek(got["big"]["offset"])
        npt.assert_array_equal(np.frombuffer(f.read(big.nbytes), big.dtype), big)
    json.dumps(meta["tags"])


# ---------------------------------------------------------------------------
# Memory, laziness, large files
# ---------------------------------------------------------------------------
@pytest.fixture
def stack_file(tmp_path, rng):
    stack = random_data(rng, "int16", (12, 512, 1024))          # 12 MB
    return write_dm(tmp_path, dmb.dm_file([dmb.image_entry(stack)])), stack


def test_eager_read_allocates_the_data_once(stack_file):
    path, stack = stack_file
    tracemalloc.start()
    try:
        data, _ = dm.readDM(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.05 * stack.nbytes + (1 << 20)
    npt.assert_array_equal(data, stack)


def test_frames_are_read_one_at_a_time(stack_file):
    path, stack = stack_file
    tracemalloc.start()
    try:
        sums = [int(frame.sum(dtype=np.int64)) for frame in dm.iter_dm_frames(path)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * stack[0].nbytes + (1 << 20)
    assert sums == stack.sum(axis=(1, 2), dtype=np.int64).tolist()
    with dm.DMFrameReader(path) as reader:
        assert len(reader) == 12 and reader.frame_shape == (512, 1024)
        npt.assert_array_equal(reader[-1], stack[-1])
        with pytest.raises(IndexError):
            reader[12]


def test_lazy_read_is_a_read_only_memmap(stack_file):
    path, stack = stack_file
    lazy, _ = dm.readDM(path, lazy=True)
    assert isinstance(lazy, np.memmap) and not lazy.flags.writeable
    npt.assert_array_equal(lazy[7], stack[7])
    with pytest.raises(ValueError):
        lazy[0, 0, 0] = 1
    del lazy


def test_file_over_4_gib(tmp_path):
    frames, shape = 260, (4096, 4096)                       # 4.36 GB of uint8
    nbytes = frames * shape[0] * shape[1]
    entry = dmb.image_entry(None, data_type=6, dims=(frames, *shape), nbytes=nbytes,
                            image_tags=acquisition_tags())
    path = write_dm(tmp_path, dmb.dm_file([entry]), "big.dm4")
    if os.stat(path).st_blocks * 512 > 1 << 30:
        pytest.skip("file system does not keep sparse files")
    _, meta = dm.readDM(path, lazy=True)
    described = list(meta["tags"]["ImageList"].values())[1]["ImageData"]["Data"]
    assert described["count"] == nbytes > 2**32
    last = np.arange(shape[0] * shape[1], dtype=np.uint32).astype(np.uint8).reshape(shape)
    with open(path, "r+b") as f:
        f.seek(described["offset"] + nbytes - last.nbytes)
        f.write(last.tobytes())
    lazy, meta = dm.readDM(path, lazy=True)
    assert lazy.shape == (frames, *shape) and meta["voltage"] == 300.0
    npt.assert_array_equal(lazy[-1], last)
    del lazy
    with dm.DMFrameReader(path) as reader:
        npt.assert_array_equal(reader[frames - 1], last)
        assert not reader[0].any()


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def raw_file(tmp_path: Path, data: bytes, name: str = "bad.dm4") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data", [b"", b"\0" * 8, b"MRC file content here" * 4,
                                  (5).to_bytes(4, "big") + bytes(20),
                                  (4).to_bytes(4, "big") + bytes(8) + (7).to_bytes(4, "big")
                                  + bytes(16)])
def test_not_a_dm_file(tmp_path, data):
    path = raw_file(tmp_path, data)
    with pytest.raises(FormatError, match="bad.dm4"):
        dm.readDM(path)


def test_os_errors_stay_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        dm.readDM(tmp_path / "missing.dm4")
    with pytest.raises(OSError):
        dm.readDM(tmp_path)


def small_file(version: int = 4, **entry_args) -> bytes:
    entry = dmb.image_entry(np.arange(6, dtype=np.int16).reshape(2, 3), **entry_args)
    return dmb.to_bytes(dmb.dm_file([entry], version=version, thumbnail=False))


@pytest.mark.parametrize("version", [3, 4])
def test_truncated_files(tmp_path, version):
    data = small_file(version)
    for cut in range(16, len(data) - 8, 7):
        path = raw_file(tmp_path, data[:cut])
        with pytest.raises(CorruptDataError, match="bad.dm4"):
            dm.readDM(path)


@pytest.mark.parametrize("version", [3, 4])
def test_lying_sizes_fail_fast(tmp_path, version):
    data = small_file(version)
    width = 8 if version == 4 else 4
    big = (2**(8 * width - 1) - 1).to_bytes(width, "big")
    root_count = 4 + width + 4 + 2                       # header, sorted/open flags
    info_count = data.index(b"%%%%") + 4
    image_count = data.index(b"".join(v.to_bytes(width, "big") for v in (3, 20, 2))) + 3 * width
    cases = [data[:at] + big + data[at + width:] for at in (root_count, info_count, image_count)]
    for case in cases:
        start = time.perf_counter()
        with pytest.raises(CorruptDataError):
            dm.readDM(raw_file(tmp_path, case))
        assert time.perf_counter() - start < 0.5


def test_lying_dm4_tag_size(tmp_path):
    data = small_file(4)
    at = data.index(b"ImageList") + len(b"ImageList")
    data = data[:at] + (2**62).to_bytes(8, "big") + data[at + 8:]
    with pytest.raises(CorruptDataError, match="past the end"):
        dm.readDM(raw_file(tmp_path, data))


@pytest.mark.parametrize("version", [3, 4])
def test_nesting_bomb(tmp_path, version):
    tree: dict = {"leaf": 1}
    for _ in range(200):
        tree = {"g": tree}
    parts = dmb.encode({"ImageList": [], "Deep": tree}, version)
    with pytest.raises(CorruptDataError, match="nested"):
        dm.readDM(write_dm(tmp_path, parts))


def test_inconsistent_and_unsupported_images(tmp_path):
    wrong_dims = small_file(dims=(3, 3))
    with pytest.raises(CorruptDataError, match="Dimensions"):
        dm.readDM(raw_file(tmp_path, wrong_dims))
    for data_type in (4, 99):
        data = small_file(data_type=data_type)
        with pytest.raises(UnsupportedError, match="DataType"):
            dm.readDM(raw_file(tmp_path, data))
    odd = dmb.image_entry(np.zeros((4, 2), np.float32), data_type=5, dims=(2, 4))
    with pytest.raises(UnsupportedError, match="square"):
        dm.readDM(write_dm(tmp_path, dmb.dm_file([odd])))


def test_files_without_images(tmp_path):
    with pytest.raises(FormatError, match="no ImageList"):
        dm.readDM(write_dm(tmp_path, dmb.encode({"Other": 1})))
    only_thumbnail = dmb.dm_file([])
    with pytest.raises(FormatError, match="thumbnail"):
        dm.readDM(write_dm(tmp_path, only_thumbnail))


def test_frame_iterator_reports_errors_on_first_use(tmp_path):
    frames = dm.iter_dm_frames(raw_file(tmp_path, b"not a dm file at all, sorry"))
    with pytest.raises(FormatError):
        next(frames)


def test_nan_free_pixelsize_in_header_meta(tmp_path, rng):
    entry = dmb.image_entry(random_data(rng, "float32", (2, 3, 4)),
                            calibrations=[(0.0, 1.0, ""), (0.0, 1.0, "A"), (0.0, 1.0, "A")])
    header = dm.dm_header_for_mrc(dm.readDM(write_dm(tmp_path, dmb.dm_file([entry])))[1])
    assert header["pixelsize"] == [1.0, 1.0, 1.0]
    assert all(math.isfinite(v) for v in header["pixelsize"])


def test_frame_reader_is_safe_from_several_threads(tmp_path):
    """Frames read concurrently (as writeMRC with n_threads > 1 does) are each right."""
    from concurrent.futures import ThreadPoolExecutor

    from mrcz.dm import DMFrameReader, readDM
    stacks = [p for p in corpus_files("dm", (".dm4", ".dm3")) if p.parent.name == "3D"]
    if not stacks:
        pytest.skip("corpus not found")
    for path in stacks[:4]:
        expected, _ = readDM(path)
        if expected.ndim != 3:
            continue
        with DMFrameReader(path) as reader:
            order = list(range(len(reader))) * 50
            with ThreadPoolExecutor(4) as pool:
                frames = list(pool.map(reader.__getitem__, order))
        for index, frame in zip(order, frames):
            np.testing.assert_array_equal(frame, expected[index])
