"""mrcfile's usage guide, section by section, with ``mrcz`` in place of ``mrcfile``.

Every task runs on plain MRC, whole-file ``.gz``/``.bz2``/``.zst`` and MRCZ
files. Where MRCZ differs it is said in the test (and in the guide "mrcz for
mrcfile users"). mrcfile itself checks what we write where it is installed.
"""
from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

import mrcz
from mrcz.cli import main

SUFFIXES = [".mrc", ".mrc.gz", ".mrc.bz2", ".mrc.zst", ".mrcz"]
EXAMPLE = np.arange(12, dtype=np.int8).reshape(3, 4)
DATA_3D = np.linspace(-1000, 1000, 20, dtype=np.int16).reshape(2, 2, 5)


@pytest.fixture(params=SUFFIXES)
def path(request, tmp_path) -> Path:
    """A file name of each kind, holding EXAMPLE."""
    name = tmp_path / f"tmp{request.param}"
    with mrcz.new(name) as mrc:
        mrc.set_data(EXAMPLE)
    return name


def mrcfile_or_skip():
    return pytest.importorskip("mrcfile", reason="mrcfile not installed: pip install mrcfile")


# ------------------------------------------------------------------ opening files
def test_new_then_open_gives_the_data(path):
    with mrcz.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, EXAMPLE)
        assert repr(mrc) == f"MrcFile({str(path)!r}, mode='r')"
    np.testing.assert_array_equal(mrcz.read(path), EXAMPLE)


@pytest.mark.parametrize("compression,suffix", [("gzip", ".gz"), ("bzip2", ".bz2"),
                                                ("zstd", ".zst")])
def test_compression_keyword_writes_that_stream(tmp_path, compression, suffix):
    name = tmp_path / f"c.mrc{suffix}"
    with mrcz.new(name, compression=compression) as mrc:
        mrc.set_data(EXAMPLE * 2)
    magic = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "zstd": b"\x28\xb5\x2f\xfd"}[compression]
    assert name.read_bytes().startswith(magic)
    with mrcz.open(name) as mrc:
        assert mrc.compression == compression
        np.testing.assert_array_equal(mrc.data, EXAMPLE * 2)


def test_flush_keeps_the_file_open(path):
    mrc = mrcz.open(path, mode="r+")
    mrc.data[0, 0] = 9
    mrc.flush()
    assert mrcz.read(path)[0, 0] == 9
    mrc.data[0, 1] = 8
    mrc.close()
    assert mrcz.read(path)[0, 1] == 8


def test_open_async(path):
    future = mrcz.open_async(path)
    mrc = future.result()
    assert int(mrc.data.sum()) == int(EXAMPLE.sum())
    mrc.close()


def test_file_like_objects(tmp_path):
    buf = io.BytesIO()
    with mrcz.new(buf) as mrc:
        mrc.set_data(DATA_3D)
    buf.seek(0)
    with mrcz.open(buf) as mrc:
        np.testing.assert_array_equal(mrc.data, DATA_3D)
    plain = tmp_path / "p.mrc"
    plain.write_bytes(buf.getvalue())
    np.testing.assert_array_equal(mrcz.read(plain), DATA_3D)
    packed = tmp_path / "p.mrcz"
    mrcz.write(packed, DATA_3D)
    with open(packed, "rb") as f, mrcz.open(f) as mrc:
        np.testing.assert_array_equal(mrc.data, DATA_3D)


# --------------------------------------------------------------------- large files
def test_mmap_reads_and_writes_slices(tmp_path):
    name = tmp_path / "m.mrc"
    mrcz.write(name, EXAMPLE)
    mrc = mrcz.mmap(name, mode="r+")
    assert isinstance(mrc.data, np.memmap)
    np.testing.assert_array_equal(mrc.data[1:3], EXAMPLE[1:3])
    mrc.data[1:3, 1:3] = 0
    mrc.close()
    assert mrcz.read(name)[1:3, 1:3].tolist() == [[0, 0], [0, 0]]


def test_mmap_refuses_compressed_files(tmp_path):
    mrcz.write(tmp_path / "m.mrcz", EXAMPLE)
    with pytest.raises(ValueError, match="cannot be memory-mapped"):
        mrcz.mmap(tmp_path / "m.mrcz")


