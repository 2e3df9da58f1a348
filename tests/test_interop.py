"""Compatibility with released mrcz versions, in both directions.

* Every reference release writes a matrix of files (each dtype, layout, codec,
  byte order, pixel unit, microscope values and JSON metadata).  Our
  ``readMRC`` must return exactly the values, dtype, pixel size, microscope
  values and metadata that were written, arranged as the list-or-array kind
  (and frame shapes) that the release itself returns.
* Our ``writeMRC`` writes the same matrix plus calls with default arguments;
  every reference release since 0.5 must read back what we wrote, and for
  compressed files in the same list-or-array kind.  Our plain files follow
  MRC2014 (mz is the sampling) while those releases take mz as slices per
  frame, so for plain files only the values, not their arrangement, compare.

Files are read in Angstrom (``pixelunits='\\AA'``): 0.6.0 converts to
micrometres on reading with 1e-5 instead of 1e-4, and that bug is not ours to
match.  Where a release cannot read a file correctly at all (see
``reader_limitation``), the test of that pair is skipped with the reason.

The reference virtualenvs come from ``tools/reference_venvs.sh DIR`` with
``MRCZ_REFERENCE_VENVS=DIR``.  Each release writes or reads its whole batch in
one subprocess.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))
import refcases  # noqa: E402
import refvenvs  # noqa: E402

if refvenvs.venvs_dir() is None:
    pytest.skip(refvenvs.NO_VENVS, allow_module_level=True)

import mrcz  # noqa: E402

ANGSTROM = "\\AA"
DTYPES = ("int8", "int16", "uint16", "int32", "uint32", "float32", "complex64")
LAYOUTS = tuple(refcases.LAYOUT_SHAPES)
CODECS = (None, "blosclz", "lz4", "lz4hc", "zlib", "zstd")
CLEVELS = (1, 5, 9)
#: (pixelsize, pixelunits): scalar, [y, x] and [z, y, x] in every unit.
PIXELS = ((1.25, ANGSTROM), ([0.35, 0.5], "nm"), ([250.0, 120.0, 130.0], "pm"),
          ([1.5e-4, 1.2e-4, 1.1e-4], "\\mum"), ([2.0, 1.5], ANGSTROM))
ANGSTROMS_PER_UNIT = {ANGSTROM: 1.0, "nm": 10.0, "pm": 0.01, "\\mum": 1e4}
#: (voltage, C3, gain)
MICROSCOPES = ((300.0, 2.7, 1.05), (200.0, 0.01, 23.5), (0.0, 0.0, 1.0))
NESTED_META = {
    "sample": "apoferritin \u2014 \u65e5\u672c\u8a9e \u2713 \u00e9\u00fc",
    "nested": {"list": [1, 2.5, None, True, "\u00fc"], "deep": {"grid": [[1, 2], [3, 4]]}},
    "count": 7, "ratio": 0.125, "flag": False, "empty": {},
}
METAS = (None, NESTED_META, {"exposure": 1.5, "tags": ["a", "b"]})
#: MRC modes of the dtypes, and compressor ids (the mode adds 1000 x id).
MODES = {"int8": 0, "int16": 1, "float32": 2, "complex64": 4, "uint16": 6,
         "int32": 7, "uint32": 8, "uint4": 101}
CODEC_IDS = {None: 0, "blosclz": 1, "lz4": 2, "lz4hc": 3, "zlib": 5, "zstd": 6}
#: What writeMRC stores for a keyword it is not given.
WRITE_DEFAULTS = {"pixelsize": [0.1, 0.1, 0.1], "pixelunits": ANGSTROM,
                  "voltage": 0.0, "C3": 0.0, "gain": 1.0}


def version_key(version: str) -> tuple[int, ...]:
    """Return ``"0.5.10"`` as ``(0, 5, 10)``."""
    return tuple(int(part) for part in version.split("."))


def legacy(version: str) -> bool:
    """True for releases before 0.5, which wrote the dimensions into mx, my, mz.

    0.6.0 reads their files as lists of 2-D frames; this package returns what the
    release itself returned (as the corpus records for mrcz 0.4.1 files).
    """
    return version_key(version) < (0, 5)


def make_case(index: int, dtype: str, layout: str, codec: str | None, endian: str,
              backend: str | None = None) -> dict:
    """Return one case; pixel sizes, microscope values and metadata vary with ``index``."""
    pixelsize, units = PIXELS[index % len(PIXELS)]
    voltage, c3, gain = MICROSCOPES[index % len(MICROSCOPES)]
    write = {"endian": endian, "pixelsize": pixelsize, "pixelunits": units,
             "voltage": voltage, "C3": c3, "gain": gain,
             "compressor": codec, "clevel": CLEVELS[index % len(CLEVELS)]}
    meta = METAS[(index // len(MICROSCOPES)) % len(METAS)]
    if meta is not None:
        write["meta"] = meta
    if dtype == "uint4":
        write["dtype"] = "uint4"
    name = f"{dtype}-{layout}-{codec or 'plain'}-{endian}"
    if backend:
        write["backend"] = backend
        name += f"-{backend}"
    return {"name": name, "dtype": dtype, "layout": layout, "seed": index, "write": write}


def matrix() -> list[dict]:
    """Every dtype x layout x codec little-endian; plain and zstd big-endian, and every
    codec for two dtypes; uint4 plain; blosc2 (version-5) chunks for every dtype and codec."""
    combos = [(d, lay, c, "le") for d in DTYPES for lay in LAYOUTS for c in CODECS]
    combos += [(d, lay, c, "be") for d in DTYPES for lay in LAYOUTS for c in (None, "zstd")]
    combos += [(d, "stack", c, "be") for d in ("int16", "float32") for c in CODECS[1:-1]]
    combos += [("uint4", lay, None, e) for lay in ("image", "stack") for e in ("le", "be")]
    combos += [(d, "stack", "zstd", "le", "blosc2") for d in DTYPES]
    combos += [("float32", "frames3d", c, "le", "blosc2") for c in CODECS[1:]]
    combos += [("uint16", "frames2d", "lz4", "be", "blosc2")]
    return [make_case(index, *combo) for index, combo in enumerate(combos)]


def default_cases() -> list[dict]:
    """Cases that leave every writeMRC keyword but ``compressor`` at its default."""
    layouts_codecs = [(lay, c) for lay in LAYOUTS for c in (None, "zstd")]
    return [{"name": f"defaults-{layout}-{codec or 'plain'}", "dtype": "float32",
             "layout": layout, "seed": 1000 + index,
             "write": {"compressor": codec} if codec else {}}
            for index, (layout, codec) in enumerate(layouts_codecs)]


def reference_supports(version: str, case: dict) -> bool:
    """Releases before 0.5 write no lists of 3-D frames; before 0.6, no blosc2 chunks."""
    if legacy(version) and case["layout"] == "frames3d":
        return False
    return not (case["write"].get("backend") and version_key(version) < (0, 6))


def byte_order_found_by_mode(case: dict) -> bool:
    """True if the mode of a big-endian file, read little-endian, exceeds 16e6.

    That is the only byte-order test 0.6.0 makes: it ignores the machine stamp.
    """
    mode = MODES[case["dtype"]] + 1000 * CODEC_IDS[case["write"].get("compressor")]
    return int(np.array(mode, dtype=">i4").view("<i4")) > 16_000_000


def reader_limitation(version: str, case: dict) -> str | None:
    """Return why release ``version`` cannot read this case's file right, or None."""
    older = version_key(version) < (0, 6)
    big_endian = case["write"].get("endian") == "be"
    if older and big_endian:
        return f"mrcz {version} misreads the byte order of every big-endian file"
    if big_endian and not byte_order_found_by_mode(case):
        return f"mrcz {version} finds big-endian files by mode > 16e6 only, not this mode"
    if older and case["dtype"] == "uint4":
        return f"mrcz {version} decodes the uint4 nibble 15 as 16"
    if older and case["write"].get("backend") == "blosc2":
        return f"mrcz {version} reads only blosc1 (version-2) chunks"
    return None


