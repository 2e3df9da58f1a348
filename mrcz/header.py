"""The 1024-byte MRC header: one numpy record, mode tables, parsing and building.

The header is read and written as a single structured numpy record
(:data:`HEADER_DTYPE`), so every field sits at the byte offset MRC2014 gives
it. This module knows nothing about data blocks or compression; it turns bytes
into a :class:`HeaderInfo` and back.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from .errors import FormatError, UnsupportedError

HEADER_BYTES = 1024
MRC_COMP_RATIO = 1000

HEADER_DTYPE = np.dtype([
    ("nx", "<i4"), ("ny", "<i4"), ("nz", "<i4"),
    ("mode", "<i4"),
    ("nxstart", "<i4"), ("nystart", "<i4"), ("nzstart", "<i4"),
    ("mx", "<i4"), ("my", "<i4"), ("mz", "<i4"),
    ("cella", "<f4", (3,)),
    ("cellb", "<f4", (3,)),
    ("mapc", "<i4"), ("mapr", "<i4"), ("maps", "<i4"),
    ("dmin", "<f4"), ("dmax", "<f4"), ("dmean", "<f4"),
    ("ispg", "<i4"),
    ("nsymbt", "<i4"),
    ("mrcz_magic", "S2"),       # b'MZ' marks the two extension bytes that follow
    ("mrcz_dtype", "u1"),       # 1: uint8 data widened to mode 6 on disk
    ("mrcz_clevel", "u1"),      # compression level + 1 (0: not recorded)
    ("extra1", "V4"),
    ("exttyp", "S4"),
    ("nversion", "<i4"),
    ("extra2", "V20"),
    ("voltage", "<f4"), ("C3", "<f4"), ("gain", "<f4"),
    ("packed_bytes", "<i8"),
    ("extra3", "V44"),
    ("origin", "<f4", (3,)),
    ("map", "S4"),
    ("machst", "u1", (4,)),
    ("rms", "<f4"),
    ("nlabl", "<i4"),
    ("label", "S80", (10,)),
])
assert HEADER_DTYPE.itemsize == HEADER_BYTES

# Public tables kept from the original package (mode <-> numpy dtype string).
CCPEM_ENUM = {0: "i1", 1: "i2", 2: "f4", 4: "c8", 6: "u2", 7: "i4", 8: "u4",
              12: "f2", 101: "u1"}
EMAN2_ENUM = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4"}
REVERSE_CCPEM_ENUM = {
    "int8": 0, "i1": 0, "uint4": 101, "int16": 1, "i2": 1, "uint16": 6, "u2": 6,
    "uint8": 6, "u1": 6, "int32": 7, "i4": 7, "uint32": 8, "u4": 8,
    "float16": 12, "f2": 12, "float64": 2, "f8": 2, "float32": 2, "f4": 2,
    "complex128": 4, "c16": 4, "complex64": 4, "c8": 4,
}
COMPRESSOR_ENUM = {0: None, 1: "blosclz", 2: "lz4", 3: "lz4hc", 4: "snappy", 5: "zlib",
                   6: "zstd", 7: "ndlz", 8: "zfp_acc", 9: "zfp_prec", 10: "zfp_rate",
                   11: "openhtj2k", 12: "grok", 13: "openzl", 14: "j2k", 15: "htj2k"}
REVERSE_COMPRESSOR_ENUM = {name: code for code, name in COMPRESSOR_ENUM.items()}

MODE_UINT4 = 101
MODE_COMPLEX_INT16 = 3
DTYPE_UINT8_WIDENED = 1
_MACHST_LITTLE = (0x44, 0x44)
_MACHST_BIG = (0x11, 0x11)
_LABEL_VERSION = re.compile(rb"^MRCZ(\d+)\.(\d+)")


@dataclasses.dataclass
class HeaderInfo:
    """A parsed header with the decisions that follow from it.

    Attributes
    ----------
    record : the raw header as a numpy record, in the file's byte order.
    byteorder : ``'<'`` or ``'>'``.
    mode : MRC mode without the compressor part.
    compressor : codec name, or ``None`` for a plain file.
    dtype : numpy dtype of the data as stored (in the file's byte order).
    shape : ``(nz, ny, nx)``.
    mrcz_version : ``(major, minor)`` from an ``MRCZ<version>`` label, else ``None``.
    """

    record: np.void
    byteorder: str
    mode: int
    compressor: str | None
    dtype: np.dtype
    shape: tuple[int, int, int]
    mrcz_version: tuple[int, int] | None

    @property
    def extended_bytes(self) -> int:
        return int(self.record["nsymbt"])

    @property
    def data_offset(self) -> int:
        return HEADER_BYTES + self.extended_bytes

    @property
    def legacy_mrcz(self) -> bool:
        """True for files labelled MRCZ < 0.5, whose (mx, my, mz) hold garbage."""
        return self.mrcz_version is not None and self.mrcz_version < (0, 5)

    @property
    def mz_is_slices(self) -> bool:
        """True where ``mz`` means "slices per frame": compressed files and plain files
        labelled MRCZ 0.5 up to 0.x (the original package's convention)."""
        if self.legacy_mrcz:
            return False
        original_plain = self.mrcz_version is not None and not self.written_by_us
        return self.compressor is not None or original_plain

    @property
    def written_as_image_stack(self) -> bool:
        """True for a plain image stack (ispg 0, nz > 1) labelled MRCZ >= 1.0: this
        package writes a list of 2-D frames that way, and arrays with ispg 1."""
        return (self.written_by_us and self.compressor is None
                and int(self.record["ispg"]) == 0 and self.shape[0] > 1)

    @property
    def written_by_us(self) -> bool:
        """True for files labelled MRCZ 1.0 or later."""
        return self.mrcz_version is not None and self.mrcz_version >= (1, 0)

    @property
    def widened_uint8(self) -> bool:
        rec = self.record
        return (rec["mrcz_magic"] == b"MZ" and int(rec["mrcz_dtype"]) == DTYPE_UINT8_WIDENED
                and self.mode == 6)

    @property
    def clevel(self) -> int | None:
        rec = self.record
        if rec["mrcz_magic"] == b"MZ" and int(rec["mrcz_clevel"]) > 0:
            return int(rec["mrcz_clevel"]) - 1
        return None

    def voxel_size(self) -> np.ndarray:
        """Voxel size in Angstrom as ``[z, y, x]`` (cella / m, or / n where m is not sampling)."""
        rec = self.record
        cella = np.asarray(rec["cella"], dtype=np.float64)[::-1]
        dims = np.array(self.shape, dtype=np.float64)
        sampling = np.array([rec["mz"], rec["my"], rec["mx"]], dtype=np.float64)
        sampling_known = not (self.mz_is_slices or self.legacy_mrcz)
        divisor = np.where(sampling_known & (sampling > 0), sampling, dims)
        size = cella / np.maximum(divisor, 1.0)
        return size


def _byteorder_from_bytes(raw: bytes, name: str) -> str:
    """Decide the byte order from the machine stamp, or from the mode word."""
    stamp = raw[212], raw[213]
    if stamp[0] == 0x44 and stamp[1] in (0x44, 0x41):
        return "<"
    if stamp[0] == 0x11 and stamp[1] == 0x11:
        return ">"
    # No usable stamp: take the order in which the mode is a small number.
    little = int.from_bytes(raw[12:16], "little", signed=True)
    big = int.from_bytes(raw[12:16], "big", signed=True)
    if 0 <= little < 2**16:
        return "<"
    if 0 <= big < 2**16:
        return ">"
    raise FormatError(f"{name}: not an MRC file (mode word {little} is not a known mode)")


def mode_to_dtype(mode: int, byteorder: str, name: str, convention: str = "ccpem") -> np.dtype:
    """Return the stored numpy dtype of an MRC mode (uint4 is unpacked to uint8)."""
    if convention == "eman2":
        table = EMAN2_ENUM
    elif convention == "ccpem":
        table = CCPEM_ENUM
    else:
        raise ValueError(f"unknown fileConvention {convention!r}; use 'ccpem' or 'eman2'")
    if convention == "ccpem" and mode == MODE_COMPLEX_INT16:
        return np.dtype([("re", byteorder + "i2"), ("im", byteorder + "i2")])
    if mode not in table:
        raise UnsupportedError(f"{name}: unknown {convention.upper()} MRC mode {mode}; known: "
                               f"{sorted(table)}")
    return np.dtype(byteorder + table[mode])


def parse_header(raw: bytes, name: str, convention: str = "ccpem") -> HeaderInfo:
    """Parse the first 1024 bytes of an MRC/MRCZ file.

    Raises
    ------
    FormatError
        If the bytes are too short or the dimensions make no sense.
    UnsupportedError
        If the mode or compressor id is unknown.
    """
    if len(raw) < HEADER_BYTES:
        raise FormatError(f"{name}: file is {len(raw)} bytes, shorter than the 1024-byte "
                          "MRC header")
    byteorder = _byteorder_from_bytes(raw, name)
    version = label_version(raw[224:304])
    if byteorder == ">" and version is not None and version < (0, 6):
        dtype = _legacy_big_endian_dtype(version)
    else:
        dtype = HEADER_DTYPE if byteorder == "<" else HEADER_DTYPE.newbyteorder(">")
    record = np.frombuffer(bytearray(raw[:HEADER_BYTES]), dtype=dtype)[0]
    full_mode = int(record["mode"])
    compressor_id, mode = divmod(full_mode, MRC_COMP_RATIO)
    if compressor_id not in COMPRESSOR_ENUM:
        raise UnsupportedError(f"{name}: unrecognized MRCZ compressor id = {compressor_id} "
                               f"(mode {full_mode}); known ids: {sorted(COMPRESSOR_ENUM)}")
    nx, ny, nz = (int(record[k]) for k in ("nx", "ny", "nz"))
    if min(nx, ny, nz) < 1:
        raise FormatError(f"{name}: invalid dimensions nx={nx}, ny={ny}, nz={nz}")
    nsymbt = int(record["nsymbt"])
    if nsymbt < 0:
        raise FormatError(f"{name}: negative extended header size {nsymbt}")
    return HeaderInfo(
        record=record,
        byteorder=byteorder,
        mode=mode,
        compressor=COMPRESSOR_ENUM[compressor_id],
        dtype=mode_to_dtype(mode, byteorder, name, convention),
        shape=(nz, ny, nx),
        mrcz_version=version,
    )


# Big-endian files from mrcz < 0.6 hold these fields in little-endian order (the
# writers stored numpy scalars in the machine's order); 0.4.x wrote mx, my, mz big.
_LEGACY_LITTLE_FIELDS = ("mode", "mz", "dmin", "dmax", "dmean", "voltage", "C3", "gain",
                         "packed_bytes", "nlabl")


def _legacy_big_endian_dtype(version: tuple[int, int]) -> np.dtype:
    """Header dtype of a big-endian file written by mrcz < 0.6 (mixed byte orders)."""
    little = set(_LEGACY_LITTLE_FIELDS)
    if version < (0, 5):
        little.discard("mz")
    big = HEADER_DTYPE.newbyteorder(">")
    names = list(HEADER_DTYPE.names)
    return np.dtype({
        "names": names,
        "formats": [(HEADER_DTYPE if n in little else big).fields[n][0] for n in names],
        "offsets": [HEADER_DTYPE.fields[n][1] for n in names],
        "itemsize": HEADER_BYTES,
    })


def label_version(label: bytes) -> tuple[int, int] | None:
    """``(major, minor)`` of an ``MRCZ<version>`` label, or ``None``."""
    match = _LABEL_VERSION.match(label)
    return (int(match.group(1)), int(match.group(2))) if match else None


def stored_nbytes(info: HeaderInfo) -> int:
    """Bytes of the uncompressed data block the header describes."""
    nz, ny, nx = info.shape
    if info.mode == MODE_UINT4:
        return nz * ny * ((nx + 1) // 2)
    return nz * ny * nx * info.dtype.itemsize


def new_header(byteorder: str = "<") -> np.ndarray:
    """A zeroed header record (shape ``()``) with the constant MRC2014 fields set."""
    dtype = HEADER_DTYPE if byteorder == "<" else HEADER_DTYPE.newbyteorder(">")
    rec = np.zeros((), dtype=dtype)
    rec["cellb"] = 90.0
    rec["mapc"], rec["mapr"], rec["maps"] = 1, 2, 3
    rec["nversion"] = 20141
    rec["map"] = b"MAP "
    rec["machst"] = (*_MACHST_LITTLE, 0, 0) if byteorder == "<" else (*_MACHST_BIG, 0, 0)
    rec["mrcz_magic"] = b"MZ"
    rec["gain"] = 1.0
    return rec
