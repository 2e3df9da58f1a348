"""An MRC object in memory: header, extended header and data kept in step.

:class:`MrcObject` is what mrcfile users know as ``MrcObject``: the 1024-byte
header as one writable numpy record (mrcfile's field names), the extended
header as raw bytes, the data array, and the MRC2014 rules that tie them
together (mode from dtype, dimensions and space group from the data, exact or
"not known" statistics). It knows nothing about files; :mod:`mrcz.fileobject`
reads and writes it.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

import numpy as np

from . import header as hdr
from . import meta as jsonmeta
from .errors import FormatError

_XYZ = [("x", "f4"), ("y", "f4"), ("z", "f4")]

#: The header with mrcfile's field names (the same 1024 bytes as
#: :data:`mrcz.header.HEADER_DTYPE`, whose names split the "extra" words).
MRCFILE_HEADER_DTYPE = np.dtype([
    ("nx", "i4"), ("ny", "i4"), ("nz", "i4"), ("mode", "i4"),
    ("nxstart", "i4"), ("nystart", "i4"), ("nzstart", "i4"),
    ("mx", "i4"), ("my", "i4"), ("mz", "i4"),
    ("cella", _XYZ), ("cellb", [("alpha", "f4"), ("beta", "f4"), ("gamma", "f4")]),
    ("mapc", "i4"), ("mapr", "i4"), ("maps", "i4"),
    ("dmin", "f4"), ("dmax", "f4"), ("dmean", "f4"),
    ("ispg", "i4"), ("nsymbt", "i4"), ("extra1", "V8"), ("exttyp", "S4"),
    ("nversion", "i4"), ("extra2", "V84"), ("origin", _XYZ), ("map", "S4"),
    ("machst", "u1", (4,)), ("rms", "f4"), ("nlabl", "i4"), ("label", "S80", (10,)),
])
assert MRCFILE_HEADER_DTYPE.itemsize == hdr.HEADER_BYTES

VOXEL_DTYPE = np.dtype(_XYZ)
#: dtype -> MRC mode for data an MRC file can hold (mrcfile's table, plus
#: float16 as mode 12).
MODE_OF_DTYPE = {np.dtype("int8"): 0, np.dtype("int16"): 1, np.dtype("float32"): 2,
                 np.dtype("complex64"): 4, np.dtype("uint16"): 6, np.dtype("uint8"): 6,
                 np.dtype("float16"): 12}
DTYPE_OF_MODE = {0: "i1", 1: "i2", 2: "f4", 4: "c8", 6: "u2", 12: "f2"}
IMAGE_STACK_SPACEGROUP = 0
VOLUME_SPACEGROUP = 1
VOLUME_STACK_SPACEGROUP = 401


# The FEI (Thermo Fisher) per-section metadata record, version 0 ("FEI1") and its
# version-2 additions ("FEI2"), as laid out in Thermo Fisher's MRC2014 extended
# header specification: "name:type" in order, packed, little-endian.
_FEI1_FIELDS = """
Metadata size:i4 Metadata version:i4 Bitmask 1:u4 Timestamp:f8 Microscope type:S16
D-Number:S16 Application:S16 Application version:S16 HT:f8 Dose:f8 Alpha tilt:f8
Beta tilt:f8 X-Stage:f8 Y-Stage:f8 Z-Stage:f8 Tilt axis angle:f8 Dual axis rotation:f8
Pixel size X:f8 Pixel size Y:f8 Unused range:S48 Defocus:f8 STEM Defocus:f8
Applied defocus:f8 Instrument mode:i4 Projection mode:i4 Objective lens mode:S16
High magnification mode:S16 Probe mode:i4 EFTEM On:? Magnification:f8 Bitmask 2:u4
Camera length:f8 Spot index:i4 Illuminated area:f8 Intensity:f8 Convergence angle:f8
Illumination mode:S16 Wide convergence angle range:? Slit inserted:? Slit width:f8
Acceleration voltage offset:f8 Drift tube voltage:f8 Energy shift:f8 Shift offset X:f8
Shift offset Y:f8 Shift X:f8 Shift Y:f8 Integration time:f8 Binning Width:i4
Binning Height:i4 Camera name:S16 Readout area left:i4 Readout area top:i4
Readout area right:i4 Readout area bottom:i4 Ceta noise reduction:? Ceta frames summed:i4
Direct detector electron counting:? Direct detector align frames:?
Camera param reserved 0:i4 Camera param reserved 1:i4 Camera param reserved 2:i4
Camera param reserved 3:i4 Bitmask 3:u4 Camera param reserved 4:i4
Camera param reserved 5:i4 Camera param reserved 6:i4 Camera param reserved 7:i4
Camera param reserved 8:i4 Camera param reserved 9:i4 Phase Plate:? STEM Detector name:S16
Gain:f8 Offset:f8 STEM param reserved 0:i4 STEM param reserved 1:i4
STEM param reserved 2:i4 STEM param reserved 3:i4 STEM param reserved 4:i4 Dwell time:f8
Frame time:f8 Scan size left:i4 Scan size top:i4 Scan size right:i4 Scan size bottom:i4
Full scan FOV X:f8 Full scan FOV Y:f8 Element:S16 Energy interval lower:f8
Energy interval higher:f8 Method:i4 Is dose fraction:? Fraction number:i4 Start frame:i4
End frame:i4 Input stack filename:S80 Bitmask 4:u4 Alpha tilt min:f8 Alpha tilt max:f8
"""
_FEI2_MORE_FIELDS = """
Scan rotation:f8 Diffraction pattern rotation:f8 Image rotation:f8
Scan mode enumeration:i4 Acquisition time stamp:i8 Detector commercial name:S16
Start tilt angle:f8 End tilt angle:f8 Tilt per image:f8 Tilt speed:f8
Beam center X pixel:i4 Beam center Y pixel:i4 CFEG flash timestamp:i8
Phase plate position index:i4 Objective aperture name:S16
"""


def _fields(text: str) -> list[tuple[str, str]]:
    import re

    return [(name.strip(), "<" + kind if kind[0] in "iuf" else kind)
            for name, kind in re.findall(r"([^:]+?):(\S+)(?:\s+|$)", text.strip())]


FEI1_EXTENDED_HEADER_DTYPE = np.dtype(_fields(_FEI1_FIELDS))
FEI2_EXTENDED_HEADER_DTYPE = np.dtype(_fields(_FEI1_FIELDS) + _fields(_FEI2_MORE_FIELDS))


def mode_of(dtype: np.dtype) -> int:
    """The MRC mode for ``dtype``; ValueError for dtypes MRC cannot hold."""
    mode = MODE_OF_DTYPE.get(np.dtype(dtype).newbyteorder("="))
    if mode is None:
        raise ValueError(f"dtype '{np.dtype(dtype)}' cannot be converted to an MRC file mode")
    return mode


def new_header_record(byteorder: str = "<") -> np.recarray:
    """A fresh header (shape ``()``) with MRC2014's constant fields, as a recarray."""
    rec = hdr.new_header(byteorder)
    rec["mrcz_magic"] = b""  # marks the MRCZ extension bytes only where they are used
    rec["gain"] = 0.0
    rec["ispg"] = VOLUME_SPACEGROUP
    rec["dmin"], rec["dmax"], rec["dmean"], rec["rms"] = 0.0, -1.0, -2.0, -1.0
    return as_mrcfile_record(rec)