def read_param(version: str, case: dict):
    """Return the parameter set of one (reader, case) pair, skipped if it cannot work."""
    reason = reader_limitation(version, case)
    marks = [pytest.mark.skip(reason=reason)] if reason else []
    return pytest.param(version, case, id=f"{version}-{case['name']}", marks=marks)


CASES = matrix()
OUR_CASES = CASES + default_cases()
READERS = tuple(v for v in refvenvs.VERSIONS if not legacy(v))
WRITE_PARAMS = [pytest.param(v, c, id=f"{v}-{c['name']}")
                for v in refvenvs.VERSIONS for c in CASES if reference_supports(v, c)]
READ_PARAMS = [read_param(v, c) for v in READERS for c in OUR_CASES]


class Batches:
    """Run one reference script per version at most once, remembering a failure too."""

    def __init__(self, run):
        self._run = run
        self._done: dict[str, object] = {}

    def __call__(self, version: str) -> dict:
        refvenvs.venv(version)  # skips when the virtualenv is missing
        if version not in self._done:
            try:
                self._done[version] = self._run(version)
            except Exception as exc:  # re-raised for every test of this version
                self._done[version] = exc
        result = self._done[version]
        if isinstance(result, Exception):
            raise result
        return result


def written(case: dict, key: str):
    """Return the header value ``writeMRC`` was asked to store for ``key``."""
    return case["write"].get(key, WRITE_DEFAULTS.get(key))


