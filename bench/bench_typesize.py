"""Which typesize 1-byte chunks should declare: ratio and single-thread CPU per codec.

c-blosc 1.x has no SIMD bit-unshuffle for typesize 1, so declaring 2 or 4 for
int8 counts may decode faster; the chunk decodes to the same bytes whatever the
typesize. Poisson(0.8) int8 4096^2 frames, bit-shuffled, 1 MiB blocks, one
thread (``time.thread_time``), median of the repeats. mrcz.codec.declared_typesize
follows this table.

Usage::

    python bench/bench_typesize.py [--quick] [--repeats 5]
"""
from __future__ import annotations

import time

import blosc
import numpy as np

from _benchlib import GB, bench_arguments, counted, load_line, median

CODECS = (("zstd", 1), ("lz4", 9), ("lz4hc", 1), ("blosclz", 5))


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0], "typesize").parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    frames = counted(2 if args.quick else 4, "int8")
    out = np.empty_like(frames[0])
    blosc.set_nthreads(1)
    blosc.set_blocksize(2**20)
    print(f"{load_line()}; median of {repeats}, one thread")
    print(f"{'codec':<10}{'typesize':>9}{'ratio':>8}{'compress s/GB':>15}{'decode s/GB':>13}")
    for cname, clevel in CODECS:
        for typesize in (1, 2, 4):
            comp, dec = [], []
            for _ in range(repeats):
                start = time.thread_time()
                chunks = [blosc.blosc_extension.compress_ptr(f.ctypes.data, f.nbytes, typesize,
                                                             clevel, blosc.BITSHUFFLE, cname)
                          for f in frames]
                comp.append(time.thread_time() - start)
                start = time.thread_time()
                for chunk in chunks:
                    blosc.blosc_extension.decompress_ptr(chunk, out.ctypes.data)
                dec.append(time.thread_time() - start)
            ratio = frames.nbytes / sum(len(c) for c in chunks)
            print(f"{cname + ' ' + str(clevel):<10}{typesize:>9}{ratio:>8.3f}"
                  f"{median(comp) / frames.nbytes * GB:>15.3f}"
                  f"{median(dec) / frames.nbytes * GB:>13.3f}", flush=True)


if __name__ == "__main__":
    main()
