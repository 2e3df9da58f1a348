"""Archive integrity: the frame index, CRC-32C of every chunk, verified reads.

Every single bit flip in the compressed bytes or the frame index of an MRCZ
file written by this package must be caught by ``readMRC`` (naming the file
and, for a chunk, its z-slice) and by ``mrcz validate``; whole-file gzip,
bzip2 and zstd streams that are cut or flipped must be invalid; released mrcz
versions must read indexed files exactly as the same files without the index.
"""
from __future__ import annotations

import bz2
import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

import mrcz
from mrcz import codec, frameindex
from mrcz.cli import main
from mrcz.errors import CorruptDataError
from mrcz.stream import FrameAppender, MRCZReader, MRCZWriter
from mrcz.upgrade import CURRENT, INDEXED, index_folder
from mrcz.validate import is_valid, validate_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))
import refvenvs  # noqa: E402

NZ = 6


@pytest.fixture
def movie(rng) -> np.ndarray:
    return rng.poisson(0.8, size=(NZ, 48, 40)).astype(np.int16)


def write(path: Path, frames: np.ndarray, **kwargs) -> bytes:
    mrcz.writeMRC(frames, path, compressor=kwargs.pop("compressor", "zstd"), **kwargs)
    return path.read_bytes()


def chunk_spans(raw: bytes, nz: int) -> list[tuple[int, int]]:
    """``(offset, cbytes)`` of the chunks, from their headers (data block at 1024)."""
    spans, offset = [], 1024
    for _ in range(nz):
        cbytes = int.from_bytes(raw[offset + 12:offset + 16], "little")
        spans.append((offset, cbytes))
        offset += cbytes
    return spans


def without_index(raw: bytes, nz: int) -> bytes:
    """The file as written before the index: no trailer, packedBytes the chunks only."""
    bare = bytearray(raw[:-frameindex.trailer_bytes(nz)])
    bare[144:152] = (len(bare) - 1024).to_bytes(8, "little")
    return bytes(bare)


def flipped(raw: bytes, byte: int, bit: int) -> bytes:
    damaged = bytearray(raw)
    damaged[byte] ^= 1 << bit
    return bytes(damaged)


def read_error(path: Path, **kwargs) -> str:
    with pytest.raises(CorruptDataError) as caught:
        mrcz.readMRC(path, **kwargs)
    return str(caught.value)


# ----------------------------------------------------------------------------- layout

def test_trailer_lists_every_chunk_with_its_crc(tmp_path, movie):
    raw = write(tmp_path / "m.mrcz", movie)
    spans = chunk_spans(raw, NZ)
    end = spans[-1][0] + spans[-1][1]
    assert len(raw) == end + NZ * 16 + 32 and raw[-8:] == b"MRCZIDX1"
    index = frameindex.unpack(raw[end:], "m.mrcz")
    assert index.chunks() == spans
    assert index.crcs() == [frameindex.checksum(raw[o:o + n]) for o, n in spans]
    assert int.from_bytes(raw[144:152], "little") == len(raw) - 1024  # chunks and index


def test_plain_files_get_no_trailer(tmp_path, movie):
    mrcz.writeMRC(movie, tmp_path / "p.mrc")
    assert (tmp_path / "p.mrc").stat().st_size == 1024 + movie.nbytes


