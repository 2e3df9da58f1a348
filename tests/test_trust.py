"""Attacks on trust (issue 15): values, concurrent writers, round trips, targets,
exits, bombs, leftovers and errors. Each attack must fail safely.

Attacks that could run away (memory, time) run in a subprocess under an
address-space limit (``resource.setrlimit``) and a timeout; the subprocess
reports its peak memory, which must stay within :data:`SMALL_INPUT_BYTES` of
what importing and using mrcz costs anyway.
"""
from __future__ import annotations

import bz2
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import mrcz
from mrcz import dm, fileops, meta as jsonmeta
from mrcz.errors import CorruptDataError, FormatError, MRCZError, UnsupportedError

import dm_builders as dmb

REPO = Path(__file__).resolve().parent.parent
#: What a tiny hostile input may cost beyond the baseline of the same script.
SMALL_INPUT_BYTES = 200 * 2**20
#: Address space granted to attack subprocesses (baseline mrcz + numpy is ~400 MB).
ADDRESS_LIMIT = 1536 * 2**20

LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.path.insert(0, {repo!r})
import mrcz
def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""


def run_limited(body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh python with the address-space limit; fail on timeout."""
    code = LIMITED.format(limit=ADDRESS_LIMIT, repo=str(REPO)) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, check=False)


def peak_of(body: str) -> tuple[int, subprocess.CompletedProcess]:
    """Peak RSS of ``body`` (which must print ``peak_rss()`` last) and the run."""
    run = run_limited(body + "\nprint(peak_rss())\n")
    assert run.returncode == 0, run.stderr
    return int(run.stdout.split()[-1]), run


BASELINE = """
import numpy as np
mrcz.writeMRC(np.zeros((2, 64, 64), np.int8), {path!r}, compressor="zstd")
mrcz.readMRC({path!r})
"""


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory) -> int:
    path = str(tmp_path_factory.mktemp("baseline") / "b.mrcz")
    return peak_of(BASELINE.format(path=path))[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if fileops.is_partial_name(p.name))


# ----------------------------------------------------------------------------- 2 values

@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_append_refuses_values_the_file_cannot_hold(tmp_path, compressor):
    path = tmp_path / "a.mrc"
    mrcz.writeMRC(np.ones((2, 4, 4), np.int8), path, compressor=compressor)
    before = path.read_bytes()
    bad = np.full((1, 4, 4), 3.0, np.float32)
    bad[0, 0, :] = [3.7, 1e6, 300, np.nan]
    with pytest.raises(ValueError) as caught:
        mrcz.writeMRC(bad, path, compressor=compressor, idx=2)
    assert str(path) in str(caught.value) and "int8" in str(caught.value)
    assert path.read_bytes() == before
    bad[0, 0, :] = [3.7, 1e6, 300, 4]
    with pytest.raises(ValueError, match=r"fractional|1000000"):
        mrcz.writeMRC(bad, path, compressor=compressor, idx=2)
    assert path.read_bytes() == before
    # whole numbers in range are kept exactly; casting='unsafe' casts as numpy does
    good = np.full((1, 4, 4), -7.0, np.float32)
    mrcz.writeMRC(good, path, compressor=compressor, idx=2)
    np.testing.assert_array_equal(mrcz.readMRC(path)[0][2], good[0].astype(np.int8))
    mrcz.writeMRC(np.full((1, 4, 4), 300, np.int16), path, compressor=compressor, idx=3,
                  casting="unsafe")
    assert mrcz.readMRC(path)[0][3, 0, 0] == np.int16(300).astype(np.int8)


def test_uint16_file_refuses_negative_and_large(tmp_path):
    path = tmp_path / "u.mrc"
    mrcz.writeMRC(np.zeros((1, 2, 2), np.uint16), path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"-1\.\.70000.*0\.\.65535"):
        mrcz.writeMRC(np.array([[[-1, 70000], [0, 0]]]), path, idx=0)
    assert path.read_bytes() == before
    with pytest.raises(TypeError, match="casting='safe'"):
        mrcz.writeMRC(np.array([[[1, 2], [3, 4]]], np.int32), path, idx=1, casting="safe")
    with pytest.raises(ValueError, match="casting must be"):
        mrcz.writeMRC(np.zeros((1, 2, 2), np.uint16), path, idx=1, casting="maybe")
    assert path.read_bytes() == before


def test_mrczwriter_refuses_wrapping_integers(tmp_path):
    path = tmp_path / "w.mrcz"
    with mrcz.MRCZWriter(path, (4, 4), np.int8, compressor="zstd") as writer:
        writer.write(np.full((4, 4), 5, np.int16))  # fits: kept
        with pytest.raises(ValueError, match=r"w\.mrcz.*300"):
            writer.write(np.full((4, 4), 300, np.int16))
        writer.write(np.full((4, 4), -5, np.int64))
    np.testing.assert_array_equal(mrcz.readMRC(path)[0][:, 0, 0], [5, -5])


# ----------------------------------------------------------------------------- 3 locks

APPENDER = """
import numpy as np, mrcz, sys
from mrcz.errors import UnsupportedError
path, me, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
done = 0
while done < count:
    nz = int(mrcz.readMRCHeader(path)[0]["dimensions"][0])
    frame = np.full((1, 64, 64), me * 1000 + done, np.int32)
    try:
        mrcz.writeMRC(frame, path, compressor="zstd", idx=nz)
    except UnsupportedError:  # another appender was first: nz is stale, try again
        continue
    done += 1
"""


def check_appended(path: Path, writers: int, count: int) -> None:
    data, _ = mrcz.readMRC(path)
    values = data[1:, 0, 0].tolist()
    assert sorted(values) == sorted(w * 1000 + k for w in range(writers) for k in range(count))
    for w in range(writers):  # each writer's frames in its order
        mine = [v for v in values if v // 1000 == w]
        assert mine == sorted(mine)
    assert (data == data[:, :1, :1]).all()  # no frame torn


def test_two_processes_appending_lose_nothing(tmp_path):
    path = tmp_path / "shared.mrcz"
    mrcz.writeMRC(np.full((1, 64, 64), -1, np.int32), path, compressor="zstd")
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(w), "15"],
                              cwd=REPO, stderr=subprocess.PIPE) for w in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    check_appended(path, 2, 15)
    assert leftovers(tmp_path) == []


def test_two_threads_appending_lose_nothing(tmp_path):
    path = tmp_path / "shared.mrcz"
    mrcz.writeMRC(np.full((1, 64, 64), -1, np.int32), path, compressor="zstd")
    errors = []

    def append(me: int) -> None:
        done = 0
        try:
            while done < 15:
                nz = int(mrcz.readMRCHeader(path)[0]["dimensions"][0])
                try:
                    mrcz.writeMRC(np.full((1, 64, 64), me * 1000 + done, np.int32), path,
                                  compressor="zstd", idx=nz, n_threads=1)
                except UnsupportedError:
                    continue
                done += 1
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    check_appended(path, 2, 15)


def test_replacing_waits_for_an_update_in_place(tmp_path):
    """A rename over a file being updated waits; the update then lands in the old inode
    only if it finished before: nothing is lost silently."""
    path = tmp_path / "f.mrc"
    mrcz.writeMRC(np.zeros((1, 8, 8), np.int8), path)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with fileops.open_for_update(path):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(10)
    replacer = threading.Thread(
        target=mrcz.writeMRC, args=(np.ones((1, 8, 8), np.int8), path))
    replacer.start()
    replacer.join(0.3)
    assert replacer.is_alive()  # waiting for the lock
    release.set()
    holder.join(10)
    replacer.join(10)
    assert mrcz.readMRC(path)[0].max() == 1


def test_mrczwriter_from_two_threads(tmp_path):
    path = tmp_path / "t.mrcz"
    with mrcz.MRCZWriter(path, (32, 32), np.int32, compressor="zstd", n_threads=2) as writer:
        def feed(me: int) -> None:
            for k in range(40):
                writer.write(np.full((32, 32), me * 1000 + k, np.int32))

        threads = [threading.Thread(target=feed, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    data, _ = mrcz.readMRC(path)
    values = data[:, 0, 0].tolist()
    assert sorted(values) == sorted(w * 1000 + k for w in range(2) for k in range(40))
    for w in range(2):
        mine = [v for v in values if v // 1000 == w]
        assert mine == sorted(mine)


# ----------------------------------------------------------------------------- 4 round trip

@pytest.mark.parametrize("slices", [3, 2])
def test_meta_slices_that_would_regroup_is_refused(tmp_path, slices):
    path = tmp_path / "s.mrc"
    with pytest.raises(ValueError, match=r"s\.mrc.*slices"):
        mrcz.writeMRC(np.zeros((6, 4, 4), np.float32), path, meta={"slices": slices})
    assert not path.exists() and leftovers(tmp_path) == []


def test_meta_slices_kept_where_it_means_nothing(tmp_path):
    path = tmp_path / "s.mrcz"
    mrcz.writeMRC(np.zeros((6, 4, 4), np.float32), path, meta={"slices": 3},
                  compressor="zstd")
    image, header = mrcz.readMRC(path)
    assert isinstance(image, np.ndarray) and image.shape == (6, 4, 4)
    assert header["slices"] == 3
    mrcz.writeMRC([np.zeros((4, 4), np.float32)] * 2, tmp_path / "l.mrc", meta={"slices": 1})
    assert len(mrcz.readMRC(tmp_path / "l.mrc")[0]) == 2


def test_meta_too_deep_or_too_large_is_refused_at_write(tmp_path, monkeypatch):
    deep: dict = {}
    node = deep
    for _ in range(jsonmeta.MAX_META_DEPTH + 1):
        node["a"] = {}
        node = node["a"]
    path = tmp_path / "d.mrc"
    with pytest.raises(MRCZError, match=r"d\.mrc.*deeper"):
        mrcz.writeMRC(np.zeros((2, 2), np.int8), path, meta=deep)
    monkeypatch.setattr(jsonmeta, "MAX_META_BYTES", 1000)
    with pytest.raises(MRCZError, match=r"d\.mrc.*1000-byte"):
        mrcz.writeMRC(np.zeros((2, 2), np.int8), path, meta={"x": "y" * 2000})
    assert not path.exists() and leftovers(tmp_path) == []
    # just inside the limits: read back as written
    ok = {"x": "y" * 900}
    mrcz.writeMRC(np.zeros((2, 2), np.int8), path, meta=ok)
    assert mrcz.readMRC(path)[1]["x"] == ok["x"]


@pytest.mark.parametrize("key", ["dimensions", "dtype", "compressor", "endian", "metaId"])
def test_meta_keys_hidden_by_header_fields_are_refused(tmp_path, key):
    path = tmp_path / "k.mrc"
    with pytest.raises(ValueError, match=key):
        mrcz.writeMRC(np.zeros((2, 2), np.int8), path, meta={key: "mine"})
    assert not path.exists()


# ----------------------------------------------------------------------------- 5 targets

@pytest.mark.parametrize("name", ["ro.mrc", "ro.mrcz", "ro.mrc.gz"])
def test_read_only_file_is_not_replaced(tmp_path, name):
    path = tmp_path / name
    mrcz.writeMRC(np.zeros((2, 2), np.int8), path)
    before = path.read_bytes()
    path.chmod(0o444)
    writes = [lambda: mrcz.writeMRC(np.ones((2, 2), np.int8), path)]
    if name.endswith(".mrcz"):
        writes.append(lambda: mrcz.MRCZWriter(path, (2, 2), np.int8, compressor="zstd"))
    for write in writes:
        with pytest.raises(PermissionError) as caught:
            write()
        assert caught.value.filename == str(path) and caught.value.errno == errno.EACCES
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert leftovers(tmp_path) == []


def test_directory_and_fifo_targets_are_refused(tmp_path):
    folder = tmp_path / "dir.mrc"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        mrcz.writeMRC(np.zeros((2, 2), np.int8), folder)
    assert caught.value.filename == str(folder)
    fifo = tmp_path / "pipe.mrc"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="FIFO") as caught:
        mrcz.writeMRC(np.zeros((2, 2), np.int8), fifo)
    assert caught.value.errno == errno.EINVAL and caught.value.filename == str(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["x.mrc", "x.mrcz", "x.mrc.gz"])
def test_symlink_target_is_replaced_and_link_kept(tmp_path, name):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / name
    mrcz.writeMRC(np.zeros((2, 2), np.int8), target)
    link = tmp_path / name
    link.symlink_to(target)
    if name.endswith(".mrcz"):
        with mrcz.MRCZWriter(link, (2, 2), np.int8, compressor="zstd") as writer:
            writer.write(np.full((2, 2), 7, np.int8))
    else:
        mrcz.writeMRC(np.full((2, 2), 7, np.int8), link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert mrcz.readMRC(target)[0].max() == 7
    assert leftovers(tmp_path) == [] and leftovers(real_dir) == []


# ----------------------------------------------------------------------------- 6 exits

SLOW_WRITES = """
import sys, time, numpy as np
sys.path.insert(0, {repo!r})
import mrcz.futures as fu

class Slow:
    shape, dtype = (8, 64, 64), np.dtype(np.int16)
    def __init__(self, value): self.value = value
    def __getitem__(self, z):
        time.sleep({delay})
        return np.full((64, 64), self.value, np.int16)

for i in range(8):
    fu.asyncWriteMRC(Slow(i), r"{folder}/%d.mrc" % i, n_threads=1)
print("submitted", flush=True)
"""


def start_slow_writes(folder: Path, delay: float) -> subprocess.Popen:
    for i in range(8):  # old versions that an abandoned write must leave alone
        mrcz.writeMRC(np.full((2, 2), -1, np.int16), folder / f"{i}.mrc")
    code = SLOW_WRITES.format(repo=str(REPO), folder=folder, delay=delay)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"submitted"
    return proc


def test_ctrl_c_at_exit_still_completes_pending_writes(tmp_path):
    proc = start_slow_writes(tmp_path, 0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert b"finishing" in err and b"Ctrl-C again" in err
    assert proc.returncode == 130
    for i in range(8):
        assert mrcz.readMRC(tmp_path / f"{i}.mrc")[0].tolist() == np.full(
            (8, 64, 64), i).tolist()
    assert leftovers(tmp_path) == []


def test_second_ctrl_c_abandons_naming_files(tmp_path):
    proc = start_slow_writes(tmp_path, 0.3)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"abandoned" in err
    for i in range(8):
        image = mrcz.readMRC(tmp_path / f"{i}.mrc")[0]
        if image.shape == (2, 2):  # not finished: the old version, named on stderr
            assert (image == -1).all()
            assert str(tmp_path / f"{i}.mrc").encode() in err
        else:
            assert (image == i).all()
    assert leftovers(tmp_path) == []


def test_awrite_pending_when_asyncio_run_returns_completes(tmp_path):
    code = f"""
import asyncio, sys, numpy as np
sys.path.insert(0, {str(REPO)!r})
import mrcz.futures as fu
async def main():
    for i in range(4):
        asyncio.ensure_future(fu.awrite_mrc(np.full((4, 64, 64), i, np.int16),
                                            r"{tmp_path}/%d.mrc" % i))
asyncio.run(main())
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                         check=False)
    assert run.returncode == 0, run.stderr
    for i in range(4):
        assert (mrcz.readMRC(tmp_path / f"{i}.mrc")[0] == i).all()


