"""Read the files of write_ours.py with another mrcz (e.g. the original 0.6.0).

Usage: /path/to/venv-with-mrcz-0.6.0/bin/python docs/_compat/read_with_reference.py OUTDIR

Run it with an interpreter whose ``mrcz`` is the reference version, and without
PYTHONPATH pointing at this source tree. Prints, per file, the layout and dtype
read back, whether the data equal what was written, and the pixel size.
"""
import json
import logging
import os
import sys
import warnings

import numpy as np

import mrcz

logging.disable(logging.CRITICAL)
out = sys.argv[1]
print("mrcz", mrcz.__version__, mrcz.__file__)
with open(os.path.join(out, "cases.json")) as f:
    cases = json.load(f)
for name, case in cases.items():
    ref = np.load(os.path.join(out, name + ".npy"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image, header = mrcz.readMRC(os.path.join(out, name))
    except Exception as err:  # report and go on
        print(f"{name:22s} ERROR {type(err).__name__}: {str(err)[:100]}")
        continue
    if isinstance(image, list):
        layout = f"list[{len(image)}] of {np.shape(image[0])}"
        got = np.stack(image)
    else:
        layout = f"array {image.shape}"
        got = image
    try:
        same = np.array_equal(got.reshape(ref.shape), ref)
    except ValueError:
        same = f"shape {got.shape} vs {ref.shape}"
    pixelsize = np.round(np.asarray(header.get("pixelsize")), 4).tolist()
    written = "list" if case["list"] else "array"
    print(f"{name:22s} wrote {written} {ref.shape} -> {layout} dtype={got.dtype} "
          f"equal={same} pixelsize={pixelsize} voltage={header.get('voltage')} "
          f"meta dose={header.get('dose')}")
