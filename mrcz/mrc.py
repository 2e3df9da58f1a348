"""readMRC / writeMRC: plain MRC2014 and blosc-compressed MRCZ files."""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, BinaryIO

import numpy as np

from . import carry, codec, frameindex, header as hdr, meta as jsonmeta
from .casting import check_casting
from .decode import to_native, unpack_uint4
from .fileops import atomic_output
from .errors import CorruptDataError, FormatError, MRCZError, UnsupportedError, describe
from .framespans import index_frames
from .frames import WRITABLE_MODES, FrameSource, frame_source
from .lazy import LazyFrames
from .stats import Stats
from .version import __version__
from .workers import CORES, ordered_map

ANGSTROM = "\\AA"
#: How many of each unit make one Angstrom.
UNITS_PER_ANGSTROM = {"\\AA": 1.0, "A": 1.0, "Å": 1.0, "nm": 0.1, "\\mum": 1e-4, "um": 1e-4,
                      "µm": 1e-4, "pm": 100.0}
DEFAULT_N_THREADS = CORES


def setDefaultThreads(n_threads: int) -> None:
    """Set how many frames readMRC/writeMRC process in parallel when n_threads is None."""
    global DEFAULT_N_THREADS
    if int(n_threads) < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}")
    DEFAULT_N_THREADS = int(n_threads)


def units_per_angstrom(pixelunits: str) -> float:
    """Conversion factor from Angstrom to ``pixelunits``."""
    try:
        return UNITS_PER_ANGSTROM[pixelunits]
    except KeyError:
        raise ValueError(f"unknown pixelunits {pixelunits!r}; use one of "
                         f"{sorted(UNITS_PER_ANGSTROM)}") from None


def defaultHeader() -> dict:
    """A header dict with every field readMRC returns, at default values."""
    return {
        "fileConvention": "ccpem", "endian": "le", "MRCtype": 0,
        "dimensions": np.array([0, 0, 0], dtype=int), "dtype": "u1",
        "compressor": None, "backend": None, "packedBytes": 0, "clevel": 1,
        "maxImage": 1.0, "minImage": 0.0, "meanImage": 0.0,
        "pixelsize": 0.1, "pixelunits": "nm", "voltage": 300.0, "C3": 2.7, "gain": 1.0,
        "n_threads": DEFAULT_N_THREADS,
    }


# ----------------------------------------------------------------------------- reading

def open_for_read(path: Any, memmap: bool = False) -> BinaryIO:
    """Open ``path`` for reading: the file, or a forward-only decompressing stream when
    its content is gzip, bzip2 or zstd (``memmap=True`` refuses those)."""
    from . import wholefile  # wholefile imports this module

    return wholefile.open_for_read(path, memmap)


def _file_size(f: BinaryIO) -> int | None:
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


def read_header_and_meta(f: BinaryIO, name: str, convention: str = "ccpem",
                         permissive: bool = False) -> tuple[hdr.HeaderInfo, dict]:
    """Parse the header and the JSON extended header (if any) of an open file."""
    info = hdr.parse_header(f.read(hdr.HEADER_BYTES), name, convention)
    size = _file_size(f)
    if size is not None and info.data_offset > size:
        raise CorruptDataError(f"{name}: extended header of {info.extended_bytes} bytes runs "
                               f"past the end of the {size}-byte file")
    meta: dict = {}
    if info.extended_bytes and info.record["exttyp"] == b"json":
        raw = f.read(min(info.extended_bytes, jsonmeta.MAX_META_BYTES + 1))
        try:
            meta = jsonmeta.decode(raw, name)
        except FormatError as err:
            if not permissive:
                raise
            warnings.warn(f"{err}; metadata skipped", stacklevel=3)
    return info, meta


class HeaderDict(dict):
    """The header dict readMRC returns: mrcz 0.6.0's items, plus fields on lookup.

    Its stored items are the keys the original returns for the same file (and the
    JSON metadata keys), so code that copies or compares every item, as
    rosettasciio does, sees what it saw with the original. The one addition is
    ``metaId`` (the exttyp bytes) on files without an extended header, where the
    original leaves it out and rosettasciio's reader then fails. Fields the original
    does not store (``endian``, ``fileConvention``, ``rmsImage``, ``clevel``,
    ``bloscFormat``, ``backend``) are answered by ``header[key]`` and
    ``header.get(key)`` without being listed in ``keys()`` or ``copy()``.
    """

    def __init__(self, items: dict, extra: dict) -> None:
        super().__init__(items)
        self.extra = extra

    def __missing__(self, key: str) -> Any:
        try:
            return self.extra[key]
        except KeyError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return self.extra.get(key, default)

    def __reduce__(self):
        return HeaderDict, (dict(self), self.extra)


