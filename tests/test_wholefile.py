"""Whole-file compressed MRC (.mrc.gz, .mrc.bz2, .mrc.zst): read, write, interoperate."""
from __future__ import annotations

import bz2
import gzip
import io
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard

import mrcz
from conftest import corpus_files
from mrcz import wholefile

CODECS = {"gzip": ".gz", "bzip2": ".bz2", "zstd": ".zst"}
TOOLS = {"gzip": "gzip", "bzip2": "bzip2", "zstd": "zstd"}
COMPRESS = {"gzip": gzip.compress, "bzip2": bz2.compress,
            "zstd": lambda data: zstandard.ZstdCompressor().compress(data)}
CORPUS_STREAMS = corpus_files("mrcfile", (".mrc.gz", ".mrc.bz2"))


def counted(rng: np.random.Generator, shape=(5, 48, 40), dtype="int16") -> np.ndarray:
    return rng.poisson(0.8, size=shape).astype(dtype)


def written(tmp_path: Path, image, codec: str, stem: str = "x", **kwargs) -> Path:
    path = tmp_path / f"{stem}.mrc{CODECS[codec]}"
    mrcz.writeMRC(image, path, **kwargs)
    return path


def decompress_with_tool(codec: str, path: Path) -> bytes:
    tool = shutil.which(TOOLS[codec])
    if tool is None:
        pytest.skip(f"command-line {TOOLS[codec]} is not installed")
    return subprocess.run([tool, "-dc", str(path)], check=True, capture_output=True).stdout


def assert_same_header(header_a: dict, header_b: dict) -> None:
    assert header_a.keys() == header_b.keys()
    for key in header_a:
        assert np.array_equal(header_a[key], header_b[key]), key


def assert_same_read(a, b) -> None:
    """Two readMRC results are identical: image (array or list) and header dict."""
    (image_a, header_a), (image_b, header_b) = a, b
    assert isinstance(image_a, list) == isinstance(image_b, list)
    np.testing.assert_array_equal(np.asarray(image_a), np.asarray(image_b))
    assert np.asarray(image_a).dtype == np.asarray(image_b).dtype
    assert_same_header(header_a, header_b)


def assert_same_header_read(a, b) -> None:
    """Two readMRCHeader results are identical."""
    assert_same_header(a[0], b[0])
    assert a[1] == b[1]


# ----------------------------------------------------------------------------- corpus

@pytest.mark.parametrize("path", CORPUS_STREAMS, ids=lambda p: p.name)
def test_mrcfile_streams_read_exactly(path: Path) -> None:
    expected = np.load(f"{path}.npy")
    image, header = mrcz.readMRC(path)
    assert image.dtype == expected.dtype and image.shape == expected.shape
    np.testing.assert_array_equal(image, expected)
    assert_same_header(mrcz.readMRCHeader(path)[0], header)
    mrcfile = pytest.importorskip("mrcfile")
    with mrcfile.open(path) as reference:
        voxel = reference.voxel_size
        np.testing.assert_allclose(header["pixelsize"], [voxel.z, voxel.y, voxel.x], rtol=1e-6)
        assert header["meanImage"] == pytest.approx(float(reference.header.dmean))


@pytest.mark.parametrize("path", CORPUS_STREAMS, ids=lambda p: p.name)
def test_mrcfile_streams_idx(path: Path) -> None:
    expected = np.load(f"{path}.npy")
    image, header = mrcz.readMRC(path, idx=(1, 2))
    np.testing.assert_array_equal(image, expected[1:3])
    assert header["dimensions"][0] == 2


def test_emdb_map_gz_reads_as_the_map(corpus: Path) -> None:
    packed, plain = corpus / "emdb" / "emd_3001.map.gz", corpus / "emdb" / "EMD-3001.map"
    if not (packed.is_file() and plain.is_file()):
        pytest.skip("emd_3001.map.gz / EMD-3001.map are not in the corpus")
    assert_same_read(mrcz.readMRC(packed), mrcz.readMRC(plain))
    assert_same_read(mrcz.readMRC(packed, idx=(3, 7)), mrcz.readMRC(plain, idx=(3, 7)))


