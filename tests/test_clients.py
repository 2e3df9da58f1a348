"""Real client programs read the files that ``mrcz.writeMRC`` writes.

Every dtype those programs know (int8, int16, uint16, float16, float32,
complex64) is written with ``compressor=None`` as a 2-D image, a 3-D volume and
a stack (a list of 2-D frames, ``writeMRC([frame, ...])``), with and without
``meta``.  The same data written by mrcfile is the control: a program must read
our file with the right values and voxel size wherever it reads mrcfile's file
right.  Where it cannot read mrcfile's file either, the case is skipped saying
so; where a program is not installed, the test skips with the install command.

* mrcfile: ``mrcfile.open`` (values, voxel size, image/stack/volume kind) and
  ``mrcfile.validate`` (valid without ``meta``; with it the only complaint is
  exttyp ``json``).
* gemmi: ``gemmi.read_ccp4_map`` (values, grid spacing).
* RELION: ``relion_image_handler --i FILE --stats`` (per-image mean, stddev,
  min, max, angpix).
* HyperSpy/rosettasciio: ``hs.load`` with the ``mrc`` reader on plain files,
  and with the ``mrcz`` reader (which calls ``mrcz.readMRC``) on our MRCZ and
  plain volumes; and rosettasciio's own ``rsciio/tests/test_mrcz.py`` must
  pass completely.  These run in a subprocess with this tree first on
  ``PYTHONPATH``, in the venv named by ``MRCZ_CLIENT_VENV`` (made by
  ``tools/client_venv.sh DIR``) or else in this python if it has them.

uint16 data stays below 32768: RELION 3.1 reads mode 6 as signed int16, so
above that it reads mrcfile's file wrongly too and the case would only skip.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pytest

import mrcz

REPO = Path(__file__).resolve().parent.parent
HYPERSPY_LOAD = Path(__file__).resolve().parent / "clients" / "hyperspy_load.py"

DTYPES = ("int8", "int16", "uint16", "float16", "float32", "complex64")
KINDS = ("image", "volume", "stack")
SHAPES = {"image": (12, 10), "volume": (4, 12, 10), "stack": (3, 12, 10)}
#: voxel size (x, y, z) in Angstrom; all different in a volume to catch swapped axes.
VOXELS = {"image": (1.25, 1.25, 2.5), "volume": (1.5, 1.7, 1.9), "stack": (1.25, 1.25, 2.5)}
META = {"sample": "apoferritin", "exposure_s": 1.5, "tags": ["a", "b"]}
INSTALL_RELION = "apt-get install -y relion"
INSTALL_HYPERSPY = ("tools/client_venv.sh DIR and export MRCZ_CLIENT_VENV=DIR "
                    "(or pip install rosettasciio hyperspy)")


@dataclass(frozen=True)
class Case:
    """One file of the matrix: dtype, kind (image, volume, stack) and with or without meta."""

    dtype: str
    kind: str
    meta: bool

    @property
    def name(self) -> str:
        return f"{self.dtype}-{self.kind}-{'meta' if self.meta else 'nometa'}"

    @property
    def suffix(self) -> str:
        """``.mrcs`` for stacks (RELION tells a stack by it), else ``.mrc``."""
        return ".mrcs" if self.kind == "stack" else ".mrc"

    def data(self) -> np.ndarray:
        """The array written (a stack's frames on the first axis); the same every call."""
        rng = np.random.default_rng(DTYPES.index(self.dtype) * 10 + KINDS.index(self.kind))
        shape = SHAPES[self.kind]
        if self.dtype == "complex64":
            return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(self.dtype)
        if self.dtype.startswith("float"):
            return (rng.normal(size=shape) * 40 + 3).astype(self.dtype)
        low, high = {"int8": (-120, 120), "int16": (-3000, 3000),
                     "uint16": (0, 32000)}[self.dtype]
        return rng.integers(low, high, size=shape, endpoint=True).astype(self.dtype)

    def frames(self) -> np.ndarray:
        """The data as 2-D frames (one for an image or a volume as a whole)."""
        data = self.data()
        return data[np.newaxis] if self.kind == "image" else data


CASES = [Case(d, k, m) for d in DTYPES for k in KINDS for m in (False, True)]


def write_ours(case: Case, path: Path, quick_stats: bool = True,
               compressor: str | None = None) -> Path:
    """Write ``case`` with ``mrcz.writeMRC`` (a stack as a list of 2-D frames)."""
    data = case.data()
    image = list(data) if case.kind == "stack" else data
    x, y, z = VOXELS[case.kind]
    mrcz.writeMRC(image, str(path), meta=dict(META) if case.meta else None,
                  pixelsize=[z, y, x], compressor=compressor, quickStats=quick_stats)
    return path


def write_control(case: Case, path: Path) -> Path:
    """Write the same data and voxel size with mrcfile (no metadata)."""
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(case.data())
        if case.kind == "stack":
            mrc.set_image_stack()
        mrc.voxel_size = VOXELS[case.kind]
    return path


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def files(case: Case, tmp_path: Path) -> tuple[Path, Path]:
    """``(ours, control)``: the case written by mrcz and by mrcfile."""
    return (write_ours(case, tmp_path / f"ours{case.suffix}"),
            write_control(case, tmp_path / f"control{case.suffix}"))


# ----------------------------------------------------------------------------- mrcfile

def test_mrcfile_reads(case: Case, files: tuple[Path, Path]) -> None:
    """mrcfile reads our file as it reads its own: values, dtype, voxel size, kind."""
    ours, control = files
    with mrcfile.open(str(control)) as ref, mrcfile.open(str(ours)) as mrc:
        assert mrc.data.dtype == case.data().dtype
        np.testing.assert_array_equal(mrc.data, case.data())
        seen = tuple(float(v) for v in mrc.voxel_size.item())
        assert seen == pytest.approx(VOXELS[case.kind], rel=1e-6)
        assert seen == pytest.approx(tuple(float(v) for v in ref.voxel_size.item()), rel=1e-6)
        kind = (mrc.is_single_image(), mrc.is_image_stack(), mrc.is_volume())
        assert kind == (ref.is_single_image(), ref.is_image_stack(), ref.is_volume())


def validate(path: Path) -> tuple[bool, list[str]]:
    """``mrcfile.validate`` of ``path``: its verdict and its complaints (printed lines)."""
    out = io.StringIO()
    valid = mrcfile.validate(str(path), print_file=out)
    lines = out.getvalue().splitlines()
    assert lines and lines[0].startswith("Checking if"), lines
    return valid, [line for line in lines[1:] if line != "File appears to be valid."]


@pytest.mark.parametrize("quick_stats", [True, False], ids=["quickStats", "exactStats"])
def test_mrcfile_validate(case: Case, quick_stats: bool, tmp_path: Path) -> None:
    """Valid MRC2014 without ``meta``; with it the only complaint is exttyp ``json``.

    With exact statistics the control is mrcfile's own file (which carries exact
    statistics too): mrcfile.validate computes a float16 file's RMS in float16, which
    overflows, and so rejects its own file as well.
    """
    if not quick_stats:
        control_valid, control_complaints = validate(write_control(case, tmp_path / "control.mrc"))
        if not control_valid:
            pytest.skip(f"mrcfile.validate rejects mrcfile's own file too: {control_complaints}")
    path = write_ours(case, tmp_path / f"ours{case.suffix}", quick_stats=quick_stats)
    valid, complaints = validate(path)
    if case.meta:
        assert not valid
        assert complaints == ["Extended header type is undefined or unrecognised: "
                              "exttyp = 'json'"]
    else:
        assert (valid, complaints) == (True, [])


# ----------------------------------------------------------------------------- gemmi

def gemmi_read(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """gemmi's map of ``path`` as a numpy array in (z, y, x) order, and its spacing (x, y, z)."""
    gemmi = pytest.importorskip("gemmi", reason="gemmi not installed: pip install gemmi")
    ccp4 = gemmi.read_ccp4_map(str(path))
    ccp4.setup(float("nan"))
    grid = np.array(ccp4.grid, copy=True)  # indexed [x, y, z]
    return grid.transpose(2, 1, 0), tuple(float(s) for s in ccp4.grid.spacing)


def gemmi_right(case: Case, values: np.ndarray, spacing: tuple[float, ...]) -> list[str]:
    """What gemmi got wrong reading ``case`` (empty when all is right)."""
    expected = case.data().reshape((-1,) + SHAPES[case.kind][-2:])
    wrong = []
    if values.shape != expected.shape or not np.array_equal(values, expected.astype(np.float32)):
        wrong.append(f"values differ: shape {values.shape}, first row {values.flat[:3]}; "
                     f"expected shape {expected.shape}, first row {expected.flat[:3]}")
    if spacing != pytest.approx(VOXELS[case.kind], rel=1e-6):
        wrong.append(f"spacing {spacing}, expected {VOXELS[case.kind]}")
    return wrong


def test_gemmi_reads(case: Case, files: tuple[Path, Path]) -> None:
    """gemmi reads our file right wherever it reads mrcfile's file right."""
    ours, control = files
    try:
        control_read = gemmi_read(control)
    except (RuntimeError, ValueError) as exc:
        pytest.skip(f"gemmi cannot read mrcfile's file either: {exc}")
    control_wrong = gemmi_right(case, *control_read)
    if control_wrong:
        pytest.skip(f"gemmi reads mrcfile's file wrongly too: {control_wrong}")
    assert gemmi_right(case, *gemmi_read(ours)) == []


# ----------------------------------------------------------------------------- RELION

RELION_LINE = re.compile(
    r"\(x,y,z,n\)=\s*(\d+) x (\d+) x (\d+) x (\d+)\s*;\s*avg=\s*(\S+)\s+stddev=\s*(\S+)"
    r"\s+minval=\s*(\S+)\s+maxval=\s*(\S+);\s*angpix\s*=\s*(\S+)")
RELION_FIELDS = ("avg", "stddev", "minval", "maxval", "angpix")


def relion_handler() -> str:
    """Path of ``relion_image_handler``; skips the test where RELION is not installed."""
    found = shutil.which("relion_image_handler")
    if found is None:
        pytest.skip(f"RELION not installed (relion_image_handler not on PATH): {INSTALL_RELION}")
    return found


def relion_stats(path: Path) -> list[dict[str, float]] | str:
    """One dict per image of ``relion_image_handler --stats``, or RELION's error text.

    RELION 3.1 exits 0 after an error, so success is told by its output lines.
    """
    run = subprocess.run([relion_handler(), "--i", str(path), "--stats"], capture_output=True,
                         text=True, timeout=120, check=False, cwd=path.parent)
    images = []
    for match in RELION_LINE.finditer(run.stdout):
        dims = tuple(int(g) for g in match.groups()[:4])
        values = (float(g) for g in match.groups()[4:])
        images.append({"dims": dims, **dict(zip(RELION_FIELDS, values))})
    if "ERROR" in run.stdout + run.stderr or not images:
        return (run.stdout + run.stderr).strip()
    return images


def relion_expected(case: Case) -> list[dict[str, float]]:
    """What ``--stats`` should print for ``case``: each frame of a stack, else the whole."""
    data = case.data().astype(np.float64)
    frames = list(data) if case.kind == "stack" else [data]
    out = []
    for frame in frames:
        nz = frame.shape[0] if frame.ndim == 3 else 1
        out.append({"dims": (frame.shape[-1], frame.shape[-2], nz, 1), "avg": frame.mean(),
                    "stddev": frame.std(), "minval": frame.min(), "maxval": frame.max(),
                    "angpix": VOXELS[case.kind][0]})
    return out


def relion_wrong(case: Case, seen: list[dict[str, float]]) -> set[str]:
    """Fields (and ``dims``) that RELION printed wrong for any image of ``case``."""
    expected = relion_expected(case)
    if [s["dims"] for s in seen] != [e["dims"] for e in expected]:
        return {"dims", *RELION_FIELDS}
    # RELION prints 6 significant digits: statistics to within the data's range,
    # angpix to within its own value.
    data_scale = float(np.abs(case.data().astype(np.float64)).max()) or 1.0
    return {field for s, e in zip(seen, expected) for field in RELION_FIELDS
            if abs(s[field] - e[field])
            > 2e-5 * (abs(e[field]) if field == "angpix" else max(data_scale, abs(e[field])))}


def test_relion_reads(case: Case, files: tuple[Path, Path]) -> None:
    """RELION's statistics and angpix of our file are right wherever mrcfile's are."""
    ours, control = files
    relion_handler()
    control_seen = relion_stats(control)
    if isinstance(control_seen, str):
        pytest.skip(f"RELION cannot read mrcfile's file either: {control_seen.splitlines()[:3]}")
    trusted = set(RELION_FIELDS) - relion_wrong(case, control_seen)
    if not trusted:
        pytest.skip(f"RELION reads mrcfile's file wrongly too: {control_seen}")
    seen = relion_stats(ours)
    assert not isinstance(seen, str), f"RELION could not read our file: {seen}"
    assert [s["dims"] for s in seen] == [s["dims"] for s in control_seen]
    assert relion_wrong(case, seen) & trusted == set(), (seen, relion_expected(case))


# ----------------------------------------------------------------------------- HyperSpy

def client_python() -> str:
    """Python with hyperspy and rosettasciio: ``$MRCZ_CLIENT_VENV/bin/python`` or this one."""
    venv = os.environ.get("MRCZ_CLIENT_VENV")
    if venv:
        python = Path(venv) / "bin" / "python"
        if not python.is_file():
            pytest.fail(f"MRCZ_CLIENT_VENV={venv} has no bin/python: run tools/client_venv.sh {venv}")
        return str(python)
    probe = subprocess.run([sys.executable, "-c", "import hyperspy.api, rsciio.mrcz"],
                           capture_output=True, check=False)
    if probe.returncode:
        pytest.skip(f"hyperspy/rosettasciio not installed: {INSTALL_HYPERSPY}")
    return sys.executable


def client_env() -> dict[str, str]:
    """Environment for the client python: this tree's ``mrcz`` comes first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


#: (reader, case, writer): hs.load's plain ``mrc`` reader on every case (mrcfile is the
#: control); its ``mrcz`` reader (mrcz.readMRC) on our MRCZ and plain volumes, checked
#: against the data itself.  rosettasciio's mrcz reader indexes ``data.shape[2]``, so it
#: takes only 3-D arrays: not 2-D images nor stacks (lists), whoever wrote them.
HS_JOBS = ([("mrc", c, w) for c in CASES for w in ("ours", "control")]
           + [("mrcz", c, w) for c in CASES if c.kind == "volume" for w in ("plain", "mrcz")])


def hs_path(root: Path, case: Case, writer: str) -> Path:
    suffix = ".mrcz" if writer == "mrcz" else case.suffix
    return root / f"{case.name}-{writer}{suffix}"


@pytest.fixture(scope="module")
def hs_loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], dict]:
    """Every file of ``HS_JOBS`` written, then loaded by hs.load in one client process."""
    python = client_python()
    root = tmp_path_factory.mktemp("hyperspy")
    jobs = []
    for reader, case, writer in HS_JOBS:
        path = hs_path(root, case, writer)
        if not path.exists():
            if writer == "control":
                write_control(case, path)
            else:
                write_ours(case, path, compressor="zstd" if writer == "mrcz" else None)
        jobs.append({"path": str(path), "reader": reader})
    (root / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([python, str(HYPERSPY_LOAD), str(root / "jobs.json"),
                    str(root / "results.json")], env=client_env(), check=True, timeout=600)
    results = json.loads((root / "results.json").read_text())
    return {(r, c.name, w): results[f"{r}:{hs_path(root, c, w)}"] for r, c, w in HS_JOBS}


def hs_wrong(case: Case, loaded: dict, z_scale: bool = True) -> list[str]:
    """What hs.load got wrong: data, or an axis scale (nm) differing from the voxel size."""
    if "error" in loaded:
        return [f"load failed: {loaded['error'].strip().splitlines()[-1]}"]
    wrong = []
    data = np.load(loaded["npy"])
    if data.dtype != case.data().dtype or not np.array_equal(data, case.data()):
        wrong.append(f"data ({data.dtype} {data.shape}, expected {case.data().dtype} "
                     f"{case.data().shape})")
    scales = {a["name"]: a["scale"] for a in loaded["axes"]}
    x, y, z = (v / 10 for v in VOXELS[case.kind])
    expected = {"x": x, "y": y, **({"z": z} if z_scale and case.kind != "image" else {})}
    for name, value in expected.items():
        if name not in scales or scales[name] != pytest.approx(value, rel=1e-6):
            wrong.append(f"axis {name} scale {scales.get(name)}, expected {value}")
    return wrong


def test_hyperspy_mrc_reader(case: Case, hs_loaded: dict) -> None:
    """hs.load(reader='mrc') reads our plain file right wherever it reads mrcfile's right."""
    control_wrong = hs_wrong(case, hs_loaded[("mrc", case.name, "control")])
    if control_wrong:
        pytest.skip(f"rosettasciio's mrc reader reads mrcfile's file wrongly too: {control_wrong}")
    assert hs_wrong(case, hs_loaded[("mrc", case.name, "ours")]) == []


@pytest.mark.parametrize("writer", ["plain", "mrcz"])
@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "volume"], ids=lambda c: c.name)
def test_hyperspy_mrcz_reader(case: Case, writer: str, hs_loaded: dict) -> None:
    """hs.load(reader='mrcz') of our plain and MRCZ volumes: data and axes scales."""
    assert hs_wrong(case, hs_loaded[("mrcz", case.name, writer)]) == []


