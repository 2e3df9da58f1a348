"""Failed writes never damage what was there; bad files give clear errors."""
from __future__ import annotations

import errno
import io
import os

import numpy as np
import pytest

import mrcz
from mrcz import atomic


class FullDisk(io.BufferedWriter):
    """A file that accepts ``room`` bytes and then fails with ENOSPC."""

    room = 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if FullDisk.room < size:
            raise OSError(errno.ENOSPC, "No space left on device")
        FullDisk.room -= size
        return super().write(data)


@pytest.fixture
def full_disk(monkeypatch):
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", buffering=-1, **kwargs):
        if "w" in mode:
            return FullDisk(io.FileIO(fd, "w"))
        return real_fdopen(fd, mode, buffering, **kwargs)

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)
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
