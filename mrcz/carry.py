"""What a copy or conversion keeps of its source's header.

A new file's header is built from its data (size, mode, byte order, sampling
along z in MRCZ, statistics where they are computed). Everything else a source
file says about itself is carried over by :func:`onto`: origin, start indices,
axis order, cell angles and sizes, space group, x/y sampling, labels, the
bytes of the "extra" area this package does not use, and the extended header
byte for byte.

Where the output's layout needs a field for itself (MRCZ uses mz, bytes 96-99
and 132-151; a compressed file holds its extended header as JSON), the
source's value goes into the JSON metadata under :data:`DISPLACED_KEY` and is
put back when the file is written plain again. This module knows header
records and bytes only, nothing of data arrays.
"""
from __future__ import annotations

import base64
import dataclasses
import functools

import numpy as np

from . import header as hdr
from . import meta as jsonmeta

#: JSON key holding source header values that the output's layout displaced.
DISPLACED_KEY = "displaced_header"

_MRCZ_LABEL = b"MRCZ"
_KEPT_FIELDS = ("nxstart", "nystart", "nzstart", "mx", "my", "cella", "cellb",
                "mapc", "mapr", "maps", "ispg", "origin", "extra1", "extra2", "extra3")
_OURS_96_99 = slice(96, 100)
_OURS_132_151 = slice(132, 152)


@dataclasses.dataclass(frozen=True)
class Template:
    """A source file's header and raw extended header.

    Attributes
    ----------
    info : the parsed header (its ``record`` in the file's byte order).
    extended : the extended header's bytes.
    name : where it came from, for messages.
    """

    info: hdr.HeaderInfo
    extended: bytes
    name: str

    @property
    def record(self) -> np.void:
        return self.info.record

    @property
    def exttyp(self) -> bytes:
        return bytes(self.record["exttyp"])

    @property
    def json_extended(self) -> bool:
        return self.exttyp == b"json"

    @property
    def compressed(self) -> bool:
        return self.info.compressor is not None

    @property
    def holds_microscope_values(self) -> bool:
        """True when bytes 132-151 are mrcz's voltage, C3 and gain; False where they
        are another program's bytes (kept there, or displaced into the JSON)."""
        return _ours(self) and "bytes_132_151" not in self.earlier

    @functools.cached_property
    def earlier(self) -> dict:
        """What an earlier conversion displaced into this file's JSON (or ``{}``)."""
        if not self.json_extended or not self.extended:
            return {}
        kept = jsonmeta.decode(self.extended, self.name).get(DISPLACED_KEY)
        return kept if isinstance(kept, dict) else {}


def _ours(template: Template) -> bool:
    """True when bytes 96-99 and 132-151 of the source are this package's or mrcz's."""
    return template.info.mrcz_version is not None or bytes(template.record["mrcz_magic"]) == b"MZ"


def _foreign_labels(template: Template) -> list[bytes]:
    rec = template.record
    count = min(max(int(rec["nlabl"]), 0), 10)
    return [bytes(rec["label"][i]) for i in range(count)
            if not bytes(rec["label"][i]).startswith(_MRCZ_LABEL)]


def displaced(template: Template, compressed: bool) -> dict:
    """The source values an output of this kind cannot hold in its header.

    Returns
    -------
    dict
        The :data:`DISPLACED_KEY` entry for the output's JSON (empty when
        nothing is displaced). ``compressed`` outputs displace sampling and cell
        (mx, my, mz, cella) where the sampling is not the grid size, the source's
        bytes 96-99 and 132-151 (when another program wrote them), a non-JSON
        extended header and JSON that another writer spaced or escaped
        differently; every output displaces labels past the ninth.
    """
    rec, out = template.record, {}
    labels = _foreign_labels(template)
    if len(labels) > 9:
        out["labels"] = [label.rstrip(b"\0 ").decode("latin-1") for label in labels[9:]]
    if not compressed:
        return out
    if _sampling_differs(template):
        # MRCZ readers take the voxel size as cella / (nx, ny, nz): the output gets a
        # cell that says the same voxel size that way, the source's are kept here
        out.update(mx=int(rec["mx"]), my=int(rec["my"]), mz=int(rec["mz"]),
                   cella=[float(v) for v in rec["cella"]])
    raw = rec.tobytes()
    if not _ours(template):
        for part in (_OURS_96_99, _OURS_132_151):
            out[f"bytes_{part.start}_{part.stop - 1}"] = raw[part].hex()
    if template.extended and (not template.json_extended or _reencoded(template)):
        out["exttyp"] = template.exttyp.decode("latin-1")
        out["extended_header"] = base64.b64encode(template.extended).decode("ascii")
    return out


def _own_json(template: Template) -> dict:
    """The source's JSON metadata without what an earlier conversion displaced."""
    meta = jsonmeta.decode(template.extended, template.name)
    meta.pop(DISPLACED_KEY, None)
    return meta


