"""Failed writes never damage what was there; bad files give clear errors."""
from __future__ import annotations

import errno
import io
import os

import numpy as np
import pytest

import mrcz
from mrcz import fileops


class FullDisk:
    """``os`` as fileops sees it, but whose ``write`` takes ``room`` more bytes, then
    writes short (as a full disk does) and then fails with ENOSPC."""

    room = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data) -> int:
        view = memoryview(data).cast("B")
        if FullDisk.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        take = min(FullDisk.room, view.nbytes)
        FullDisk.room -= take
        return os.write(fd, view[:take])


@pytest.fixture
def full_disk(monkeypatch):
    monkeypatch.setattr(fileops, "os", FullDisk())
    return FullDisk


@pytest.mark.parametrize("compressor", [None, "zstd"])
@pytest.mark.parametrize("room", [0, 500, 1024, 1100, 5000, 20000])
def test_full_disk_keeps_previous_file(tmp_path, rng, full_disk, compressor, room):
    path = tmp_path / "movie.mrcz"
    old = rng.integers(0, 5, size=(4, 32, 32)).astype(np.int16)
    full_disk.room = 10**9
    mrcz.writeMRC(old, path, compressor=compressor)
    before = path.read_bytes()
    full_disk.room = room
    new = rng.integers(0, 30000, size=(8, 128, 128)).astype(np.int16)
    with pytest.raises(OSError) as caught:
        mrcz.writeMRC(new, path, compressor=compressor, meta={"x": "y" * 200})
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.mrcz"]


def test_write_into_missing_folder_is_oserror(tmp_path, rng):
    with pytest.raises(OSError):
        mrcz.writeMRC(np.zeros((2, 4, 4), np.int8), tmp_path / "nope" / "x.mrc")


def test_interrupted_compressed_append_keeps_old_frames(tmp_path, rng):
    path = tmp_path / "a.mrcz"
    image = rng.integers(0, 9, size=(3, 16, 16)).astype(np.int8)
    mrcz.writeMRC(image, path, compressor="zstd")

    class Failing:
        shape, dtype = (2, 16, 16), np.dtype(np.int8)

        def __getitem__(self, z):
            if z == 1:
                raise KeyboardInterrupt
            return np.ones((16, 16), np.int8)

    with pytest.raises(KeyboardInterrupt):
        mrcz.writeMRC(Failing(), path, compressor="zstd", idx=3)
    back, header = mrcz.readMRC(path)
    np.testing.assert_array_equal(back, image)
    mrcz.writeMRC(image, path, compressor="zstd", idx=3)  # a later append still works
    np.testing.assert_array_equal(mrcz.readMRC(path)[0], np.concatenate([image, image]))


def test_hostile_json_nesting_is_refused(tmp_path):
    path = tmp_path / "deep.mrc"
    mrcz.writeMRC(np.zeros((2, 4, 4), np.int8), path, meta={"a": 1})
    raw = bytearray(path.read_bytes())
    deep = b"{" + b'"a":[' * 100000 + b"]" * 100000 + b"}"
    raw[92:96] = len(deep).to_bytes(4, "little")
    path.write_bytes(bytes(raw[:1024]) + deep + bytes(raw[1024 + 7:]))
    with pytest.raises(mrcz.FormatError, match="deep.mrc"):
        mrcz.readMRC(path)


def test_errors_are_value_errors_for_old_callers():
    assert issubclass(mrcz.MRCZError, ValueError)
    for cls in (mrcz.FormatError, mrcz.CorruptDataError, mrcz.UnsupportedError):
        assert issubclass(cls, mrcz.MRCZError)


def test_open_error_names_the_target_not_the_temp_file(tmp_path):
    target = tmp_path / "missing" / "movie.mrc"
    with pytest.raises(FileNotFoundError) as caught:
        mrcz.writeMRC(np.zeros((2, 4, 4), np.int8), target)
    assert caught.value.filename == str(target)
    assert ".partial" not in str(caught.value)


def test_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "shared.mrc"
    mrcz.writeMRC(np.zeros((2, 4, 4), np.int8), path)
    os.chmod(path, 0o640)
    mrcz.writeMRC(np.ones((2, 4, 4), np.int8), path)
    assert (path.stat().st_mode & 0o777) == 0o640