def test_new_mmap_fills_slice_by_slice(tmp_path):
    name = tmp_path / "mmap.mrc"
    mrc = mrcz.new_mmap(name, shape=(3, 3, 4), mrc_mode=0)
    for value in range(len(mrc.data)):
        mrc.data[value] = value
    mrc.update_header_stats()
    mrc.close()
    data = mrcz.read(name)
    assert data.shape == (3, 3, 4) and data[:, 0, 0].tolist() == [0, 1, 2]
    mrcfile = mrcfile_or_skip()
    assert mrcfile.validate(str(name), print_file=io.StringIO())


# ---------------------------------------------------------------------- file modes
def test_read_only_by_default(path):
    with mrcz.open(path) as mrc:
        with pytest.raises(ValueError, match="read-only"):
            mrc.set_data(EXAMPLE)


def test_r_plus_and_w_plus(path, tmp_path):
    with mrcz.open(path, mode="r+") as mrc:
        assert repr(mrc).endswith("mode='r+')")
        mrc.set_data(DATA_3D)
    np.testing.assert_array_equal(mrcz.read(path), DATA_3D)
    with mrcz.open(tmp_path / "empty.mrc", mode="w+") as mrc:
        assert mrc.data.size == 0 and mrc.data.dtype == np.int8


def test_new_refuses_to_replace_unless_overwrite(path):
    with pytest.raises(ValueError, match="already exists; set overwrite=True"):
        mrcz.new(path)
    before = path.read_bytes()
    assert path.read_bytes() == before
    with mrcz.new(path, overwrite=True) as mrc:
        mrc.set_data(DATA_3D)
    np.testing.assert_array_equal(mrcz.read(path), DATA_3D)


# ------------------------------------------------------------------ permissive mode
def test_permissive_reads_an_invalid_map_id_with_a_warning(tmp_path):
    name = tmp_path / "invalid.mrc"
    with mrcz.new(name) as mrc:
        mrc.set_data(EXAMPLE)
        mrc.header.map = b"map "
    with pytest.raises(ValueError, match="Map ID string not found"):
        mrcz.open(name)
    with pytest.warns(RuntimeWarning, match="Map ID string not found"):
        mrc = mrcz.open(name, mode="r+", permissive=True)
    mrc.header.map = mrcz.fileobject.MAP_ID
    mrc.close()
    mrcz.open(name).close()


def test_permissive_unknown_mode_gives_no_data(tmp_path):
    name = tmp_path / "mode.mrc"
    mrcz.write(name, EXAMPLE)
    raw = bytearray(name.read_bytes())
    raw[12:16] = (77).to_bytes(4, "little")
    name.write_bytes(bytes(raw))
    with pytest.raises(mrcz.MRCZError, match="mode"):
        mrcz.open(name)
    with pytest.warns(RuntimeWarning):
        mrc = mrcz.open(name, permissive=True)
    assert mrc.data is None and int(mrc.header.mode) == 77


def test_permissive_short_data_block(tmp_path):
    name = tmp_path / "short.mrc"
    mrcz.write(name, DATA_3D)
    name.write_bytes(name.read_bytes()[:-6])
    with pytest.raises(ValueError, match="data block"):
        mrcz.open(name)
    with pytest.warns(RuntimeWarning, match="data block"):
        assert mrcz.open(name, permissive=True).data is None


# -------------------------------------------------------------- header and data
def test_header_is_one_writable_record_with_mrcfile_names(path):
    with mrcz.open(path, mode="r+") as mrc:
        assert mrc.header.dtype.names[:4] == ("nx", "ny", "nz", "mode")
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (4, 3, 1)
        assert mrc.header.nbytes == 1024
        assert mrc.extended_header.size == 0
        mrc.data[:] = np.ones_like(EXAMPLE)
        with pytest.raises(AttributeError):
            mrc.data = np.ones_like(EXAMPLE)
    assert mrcz.read(path).tolist() == np.ones_like(EXAMPLE).tolist()


def test_set_data_and_extended_header(path):
    text = b"The extended header can hold any kind of numpy array"
    with mrcz.open(path, mode="r+") as mrc:
        mrc.set_data(DATA_3D)
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (5, 2, 2)
        mrc.set_extended_header(np.frombuffer(text, dtype="S52"))
        assert int(mrc.header.nsymbt) == 52
        mrc.header.exttyp = b"TEXT"
    with mrcz.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, DATA_3D)
        # MRCZ keeps a non-JSON extended header inside its JSON; it reads back the same
        assert mrc.extended_header.tobytes() == text or (
            str(path).endswith(".mrcz") and mrc.extended_header.tobytes().startswith(b"{"))


