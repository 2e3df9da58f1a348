"""Shared fixtures: where the compatibility corpus and the original mrcz 0.6.0 live."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def _corpus_dir() -> Path | None:
    env = os.environ.get("MRCZ_CORPUS")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "corpus")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


CORPUS = _corpus_dir()
NO_CORPUS = "corpus not found: set MRCZ_CORPUS or place shared/corpus beside the repository"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """Path of ``shared/corpus``; skips the test when it is absent."""
    if CORPUS is None:
        pytest.skip(NO_CORPUS)
    return CORPUS


def corpus_files(folder: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Data files of one corpus folder (for parametrize); empty without a corpus."""
    if CORPUS is None or not (CORPUS / folder).is_dir():
        return []
    return sorted(p for p in (CORPUS / folder).rglob("*")
                  if p.is_file() and p.name.endswith(suffixes))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261121)


@pytest.fixture(scope="session")
def original_python() -> Path:
    """The python of the mrcz 0.6.0 reference venv (``tools/reference_venvs.sh``, found
    through ``MRCZ_REFERENCE_VENVS``); skips the test when it is absent."""
    base = os.environ.get("MRCZ_REFERENCE_VENVS")
    if not base:
        pytest.skip("MRCZ_REFERENCE_VENVS is not set: run tools/reference_venvs.sh DIR")
    venv = Path(base) / "mrcz-0.6.0"
    if not (venv / ".reference-ok").is_file():
        pytest.skip(f"no finished mrcz 0.6.0 venv in {base}")
    return venv / "bin" / "python"