CORPUS_PLAIN = [p for folder in ("mrcz041", "mrcz060", "mrcfile", "emdb")
                for p in corpus_files(folder, (".mrc", ".mrcs", ".mrcz", ".map"))]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("path", CORPUS_PLAIN, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_corpus_file_compressed(tmp_path, path: Path, codec: str) -> None:
    """Any corpus file inside gzip/bzip2/zstd reads as the file itself (MRCZ is refused)."""
    packed = tmp_path / f"{path.name}{CODECS[codec]}"
    packed.write_bytes(COMPRESS[codec](path.read_bytes()))
    if mrcz.readMRCHeader(path)[0]["compressor"] is not None:
        with pytest.raises(mrcz.UnsupportedError, match=re.escape(packed.name)):
            mrcz.readMRC(packed)
        return
    assert_same_read(mrcz.readMRC(packed), mrcz.readMRC(path))
    assert_same_header_read(mrcz.readMRCHeader(packed), mrcz.readMRCHeader(path))


def test_corpus_stream_with_misleading_name(corpus: Path, tmp_path: Path) -> None:
    source = corpus / "mrcfile" / "mrcfile_volume.mrc.gz"
    if not source.is_file():
        pytest.skip("mrcfile_volume.mrc.gz is not in the corpus")
    fake = tmp_path / "looks_plain.mrc"
    shutil.copyfile(source, fake)
    np.testing.assert_array_equal(mrcz.readMRC(fake)[0], np.load(f"{source}.npy"))


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16", "float32", "complex64",
                                   "uint8", "float16", "int32"])
def test_round_trip_matches_plain(tmp_path, rng, codec, dtype) -> None:
    image = counted(rng, dtype=dtype)
    kwargs = dict(pixelsize=[2.0, 1.5, 1.25], voltage=300.0, C3=2.7, meta={"who": "test"})
    path = written(tmp_path, image, codec, **kwargs)
    plain = tmp_path / "plain.mrc"
    mrcz.writeMRC(image, plain, **kwargs)
    assert_same_read(mrcz.readMRC(path), mrcz.readMRC(plain))
    assert_same_header_read(mrcz.readMRCHeader(path), mrcz.readMRCHeader(plain))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("layout", ["image2d", "list2d", "list3d"])
def test_layouts(tmp_path, rng, codec, layout) -> None:
    image = counted(rng, shape=(4, 24, 20))
    value = {"image2d": image[0], "list2d": list(image), "list3d": [image[:2], image[2:]]}[layout]
    path = written(tmp_path, value, codec)
    plain = tmp_path / "plain.mrc"
    mrcz.writeMRC(value, plain)
    assert_same_read(mrcz.readMRC(path), mrcz.readMRC(plain))


