"""mrcfile's API on every file this package reads: ``open``, ``new``, ``read``,
``write``, ``mmap``, ``new_mmap``, ``open_async`` and ``validate``.

:class:`MrcFile` is an :class:`~mrcz.mrcobject.MrcObject` read from and written
to a file: plain MRC, whole-file ``.gz``/``.bz2``/``.zst``, compressed MRCZ, or
an open binary file object. On MRCZ files it also offers what mrcfile cannot:
``len(mrc)``, ``mrc.read_frame(k)`` decompressing only frame *k*, iteration over
frames, and ``append`` in mode ``'r+'``. Plain files are written byte for byte
as the header says; MRCZ files through :func:`mrcz.writeMRC` with the header as
its template, so every field the compression does not use is kept.
"""
from __future__ import annotations

import base64
import builtins
import concurrent.futures
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any, BinaryIO, TextIO

import numpy as np

from . import carry, header as hdr, meta as jsonmeta, wholefile
from .fileops import atomic_output
from .errors import FormatError, MRCZError
from .mrc import readMRC, writeMRC
from .mrcobject import DTYPE_OF_MODE, MrcObject, as_mrcfile_record, data_dtype, data_shape
from .reader import MRCSource, read_image
from .validate import is_valid, validate_file
from .version import __version__

MAP_ID = b"MAP "
_UINT8_MARK = b"MZ\x01"  # bytes 96-98: mode-6 data that were uint8 in memory
_MODES = ("r", "r+", "w+")
_COMPRESSION = {None: None, "gzip": "gzip", "bzip2": "bzip2", "zstd": "zstd"}
_opener = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="mrcz-open")


