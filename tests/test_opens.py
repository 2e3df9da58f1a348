"""The `mrcz` command line opens each input file once.

Every command runs in a child process whose ``sys.addaudithook`` hook counts the
``open`` events (``open()``, ``os.open``, ``io.open``, memory maps) naming the
input, so the hook never reaches the other tests.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mrcz
from mrcz import frameindex, wholefile

#: Run in the child: count the opens of argv[1], run mrcz.cli.main(argv[3:]), write
#: ``{"opens": n, "status": exit status}`` to argv[2].
CHILD = r"""
import json, os, sys
target, report, argv = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3:]
opens = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.path.realpath(os.fsdecode(args[0])) == target:
            opens.append(args[1])
sys.addaudithook(hook)
from mrcz.cli import main
status = main(argv)
seen = len(opens)
with open(report, "w") as f:
    json.dump({"opens": seen, "status": status}, f)
"""


def count_opens(tmp_path: Path, input_path: Path, *argv: str) -> dict:
    """``{"opens": times input_path was opened, "status": exit status}`` of ``mrcz argv``."""
    report = tmp_path / "opens.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(input_path), str(report), *argv],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert report.exists(), done.stderr
    return json.loads(report.read_text())


def make_inputs(folder: Path) -> dict[str, Path]:
    """Small inputs of every kind in ``folder``: plain, MRCZ, plain in gzip and zstd,
    MRCZ in gzip."""
    data = np.random.default_rng(3).poisson(2.0, (3, 32, 24)).astype(np.float32)
    folder.mkdir()
    made = {"mrc": folder / "a.mrc", "mrcz": folder / "b.mrcz", "gz": folder / "c.mrc.gz",
            "zst": folder / "d.mrc.zst", "mrcz.gz": folder / "e.mrcz.gz"}
    kwargs = dict(pixelsize=1.5, voltage=300.0, meta={"detector": "K3"})
    mrcz.writeMRC(data, made["mrc"], **kwargs)
    mrcz.writeMRC(data, made["mrcz"], compressor="zstd", **kwargs)
    mrcz.writeMRC(data, made["gz"], **kwargs)
    mrcz.writeMRC(data, made["zst"], **kwargs)
    with open(made["mrcz.gz"], "wb") as f:
        wholefile.compress_to(f, "gzip", made["mrcz"].read_bytes())
    return made


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    return make_inputs(tmp_path / "in")


#: (what the command reads, the mrcz arguments; {out} is a fresh output name)
COMMANDS = {
    "compress": ("mrc", ["compress", "{in}", "-o", "{out}.mrcz"]),
    "compress .gz": ("gz", ["compress", "{in}", "-o", "{out}.mrcz"]),
    "compress --verify": ("mrc", ["compress", "--verify", "{in}", "-o", "{out}.mrcz"]),
    "decompress .mrcz": ("mrcz", ["decompress", "{in}", "-o", "{out}.mrc"]),
    "decompress .mrcz.gz": ("mrcz.gz", ["decompress", "{in}", "-o", "{out}.mrc"]),
    "convert": ("mrcz", ["convert", "{in}", "{out}.mrc.zst"]),
    "convert .zst": ("zst", ["convert", "{in}", "{out}.mrcz"]),
    "info": ("mrc", ["info", "{in}"]),
    "info --json --header --frames": ("mrcz", ["info", "--json", "--header", "--frames",
                                               "{in}"]),
    "info .gz": ("gz", ["info", "--frames", "{in}"]),
    "info .mrcz.gz": ("mrcz.gz", ["info", "--frames", "{in}"]),
    "validate": ("mrc", ["validate", "{in}"]),
    "validate --deep": ("mrcz", ["validate", "--deep", "{in}"]),
    "validate .gz": ("gz", ["validate", "{in}"]),
    "validate .mrcz.gz": ("mrcz.gz", ["validate", "{in}"]),
    "verify": ("mrcz", ["verify", "{in}"]),
    "preview": ("mrcz", ["preview", "{in}", "-o", "{out}.png"]),
    "preview .gz": ("gz", ["preview", "--sum", "{in}", "-o", "{out}.png"]),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_opens_its_input_once(tmp_path, inputs, command) -> None:
    kind, argv = COMMANDS[command]
    source = inputs[kind]
    argv = [a.format(**{"in": str(source), "out": str(tmp_path / "out")}) for a in argv]
    seen = count_opens(tmp_path, source, *argv)
    assert seen["opens"] == 1, f"mrcz {' '.join(argv)}: {seen}"
    if command.startswith("preview") and importlib.util.find_spec("PIL") is None:
        return  # writing the PNG needs Pillow; the input has been read by then
    assert seen["status"] == 0, f"mrcz {' '.join(argv)}: {seen}"


def test_index_opens_each_file_once(tmp_path, inputs) -> None:
    path = inputs["mrcz"]
    raw = path.read_bytes()
    bare = bytearray(raw[:-frameindex.trailer_bytes(3)])  # as written before frame indexes
    bare[144:152] = (len(bare) - 1024).to_bytes(8, "little")
    path.write_bytes(bytes(bare))
    seen = count_opens(tmp_path, path, "index", str(path.parent))
    assert path.stat().st_size == len(raw)  # the index is back
    assert seen == {"opens": 1, "status": 0}


def test_the_count_sees_every_open(tmp_path, inputs) -> None:
    """The hook counts every open: a file named twice is opened twice (a hook that
    missed opens, or counted one per process, would fail here)."""
    source = str(inputs["mrcz"])
    seen = count_opens(tmp_path, inputs["mrcz"], "info", "--frames", source, source)
    assert seen == {"opens": 2, "status": 0}