def header_dict(info: hdr.HeaderInfo, meta: dict, pixelunits: str = ANGSTROM,
                convention: str = "ccpem", first_chunk_version: int | None = None) -> HeaderDict:
    """The header dict readMRC returns: the original's keys plus every JSON key."""
    rec = info.record
    dmin, dmax, dmean, rms = (float(rec[k]) for k in ("dmin", "dmax", "dmean", "rms"))
    dtype = np.dtype("u1") if info.widened_uint8 else info.dtype
    items: dict = {
        "dimensions": np.array(info.shape),
        "MRCtype": info.mode,
        "compressor": info.compressor,
        "dtype": "complex64" if dtype.names else dtype.str,
        "pixelsize": info.voxel_size() * units_per_angstrom(pixelunits),
        "pixelunits": pixelunits,
        "minImage": dmin, "maxImage": dmax, "meanImage": dmean,
        "extendedBytes": info.extended_bytes,
        # 0.6.0 stores this only with an extended header; rosettasciio pops it unconditionally.
        "metaId": bytes(rec["exttyp"]),
    }
    items.update({"voltage": float(rec["voltage"]), "C3": float(rec["C3"]),
                  "gain": float(rec["gain"]), "packedBytes": int(rec["packed_bytes"])})
    extra: dict = {
        "fileConvention": convention,
        "endian": "le" if info.byteorder == "<" else "be",
        "rmsImage": rms,
        "backend": None,
    }
    if info.clevel is not None:
        extra["clevel"] = info.clevel
    if info.compressor is not None and first_chunk_version is not None:
        extra["bloscFormat"] = 1 if first_chunk_version <= 2 else 2
        extra["backend"] = f"blosc{extra['bloscFormat']}"
    for key, value in meta.items():
        items.setdefault(key, value)
    return HeaderDict(items, extra)


def _frame_range(idx: Any, nz: int, name: str) -> tuple[int, int] | None:
    """``(first, count)`` of the z-slices ``idx`` asks for (``(first, last)`` is inclusive)."""
    if idx is None:
        return None
    if np.isscalar(idx):
        first = last = int(idx)
    else:
        try:
            first, last = (int(i) for i in idx)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: idx must be an int or a (first, last) pair, "
                             f"got {idx!r}") from None
    count = last - first + 1
    if first < 0:
        first += nz
    if first < 0 or first >= nz or count < 1 or first + count > nz:
        raise IndexError(f"{name}: slice range {idx!r} is outside the file's {nz} slices")
    return first, count


def _resolve_slices(info: hdr.HeaderInfo, meta: dict, slices: int | None, name: str) -> int:
    if slices is None:
        if info.mz_is_slices:
            slices = int(info.record["mz"])
        elif not info.legacy_mrcz and isinstance(meta.get("slices"), int):
            slices = meta["slices"]
        elif info.written_as_image_stack:
            slices = 1  # a list of 2-D frames written by this package into a plain file
        else:
            slices = 0
    slices = int(slices)
    if slices < 0 or (slices and info.shape[0] % slices):
        raise FormatError(f"{name}: {info.shape[0]} slices cannot be grouped into frames of "
                          f"{slices} slices")
    return slices


def _index_compressed(f: BinaryIO, info: hdr.HeaderInfo, first: int, count: int,
                      name: str, partial: bool = False, verify: bool = True
                      ) -> tuple[int, list[tuple[int, int]], list[int] | None]:
    """``(fd, chunks, crcs)`` of z-slices ``first .. first+count-1``, checked against the
    file (``crcs`` None: no frame index to verify against).

    Runs before the output is allocated, so a header that lies about the
    dimensions fails here instead of in a giant allocation.
    """
    try:
        fd = f.fileno()
    except (AttributeError, OSError):
        raise UnsupportedError(f"{name}: compressed MRCZ can only be read from a regular "
                               "file, not from a stream") from None
    nz, ny, nx = info.shape
    frame_nbytes = ny * nx * info.dtype.itemsize
    table = codec.chunk_table(fd, info.data_offset, nz, os.fstat(fd).st_size, frame_nbytes,
                              name, first + count, partial, verify)
    if table.note:
        warnings.warn(table.note, stacklevel=3)
    crcs = None if table.crcs is None else table.crcs[first:first + count]
    return fd, table.chunks[first:first + count], crcs


