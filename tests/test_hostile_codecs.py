"""A crafted chunk never reaches a codec library that could load a plugin.

blosc2 answers a user-defined codec or filter id by running Python to import a
plugin module, and Python looks in the current folder first. Each case here plants
such modules beside a crafted file and runs every reading entry point in a fresh
interpreter in that folder: nothing may run, and each refusal names the file and frame.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from mrcz import codec

blosc2 = pytest.importorskip("blosc2", reason="blosc2 not installed: no plugin loader to attack")

PLUGIN_NAMES = ["grok", "openhtj2k", "openzl", "j2k", "htj2k", "ndlz", "zfp", "plugin"]
FRAME = 1  # the crafted chunk is the second of three: errors must name it


def _header_offset(raw: bytes, frame: int) -> int:
    offset = 1024 + int.from_bytes(raw[92:96], "little")
    for _ in range(frame):
        offset += codec.ChunkHeader.parse(raw[offset:offset + 16]).cbytes
    return offset


def _set_codec(chunk: bytearray, fmt: int, codec_id: int) -> None:
    chunk[2] = (chunk[2] & 0x1F) | (fmt << 5)
    chunk[22] = codec_id


CASES = {
    "user codec 37 (grok)": lambda c: _set_codec(c, 6, 37),
    "user codec 36": lambda c: _set_codec(c, 6, 36),
    "user codec 160": lambda c: _set_codec(c, 6, 160),
    "user codec 255": lambda c: _set_codec(c, 6, 255),
    "codec in super-chunk": lambda c: _set_codec(c, 7, 5),
    "codec id 37 under zstd format": lambda c: _set_codec(c, 4, 37),
    "user filter 200": lambda c: c.__setitem__(16, 200),
    "registered filter 35": lambda c: c.__setitem__(19, 35),
    "lazy chunk": lambda c: c.__setitem__(31, 0x08),
    "codec elsewhere flag": lambda c: c.__setitem__(31, 0x04),
    "unknown version": lambda c: c.__setitem__(0, 9),
}

PROBE = r"""
import sys, warnings, mrcz
from mrcz.errors import CorruptDataError
name = sys.argv[1]
for label, call in [("readMRC", lambda: mrcz.readMRC(name)),
                    ("readMRC idx", lambda: mrcz.readMRC(name, idx=1)),
                    ("MRCZReader", lambda: list(mrcz.MRCZReader(name)))]:
    try:
        call()
    except CorruptDataError as err:
        print(label, "|", err)
    else:
        print(label, "| NO ERROR")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    frames, _ = mrcz.readMRC(name, permissive=True)
print("permissive", "|", frames.shape, *[str(w.message) for w in caught])
"""


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "good.mrcz"
    frames = np.arange(3 * 64 * 64, dtype=np.uint16).reshape(3, 64, 64)
    import mrcz
    mrcz.writeMRC(frames, str(path), compressor="zstd", backend="blosc2")
    raw = path.read_bytes()
    assert codec.ChunkHeader.parse(raw[_header_offset(raw, FRAME):][:16]).version >= 3
    return raw


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_chunk_runs_nothing(tmp_path, good_file, case):
    raw = bytearray(good_file)
    offset = _header_offset(raw, FRAME)
    chunk = raw[offset:offset + 32]
    CASES[case](chunk)
    raw[offset:offset + 32] = chunk
    (tmp_path / "evil.mrcz").write_bytes(bytes(raw))
    marker = tmp_path / "PLUGIN_RAN"
    for name in PLUGIN_NAMES:
        (tmp_path / f"blosc2_{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r})\n"
            "def print_libpath():\n    print('/nonexistent/lib.so')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the package under test
    probe = subprocess.run([sys.executable, "-c", PROBE, "evil.mrcz"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    cli = [subprocess.run([sys.executable, "-m", "mrcz", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
           for args in (["validate", "evil.mrcz"], ["decompress", "evil.mrcz"],
                        ["info", "evil.mrcz"])]
    assert not marker.exists(), f"a plugin module ran: {marker.read_text()}"
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert len(lines) == 4 and "NO ERROR" not in probe.stdout, probe.stdout
    for line in lines[:3]:  # every refusal names the file and the crafted frame (chunk 1)
        assert "evil.mrcz" in line and "chunk 1 " in line, line
    assert lines[3] == "permissive | (64, 64) evil.mrcz: damaged file; recovered 1 of 3 slices"
    assert cli[0].returncode != 0 and "INVALID" in cli[0].stdout
    assert cli[1].returncode != 0 and "evil.mrcz" in cli[1].stderr
    assert not (tmp_path / "evil.mrc").exists()


def test_known_codecs_pass_the_gate():
    frame = np.arange(4096, dtype=np.float32)
    for cname in ("blosclz", "lz4", "lz4hc", "zlib", "zstd"):
        for filt in (blosc2.Filter.NOFILTER, blosc2.Filter.SHUFFLE, blosc2.Filter.BITSHUFFLE):
            chunk = blosc2.compress2(frame, codec=blosc2.Codec[cname.upper()], clevel=5,
                                     filters=[filt], typesize=4)
            assert codec.chunk_risk(chunk) is None, (cname, filt)
            out = np.empty_like(frame)
            codec.decompress_into(chunk, out, "x")
            assert np.array_equal(out, frame)
        chunk = codec.compress_frame(frame, cname, 5, 0)  # blosc 1.x
        assert codec.chunk_risk(chunk) is None