# ----------------------------------------------------------------------------- 7 bombs

def test_trailing_zeros_after_bz2_stream_bounded(tmp_path, baseline_rss):
    image = np.arange(4, dtype=np.float32).reshape(2, 2)
    plain = tmp_path / "p.mrc"
    mrcz.writeMRC(image, plain)
    compressor = bz2.BZ2Compressor(9)
    parts = [compressor.compress(plain.read_bytes())]
    zeros = bytes(2**20)
    for _ in range(64):  # 64 MiB of zeros: a few kB compressed
        parts.append(compressor.compress(zeros))
    parts.append(compressor.flush())
    bomb = tmp_path / "bomb.mrc.bz2"
    bomb.write_bytes(b"".join(parts))
    assert bomb.stat().st_size < 100_000
    peak, run = peak_of(f"""
import time
start = time.process_time()
try:
    mrcz.readMRC({str(bomb)!r})
except mrcz.MRCZError as err:
    print("refused", err)
print(time.process_time() - start)
""")
    assert f"refused {bomb}" in run.stdout and "accounts for" in run.stdout
    assert float(run.stdout.split()[-2]) < 2.0  # CPU seconds: decoding stops early
    assert peak - baseline_rss < SMALL_INPUT_BYTES


def test_json_memory_bomb_refused(tmp_path, baseline_rss):
    path = tmp_path / "j.mrc"
    mrcz.writeMRC(np.zeros((2, 2), np.int8), path, meta={"x": 1})
    raw = path.read_bytes()
    bomb_meta = b'{"x": [' + b"[]," * 3_000_000 + b"[]]}"
    bomb_meta += b" " * (-len(bomb_meta) % 4)
    header = bytearray(raw[:1024])
    header[92:96] = np.int32(len(bomb_meta)).tobytes()
    path.write_bytes(bytes(header) + bomb_meta + raw[1024 + int(np.frombuffer(
        raw[92:96], np.int32)[0]):])
    peak, run = peak_of(f"""
try:
    mrcz.readMRC({str(path)!r})
except mrcz.MRCZError as err:
    print("refused", err)
""")
    assert f"refused {path}" in run.stdout and "values" in run.stdout
    assert peak - baseline_rss < SMALL_INPUT_BYTES


