"""The `mrcz` command line: info, validate, compress, decompress, convert, demo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import mrcz
from conftest import CORPUS, NO_CORPUS, REPO
from mrcz import cli, wholefile
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


def _mrcz_in_gzip(data: np.ndarray, path: Path, damage=lambda raw: raw) -> Path:
    """An MRCZ file of ``data``, its bytes passed through ``damage``, inside gzip."""
    plain = path.with_name("inner.mrcz")
    mrcz.writeMRC(data, plain, compressor="zstd")
    with open(path, "wb") as f:
        wholefile.compress_to(f, "gzip", damage(plain.read_bytes()))
    plain.unlink()
    return path


def _flip(raw: bytes, at: int) -> bytes:
    changed = bytearray(raw)
    changed[at] ^= 0xFF
    return bytes(changed)


def test_validate_damaged_mrcz_in_gzip_names_the_users_file(capsys, counts, tmp_path) -> None:
    _, data = counts
    damaged = _mrcz_in_gzip(data, tmp_path / "damaged.mrcz.gz", lambda raw: _flip(raw, -200))
    code, out, err = run_main(capsys, "validate", str(damaged))
    assert code == 1 and f"{damaged}: INVALID" in out and "damaged" in out, (out, err)
    assert str(damaged) in out.split("INVALID", 1)[1]  # the problem names the user's file
    assert os.path.join(tempfile.gettempdir(), "mrcz-") not in out + err
    report = json.loads(run_main(capsys, "validate", "--json", str(damaged))[1])
    assert report[0]["status"] == "invalid"
    assert all(str(damaged) in p["message"] for p in report[0]["problems"]
               if "chunk" in p["message"])


def test_validate_truncated_mrcz_in_gzip_is_invalid(capsys, counts, tmp_path) -> None:
    path, data = counts
    whole = _mrcz_in_gzip(data, tmp_path / "whole.mrcz.gz")
    cut = tmp_path / "cut.mrcz.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    code, out, err = run_main(capsys, "validate", str(cut), str(path))
    assert code == 1, (out, err)
    assert f"{cut}: INVALID" in out and f"{path}: valid" in out, (out, err)
    assert "Traceback" not in err and "error:" not in err, err


@pytest.mark.parametrize("damage", ["checksum", "trailing garbage"])
@pytest.mark.parametrize("codec", [".gz", ".zst"])
@pytest.mark.parametrize("command", ["compress", "decompress", "convert"])
def test_conversion_of_a_stream_failing_its_check_writes_nothing(capsys, tmp_path, rng,
                                                                 damage, codec,
                                                                 command) -> None:
    """The stream's check comes after the data block (large enough that reading the data
    does not reach it): the output must not appear before the input has passed it."""
    data = rng.poisson(2.0, (8, 256, 256)).astype(np.float32)
    good = tmp_path / f"good.mrc{codec}"
    mrcz.writeMRC(data, good)
    raw = good.read_bytes()
    bad = tmp_path / f"bad.mrc{codec}"
    at = -8 if codec == ".gz" else -2  # the gzip CRC-32, the zstd content checksum
    bad.write_bytes(_flip(raw, at) if damage == "checksum" else raw + b"garbage!" * 4)
    out = tmp_path / ("out.mrcz" if command != "decompress" else "out.mrc")
    argv = [command, str(bad), str(out)] if command == "convert" else \
        [command, str(bad), "-o", str(out)]
    code, _, err = run_main(capsys, *argv)
    assert code == 1 and f"{bad}: corrupt" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good.name, bad.name])


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
    assert wholefile.detect(packed.read_bytes()[:4]) is not None
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


# ----------------------------------------------------------------------------- Ctrl-C

def _movies(folder: Path, count: int, shape=(8, 512, 512)) -> list[Path]:
    """Noisy float32 movies: slow to compress at clevel 9, so a run can be interrupted."""
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        paths.append(folder / f"movie{i}.mrc")
        mrcz.writeMRC((rng.normal(size=shape) * 100).astype(np.float32), paths[-1])
    return paths


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("jobs", ["2", "1"])
def test_ctrl_c_stops_every_job_and_leaves_no_partial_file(tmp_path, jobs) -> None:
    import signal
    import time

    paths = _movies(tmp_path, 6)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "mrcz", "compress", "--clevel", "9", "-j", jobs,
         *map(str, paths)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, start_new_session=True)  # its own process group, as a terminal has
    try:
        while not list(tmp_path.glob("*.mrcz")) and process.poll() is None:
            time.sleep(0.02)
        assert process.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.3)  # the next files are under way
        os.killpg(process.pid, signal.SIGINT)
        sent = time.monotonic()
        out, err = process.communicate(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert seconds < 5, f"took {seconds:.1f} s to stop"
    assert _hidden(tmp_path) == []
    finished = sorted(tmp_path.glob("*.mrcz"))
    assert 1 <= len(finished) < len(paths)
    for target in finished:
        assert f"finished:    {target}" in err or f"finished:    {target.name}" in err \
            or str(target) in err
        np.testing.assert_array_equal(_data(target), _data(target.with_suffix(".mrc")))
    assert "not started:" in err or "interrupted:" in err
    # the workers are gone too: nothing of the run is left in its process group
    listed = subprocess.run(["ps", "-o", "stat=,pid=,args=", "-g", str(process.pid)],
                            capture_output=True, text=True, check=False).stdout
    alive = [line for line in listed.splitlines() if not line.strip().startswith("Z")]
    assert alive == [], listed  # zombies wait for the container's init to reap them


# ----------------------------------------------------------------------------- reruns

def test_rerun_with_skip_existing(capsys, tmp_path, rng) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"m{i}.mrc")
        mrcz.writeMRC(rng.integers(0, 9, (2, 16, 16)).astype(np.int16), paths[-1])
    assert run_main(capsys, "compress", str(tmp_path))[0] == 0
    first = {p: p.with_suffix(".mrcz").stat().st_mtime_ns for p in paths}
    code, _, err = run_main(capsys, "compress", str(tmp_path))
    assert code == 1 and "3 failed" in err  # without the option a rerun refuses to replace
    code, out, err = run_main(capsys, "compress", str(tmp_path), "--skip-existing", "--json")
    assert code == 0, err
    records = json.loads(out)
    assert [r["status"] for r in records] == ["skipped"] * 3
    assert all(r["error"] is None for r in records)
    assert "0 done, 3 skipped, 0 failed" in err
    assert {p: p.with_suffix(".mrcz").stat().st_mtime_ns for p in paths} == first
    broken = paths[1].with_suffix(".mrcz")
    raw = broken.read_bytes()
    broken.write_bytes(raw[:len(raw) // 2])  # exists, but no longer reads back
    code, out, err = run_main(capsys, "compress", str(tmp_path), "--skip-existing", "--json")
    assert code == 1
    assert [r["status"] for r in json.loads(out)] == ["skipped", "failed", "skipped"]
    assert "does not read back" in err


# ----------------------------------------------------------------------------- arguments

def test_two_positionals_get_a_hint(capsys, counts) -> None:
    path, _ = counts
    code, _, err = run_main(capsys, "compress", str(path), str(path.with_name("b.mrcz")))
    assert code == 2 and "-o" in err and "b.mrcz does not exist" in err
    assert not path.with_suffix(".mrcz").exists()


def test_folders_are_walked(capsys, tmp_path, rng) -> None:
    (tmp_path / "sub").mkdir()
    data = rng.integers(0, 9, (2, 8, 8)).astype(np.int16)
    for name in ("a.mrc", "b.mrcs", "sub/c.mrc", ".hidden.mrc", "notes.txt"):
        if name.endswith("txt"):
            (tmp_path / name).write_text("not data")
        else:
            mrcz.writeMRC(data, tmp_path / name)
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "compress", str(tmp_path), "-o", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.rglob("*")) == ["a.mrcz", "b.mrcz"]
    code, _, err = run_main(capsys, "compress", str(tmp_path), "-r", "--ext", ".mrc",
                            "-o", str(tmp_path / "deep"))
    assert code == 0, err
    assert sorted(p.relative_to(tmp_path / "deep").as_posix()
                  for p in (tmp_path / "deep").rglob("*.mrcz")) == ["a.mrcz", "sub/c.mrcz"]
    np.testing.assert_array_equal(_data(tmp_path / "deep" / "sub" / "c.mrcz"), data)
    code, _, err = run_main(capsys, "compress", str(tmp_path / "out"))
    assert code == 2 and "no input files" in err


@pytest.mark.parametrize("name", ["a.tif", "a.mrc.xz", "a.png", "a.mrcz.gz"])
def test_unknown_output_suffix_is_refused(capsys, counts, name) -> None:
    path, _ = counts
    code, _, err = run_main(capsys, "convert", str(path), str(path.with_name(name)))
    assert code == 2 and "cannot write" in err
    assert not path.with_name(name).exists()


def test_output_format_must_match_the_command(capsys, counts) -> None:
    path, _ = counts
    code, _, err = run_main(capsys, "compress", str(path), "-o", str(path.with_name("x.mrc")))
    assert code == 2 and "plain MRC name" in err
    code, _, err = run_main(capsys, "decompress", str(path))  # already plain: same name
    assert code == 1 and "the output would be the input itself" in err


def test_usage_errors_exit_2_with_a_hint(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["compress", "--clevel", "12", "x.mrc"])
    assert exit_.value.code == 2
    assert "--help" in capsys.readouterr().err


def test_help_describes_every_argument(capsys) -> None:
    parser = cli.build_parser()
    for name, _ in cli.COMMANDS:
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = capsys.readouterr().out
        sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._actions[-1])))
        for action in sub.choices[name]._actions:
            assert action.help, f"{name}: {action.dest} has no help"
    with pytest.raises(SystemExit):
        parser.parse_args(["decompress", "--help"])
    assert "--clevel" not in capsys.readouterr().out


def test_upgrade_takes_a_file(capsys, tmp_path) -> None:
    if CORPUS is None:
        pytest.skip(NO_CORPUS)
    source = CORPUS / "mrcz041" / "mrcz041_zstd_uint16.mrcz"
    target = tmp_path / source.name
    shutil.copyfile(source, target)
    code, out, err = run_main(capsys, "upgrade", str(target), "--json")
    assert code == 0, err
    [record] = json.loads(out)
    assert record["status"] == "upgraded" and record["error"] is None
    np.testing.assert_array_equal(_data(target), np.load(f"{source}.npy"))


# ----------------------------------------------------------------------------- --json

def test_json_is_a_list_of_records_for_every_command(capsys, counts, tmp_path) -> None:
    path, _ = counts
    missing = str(tmp_path / "gone.mrc")
    runs = {
        "info one": ["info", "--json", str(path)],
        "info two": ["info", "--json", str(path), missing],
        "info missing": ["info", "--json", missing],
        "validate": ["validate", "--json", str(path), missing],
        "compress": ["compress", "--json", "-q", str(path), missing, "-o", str(tmp_path / "o")],
        "convert": ["convert", "--json", str(path), str(tmp_path / "c.mrc.zst")],
        "decompress": ["decompress", "--json", missing],
        "upgrade": ["upgrade", "--json", str(tmp_path / "o")],
        "demo": ["demo", "--json", "--frames", "2", "--size", "32", "--runs", "1"],
    }
    for what, argv in runs.items():
        code, out, _ = run_main(capsys, *argv)
        records = json.loads(out)
        assert isinstance(records, list) and records, what
        for record in records:
            assert {"file", "status", "error"} <= set(record), what
            assert (record["error"] is None) == (record["status"] != "failed"), what
        if missing in argv:
            assert records[-1]["status"] == "failed" and "no such file" in records[-1]["error"]
            assert code == 1, what


# ----------------------------------------------------------------------------- progress

def test_progress_line_shows_speed_eta_and_ratio() -> None:
    import io

    from mrcz.progress import Progress

    stream = io.StringIO()
    with Progress(4, "compress", stream=stream, enabled=True, total_bytes=4_000_000) as bar:
        bar.partial("a.mrc", 500_000, 1_000_000)
        bar.update(item="b.mrc", in_bytes=1_000_000, out_bytes=250_000)
        line = bar.line()
    assert "1/4 files" in line and "MB/s" in line and "ETA" in line
    assert "ratio 4.00" in line and "a.mrc 50%" in line
    assert "\r" in stream.getvalue()


def test_nothing_drawn_when_piped(tmp_path, counts) -> None:
    path, _ = counts
    done = _python_m("compress", str(path), "-o", str(tmp_path / "p.mrcz"))
    assert done.returncode == 0
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    assert "1 done, 0 skipped, 0 failed" in done.stderr and "ratio" in done.stderr
    quiet = _python_m("compress", str(path), "-o", str(tmp_path / "q.mrcz"), "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


# ----------------------------------------------------------------------------- not recorded

def test_unknown_microscope_values_stay_unknown(capsys, tmp_path, rng) -> None:
    data = rng.integers(0, 5, (2, 16, 16)).astype(np.int16)
    bare = tmp_path / "bare.mrcz"
    mrcz.writeMRC(data, bare, compressor="zstd", pixelsize=1.2)
    code, out, _ = run_main(capsys, "info", str(bare))
    assert "voltage not recorded, C3 not recorded, gain not recorded" in out
    assert "0 kV" not in out
    for target in ("bare.mrc", "bare2.mrcz"):
        assert run_main(capsys, "convert", str(bare), str(tmp_path / target))[0] == 0
        [record] = json.loads(run_main(capsys, "info", "--json", str(tmp_path / target))[1])
        assert (record["voltage_kV"], record["C3_mm"], record["gain"]) == (None, None, None)
        assert record["meta"] in (None, {})  # nothing added when nothing is known
    some = tmp_path / "some.mrcz"  # voltage known, C3 and gain not
    mrcz.writeMRC(data, some, compressor="zstd", voltage=300.0,
                  meta={"not_recorded": ["C3", "gain"]})
    assert run_main(capsys, "convert", str(some), str(tmp_path / "some.mrc"))[0] == 0
    [record] = json.loads(run_main(capsys, "info", "--json", str(tmp_path / "some.mrc"))[1])
    assert (record["voltage_kV"], record["C3_mm"], record["gain"]) == (300.0, None, None)
    header = mrcz.readMRCHeader(tmp_path / "some.mrc")[0]  # 0.6.0's numbers, unchanged
    assert (header["voltage"], header["C3"], header["gain"]) == (300.0, 0.0, 1.0)
    no_pixel = tmp_path / "nopix.mrc"
    mrcz.writeMRC(data, no_pixel, pixelsize=0.0)
    assert "voxel size   not recorded" in run_main(capsys, "info", str(no_pixel))[1]


@needs_corpus
@pytest.mark.skipif(not _dm_ready(), reason="mrcz.dm.readDM not available")
def test_dm4_without_voltage_converts_without_inventing_one(capsys, tmp_path) -> None:
    source = CORPUS / "dm" / "openNCEM" / "dmTest_3D_int16_64,65,66.dm4"
    [before] = json.loads(run_main(capsys, "info", "--json", str(source))[1])
    target = tmp_path / "dm.mrcz"
    assert run_main(capsys, "convert", str(source), str(target))[0] == 0
    [after] = json.loads(run_main(capsys, "info", "--json", str(target))[1])
    assert before["voltage_kV"] is None and after["voltage_kV"] is None
    assert after["C3_mm"] is None
    assert after["gain"] == pytest.approx(before["gain"])


# ----------------------------------------------------------------------------- info --header, --frames

def _corpus_mrc_files() -> list[Path]:
    if CORPUS is None:
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file()
                  and not p.name.endswith((".npy", ".json", ".md", ".txt", ".tsv"))
                  and not p.name.lower().endswith((".dm3", ".dm4")))


@needs_corpus
@pytest.mark.parametrize("path", _corpus_mrc_files(), ids=lambda p: p.name)
def test_info_header_on_every_corpus_file(capsys, path) -> None:
    code, out, err = run_main(capsys, "info", "--header", str(path))
    assert code == 0, err
    from mrcz.header import HEADER_DTYPE

    for name in HEADER_DTYPE.names:
        assert f"\n    {name} " in out, name
    [record] = json.loads(run_main(capsys, "info", "--header", "--json", str(path))[1])
    fields = {f["name"]: f["value"] for f in record["header"]}
    assert [fields["nx"], fields["ny"], fields["nz"]] == record["dimensions"]
    assert fields["nsymbt"] == record["extended_header"]["bytes"]
    if record["extended_header"]["bytes"]:
        assert record["extended_header"]["fields"]


def test_info_header_reads_only_the_extended_header_it_shows(capsys, tmp_path,
                                                            monkeypatch) -> None:
    """An 8 MiB extended header: ``info --header`` shows its first MiB and reads no more."""
    path = tmp_path / "big_ext.mrc"
    with mrcz.new(path, np.zeros((2, 8, 8), np.float32)) as mrc:
        mrc.set_extended_header(np.frombuffer(bytes(range(256)) * 2**15, dtype="V1"))
        mrc.header.exttyp = b"SERI"
    reads = []
    pread = os.pread

    def counted_pread(fd, count, offset):
        reads.append(count)
        return pread(fd, count, offset)

    monkeypatch.setattr(os, "pread", counted_pread)
    code, out, err = run_main(capsys, "info", "--header", "--json", str(path))
    assert code == 0, err
    [record] = json.loads(out)
    assert record["extended_header"]["bytes"] == 8 * 2**20
    assert record["extended_header"]["fields"]
    assert reads and max(reads) <= 2**20


@needs_corpus
def test_info_frames_lists_chunks_of_mrcz(capsys) -> None:
    path = CORPUS / "mrcz060" / "mrcz060_zstd_uint16.mrcz"
    expected = np.load(f"{path}.npy")
    [record] = json.loads(run_main(capsys, "info", "--frames", "--json", str(path))[1])
    rows = record["frames"]
    assert len(rows) == expected.shape[0]
    for row, frame in zip(rows, expected):
        assert row["min"] == frame.min() and row["max"] == frame.max()
        assert row["mean"] == pytest.approx(frame.mean())
        assert row["ratio"] == pytest.approx(frame.nbytes / row["compressed_bytes"], rel=1e-3)
    assert sum(r["compressed_bytes"] for r in rows) == record["bytes"]["compressed_data"]
    out = run_main(capsys, "info", "--frames", str(path))[1]
    assert "chunk" in out and "ratio" in out


# ----------------------------------------------------------------------------- preview

def test_preview_writes_a_png_of_the_right_size(capsys, tmp_path, rng) -> None:
    pil = pytest.importorskip("PIL.Image")
    from mrcz.preview import HISTOGRAM_HEIGHT

    movie = tmp_path / "movie.mrcz"
    data = rng.poisson(2.0, (3, 96, 160)).astype(np.int16)
    mrcz.writeMRC(data, movie, compressor="zstd", pixelsize=1.0)
    for extra in ([], ["--sum"], ["--fft"], ["--frame", "-1", "--fft"]):
        png = tmp_path / f"p{len(extra)}.png"
        code, _, err = run_main(capsys, "preview", str(movie), "-o", str(png), *extra)
        assert code == 0, err
        with pil.open(png) as image:
            # 160 x 96 enlarged 3 times to fit the default 512 pixels
            assert image.format == "PNG" and image.size == (480, 288 + 4 + HISTOGRAM_HEIGHT)
    small = tmp_path / "small.png"
    assert run_main(capsys, "preview", str(movie), "-o", str(small), "--size", "80")[0] == 0
    with pil.open(small) as image:
        assert image.size == (80, 48 + 4 + HISTOGRAM_HEIGHT)
        pixels = np.asarray(image)
    assert pixels[:48].std() > 0  # a picture, not a blank
    code, _, err = run_main(capsys, "preview", str(movie), "-o", str(tmp_path / "x.png"),
                            "--frame", "7")
    assert code == 1 and "frame 7 does not exist" in err
    code, _, _ = run_main(capsys, "preview", str(movie), "-o", str(tmp_path / "x.jpg"))
    assert code == 2


def test_demo_reports_median_and_machine(capsys) -> None:
    code, out, _ = run_main(capsys, "demo", "--frames", "2", "--size", "64", "--runs", "3")
    assert code == 0
    assert "median of 3 timed runs" in out and "warm-up" in out and "cores" in out