@pytest.mark.parametrize("compressor", ["zstd", "lz4", None])
def test_permissive_recovers_every_complete_frame_of_a_truncated_movie(tmp_path, rng, compressor):
    movie = rng.poisson(0.8, size=(12, 64, 48)).astype(np.int8)
    path = tmp_path / "cut.mrcz"
    mrcz.writeMRC(movie, path, compressor=compressor)
    raw = path.read_bytes()
    if compressor:  # cut inside chunk 7: frames 0-6 are complete
        cut = 1024 + sum(_chunk_sizes(raw)[:7]) + 20
    else:
        cut = 1024 + 7 * movie[0].nbytes + 100
    path.write_bytes(raw[:cut])
    with pytest.raises(mrcz.CorruptDataError, match="cut.mrcz"):
        mrcz.readMRC(path)
    with pytest.warns(UserWarning, match="recovered 7 of 12"):
        salvaged, header = mrcz.readMRC(path, permissive=True)
    np.testing.assert_array_equal(salvaged, movie[:7])
    assert header["dimensions"][0] == 7


def test_permissive_stops_before_a_corrupt_chunk(tmp_path, rng):
    movie = rng.poisson(0.8, size=(6, 64, 48)).astype(np.int8)
    path = tmp_path / "bad.mrcz"
    mrcz.writeMRC(movie, path, compressor="zstd", n_threads=1)
    raw = bytearray(path.read_bytes())
    third = 1024 + sum(_chunk_sizes(raw)[:3])
    raw[third + 40:third + 200] = bytes(160)  # garble chunk 3's payload
    path.write_bytes(bytes(raw))
    with pytest.raises(mrcz.CorruptDataError):
        mrcz.readMRC(path)
    with pytest.warns(UserWarning, match="recovered 3 of"):
        salvaged, _ = mrcz.readMRC(path, permissive=True)
    np.testing.assert_array_equal(salvaged, movie[:3])


def _chunk_sizes(raw) -> list[int]:
    sizes, offset = [], 1024
    while offset + 16 <= len(raw):
        size = int.from_bytes(raw[offset + 12:offset + 16], "little")
        sizes.append(size)
        offset += size
    return sizes


def test_permissive_skips_undecodable_metadata(tmp_path, rng):
    path = tmp_path / "meta.mrc"
    image = rng.integers(0, 9, size=(2, 8, 8)).astype(np.int16)
    mrcz.writeMRC(image, path, meta={"dose": 1.0})
    raw = bytearray(path.read_bytes())
    raw[1024:1026] = b"\xff\xfe"
    path.write_bytes(bytes(raw))
    with pytest.raises(mrcz.FormatError, match="meta.mrc"):
        mrcz.readMRC(path)
    with pytest.warns(UserWarning, match="metadata skipped"):
        back, header = mrcz.readMRC(path, permissive=True)
    np.testing.assert_array_equal(back, image)
    assert "dose" not in header


@pytest.mark.parametrize("endian", ["le", "be"])
def test_bad_map_id_and_machine_stamp_still_read(tmp_path, rng, endian):
    path = tmp_path / "stamp.mrc"
    image = rng.normal(size=(3, 8, 6)).astype(np.float32)
    mrcz.writeMRC(image, path, endian=endian)
    raw = bytearray(path.read_bytes())
    raw[208:216] = b"XXXX\x00\x00\x00\x00"  # map ID and machine stamp destroyed
    path.write_bytes(bytes(raw))
    back, header = mrcz.readMRC(path)
    np.testing.assert_array_equal(back, image)
    assert header["endian"] == endian


def test_permissive_with_no_complete_frame_is_a_clear_error(tmp_path, rng):
    path = tmp_path / "stub.mrcz"
    mrcz.writeMRC(rng.poisson(0.8, size=(4, 64, 48)).astype(np.int8), path, compressor="zstd")
    path.write_bytes(path.read_bytes()[:1030])  # inside the first chunk's header
    with pytest.raises(mrcz.CorruptDataError, match="stub.mrcz.*no complete frame"):
        mrcz.readMRC(path, permissive=True)
