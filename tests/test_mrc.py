"""Round trips of every dtype, layout and codec, MRC2014 header bytes, bad input."""
from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest

import mrcz

CODECS = [None, "blosclz", "lz4", "lz4hc", "zlib", "zstd"]
DTYPES = ["int8", "int16", "uint16", "float32", "complex64", "int32", "uint32", "float16",
          "uint8"]
MRCFILE_DTYPES = ["int8", "int16", "uint16", "float32", "complex64", "float16", "uint8"]


def make(rng: np.random.Generator, dtype: str, shape=(4, 24, 20)) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    if dtype.kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def layouts(image: np.ndarray) -> dict:
    return {"array3d": image, "image2d": image[0], "list2d": list(image),
            "list3d": [image[:2], image[2:]]}


@pytest.mark.parametrize("compressor", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["array3d", "image2d", "list2d", "list3d"])
def test_round_trip(tmp_path, rng, dtype, compressor, layout):
    image = layouts(make(rng, dtype))[layout]
    path = tmp_path / "x.mrcz"
    mrcz.writeMRC(image, path, compressor=compressor, clevel=3, pixelsize=[2.0, 1.5, 1.25],
                  voltage=200.0, C3=2.7, gain=0.5, meta={"layout": layout})
    back, header = mrcz.readMRC(path)
    assert isinstance(back, list) == isinstance(image, list)
    if isinstance(image, list):
        assert len(back) == len(image)
        for frame, got in zip(image, back):
            assert got.dtype == frame.dtype
            np.testing.assert_array_equal(got, frame)
    else:
        assert back.dtype == image.dtype and back.shape == image.shape
        np.testing.assert_array_equal(back, image)
    assert header["compressor"] == compressor
    assert header["layout"] == layout
    assert (header["voltage"], header["gain"]) == (200.0, 0.5)
    assert header["C3"] == pytest.approx(2.7)
    np.testing.assert_allclose(header["pixelsize"][1:], [1.5, 1.25], rtol=1e-6)
    if layout in ("array3d",):
        assert header["pixelsize"][0] == pytest.approx(2.0)


@pytest.mark.parametrize("dtype", MRCFILE_DTYPES)
@pytest.mark.parametrize("layout", ["array3d", "image2d", "list2d", "list3d"])
def test_plain_files_validate_in_mrcfile(tmp_path, rng, dtype, layout):
    mrcfile = pytest.importorskip("mrcfile")
    image = layouts(make(rng, dtype))[layout]
    path = tmp_path / "x.mrc"
    mrcz.writeMRC(image, path, pixelsize=[2.0, 1.5, 1.25], quickStats=False)
    messages = []
    valid = mrcfile.validate(str(path), print_file=_Collect(messages))
    json_only = [m for m in messages if "valid" not in m and "Checking" not in m]
    if layout == "list3d":  # frames of several slices: their grouping is in JSON metadata
        assert json_only == ["Extended header type is undefined or unrecognised: exttyp = 'json'"]
    else:  # a list of 2-D frames is an MRC2014 image stack: no extended header needed
        assert valid, messages
        assert mrcz.readMRCHeader(path)[0]["extendedBytes"] == 0
    with mrcfile.open(path) as mrc:
        expected = np.stack(image) if isinstance(image, list) else image
        expected = expected.reshape(mrc.data.shape)
        np.testing.assert_array_equal(mrc.data, expected)
        assert mrc.voxel_size.x == pytest.approx(1.25)
        assert mrc.voxel_size.y == pytest.approx(1.5)
        if layout == "array3d":
            assert mrc.voxel_size.z == pytest.approx(2.0)


class _Collect:
    def __init__(self, sink: list) -> None:
        self.sink = sink

    def write(self, text: str) -> None:
        if text.strip():
            self.sink.append(text.strip())

    def flush(self) -> None:
        pass


def test_header_bytes_follow_mrc2014(tmp_path, rng):
    image = make(rng, "float32", (3, 16, 12))
    path = tmp_path / "x.mrc"
    mrcz.writeMRC(image, path, pixelsize=[3.0, 2.0, 1.0], voltage=300, C3=2.7, gain=1.5,
                  quickStats=False)
    raw = path.read_bytes()
    nx, ny, nz, mode = struct.unpack("<4i", raw[:16])
    mx, my, mz = struct.unpack("<3i", raw[28:40])
    assert (nx, ny, nz, mode, mx, my, mz) == (12, 16, 3, 2, 12, 16, 3)
    assert struct.unpack("<3f", raw[40:52]) == pytest.approx((12.0, 32.0, 9.0))
    assert struct.unpack("<i", raw[108:112])[0] == 20141
    assert raw[208:212] == b"MAP " and raw[212:214] == b"\x44\x44"
    dmin, dmax, dmean = struct.unpack("<3f", raw[76:88])
    assert (dmin, dmax) == (image.min(), image.max())
    assert dmean == pytest.approx(image.mean(dtype=np.float64), rel=1e-6)
    assert struct.unpack("<f", raw[216:220])[0] == pytest.approx(image.std(dtype=np.float64), rel=1e-5)
    assert struct.unpack("<3f", raw[132:144]) == pytest.approx((300.0, 2.7, 1.5))
    assert struct.unpack("<i", raw[220:224])[0] == 1
    assert raw[224:228] == b"MRCZ"
    assert len(raw) == 1024 + image.nbytes


