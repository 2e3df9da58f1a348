"""The batch upgrade of old MRCZ files (mrcz.upgrade, `mrcz upgrade`, utils/ script)."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mrcz
from conftest import CORPUS, NO_CORPUS, REPO
from mrcz import frameindex, header as hdr, upgrade
from mrcz.cli import main

pytestmark = pytest.mark.skipif(CORPUS is None or not (CORPUS / "mrcz041").is_dir(),
                                reason=NO_CORPUS)
LEGACY = CORPUS / "mrcz041" if CORPUS else None
DATA_SUFFIXES = (".mrc", ".mrcz")
UNITS_PER_ANGSTROM = {"\\AA": 1.0, "nm": 0.1, "\\mum": 1e-4, "pm": 100.0}

ORIG_READ = r"""
import json, sys, warnings
import numpy as np
warnings.simplefilter("ignore")
import mrcz
out = {}
for path in sys.argv[2:]:
    image, header = mrcz.readMRC(path)
    kind = "list" if isinstance(image, list) else "array"
    data = np.stack(image) if kind == "list" else image
    np.save(path + ".ref.npy", data)
    out[path] = {"kind": kind, "pixelsize": np.asarray(header["pixelsize"]).tolist(),
                 "voltage": float(header["voltage"]), "C3": float(header["C3"]),
                 "gain": float(header["gain"]), "compressor": header["compressor"],
                 "meta": {k: header.get(k) for k in json.loads(sys.argv[1]).get(path, [])}}
print(json.dumps(out))
"""


def legacy_files() -> list[Path]:
    return sorted(p for p in LEGACY.iterdir() if p.name.endswith(DATA_SUFFIXES))


def copy_legacy(folder: Path, prefix: str = "") -> list[Path]:
    """Copy the old-layout corpus data files into ``folder`` (writable)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in legacy_files():
        target = folder / f"{prefix}{source.name}"
        shutil.copyfile(source, target)
        copies.append(target)
    return copies


def corpus_twin(path: Path) -> Path:
    """The corpus file a copy was made from (copies may carry a ``cN_`` prefix)."""
    prefix, _, rest = path.name.partition("_")
    return LEGACY / (rest if prefix[:1] == "c" and prefix[1:].isdigit() else path.name)


def expected(path: Path) -> tuple[np.ndarray, dict]:
    twin = corpus_twin(path)
    return np.load(f"{twin}.npy"), json.loads(Path(f"{twin}.json").read_text())["kwargs"]


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file below ``folder``: mtime and contents hash."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def check_reads_as_written(path: Path) -> None:
    """Our readMRC returns the corpus array, pixel size, microscope values and metadata."""
    data, kwargs = expected(path)
    units = kwargs.get("pixelunits", "\\AA")
    image, header = mrcz.readMRC(path, pixelunits=units)
    assert not isinstance(image, list)
    assert image.dtype == data.dtype and image.shape == data.shape, path
    np.testing.assert_array_equal(image, data)
    pixel = np.broadcast_to(np.atleast_1d(kwargs.get("pixelsize", 0.1)), (3,))
    axes = slice(1, None) if data.ndim == 2 else slice(None)
    np.testing.assert_allclose(header["pixelsize"][axes], pixel[axes], rtol=1e-5)
    for key, default in (("voltage", 0.0), ("C3", 0.0), ("gain", 1.0)):
        assert header[key] == pytest.approx(kwargs.get(key, default))
    for key, value in kwargs.get("meta", {}).items():
        assert header[key] == value


# ----------------------------------------------------------------------------- the corpus

@pytest.fixture(scope="module")
def upgraded(tmp_path_factory) -> tuple[Path, int, dict]:
    """A copy of the old corpus, upgraded once through the command line."""
    folder = tmp_path_factory.mktemp("legacy")
    copy_legacy(folder)
    before = snapshot(folder)
    code = main(["upgrade", str(folder)])
    return folder, code, before


def test_upgrade_rewrites_every_old_file(upgraded) -> None:
    folder, code, _ = upgraded
    assert code == 0
    for path in sorted(folder.glob("*.mrc*")):
        info = hdr.parse_header(path.read_bytes()[:1024], str(path))
        assert info.mrcz_version >= (0, 5) and not info.legacy_mrcz
        check_reads_as_written(path)


def test_originals_backed_up_byte_for_byte(upgraded) -> None:
    folder, _, before = upgraded
    for source in legacy_files():
        backup = folder / "backup" / source.name
        assert backup.read_bytes() == source.read_bytes()
    assert set(before) == {p.name for p in legacy_files()}