def test_dm_layout_flood_is_capped_and_leaves_no_cache(tmp_path, baseline_rss):
    """300 distinct 2000-field struct layouts: parsed within the memory cap, and
    nothing kept after the read fails (the last tag is broken). With mrcz 1.0's
    module-level layout cache ~7 MB stayed behind (1.4 GB with 4096 larger ones)."""
    tags = {f"t{k}": dmb.struct_tag([dmb.CHAR] * 1999 + [dmb.SHORT if k % 2 else dmb.LONG]
                                    + [dmb.CHAR] * (k % 7), [0] * (2000 + k % 7))
            for k in range(300)}
    raw = dmb.to_bytes(dmb.encode({"Junk": tags}))
    path = tmp_path / "flood.dm4"
    last = raw.rindex(b"%%%%")
    path.write_bytes(raw[:last] + b"XXXX" + raw[last + 4:])  # the read fails at the end
    peak, run = peak_of(f"""
import gc, tracemalloc
from mrcz import dm
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
try:
    dm.readDM({str(path)!r})
except mrcz.MRCZError as err:
    print("refused", type(err).__name__)
gc.collect()
print("kept", tracemalloc.get_traced_memory()[0] - before)
tracemalloc.stop()
""")
    assert "refused" in run.stdout
    kept = int(run.stdout.split("kept")[1].split()[0])
    assert kept < 2**20
    assert peak - baseline_rss < SMALL_INPUT_BYTES
    assert not hasattr(dm._decode_layout, "cache_info")