def as_mrcfile_record(rec: np.ndarray) -> np.recarray:
    """A writable recarray view with mrcfile's names over a copy of ``rec``'s bytes."""
    order = ">" if rec.dtype["nx"].byteorder == ">" else "<"
    buf = bytearray(np.asarray(rec).tobytes())
    view = np.frombuffer(buf, dtype=MRCFILE_HEADER_DTYPE.newbyteorder(order)).reshape(())
    return view.view(np.recarray)


class MrcObject:
    """Header, extended header and data of one MRC file, in memory.

    Attributes
    ----------
    header : the header as a writable numpy record array (``header.nx``,
        ``header.cella.x``, ...), in the file's byte order.
    extended_header : the extended header's bytes, a numpy array (``'V1'`` unless
        set otherwise).
    data : the data array (2-D image, 3-D stack or volume, 4-D volume stack), or
        ``None`` when only the header was read.
    """

    def __init__(self, header: np.recarray | None = None, extended: bytes = b"",
                 data: np.ndarray | None = None) -> None:
        self._header = new_header_record() if header is None else header
        self._extended = np.frombuffer(bytearray(extended), dtype="V1")
        self._data = data
        self._read_only = False

    # ------------------------------------------------------------------ access
    @property
    def header(self) -> np.recarray:
        return self._header

    @property
    def extended_header(self) -> np.ndarray:
        return self._extended

    @property
    def data(self) -> np.ndarray | None:
        return self._data

    @property
    def byteorder(self) -> str:
        return ">" if self._header.dtype["nx"].byteorder == ">" else "<"

    @property
    def indexed_extended_header(self) -> np.ndarray | None:
        """The extended header as FEI1/FEI2 per-section records (``None`` for other
        exttyps): one record per section, each ``Metadata size`` bytes long."""
        kind = bytes(self._header.exttyp)
        if kind not in (b"FEI1", b"FEI2") or self._extended.nbytes < 4:
            return None
        base = FEI1_EXTENDED_HEADER_DTYPE if kind == b"FEI1" else FEI2_EXTENDED_HEADER_DTYPE
        raw = self._extended.tobytes()
        size = int(np.frombuffer(raw[:4], dtype="<i4")[0])
        if size < base.itemsize:
            raise FormatError(f"{kind.decode()} records of {size} bytes are shorter than the "
                              f"{base.itemsize} bytes of version {kind[-1:].decode()}")
        count = int(np.count_nonzero(np.frombuffer(
            raw[:len(raw) // size * size], dtype=np.dtype((np.void, size))).view(np.uint8)
            .reshape(-1, size)[:, :4].any(axis=1)))
        padded = np.dtype({"names": base.names, "formats": [base[n] for n in base.names],
                           "offsets": [base.fields[n][1] for n in base.names],
                           "itemsize": size})
        return np.frombuffer(raw[:count * size], dtype=padded)

    @property
    def metadata(self) -> dict:
        """The JSON metadata (exttyp ``json``), or ``{}``."""
        if bytes(self._header.exttyp) != b"json" or not self._extended.size:
            return {}
        return jsonmeta.decode(self._extended.tobytes(), repr(self))

    @metadata.setter
    def metadata(self, meta: dict) -> None:
        self._check_writeable()
        self.set_extended_header(np.frombuffer(jsonmeta.encode(meta), dtype="V1"))
        self._header.exttyp = b"json"

    @property
    def voxel_size(self) -> np.recarray:
        """Voxel size (x, y, z) in Angstrom, cella / (mx, my, mz); read-only."""
        sampling = np.array([self._header.mx, self._header.my, self._header.mz], dtype=float)
        cell = np.array([self._header.cella.x, self._header.cella.y, self._header.cella.z],
                        dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            sizes = np.where(sampling > 0, cell / np.where(sampling > 0, sampling, 1), 0.0)
        out = np.rec.array(tuple(sizes), dtype=VOXEL_DTYPE)
        out.flags.writeable = False
        return out

    @voxel_size.setter
    def voxel_size(self, value: Any) -> None:
        self._check_writeable()
        if isinstance(value, np.ndarray) and value.dtype.names:
            sizes = [float(value[k]) for k in ("x", "y", "z")]
        else:
            sizes = np.broadcast_to(np.asarray(value, dtype=float), (3,)).tolist()
        h = self._header
        h.cella.x, h.cella.y, h.cella.z = (s * m for s, m in zip(sizes, (h.mx, h.my, h.mz)))

    @property
    def nstart(self) -> np.recarray:
        """(nxstart, nystart, nzstart) as a record with x, y, z fields."""
        h = self._header
        return np.rec.array((int(h.nxstart), int(h.nystart), int(h.nzstart)),
                            dtype=[("x", "i4"), ("y", "i4"), ("z", "i4")])

    @nstart.setter
    def nstart(self, value: Any) -> None:
        self._check_writeable()
        x, y, z = np.broadcast_to(np.asarray(value, dtype=int), (3,))
        self._header.nxstart, self._header.nystart, self._header.nzstart = x, y, z

    # ----------------------------------------------------------------- setting
    def _check_writeable(self) -> None:
        if self._read_only:
            raise ValueError("MRC object is read-only")

    def set_data(self, data: np.ndarray) -> None:
        """Replace the data; the header's dimensions, mode, space group and
        statistics follow it."""
        self._check_writeable()
        data = np.asanyarray(data)
        mode_of(data.dtype)
        if data.ndim not in (2, 3, 4):
            raise ValueError(f"data must be 2-D, 3-D or 4-D, got shape {data.shape}")
        self._data = np.array(data, order="C")  # a copy: the caller's array stays theirs
        self.update_header_from_data()
        self.update_header_stats()

    def set_extended_header(self, extended: np.ndarray) -> None:
        """Replace the extended header with ``extended``'s bytes (nsymbt follows;
        exttyp is yours to set)."""
        self._check_writeable()
        self._extended = np.ascontiguousarray(extended)
        self._header.nsymbt = self._extended.nbytes

    def update_header_from_data(self) -> None:
        """Dimensions, mode, sampling and space group from the data array (fast)."""
        self._check_writeable()
        data, h = self._data, self._header
        if data is None:
            return
        h.mode = mode_of(data.dtype)
        shape = data.shape
        h.nx, h.ny = shape[-1], shape[-2]
        if data.ndim == 2:
            h.nz, h.mz, h.ispg = 1, 1, IMAGE_STACK_SPACEGROUP
        elif data.ndim == 3:
            h.nz = shape[0]
            if int(h.ispg) == IMAGE_STACK_SPACEGROUP:
                h.mz = 1
            else:
                h.ispg = int(h.ispg) if 1 <= int(h.ispg) <= 230 else VOLUME_SPACEGROUP
                h.mz = shape[0]
        else:
            h.nz, h.mz = shape[0] * shape[1], shape[1]
            if not 401 <= int(h.ispg) <= 630:
                h.ispg = VOLUME_STACK_SPACEGROUP
        h.mx, h.my = h.nx, h.ny
        h.machst = (0x44, 0x44, 0, 0) if self.byteorder == "<" else (0x11, 0x11, 0, 0)

    def update_header_stats(self) -> None:
        """dmin, dmax, dmean and rms from the data (reads all of it)."""
        self._check_writeable()
        data = self._data
        if data is None or data.size == 0 or data.dtype.kind == "c":
            self.reset_header_stats()
            return
        values = data.astype(np.float64) if data.dtype.itemsize < 4 else data
        h = self._header
        h.dmin, h.dmax = float(values.min()), float(values.max())
        mean = float(values.mean(dtype=np.float64))
        h.dmean = mean
        h.rms = float(np.sqrt(np.mean((values - mean) ** 2, dtype=np.float64)))

    def reset_header_stats(self) -> None:
        """Mark the statistics "not known" (dmax < dmin, dmean < dmin, rms < 0)."""
        self._check_writeable()
        h = self._header
        h.dmin, h.dmax, h.dmean, h.rms = 0.0, -1.0, -2.0, -1.0

    def set_image_stack(self) -> None:
        """Read 3-D data as a stack of images (ispg 0, mz 1)."""
        self._check_writeable()
        if self._ndim() != 3:
            raise ValueError("Only 3D data can be changed into an image stack")
        self._header.ispg, self._header.mz = IMAGE_STACK_SPACEGROUP, 1

    def set_volume(self) -> None:
        """Read 3-D data as one volume (ispg 1, mz nz)."""
        self._check_writeable()
        if self._ndim() != 3:
            raise ValueError("Only 3D data can be changed into a volume")
        self._header.ispg, self._header.mz = VOLUME_SPACEGROUP, self._header.nz

    # ------------------------------------------------------------------- kinds
    def _ndim(self) -> int:
        """Dimensions of the data (0 without data)."""
        return 0 if self._data is None else self._data.ndim

    def is_single_image(self) -> bool:
        return self._ndim() == 2

    def is_image_stack(self) -> bool:
        return self._ndim() == 3 and int(self._header.ispg) == IMAGE_STACK_SPACEGROUP

    def is_volume(self) -> bool:
        return self._ndim() == 3 and int(self._header.ispg) != IMAGE_STACK_SPACEGROUP

    def is_volume_stack(self) -> bool:
        return self._ndim() == 4

    # ---------------------------------------------------------------- printing
    def print_header(self, print_file: TextIO | None = None) -> None:
        """Print every header field, one ``name : value`` line each."""
        out = print_file or sys.stdout
        for name in self._header.dtype.names:
            value = self._header[name]
            if name == "label":
                for i in range(int(self._header.nlabl)):
                    print(f"{'label[' + str(i) + ']':15s} : {bytes(value[i])!r}", file=out)
                continue
            print(f"{name:15s} : {value}", file=out)


def data_shape(h: np.recarray) -> tuple[int, ...]:
    """The data array's shape as MRC2014 reads the header."""
    nx, ny, nz, mz, ispg = (int(h[k]) for k in ("nx", "ny", "nz", "mz", "ispg"))
    if 401 <= ispg <= 630 and mz > 0 and nz % mz == 0 and nz > mz:
        return (nz // mz, mz, ny, nx)
    if nz == 1:
        return (ny, nx)
    return (nz, ny, nx)


def data_dtype(h: np.recarray, byteorder: str, name: str) -> np.dtype:
    mode = int(h.mode) % hdr.MRC_COMP_RATIO
    if mode not in DTYPE_OF_MODE:
        raise FormatError(f"{name}: unrecognised mode {mode}; this reader knows "
                          f"{sorted(DTYPE_OF_MODE)}")
    return np.dtype(byteorder + DTYPE_OF_MODE[mode])
