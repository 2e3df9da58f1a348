"""Write test files with a reference mrcz release, then read them back with it.

Run by the python of a reference virtualenv::

    python ref_write.py SPEC.json OUTDIR

SPEC.json holds a list of cases (see ``refcases``).  For each case this writes
``OUTDIR/<name>.mrc``, the data it handed to ``writeMRC`` as
``OUTDIR/<name>.npy``, and what the same release reads back from the file as
``OUTDIR/<name>.read.npy``.  ``OUTDIR/results.json`` maps every case name to
``{"path", "written", "readback"}`` (``readback`` as ``refcases.describe``),
with ``write_error`` or ``read_error`` in place of what failed.
"""
import os
import sys
import warnings

import numpy as np

import refcases

warnings.simplefilter("ignore")
import mrcz  # noqa: E402  (after the filter: old releases warn on import)


def write_case(case, outdir):
    """Write one case and read it back; return its results entry."""
    kwargs = case["write"]
    suffix = ".mrcz" if kwargs.get("compressor") else ".mrc"
    path = os.path.join(outdir, case["name"] + suffix)
    image = refcases.make_image(case)
    entry = {"path": path, "written": os.path.join(outdir, case["name"] + ".npy")}
    np.save(entry["written"], refcases.stacked(image))
    try:
        mrcz.writeMRC(image, path, **kwargs)
    except Exception as exc:
        entry["write_error"] = refcases.error_text(exc)
        return entry
    try:
        result = mrcz.readMRC(path)
        npy = os.path.join(outdir, case["name"] + ".read.npy")
        entry["readback"] = refcases.describe(result[0], result[1], npy)
    except Exception as exc:
        entry["read_error"] = refcases.error_text(exc)
    return entry


def main(spec_path, outdir):
    """Write every case of ``spec_path`` into ``outdir``."""
    results = {case["name"]: write_case(case, outdir)
               for case in refcases.load_json(spec_path)}
    refcases.save_json(os.path.join(outdir, "results.json"),
                       {"mrcz": mrcz.__version__, "numpy": np.__version__,
                        "cases": results})


if __name__ == "__main__":
    main(*sys.argv[1:])