def _reencoded(template: Template) -> bool:
    """True when writing a plain source's JSON anew would change its bytes (another
    writer's spacing or escapes, no padding), so they are kept as they are."""
    if template.compressed:
        return False
    meta = jsonmeta.decode(template.extended, template.name)
    return DISPLACED_KEY not in meta and jsonmeta.encode(meta) != template.extended


def _sampling_differs(template: Template) -> bool:
    """True for a plain source whose sampling (mx, my, mz) is not its grid size."""
    rec = template.record
    return not template.compressed and any(int(rec[m]) != int(rec[n]) for m, n in
                                           (("mx", "nx"), ("my", "ny"), ("mz", "nz")))


def output_meta(template: Template, meta: dict | None, compressed: bool) -> dict | None:
    """The JSON metadata to write: ``meta`` with the displaced values of ``template``
    added (``compressed`` output) or taken out again (plain output)."""
    meta = dict(meta) if meta else {}
    meta.pop(DISPLACED_KEY, None)
    now = displaced(template, compressed)
    if compressed:
        now = {**template.earlier, **now}  # what the source's own source displaced
    if now:
        meta[DISPLACED_KEY] = now
    return meta or None


def plain_extended(template: Template, meta: dict | None) -> tuple[bytes, bytes] | None:
    """``(exttyp, bytes)`` of the extended header a plain output restores from its
    source, or ``None`` when the output writes its own JSON (or none).

    That is the source's own extended header, or the one an MRCZ source displaced
    into its JSON; a JSON one only while ``meta`` (the output's metadata) is what
    it holds, so the bytes stay as they were.

    Raises
    ------
    ValueError
        When a non-JSON extended header and JSON metadata would both be needed.
    """
    if template.extended and not template.json_extended:
        exttyp, raw = template.exttyp, template.extended
    elif "extended_header" in template.earlier:
        kept = template.earlier
        exttyp = str(kept.get("exttyp", "")).encode("latin-1")[:4]
        raw = base64.b64decode(kept["extended_header"])
    elif template.extended and not template.compressed:
        exttyp, raw = template.exttyp, template.extended
    else:
        return None
    if exttyp == b"json":
        same = jsonmeta.decode(raw, template.name) == (meta or {})
        return (exttyp, raw) if same else None
    if meta:
        raise ValueError(f"a plain file holds one extended header, either {template.name}'s "
                         f"{exttyp.decode('latin-1')!r} one or JSON metadata "
                         f"({sorted(meta)}); write MRCZ to keep both, or leave out meta")
    return exttyp, raw


def onto(template: Template, rec: np.ndarray, compressed: bool) -> None:
    """Copy the fields of ``template`` that ``rec``'s layout does not decide onto ``rec``.

    ``rec`` is a new file's header record (shape ``()``). A plain output also
    takes back the values an MRCZ source displaced into its JSON.
    """
    src = template.record
    keep_cell = not (compressed and _sampling_differs(template))
    for field in _KEPT_FIELDS:
        if keep_cell or field not in ("mx", "my", "cella"):
            rec[field] = src[field]
    labels = [bytes(rec["label"][0])] + _foreign_labels(template)[:9]
    rec["nlabl"] = len(labels)
    for i, label in enumerate(labels):
        rec["label"][i] = label
    if compressed:
        return
    kept = template.earlier
    if "mz" in kept:
        rec["mz"] = int(kept["mz"])
    elif not template.compressed:
        rec["mz"] = src["mz"]
    for field in ("mx", "my", "cella"):
        if field in kept:
            rec[field] = kept[field]
    if int(rec["mrcz_dtype"]):
        return  # bytes 96-99 mark uint8 data: the new file's own layout
    for part in (_OURS_96_99, _OURS_132_151):
        key = f"bytes_{part.start}_{part.stop - 1}"
        if not _ours(template):
            _put_bytes(rec, part, src.tobytes()[part])
        elif key in kept:
            _put_bytes(rec, part, bytes.fromhex(kept[key]))


def statistics_onto(template: Template, rec: np.ndarray) -> None:
    """Keep the source's statistics where it records them (the values are the same
    data's); where it marks them "not known" ``rec`` keeps its own."""
    src = template.record
    if float(src["dmax"]) >= float(src["dmin"]):  # MRC2014: dmax < dmin is "not known"
        rec["dmin"], rec["dmax"], rec["dmean"] = src["dmin"], src["dmax"], src["dmean"]
    if float(src["rms"]) >= 0:
        rec["rms"] = src["rms"]


def _put_bytes(rec: np.ndarray, part: slice, value: bytes) -> None:
    """Overwrite bytes ``part`` of the header record ``rec`` with ``value``."""
    rec.reshape(1).view(np.uint8)[part] = np.frombuffer(value, dtype=np.uint8)
