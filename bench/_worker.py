"""One timed write or read in a fresh process; prints one JSON line (run by the bench scripts).

Usage: ``python worker.py '{"impl": "ours", "op": "write", "npy": ..., "path": ..., ...}'``

``impl`` names what writes or reads: ``ours`` (this repository), ``orig`` (mrcz
0.6.0), ``codec`` (python-blosc alone, the frames of ``npy`` in memory), ``blosc2``
(NDArray), ``hdf5`` (h5py + hdf5plugin Blosc), ``zarr`` (v3, BloscCodec),
``tiff_zstd`` / ``tiff_lzw`` (tifffile, one page per frame) or ``mrc_zst`` (ours,
whole-file zstd). ``op`` is ``write``, ``read`` or ``frame`` (the middle frame).
Each implementation is imported only when asked for, so this file runs in any
of the three interpreters the benchmarks use.

Reported: wall seconds, CPU seconds of the process (user + sys, all threads,
``time.process_time``), and for reads the peak resident memory above what the
process held before the read (VmHWM - VmRSS).
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOSC_ROWS = 2**20  # elements per blosc block, as mrcz.codec.choose_blocksize
#: mrcz's shuffle= -> (blosc2 Filter, hdf5plugin.Blosc constant, zarr BloscCodec shuffle).
FILTERS = {"bit": ("BITSHUFFLE", "BITSHUFFLE", "bitshuffle"),
           "byte": ("SHUFFLE", "SHUFFLE", "shuffle"),
           None: ("NOFILTER", "NOSHUFFLE", "noshuffle")}


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------------------------- writers

def write(impl: str, data: np.ndarray, path: str, p: dict) -> None:
    cname, clevel, threads = p.get("codec", "zstd"), p.get("clevel", 1), p.get("threads", 2)
    shuffle = p.get("shuffle", "bit")
    if impl in ("ours", "orig"):
        import mrcz
        extra = {"shuffle": shuffle} if impl == "ours" else {}
        mrcz.writeMRC(data, path, compressor=cname, clevel=clevel, n_threads=threads, **extra)
    elif impl == "mrc_zst":
        import mrcz
        mrcz.writeMRC(data, path, clevel=clevel, n_threads=threads)
    elif impl == "codec":
        for _ in _compress_all(data, p):
            pass
    elif impl == "blosc2":
        import blosc2
        nz, ny, nx = data.shape
        blosc2.asarray(data, urlpath=path, mode="w", chunks=(1, ny, nx),
                       blocks=(1, max(1, min(ny, BLOSC_ROWS // nx)), nx),
                       cparams={"codec": blosc2.Codec[cname.upper()], "clevel": clevel,
                                "filters": [blosc2.Filter[FILTERS[shuffle][0]]],
                                "nthreads": threads})
    elif impl == "hdf5":
        import h5py
        import hdf5plugin
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=data, chunks=(1, *data.shape[1:]),
                             **hdf5plugin.Blosc(cname=cname, clevel=clevel,
                                                shuffle=getattr(hdf5plugin.Blosc,
                                                                FILTERS[shuffle][1])))
    elif impl == "zarr":
        import zarr
        from zarr.codecs import BloscCodec
        arr = zarr.create_array(store=path, shape=data.shape, dtype=data.dtype,
                                chunks=(1, *data.shape[1:]), overwrite=True,
                                compressors=[BloscCodec(cname=cname, clevel=clevel,
                                                        shuffle=FILTERS[shuffle][2])])
        arr[:] = data
    elif impl in ("tiff_zstd", "tiff_lzw"):
        import tifffile
        compression = ("zstd", {"level": clevel}) if impl == "tiff_zstd" else ("lzw", None)
        tifffile.imwrite(path, data, compression=compression[0], photometric="minisblack",
                         compressionargs=compression[1], maxworkers=threads)
    else:
        raise ValueError(f"unknown implementation {impl!r}")


def _compress_all(data: np.ndarray, p: dict):
    """python-blosc alone, as mrcz calls it: one frame per thread, mrcz's block size,
    typesize and filter; yields the chunks in order."""
    import blosc
    sys.path.insert(0, p["repo"])
    from mrcz import codec
    cname, clevel = p.get("codec", "zstd"), p.get("clevel", 1)
    shuffle = codec.SHUFFLES[p.get("shuffle", "bit")]
    blosc.set_nthreads(1)
    blosc.set_releasegil(True)
    blosc.set_blocksize(codec.choose_blocksize(data[0].nbytes, data.itemsize, cname))
    typesize = codec.declared_typesize(data[0], cname)

    def one(frame: np.ndarray) -> bytes:  # the extension: no per-call checks in Python
        return blosc.blosc_extension.compress_ptr(frame.ctypes.data, frame.nbytes, typesize,
                                                  clevel, shuffle, cname)

    with ThreadPoolExecutor(p.get("threads", 2)) as pool:
        yield from pool.map(one, data)


# ----------------------------------------------------------------------------- readers

def read(impl: str, path: str, p: dict, chunks: list | None) -> np.ndarray:
    threads = p.get("threads", 2)
    if impl in ("ours", "orig", "mrc_zst"):
        import mrcz
        image, _ = mrcz.readMRC(path, n_threads=threads)
        return np.asarray(image)
    if impl == "codec":
        import blosc
        out = np.empty(p["shape"], dtype=p["dtype"])
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda k: blosc.blosc_extension.decompress_ptr(chunks[k],
                                                                        out[k].ctypes.data),
                          range(len(chunks))))
        return out
    if impl == "blosc2":
        import blosc2
        return blosc2.open(path, dparams={"nthreads": threads})[:]
    if impl == "hdf5":
        import h5py
        import hdf5plugin  # noqa: F401  (registers the Blosc filter)
        with h5py.File(path, "r") as f:
            return f["data"][()]
    if impl == "zarr":
        import zarr
        return zarr.open_array(path, mode="r")[:]
    if impl in ("tiff_zstd", "tiff_lzw"):
        import tifffile
        return tifffile.imread(path, maxworkers=threads)
    raise ValueError(f"unknown implementation {impl!r}")


def read_frame(impl: str, path: str, k: int) -> np.ndarray:
    if impl == "orig":  # mrcz 0.6.0 refuses idx= on compressed files: it reads them whole
        import mrcz
        return np.asarray(mrcz.readMRC(path)[0])[k]
    if impl in ("ours", "mrc_zst"):
        import mrcz
        return np.asarray(mrcz.readMRC(path, idx=k)[0])
    if impl == "blosc2":
        import blosc2
        return blosc2.open(path)[k]
    if impl == "hdf5":
        import h5py
        import hdf5plugin  # noqa: F401
        with h5py.File(path, "r") as f:
            return f["data"][k]
    if impl == "zarr":
        import zarr
        return zarr.open_array(path, mode="r")[k]
    if impl in ("tiff_zstd", "tiff_lzw"):
        import tifffile
        return tifffile.imread(path, key=k)
    raise ValueError(f"no one-frame read for {impl!r}")


# ----------------------------------------------------------------------------- main

def warm_up(impl: str, p: dict) -> None:
    """Write and read a tiny file first: imports, thread pools and first calls are not timed."""
    tiny = np.zeros((2, 64, 64), dtype=np.load(p["npy"], mmap_mode="r").dtype)
    if impl == "codec":
        list(_compress_all(tiny, p))
        return
    suffix = {"hdf5": ".h5", "zarr": ".zarr", "mrc_zst": ".mrc.zst"}.get(impl, "")
    if impl.startswith("tiff"):
        suffix = ".tif"
    path = f"{p['path']}.warm{suffix}"
    write(impl, tiny, path, p)
    read(impl, path, p, None)
    read_frame(impl, path, 1)
    import shutil
    shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def main(p: dict) -> dict:
    impl, op, path = p["impl"], p["op"], p.get("path", "")
    result: dict = {}
    warm_up(impl, p)
    if op == "write":
        data = np.load(p["npy"])  # read into memory: every page touched before timing
        start, cpu = time.perf_counter(), time.process_time()
        write(impl, data, path, p)
        result["seconds"], result["cpu"] = time.perf_counter() - start, time.process_time() - cpu
        return result
    expected = np.load(p["npy"], mmap_mode="r")
    if op == "frame":
        k = expected.shape[0] // 2
        times = []
        for _ in range(3):
            start = time.perf_counter()
            frame = read_frame(impl, path, k)
            times.append(time.perf_counter() - start)
        result["seconds"] = min(times)
        result["equal"] = bool(np.array_equal(frame, expected[k]))
        return result
    chunks = None
    if impl == "codec":
        chunks = list(_compress_all(np.load(p["npy"]), p))  # the array is freed again
        p = {**p, "shape": expected.shape, "dtype": expected.dtype.str}
    try:  # reset the high-water mark to the present resident set
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    base = _status("VmRSS:")
    start, cpu = time.perf_counter(), time.process_time()
    image = read(impl, path, p, chunks)
    result["seconds"], result["cpu"] = time.perf_counter() - start, time.process_time() - cpu
    result["peak"] = _status("VmHWM:") - base
    result["equal"] = bool(np.array_equal(image.reshape(expected.shape), expected))
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