class MrcFile(MrcObject):
    """An MRC or MRCZ file opened for reading, updating (``'r+'``) or writing (``'w+'``).

    Use :func:`mrcz.open`, :func:`mrcz.new` or :func:`mrcz.mmap` rather than
    this class. Changes reach the file on :meth:`flush` and :meth:`close`.
    """

    def __init__(self, name: str | os.PathLike | BinaryIO, mode: str = "r",
                 permissive: bool = False, header_only: bool = False,
                 compression: str | None = None, compressor: str | None = None,
                 clevel: int = 1, overwrite: bool = False, memmap: bool = False) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if compression not in _COMPRESSION:
            raise ValueError(f"compression must be None, 'gzip', 'bzip2' or 'zstd', "
                             f"got {compression!r}")
        super().__init__()
        self._stream = None if isinstance(name, (str, os.PathLike)) else name
        self.name = "<stream>" if self._stream is not None else os.fspath(name)
        self.mode, self._permissive, self._header_only = mode, permissive, header_only
        self._memmap, self._closed = memmap, False
        self.compressor, self.clevel = compressor, int(clevel)
        self.compression = compression
        self._json_bytes: bytes | None = None
        self._file: BinaryIO | None = None  # what the file is read from (open once)
        self._src: MRCSource | None = None  # the reader's view of it (None: header refused)
        if mode == "w+":
            self._create(overwrite)
        else:
            self._open()
        self._read_only = mode == "r"

    # ---------------------------------------------------------------- opening
    def _create(self, overwrite: bool) -> None:
        if self._stream is None and os.path.exists(self.name) and not overwrite:
            raise ValueError(f"File '{self.name}' already exists; set overwrite=True to "
                             "overwrite it")
        if self._stream is None:
            self.compression = self.compression or wholefile.codec_for_name(self.name)
            if self.compressor is None and self.name.lower().endswith(".mrcz"):
                self.compressor = "zstd"
        if self.compressor and self.compression:
            raise ValueError(f"{self.name}: MRCZ (compressor={self.compressor!r}) cannot go "
                             f"inside a whole-file {self.compression} stream")
        self._data = np.empty(0, dtype=np.int8)
        self._header.nlabl = 1
        self._header.label[0] = f"MRCZ{__version__}".encode("ascii")

    def _open(self) -> None:
        self._release()
        try:
            self._load()
        except BaseException:
            self._release()
            raise

    def _load(self) -> None:
        """Header, extended header and (plain files) data, from one open file."""
        raw = self._read_all_or_head()
        info = self._src.info if self._src is not None else self._parse(raw[:hdr.HEADER_BYTES])
        original = np.frombuffer(bytearray(raw[:hdr.HEADER_BYTES]), dtype=info.record.dtype)
        self._header = as_mrcfile_record(original.reshape(()))
        if bytes(self._header.map) != MAP_ID:
            self._problem("Map ID string not found - not an MRC file, or file is corrupt")
        self.compressor = info.compressor
        if info.compressor:
            self._header.mode = info.mode  # the data mode; the codec is ``.compressor``
            self.clevel = info.clevel if info.clevel is not None else 1
        extended = raw[hdr.HEADER_BYTES:info.data_offset]
        if len(extended) < info.extended_bytes:
            extended = self._read_range(hdr.HEADER_BYTES, info.extended_bytes)
        self._extended = np.frombuffer(bytearray(extended), dtype="V1")
        if info.compressor:  # the header shows MRC2014 sampling, which MRCZ displaced
            kept = self._template().earlier
            self._header.mz = kept.get("mz", self._header.nz)
            for field in ("mx", "my", "cella"):
                if field in kept:
                    self._header[field] = tuple(kept[field]) if field == "cella" else kept[field]
            if "extended_header" in kept and kept.get("exttyp") != "json":
                self._json_bytes = self._extended.tobytes()  # the JSON, kept apart
                self.set_extended_header(np.frombuffer(
                    bytearray(base64.b64decode(kept["extended_header"])), dtype="V1"))
                self._header.exttyp = str(kept.get("exttyp", "")).encode("latin-1")[:4]
        self._info = info
        if not self._header_only:
            self._data = None if info.compressor else self._read_plain_data(info, raw)
        if self._header_only or not info.compressor:
            self._release()  # all is read: MRCZ data are read from the open file on demand

    def _read_all_or_head(self) -> bytes:
        """Open the file (once): header and extended header, parsed by the reader
        (``self._src``) where it accepts them, else as they are. The data are read
        from the same open file (``self._file``); a stream or a whole-file compressed
        file is read whole."""
        if self._stream is not None:
            self._spooled = self._stream.read()
            self._file = io.BytesIO(self._spooled)
        else:
            f = wholefile.wrap(builtins.open(self.name, "rb"), self.name)
            self.compression = getattr(f, "codec", None)  # 'gzip', 'bzip2', 'zstd' or None
            if self.compression is not None:
                with f:
                    f = io.BytesIO(f.read())
            self._file = f
        try:
            self._src = MRCSource(self._file, self.name, self.name)
        except MRCZError:  # read the header as it is: refused below, or permissive
            self._file.seek(0)
            return self._file.read(hdr.HEADER_BYTES)
        return self._src.info.record.tobytes() + self._src.extended

    def _read_range(self, offset: int, size: int) -> bytes:
        self._file.seek(offset)
        return self._file.read(size)

    def _source(self) -> MRCSource:
        """The reader of the file's data (opened again only if the file was closed)."""
        if self._src is None or self._src.file.closed:
            self._src = MRCSource.open(self.name)
        return self._src

    def _release(self) -> None:
        """Close the file the data were read from."""
        if self._file is not None:
            self._file.close()
        self._file = self._src = None

    def _parse(self, raw: bytes) -> hdr.HeaderInfo:
        try:
            return hdr.parse_header(raw, self.name)
        except MRCZError as err:
            if not self._permissive or len(raw) < hdr.HEADER_BYTES:
                raise
            warnings.warn(f"{err}; data not read", RuntimeWarning, stacklevel=4)
            self._header_only = True  # read the header as it is, with mode 0 to parse it
            patched = bytearray(raw)
            patched[12:16] = bytes(4)
            return hdr.parse_header(bytes(patched), self.name)

    def _problem(self, message: str) -> None:
        if not self._permissive:
            raise ValueError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _read_plain_data(self, info: hdr.HeaderInfo, raw: bytes) -> np.ndarray | None:
        if info.mode == hdr.MODE_UINT4:
            return read_image(self._source())[0] if self._stream is None else None
        try:
            dtype = data_dtype(self._header, info.byteorder, self.name)
        except FormatError as err:
            self._problem(str(err))
            return None
        if dtype == np.dtype(info.byteorder + "u2") and raw[96:99] == _UINT8_MARK:
            dtype = np.dtype(np.uint8)
            stored = np.dtype(info.byteorder + "u2")
        else:
            stored = dtype
        shape = data_shape(self._header)
        nbytes = int(np.prod(shape)) * stored.itemsize
        offset = info.data_offset
        if self._memmap and self._stream is None and self.compression is None:
            if os.path.getsize(self.name) < offset + nbytes:
                self._problem(f"{self.name}: data block too small for the header's dimensions")
                return None
            return np.memmap(self.name, dtype=stored, mode="r+" if self.mode == "r+" else "r",
                             offset=offset, shape=shape)
        block = self._read_range(offset, nbytes)
        if len(block) < nbytes:
            self._problem(f"{self.name}: data block is {len(block)} bytes, smaller than the "
                          f"{nbytes} bytes the header's dimensions need")
            return None
        data = np.frombuffer(bytearray(block), dtype=stored).reshape(shape)
        return data.astype(np.uint8) if dtype != stored else data

    # ------------------------------------------------------------------ data
    @property
    def data(self) -> np.ndarray | None:
        if self._data is None and self.compressor and not self._header_only:
            self._data = self._read_compressed(None)
            self._release()
        return self._data

    @property
    def metadata(self) -> dict:
        """The JSON metadata, without what MRCZ displaced from the header (which
        :meth:`flush` keeps up to date by itself)."""
        meta = dict(self._json())
        meta.pop(carry.DISPLACED_KEY, None)
        return meta

    @metadata.setter
    def metadata(self, meta: dict) -> None:
        self._check_writeable()
        kept = self._json().get(carry.DISPLACED_KEY)
        meta = {**meta, carry.DISPLACED_KEY: kept} if kept else meta
        if self._json_bytes is not None:
            self._json_bytes = jsonmeta.encode(meta)
        else:
            MrcObject.metadata.fset(self, meta)

    def _json(self) -> dict:
        """The JSON extended header as a dict: the file's own, or in an MRCZ file that
        shows another extended header, the JSON kept apart."""
        if self._json_bytes is not None:
            return jsonmeta.decode(self._json_bytes, self.name)
        return MrcObject.metadata.fget(self)

    def _shape_on_disk(self) -> tuple[int, ...]:
        return data_shape(self._header)

    def _ndim(self) -> int:
        if self._data is None and self.compressor and not self._header_only:
            return len(self._shape_on_disk())  # without decompressing
        return super()._ndim()

    def _read_compressed(self, frame: int | None) -> np.ndarray:
        shape = self._shape_on_disk()
        per_frame = int(np.prod(shape[1:-2])) if len(shape) > 2 else 1
        idx = None if frame is None else (frame * per_frame, frame * per_frame + per_frame - 1)
        if self._stream is None:
            image, _ = read_image(self._source(), idx=idx, slices=0)
        else:
            with _Spool(self._spooled) as path:  # compressed chunks need a regular file
                image, _ = readMRC(path, idx=idx, slices=0)
        image = np.asarray(image)
        return image.reshape(shape if frame is None else shape[1:])

    def __len__(self) -> int:
        shape = self._shape_on_disk() if self.compressor else np.shape(self.data)
        return 1 if len(shape) == 2 else int(shape[0])

    def read_frame(self, k: int) -> np.ndarray:
        """Frame ``k`` (an image of a stack, a z-slice of a volume, a volume of a
        volume stack); in MRCZ files only that frame's chunks are decompressed."""
        count = len(self)
        if not -count <= k < count:
            raise IndexError(f"{self.name}: frame {k} of {count}")
        k %= count
        if self.compressor and self._data is None:
            return self._read_compressed(k)
        data = self.data
        return data if data.ndim == 2 else data[k]

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self.read_frame(k)

    def append(self, frames: np.ndarray) -> None:
        """Append 2-D frames (one image or a stack of them) at the end of the file
        (mode ``'r+'``); MRCZ files get new chunks, the old ones stay as they are."""
        self._check_writeable()
        if self.mode == "w+" or self._stream is not None or self.compression:
            raise ValueError(f"{self.name}: append works on files opened with mode 'r+'; "
                             "flush and reopen first")
        frames = np.asarray(frames)
        self.flush()
        nz = int(self._header.nz)
        writeMRC(frames, self.name, idx=nz, compressor=self.compressor, clevel=self.clevel)
        self._data = None
        self._open()

    # ---------------------------------------------------------------- writing
    def _template(self) -> carry.Template:
        raw = bytearray(self._header.tobytes())  # the plain view: mz is sampling
        raw[92:96] = len(self._extended.tobytes()).to_bytes(
            4, "little" if self.byteorder == "<" else "big", signed=True)
        return carry.Template(hdr.parse_header(bytes(raw), self.name),
                              self._extended.tobytes(), self.name)

    def flush(self) -> None:
        """Write header, extended header and data to the file (modes ``'r+'``, ``'w+'``)."""
        if self.mode == "r" or self._closed:
            return
        if isinstance(self._data, np.memmap):
            self._data.flush()
            with builtins.open(self.name, "r+b") as f:
                f.write(self._header.tobytes())
            return
        if self.compressor:
            self._flush_mrcz()
        else:
            self._write_bytes(self._plain_bytes())

    def _plain_bytes(self) -> bytes:
        data = self.data if self.data is not None else np.empty(0, np.int8)
        header = self._header.copy()
        header.nsymbt = self._extended.nbytes
        raw = bytearray(header.tobytes())
        stored = data.dtype
        if data.dtype == np.uint8:
            stored = np.dtype(np.uint16)
            raw[96:99] = _UINT8_MARK
        stored = stored.newbyteorder(self.byteorder)
        return bytes(raw) + self._extended.tobytes() + data.astype(stored, copy=False).tobytes()

    def _write_bytes(self, payload: bytes) -> None:
        if self._stream is not None:
            self._stream.seek(0)
            self._stream.write(payload)
            self._stream.truncate()
            return
        with atomic_output(self.name) as f:
            if self.compression:
                wholefile.compress_to(f, self.compression, payload)
            else:
                f.write(payload)

    def _flush_mrcz(self) -> None:
        data = self.data
        if data is None or data.size == 0:
            raise ValueError(f"{self.name}: an MRCZ file needs data; call set_data first")
        if self._stream is not None:
            raise ValueError("MRCZ files are written to named files, not streams")
        image = data.reshape(-1, *data.shape[-2:]) if data.ndim == 4 else data
        meta = self._json() or None
        vz, vy, vx = (float(self.voxel_size[k]) for k in ("z", "y", "x"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            writeMRC(image, self.name, meta=meta, compressor=self.compressor,
                     clevel=self.clevel, pixelsize=[vz, vy, vx],
                     endian="le" if self.byteorder == "<" else "be", template=self._template())

    def close(self) -> None:
        """Flush and close; the object can no longer be used for writing."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed, self._read_only = True, True
            self._release()
            if isinstance(self._data, np.memmap):
                self._data = np.array(self._data)

    def __enter__(self) -> MrcFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            self._release()

    def __repr__(self) -> str:
        kind = "MrcMemmap" if self._memmap else "MrcFile"
        return f"{kind}({self.name!r}, mode={self.mode!r})"

    def __reduce__(self):
        if self._stream is not None:
            raise TypeError("an MrcFile opened on a stream cannot be pickled; open it by name")
        self.flush()
        return (_reopen, (self.name, "r" if self.mode == "r" else "r+", self._permissive,
                          self._header_only, self._memmap))

    def validate(self, print_file: TextIO | None = None) -> bool:
        """Validate the file on disk (flush first to include changes)."""
        return validate(self.name, print_file)


class _Spool:
    """A temporary file holding bytes read from a stream."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __enter__(self) -> str:
        handle, self.path = tempfile.mkstemp(suffix=".mrcz")
        with os.fdopen(handle, "wb") as f:
            f.write(self.payload)
        return self.path

    def __exit__(self, *exc: Any) -> None:
        os.unlink(self.path)


def _reopen(name: str, mode: str, permissive: bool, header_only: bool,
            memmap: bool) -> MrcFile:
    return MrcFile(name, mode, permissive=permissive, header_only=header_only, memmap=memmap)


# --------------------------------------------------------------------- functions
def open(name: str | os.PathLike | BinaryIO, mode: str = "r", permissive: bool = False,
         header_only: bool = False) -> MrcFile:  # noqa: A001 - mrcfile's name
    """Open an MRC, MRCZ, ``.gz``/``.bz2``/``.zst`` file or binary stream.

    Parameters
    ----------
    name : path, or an open binary file object.
    mode : ``'r'`` read-only, ``'r+'`` read and write, ``'w+'`` a new empty file.
    permissive : warn instead of raising where the header is invalid; the data are
        then ``None`` where they cannot be read.
    header_only : read the header and extended header only.
    """
    return MrcFile(name, mode, permissive=permissive, header_only=header_only)


def new(name: str | os.PathLike | BinaryIO, data: np.ndarray | None = None,
        compression: str | None = None, compressor: str | None = None, clevel: int = 1,
        overwrite: bool = False) -> MrcFile:
    """A new file in mode ``'w+'``; refuses to replace one unless ``overwrite``.

    Parameters
    ----------
    compression : whole-file ``'gzip'``, ``'bzip2'`` or ``'zstd'`` (also taken from
        a name ending ``.gz``, ``.bz2``, ``.zst``).
    compressor : MRCZ blosc codec (``'zstd'``, ``'lz4'``, ...); names ending
        ``.mrcz`` get ``'zstd'`` by default.
    clevel : MRCZ compression level.
    """
    mrc = MrcFile(name, "w+", compression=compression, compressor=compressor, clevel=clevel,
                  overwrite=overwrite)
    if data is not None:
        mrc.set_data(data)
    return mrc


def read(name: str | os.PathLike) -> np.ndarray:
    """The data array of a file (a copy; the file is closed again)."""
    with open(name, permissive=False) as mrc:
        return np.array(mrc.data)


def write(name: str | os.PathLike, data: np.ndarray | None = None, overwrite: bool = False,
          voxel_size: Any = None, compression: str | None = None,
          compressor: str | None = None, clevel: int = 1) -> None:
    """Write ``data`` to a new file (refuses to replace one unless ``overwrite``)."""
    with new(name, data, compression=compression, compressor=compressor, clevel=clevel,
             overwrite=overwrite) as mrc:
        if voxel_size is not None:
            mrc.voxel_size = voxel_size


def mmap(name: str | os.PathLike, mode: str = "r", permissive: bool = False) -> MrcFile:
    """Open a plain MRC file with its data as a ``numpy.memmap``."""
    mrc = MrcFile(name, mode, permissive=permissive, memmap=True)
    if mrc.compressor or mrc.compression:
        mrc.close()
        raise ValueError(f"{mrc.name}: compressed files cannot be memory-mapped; use open()")
    return mrc


def new_mmap(name: str | os.PathLike, shape: tuple[int, ...], mrc_mode: int = 0,
             fill: float | None = None, overwrite: bool = False) -> MrcFile:
    """A new plain file of ``shape`` and MRC mode ``mrc_mode``, opened as a memory map."""
    if mrc_mode not in DTYPE_OF_MODE:
        raise ValueError(f"unknown MRC mode {mrc_mode}; known: {sorted(DTYPE_OF_MODE)}")
    with new(name, overwrite=overwrite) as mrc:
        mrc.set_data(np.zeros((1,) * (len(shape) - 2) + tuple(shape[-2:]),
                              dtype=DTYPE_OF_MODE[mrc_mode]))
        header = mrc.header.copy()
    header.nx, header.ny = shape[-1], shape[-2]
    header.nz = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    header.mz = shape[1] if len(shape) == 4 else (header.nz if len(shape) == 3 else 1)
    header.mx, header.my = header.nx, header.ny
    nbytes = int(np.prod(shape)) * np.dtype(DTYPE_OF_MODE[mrc_mode]).itemsize
    with atomic_output(os.fspath(name)) as f:
        f.write(header.tobytes())
        f.truncate(hdr.HEADER_BYTES + nbytes)
    mrc = mmap(name, "r+")
    mrc.reset_header_stats()  # the data are yours to fill
    if fill is not None:
        mrc.data[...] = fill
    return mrc


def open_async(name: str | os.PathLike, mode: str = "r",
               permissive: bool = False) -> concurrent.futures.Future:
    """Open a file in a background thread; ``.result()`` gives the :class:`MrcFile`."""
    return _opener.submit(_open_loaded, name, mode, permissive)


def _open_loaded(name: str | os.PathLike, mode: str, permissive: bool) -> MrcFile:
    mrc = open(name, mode, permissive)
    mrc.data  # noqa: B018 - an MRCZ file decompresses here, in the background thread
    return mrc


def validate(name: str | os.PathLike, print_file: TextIO | None = None) -> bool:
    """Check a file against MRC2014 (and the MRCZ layout); print each problem.

    Returns True when the file is valid.
    """
    problems = validate_file(name)
    out = print_file or sys.stdout
    for problem in problems:
        print(problem.message, file=out)
    return is_valid(problems)


__all__ = ["MrcFile", "open", "new", "read", "write", "mmap", "new_mmap", "open_async",
           "validate"]