def rsciio_test_file(python: str) -> Path:
    """rosettasciio's own ``rsciio/tests/test_mrcz.py`` as installed for ``python``."""
    where = subprocess.run(
        [python, "-c", "import rsciio, pathlib; print(pathlib.Path(rsciio.__file__).parent)"],
        capture_output=True, text=True, check=True, env=client_env()).stdout.strip()
    path = Path(where) / "tests" / "test_mrcz.py"
    if not path.is_file():
        pytest.skip(f"this rosettasciio wheel ships no {path}: use its sdist")
    return path


def test_rosettasciio_own_mrcz_suite(tmp_path: Path) -> None:
    """rosettasciio's ``test_mrcz.py`` passes completely with this tree as ``mrcz``.

    ``--noconftest``: its conftest downloads test data, which test_mrcz.py does not use.
    """
    python = client_python()
    test_file = rsciio_test_file(python)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not rosettasciio's xdist addopts
    # Run beside it: a test proving that this tree, not the venv's own mrcz, is imported.
    # --import-mode=importlib: the default mode puts site-packages (where test_mrcz.py
    # lives) first on sys.path, ahead of PYTHONPATH, which would import the venv's copy.
    which = tmp_path / "test_which_mrcz.py"
    which.write_text("import pathlib, mrcz\n\n\ndef test_this_tree_is_mrcz():\n"
                     f"    assert pathlib.Path(mrcz.__file__).parent == pathlib.Path({str(REPO / 'mrcz')!r})\n")
    run = subprocess.run(
        [python, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider",
         "--import-mode=importlib", "-c", str(tmp_path / "pytest.ini"),
         "--rootdir", str(tmp_path), str(which), str(test_file)],
        capture_output=True, text=True, env=client_env(), cwd=tmp_path, timeout=600, check=False)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    print(f"rosettasciio test_mrcz.py: {summary}")
    failing = "\n".join(line for line in run.stdout.splitlines()
                        if line.startswith(("FAILED", "ERROR")))
    assert run.returncode == 0 and set(counts) == {"passed"}, f"{summary}\n{failing[:3000]}"
    assert counts["passed"] >= 66, summary  # its 65 and ours