def intended_pixelsize(case: dict) -> np.ndarray:
    """Return the written [z, y, x] pixel size in Angstrom; [y, x] means z = 10 A."""
    values = np.atleast_1d(np.asarray(written(case, "pixelsize"), dtype=float))
    values = values * ANGSTROMS_PER_UNIT[written(case, "pixelunits")]
    if values.size == 1:
        return np.repeat(values, 3)
    if values.size == 2:
        return np.concatenate([[10.0], values])
    return values


def kind_of(image) -> str:
    """Return "list" or "array", the kind of what readMRC returned."""
    return "list" if isinstance(image, list) else "array"


def plain_dtype(dtype) -> np.dtype:
    """Return ``dtype`` in native byte order (byte order is not compared)."""
    return np.dtype(dtype).newbyteorder("=")


def check_header(header: dict, case: dict, compressor: str | None) -> None:
    """Pixel size, microscope values, codec and JSON metadata are what was written."""
    np.testing.assert_allclose(np.ravel(header["pixelsize"]), intended_pixelsize(case),
                               rtol=1e-6, err_msg="pixelsize (Angstrom)")
    for key in ("voltage", "C3", "gain"):
        got = float(np.ravel(header[key])[0])
        assert got == pytest.approx(written(case, key), rel=1e-6), key
    assert header["compressor"] == compressor, "compressor"
    meta = case["write"].get("meta") or {}
    assert {key: header.get(key, "<missing>") for key in meta} == meta, "metadata"


# --------------------------------------------------------------------------
# Reference releases write, we read
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_writes(tmp_path_factory) -> Batches:
    """``version -> {case name: ref_write.py entry}``, one subprocess per version."""
    def run(version):
        spec = [case for case in CASES if reference_supports(version, case)]
        outdir = tmp_path_factory.mktemp(f"written-by-{version}")
        return refvenvs.run_script(version, "ref_write.py", spec, outdir)["cases"]
    return Batches(run)


def reference_arrangement(version: str, case: dict, entry: dict) -> tuple[str, tuple]:
    """Return the kind and stacked shape the release returns for its own file.

    Where the release cannot read its own file, the kind it writes that
    layout as (array for images and stacks, list for frames) stands in.
    """
    if "readback" in entry:
        readback = entry["readback"]
        shapes = [tuple(shape) for shape in readback["shapes"]]
        if readback["kind"] == "list":
            return "list", (len(shapes), *shapes[0])
        return "array", shapes[0]
    if legacy(version):  # releases before 0.5 return one array unless asked for a list
        image = case["layout"] == "image"
        return "array", refcases.LAYOUT_SHAPES["image"] if image else (-1, refcases.NY, refcases.NX)
    kind = "list" if case["layout"].startswith("frames") else "array"
    return kind, refcases.LAYOUT_SHAPES[case["layout"]]


def reference_compressor(version: str, case: dict) -> str | None:
    """Releases before 0.6 stored lz4hc under the lz4 mode number."""
    codec = case["write"]["compressor"]
    if codec == "lz4hc" and version_key(version) < (0, 6):
        return "lz4"
    return codec


@pytest.mark.parametrize("version,case", WRITE_PARAMS)
def test_we_read_reference_file(reference_writes, version, case):
    """Our readMRC returns what the release wrote, arranged as it reads it back."""
    entry = reference_writes(version)[case["name"]]
    if "write_error" in entry:
        pytest.skip(f"mrcz {version} cannot write this case: {entry['write_error']}")
    kind, shape = reference_arrangement(version, case, entry)
    values = np.load(entry["written"])

    image, header = mrcz.readMRC(entry["path"], pixelunits=ANGSTROM)

    assert kind_of(image) == kind
    ours = refcases.stacked(image)
    assert plain_dtype(ours.dtype) == plain_dtype(values.dtype)
    np.testing.assert_array_equal(ours, values.reshape(shape))
    check_header(header, case, reference_compressor(version, case))


