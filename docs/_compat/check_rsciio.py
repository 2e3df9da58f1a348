"""Read the files of write_ours.py with rosettasciio's MRC and MRCZ readers.

Usage: python docs/_compat/check_rsciio.py OUTDIR
(needs rosettasciio; rsciio.mrcz imports the ``mrcz`` of this interpreter)
"""
import glob
import os
import sys
import warnings

import numpy as np

warnings.simplefilter("ignore")
from rsciio.mrc import file_reader as mrc_reader  # noqa: E402
from rsciio.mrcz import file_reader as mrcz_reader, file_writer  # noqa: E402

out = sys.argv[1]
plain = sorted(glob.glob(os.path.join(out, "plain_*.mrc")))
compressed = sorted(glob.glob(os.path.join(out, "z_*.mrcz")))
for reader, files in ((mrc_reader, plain), (mrcz_reader, compressed + plain)):
    for path in files:
        try:
            d = reader(path)[0]
            ref = np.load(path + ".npy")
            same = np.array_equal(np.asarray(d["data"]).reshape(ref.shape), ref)
            scales = [round(float(a["scale"]), 4) for a in d["axes"]]
            print(f"{reader.__module__:18s} {os.path.basename(path):22s} equal={same} "
                  f"axes={scales}")
        except Exception as err:  # report and go on
            print(f"{reader.__module__:18s} {os.path.basename(path):22s} "
                  f"ERROR {type(err).__name__}: {str(err)[:80]}")
signal = mrcz_reader(os.path.join(out, "z_zstd_3d.mrcz"))[0]
for compressor in (None, "zstd"):
    target = os.path.join(out, f"rsciio_written_{compressor}.mrcz")
    file_writer(target, signal, compressor=compressor)
    again = mrcz_reader(target)[0]
    print(f"rsciio.mrcz writer compressor={compressor}: reads back equal="
          f"{np.array_equal(again['data'], signal['data'])}")