def test_print_header(path, capsys):
    with mrcz.open(path) as mrc:
        mrc.print_header()
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["nx", ":", "4"] and "cella" in out


# ---------------------------------------------------------------------- voxel size
def test_voxel_size_get_and_set(path):
    with mrcz.open(path, mode="r+") as mrc:
        assert tuple(mrc.voxel_size.tolist()) == (0.0, 0.0, 0.0)
        mrc.voxel_size = 1.0
        assert tuple(mrc.voxel_size.tolist()) == (1.0, 1.0, 1.0)
        mrc.voxel_size = (1.0, 2.0, 3.0)
        with pytest.raises(ValueError, match="read-only"):
            mrc.voxel_size.x = 2.0
        vsize = mrc.voxel_size.copy()
        vsize.x = 4.0
        mrc.voxel_size = vsize
    with mrcz.open(path, mode="r+") as mrc:
        assert tuple(mrc.voxel_size.tolist()) == (4.0, 2.0, 3.0)
        assert float(mrc.header.cella.x) == 16.0
        mrc.header.cella.x = 8
        assert float(mrc.voxel_size.x) == 2.0
        mrc.set_data(DATA_3D)  # a new grid: the cell stays, the voxel size follows
        assert float(mrc.voxel_size.x) == pytest.approx(8 / 5)


def test_nstart_and_origin_are_kept(path):
    with mrcz.open(path, mode="r+") as mrc:
        mrc.nstart = (-2, 3, 4)
        mrc.header.origin.x = 22.8
    with mrcz.open(path) as mrc:
        assert tuple(mrc.nstart.tolist()) == (-2, 3, 4)
        assert float(mrc.header.origin.x) == pytest.approx(22.8)


# ------------------------------------------------------ keeping header and data in sync
def test_header_follows_set_data_only(path):
    with mrcz.open(path, mode="r+") as mrc:
        assert float(mrc.header.dmax) == EXAMPLE.max()
        mrc.set_data(DATA_3D)
        assert float(mrc.header.dmax) == 1000.0
        mrc.data.shape = (5, 4)
        assert int(mrc.header.nx) != mrc.data.shape[-1]
        mrc.update_header_from_data()
        assert int(mrc.header.nx) == 4
        mrc.data[2:] = 0
        assert float(mrc.header.dmax) == 1000.0
        mrc.update_header_stats()
        assert float(mrc.header.dmax) == 0.0 == mrc.data.max()
        assert float(mrc.header.rms) == pytest.approx(float(mrc.data.std()))
        mrc.reset_header_stats()
        assert float(mrc.header.dmax) < float(mrc.header.dmin) and float(mrc.header.rms) < 0


# ------------------------------------------------------------------- dimensionality
def test_dimensionality(path):
    with mrcz.open(path, mode="r+") as mrc:
        assert mrc.is_single_image() and not mrc.is_image_stack()
        mrc.set_data(DATA_3D)  # 3-D data in an image file: an image stack
        assert mrc.is_image_stack() and int(mrc.header.ispg) == 0
    with mrcz.open(path) as mrc:
        assert mrc.is_image_stack() and len(mrc) == 2
    with mrcz.new(path, overwrite=True) as mrc:
        mrc.set_data(DATA_3D)
        assert mrc.is_volume() and int(mrc.header.ispg) == 1
        mrc.set_image_stack()
        assert mrc.is_image_stack() and int(mrc.header.mz) == 1
        mrc.set_volume()
        assert mrc.is_volume() and int(mrc.header.mz) == 2
    with mrcz.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((2, 3, 4, 5), dtype=np.float32))
    with mrcz.open(path) as mrc:
        assert mrc.is_volume_stack() and mrc.data.shape == (2, 3, 4, 5)
        assert int(mrc.header.ispg) == 401 and int(mrc.header.mz) == 3


# ------------------------------------------------------------------------ data types
@pytest.mark.parametrize("dtype,mode", [("float16", 12), ("float32", 2), ("int8", 0),
                                        ("int16", 1), ("uint8", 6), ("uint16", 6),
                                        ("complex64", 4)])