def test_upgraded_files_read_in_mrcz_060(upgraded, tmp_path, original_python) -> None:
    python = original_python
    folder, _, _ = upgraded
    paths = [shutil.copyfile(p, tmp_path / p.name) for p in sorted(folder.glob("*.mrc*"))]
    keys = {str(p): list(expected(Path(p))[1].get("meta", {})) for p in paths}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), "-c", ORIG_READ, json.dumps(keys), *map(str, paths)],
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    for path in paths:
        data, kwargs = expected(Path(path))
        got = results[str(path)]
        values = np.load(f"{path}.ref.npy")
        # 0.6.0 reads mz as slices per frame; a plain MRC2014 file (mz = nz) comes
        # back as a one-element list holding the array: same values, same dtype.
        if Path(path).suffix == ".mrc":
            values = values.reshape(data.shape)
        else:
            assert got["kind"] == "array", path
        assert values.dtype == data.dtype and values.shape == data.shape, path
        np.testing.assert_array_equal(values, data)
        pixel = np.broadcast_to(np.atleast_1d(kwargs.get("pixelsize", 0.1)), (3,))
        axes = slice(1, None) if data.ndim == 2 else slice(None)
        np.testing.assert_allclose(np.asarray(got["pixelsize"])[axes], pixel[axes], rtol=1e-5)
        for key, default in (("voltage", 0.0), ("C3", 0.0), ("gain", 1.0)):
            assert got[key] == pytest.approx(kwargs.get(key, default))
        assert got["meta"] == kwargs.get("meta", {})
        expected_codec = kwargs.get("compressor")
        assert got["compressor"] == expected_codec


def test_second_run_changes_nothing(upgraded, capsys) -> None:
    folder, _, _ = upgraded
    before = snapshot(folder)
    assert main(["upgrade", str(folder)]) == 0
    assert snapshot(folder) == before
    assert "0 upgraded, 12 already current, 0 failed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- clevel

@pytest.mark.parametrize("name, compressor, clevel, exact", [
    ("mrcz041_zstd_uint16.mrcz", "zstd", 1, True),
    ("mrcz041_lz4hc_int16.mrcz", "lz4hc", 3, False),  # written at 5; 3..9 give these bytes
    ("mrcz041_lz4_float32.mrcz", "lz4", 1, False),    # incompressible: every level matches
    ("mrcz041_zlib_uint16.mrcz", "zlib", 2, False),   # written at 3; 2 and 3 agree
])
def test_detect_clevel(name: str, compressor: str, clevel: int, exact: bool) -> None:
    guess = upgrade.detect_clevel(LEGACY / name)
    assert (guess.compressor, guess.clevel, guess.exact) == (compressor, clevel, exact)


def test_level_that_reproduces_nothing_falls_back_to_1(monkeypatch) -> None:
    monkeypatch.setattr(upgrade, "_reproduces", lambda raw, cname, level: False)
    guess = upgrade.detect_clevel(LEGACY / "mrcz041_zstd_uint16.mrcz")
    assert (guess.compressor, guess.clevel, guess.exact) == ("zstd", 1, False)
    assert "kept clevel 1" in guess.note


def test_new_file_records_detected_level(tmp_path) -> None:
    (path,) = [p for p in copy_legacy(tmp_path) if p.name == "mrcz041_zstd_uint16.mrcz"]
    assert main(["upgrade", str(tmp_path)]) == 0
    _, header = mrcz.readMRC(path)
    assert (header["compressor"], header["clevel"]) == ("zstd", 1)


# ----------------------------------------------------------------------------- one open

#: Run in the child: count the ``open`` audit events naming argv[1] during each call.
COUNT_OPENS = r"""
import json, os, sys
from mrcz import upgrade
path, backup, bare = sys.argv[1:4]
watched = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) \
            and os.path.realpath(os.fsdecode(args[0])) in watched:
        opens.append(args[1])
sys.addaudithook(hook)
opens, counts = [], {}
calls = [("needs_upgrade", path, lambda: upgrade.needs_upgrade(path)),
         ("detect_clevel", path, lambda: upgrade.detect_clevel(path)),
         ("dry run", path, lambda: upgrade.upgrade_file(path, backup, dry_run=True).status),
         ("upgrade_file", path, lambda: upgrade.upgrade_file(path, backup).status),
         ("current", path, lambda: upgrade.upgrade_file(path, backup).status),
         ("index_file", bare, lambda: upgrade.index_file(bare, backup + ".i").status)]
for label, name, call in calls:
    watched[:] = [os.path.realpath(name)]
    opens.clear()
    result = call()
    counts[label] = [len(opens), result if isinstance(result, (bool, str)) else None]
print(json.dumps(counts))
"""


