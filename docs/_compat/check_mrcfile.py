"""Run mrcfile.validate and mrcfile.open on the plain files of write_ours.py.

Usage: python docs/_compat/check_mrcfile.py OUTDIR      (needs mrcfile)
"""
import glob
import io
import os
import sys
import warnings

import mrcfile
import numpy as np

warnings.simplefilter("ignore")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "plain_*.mrc"))):
    report = io.StringIO()
    valid = mrcfile.validate(path, print_file=report)
    lines = [line for line in report.getvalue().splitlines()[1:] if line.strip()]
    try:
        with mrcfile.open(path) as mrc:
            ref = np.load(path + ".npy")
            same = np.array_equal(np.asarray(mrc.data).reshape(ref.shape), ref)
            size = mrc.voxel_size
            opened = (f"shape={mrc.data.shape} ispg={int(mrc.header.ispg)} equal={same} "
                      f"voxel=({size.x:.3f}, {size.y:.3f}, {size.z:.3f})")
    except Exception as err:  # report and go on
        opened = f"not opened: {type(err).__name__}: {err}"
    print(f"{os.path.basename(path):22s} valid={valid} {opened}")
    for line in lines[:3]:
        print(f"    {line}")
