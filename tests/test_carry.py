"""Copies and conversions keep every header field the data do not decide.

``mrcz compress`` then ``mrcz decompress`` of every MRC file of the corpus (EMDB
maps with symmetry records and sampling unlike the grid, mrcfile's stacks,
volume stacks and SERI extended header, the original mrcz's files) gives back
the header field for field and the extended header byte for byte; gemmi sees
the same grid, cell and origin.
"""
from __future__ import annotations

import bz2
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import mrcz
from conftest import corpus_files
from mrcz.carry import DISPLACED_KEY
from mrcz.cli import main
from mrcz.header import HEADER_DTYPE

SOURCES = (corpus_files("emdb", (".map",)) + corpus_files("mrcfile", (".mrc", ".mrcs", ".gz", ".bz2"))
           + corpus_files("mrcz060", (".mrc",)) + corpus_files("mrcz041", (".mrc",)))
#: Fields MRC2014 ties to the data layout, or that name the writer.
LAYOUT = {"nx", "ny", "nz", "mode", "nsymbt", "nversion", "machst", "nlabl", "label", "map"}
#: Bytes 96-99, this package's marks: other programs' values there are kept, mrcz's renewed.
MRCZ_MARKS = {"mrcz_magic", "mrcz_dtype", "mrcz_clevel"}


def plain_bytes(path: Path) -> bytes:
    """The MRC bytes of ``path``, through gzip or bzip2 where its name says so."""
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rb") as f:
        return f.read()


def header_of(raw: bytes) -> tuple[np.void, bytes]:
    """The header record (in the file's byte order) and the extended header."""
    big = raw[212] == 0x11
    rec = np.frombuffer(raw[:1024], dtype=HEADER_DTYPE.newbyteorder(">" if big else "<"))[0]
    return rec, raw[1024:1024 + int(rec["nsymbt"])]


def labels_of(rec: np.void) -> list[bytes]:
    return [bytes(rec["label"][i]) for i in range(int(rec["nlabl"]))
            if not bytes(rec["label"][i]).startswith(b"MRCZ")]


def changed_fields(before: np.void, after: np.void) -> dict:
    mrcz_source = bytes(before["label"][0]).startswith(b"MRCZ")
    skip = LAYOUT | MRCZ_MARKS if mrcz_source else LAYOUT
    return {name: (before[name], after[name]) for name in HEADER_DTYPE.names
            if name not in skip and not np.array_equal(np.asarray(before[name]),
                                                         np.asarray(after[name]))}


def compress_and_back(source: Path, tmp_path: Path) -> tuple[Path, Path]:
    packed, back = tmp_path / "packed.mrcz", tmp_path / "back.mrc"
    assert main(["compress", str(source), "-o", str(packed)]) == 0
    assert main(["decompress", str(packed), "-o", str(back)]) == 0
    return packed, back


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compress_then_decompress_keeps_the_header(source: Path, tmp_path: Path) -> None:
    _, back = compress_and_back(source, tmp_path)
    before, ext_before = header_of(plain_bytes(source))
    after, ext_after = header_of(back.read_bytes())
    assert changed_fields(before, after) == {}
    assert bytes(after["exttyp"]) == bytes(before["exttyp"])
    assert ext_after == ext_before
    assert labels_of(after) == labels_of(before)
    want, _ = mrcz.readMRC(str(source))
    got, _ = mrcz.readMRC(str(back))
    np.testing.assert_array_equal(np.asarray(np.concatenate(got) if isinstance(got, list)
                                             else got).reshape(-1),
                                  np.asarray(np.concatenate(want) if isinstance(want, list)
                                             else want).reshape(-1))


def gemmi_view(path: Path) -> tuple:
    gemmi = pytest.importorskip("gemmi", reason="gemmi not installed: pip install gemmi")
    try:
        ccp4 = gemmi.read_ccp4_map(str(path))
    except RuntimeError as err:
        pytest.skip(f"gemmi cannot read {path.name}: {err}")
    grid = ccp4.grid
    origin = tuple(ccp4.header_float(50 + i) for i in range(3))
    start = tuple(ccp4.header_i32(5 + i) for i in range(3))
    axes = tuple(ccp4.header_i32(17 + i) for i in range(3))
    return (grid.nu, grid.nv, grid.nw), grid.unit_cell.parameters, origin, start, axes, \
        grid.spacegroup.number if grid.spacegroup else None