@pytest.mark.parametrize("name", ["mrcz041_zstd_uint16.mrcz", "mrcz041_plain_uint16.mrc"])
def test_each_operation_opens_the_file_once(tmp_path, name) -> None:
    """needs_upgrade, detect_clevel, upgrade_file (dry run, real, on a current file)
    and index_file each open the file once (counted in a child process's audit hook)."""
    (path,) = [p for p in copy_legacy(tmp_path) if p.name == name]
    bare = tmp_path / "bare.mrcz"  # a compressed file as written before frame indexes
    mrcz.writeMRC(np.arange(3 * 8 * 6, dtype=np.int16).reshape(3, 8, 6), bare,
                  compressor="zstd")
    raw = bytearray(bare.read_bytes()[:-frameindex.trailer_bytes(3)])
    raw[144:152] = (len(raw) - 1024).to_bytes(8, "little")
    bare.write_bytes(bytes(raw))
    done = subprocess.run([sys.executable, "-c", COUNT_OPENS, str(path),
                           str(tmp_path / "backup" / name), str(bare)],
                          capture_output=True, text=True, timeout=120, env=_env(), check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "needs_upgrade": [1, True], "detect_clevel": [1, None], "dry run": [1, "would upgrade"],
        "upgrade_file": [1, "upgraded"], "current": [1, "current"], "index_file": [1, "indexed"]}
    assert (tmp_path / "backup" / name).read_bytes() == (LEGACY / name).read_bytes()
    check_reads_as_written(path)


# ----------------------------------------------------------------------------- safety

def test_dry_run_changes_nothing(tmp_path, capsys) -> None:
    copy_legacy(tmp_path)
    before = snapshot(tmp_path)
    assert main(["upgrade", "--dry-run", str(tmp_path)]) == 0
    assert snapshot(tmp_path) == before
    out = capsys.readouterr()
    assert out.out.count("would upgrade") == 12
    assert "12 would be upgraded" in out.err


def test_current_files_untouched(tmp_path) -> None:
    mrcz.writeMRC(np.arange(24, dtype=np.int16).reshape(2, 3, 4), tmp_path / "new.mrcz",
                  compressor="zstd")
    mrcz.writeMRC(np.ones((3, 4), np.float32), tmp_path / "new.mrc")
    before = snapshot(tmp_path)
    summary = upgrade.upgrade_folder(tmp_path)
    assert [r.status for r in summary.results] == ["current", "current"]
    assert snapshot(tmp_path) == before


def test_different_existing_backup_is_never_overwritten(tmp_path, capsys) -> None:
    paths = copy_legacy(tmp_path)
    (tmp_path / "backup").mkdir()
    clash = tmp_path / "backup" / paths[0].name
    clash.write_bytes(b"someone else's file")
    assert main(["upgrade", str(tmp_path)]) == 1
    assert clash.read_bytes() == b"someone else's file"
    assert paths[0].read_bytes() == corpus_twin(paths[0]).read_bytes()
    err = capsys.readouterr()
    assert "11 upgraded, 0 already current, 1 failed" in err.err
    assert "different contents" in err.out


def test_identical_existing_backup_is_reused(tmp_path) -> None:
    paths = copy_legacy(tmp_path)
    (tmp_path / "backup").mkdir()
    shutil.copyfile(paths[0], tmp_path / "backup" / paths[0].name)
    assert main(["upgrade", str(tmp_path)]) == 0


def test_failed_verification_keeps_original(tmp_path, monkeypatch) -> None:
    paths = copy_legacy(tmp_path)

    def refuse(*args, **kwargs):
        raise upgrade.UpgradeError("refused by the test")

    monkeypatch.setattr(upgrade, "verify_same", refuse)
    summary = upgrade.upgrade_folder(tmp_path)
    assert summary.count("failed") == 12 and not summary.ok
    for path in paths:
        assert path.read_bytes() == corpus_twin(path).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_verification_catches_a_bad_rewrite(tmp_path, monkeypatch) -> None:
    paths = copy_legacy(tmp_path)
    real_write = upgrade.writeMRC

    def corrupting_write(image, path, **kwargs):
        data = np.stack([np.asarray(image[z]) for z in range(image.shape[0])])
        data.reshape(-1)[0] += 1
        real_write(data, path, **kwargs)

    monkeypatch.setattr(upgrade, "writeMRC", corrupting_write)
    summary = upgrade.upgrade_folder(tmp_path)
    assert summary.count("failed") == 12
    assert all("data differ in z-slice 0" in r.detail for r in summary.results)
    for path in paths:
        assert path.read_bytes() == corpus_twin(path).read_bytes()


def test_stale_temporary_files_are_removed(tmp_path) -> None:
    (path, *_) = copy_legacy(tmp_path)
    stale = tmp_path / f".{path.name}.mrcz-upgrade-0badcafe.partial"
    stale.write_bytes(b"half a file")
    assert main(["upgrade", str(tmp_path)]) == 0
    assert not stale.exists()


