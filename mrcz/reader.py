"""The read side: one open MRC/MRCZ file (:class:`MRCSource`) and what is read from it.

Every reader (``readMRC``, ``readMRCHeader``, the file object,
:class:`~mrcz.stream.MRCZReader`, ``validate``, ``upgrade``, ``batch``, ``to_dask``
and the command line) works on an :class:`MRCSource`: the file is opened once, its
header, JSON metadata and extended header parsed once, and the chunk table of
a compressed data block found once, on first use.
"""
from __future__ import annotations

import functools
import io
import os
import warnings
from typing import Any, BinaryIO

import numpy as np

from . import carry, codec, frameindex, header as hdr, meta as jsonmeta, wholefile
from .decode import to_native, unpack_uint4
from .errors import CorruptDataError, FormatError, UnsupportedError, describe
from .framespans import index_open_file
from .lazy import LazyFrames
from .units import ANGSTROM, units_per_angstrom
from .workers import ordered_map, threads

__all__ = ["MRCSource", "read_image", "template_of", "HeaderDict", "header_dict", "frame_range",
           "native_dtype"]


class MRCSource:
    """One MRC or MRCZ file open for reading, its header parsed once.

    Parameters
    ----------
    f : the open file: a regular file, or a forward-only decompressing stream
        (:func:`mrcz.wholefile.wrap`); closed by :meth:`close`.
    name : what messages call the file.
    path : its path, where a memory map or a lazy index needs one.
    convention : ``'ccpem'`` (MRC2014) or ``'eman2'`` mode numbers.
    permissive : undecodable JSON metadata is skipped with a warning.

    Attributes
    ----------
    info : the parsed header (:class:`mrcz.header.HeaderInfo`).
    meta : the JSON metadata (``{}`` without).
    size : the file's size in bytes (None for a stream).
    fd : the file descriptor of a regular file, None for a stream.
    """

    def __init__(self, f: BinaryIO, name: str, path: str | os.PathLike | None = None,
                 convention: str = "ccpem", permissive: bool = False) -> None:
        self.file, self.name, self.convention = f, name, convention.lower()
        self.path = None if path is None else os.path.abspath(os.fspath(path))
        self.info = info = hdr.parse_header(f.read(hdr.HEADER_BYTES), name, self.convention)
        self.size = file_size(f)
        self.fd = f.fileno() if isinstance(f, (io.BufferedReader, io.BufferedRandom,
                                               io.FileIO)) else None
        if self.size is not None and info.data_offset > self.size:
            raise CorruptDataError(f"{name}: extended header of {info.extended_bytes} bytes "
                                   f"runs past the end of the {self.size}-byte file")
        self.meta: dict = {}
        self._extended: bytes | None = None
        json_meta = info.extended_bytes and info.record["exttyp"] == b"json"
        if json_meta or self.fd is None:  # a stream passes its extended header only once
            self._extended = f.read(min(info.extended_bytes, jsonmeta.MAX_META_BYTES + 1))
        if json_meta:
            try:
                self.meta = jsonmeta.decode(self._extended, name)
            except FormatError as err:
                if not permissive:
                    raise
                warnings.warn(f"{err}; metadata skipped", stacklevel=3)
        self._tables: dict[bool, codec.ChunkTable] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, convention: str = "ccpem", permissive: bool = False,
             memmap: bool = False) -> MRCSource:
        """Open ``path`` (gzip, bzip2 and zstd recognised by content; ``memmap`` refuses them)."""
        return cls.wrap(open(path, "rb"), path, convention, permissive, memmap)

    @classmethod
    def wrap(cls, raw: BinaryIO, path: str | os.PathLike, convention: str = "ccpem",
             permissive: bool = False, memmap: bool = False, refuse_mrcz: bool = True
             ) -> MRCSource:
        """The source read from ``raw``, the file ``path`` open at its start (closed on error).

        ``refuse_mrcz=False`` also accepts compressed MRCZ inside a gzip, bzip2 or zstd
        stream, for a caller that copies it to a regular file (its chunks cannot be
        read from the stream).
        """
        name = describe(path)
        f = wholefile.wrap(raw, name, memmap, refuse_mrcz)
        try:
            return cls(f, name, path, convention, permissive)
        except BaseException:
            f.close()
            raise

    @property
    def extended(self) -> bytes:
        """The extended header's bytes (at most :data:`mrcz.meta.MAX_META_BYTES` + 1)."""
        if self._extended is None:
            count = min(self.info.extended_bytes, jsonmeta.MAX_META_BYTES + 1)
            self._extended = os.pread(self.fd, count, hdr.HEADER_BYTES)
        return self._extended

    def extended_head(self, count: int) -> bytes:
        """At most ``count`` bytes of the extended header, from its start (no more is read)."""
        if self._extended is not None:
            return self._extended[:count]
        return os.pread(self.fd, min(count, self.info.extended_bytes), hdr.HEADER_BYTES)

    @property
    def template(self) -> carry.Template:
        """What a copy of this file keeps of its header (:mod:`mrcz.carry`)."""
        info = self.info
        if info.extended_bytes > jsonmeta.MAX_META_BYTES:
            raise UnsupportedError(f"{self.name}: extended header of {info.extended_bytes} "
                                   f"bytes is over the {jsonmeta.MAX_META_BYTES}-byte limit")
        if len(self.extended) != info.extended_bytes:
            raise CorruptDataError(f"{self.name}: extended header of {info.extended_bytes} "
                                   f"bytes runs past the end of the file ({len(self.extended)} "
                                   "bytes there)")
        return carry.Template(info, self.extended, self.name)

    def chunk_table(self, verify: bool = True) -> codec.ChunkTable:
        """Where every chunk of the compressed data block is (found once, then kept)."""
        if verify not in self._tables:
            self._tables[verify] = self._find_chunks(self.info.shape[0], False, verify)
        return self._tables[verify]

    def chunks(self, first: int, count: int, partial: bool = False, verify: bool = True
               ) -> tuple[list[tuple[int, int]], list[int] | None]:
        """``(chunks, crcs)`` of z-slices ``first .. first+count-1``, checked against the
        file (``crcs`` None: no frame index to verify against, or not ``verify``).

        Runs before any output is allocated, so a header that lies about the
        dimensions fails here instead of in a giant allocation.
        """
        if partial or (verify not in self._tables and first + count < self.info.shape[0]):
            table = self._find_chunks(first + count, partial, verify)
        else:
            table = self.chunk_table(verify)
        crcs = None if table.crcs is None or not verify else table.crcs[first:first + count]
        return table.chunks[first:first + count], crcs

    def _find_chunks(self, wanted: int, partial: bool, verify: bool) -> codec.ChunkTable:
        if self.fd is None:
            raise UnsupportedError(f"{self.name}: compressed MRCZ can only be read from a "
                                   "regular file, not from a stream")
        if self.info.mode == hdr.MODE_UINT4:
            raise UnsupportedError(f"{self.name}: compressed uint4 (mode 101) is not defined")
        nz, ny, nx = self.info.shape
        table = codec.chunk_table(self.fd, self.info.data_offset, nz, self.size,
                                  ny * nx * self.info.dtype.itemsize, self.name, wanted,
                                  partial, verify)
        if table.note:
            warnings.warn(table.note, stacklevel=4)
        return table

    @functools.cached_property
    def first_chunk_version(self) -> int | None:
        """The blosc format version byte of the first chunk (None: plain or a stream)."""
        if self.info.compressor is None or self.fd is None:
            return None
        return os.pread(self.fd, 1, self.info.data_offset)[0]

    def header_dict(self, pixelunits: str = ANGSTROM) -> HeaderDict:
        """The header dict readMRC returns for this file."""
        return header_dict(self.info, self.meta, pixelunits, self.convention,
                           self.first_chunk_version)

    def slices(self, slices: int | None = None) -> int:
        """Z-slices per frame: ``slices``, or by default what the file records."""
        return resolve_slices(self.info, self.meta, slices, self.name)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> MRCSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.__exit__(*exc)  # a stream read to its end checks its checksum there


