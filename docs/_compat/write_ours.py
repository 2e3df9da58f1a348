"""Write the test files of the compatibility page with this package.

Usage: python docs/_compat/write_ours.py OUTDIR

Writes one file per case into OUTDIR, with NAME.npy (the array written; a list
of frames stacked) and cases.json, for read_with_reference.py,
check_mrcfile.py and check_rsciio.py.
"""
import json
import os
import sys

import numpy as np

import mrcz

out = sys.argv[1]
rs = np.random.RandomState(1)
cases = {}


def add(name, image, **kwargs):
    """Write ``image`` as OUTDIR/name with ``kwargs``; record the case."""
    mrcz.writeMRC(image, os.path.join(out, name), **kwargs)
    array = np.stack(image) if isinstance(image, list) else np.asarray(image)
    np.save(os.path.join(out, name + ".npy"), array)
    cases[name] = {"list": isinstance(image, list),
                   "kw": {k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v
                          for k, v in kwargs.items()}}


f32 = rs.standard_normal((4, 16, 20)).astype("f4")
u8 = rs.randint(0, 255, (3, 16, 20)).astype("u1")
i32 = rs.randint(-1000, 1000, (3, 16, 20)).astype("i4")
c64 = (f32 + 1j * f32).astype("c8")

add("plain_f32_3d.mrc", f32, pixelsize=[1.5, 1.2, 1.1], voltage=300.0)
add("plain_f32_2d.mrc", f32[0], pixelsize=1.2)
add("plain_list2d.mrc", list(f32), pixelsize=1.2)
add("plain_list3d.mrc", [f32[:2], f32[2:]], pixelsize=1.2)
add("plain_meta.mrc", f32, meta={"dose": 1.2, "name": "x"}, pixelsize=1.2)
add("plain_be.mrc", f32, endian="be", pixelsize=1.2)
add("plain_u8.mrc", u8, pixelsize=1.2)
add("plain_f16.mrc", f32.astype("f2"), pixelsize=1.2)
add("plain_i32.mrc", i32, pixelsize=1.2)
add("plain_c64.mrc", c64, pixelsize=1.2)
add("plain_uint4.mrc", rs.randint(0, 16, (3, 16, 20)).astype("u1"), dtype="uint4",
    pixelsize=1.2)

add("z_zstd_3d.mrcz", f32, compressor="zstd", pixelsize=[1.5, 1.2, 1.1], voltage=300.0)
add("z_zstd_2d.mrcz", f32[0], compressor="zstd", pixelsize=1.2)
add("z_lz4_list2d.mrcz", list(f32), compressor="lz4", pixelsize=1.2)
add("z_zstd_list3d.mrcz", [f32[:2], f32[2:]], compressor="zstd", pixelsize=1.2)
add("z_meta.mrcz", f32, compressor="zstd", meta={"dose": 1.2}, pixelsize=1.2)
add("z_be.mrcz", f32, compressor="zstd", endian="be", pixelsize=1.2)
add("z_u8.mrcz", u8, compressor="zstd", pixelsize=1.2)
add("z_i8_blosclz.mrcz", rs.randint(-3, 3, (3, 16, 20)).astype("i1"), compressor="blosclz",
    pixelsize=1.2)
add("z_i16_lz4hc.mrcz", rs.randint(-300, 300, (3, 16, 20)).astype("i2"), compressor="lz4hc",
    pixelsize=1.2)
add("z_u16_zlib.mrcz", rs.randint(0, 300, (3, 16, 20)).astype("u2"), compressor="zlib",
    pixelsize=1.2)
add("z_i32.mrcz", i32, compressor="zstd", pixelsize=1.2)
add("z_f16.mrcz", f32.astype("f2"), compressor="zstd", pixelsize=1.2)
add("z_c64.mrcz", c64, compressor="zstd", pixelsize=1.2)

# 8 MiB frames (large blosc blocks), a file grown with idx=, and a streamed file.
big = rs.poisson(1.0, (3, 2048, 2048)).astype("i2")
add("z_big_8MiB.mrcz", big, compressor="zstd")
mrcz.writeMRC(big[:2], os.path.join(out, "z_appended.mrcz"), compressor="lz4")
mrcz.writeMRC(big[2:], os.path.join(out, "z_appended.mrcz"), idx=2)
np.save(os.path.join(out, "z_appended.mrcz.npy"), big)
cases["z_appended.mrcz"] = {"list": False, "kw": {"compressor": "lz4", "idx": 2}}
try:
    from mrcz.stream import MRCZWriter
except ImportError:
    MRCZWriter = None
if MRCZWriter is not None:
    with MRCZWriter(os.path.join(out, "z_streamed.mrcz"), (2048, 2048), np.int16,
                    compressor="zstd") as writer:
        for frame in big:
            writer.write(frame)
    np.save(os.path.join(out, "z_streamed.mrcz.npy"), big)
    cases["z_streamed.mrcz"] = {"list": False, "kw": {"compressor": "zstd"}}

with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(cases, f, indent=1)
