"""Load files with HyperSpy (``hs.load``, rosettasciio's readers) in a client venv.

Run by ``tests/test_clients.py`` with the python that has hyperspy and
rosettasciio::

    python hyperspy_load.py JOBS.json RESULTS.json

``JOBS.json`` is a list of ``{"path": ..., "reader": "mrc" | "mrcz"}``.  For
each job the loaded data is saved beside the file as ``PATH.<reader>.npy`` and
``RESULTS.json`` maps ``"<reader>:<path>"`` to ``{"npy", "signal", "axes"}``
(axes: name, size, scale, units), or to ``{"error": ...}`` when loading failed.
"""
from __future__ import annotations

import json
import sys
import traceback
import warnings

import numpy as np


def load(path: str, reader: str) -> dict:
    """Load one file with HyperSpy's ``reader`` plugin and describe the signal."""
    import hyperspy.api as hs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal = hs.load(path, reader=reader)
    npy = f"{path}.{reader}.npy"
    np.save(npy, np.asarray(signal.data))
    axes = [{"name": str(axis.name), "size": int(axis.size), "scale": float(axis.scale),
             "units": str(axis.units)} for axis in signal.axes_manager._axes]
    return {"npy": npy, "signal": type(signal).__name__, "axes": axes}


def main(jobs_file: str, results_file: str) -> None:
    with open(jobs_file, encoding="utf-8") as f:
        jobs = json.load(f)
    results = {}
    for job in jobs:
        key = f"{job['reader']}:{job['path']}"
        try:
            results[key] = load(job["path"], job["reader"])
        except Exception:  # reported to the test, which decides
            results[key] = {"error": traceback.format_exc(limit=3)}
    with open(results_file, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