def read_image(src: MRCSource, idx: int | tuple[int, int] | None = None,
               pixelunits: str = ANGSTROM, memmap: bool = False, n_threads: int | None = None,
               slices: int | None = None, permissive: bool = False,
               out: np.ndarray | None = None, verify: bool = True
               ) -> tuple[np.ndarray | list[np.ndarray], HeaderDict]:
    """What ``readMRC`` returns, read from ``src`` (see :func:`mrcz.readMRC`)."""
    name, info, f = src.name, src.info, src.file
    n_threads = threads(n_threads)
    if out is not None and memmap:
        raise ValueError(f"{name}: out= and useMemmap=True exclude each other")
    slices = src.slices(slices)
    nz, ny, nx = info.shape
    selected = frame_range(idx, nz, name)
    first, count = selected if selected else (0, nz)
    if out is not None:
        check_out(out, (count, ny, nx), info, name)
    if info.compressor is None and permissive:
        count = salvageable_plain(f, info, first, count, slices, name)
    elif info.compressor is None:
        check_plain_size(f, info, name)
    damaged: list[int] = []
    if memmap and info.compressor is None and info.mode != hdr.MODE_UINT4:
        data = np.memmap(src.path, dtype=info.dtype, mode="c",
                         offset=info.data_offset + first * ny * nx * info.dtype.itemsize,
                         shape=(count, ny, nx))
    elif info.compressor is not None and memmap and not permissive:
        data = LazyFrames(index_open_file(src.path, src.info, src.fd, name)
                          .select(first, count))
    elif info.compressor is not None:
        chunks, crcs = src.chunks(first, count, permissive, verify)
        data = decode_target(out, (len(chunks), ny, nx), info, name)
        if permissive:
            kept, damaged = salvage_compressed(src.fd, chunks, crcs, first, data, n_threads,
                                               name)
            count = whole_frames(kept, count, slices, name)
            data = data[:count]
        else:
            read_compressed(src.fd, chunks, crcs, first, data, n_threads, name)
    elif info.mode == hdr.MODE_UINT4:
        packed = allocate((count, ny, (nx + 1) // 2), np.dtype(np.uint8), name)
        read_plain(f, info, first, count, packed, name)
        data = unpack_uint4(packed, nx)
    else:
        data = decode_target(out, (count, ny, nx), info, name)
        read_plain(f, info, first, count, data, name)
    if not isinstance(data, (np.memmap, LazyFrames)):
        data = to_native(data, info.widened_uint8)
    if out is not None and not np.shares_memory(data, out):
        target = out.reshape(-1, ny, nx)[:data.shape[0]]
        target[...] = data.reshape(target.shape)
        data = target
    header = src.header_dict(pixelunits)
    if damaged:
        header.extra["damagedSlices"] = damaged
    if selected or count != nz:
        header["dimensions"][0] = count
    return arrange(data, info, slices, selected is None), header


def template_of(path: str | os.PathLike) -> carry.Template:
    """The :class:`~mrcz.carry.Template` of the MRC/MRCZ file at ``path`` (gz/bz2/zst too)."""
    with MRCSource.open(path) as src:
        return src.template


def file_size(f: BinaryIO) -> int | None:
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


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


def frame_range(idx: Any, nz: int, name: str) -> tuple[int, int] | None:
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


def resolve_slices(info: hdr.HeaderInfo, meta: dict, slices: int | None, name: str) -> int:
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


def whole_frames(kept: int, wanted: int, slices: int, name: str) -> int:
    """Salvaged slices cut to whole frames; warn when short, raise when none is left."""
    if slices > 1:
        kept -= kept % slices
    if not kept:
        raise CorruptDataError(f"{name}: no complete frame is left in the damaged file")
    if kept < wanted:
        warnings.warn(f"{name}: damaged file; recovered {kept} of {wanted} slices",
                      stacklevel=3)
    return kept


def salvageable_plain(f: BinaryIO, info: hdr.HeaderInfo, first: int, count: int,
                       slices: int, name: str) -> int:
    """How many of the asked-for slices a (possibly truncated) plain file holds whole."""
    size = file_size(f)
    if size is None:
        return count
    slice_bytes = hdr.stored_nbytes(info) // info.shape[0]
    whole = max(0, (size - info.data_offset) // slice_bytes - first)
    return whole_frames(min(count, whole), count, slices, name)


def salvage_compressed(fd: int, chunks: list, crcs: list[int] | None, first: int,
                        out: np.ndarray, n_threads: int, name: str) -> tuple[int, list[int]]:
    """Decode ``chunks`` into ``out``; return how many decoded before the first bad one,
    and the z-slices of every chunk that fails its checksum."""
    damaged = [] if crcs is None else [
        first + index for index, (chunk, crc) in enumerate(zip(chunks, crcs))
        if frameindex.checksum(os.pread(fd, chunk[1], chunk[0])) != crc]
    if not chunks:
        return 0, damaged
    try:
        read_compressed(fd, chunks, crcs, first, out, n_threads, name)
        return len(chunks), damaged
    except CorruptDataError:
        for index, chunk in enumerate(chunks):
            try:
                codec.read_chunk_into(fd, chunk, first + index, out[index], name,
                                      crc=None if crcs is None else crcs[index])
            except CorruptDataError:
                return index, damaged
    return len(chunks), damaged


def read_compressed(fd: int, chunks: list[tuple[int, int]], crcs: list[int] | None,
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


def read_plain(f: BinaryIO, info: hdr.HeaderInfo, first: int, count: int,
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


def check_plain_size(f: BinaryIO, info: hdr.HeaderInfo, name: str) -> None:
    size = file_size(f)
    need = info.data_offset + hdr.stored_nbytes(info)
    if size is not None and size < need:
        raise CorruptDataError(f"{name}: file is {size} bytes but its header describes "
                               f"{need} (dimensions {info.shape}, mode {info.mode}; truncated "
                               "or not an MRC file)")


def allocate(shape: tuple[int, ...], dtype: np.dtype, name: str) -> np.ndarray:
    """``np.empty`` that reports a header asking for more memory than there is."""
    try:
        return np.empty(shape, dtype=dtype)
    except MemoryError:
        nbytes = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
        raise FormatError(f"{name}: the header describes {nbytes} bytes of data "
                          f"(shape {shape}, {dtype}), more than can be allocated; corrupt "
                          "header?") from None


def arrange(data: np.ndarray, info: hdr.HeaderInfo, slices: int,
             whole_file: bool) -> np.ndarray | list[np.ndarray]:
    """Shape the slices as the caller expects: array, volume stack or list of frames."""
    if isinstance(data, LazyFrames):
        return arrange_lazy(data, slices)
    if slices == 1:
        return list(data)
    if slices > 1:
        return [data[i:i + slices] for i in range(0, data.shape[0], slices)]
    mz = int(info.record["mz"])
    if (whole_file and 400 < int(info.record["ispg"]) < 631 and not info.mz_is_slices
            and not info.legacy_mrcz and 0 < mz < data.shape[0] and data.shape[0] % mz == 0):
        return data.reshape(data.shape[0] // mz, mz, *data.shape[1:])
    return data[0] if data.shape[0] == 1 else data


def arrange_lazy(data: LazyFrames, slices: int) -> LazyFrames | list[LazyFrames]:
    """As :func:`arrange`, with lazy views for the frames (nothing is read)."""
    if slices == 1:
        return [data.frame(k) for k in range(len(data))]
    if slices > 1:
        return [data.frames(k, slices) for k in range(0, len(data), slices)]
    return data.frame(0) if len(data) == 1 else data


def native_dtype(info: hdr.HeaderInfo) -> np.dtype:
    """The dtype readMRC returns for the file described by ``info``."""
    if info.dtype.names:
        return np.dtype(np.complex64)
    if info.widened_uint8:
        return np.dtype(np.uint8)
    return info.dtype.newbyteorder("=")


def check_out(out: np.ndarray, shape: tuple[int, int, int], info: hdr.HeaderInfo,
               name: str) -> None:
    """Raise unless ``out`` can hold the slices of ``shape`` as readMRC returns them."""
    want = native_dtype(info)
    if not isinstance(out, np.ndarray) or out.dtype != want or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"{name}: out= must be a writeable C-contiguous {want} array, got "
                         f"{type(out).__name__} {getattr(out, 'dtype', '')}")
    if out.shape not in (shape, shape[1:] if shape[0] == 1 else shape):
        raise ValueError(f"{name}: out= has shape {out.shape}; the slices read need "
                         f"{shape}")


def decode_target(out: np.ndarray | None, shape: tuple[int, int, int],
                   info: hdr.HeaderInfo, name: str) -> np.ndarray:
    """Where the stored values are read to: ``out`` itself when it holds them as stored."""
    if out is not None and out.dtype == info.dtype and info.mode != hdr.MODE_UINT4 \
            and not info.widened_uint8:
        return out.reshape(-1, *shape[1:])[:shape[0]]
    return allocate(shape, info.dtype, name)