# ----------------------------------------------------------------------------- 8 leftovers

KILLED_WRITER = """
import sys, time, numpy as np
sys.path.insert(0, {repo!r})
import mrcz

class Slow:
    shape, dtype = (100, 64, 64), np.dtype(np.int16)
    def __getitem__(self, z):
        if z == 2:
            print("writing", flush=True)
            time.sleep(60)
        return np.zeros((64, 64), np.int16)

mrcz.writeMRC(Slow(), {path!r}, n_threads=1)
"""


def kill_writer_midway(path) -> int:
    """Start a writer of ``path``, kill -9 it while it writes; returns its pid."""
    proc = subprocess.Popen([sys.executable, "-c",
                             KILLED_WRITER.format(repo=str(REPO), path=str(path))],
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    proc.kill()
    proc.wait(10)
    return proc.pid


def test_kill_9_leftover_removed_by_next_write_and_clean(tmp_path):
    path = tmp_path / "k.mrc"
    mrcz.writeMRC(np.zeros((2, 2), np.int8), path)
    before = path.read_bytes()
    pid = kill_writer_midway(path)
    dead = leftovers(tmp_path)
    assert len(dead) == 1 and f".mrcz-partial.{pid}." in dead[0]
    assert path.read_bytes() == before  # never replaced by the killed writer
    # a live writer's temp file stays
    with fileops.atomic_output(tmp_path / "other.mrc", clean=False) as f:
        f.write(b"x")
        live = next(p for p in tmp_path.iterdir() if p.name.startswith(".other.mrc."))
        assert [p.name for p in fileops.clean_folder(tmp_path, dry_run=True)] == dead
        removed = fileops.clean_folder(tmp_path)
        assert [p.name for p in removed] == dead and live.exists()
    assert leftovers(tmp_path) == []
    # and the next write into the folder removes leftovers by itself
    kill_writer_midway(path)
    assert len(leftovers(tmp_path)) == 1
    fileops._last_scan.clear()
    mrcz.writeMRC(np.ones((2, 2), np.int8), tmp_path / "next.mrc")
    assert leftovers(tmp_path) == []


def test_clean_command(tmp_path):
    stale = tmp_path / f".a.mrc.mrcz-partial.999999999.{fileops._HOST}deadbeef"
    stale.write_bytes(b"x")
    run = subprocess.run([sys.executable, "-m", "mrcz", "clean", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0 and run.stdout.split() == [str(stale)]
    assert not stale.exists()
    run = subprocess.run([sys.executable, "-m", "mrcz", "clean", str(tmp_path / "no")],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and str(tmp_path / "no") in run.stderr


@pytest.mark.parametrize("durable", [True, False])
def test_fsync_before_done_unless_not_durable(tmp_path, monkeypatch, durable):
    synced = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(fileops.os, "fsync", fsync)
    path = tmp_path / "d.mrcz"
    mrcz.writeMRC(np.zeros((2, 8, 8), np.int8), path, compressor="zstd", durable=durable)
    with mrcz.MRCZWriter(tmp_path / "w.mrc", (2, 2), np.int8, durable=durable) as w:
        w.write(np.zeros((2, 2), np.int8))
    if durable:
        assert [Path(p).name.split(".mrcz-partial.")[0] for p in synced] == [
            ".d.mrcz", tmp_path.name, ".w.mrc", tmp_path.name]
    else:
        assert synced == []


# ----------------------------------------------------------------------------- 8 errors

def test_os_errors_name_file_and_errno(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        mrcz.writeMRC(np.zeros((2, 2), np.int8), tmp_path / "no" / "x.mrc")
    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == str(tmp_path / "no" / "x.mrc")
    with pytest.raises(FileNotFoundError) as caught:
        with fileops.open_for_update(tmp_path / "gone.mrc"):
            pass
    assert (caught.value.errno, caught.value.filename) == (errno.ENOENT,
                                                           str(tmp_path / "gone.mrc"))


def test_fuller_disk_rlimit_fsize_gives_errno(tmp_path):
    """A write stopped by the file-size limit is an OSError with errno and file name."""
    path = tmp_path / "big.mrc"
    run = run_limited(f"""
import resource, signal, errno, numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    mrcz.writeMRC(np.zeros((4, 256, 256), np.float32), {str(path)!r})
except OSError as err:
    print(err.errno, err.filename)
""")
    assert run.stdout.split() == [str(errno.EFBIG), str(path)], run.stderr
    assert not path.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("valid_header", [True, False])
def test_zst_bomb_never_expanded_past_its_header(tmp_path, valid_header, baseline_rss):
    """256 MiB of zeros after a 2x2 image (or after a header that is no MRC header) in a
    .zst of a few kB: neither readMRC nor the CLI expands it to memory or $TMPDIR."""
    import zstandard

    plain = tmp_path / "p.mrc"
    mrcz.writeMRC(np.arange(4, dtype=np.float32).reshape(2, 2), plain)
    head = plain.read_bytes() if valid_header else bytes(1024)
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    parts = [compressor.compress(head)]
    zeros = bytes(2**20)
    parts += [compressor.compress(zeros) for _ in range(256)]
    parts.append(compressor.flush())
    bomb = tmp_path / "bomb.mrc.zst"
    bomb.write_bytes(b"".join(parts))
    assert bomb.stat().st_size < 100_000
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    peak, run = peak_of(f"""
import os, time, resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 2**20, 64 * 2**20))  # a full $TMPDIR
os.environ["TMPDIR"] = {str(scratch)!r}
import tempfile
tempfile.tempdir = None
from mrcz import cli
start = time.process_time()
try:
    mrcz.readMRC({str(bomb)!r})
except mrcz.MRCZError as err:
    print("refused", err)
status = cli.main(["decompress", {str(bomb)!r}, "-o", {str(tmp_path / "out.mrc")!r}])
print("status", status, time.process_time() - start)
""")
    assert f"refused {bomb}" in run.stdout
    status, seconds = run.stdout.split("status")[1].split()[:2]
    assert status == "1" and float(seconds) < 2.0
    # the CLI says what readMRC says: the header's error before any expansion, or the limit
    reason = "accounts for" if valid_header else "invalid dimensions nx=0, ny=0, nz=0"
    assert reason in run.stdout.split("refused")[1]
    assert str(bomb) in run.stderr and reason in run.stderr
    assert not (tmp_path / "out.mrc").exists() and list(scratch.iterdir()) == []
    assert peak - baseline_rss < SMALL_INPUT_BYTES


def test_bad_frame_late_in_an_overwrite_changes_nothing(tmp_path):
    """The values are checked before any slice is overwritten in place."""
    path = tmp_path / "o.mrc"
    mrcz.writeMRC(np.zeros((3, 4, 4), np.int16), path)
    before = path.read_bytes()
    frames = np.ones((3, 4, 4), np.int32)
    frames[2, 3, 3] = 40000
    with pytest.raises(ValueError, match=r"o\.mrc.*40000.*int16"):
        mrcz.writeMRC(frames, path, idx=0)
    assert path.read_bytes() == before


def test_append_stopped_by_file_size_limit_names_file(tmp_path):
    path = tmp_path / "grow.mrcz"
    mrcz.writeMRC(np.zeros((1, 64, 64), np.int16), path, compressor="zstd")
    size = path.stat().st_size
    run = run_limited(f"""
import resource, signal, numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 100}, {size + 100}))
noise = np.random.default_rng(0).integers(0, 30000, (4, 64, 64)).astype(np.int16)
try:
    mrcz.writeMRC(noise, {str(path)!r}, compressor="zstd", idx=1)
except OSError as err:
    print(err.errno, err.filename)
""")
    assert run.stdout.split() == [str(errno.EFBIG), str(path)], run.stderr
    image, _ = mrcz.readMRC(path)  # the old frame is intact, the header unchanged
    assert image.shape == (64, 64) and not image.any()