def test_quick_stats_are_exact_or_marked_unknown(tmp_path, rng):
    mrcfile = pytest.importorskip("mrcfile")
    image = make(rng, "int16")
    mrcz.writeMRC(image, tmp_path / "x.mrcz", compressor="zstd")
    raw = (tmp_path / "x.mrcz").read_bytes()
    assert struct.unpack("<3f", raw[76:88]) == pytest.approx(
        (image.min(), image.max(), image.mean()), rel=1e-6)
    assert struct.unpack("<f", raw[216:220])[0] < 0
    mrcz.writeMRC(image, tmp_path / "x.mrc")
    raw = (tmp_path / "x.mrc").read_bytes()
    dmin, dmax, dmean = struct.unpack("<3f", raw[76:88])
    assert dmax < dmin and dmean < dmin and struct.unpack("<f", raw[216:220])[0] < 0
    assert mrcfile.validate(str(tmp_path / "x.mrc"), print_file=_Collect([]))


def test_compressed_header_records_packed_size_and_slices(tmp_path, rng):
    frames = [make(rng, "int8", (16, 12)) for _ in range(5)]
    path = tmp_path / "x.mrcz"
    mrcz.writeMRC(frames, path, compressor="zstd", clevel=1)
    raw = path.read_bytes()
    assert struct.unpack("<i", raw[12:16])[0] == 6000
    assert struct.unpack("<i", raw[36:40])[0] == 1
    assert struct.unpack("<q", raw[144:152])[0] == len(raw) - 1024
    assert raw[1024] == 2  # blosc 1.x chunk format


def test_big_endian(tmp_path, rng):
    image = make(rng, "int16")
    for compressor in (None, "zstd"):
        path = tmp_path / f"be{compressor}.mrc"
        mrcz.writeMRC(image, path, endian="be", compressor=compressor)
        assert path.read_bytes()[212:214] == b"\x11\x11"
        back, header = mrcz.readMRC(path)
        np.testing.assert_array_equal(back, image)
        assert header["endian"] == "be"


def test_uint4_is_lossless_and_packed(tmp_path):
    image = np.tile(np.arange(16, dtype=np.int8).repeat(2), (2, 3, 1))
    path = tmp_path / "x.mrc"
    mrcz.writeMRC(image, path, dtype="uint4")
    assert path.stat().st_size == 1024 + image.size // 2
    back, header = mrcz.readMRC(path)
    np.testing.assert_array_equal(back, image)
    assert header["MRCtype"] == 101
    with pytest.raises(ValueError, match="0..15"):
        mrcz.writeMRC(image + 1, tmp_path / "bad.mrc", dtype="uint4")


def test_uint8_widened_for_other_readers(tmp_path, rng):
    mrcfile = pytest.importorskip("mrcfile")
    image = make(rng, "uint8")
    path = tmp_path / "x.mrc"
    mrcz.writeMRC(image, path)
    back, _ = mrcz.readMRC(path)
    assert back.dtype == np.uint8
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, image)


def test_float64_is_cast_with_one_warning(tmp_path, rng, caplog):
    image = rng.normal(size=(2, 8, 8))
    mrcz.writeMRC(image, tmp_path / "a.mrc")
    back, _ = mrcz.readMRC(tmp_path / "a.mrc")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, image.astype(np.float32))


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_idx_reads(tmp_path, rng, compressor):
    image = make(rng, "float32", (10, 8, 6))
    path = tmp_path / "x.mrc"
    mrcz.writeMRC(image, path, compressor=compressor)
    np.testing.assert_array_equal(mrcz.readMRC(path, idx=4)[0], image[4])
    np.testing.assert_array_equal(mrcz.readMRC(path, idx=(2, 5))[0], image[2:6])
    np.testing.assert_array_equal(mrcz.readMRC(path, idx=-1)[0], image[-1])
    with pytest.raises(IndexError):
        mrcz.readMRC(path, idx=10)