def test_stream_writer_and_blosc2_chunks_are_indexed(tmp_path, movie):
    with MRCZWriter(tmp_path / "s.mrcz", movie[0], compressor="zstd") as writer:
        writer.write(movie)
    assert (tmp_path / "s.mrcz").read_bytes() == write(tmp_path / "w.mrcz", movie)
    raw = write(tmp_path / "b2.mrcz", movie, backend="blosc2")
    assert raw[-8:] == b"MRCZIDX1"
    damaged = tmp_path / "b2bad.mrcz"
    offset, cbytes = chunk_spans(raw, NZ)[4]
    damaged.write_bytes(flipped(raw, offset + cbytes // 2, 3))
    assert "chunk 4 " in read_error(damaged)


# ----------------------------------------------------------------------------- bit flips

def position_classes(raw: bytes) -> dict[str, int]:
    """One byte of each kind a bit flip can hit (chunk parts, index parts)."""
    spans = chunk_spans(raw, NZ)
    end = spans[-1][0] + spans[-1][1]
    footer = len(raw) - 32
    classes = {}
    for k in (0, 3, NZ - 1):
        offset, cbytes = spans[k]
        classes.update({f"chunk {k} version": offset, f"chunk {k} flags": offset + 2,
                        f"chunk {k} typesize": offset + 3, f"chunk {k} nbytes": offset + 5,
                        f"chunk {k} blocksize": offset + 9, f"chunk {k} cbytes": offset + 12,
                        f"chunk {k} first payload": offset + 16,
                        f"chunk {k} middle": offset + cbytes // 2,
                        f"chunk {k} last byte": offset + cbytes - 1})
    for k in (0, NZ - 1):
        entry = end + 16 * k
        classes.update({f"entry {k} offset": entry + 1, f"entry {k} cbytes": entry + 8,
                        f"entry {k} crc": entry + 13})
    classes.update({"footer count": footer, "footer length": footer + 8,
                    "footer checksum id": footer + 16, "footer index crc": footer + 21,
                    "footer magic first": footer + 24, "footer magic last": footer + 31})
    return classes


def expected_frame(raw: bytes, byte: int) -> int | None:
    """The z-slice whose chunk holds ``byte`` (None: the byte is in the index)."""
    for k, (offset, cbytes) in enumerate(chunk_spans(raw, NZ)):
        if offset <= byte < offset + cbytes:
            return k
    return None


@pytest.mark.parametrize("compressor", ["zstd", "lz4"])
def test_every_position_class_is_detected_and_named(tmp_path, movie, compressor):
    raw = write(tmp_path / "good.mrcz", movie, compressor=compressor)
    path = tmp_path / "flip.mrcz"
    for label, byte in position_classes(raw).items():
        for bit in (0, 7):
            path.write_bytes(flipped(raw, byte, bit))
            message = read_error(path)
            frame = expected_frame(raw, byte)
            want = f"chunk {frame} " if frame is not None else "frame index"
            assert "flip.mrcz" in message and want in message, (label, bit, message)
            problems = validate_file(path)
            assert not is_valid(problems), (label, bit)
            assert any(want in p.message for p in problems), (label, bit, problems)


def test_many_random_flips_are_all_detected(tmp_path, movie):
    raw = write(tmp_path / "good.mrcz", movie)
    rng = np.random.default_rng(7)
    path = tmp_path / "flip.mrcz"
    bytes_ = rng.integers(1024, len(raw), size=400)
    bits = rng.integers(0, 8, size=400)
    detected = 0
    for byte, bit in zip(bytes_.tolist(), bits.tolist()):
        path.write_bytes(flipped(raw, byte, bit))
        message = read_error(path)
        frame = expected_frame(raw, byte)
        if frame is not None:
            assert f"chunk {frame} " in message, (byte, bit, message)
            # frame access reads that chunk alone, and checks it
            with pytest.raises(CorruptDataError, match=f"chunk {frame} "):
                MRCZReader(path)[frame]
        else:
            assert "frame index" in message, (byte, bit, message)
        detected += not is_valid(validate_file(path, check_data=False)) or not is_valid(
            validate_file(path))
    assert detected == len(bytes_)


def test_a_flip_in_any_byte_after_the_header_is_detected(tmp_path, rng):
    """Exhaustive on a small file: every byte of both chunks and of the index (one bit
    each, chosen at random)."""
    frames = rng.poisson(3.0, size=(2, 16, 16)).astype(np.uint16)
    raw = write(tmp_path / "small.mrcz", frames)
    path = tmp_path / "flip.mrcz"
    bits = rng.integers(0, 8, size=len(raw))
    spans = chunk_spans(raw, 2)
    for byte in range(1024, len(raw)):
        path.write_bytes(flipped(raw, byte, int(bits[byte])))
        message = read_error(path)
        frame = next((k for k, (o, n) in enumerate(spans) if o <= byte < o + n), None)
        assert (f"chunk {frame} " if frame is not None else "frame index") in message, byte
        if byte % 5 == 0:  # validate is slower: a fifth of the positions
            assert not is_valid(validate_file(path)), byte


def test_cli_validate_names_the_damaged_frame(tmp_path, movie, capsys):
    raw = write(tmp_path / "good.mrcz", movie)
    offset, cbytes = chunk_spans(raw, NZ)[2]
    (tmp_path / "bad.mrcz").write_bytes(flipped(raw, offset + cbytes - 5, 1))
    for command in (["validate"], ["validate", "--deep"], ["verify"]):
        assert main([*command, str(tmp_path / "good.mrcz")]) == 0
        assert main([*command, str(tmp_path / "bad.mrcz")]) == 1
        out = capsys.readouterr().out
        assert "INVALID" in out and "chunk 2 (z-slice 2)" in out


# ----------------------------------------------------------------------------- reading

def test_verify_false_skips_the_checksums(tmp_path, movie):
    raw = write(tmp_path / "m.mrcz", movie)
    # damage only the index: the chunks are intact, so an unverified read is right
    (tmp_path / "i.mrcz").write_bytes(flipped(raw, len(raw) - 40, 2))
    assert "frame index" in read_error(tmp_path / "i.mrcz")
    image, _ = mrcz.readMRC(tmp_path / "i.mrcz", verify=False)
    np.testing.assert_array_equal(image, movie)
    with MRCZReader(tmp_path / "i.mrcz", verify=False) as reader:
        np.testing.assert_array_equal(reader[3], movie[3])


def test_permissive_lists_every_damaged_slice(tmp_path, movie):
    raw = write(tmp_path / "m.mrcz", movie, n_threads=1)
    spans = chunk_spans(raw, NZ)
    damaged = flipped(flipped(raw, spans[2][0] + 30, 4), spans[4][0] + 30, 4)
    (tmp_path / "d.mrcz").write_bytes(damaged)
    with pytest.warns(UserWarning, match="recovered 2 of 6"):
        image, header = mrcz.readMRC(tmp_path / "d.mrcz", permissive=True)
    np.testing.assert_array_equal(image, movie[:2])
    assert header["damagedSlices"] == [2, 4]


def test_frame_access_uses_the_index_not_the_chunk_headers(tmp_path, rng, monkeypatch):
    stack = rng.normal(size=(300, 16, 16)).astype(np.float32)
    write(tmp_path / "s.mrcz", stack)

    def no_walk(*args, **kwargs):
        raise AssertionError("chunk headers walked")

    monkeypatch.setattr(codec, "index_chunks", no_walk)
    np.testing.assert_array_equal(mrcz.readMRC(tmp_path / "s.mrcz", idx=257)[0], stack[257])
    with MRCZReader(tmp_path / "s.mrcz") as reader:
        np.testing.assert_array_equal(reader[-1], stack[-1])


def test_files_without_index_read_through_the_header_walk(tmp_path, movie):
    raw = write(tmp_path / "m.mrcz", movie)
    (tmp_path / "old.mrcz").write_bytes(without_index(raw, NZ))
    np.testing.assert_array_equal(mrcz.readMRC(tmp_path / "old.mrcz")[0], movie)
    np.testing.assert_array_equal(mrcz.readMRC(tmp_path / "old.mrcz", idx=4)[0], movie[4])
    problems = validate_file(tmp_path / "old.mrcz")
    assert is_valid(problems) and any("no frame index" in p.message for p in problems)


def test_stale_index_falls_back_to_the_walk(tmp_path, movie):
    """An index of 4 chunks after 6 chunks (another program appended): walked, warned."""
    raw = write(tmp_path / "m.mrcz", movie)
    chunks_end = len(raw) - frameindex.trailer_bytes(NZ)
    stale = frameindex.unpack(raw[chunks_end:], "m").prefix(4).pack()
    (tmp_path / "stale.mrcz").write_bytes(raw[:chunks_end] + stale)
    with pytest.warns(UserWarning, match="stale"):
        image, _ = mrcz.readMRC(tmp_path / "stale.mrcz")
    np.testing.assert_array_equal(image, movie)
    assert not is_valid(validate_file(tmp_path / "stale.mrcz"))


# ----------------------------------------------------------------------------- appends

def test_append_extends_the_index_over_every_frame(tmp_path, movie):
    path = tmp_path / "a.mrcz"
    write(path, movie)
    mrcz.writeMRC(movie[:3] + 1, path, compressor="zstd", idx=NZ)
    raw = path.read_bytes()
    assert validate_file(path) == []
    index = frameindex.unpack(raw[-frameindex.trailer_bytes(NZ + 3):], "a")
    assert index.chunks() == chunk_spans(raw, NZ + 3)
    offset, cbytes = chunk_spans(raw, NZ + 3)[7]
    path.write_bytes(flipped(raw, offset + cbytes // 2, 0))
    assert "chunk 7 " in read_error(path)


def test_append_to_a_file_without_index_gives_it_one(tmp_path, movie):
    path = tmp_path / "a.mrcz"
    raw = write(path, movie)
    path.write_bytes(without_index(raw, NZ))
    mrcz.writeMRC(movie[:2], path, compressor="zstd", idx=NZ)
    assert validate_file(path) == []
    assert path.read_bytes()[-8:] == b"MRCZIDX1"


class Crash(Exception):
    pass


def test_crash_mid_append_leaves_old_frames_readable_and_verified(tmp_path, movie,
                                                                  monkeypatch):
    path = tmp_path / "a.mrcz"
    write(path, movie, n_threads=1)
    real_write = FrameAppender._write
    calls = []

    def dying_write(self, encoded):  # encoded: a batch of one or more chunks
        calls.extend(encoded)
        if len(calls) >= 3:
            raise Crash()
        real_write(self, encoded)

    monkeypatch.setattr(FrameAppender, "_write", dying_write)
    with pytest.raises(Crash):
        mrcz.writeMRC(np.concatenate([movie, movie]), path, compressor="zstd", idx=NZ,
                      n_threads=1)
    monkeypatch.undo()
    image, header = mrcz.readMRC(path)
    np.testing.assert_array_equal(image, movie)
    raw = path.read_bytes()
    assert raw[-8:] == b"MRCZIDX1"  # the parked copy of the old index ends the file
    problems = validate_file(path)
    assert any("interrupted append" in p.message for p in problems)
    offset, cbytes = chunk_spans(raw, NZ)[1]
    path.write_bytes(flipped(raw, offset + cbytes // 2, 6))
    assert "chunk 1 " in read_error(path)  # still verified
    path.write_bytes(raw)
    mrcz.writeMRC(movie[:1], path, compressor="zstd", idx=NZ)  # a later append repairs it
    assert validate_file(path) == []
    np.testing.assert_array_equal(mrcz.readMRC(path)[0][NZ], movie[0])


def test_crash_after_the_new_index_before_the_header(tmp_path, movie):
    """The index lists more chunks than the header: the header's frames read, verified."""
    path = tmp_path / "a.mrcz"
    old_header = write(path, movie)[:1024]
    mrcz.writeMRC(movie[:2], path, compressor="zstd", idx=NZ)
    raw = old_header + path.read_bytes()[1024:]
    path.write_bytes(raw)
    np.testing.assert_array_equal(mrcz.readMRC(path)[0], movie)
    offset, cbytes = chunk_spans(raw, NZ)[5]
    path.write_bytes(flipped(raw, offset + 20, 1))
    assert "chunk 5 " in read_error(path)


# ----------------------------------------------------------------------------- mrcz index

def test_index_folder_adds_the_index_without_rewriting_chunks(tmp_path, movie):
    folder = tmp_path / "data"
    folder.mkdir()
    raw = write(tmp_path / "m.mrcz", movie)
    old = without_index(raw, NZ)
    (folder / "old.mrcz").write_bytes(old)
    mrcz.writeMRC(movie, folder / "plain.mrc")
    results = {r.path.name: r.status for r in index_folder(folder)}
    assert results == {"old.mrcz": INDEXED, "plain.mrc": CURRENT}
    # the chunks and header untouched, the index added after them
    assert (folder / "old.mrcz").read_bytes() == old + raw[-frameindex.trailer_bytes(NZ):]
    assert (folder / "backup" / "old.mrcz").read_bytes() == old
    assert validate_file(folder / "old.mrcz") == []
    assert {r.status for r in index_folder(folder)} == {CURRENT}
    assert main(["index", str(folder)]) == 0


def test_index_refuses_a_file_whose_chunks_do_not_decode(tmp_path, movie):
    folder = tmp_path / "data"
    folder.mkdir()
    raw = write(tmp_path / "m.mrcz", movie)
    offset, cbytes = chunk_spans(raw, NZ)[3]
    bad = bytearray(without_index(raw, NZ))
    bad[offset + 16:offset + cbytes] = bytes(cbytes - 16)
    (folder / "bad.mrcz").write_bytes(bytes(bad))
    (result,) = index_folder(folder)
    assert result.status == "failed"
    assert (folder / "bad.mrcz").read_bytes() == bytes(bad)


# ----------------------------------------------------------------------------- streams

def cut_and_flipped(raw: bytes) -> dict[str, bytes]:
    return {"truncated": raw[:len(raw) * 2 // 5], "flipped": flipped(raw, len(raw) // 2, 3),
            "last byte cut": raw[:-1]}


@pytest.mark.parametrize("suffix, compress", [
    (".mrc.gz", gzip.compress), (".mrc.bz2", bz2.compress),
    (".mrc.zst", lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b))])
def test_damaged_whole_file_streams_are_invalid(tmp_path, rng, suffix, compress, capsys):
    image = rng.integers(0, 200, size=(4, 32, 32)).astype(np.int16)
    mrcz.writeMRC(image, tmp_path / "p.mrc")
    raw = compress((tmp_path / "p.mrc").read_bytes())
    good = tmp_path / f"good{suffix}"
    good.write_bytes(raw)
    assert validate_file(good) == []
    for label, damaged in cut_and_flipped(raw).items():
        path = tmp_path / f"{label.replace(' ', '_')}{suffix}"
        path.write_bytes(damaged)
        assert not is_valid(validate_file(path)), label
        assert main(["validate", str(path)]) == 1, label
        said = capsys.readouterr()
        assert "INVALID" in said.out or "truncated" in said.err, label


def test_streams_written_by_this_package_validate(tmp_path, rng):
    image = rng.integers(0, 200, size=(4, 32, 32)).astype(np.int16)
    for suffix in (".mrc.gz", ".mrc.bz2", ".mrc.zst"):
        path = tmp_path / f"w{suffix}"
        mrcz.writeMRC(image, path)
        assert validate_file(path, deep=True) == [], suffix
        raw = path.read_bytes()
        for label, damaged in cut_and_flipped(raw).items():
            path.write_bytes(damaged)
            assert not is_valid(validate_file(path)), (suffix, label)


# ----------------------------------------------------------------------------- old releases

OLD_RELEASES = ("0.4.1", "0.5.0", "0.5.5", "0.5.10", "0.6.0")


@pytest.mark.parametrize("version", OLD_RELEASES)
def test_old_releases_read_indexed_files_as_before(tmp_path, rng, version):
    """Each release returns the same for a file with the index as for the same bytes
    without it (and, from 0.5 on, the data that were written)."""
    cases = {"int16_zstd": (rng.poisson(2.0, size=(5, 40, 36)).astype(np.int16), "zstd"),
             "float32_lz4": (rng.normal(size=(3, 24, 20)).astype(np.float32), "lz4"),
             "uint16_zlib": (rng.integers(0, 999, size=(4, 16, 16)).astype(np.uint16), "zlib")}
    spec = []
    for name, (data, compressor) in cases.items():
        indexed = tmp_path / f"{name}.mrcz"
        raw = write(indexed, data, compressor=compressor)
        assert raw[-8:] == b"MRCZIDX1"
        bare = tmp_path / f"{name}_bare.mrcz"
        bare.write_bytes(raw[:-frameindex.trailer_bytes(len(data))])
        spec += [{"name": name, "path": str(indexed), "pixelunits": "\\AA"},
                 {"name": name + "_bare", "path": str(bare), "pixelunits": "\\AA"}]
    appended = tmp_path / "appended.mrcz"
    write(appended, cases["int16_zstd"][0])
    mrcz.writeMRC(cases["int16_zstd"][0][:2], appended, compressor="zstd", idx=5)
    spec.append({"name": "appended", "path": str(appended), "pixelunits": "\\AA"})
    results = refvenvs.run_script(version, "ref_read.py", spec, tmp_path / "out")["cases"]
    for name, (data, _) in cases.items():
        with_index, without = results[name], results[name + "_bare"]
        assert "read_error" not in with_index, with_index
        assert {k: v for k, v in with_index.items() if k != "values"} == {
            k: v for k, v in without.items() if k != "values"}
        np.testing.assert_array_equal(np.load(with_index["values"]),
                                      np.load(without["values"]))
        if version >= "0.5":
            np.testing.assert_array_equal(np.load(with_index["values"]).reshape(data.shape),
                                          data)
    if version >= "0.5":
        want = np.concatenate([cases["int16_zstd"][0], cases["int16_zstd"][0][:2]])
        np.testing.assert_array_equal(
            np.load(results["appended"]["values"]).reshape(want.shape), want)