# --------------------------------------------------------------------------
# We write, reference releases read
# --------------------------------------------------------------------------
def write_ours(case: dict, outdir: Path) -> dict:
    """Write one case with our writeMRC; return its path and data, or the error."""
    kwargs = case["write"]
    path = outdir / (case["name"] + (".mrcz" if kwargs.get("compressor") else ".mrc"))
    image = refcases.make_image(case)
    try:
        mrcz.writeMRC(image, str(path), **kwargs)
    except Exception as exc:  # reported by the tests of this case
        return {"error": refcases.error_text(exc)}
    return {"path": str(path), "image": image}


@pytest.fixture(scope="module")
def our_files(tmp_path_factory) -> dict:
    """``{case name: write_ours entry}`` for every case, written once."""
    outdir = tmp_path_factory.mktemp("written-by-us")
    return {case["name"]: write_ours(case, outdir) for case in OUR_CASES}


@pytest.fixture(scope="module")
def reference_reads(our_files, tmp_path_factory) -> Batches:
    """``version -> {case name: ref_read.py entry}``, one subprocess per version."""
    def run(version):
        spec = [{"name": name, "path": entry["path"], "pixelunits": ANGSTROM}
                for name, entry in our_files.items() if "path" in entry]
        outdir = tmp_path_factory.mktemp(f"read-by-{version}")
        return refvenvs.run_script(version, "ref_read.py", spec, outdir)["cases"]
    return Batches(run)


@pytest.mark.parametrize("version,case", READ_PARAMS)
def test_reference_reads_our_file(our_files, reference_reads, version, case):
    """The release reads back what our writeMRC wrote."""
    ours = our_files[case["name"]]
    assert "error" not in ours, f"our writeMRC failed: {ours.get('error')}"
    got = reference_reads(version)[case["name"]]
    assert "read_error" not in got, f"mrcz {version} cannot read our file: {got.get('read_error')}"
    expected = refcases.stacked(ours["image"])
    values = np.load(got["values"])

    if case["write"].get("compressor"):
        assert got["kind"] == kind_of(ours["image"])
        assert values.shape == expected.shape
    assert values.size == expected.size, f"{values.shape} read for {expected.shape} written"
    assert plain_dtype(got["dtype"]) == plain_dtype(expected.dtype)
    np.testing.assert_array_equal(values.reshape(expected.shape), expected)
    check_header(got["header"], case, case["write"].get("compressor"))


ORIGINAL = "0.6.0"


@pytest.mark.parametrize("case", OUR_CASES, ids=lambda c: c["name"])
def test_header_keys_are_the_originals(our_files, reference_reads, case):
    """readMRC's header dict lists the keys 0.6.0 lists for the same file, in its order.

    Two differences, both for rosettasciio, which copies every item it does not pop
    into a signal's metadata and pops ``metaId`` unconditionally: ``bloscFormat`` and
    ``backend`` of compressed files are answered on lookup instead of being stored
    (as 0.6.0 stores them, its own test suite's lookups still pass), and ``metaId`` is
    stored also on files without an extended header.
    """
    if ORIGINAL not in READERS:
        pytest.skip(f"no reference venv of mrcz {ORIGINAL}")
    ours = our_files[case["name"]]
    assert "error" not in ours, f"our writeMRC failed: {ours.get('error')}"
    got = reference_reads(ORIGINAL)[case["name"]]
    if "read_error" in got:
        pytest.skip(f"mrcz {ORIGINAL} cannot read this file: {got['read_error']}")
    _, header = mrcz.readMRC(ours["path"], pixelunits=ANGSTROM)
    expected = [key for key in got["header"] if key not in ("bloscFormat", "backend")]
    if "metaId" not in expected:
        expected.insert(expected.index("extendedBytes") + 1, "metaId")
    assert list(header) == expected
    assert list(header.copy()) == expected
    for key in ("bloscFormat", "backend"):
        if key in got["header"]:
            assert header[key] == got["header"][key]