def test_unreadable_file_fails_and_exit_status(tmp_path, capsys) -> None:
    (tmp_path / "junk.mrc").write_bytes(b"not an MRC file")
    copy_legacy(tmp_path)
    assert main(["upgrade", str(tmp_path)]) == 1
    assert "failed: " in capsys.readouterr().out


def test_recursive_and_backup_dir(tmp_path) -> None:
    top, sub = tmp_path / "data", tmp_path / "data" / "day2"
    copy_legacy(top)
    copy_legacy(sub)
    backups = tmp_path / "originals"
    assert main(["upgrade", str(top), "--backup-dir", str(backups)]) == 0
    assert all(upgrade.needs_upgrade(p) for p in sub.glob("*.mrc*"))
    assert main(["upgrade", str(top), "--recursive", "--backup-dir", str(backups)]) == 0
    assert not any(upgrade.needs_upgrade(p) for p in top.rglob("*.mrc*"))
    for source in legacy_files():
        assert (backups / "day2" / source.name).read_bytes() == source.read_bytes()
    # the default backup folder inside the tree is never scanned
    assert main(["upgrade", str(top), "--recursive"]) == 0
    assert not (top / "backup").exists()


def test_symlinks_are_left_alone(tmp_path) -> None:
    (source, *_) = copy_legacy(tmp_path / "real")
    link = tmp_path / "links" / source.name
    link.parent.mkdir()
    link.symlink_to(source)
    summary = upgrade.upgrade_folder(link.parent)
    assert summary.results == [] and link.is_symlink() and upgrade.needs_upgrade(source)


def test_two_upgrades_never_run_on_one_folder(tmp_path, capsys) -> None:
    import fcntl

    copy_legacy(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert main(["upgrade", str(tmp_path)]) == 1
        assert "another upgrade is running" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert all(upgrade.needs_upgrade(p) for p in tmp_path.glob("*.mrc*"))


def test_publish_no_clobber(tmp_path) -> None:
    temp, target = tmp_path / "t", tmp_path / "x"
    temp.write_bytes(b"new")
    target.write_bytes(b"old")
    assert not upgrade.publish_no_clobber(temp, target) and target.read_bytes() == b"old"
    target.unlink()
    assert upgrade.publish_no_clobber(temp, target) and target.read_bytes() == b"new"


def test_missing_folder(tmp_path, capsys) -> None:
    assert main(["upgrade", str(tmp_path / "nowhere")]) != 0
    assert "nowhere" in capsys.readouterr().err


# ----------------------------------------------------------------------------- processes

def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), MRCZ_NO_PROGRESS="1")
    return env


def test_utils_script_and_python_m(tmp_path) -> None:
    copy_legacy(tmp_path / "a")
    copy_legacy(tmp_path / "b")
    script = REPO / "utils" / "update_mrcz_to_0.5.0.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=60, env=_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert "12 upgraded" in done.stderr
    done = subprocess.run([sys.executable, "-m", "mrcz", "upgrade", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=60, env=_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert not any(upgrade.needs_upgrade(p) for p in tmp_path.rglob("[!b]*/*.mrc*")
                   if p.parent.name != "backup")


def _wait_for_progress(proc: subprocess.Popen, backup: Path, started: int) -> None:
    """Return once the upgrade has backed up a new file (so the kill lands mid-run)."""
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if backup.exists() and len(list(backup.glob("*"))) > started:
            return
        time.sleep(0.01)


def test_sigkill_at_random_moments_loses_nothing(tmp_path) -> None:
    """Kill the upgrade at random moments: every file stays readable with its data."""
    folder = tmp_path / "movies"
    paths = [p for i in range(8) for p in copy_legacy(folder, prefix=f"c{i}_")]
    rng = random.Random(20261121)
    command = [sys.executable, "-m", "mrcz", "upgrade", str(folder)]
    kills = 0
    for _ in range(12):
        backup = folder / "backup"
        started = len(list(backup.glob("*"))) if backup.exists() else 0
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=_env())
        _wait_for_progress(proc, backup, started)
        time.sleep(rng.uniform(0.0, 0.06))  # a few files in: lands inside some file's upgrade
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        for path in paths:
            check_reads_as_written(path)
        if not any(upgrade.needs_upgrade(p) for p in paths):
            break
    assert kills >= 3
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_env(),
                          check=False)
    assert done.returncode == 0, done.stderr
    for path in paths:
        assert not upgrade.needs_upgrade(path)
        check_reads_as_written(path)
        assert (folder / "backup" / path.name).read_bytes() == \
            corpus_twin(path).read_bytes()
    assert not [p for p in folder.rglob(".*")]