@pytest.mark.parametrize("codec", CODECS)
def test_uint4_big_endian_and_single_thread(tmp_path, rng, codec) -> None:
    image = rng.integers(0, 16, size=(3, 10, 7)).astype(np.uint8)
    path = written(tmp_path, image, codec, dtype="uint4", n_threads=1)
    np.testing.assert_array_equal(mrcz.readMRC(path)[0], image)
    path = written(tmp_path, image.astype(np.float32), codec, stem="be", endian="be")
    back, header = mrcz.readMRC(path)
    assert header["endian"] == "be"
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("codec", CODECS)
def test_many_pieces_stay_one_stream(tmp_path, rng, codec, monkeypatch) -> None:
    """Pieces compressed in parallel join into one gzip member / valid bzip2 / one zstd frame."""
    monkeypatch.setattr(wholefile, "PIECE_BYTES", 1000)
    image = counted(rng, shape=(6, 33, 41), dtype="uint16")  # slices split into pieces
    path = written(tmp_path, image, codec, clevel=9 if codec != "zstd" else 3, n_threads=2)
    plain = tmp_path / "plain.mrc"
    mrcz.writeMRC(image, plain)
    raw = path.read_bytes()
    if codec == "gzip":
        decoder = zlib.decompressobj(31)
        assert decoder.decompress(raw) == plain.read_bytes()
        assert decoder.eof and not decoder.unused_data  # one member
    elif codec == "bzip2":
        assert bz2.decompress(raw) == plain.read_bytes()
    else:
        decoder = zstandard.ZstdDecompressor().decompressobj()
        assert decoder.decompress(raw) == plain.read_bytes()
        assert decoder.eof and not decoder.unused_data  # one frame
        assert zstandard.get_frame_parameters(raw).content_size == plain.stat().st_size
    np.testing.assert_array_equal(mrcz.readMRC(path)[0], image)


@pytest.mark.parametrize("codec", CODECS)
def test_levels(tmp_path, rng, codec) -> None:
    image = counted(rng)
    top = {"gzip": 9, "bzip2": 9, "zstd": 19}[codec]
    for clevel in (1, top):
        path = written(tmp_path, image, codec, stem=f"l{clevel}", clevel=clevel)
        np.testing.assert_array_equal(mrcz.readMRC(path)[0], image)
    with pytest.raises(ValueError, match="levels"):
        written(tmp_path, image, codec, clevel=23)


# ----------------------------------------------------------------------------- other tools

@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("piece", [None, 3000], ids=["one-piece", "many-pieces"])
def test_command_line_tools_give_a_valid_plain_file(tmp_path, rng, codec, piece,
                                                     monkeypatch) -> None:
    mrcfile = pytest.importorskip("mrcfile")
    if piece:
        monkeypatch.setattr(wholefile, "PIECE_BYTES", piece)
    image = counted(rng, dtype="float32")
    path = written(tmp_path, image, codec, pixelsize=1.1, n_threads=2)
    plain = tmp_path / "plain.mrc"
    mrcz.writeMRC(image, plain, pixelsize=1.1)
    unpacked = tmp_path / "unpacked.mrc"
    unpacked.write_bytes(decompress_with_tool(codec, path))
    assert unpacked.read_bytes() == plain.read_bytes()
    assert mrcfile.validate(str(unpacked), print_file=io.StringIO())
    assert_same_read(mrcz.readMRC(unpacked), mrcz.readMRC(path))


@pytest.mark.parametrize("codec", ["gzip", "bzip2"])
def test_mrcfile_reads_ours(tmp_path, rng, codec) -> None:
    mrcfile = pytest.importorskip("mrcfile")
    image = counted(rng, dtype="int16")
    path = written(tmp_path, image, codec, pixelsize=[3.0, 2.0, 2.0])
    with mrcfile.open(path) as reference:
        np.testing.assert_array_equal(reference.data, image)
        assert float(reference.voxel_size.x) == pytest.approx(2.0)
        assert float(reference.voxel_size.z) == pytest.approx(3.0)


@pytest.mark.parametrize("codec", CODECS)
def test_foreign_multi_member_streams(tmp_path, rng, codec) -> None:
    """Concatenated gzip members, bzip2 streams and zstd frames read as one file."""
    image = counted(rng)
    plain = tmp_path / "plain.mrc"
    mrcz.writeMRC(image, plain)
    data = plain.read_bytes()
    path = tmp_path / "multi.bin"
    path.write_bytes(b"".join(COMPRESS[codec](part) for part in
                              (data[:700], data[700:5000], data[5000:])))
    assert_same_read(mrcz.readMRC(path), mrcz.readMRC(plain))
    np.testing.assert_array_equal(mrcz.readMRC(path, idx=-1)[0], image[-1])


# ----------------------------------------------------------------------------- detection, idx

