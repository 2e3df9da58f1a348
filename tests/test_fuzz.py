"""Mutated and truncated real files raise only the documented exceptions, quickly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, corpus_files

HARNESS = Path(__file__).parent / "fuzz" / "mutate_and_read.py"
MRC_FILES = (corpus_files("mrcz060", (".mrc", ".mrcz")) + corpus_files("mrcz041", (".mrc", ".mrcz"))
             + corpus_files("mrcfile", (".mrc", ".mrcs", ".gz", ".bz2"))
             + corpus_files("emdb", (".map", ".gz")))
DM_FILES = corpus_files("dm", (".dm3", ".dm4"))


def run_harness(files: list[Path], count: int, seed: int, tmp_path: Path,
                timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(HARNESS), str(seed), str(count), str(tmp_path), *map(str, files)],
        capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check(report: dict) -> None:
    assert report["bad"] == [], report["bad"][:10]
    assert report["slowest"] < 20.0


@pytest.mark.skipif(not MRC_FILES, reason="corpus not found")
def test_mutated_mrc_files_raise_only_documented_errors(tmp_path):
    report = run_harness(MRC_FILES, 400, 1, tmp_path, timeout=300)
    check(report)
    assert report["cases"] >= 400


@pytest.mark.skipif(not DM_FILES, reason="corpus not found")
def test_mutated_dm_files_raise_only_documented_errors(tmp_path):
    pytest.importorskip("mrcz.dm")
    report = run_harness(DM_FILES, 300, 2, tmp_path, timeout=300)
    check(report)


@pytest.mark.slow
@pytest.mark.skipif(not MRC_FILES, reason="corpus not found")
@pytest.mark.parametrize("seed", range(10, 20))
def test_long_fuzz(tmp_path, seed):
    check(run_harness(MRC_FILES + DM_FILES, 20000, seed, tmp_path, timeout=3000))
