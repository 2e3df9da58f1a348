"""Run the original mrcz 0.6.0 test suite against our package.

``test_mrcz.py`` ships inside the mrcz 0.6.0 wheel.  It is taken from the
reference virtualenv (``MRCZ_REFERENCE_VENVS``, no network) or else from
``pip download mrcz==0.6.0``, copied into a temporary directory and run by
pytest in a subprocess whose ``import mrcz`` resolves to our package (the
repository root first on ``PYTHONPATH``; ``MRCZ_UNDER_TEST`` names another
directory holding an ``mrcz`` package, e.g. to prove the harness on the
original).  Every failing original test is listed by name.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))
import refvenvs  # noqa: E402

ORIGINAL = "0.6.0"
SUITE = "test_mrcz.py"
#: Seconds for pip download, and for the whole original suite.
DOWNLOAD_TIMEOUT, SUITE_TIMEOUT = 120, 600
#: Original tests that pin behaviour our design deliberately changes, by node
#: id, each with the reason (one line) it does not apply to us.
DESELECT: dict[str, str] = {}


def package_root() -> Path:
    """Return the directory whose ``mrcz`` package is under test."""
    return Path(os.environ.get("MRCZ_UNDER_TEST") or refvenvs.REPO).absolute()


def suite_from_venv() -> Path | None:
    """Return test_mrcz.py of the reference 0.6.0 virtualenv, if there is one."""
    return refvenvs.site_file(ORIGINAL, f"mrcz/{SUITE}")


def suite_from_wheel(workdir: Path) -> Path | None:
    """Download the 0.6.0 wheel into ``workdir`` and extract test_mrcz.py from it."""
    command = [sys.executable, "-m", "pip", "download", f"mrcz=={ORIGINAL}", "--no-deps",
               "--only-binary=:all:", "--quiet", "-d", str(workdir)]
    try:
        subprocess.run(command, capture_output=True, timeout=DOWNLOAD_TIMEOUT, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    for wheel in workdir.glob(f"mrcz-{ORIGINAL}-*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            target = workdir / SUITE
            target.write_bytes(archive.read(f"mrcz/{SUITE}"))
            return target
    return None


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory) -> Path:
    """A directory holding only the original test_mrcz.py and an empty pytest.ini."""
    workdir = tmp_path_factory.mktemp("original-suite")
    found = suite_from_venv() or suite_from_wheel(tmp_path_factory.mktemp("wheel"))
    if found is None:
        pytest.skip(f"no {SUITE}: {refvenvs.ENV} has no mrcz-{ORIGINAL} virtualenv and "
                    f"`pip download mrcz=={ORIGINAL}` failed")
    shutil.copyfile(found, workdir / SUITE)
    (workdir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    return workdir


def run_in(workdir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run our python in ``workdir`` with the package under test first on sys.path."""
    env = {**os.environ, "PYTHONPATH": str(package_root())}
    return subprocess.run([sys.executable, *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def failures(report: Path) -> list[str]:
    """Return ``"test id: first message line"`` for each failed or erroring test."""
    found = []
    for case in ET.parse(report).iter("testcase"):
        for problem in list(case.findall("failure")) + list(case.findall("error")):
            message = (problem.get("message") or "").strip().splitlines() or [""]
            found.append(f"{case.get('classname')}::{case.get('name')}: {message[0][:300]}")
    return found


def test_suite_imports_our_package(suite_dir):
    """The subprocess imports the package under test, not an installed original."""
    done = run_in(suite_dir, "-c", "import mrcz; print(mrcz.__file__)", timeout=60)
    assert done.returncode == 0, done.stderr
    imported = Path(done.stdout.strip())
    assert imported.is_relative_to(package_root()), f"imported {imported}"


def test_deselected_tests_exist(suite_dir):
    """Every deselection names a test the original suite really has."""
    text = (suite_dir / SUITE).read_text(encoding="utf-8")
    for node in DESELECT:
        function = node.split("::")[-1].split("[")[0]
        assert f"def {function}(" in text, f"{node} is not in the original suite"


def test_original_suite_passes(suite_dir):
    """Every original test (bar the documented deselections) passes on our package."""
    deselect = [arg for node in DESELECT for arg in ("--deselect", node)]
    report = suite_dir / "report.xml"
    done = run_in(suite_dir, "-m", "pytest", SUITE, "-q", "-p", "no:cacheprovider",
                  f"--basetemp={suite_dir / 'tmp'}", f"--junitxml={report}", *deselect,
                  timeout=SUITE_TIMEOUT)
    assert report.is_file(), f"pytest exited {done.returncode}:\n{done.stdout[-3000:]}"
    failed = failures(report)
    assert not failed, f"{len(failed)} original tests failed:\n" + "\n".join(failed)
    assert done.returncode == 0, done.stdout[-3000:]