@pytest.mark.parametrize("codec", CODECS)
def test_detected_by_content_not_name(tmp_path, rng, codec) -> None:
    image = counted(rng)
    path = written(tmp_path, image, codec)
    for fake in ("data.mrc", "data.mrcz", f"data{CODECS[next(c for c in CODECS if c != codec)]}"):
        target = tmp_path / fake
        shutil.copyfile(path, target)
        np.testing.assert_array_equal(mrcz.readMRC(target)[0], image)
        assert mrcz.readMRCHeader(target)[0]["dimensions"].tolist() == list(image.shape)


def test_detect_magic() -> None:
    assert wholefile.detect(b"\x1f\x8b\x08\x00") == "gzip"
    assert wholefile.detect(b"BZh9") == "bzip2"
    assert wholefile.detect(b"BZh0") is None
    assert wholefile.detect(b"\x28\xb5\x2f\xfd") == "zstd"
    assert wholefile.detect(b"\x50\x2a\x4d\x18") == "zstd"
    assert wholefile.detect(np.array([4096, 4096, 10], "<i4").tobytes()) is None
    assert wholefile.codec_for_name("a/B.MRC.GZ") == "gzip"
    assert wholefile.codec_for_name(Path("x.mrcs.zst")) == "zstd"
    assert wholefile.codec_for_name("x.mrc") is None


@pytest.mark.parametrize("codec", CODECS)
def test_idx_ranges(tmp_path, rng, codec) -> None:
    image = counted(rng, shape=(7, 20, 16))
    path = written(tmp_path, image, codec)
    plain = tmp_path / "plain.mrc"
    mrcz.writeMRC(image, plain)
    for idx in (0, 3, 6, -1, (0, 0), (2, 5), (4, 6), (-3, -1)):
        assert_same_read(mrcz.readMRC(path, idx=idx), mrcz.readMRC(plain, idx=idx))
    with pytest.raises(IndexError):
        mrcz.readMRC(path, idx=(5, 9))


def test_stream_is_forward_only(tmp_path, rng) -> None:
    path = written(tmp_path, counted(rng), "gzip")
    with wholefile.open_for_read(path) as f:
        assert f.read(4) == np.array([40], "<i4").tobytes()
        f.seek(2000)
        assert f.tell() == 2000
        with pytest.raises(io.UnsupportedOperation, match="backwards"):
            f.seek(10)
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("keep", [12, 600, 0.5, -5, -1])
def test_truncated_stream(tmp_path, rng, codec, keep) -> None:
    path = written(tmp_path, counted(rng, shape=(5, 64, 64)), codec)
    data = path.read_bytes()
    cut = tmp_path / f"cut{CODECS[codec]}"
    cut.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(mrcz.CorruptDataError, match=re.escape(cut.name)):
        mrcz.readMRC(cut)


