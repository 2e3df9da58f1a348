"""validate_file and mrcz.open read their input through one open file.

An audit hook on ``open`` (run in a subprocess, so it does not stay behind in the
test process) counts how often the input file is opened.
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

import mrcz
from mrcz import frameindex, header as hdr
from mrcz.validate import is_valid, validate_file

COUNTER = r"""
import json, os, sys
import mrcz
from mrcz.validate import validate_file
cases = json.loads(sys.argv[1])
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.path.realpath(os.fsdecode(args[0])))
sys.addaudithook(hook)
results = []
for path, action in cases:
    opened.clear()
    if action == "header":
        problems = validate_file(path, check_data=False)
    elif action == "data":
        problems = validate_file(path)
    elif action == "deep":
        problems = validate_file(path, deep=True)
    else:
        with mrcz.open(path) as mrc:
            problems = [float(mrc.data.sum())]
    results.append({"opens": opened.count(os.path.realpath(path)),
                    "problems": [str(p) for p in problems]})
print(json.dumps(results))
"""

DATA = np.arange(3 * 20 * 24, dtype=np.int16).reshape(3, 20, 24) % 97


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One good file of each kind that validate reads."""
    folder = tmp_path_factory.mktemp("once")
    plain, packed = folder / "a.mrc", folder / "a.mrcz"
    mrcz.writeMRC(DATA, plain, quickStats=False)  # exact statistics: checked
    mrcz.writeMRC(DATA, packed, compressor="zstd")
    made = {"plain": plain, "mrcz": packed, "gz": folder / "a.mrc.gz",
            "zst": folder / "a.mrc.zst", "mrcz.gz": folder / "b.mrcz.gz"}
    made["gz"].write_bytes(gzip.compress(plain.read_bytes()))
    made["zst"].write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(
        plain.read_bytes()))
    made["mrcz.gz"].write_bytes(gzip.compress(packed.read_bytes()))
    return made


def count_opens(cases: list[tuple[Path, str]]) -> list[dict]:
    """For each ``(path, action)``: how often ``path`` was opened, and what was found."""
    args = json.dumps([(str(path), action) for path, action in cases])
    done = subprocess.run([sys.executable, "-c", COUNTER, args], capture_output=True,
                          text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind", ["plain", "mrcz", "gz", "zst", "mrcz.gz"])
def test_validate_opens_the_input_once(files, kind):
    actions = ("header", "data", "deep")
    results = count_opens([(files[kind], action) for action in actions])
    assert {a: r["opens"] for a, r in zip(actions, results)} == dict.fromkeys(actions, 1)
    assert all(r["problems"] == [] for r in results), results


@pytest.mark.parametrize("kind", ["plain", "mrcz"])
def test_open_then_data_opens_the_input_once(files, kind):
    (result,) = count_opens([(files[kind], "open")])
    assert result == {"opens": 1, "problems": [str(float(DATA.sum()))]}


@pytest.mark.parametrize("kind", ["plain", "mrcz", "gz", "zst", "mrcz.gz"])
def test_validate_reads_an_open_file_and_leaves_it_open(files, kind):
    with open(files[kind], "rb") as f:
        assert validate_file(f, deep=True) == []
        assert not f.closed
        f.seek(0)
        assert len(f.read()) == files[kind].stat().st_size


def test_messages_name_the_name_given(files, tmp_path):
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(bytes(4) + files["plain"].read_bytes()[4:])  # nx = 0
    with open(bad, "rb") as f:
        assert [p.message for p in validate_file(f, name="the-user-file.mrc")] == [
            "the-user-file.mrc: invalid dimensions nx=0, ny=20, nz=3"]
        f.seek(0)
        assert validate_file(f) == validate_file(bad)
    assert validate_file(bad)[0].message.startswith(f"{bad}: ")


@pytest.mark.parametrize("damage", ["truncated", "flipped", "chunk cut"])
def test_damaged_mrcz_inside_gzip_is_invalid(files, tmp_path, damage):
    raw = files["mrcz"].read_bytes()
    if damage == "truncated":
        packed = gzip.compress(raw)[:-40]
    elif damage == "flipped":  # inside the last chunk: its checksum fails
        at = len(raw) - frameindex.trailer_bytes(len(DATA)) - 10
        packed = gzip.compress(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    else:
        packed = gzip.compress(raw[:-200])
    path = tmp_path / "bad.mrcz.gz"
    path.write_bytes(packed)
    for kwargs in ({}, {"deep": True}):
        problems = validate_file(path, **kwargs)
        assert not is_valid(problems), (damage, problems)
        assert all(p.message.startswith(f"{path}: ") for p in problems
                   if p.severity == "error"), problems  # not the temporary copy


def test_deep_reports_an_undecodable_chunk_once(tmp_path):
    """Statistics and --deep share one decoding pass: one error, not one per check."""
    path = tmp_path / "bad.mrcz"
    mrcz.writeMRC(DATA.astype(np.float32) + 0.5, path, compressor="zstd", quickStats=False)
    raw = bytearray(path.read_bytes()[:-frameindex.trailer_bytes(len(DATA))])
    offset = hdr.HEADER_BYTES + int.from_bytes(raw[92:96], "little")
    raw[144:152] = (len(raw) - offset).to_bytes(8, "little")  # no index: packed bytes
    second = offset + int.from_bytes(raw[offset + 12:offset + 16], "little")
    raw[second + 16:second + 40] = bytes(range(200, 224))  # chunk 1's block table
    path.write_bytes(bytes(raw))
    for kwargs in ({}, {"deep": True}):
        errors = [p.message for p in validate_file(path, **kwargs) if p.severity == "error"]
        assert len(errors) == 1 and errors[0].startswith(f"data cannot be read: {path}"), errors
