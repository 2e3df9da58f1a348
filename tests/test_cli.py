"""The `mrcz` command line: info, validate, compress, decompress, convert, demo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mrcz
from conftest import CORPUS, NO_CORPUS, REPO
from mrcz import cli
from mrcz.cli import main
from mrcz.validate import is_valid, validate_file

needs_corpus = pytest.mark.skipif(CORPUS is None, reason=NO_CORPUS)
EMDB = CORPUS / "emdb" / "EMD-3197.map" if CORPUS else None


def _dm_ready() -> bool:
    try:
        from mrcz import dm
    except ImportError:
        return False
    return hasattr(dm, "readDM")


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def emdb(tmp_path) -> Path:
    if CORPUS is None:
        pytest.skip(NO_CORPUS)
    target = tmp_path / EMDB.name
    shutil.copyfile(EMDB, target)
    return target


@pytest.fixture
def counts(tmp_path, rng) -> tuple[Path, np.ndarray]:
    data = rng.poisson(1.0, (4, 64, 48)).astype(np.float32)
    path = tmp_path / "counts.mrc"
    mrcz.writeMRC(data, path, pixelsize=1.1, voltage=300.0, C3=2.7, gain=1.5,
                  meta={"detector": "K3"})
    return path, data


# ----------------------------------------------------------------------------- help, errors

def test_help_lists_commands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for command in ("info", "validate", "compress", "decompress", "convert", "upgrade", "demo"):
        assert command in text


def test_usage_error_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["compress"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("command", ["info", "validate", "compress", "decompress"])
def test_missing_input_is_a_clean_failure(capsys, tmp_path, command) -> None:
    code, out, err = run_main(capsys, command, str(tmp_path / "absent.mrc"))
    assert code == 1
    assert "absent.mrc: no such file" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- info

@needs_corpus
def test_info_emdb_map(capsys) -> None:
    code, out, _ = run_main(capsys, "info", str(EMDB))
    assert code == 0
    assert "20 x 20 x 20" in out and "float32 (mode 2" in out and "11.4" in out
    code, out, _ = run_main(capsys, "info", "--json", str(EMDB))
    [record] = json.loads(out)
    assert record["dimensions"] == [20, 20, 20]
    assert record["format"] == "MRC" and record["compressor"] is None
    np.testing.assert_allclose(record["voxel_size_A"], 11.4, rtol=1e-5)


def test_info_mrcz_file(capsys, counts, tmp_path) -> None:
    path, data = counts
    target = tmp_path / "c.mrcz"
    mrcz.writeMRC(data, target, compressor="zstd", clevel=3, pixelsize=1.1, voltage=300.0,
                  meta={"detector": "K3"})
    code, out, _ = run_main(capsys, "info", str(target))
    assert code == 0
    assert "zstd clevel 3" in out and "ratio" in out and "300 kV" in out
    assert 'detector="K3"' in out
    [record] = json.loads(run_main(capsys, "info", "--json", str(target))[1])
    assert record["ratio"] > 1 and record["meta"] == {"detector": "K3"}
    assert record["bytes"]["data"] == data.size * 4


@needs_corpus
def test_info_whole_file_compressed(capsys) -> None:
    records = json.loads(run_main(capsys, "info", "--json",
                                  str(CORPUS / "mrcfile" / "mrcfile_volume.mrc.gz"),
                                  str(CORPUS / "mrcfile" / "mrcfile_volume.mrc.bz2"))[1])
    assert [r["format"] for r in records] == ["MRC in gzip", "MRC in bz2"]
    assert all(r["dimensions"] == [30, 20, 10] for r in records)


@needs_corpus
@pytest.mark.skipif(not _dm_ready(), reason="mrcz.dm.readDM not available")
def test_info_dm4(capsys) -> None:
    path = CORPUS / "dm" / "3D" / "test-1.dm4"
    code, out, _ = run_main(capsys, "info", str(path))
    assert code == 0 and "DM4" in out


# ----------------------------------------------------------------------------- validate

def test_validate_good_and_truncated(capsys, counts, tmp_path) -> None:
    path, data = counts
    packed = tmp_path / "c.mrcz"
    mrcz.writeMRC(data, packed, compressor="zstd")
    assert validate_file(path) == [] and validate_file(packed) == []
    assert run_main(capsys, "validate", str(path), str(packed))[0] == 0
    for source in (path, packed):
        cut = tmp_path / f"cut-{source.name}"
        cut.write_bytes(source.read_bytes()[:-100])
        code, out, _ = run_main(capsys, "validate", str(cut))
        assert code == 1 and "INVALID" in out and "truncated" in out


def test_validate_catches_header_lies(capsys, counts, tmp_path) -> None:
    path, data = counts
    packed = tmp_path / "c.mrcz"
    mrcz.writeMRC(data, packed, compressor="zstd")
    raw = bytearray(packed.read_bytes())
    raw[144:152] = (12345).to_bytes(8, "little")  # packedBytes
    packed.write_bytes(bytes(raw))
    assert any("compressed bytes" in p.message for p in validate_file(packed))
    raw = bytearray(path.read_bytes())
    raw[80:84] = np.float32(1e6).tobytes()  # dmax
    raw[208:212] = b"NOPE"
    path.write_bytes(bytes(raw))
    problems = validate_file(path)
    assert not is_valid(problems)
    text = " ".join(p.message for p in problems)
    assert "map ID" in text and "maximum" in text
    report = json.loads(run_main(capsys, "validate", "--json", str(path))[1])
    assert report[0]["valid"] is False


@pytest.mark.parametrize("suffix", [".mrc.gz", ".mrc.bz2", ".mrc.zst"])
def test_validate_whole_file_compressed(capsys, counts, tmp_path, suffix) -> None:
    path, _ = counts
    packed = tmp_path / f"c{suffix}"
    assert run_main(capsys, "convert", str(path), str(packed))[0] == 0
    code, out, err = run_main(capsys, "validate", str(packed))
    assert code == 0 and "valid" in out, err


@needs_corpus
def test_validate_reports_old_layout_and_original_statistics() -> None:
    problems = validate_file(CORPUS / "mrcz041" / "mrcz041_zstd_uint16.mrcz")
    assert any("mrcz upgrade" in p.message for p in problems)


# ----------------------------------------------------------------------------- compress

def _data(path: Path) -> np.ndarray:
    image, _ = mrcz.readMRC(path)
    return np.asarray(image)


def test_compress_then_decompress_emdb(capsys, emdb, tmp_path) -> None:
    code, _, err = run_main(capsys, "compress", str(emdb), "--verify")
    assert code == 0, err
    packed = emdb.with_suffix(".mrcz")
    assert mrcz.readMRCHeader(packed)[0]["compressor"] == "zstd"
    back = tmp_path / "back.mrc"
    assert run_main(capsys, "decompress", str(packed), "-o", str(back), "--verify")[0] == 0
    np.testing.assert_array_equal(_data(back), _data(emdb))
    np.testing.assert_allclose(mrcz.readMRC(back)[1]["pixelsize"], 11.4, rtol=1e-5)


def test_never_replaces_without_force(capsys, counts) -> None:
    path, _ = counts
    target = path.with_suffix(".mrcz")
    target.write_bytes(b"precious")
    code, _, err = run_main(capsys, "compress", str(path))
    assert code == 1 and "--force" in err
    assert target.read_bytes() == b"precious"
    assert run_main(capsys, "compress", str(path), "--force", "--clevel", "5",
                    "--compressor", "lz4")[0] == 0
    header = mrcz.readMRCHeader(target)[0]
    assert (header["compressor"], header["clevel"]) == ("lz4", 5)


def test_failed_verify_leaves_no_output(capsys, counts, monkeypatch) -> None:
    path, _ = counts

    def refuse(*args):
        raise cli.CommandError("verify: refused by the test")

    monkeypatch.setattr(cli, "verify_output", refuse)
    code, _, err = run_main(capsys, "compress", str(path), "--verify")
    assert code == 1 and "refused" in err
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_compress_keeps_header_values(capsys, counts) -> None:
    path, data = counts
    assert run_main(capsys, "compress", str(path), "--suffix", ".z.mrcz")[0] == 0
    image, header = mrcz.readMRC(path.parent / "counts.z.mrcz")
    np.testing.assert_array_equal(image, data)
    assert (header["voltage"], header["C3"], header["gain"]) == pytest.approx((300, 2.7, 1.5))
    assert header["detector"] == "K3"
    np.testing.assert_allclose(header["pixelsize"], 1.1, rtol=1e-6)


def test_auto_dtype(capsys, counts, tmp_path, rng) -> None:
    path, data = counts
    assert run_main(capsys, "compress", str(path), "--auto-dtype", "--verify")[0] == 0
    image, header = mrcz.readMRC(path.with_suffix(".mrcz"))
    assert image.dtype == np.int8
    np.testing.assert_array_equal(image.astype(np.float32), data)
    assert header["auto_dtype"] == {"from": "float32", "to": "int8"}
    assert header["detector"] == "K3"
    noise = tmp_path / "noise.mrc"
    mrcz.writeMRC(rng.normal(size=(2, 8, 8)).astype(np.float32), noise)
    assert run_main(capsys, "convert", str(noise), str(tmp_path / "n.mrcz"),
                    "--auto-dtype")[0] == 0
    assert mrcz.readMRC(tmp_path / "n.mrcz")[0].dtype == np.float32


@pytest.mark.parametrize("values, dtype, expected", [
    ([0, 3, 127], "float32", "int8"), ([-128, 5], "float32", "int8"),
    ([0, 200], "float32", "int16"), ([0, 40000], "float32", "uint16"),
    ([0, 70000], "float32", None), ([0.5, 1], "float32", None),
    ([0, 100], "uint16", "int8"), ([0, 200], "uint16", None), ([-3, 3], "int16", "int8"),
    ([1, 2], "int8", None),
])
def test_narrowest_integer_dtype(values, dtype, expected) -> None:
    image = np.array([values], dtype=dtype)
    got = cli.narrowest_integer_dtype(image)
    assert (got.name if got is not None else None) == expected


def test_nan_is_not_integral() -> None:
    assert cli.narrowest_integer_dtype(np.array([[0.0, np.nan]], np.float32)) is None


# ----------------------------------------------------------------------------- convert

@pytest.mark.parametrize("suffix", [".mrc.gz", ".mrc.bz2", ".mrc.zst"])
def test_convert_whole_file_compressed_round_trip(capsys, counts, tmp_path, suffix) -> None:
    path, data = counts
    packed = tmp_path / f"c{suffix}"
    assert run_main(capsys, "convert", str(path), str(packed), "--verify")[0] == 0
    assert cli.whole_file_codec(packed) is not None
    back = tmp_path / "back.mrcz"
    assert run_main(capsys, "convert", str(packed), str(back), "--verify")[0] == 0
    np.testing.assert_array_equal(_data(back), data)


@needs_corpus
@pytest.mark.skipif(not _dm_ready(), reason="mrcz.dm.readDM not available")
def test_convert_dm4_stack_to_mrcz(capsys, tmp_path) -> None:
    stacks = sorted((CORPUS / "dm" / "3D").glob("*.dm4"))
    if not stacks:
        pytest.skip("no DM4 stacks in the corpus")
    source = stacks[0]
    target = tmp_path / "stack.mrcz"
    code, _, err = run_main(capsys, "convert", str(source), str(target), "--verify")
    assert code == 0, err
    expected = np.load(f"{source}.npy")
    np.testing.assert_array_equal(_data(target).reshape(expected.shape), expected)


# ----------------------------------------------------------------------------- many files

def test_many_files_in_a_pool_with_one_failure(capsys, tmp_path, rng) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"m{i}.mrc")
        mrcz.writeMRC(rng.integers(0, 9, (2, 16, 16)).astype(np.int16), paths[-1])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run_main(capsys, "compress", *map(str, paths), str(tmp_path / "gone.mrc"),
                            "-o", str(out_dir), "--jobs", "2", "--verify")
    assert code == 1
    assert "3 done, 0 skipped, 1 failed" in err and "gone.mrc: no such file" in err
    for path in paths:
        np.testing.assert_array_equal(_data(out_dir / f"{path.stem}.mrcz"), _data(path))


def test_several_inputs_need_a_folder(capsys, counts, tmp_path) -> None:
    path, _ = counts
    code, _, err = run_main(capsys, "compress", str(path), str(path), "-o",
                            str(tmp_path / "x.mrcz"))
    assert code == 2 and "must be a folder" in err


def test_demo(capsys, tmp_path) -> None:
    code, out, _ = run_main(capsys, "demo", "--frames", "2", "--size", "64",
                            "--dir", str(tmp_path))
    assert code == 0
    assert "demo.mrcz" in out and "ratio" in out and "MB/s" in out
    assert (tmp_path / "demo.mrcz").is_file()


# ----------------------------------------------------------------------------- processes

def _python_m(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "mrcz", *argv], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def test_python_m_mrcz(tmp_path) -> None:
    done = _python_m("--help")
    assert done.returncode == 0 and "upgrade" in done.stdout
    done = _python_m("info", str(tmp_path / "missing.mrcz"))
    assert done.returncode == 1
    assert "missing.mrcz: no such file" in done.stderr and "Traceback" not in done.stderr