def _whole_frames(kept: int, wanted: int, slices: int, name: str) -> int:
    """Salvaged slices cut to whole frames; warn when short, raise when none is left."""
    if slices > 1:
        kept -= kept % slices
    if not kept:
        raise CorruptDataError(f"{name}: no complete frame is left in the damaged file")
    if kept < wanted:
        warnings.warn(f"{name}: damaged file; recovered {kept} of {wanted} slices",
                      stacklevel=3)
    return kept


def _salvageable_plain(f: BinaryIO, info: hdr.HeaderInfo, first: int, count: int,
                       slices: int, name: str) -> int:
    """How many of the asked-for slices a (possibly truncated) plain file holds whole."""
    size = _file_size(f)
    if size is None:
        return count
    slice_bytes = hdr.stored_nbytes(info) // info.shape[0]
    whole = max(0, (size - info.data_offset) // slice_bytes - first)
    return _whole_frames(min(count, whole), count, slices, name)


def _salvage_compressed(fd: int, chunks: list, crcs: list[int] | None, first: int,
                        out: np.ndarray, n_threads: int, name: str) -> tuple[int, list[int]]:
    """Decode ``chunks`` into ``out``; return how many decoded before the first bad one,
    and the z-slices of every chunk that fails its checksum."""
    damaged = [] if crcs is None else [
        first + index for index, (chunk, crc) in enumerate(zip(chunks, crcs))
        if frameindex.checksum(os.pread(fd, chunk[1], chunk[0])) != crc]
    if not chunks:
        return 0, damaged
    try:
        _read_compressed(fd, chunks, crcs, first, out, n_threads, name)
        return len(chunks), damaged
    except CorruptDataError:
        for index, chunk in enumerate(chunks):
            try:
                codec.read_chunk_into(fd, chunk, first + index, out[index], name,
                                      crc=None if crcs is None else crcs[index])
            except CorruptDataError:
                return index, damaged
    return len(chunks), damaged


def _read_compressed(fd: int, chunks: list[tuple[int, int]], crcs: list[int] | None,
                     first: int, out: np.ndarray, n_threads: int, name: str) -> None:
    """Decompress the indexed ``chunks`` into ``out`` (count, ny, nx), each checked against
    its CRC-32C in ``crcs`` first (None: unchecked)."""
    count = len(chunks)

    def decompress(index: int) -> None:
        codec.read_chunk_into(fd, chunks[index], first + index, out[index], name, blosc_threads,
                              None if crcs is None else crcs[index])

    frames_at_once, blosc_threads = codec.read_plan(chunks, n_threads)
    for _ in ordered_map(decompress, range(count), frames_at_once):
        pass


def _read_plain(f: BinaryIO, info: hdr.HeaderInfo, first: int, count: int,
                out: np.ndarray, name: str) -> None:
    """Read z-slices of a plain data block straight into ``out``."""
    slice_bytes = out[0].nbytes
    f.seek(info.data_offset + first * slice_bytes)
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if got != len(view):
        raise CorruptDataError(f"{name}: data block holds {got} of the {len(view)} bytes the "
                               "header describes (truncated file)")


def _check_plain_size(f: BinaryIO, info: hdr.HeaderInfo, name: str) -> None:
    size = _file_size(f)
    need = info.data_offset + hdr.stored_nbytes(info)
    if size is not None and size < need:
        raise CorruptDataError(f"{name}: file is {size} bytes but its header describes "
                               f"{need} (dimensions {info.shape}, mode {info.mode}; truncated "
                               "or not an MRC file)")


def _allocate(shape: tuple[int, ...], dtype: np.dtype, name: str) -> np.ndarray:
    """``np.empty`` that reports a header asking for more memory than there is."""
    try:
        return np.empty(shape, dtype=dtype)
    except MemoryError:
        nbytes = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
        raise FormatError(f"{name}: the header describes {nbytes} bytes of data "
                          f"(shape {shape}, {dtype}), more than can be allocated; corrupt "
                          "header?") from None


def _arrange(data: np.ndarray, info: hdr.HeaderInfo, slices: int,
             whole_file: bool) -> np.ndarray | list[np.ndarray]:
    """Shape the slices as the caller expects: array, volume stack or list of frames."""
    if isinstance(data, LazyFrames):
        return _arrange_lazy(data, slices)
    if slices == 1:
        return list(data)
    if slices > 1:
        return [data[i:i + slices] for i in range(0, data.shape[0], slices)]
    mz = int(info.record["mz"])
    if (whole_file and 400 < int(info.record["ispg"]) < 631 and not info.mz_is_slices
            and not info.legacy_mrcz and 0 < mz < data.shape[0] and data.shape[0] % mz == 0):
        return data.reshape(data.shape[0] // mz, mz, *data.shape[1:])
    return data[0] if data.shape[0] == 1 else data


def _arrange_lazy(data: LazyFrames, slices: int) -> LazyFrames | list[LazyFrames]:
    """As :func:`_arrange`, with lazy views for the frames (nothing is read)."""
    if slices == 1:
        return [data.frame(k) for k in range(len(data))]
    if slices > 1:
        return [data.frames(k, slices) for k in range(0, len(data), slices)]
    return data.frame(0) if len(data) == 1 else data


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
    name = describe(MRCfilename)
    convention = fileConvention.lower()
    n_threads = DEFAULT_N_THREADS if n_threads is None else max(1, int(n_threads))
    if out is not None and useMemmap:
        raise ValueError(f"{name}: out= and useMemmap=True exclude each other")
    with open_for_read(MRCfilename, memmap=useMemmap) as f:
        info, meta = read_header_and_meta(f, name, convention, permissive)
        slices = _resolve_slices(info, meta, slices, name)
        nz, ny, nx = info.shape
        selected = _frame_range(idx, nz, name)
        first, count = selected if selected else (0, nz)
        if out is not None:
            _check_out(out, (count, ny, nx), info, name)
        if info.compressor is None and permissive:
            count = _salvageable_plain(f, info, first, count, slices, name)
        elif info.compressor is None:
            _check_plain_size(f, info, name)
        chunk_version, damaged = None, []
        if useMemmap and info.compressor is None and info.mode != hdr.MODE_UINT4:
            data = np.memmap(MRCfilename, dtype=info.dtype, mode="c",
                             offset=info.data_offset + first * ny * nx * info.dtype.itemsize,
                             shape=(count, ny, nx))
        elif info.compressor is not None and useMemmap and not permissive:
            data = LazyFrames(index_frames(MRCfilename, convention).select(first, count))
            chunk_version = _first_chunk_version(f, info)
        elif info.compressor is not None:
            if info.mode == hdr.MODE_UINT4:
                raise UnsupportedError(f"{name}: compressed uint4 (mode 101) is not defined")
            fd, chunks, crcs = _index_compressed(f, info, first, count, name, permissive,
                                                 verify)
            crcs = crcs if verify else None
            data = _decode_target(out, (len(chunks), ny, nx), info, name)
            if permissive:
                kept, damaged = _salvage_compressed(fd, chunks, crcs, first, data, n_threads,
                                                    name)
                count = _whole_frames(kept, count, slices, name)
                data = data[:count]
            else:
                _read_compressed(fd, chunks, crcs, first, data, n_threads, name)
            chunk_version = _first_chunk_version(f, info)
        elif info.mode == hdr.MODE_UINT4:
            packed = _allocate((count, ny, (nx + 1) // 2), np.dtype(np.uint8), name)
            _read_plain(f, info, first, count, packed, name)
            data = unpack_uint4(packed, nx)
        else:
            data = _decode_target(out, (count, ny, nx), info, name)
            _read_plain(f, info, first, count, data, name)
    if not isinstance(data, (np.memmap, LazyFrames)):
        data = to_native(data, info.widened_uint8)
    if out is not None and not np.shares_memory(data, out):
        target = out.reshape(-1, ny, nx)[:data.shape[0]]
        target[...] = data.reshape(target.shape)
        data = target
    header = header_dict(info, meta, pixelunits, convention, chunk_version)
    if damaged:
        header.extra["damagedSlices"] = damaged
    if selected or count != nz:
        header["dimensions"][0] = count
    return _arrange(data, info, slices, selected is None), header


def _native_dtype(info: hdr.HeaderInfo) -> np.dtype:
    """The dtype readMRC returns for the file described by ``info``."""
    if info.dtype.names:
        return np.dtype(np.complex64)
    if info.widened_uint8:
        return np.dtype(np.uint8)
    return info.dtype.newbyteorder("=")


def _check_out(out: np.ndarray, shape: tuple[int, int, int], info: hdr.HeaderInfo,
               name: str) -> None:
    """Raise unless ``out`` can hold the slices of ``shape`` as readMRC returns them."""
    want = _native_dtype(info)
    if not isinstance(out, np.ndarray) or out.dtype != want or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"{name}: out= must be a writeable C-contiguous {want} array, got "
                         f"{type(out).__name__} {getattr(out, 'dtype', '')}")
    if out.shape not in (shape, shape[1:] if shape[0] == 1 else shape):
        raise ValueError(f"{name}: out= has shape {out.shape}; the slices read need "
                         f"{shape}")


def _decode_target(out: np.ndarray | None, shape: tuple[int, int, int],
                   info: hdr.HeaderInfo, name: str) -> np.ndarray:
    """Where the stored values are read to: ``out`` itself when it holds them as stored."""
    if out is not None and out.dtype == info.dtype and info.mode != hdr.MODE_UINT4 \
            and not info.widened_uint8:
        return out.reshape(-1, *shape[1:])[:shape[0]]
    return _allocate(shape, info.dtype, name)


def _first_chunk_version(f: BinaryIO, info: hdr.HeaderInfo) -> int:
    return os.pread(f.fileno(), 1, info.data_offset)[0]


def readMRCHeader(MRCfilename: str | os.PathLike, slices: int | None = None,
                  endian: str = "le", fileConvention: str = "ccpem",
                  pixelunits: str = ANGSTROM) -> tuple[dict, int]:
    """Read only the header (and JSON metadata); returns ``(header, slices)``."""
    name = describe(MRCfilename)
    convention = fileConvention.lower()
    with open_for_read(MRCfilename) as f:
        info, meta = read_header_and_meta(f, name, convention)
        version = _first_chunk_version(f, info) if info.compressor else None
    return (header_dict(info, meta, pixelunits, convention, version),
            _resolve_slices(info, meta, slices, name))


# ----------------------------------------------------------------------------- writing

def _pixelsize_angstrom(pixelsize: Any, pixelunits: str) -> np.ndarray:
    """``[z, y, x]`` voxel size in Angstrom from 1, 2 or 3 values in ``pixelunits``."""
    values = np.atleast_1d(np.asarray(pixelsize, dtype=np.float64)).ravel()
    if values.size not in (1, 2, 3):
        raise ValueError(f"pixelsize must have 1, 2 or 3 elements, got {values.size}")
    angstrom = np.broadcast_to(values, (3,)) if values.size != 2 else values
    angstrom = angstrom / units_per_angstrom(pixelunits)
    if values.size == 2:  # [y, x]: z is 10 Angstrom, as the original package writes it
        angstrom = np.array([10.0, *angstrom])
    return angstrom


#: Header dict keys readMRC fills from the header: a JSON key of the same name would be
#: hidden on read. voltage, C3, gain and pixelsize have keywords; their clashes are
#: reported by _report_meta_clashes instead.
HEADER_FIELD_KEYS = frozenset({
    "dimensions", "MRCtype", "compressor", "dtype", "pixelunits", "minImage", "maxImage",
    "meanImage", "extendedBytes", "metaId", "packedBytes", "fileConvention", "endian",
    "rmsImage", "backend", "clevel", "bloscFormat"})


def _check_meta_round_trip(meta: dict | None, source: FrameSource, compressor: str | None,
                           name: str) -> None:
    """Refuse metadata that readMRC would not give back as written."""
    if not meta:
        return
    hidden = sorted(str(k) for k in meta if k in HEADER_FIELD_KEYS)
    if hidden:
        raise ValueError(f"{name}: meta keys {hidden} are header fields; readMRC would "
                         f"return the header's values instead: rename them")
    slices = meta.get("slices")
    if not compressor and isinstance(slices, int) and slices != source.slices:
        raise ValueError(f"{name}: meta['slices'] = {slices!r} would regroup the frames on "
                         f"read (plain files record their frame grouping there); this "
                         f"image has slices={source.slices}: drop or rename the key")


def _report_meta_clashes(meta: dict | None, given: dict, name: str) -> None:
    """Warn where ``meta`` holds a header key with a different value than the keyword."""
    if not meta:
        return
    for key, value in given.items():
        if key in meta and not np.array_equal(np.asarray(meta[key], dtype=object),
                                              np.asarray(value, dtype=object)):
            warnings.warn(f"{name}: meta[{key!r}] = {meta[key]!r} is ignored; the {key}= "
                          f"keyword ({value!r}) is what the header records", stacklevel=3)


def _stored_dtype(source: FrameSource, dtype: Any, endian: str,
                  name: str) -> tuple[np.dtype, int, bool]:
    """``(dtype on disk, mode, uint8 widened)`` for the data about to be written."""
    target = source.dtype if dtype is None else dtype
    if isinstance(target, str) and target.lower().strip("<>|=") == "uint4":
        return np.dtype(np.uint8), hdr.MODE_UINT4, False
    try:
        target = np.dtype(target).newbyteorder("=")
    except TypeError:
        raise TypeError(f"{name}: unsupported dtype {dtype!r} for MRC") from None
    target = {np.dtype("float64"): np.dtype("float32"),
              np.dtype("complex128"): np.dtype("complex64")}.get(target, target)
    if target not in WRITABLE_MODES:
        raise TypeError(f"{name}: unsupported dtype {target} for MRC; supported: "
                        f"{sorted(str(d) for d in WRITABLE_MODES)}")
    widened = target == np.dtype(np.uint8)
    stored = np.dtype(np.uint16) if widened else target
    order = "<" if endian == "le" else ">"
    if endian not in ("le", "be"):
        raise ValueError(f"endian must be 'le' or 'be', got {endian!r}")
    return stored.newbyteorder(order), WRITABLE_MODES[target], widened


def _pack_uint4(frame: np.ndarray, name: str) -> np.ndarray:
    if frame.size and (frame.min() < 0 or frame.max() > 15):
        raise MRCZError(f"{name}: uint4 holds 0..15 only; data range is "
                        f"{frame.min()}..{frame.max()}")
    values = frame.astype(np.uint8)
    if values.shape[-1] % 2:
        values = np.pad(values, ((0, 0), (0, 1)))
    return values[:, 0::2] | (values[:, 1::2] << 4)


def _build_header(source: FrameSource, mode: int, stored: np.dtype, widened: bool,
                  compressor: str | None, clevel: int, pixelsize: np.ndarray,
                  voltage: float, C3: float, gain: float, meta_bytes: bytes) -> np.ndarray:
    nz, ny, nx = source.shape
    rec = hdr.new_header("<" if stored.byteorder in "<=|" else ">")
    rec["nx"], rec["ny"], rec["nz"] = nx, ny, nz
    code = hdr.REVERSE_COMPRESSOR_ENUM[compressor] if compressor else 0
    rec["mode"] = mode + hdr.MRC_COMP_RATIO * code
    rec["mx"], rec["my"] = nx, ny
    rec["ispg"] = 1 if (source.slices == 0 and nz > 1) else 0
    rec["cella"] = (pixelsize * [nz, ny, nx])[::-1]
    if compressor:
        rec["mz"] = source.slices
        rec["mrcz_clevel"] = clevel + 1
    else:
        # mz = nz keeps the z voxel size right both in MRC2014 readers (cella / m) and
        # in mrcz 0.5-0.6 (cella / n); a list of 2-D frames is an image stack (ispg 0)
        # and reads back as a list. uint4 keeps mz = 0, which mrcz 0.6 needs to unpack.
        rec["mz"] = 0 if mode == hdr.MODE_UINT4 else nz
    rec["mrcz_dtype"] = hdr.DTYPE_UINT8_WIDENED if widened else 0
    rec["voltage"], rec["C3"], rec["gain"] = voltage, C3, gain
    rec["nlabl"] = 1
    rec["label"][0] = f"MRCZ{__version__}".encode("ascii")
    if meta_bytes:
        rec["nsymbt"] = len(meta_bytes)
        rec["exttyp"] = b"json"
    return rec


def stats_wanted(quickStats: bool, compressor: str | None) -> bool | None:
    """Which statistics a write gathers: True all, False all but the RMS, None none.

    ``quickStats`` never costs a pass over the data for statistics alone: plain
    writes then record them as not known; compressed writes gather min/max/mean
    while compressing, where they cost little next to the codec.
    """
    if not quickStats:
        return True
    return False if compressor else None


@dataclasses.dataclass(frozen=True)
class WritePlan:
    """What a write decides before any data: stored dtype, mode, JSON and header fields."""

    stored: np.dtype
    mode: int
    widened: bool
    meta_bytes: bytes
    compressor: str | None
    clevel: int
    pixelsize: np.ndarray  # [z, y, x] in Angstrom
    voltage: float
    C3: float
    gain: float

    def header(self, source: FrameSource) -> np.ndarray:
        """The header record for ``source`` written this way (statistics unset)."""
        return _build_header(source, self.mode, self.stored, self.widened, self.compressor,
                             self.clevel, self.pixelsize, self.voltage, self.C3, self.gain,
                             self.meta_bytes)


def plan_write(source: FrameSource, dtype: Any, name: str, meta: dict | None, endian: str,
               pixelsize: Any, pixelunits: str, voltage: float, C3: float, gain: float,
               compressor: str | None, clevel: int) -> WritePlan:
    """Check writeMRC's arguments against ``source`` and decide how it is stored."""
    stored, mode, widened = _stored_dtype(source, dtype, endian, name)
    if mode == hdr.MODE_UINT4 and (compressor or source.slices):
        raise TypeError(f"{name}: uint4 packing works only for plain, monolithic arrays")
    pixelsize_aa = _pixelsize_angstrom(pixelsize, pixelunits)
    _report_meta_clashes(meta, {"voltage": voltage, "C3": C3, "gain": gain,
                                "pixelsize": pixelsize}, name)
    _check_meta_round_trip(meta, source, compressor, name)
    meta_out = dict(meta) if meta is not None else None
    if not compressor and (source.slices > 1 or (source.slices == 1 and source.shape[0] == 1)):
        # A list of 2-D frames is an image stack (ispg 0), which reads back as a list;
        # a list of one frame, or of 3-D frames, needs its grouping in the JSON.
        meta_out = {**(meta_out or {}), "slices": source.slices}
    meta_bytes = jsonmeta.encode(meta_out, name) if meta_out is not None else b""
    return WritePlan(stored, mode, widened, meta_bytes, compressor, clevel, pixelsize_aa,
                     float(voltage or 0.0), float(C3 or 0.0), float(gain or 1.0))


def _set_stats(rec: np.ndarray, stats: Stats) -> None:
    rec["dmin"], rec["dmax"], rec["dmean"], rec["rms"] = stats.header_values()


def _stored_slice(frame: np.ndarray, stored: np.dtype, mode: int, name: str) -> np.ndarray:
    """A z-slice as the contiguous bytes that go on disk."""
    if mode == hdr.MODE_UINT4:
        return _pack_uint4(frame, name)
    if frame.dtype != stored:
        frame = frame.astype(stored)
    return np.ascontiguousarray(frame)


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
    from . import wholefile  # names ending .gz/.bz2/.zst: whole-file compressed plain MRC

    if wholefile.codec_for_name(MRCfilename):
        return wholefile.write(input_image, MRCfilename, meta=meta, endian=endian, dtype=dtype,
                               pixelsize=pixelsize, pixelunits=pixelunits, voltage=voltage,
                               C3=C3, gain=gain, compressor=compressor, clevel=clevel,
                               n_threads=n_threads, quickStats=quickStats, idx=idx,
                               backend=backend, template=template, durable=durable)
    name = describe(MRCfilename)
    _check_compressor(compressor, backend, clevel)
    codec.check_shuffle(shuffle)
    check_casting(casting)
    if compressor and backend is None and compressor not in codec.BLOSC1_CODECS:
        warnings.warn(f"{name}: {compressor!r} exists only in blosc2, so this file gets "
                      "blosc2-format chunks that mrcz < 0.6 and blosc 1.x cannot read",
                      stacklevel=2)
        backend = "blosc2"
    n_threads = DEFAULT_N_THREADS if n_threads is None else max(1, int(n_threads))
    source = frame_source(input_image, name)
    if idx is not None and os.path.isfile(MRCfilename):
        if shuffle != "bit":
            raise ValueError(f"{name}: shuffle={shuffle!r} applies to new files; frames "
                             "written at idx= into an existing file are bit-shuffled")
        from .append import write_at  # only needed for in-place writes
        write_at(source, MRCfilename, int(idx), clevel, backend, n_threads, not quickStats, name,
                 casting)
        return
    if idx not in (None, 0):
        raise IndexError(f"{name}: idx={idx} given but the file does not exist yet")
    if template is not None and not isinstance(template, carry.Template):
        template = carry.of_file(template, open_for_read)
    if template is not None:
        meta = carry.output_meta(template, meta, bool(compressor))
    plan = plan_write(source, dtype, name, meta, endian, pixelsize, pixelunits, voltage, C3,
                      gain, compressor, clevel)
    rec = plan.header(source)
    extended = plan.meta_bytes
    if template is not None:
        extended = carry_onto(template, rec, extended, bool(compressor), meta, name)
    with atomic_output(MRCfilename, durable=durable) as f:
        f.write(rec.tobytes())
        f.write(extended)
        wanted = stats_wanted(quickStats, compressor)
        if compressor:
            stats, packed = _write_compressed(f, source, plan.stored, compressor, clevel,
                                              backend, n_threads, wanted, name, shuffle)
            rec["packed_bytes"] = packed
        else:
            stats = _write_plain(f, source, plan.stored, plan.mode, n_threads, wanted, name)
        _set_stats(rec, stats)
        if template is not None:
            carry.statistics_onto(template, rec)
        f.seek(0)
        f.write(rec.tobytes())


def carry_onto(template: carry.Template, rec: np.ndarray, extended: bytes, compressed: bool,
               meta: dict | None, name: str) -> bytes:
    """Put what ``template`` keeps onto the new header ``rec``; returns the extended
    header to write: the JSON of ``meta``, or in a plain file the source's own."""
    carry.onto(template, rec, compressed)
    if compressed:
        return extended
    try:
        kept = carry.plain_extended(template, meta)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if kept is None:
        return extended
    rec["nsymbt"], rec["exttyp"] = len(kept[1]), kept[0]
    return kept[1]


def _check_compressor(compressor: str | None, backend: str | None, clevel: int) -> None:
    if backend not in (None, "blosc1", "blosc2"):
        raise ValueError(f"backend must be None, 'blosc1' or 'blosc2', got {backend!r}")
    if compressor is None:
        return
    if compressor not in hdr.REVERSE_COMPRESSOR_ENUM:
        raise ValueError(f"Unknown compressor {compressor!r}, expected one of "
                         f"{sorted(n for n in hdr.REVERSE_COMPRESSOR_ENUM if n)}")
    if backend == "blosc1" and compressor not in codec.BLOSC1_CODECS:
        raise ValueError(f"compressor {compressor!r} needs backend='blosc2'; blosc offers "
                         f"{sorted(codec.BLOSC1_CODECS)}")
    if not 0 <= int(clevel) <= 9:
        raise ValueError(f"clevel must be 0..9, got {clevel}")


def _write_plain(f: BinaryIO, source: FrameSource, stored: np.dtype, mode: int,
                 n_threads: int, with_rms: bool | None, name: str) -> Stats:
    from .stream import FrameAppender  # stream imports this module

    appender = FrameAppender(f, stored, mode, None, 0, None, with_rms, n_threads, name)
    appender.put_source(source)
    return appender.stats


def _write_compressed(f: BinaryIO, source: FrameSource, stored: np.dtype, compressor: str,
                      clevel: int, backend: str | None, n_threads: int, with_rms: bool,
                      name: str, shuffle: str | None = "bit") -> tuple[Stats, int]:
    from .stream import FrameAppender  # stream imports this module

    appender = FrameAppender(f, stored, 0, compressor, clevel, backend, with_rms, n_threads,
                             name, shuffle=shuffle)
    appender.put_source(source)
    return appender.stats, appender.data_bytes


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
    stored, mode, widened = _stored_dtype(source, header["dtype"],
                                          "le" if endchar == "<" else "be", name)
    meta = header.get("meta")
    meta_bytes = jsonmeta.encode(meta) if isinstance(meta, dict) else b""
    pixelsize = _pixelsize_angstrom(header.get("pixelsize", 1.0),
                                    header.get("pixelunits", ANGSTROM))
    rec = _build_header(source, mode, stored, widened, header.get("compressor"),
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