def test_dtypes(path, dtype, mode):
    data = (np.arange(20) % 7).reshape(4, 5).astype(dtype)
    with mrcz.open(path, mode="r+") as mrc:
        mrc.set_data(data)
        assert int(mrc.header.mode) == mode
    back = mrcz.read(path)
    np.testing.assert_array_equal(back, data)
    assert back.dtype == data.dtype


def test_float64_is_refused(path):
    with mrcz.open(path, mode="r+") as mrc:
        with pytest.raises(ValueError, match="dtype 'float64' cannot be converted"):
            mrc.set_data(np.zeros((4, 5)))


# ------------------------------------------------------------------------ validation
def test_validate(path):
    assert mrcz.validate(path, print_file=io.StringIO())
    with mrcz.new(path, overwrite=True) as mrc:
        mrc.set_data(EXAMPLE)
        mrc.header.mz = -1
    output = io.StringIO()
    if path.suffix == ".mrcz":  # MRCZ uses mz itself; the -1 is kept in the JSON
        assert mrcz.validate(path, print_file=output)
        assert int(mrcz.open(path).header.mz) == -1
        return
    assert not mrcz.validate(path, print_file=output)
    assert "mz" in output.getvalue()


def test_mrcfile_reads_and_validates_what_we_write(tmp_path):
    mrcfile = mrcfile_or_skip()
    for suffix in (".mrc", ".mrc.gz", ".mrc.bz2"):
        name = tmp_path / f"v{suffix}"
        with mrcz.new(name) as mrc:
            mrc.set_data(DATA_3D)
            mrc.voxel_size = 1.5
        assert mrcfile.validate(str(name), print_file=io.StringIO())
        with mrcfile.open(str(name)) as theirs:
            np.testing.assert_array_equal(theirs.data, DATA_3D)
            assert float(theirs.voxel_size.x) == 1.5


# -------------------------------------------------------------- extended headers
def test_extended_header_of_any_type_is_kept(corpus, tmp_path):
    source = corpus / "mrcfile" / "mrcfile_exthdr.mrc"
    with mrcz.open(source) as mrc:
        exttyp, raw = bytes(mrc.header.exttyp), mrc.extended_header.tobytes()
        data = mrc.data
    assert exttyp == b"SERI" and len(raw) > 0
    for suffix in (".mrc", ".mrcz"):
        out = tmp_path / f"copy{suffix}"
        with mrcz.new(out) as copy:
            copy.set_data(data)
            copy.set_extended_header(np.frombuffer(raw, dtype="V1"))
            copy.header.exttyp = exttyp
        with mrcz.open(out) as mrc:
            np.testing.assert_array_equal(mrc.data, data)
            if suffix == ".mrc":
                assert mrc.extended_header.tobytes() == raw
                assert bytes(mrc.header.exttyp) == exttyp
    # MRCZ keeps it in the JSON; decompressing gives the bytes back
    assert main(["decompress", str(tmp_path / "copy.mrcz"),
                          "-o", str(tmp_path / "back.mrc")]) == 0
    with mrcz.open(tmp_path / "back.mrc") as mrc:
        assert mrc.extended_header.tobytes() == raw and bytes(mrc.header.exttyp) == exttyp


def test_json_metadata(tmp_path):
    for suffix in (".mrc", ".mrcz"):
        name = tmp_path / f"j{suffix}"
        with mrcz.new(name) as mrc:
            mrc.set_data(DATA_3D)
            mrc.metadata = {"dose": 1.5, "operator": "me"}
        with mrcz.open(name) as mrc:
            assert mrc.metadata == {"dose": 1.5, "operator": "me"}
            assert bytes(mrc.header.exttyp) == b"json"
        assert mrcz.readMRC(str(name))[1]["dose"] == 1.5


# ----------------------------------------------------- what mrcfile cannot: MRCZ frames
def make_movie(tmp_path) -> tuple[Path, np.ndarray]:
    movie = np.random.default_rng(3).integers(0, 30, (7, 48, 40)).astype(np.int16)
    name = tmp_path / "movie.mrcz"
    with mrcz.new(name) as mrc:
        mrc.set_data(movie)
        mrc.set_image_stack()
        mrc.voxel_size = 1.1
    return name, movie


