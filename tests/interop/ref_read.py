"""Read files with a reference mrcz release and record what it returned.

Run by the python of a reference virtualenv::

    python ref_read.py SPEC.json OUTDIR

SPEC.json holds a list of ``{"name", "path", "pixelunits"}``.  Each file is
read with ``readMRC(path, pixelunits=...)``; the returned values go to
``OUTDIR/<name>.read.npy`` and ``OUTDIR/results.json`` maps every name to
``refcases.describe``'s record of the result, or to ``{"read_error": ...}``.
"""
import os
import sys
import warnings

import numpy as np

import refcases

warnings.simplefilter("ignore")
import mrcz  # noqa: E402  (after the filter: old releases warn on import)


def read_file(item, outdir):
    """Read one file; return its results entry."""
    try:
        image, header = mrcz.readMRC(item["path"], pixelunits=item["pixelunits"])
        npy = os.path.join(outdir, item["name"] + ".read.npy")
        return refcases.describe(image, header, npy)
    except Exception as exc:
        return {"read_error": refcases.error_text(exc)}


def main(spec_path, outdir):
    """Read every file listed in ``spec_path``."""
    results = {item["name"]: read_file(item, outdir)
               for item in refcases.load_json(spec_path)}
    refcases.save_json(os.path.join(outdir, "results.json"),
                       {"mrcz": mrcz.__version__, "numpy": np.__version__,
                        "cases": results})


if __name__ == "__main__":
    main(*sys.argv[1:])
