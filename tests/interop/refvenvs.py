"""Locate the reference virtualenvs and run the interop scripts inside them.

The virtualenvs come from ``tools/reference_venvs.sh DIR``; the tests find
them through ``MRCZ_REFERENCE_VENVS=DIR``.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ENV = "MRCZ_REFERENCE_VENVS"
#: Stamp tools/reference_venvs.sh leaves in a finished virtualenv.
STAMP = ".reference-ok"
#: Released versions tools/reference_venvs.sh tries to install, newest first.
VERSIONS = ("0.6.0", "0.5.10", "0.5.9", "0.5.7", "0.5.6", "0.5.5", "0.5.4", "0.5.3",
            "0.5.2", "0.5.1", "0.5.0", "0.4.1", "0.4.0")
NO_VENVS = f"{ENV} is not set: run tools/reference_venvs.sh DIR and export {ENV}=DIR"
#: Seconds one batch of reference reads or writes may take.
TIMEOUT = 120


def venvs_dir() -> Path | None:
    """Return the directory named by ``MRCZ_REFERENCE_VENVS``, or None."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def venv(version: str) -> Path:
    """Return the finished virtualenv of mrcz ``version``, or skip the test."""
    base = venvs_dir()
    if base is None:
        pytest.skip(NO_VENVS)
    path = base / f"mrcz-{version}"
    if not (path / STAMP).is_file():
        pytest.skip(f"no reference virtualenv for mrcz {version} in {base} "
                    "(tools/reference_venvs.sh could not install it)")
    return path


def site_file(version: str, relative: str) -> Path | None:
    """Return ``site-packages/<relative>`` of a reference virtualenv, if present."""
    base = venvs_dir()
    if base is None:
        return None
    found = sorted((base / f"mrcz-{version}").glob(f"lib/python*/site-packages/{relative}"))
    return found[0] if found else None


def _clean_env() -> dict:
    """Return os.environ without PYTHONPATH, which could import our mrcz instead."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run_script(version: str, script: str, spec: list, outdir: Path) -> dict:
    """Run ``tests/interop/<script>`` on ``spec`` with reference mrcz ``version``.

    Returns
    -------
    dict
        The ``results.json`` the script wrote into ``outdir``.
    """
    python = venv(version) / "bin" / "python"
    outdir.mkdir(parents=True, exist_ok=True)
    spec_path = outdir / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    done = subprocess.run([str(python), str(HERE / script), str(spec_path), str(outdir)],
                          capture_output=True, text=True, timeout=TIMEOUT,
                          env=_clean_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{script} under mrcz {version} exited {done.returncode}:\n"
                           f"{done.stderr[-4000:]}")
    return json.loads((outdir / "results.json").read_text(encoding="utf-8"))