@pytest.mark.parametrize("codec", CODECS)
def test_corrupt_stream(tmp_path, rng, codec) -> None:
    path = written(tmp_path, counted(rng, shape=(5, 64, 64)), codec)
    data = bytearray(path.read_bytes())
    for where in (len(data) // 2, len(data) - 3):
        bad = data.copy()
        bad[where] ^= 0x01
        target = tmp_path / f"bad{where}.bin"
        target.write_bytes(bytes(bad))
        with pytest.raises(mrcz.CorruptDataError, match=f"bad{where}.bin"):
            mrcz.readMRC(target)


def test_not_a_gzip_member_after_the_first(tmp_path, rng) -> None:
    path = written(tmp_path, counted(rng), "gzip")
    bad = tmp_path / "junk.mrc.gz"
    bad.write_bytes(path.read_bytes() + b"\x1f\x8b\x09junk")
    with pytest.raises(mrcz.CorruptDataError, match="junk.mrc.gz"):
        mrcz.readMRC(bad)


@pytest.mark.parametrize("codec", CODECS)
def test_mrcz_inside_stream_refused(tmp_path, rng, codec) -> None:
    inner = tmp_path / "inner.mrcz"
    mrcz.writeMRC(counted(rng), inner, compressor="zstd")
    outer = tmp_path / f"outer.mrcz{CODECS[codec]}"
    outer.write_bytes(COMPRESS[codec](inner.read_bytes()))
    with pytest.raises(mrcz.UnsupportedError, match="outer.mrcz"):
        mrcz.readMRC(outer)
    with pytest.raises(mrcz.UnsupportedError, match="MRCZ"):
        mrcz.readMRCHeader(outer)


def test_memmap_of_stream_refused_by_open_for_read(tmp_path, rng) -> None:
    path = written(tmp_path, counted(rng), "zstd")
    with pytest.raises(mrcz.UnsupportedError, match="memory-map"):
        wholefile.open_for_read(path, memmap=True)
    with wholefile.open_for_read(path) as stream:
        assert isinstance(stream, wholefile.StreamReader)


def test_readmrc_memmap_of_stream_refused(tmp_path, rng) -> None:
    path = written(tmp_path, counted(rng), "gzip")
    with pytest.raises(mrcz.UnsupportedError, match="memory-map"):
        mrcz.readMRC(path, useMemmap=True)


@pytest.mark.parametrize("codec", CODECS)
def test_write_refusals(tmp_path, rng, codec) -> None:
    image = counted(rng)
    with pytest.raises(mrcz.UnsupportedError, match="compressor"):
        written(tmp_path, image, codec, compressor="zstd")
    path = written(tmp_path, image, codec)
    with pytest.raises(mrcz.UnsupportedError, match="in place"):
        mrcz.writeMRC(image[:1], path, idx=2)
    np.testing.assert_array_equal(mrcz.readMRC(path)[0], image)


@pytest.mark.parametrize("codec", CODECS)
def test_failed_write_leaves_old_file(tmp_path, rng, codec) -> None:
    image = rng.integers(0, 16, size=(4, 16, 16)).astype(np.uint8)
    path = written(tmp_path, image, codec, dtype="uint4")
    before = path.read_bytes()
    bad = image.copy()
    bad[3, 5, 5] = 200  # uint4 packing fails on the last slice, mid-stream
    with pytest.raises(mrcz.MRCZError, match="uint4"):
        mrcz.writeMRC(bad, path, dtype="uint4")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("codec", CODECS)
def test_read_holds_the_image_once(tmp_path, rng, codec) -> None:
    """Decompression goes into the output array: no second copy of the file in memory."""
    tracemalloc = pytest.importorskip("tracemalloc")
    image = counted(rng, shape=(8, 1024, 1024), dtype="int16")  # 16 MiB
    path = written(tmp_path, image, codec)
    tracemalloc.start()
    try:
        back, _ = mrcz.readMRC(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(back, image)
    assert peak < 1.5 * image.nbytes, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("codec", CODECS)
def test_restart_reads_the_stream_again_on_the_same_handle(tmp_path, rng, codec) -> None:
    path = written(tmp_path, counted(rng), codec)
    plain = tmp_path / "plain.mrc"
    plain.write_bytes(wholefile.open_for_read(path).read())
    with open(path, "rb") as raw:
        stream = wholefile.StreamReader(raw, codec, str(path), closefd=False)
        assert stream.read(100) == plain.read_bytes()[:100]
        stream.seek(2000)
        stream.restart()
        assert stream.tell() == 0
        assert stream.read() == plain.read_bytes()
        stream.restart()
        stream.seek(1024)
        assert stream.read(50) == plain.read_bytes()[1024:1074]
        stream.close()
        assert not raw.closed  # closefd=False: the caller's file stays open
        raw.seek(0)
        assert raw.read() == path.read_bytes()
    stream.close()
    with pytest.raises(ValueError, match="closed"):
        stream.restart()