@pytest.mark.parametrize("compressor", [None, "zstd", "lz4"])
def test_append(tmp_path, rng, compressor):
    image = make(rng, "int16", (6, 8, 6))
    path = tmp_path / "x.mrcz"
    mrcz.writeMRC(image[:3], path, compressor=compressor, quickStats=False)
    mrcz.writeMRC(image[3:], path, compressor=compressor, idx=3, quickStats=False)
    back, header = mrcz.readMRC(path)
    np.testing.assert_array_equal(back, image)
    assert header["minImage"] == image.min() and header["maxImage"] == image.max()
    assert header["meanImage"] == pytest.approx(image.mean())


def test_memmap(tmp_path, rng):
    image = make(rng, "float32")
    path = tmp_path / "x.mrc"
    mrcz.writeMRC(image, path, meta={"pad": "x" * 100})
    mapped, _ = mrcz.readMRC(path, useMemmap=True)
    np.testing.assert_array_equal(mapped, image)


def test_pixel_units(tmp_path, rng):
    path = tmp_path / "x.mrc"
    mrcz.writeMRC(make(rng, "int8"), path, pixelsize=0.2, pixelunits="nm")
    assert mrcz.readMRC(path)[1]["pixelsize"] == pytest.approx([2.0] * 3)
    assert mrcz.readMRC(path, pixelunits="\\mum")[1]["pixelsize"] == pytest.approx([2e-4] * 3)
    assert mrcz.readMRC(path, pixelunits="pm")[1]["pixelsize"] == pytest.approx([200.0] * 3)


def test_keyword_wins_over_meta_and_clash_is_reported(tmp_path, rng):
    path = tmp_path / "x.mrc"
    with pytest.warns(UserWarning, match="voltage"):
        mrcz.writeMRC(make(rng, "int8"), path, voltage=300.0, meta={"voltage": 200.0})
    assert mrcz.readMRC(path)[1]["voltage"] == 300.0


def test_dask_array_is_written_frame_by_frame(tmp_path, rng):
    da = pytest.importorskip("dask.array")
    image = make(rng, "int16", (6, 16, 16))
    mrcz.writeMRC(da.from_array(image, chunks=(2, 16, 16)), tmp_path / "d.mrcz", compressor="zstd")
    np.testing.assert_array_equal(mrcz.readMRC(tmp_path / "d.mrcz")[0], image)


def test_eman2_convention(tmp_path):
    path = tmp_path / "e.mrc"
    mrcz.writeMRC(np.arange(24, dtype=np.int16).reshape(2, 3, 4), path)
    raw = bytearray(path.read_bytes())
    raw[12:16] = struct.pack("<i", 3)  # EMAN2's int16
    path.write_bytes(bytes(raw))
    back, _ = mrcz.readMRC(path, fileConvention="eman2")
    np.testing.assert_array_equal(back, np.arange(24).reshape(2, 3, 4))


# ----------------------------------------------------------------------- bad input

def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(OSError):
        mrcz.readMRC(tmp_path / "nope.mrc")


def test_not_an_mrc_file(tmp_path):
    path = tmp_path / "text.mrc"
    path.write_bytes(b"hello" * 10)
    with pytest.raises(mrcz.MRCZError, match="text.mrc"):
        mrcz.readMRC(path)


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_truncated_file_names_the_file(tmp_path, rng, compressor):
    path = tmp_path / "cut.mrc"
    mrcz.writeMRC(make(rng, "float32"), path, compressor=compressor)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(mrcz.CorruptDataError, match="cut.mrc.*truncated"):
        mrcz.readMRC(path)


def test_unknown_mode(tmp_path, rng):
    path = tmp_path / "m.mrc"
    mrcz.writeMRC(make(rng, "int8"), path)
    raw = bytearray(path.read_bytes())
    raw[12:16] = struct.pack("<i", 55)
    path.write_bytes(bytes(raw))
    with pytest.raises(mrcz.UnsupportedError, match="m.mrc.*mode 55"):
        mrcz.readMRC(path)