@pytest.mark.parametrize("source", [p for p in SOURCES if p.suffix in (".map", ".mrc", ".mrcs")],
                         ids=lambda p: p.name)
def test_gemmi_sees_the_same_map_after_the_round_trip(source: Path, tmp_path: Path) -> None:
    _, back = compress_and_back(source, tmp_path)
    assert gemmi_view(back) == gemmi_view(source)


@pytest.mark.parametrize("name", ["EMD-3001.map", "EMD-3197.map"])
def test_convert_keeps_an_emdb_map(corpus: Path, name: str, tmp_path: Path) -> None:
    """``mrcz convert`` to plain and to .mrc.gz keeps the map where it is."""
    source = corpus / "emdb" / name
    before, ext = header_of(source.read_bytes())
    for out in (tmp_path / "e.mrc", tmp_path / "e.mrc.gz"):
        assert main(["convert", str(source), str(out)]) == 0
        after, ext_after = header_of(plain_bytes(out))
        assert changed_fields(before, after) == {} and ext_after == ext


def test_mrcz_holds_what_its_layout_displaces(corpus: Path, tmp_path: Path) -> None:
    """In MRCZ the SERI extended header and the volume stack's mz go to the JSON."""
    source = corpus / "mrcfile" / "mrcfile_exthdr.mrc"
    packed, _ = compress_and_back(source, tmp_path)
    _, header = mrcz.readMRC(str(packed))
    kept = header[DISPLACED_KEY]
    assert kept["exttyp"] == "SERI" and len(kept["extended_header"]) > 0
    stack = corpus / "mrcfile" / "mrcfile_volstack.mrc"
    packed = tmp_path / "vs.mrcz"
    volumes = mrcz.readMRC(str(stack))[0]  # 4-D: written here as one 3-D array of slices
    mrcz.writeMRC(volumes.reshape(-1, *volumes.shape[-2:]), str(packed), compressor="zstd",
                  template=stack)
    rec, _ = header_of(packed.read_bytes())
    assert int(rec["ispg"]) == int(header_of(stack.read_bytes())[0]["ispg"]) == 401
    assert mrcz.readMRC(str(packed))[1][DISPLACED_KEY]["mz"] == int(
        header_of(stack.read_bytes())[0]["mz"])


def foreign_file(path: Path, labels: list[bytes], extra: bytes) -> None:
    """A plain file from "another program": many labels, bytes 132-151 in use."""
    mrcz.writeMRC(np.arange(24, dtype=np.float32).reshape(2, 3, 4), str(path))
    raw = bytearray(path.read_bytes())
    raw[96:100] = b"\0\0\0\0"
    raw[132:152] = extra
    raw[220:224] = struct.pack("<i", len(labels))
    raw[224:1024] = b"".join(label.ljust(80, b" ") for label in labels).ljust(800, b"\0")
    path.write_bytes(bytes(raw))


def test_labels_and_foreign_extra_bytes_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "foreign.mrc"
    labels = [f"label {i}".encode() for i in range(10)]
    extra = bytes(range(1, 21))
    foreign_file(source, labels, extra)
    _, back = compress_and_back(source, tmp_path)
    raw = back.read_bytes()
    assert raw[132:152] == extra
    after, _ = header_of(raw)
    assert [label.rstrip() for label in labels_of(after)] == labels[:9]
    _, header = mrcz.readMRC(str(tmp_path / "packed.mrcz"))
    assert header[DISPLACED_KEY]["labels"] == ["label 9"]


def test_plain_file_cannot_hold_two_extended_headers(corpus: Path, tmp_path: Path) -> None:
    source = corpus / "mrcfile" / "mrcfile_exthdr.mrc"
    data, _ = mrcz.readMRC(str(source))
    with pytest.raises(ValueError, match=r"out\.mrc: .*'SERI'.*JSON metadata"):
        mrcz.writeMRC(data, str(tmp_path / "out.mrc"), meta={"dose": 1.0}, template=source)
    assert not (tmp_path / "out.mrc").exists()
    mrcz.writeMRC(data, str(tmp_path / "out.mrcz"), meta={"dose": 1.0}, template=source,
                  compressor="zstd")
    _, header = mrcz.readMRC(str(tmp_path / "out.mrcz"))
    assert header["dose"] == 1.0 and header[DISPLACED_KEY]["exttyp"] == "SERI"