def test_frame_k_without_decompressing_the_rest(tmp_path, monkeypatch):
    name, movie = make_movie(tmp_path)
    asked = []
    real = mrcz.fileobject.read_image

    def spy(src, **kwargs):
        asked.append(kwargs.get("idx"))
        return real(src, **kwargs)

    monkeypatch.setattr(mrcz.fileobject, "read_image", spy)
    with mrcz.open(name) as mrc:
        assert len(mrc) == 7 and mrc.is_image_stack()
        np.testing.assert_array_equal(mrc.read_frame(5), movie[5])
        np.testing.assert_array_equal(mrc.read_frame(-1), movie[6])
        assert asked == [(5, 5), (6, 6)]
        assert [np.array_equal(a, b) for a, b in zip(mrc, movie)] == [True] * 7
        with pytest.raises(IndexError):
            mrc.read_frame(7)


def test_append_to_compressed_file(tmp_path):
    name, movie = make_movie(tmp_path)
    chunks_before = name.read_bytes()
    with mrcz.open(name, mode="r+") as mrc:
        mrc.append(movie[:3])
        assert len(mrc) == 10
    assert name.read_bytes()[1024:len(chunks_before)][:200] == chunks_before[1024:][:200]
    with mrcz.open(name) as mrc:
        np.testing.assert_array_equal(mrc.data, np.concatenate([movie, movie[:3]]))
        assert float(mrc.voxel_size.x) == pytest.approx(1.1)


def test_pickling_reopens_by_name(path):
    with mrcz.open(path) as mrc:
        again = pickle.loads(pickle.dumps(mrc))
    np.testing.assert_array_equal(again.data, EXAMPLE)
    assert again.name == str(path) and again.mode == "r"
    with pytest.raises(TypeError, match="stream"):
        pickle.dumps(mrcz.open(io.BytesIO(path.read_bytes()) if path.suffix == ".mrc"
                               else _plain_stream()))


def _plain_stream() -> io.BytesIO:
    buf = io.BytesIO()
    with mrcz.new(buf) as mrc:
        mrc.set_data(EXAMPLE)
    buf.seek(0)
    return buf


def test_readmrc_reads_what_the_file_object_writes(path):
    with mrcz.open(path, mode="r+") as mrc:
        mrc.set_data(DATA_3D)
        mrc.voxel_size = 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image, header = mrcz.readMRC(str(path))
    np.testing.assert_array_equal(np.asarray(image).reshape(DATA_3D.shape), DATA_3D)
    np.testing.assert_allclose(header["pixelsize"], 2.0)


@pytest.mark.parametrize("kind", [b"FEI1", b"FEI2"])
@pytest.mark.parametrize("suffix", [".mrc", ".mrcz"])
def test_indexed_extended_header_reads_fei_records(tmp_path, kind, suffix):
    base = (mrcz.mrcobject.FEI1_EXTENDED_HEADER_DTYPE if kind == b"FEI1"
            else mrcz.mrcobject.FEI2_EXTENDED_HEADER_DTYPE)
    records = np.zeros(3, dtype=base)
    records["Metadata size"] = base.itemsize
    records["HT"] = 300e3
    records["Dose"] = [1.0, 2.0, 3.0]
    records["Camera name"] = b"Falcon"
    name = tmp_path / f"fei{suffix}"
    with mrcz.new(name) as mrc:
        mrc.set_data(np.zeros((3, 8, 8), dtype=np.float32))
        mrc.set_extended_header(records)
        mrc.header.exttyp = kind
    with mrcz.open(name) as mrc:
        indexed = mrc.indexed_extended_header
        assert indexed.tolist() == records.tolist()
    if suffix == ".mrc":
        mrcfile = mrcfile_or_skip()
        with mrcfile.open(str(name)) as theirs:
            assert theirs.indexed_extended_header["Dose"].tolist() == [1.0, 2.0, 3.0]
            assert theirs.indexed_extended_header.dtype.names == base.names
    with mrcz.open(DATA_FILE_WITHOUT_FEI(tmp_path)) as mrc:
        assert mrc.indexed_extended_header is None


def DATA_FILE_WITHOUT_FEI(tmp_path: Path) -> Path:  # noqa: N802
    name = tmp_path / "plain.mrc"
    mrcz.write(name, EXAMPLE, overwrite=True)
    return name
