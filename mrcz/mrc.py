"""readMRC / writeMRC: the original package's functions, as faces on the one engine.

Reading goes through :class:`mrcz.reader.MRCSource` (one open file, its header
parsed once); writing through :mod:`mrcz.writer` (one plan, one header builder,
one frame appender), with :mod:`mrcz.append` for in-place writes and
:mod:`mrcz.wholefile` for names ending ``.gz``, ``.bz2`` or ``.zst``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, BinaryIO

import numpy as np

from . import carry, codec, meta as jsonmeta, wholefile, workers
from .append import write_at
from .casting import check_casting
from .errors import describe
from .fileops import atomic_output
from .frames import FrameSource, frame_source
from .reader import MRCSource, read_image, template_of
from .units import ANGSTROM, pixelsize_angstrom
from .writer import build_header, check_compressor, plan_file, stored_dtype, write_file


def __getattr__(name: str) -> Any:
    """``DEFAULT_N_THREADS``: what :func:`setDefaultThreads` last set."""
    if name == "DEFAULT_N_THREADS":
        return workers.default_threads()
    raise AttributeError(f"module 'mrcz.mrc' has no attribute {name!r}")


def setDefaultThreads(n_threads: int) -> None:
    """Set how many frames readMRC/writeMRC process in parallel when n_threads is None."""
    workers.set_default_threads(n_threads)


def defaultHeader() -> dict:
    """A header dict with every field readMRC returns, at default values."""
    return {
        "fileConvention": "ccpem", "endian": "le", "MRCtype": 0,
        "dimensions": np.array([0, 0, 0], dtype=int), "dtype": "u1",
        "compressor": None, "backend": None, "packedBytes": 0, "clevel": 1,
        "maxImage": 1.0, "minImage": 0.0, "meanImage": 0.0,
        "pixelsize": 0.1, "pixelunits": "nm", "voltage": 300.0, "C3": 2.7, "gain": 1.0,
        "n_threads": workers.default_threads(),
    }


def readMRC(MRCfilename: str | os.PathLike, idx: int | tuple[int, int] | None = None,
            endian: str = "le", pixelunits: str = ANGSTROM, fileConvention: str = "ccpem",
            useMemmap: bool = False, n_threads: int | None = None,
            slices: int | None = None, *, permissive: bool = False,
            out: np.ndarray | None = None,
            verify: bool = True) -> tuple[np.ndarray | list[np.ndarray], dict]:
    r"""Read an MRC or MRCZ file.

    Parameters
    ----------
    MRCfilename : path of the file.
    idx : z-slice ``k``, or an inclusive range ``(first, last)``; negative counts from
        the end. Works on compressed files too (only the chunks asked for are read).
    endian : ignored; the byte order is read from the file's machine stamp.
    pixelunits : units of the returned ``pixelsize``: ``'\AA'``, ``'nm'``, ``'\mum'``
        or ``'pm'``.
    fileConvention : ``'ccpem'`` (MRC2014) or ``'eman2'`` mode numbers.
    useMemmap : return a copy-on-write ``numpy.memmap`` of a plain file, and a
        read-only :class:`~mrcz.lazy.LazyFrames` of a compressed one (indexing it
        decompresses only the slices asked for; lists of frames are lists of views).
    n_threads : frames decompressed in parallel (default: the number of cores).
    slices : z-slices per returned frame (0: one array, k: a list of k-slice frames);
        by default what the file records.
    permissive : salvage what a damaged file still holds, with a warning: the
        complete frames of a truncated or partly corrupt movie, data despite
        undecodable JSON metadata. ``header['dimensions']`` gives what was read;
        ``header['damagedSlices']`` lists the z-slices whose chunks fail their
        checksum.
    out : a C-contiguous array of the returned dtype holding exactly the slices
        asked for (``(count, ny, nx)``, or ``(ny, nx)`` for one); filled and used as
        the image's memory, so a loop over files reuses one buffer. Compressed
        frames are decoded straight into it.
    verify : check every compressed chunk read against the CRC-32C in the file's
        frame index (a mismatch raises :class:`CorruptDataError` naming the file
        and the z-slice). ``False`` skips the check; files without an index
        (written by other programs or older versions) cannot be checked.

    Returns
    -------
    image : an array, or a list of frames.
    header : dict of header fields (``dimensions``, ``pixelsize``, ``voltage``, ...)
        and every key of the JSON metadata.
    """
    src = MRCSource.open(MRCfilename, fileConvention, permissive, memmap=useMemmap)
    with src:
        return read_image(src, idx, pixelunits, useMemmap, n_threads, slices, permissive, out,
                          verify)


def readMRCHeader(MRCfilename: str | os.PathLike, slices: int | None = None,
                  endian: str = "le", fileConvention: str = "ccpem",
                  pixelunits: str = ANGSTROM) -> tuple[dict, int]:
    """Read only the header (and JSON metadata); returns ``(header, slices)``."""
    with MRCSource.open(MRCfilename, fileConvention) as src:
        return src.header_dict(pixelunits), src.slices(slices)


def writeMRC(input_image: Any, MRCfilename: str | os.PathLike, meta: dict | None = None,
             endian: str = "le", dtype: Any = None, pixelsize: Any = (0.1, 0.1, 0.1),
             pixelunits: str = ANGSTROM, shape: Any = None, voltage: float = 0.0,
             C3: float = 0.0, gain: float = 1.0, compressor: str | None = None,
             clevel: int = 1, n_threads: int | None = None, quickStats: bool = True,
             idx: int | None = None, backend: str | None = None,
             template: str | os.PathLike | carry.Template | None = None,
             shuffle: str | None = "bit", *,
             casting: str = "same_value", durable: bool = True) -> None:
    r"""Write an MRC file, or a compressed MRCZ file when ``compressor`` is given.

    Parameters
    ----------
    input_image : 2-D or 3-D array (numpy, dask or array-like), or a list of 2-D or
        3-D frames (read back as a list).
    MRCfilename : output path. A new file is written beside the target and renamed
        into place, so a failed write never leaves a half-written file.
    meta : dict stored as JSON in the extended header.
    endian : ``'le'`` or ``'be'``.
    dtype : cast to this dtype (or ``'uint4'``: 4-bit packing) before writing.
    pixelsize : ``[z, y, x]`` voxel size (one value for cubic voxels) in ``pixelunits``.
    pixelunits : ``'\AA'``, ``'nm'``, ``'\mum'`` or ``'pm'``.
    shape : ignored (kept for compatibility).
    voltage, C3, gain : accelerating voltage (kV), spherical aberration (mm) and
        detector gain (counts per electron), stored in the header.
    compressor : ``None`` (plain MRC), ``'zstd'``, ``'lz4'``, ``'lz4hc'``, ``'zlib'`` or
        ``'blosclz'``.
    clevel : compression level 0-9.
    n_threads : frames compressed in parallel (default: the number of cores).
    quickStats : ``True`` (default) spends no pass over the data on statistics
        alone: compressed files get exact min/max/mean (gathered while compressing)
        and an RMS marked unknown; plain files get all four marked unknown, the
        MRC2014 way. ``False`` records all four exactly. Never estimates.
    idx : write the image at z-slice ``idx`` of an existing file instead of replacing
        it (plain files: anywhere up to the end; compressed files: append at the end).
    backend : ``None``/``'blosc1'`` (chunks every mrcz reads) or ``'blosc2'``.
    template : a source file (path or :class:`mrcz.carry.Template`) whose header
        fields the data do not decide (origin, start indices, axis order, cell
        angles, space group, labels, extended header, ...) the new file keeps; see
        "Copies and conversions" in the specification.
    shuffle : the blosc filter of compressed frames: ``'bit'`` (default; best for
        counted data), ``'byte'`` (smaller files for gain-corrected float data),
        ``None``, or ``'auto'`` (chosen from the first frame; see
        :func:`mrcz.codec.choose_shuffle`). Every mrcz release reads all of them.
    casting : with ``idx``, how the data may be cast to the existing file's dtype:
        ``'same_value'`` (default) refuses any value the file cannot store
        unchanged (``ValueError``); numpy's ``'no'``, ``'equiv'``, ``'safe'``,
        ``'same_kind'`` judge the dtypes (``TypeError``); ``'unsafe'`` casts as
        numpy's ``astype`` does.
    durable : ``fsync`` the new file and its folder before returning (default),
        so a completed write survives a power cut; ``False`` skips that.
    """
    if wholefile.codec_for_name(MRCfilename):
        if template is not None and not isinstance(template, carry.Template):
            template = template_of(template)
        return wholefile.write(input_image, MRCfilename, meta=meta, endian=endian, dtype=dtype,
                               pixelsize=pixelsize, pixelunits=pixelunits, voltage=voltage,
                               C3=C3, gain=gain, compressor=compressor, clevel=clevel,
                               n_threads=n_threads, quickStats=quickStats, idx=idx,
                               backend=backend, template=template, durable=durable)
    name = describe(MRCfilename)
    check_compressor(compressor, backend, clevel)
    codec.check_shuffle(shuffle)
    check_casting(casting)
    if compressor and backend is None and compressor not in codec.BLOSC1_CODECS:
        warnings.warn(f"{name}: {compressor!r} exists only in blosc2, so this file gets "
                      "blosc2-format chunks that mrcz < 0.6 and blosc 1.x cannot read",
                      stacklevel=2)
        backend = "blosc2"
    n_threads = workers.threads(n_threads)
    source = frame_source(input_image, name)
    if idx is not None and os.path.isfile(MRCfilename):
        if shuffle != "bit":
            raise ValueError(f"{name}: shuffle={shuffle!r} applies to new files; frames "
                             "written at idx= into an existing file are bit-shuffled")
        write_at(source, MRCfilename, int(idx), clevel, backend, n_threads, not quickStats, name,
                 casting)
        return
    if idx not in (None, 0):
        raise IndexError(f"{name}: idx={idx} given but the file does not exist yet")
    if template is not None and not isinstance(template, carry.Template):
        template = template_of(template)
    plan, rec, extended = plan_file(source, dtype, name, meta, endian, pixelsize, pixelunits,
                                    voltage, C3, gain, compressor, clevel, template)
    with atomic_output(MRCfilename, durable=durable) as f:
        write_file(f, source, plan, rec, extended, template, backend, n_threads, quickStats,
                   name, shuffle)


# snake_case aliases
read_mrc = readMRC
write_mrc = writeMRC
read_mrc_header = readMRCHeader
default_header = defaultHeader
set_default_threads = setDefaultThreads


def writeMRCHeader(f: BinaryIO, header: dict, slices: int, endchar: str = "<") -> int:
    """Write a 1024-byte header (and JSON metadata) described by a header dict to ``f``.

    Returns the length of the JSON extended header (0 if there is none).
    """
    name = describe(f)
    dims = tuple(int(n) for n in header["dimensions"])
    dims = (1, *dims) if len(dims) == 2 else dims
    source = FrameSource(dims, np.dtype("u1"), int(slices), None, False)
    stored, mode, widened = stored_dtype(source, header["dtype"],
                                         "le" if endchar == "<" else "be", name)
    meta = header.get("meta")
    meta_bytes = jsonmeta.encode(meta) if isinstance(meta, dict) else b""
    pixelsize = pixelsize_angstrom(header.get("pixelsize", 1.0),
                                    header.get("pixelunits", ANGSTROM))
    rec = build_header(source, mode, stored, widened, header.get("compressor"),
                       int(header.get("clevel", 1)), pixelsize,
                       float(header.get("voltage", 0.0)), float(header.get("C3", 0.0)),
                       float(header.get("gain", 1.0)), meta_bytes)
    rec["dmin"] = header.get("minImage", 0.0)
    rec["dmax"] = header.get("maxImage", -1.0)
    rec["dmean"] = header.get("meanImage", -2.0)
    rec["rms"] = -1.0
    rec["packed_bytes"] = int(header.get("packedBytes", 0))
    f.seek(0)
    f.write(rec.tobytes())
    f.write(meta_bytes)
    return len(meta_bytes)


write_mrc_header = writeMRCHeader