def test_failed_write_keeps_the_old_file(tmp_path, rng):
    path = tmp_path / "keep.mrc"
    image = make(rng, "int16")
    mrcz.writeMRC(image, path)
    before = path.read_bytes()

    class Exploding:
        shape, dtype = (4, 8, 8), np.dtype("int16")

        def __getitem__(self, z):
            if z == 2:
                raise RuntimeError("camera unplugged")
            return np.zeros((8, 8), np.int16)

    with pytest.raises(RuntimeError, match="camera"):
        mrcz.writeMRC(Exploding(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mrc"]


def with_extended_header(path, ext: bytes, exttyp: bytes = b"json") -> None:
    """Rewrite a plain file with ``ext`` as its extended header, as mrcz 1.0 wrote them."""
    raw = path.read_bytes()
    nsymbt = struct.unpack("<i", raw[92:96])[0]
    head = bytearray(raw[:1024])
    head[92:96] = struct.pack("<i", len(ext))
    head[104:108] = exttyp
    path.write_bytes(bytes(head) + ext + raw[1024 + nsymbt:])


@pytest.mark.parametrize("meta", [{"a": 1}, {"ab": 1}, {"abc": 1}, {"abcd": 1}, {"k": "é" * 7}])
def test_json_extended_header_is_padded_to_four_bytes(tmp_path, rng, meta):
    """gemmi and others expect the data on a 4-byte boundary after the extended header."""
    frames = [rng.integers(0, 100, (6, 5)).astype(np.int16) for _ in range(3)]
    path = tmp_path / "m.mrc"
    mrcz.writeMRC(frames, str(path), meta=meta)
    raw = path.read_bytes()
    nsymbt = struct.unpack("<i", raw[92:96])[0]
    assert nsymbt % 4 == 0 and raw[104:108] == b"json"
    assert json.loads(raw[1024:1024 + nsymbt].decode("utf-8")) == meta
    assert len(raw) == 1024 + nsymbt + 3 * 6 * 5 * 2
    image, header = mrcz.readMRC(str(path))
    np.testing.assert_array_equal(np.stack(image), np.stack(frames))
    assert {k: header[k] for k in meta} == meta


@pytest.mark.parametrize("layout", ["image", "volume", "frames"])
def test_plain_file_without_meta_has_no_extended_header(tmp_path, rng, layout):
    data = rng.integers(0, 100, (3, 6, 5)).astype(np.int16)
    image = {"image": data[0], "volume": data, "frames": list(data)}[layout]
    path = tmp_path / "p.mrc"
    mrcz.writeMRC(image, str(path))
    raw = path.read_bytes()
    assert struct.unpack("<i", raw[92:96])[0] == 0
    assert raw[104:108] != b"json"
    got, _ = mrcz.readMRC(str(path))
    assert isinstance(got, list) == (layout == "frames")


@pytest.mark.parametrize("ext,meta", [
    (b'{"slices":1}', {}),                      # 1.0's stacks without meta
    (b'{"abc":"x","slices":1}', {"abc": "x"}),  # with meta: 22 bytes, not 4-aligned
])
def test_stacks_written_by_1_0_read_as_before(tmp_path, rng, ext, meta):
    frames = [rng.integers(0, 100, (6, 5)).astype(np.int16) for _ in range(3)]
    path = tmp_path / "old.mrc"
    mrcz.writeMRC(frames, str(path))
    with_extended_header(path, ext)
    image, header = mrcz.readMRC(str(path))
    assert isinstance(image, list) and len(image) == 3
    np.testing.assert_array_equal(np.stack(image), np.stack(frames))
    assert header["extendedBytes"] == len(ext) and header["metaId"] == b"json"
    assert {k: header[k] for k in meta} == meta


def test_odd_length_json_of_1_0_reads_as_before(tmp_path, rng):
    volume = rng.integers(0, 100, (3, 6, 5)).astype(np.int16)
    path = tmp_path / "old.mrc"
    mrcz.writeMRC(volume, str(path))
    with_extended_header(path, b'{"a":1}')  # 7 bytes: the data start unaligned
    image, header = mrcz.readMRC(str(path))
    np.testing.assert_array_equal(image, volume)
    assert header["a"] == 1 and header["extendedBytes"] == 7


def test_header_dict_answers_extras_without_storing_them(tmp_path, rng):
    path = tmp_path / "z.mrcz"
    mrcz.writeMRC(rng.integers(0, 9, (2, 8, 8)).astype(np.int8), str(path), compressor="zstd",
                  clevel=3)
    _, header = mrcz.readMRC(str(path))
    extras = {"endian": "le", "fileConvention": "ccpem", "clevel": 3, "bloscFormat": 1,
              "backend": "blosc1"}
    assert {k: header[k] for k in extras} == extras
    assert isinstance(header.get("rmsImage"), float)
    assert not set(extras) & set(header) and not set(extras) & set(header.copy())
    assert header.get("no such key", "d") == "d"
    with pytest.raises(KeyError):
        header["no such key"]
    again = pickle.loads(pickle.dumps(header))
    assert again["clevel"] == 3 and list(again) == list(header)
