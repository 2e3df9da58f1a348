"""Lazy reads (LazyFrames, mrcz.to_dask), batch conversion on dask.distributed, the napari reader.

Tests that need dask, distributed, npe2 or the HyperSpy client venv skip, saying
which, where it is absent.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

import mrcz
from mrcz import framespans
from mrcz.batch import Job, convert_files, read_manifest, verify_output
from mrcz.lazy import LazyFrames

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
INSTALL_DASK = 'dask/distributed not installed: pip install "mrcz[dask]"'
needs_dask = pytest.mark.skipif(find_spec("dask") is None, reason=INSTALL_DASK)
needs_distributed = pytest.mark.skipif(
    find_spec("dask") is None or find_spec("distributed") is None, reason=INSTALL_DASK)
needs_npe2 = pytest.mark.skipif(find_spec("npe2") is None or find_spec("dask") is None,
                                reason='npe2 not installed: pip install "mrcz[napari]"')


def movie(rng: np.random.Generator, frames: int = 9, shape=(96, 80), dtype="int16"):
    return rng.poisson(3.0, (frames, *shape)).astype(dtype)


def rchar() -> int:
    """Bytes this thread has read through read system calls so far (Linux); the other
    threads (a dask client's, the codec pool's) do not count."""
    with open("/proc/thread-self/io", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.fixture(scope="module")
def client():
    """A dask.distributed Client on a LocalCluster of 2 worker processes."""
    if find_spec("distributed") is None:
        pytest.skip(INSTALL_DASK)
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


# ----------------------------------------------------------------------------- LazyFrames

@pytest.mark.parametrize("compressor,endian,dtype", [
    ("zstd", "le", "int16"), ("lz4", "be", "float32"), ("zstd", "le", "uint8"),
    ("zstd", "be", "complex64")])
def test_lazy_readmrc_of_compressed_file_matches_eager(tmp_path, rng, compressor, endian, dtype):
    data = movie(rng, dtype="float32").astype(dtype)
    if dtype == "complex64":
        data = data + 1j * data[::-1]
    path = tmp_path / "m.mrcz"
    mrcz.writeMRC(data, path, compressor=compressor, endian=endian, pixelsize=1.5)
    lazy, header = mrcz.readMRC(path, useMemmap=True)
    eager, eager_header = mrcz.readMRC(path)
    assert isinstance(lazy, LazyFrames)
    assert (lazy.shape, lazy.dtype, lazy.ndim, len(lazy)) == (data.shape, data.dtype, 3, 9)
    np.testing.assert_array_equal(np.asarray(lazy), eager)
    for key in (4, -1, slice(2, 5), slice(None, None, 3), (Ellipsis, 7), (3, slice(5, 9), 2),
                [6, 1, 6], np.arange(9) % 2 == 0, (slice(1, 3), [0, 4])):
        np.testing.assert_array_equal(lazy[key], data[key])
    assert header["dimensions"].tolist() == eager_header["dimensions"].tolist()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy))[5], data[5])
    with pytest.raises(IndexError):
        lazy[9]


def test_lazy_lists_and_ranges_are_views(tmp_path, rng):
    data = movie(rng)
    path = tmp_path / "list.mrcz"
    mrcz.writeMRC(list(data), path, compressor="zstd")
    frames, _ = mrcz.readMRC(path, useMemmap=True)
    assert isinstance(frames, list) and len(frames) == 9
    assert frames[4].shape == (96, 80)
    np.testing.assert_array_equal(np.asarray(frames[4]), data[4])
    part, header = mrcz.readMRC(tmp_path / "list.mrcz", idx=(2, 4), useMemmap=True,
                                slices=0)
    assert header["dimensions"][0] == 3
    np.testing.assert_array_equal(part[:], data[2:5])


def test_lazy_frame_read_touches_only_that_frames_bytes(tmp_path, rng):
    data = movie(rng, frames=30, shape=(512, 512))
    path = tmp_path / "m.mrcz"
    mrcz.writeMRC(data, path, compressor="zstd")
    lazy, _ = mrcz.readMRC(path, useMemmap=True)
    index = framespans.index_frames(path)
    cbytes = int(index.offsets[18] - index.offsets[17])
    lazy[3]  # first use: nothing left to import or cache
    before = rchar()
    np.testing.assert_array_equal(lazy[17], data[17])
    read = rchar() - before
    assert cbytes <= read < cbytes + 4096, (read, cbytes, os.path.getsize(path))


def test_mrczreader_pickles_by_name(tmp_path, rng):
    data = movie(rng)
    path = tmp_path / "m.mrcz"
    mrcz.writeMRC(data, path, compressor="zstd")
    with mrcz.MRCZReader(path) as reader:
        copy = pickle.loads(pickle.dumps(reader))
    with copy:
        np.testing.assert_array_equal(copy[6], data[6])
        assert copy.header["dimensions"].tolist() == [9, 96, 80]


def test_frame_index_refuses_a_truncated_file(tmp_path, rng):
    path = tmp_path / "m.mrcz"
    mrcz.writeMRC(movie(rng), path, compressor="zstd")
    with open(path, "r+b") as f:  # into the chunks, past the frame index
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(mrcz.CorruptDataError, match="m.mrcz.*truncated"):
        framespans.index_frames(path)


# ----------------------------------------------------------------------------- to_dask

@needs_distributed
def test_to_dask_mean_on_two_worker_processes_equals_numpy(tmp_path, rng, client):
    data = movie(rng, frames=12)
    path = tmp_path / "movie.mrcz"
    mrcz.writeMRC(data, path, compressor="zstd")
    for frames_per_chunk in (1, 5):
        array = mrcz.to_dask(path, frames_per_chunk)
        assert array.chunks[0] == ((1,) * 12 if frames_per_chunk == 1 else (5, 5, 2))
        mean = client.compute(array.mean(axis=0)).result()
        np.testing.assert_array_equal(mean, data.mean(axis=0))
    assert len(client.scheduler_info()["workers"]) == 2


@needs_dask
def test_to_dask_tasks_are_small_descriptions(tmp_path, rng):
    path = tmp_path / "movie.mrcz"
    mrcz.writeMRC(movie(rng, frames=50), path, compressor="zstd")
    spans = framespans.index_frames(path).spans(1)
    assert [s.first for s in spans] == list(range(50))
    sizes = [len(pickle.dumps(span)) for span in spans]
    assert max(sizes) < 600  # path, offsets, shape and dtype; no file, no data
    assert all(s.offset + s.size == t.offset for s, t in zip(spans, spans[1:]))


@needs_dask
def test_to_dask_one_frame_reads_only_its_bytes(tmp_path, rng):
    data = movie(rng, frames=30, shape=(512, 512))
    path = tmp_path / "m.mrcz"
    mrcz.writeMRC(data, path, compressor="zstd")
    array = mrcz.to_dask(path)
    index = framespans.index_frames(path)
    cbytes = int(index.offsets[23] - index.offsets[22])
    array[2].compute(scheduler="sync")
    before = rchar()
    frame = array[22].compute(scheduler="sync")
    read = rchar() - before
    np.testing.assert_array_equal(frame, data[22])
    assert cbytes <= read < cbytes + 4096, (read, cbytes, os.path.getsize(path))


@needs_dask
@pytest.mark.parametrize("name,compressor", [("m.mrc", None), ("m.mrc.gz", None),
                                             ("m.mrc.bz2", None), ("m.mrc.zst", None),
                                             ("m.mrcz", "lz4")])
def test_to_dask_reads_every_mrc_flavour(tmp_path, rng, name, compressor):
    data = movie(rng, dtype="float32")
    mrcz.writeMRC(data, tmp_path / name, compressor=compressor)
    array = mrcz.to_dask(tmp_path / name, frames_per_chunk=4)
    assert array.chunks[0] == (4, 4, 1)
    np.testing.assert_array_equal(array.compute(scheduler="sync"), data)
    np.testing.assert_array_equal(array[5].compute(scheduler="sync"), data[5])


@needs_dask
@pytest.mark.parametrize("suffix", [".dm3", ".dm4"])
def test_to_dask_reads_dm_stacks(corpus, suffix):
    path = corpus / "dm" / "3D" / f"test-1{suffix}"
    expected = np.load(f"{path}.npy")
    array = mrcz.to_dask(path, frames_per_chunk=2)
    assert array.shape == expected.shape
    np.testing.assert_array_equal(array.compute(scheduler="sync"), expected)


@needs_dask
def test_writing_a_dask_array_gives_the_same_file(tmp_path, rng):
    data = movie(rng)
    mrcz.writeMRC(data, tmp_path / "src.mrcz", compressor="zstd")
    mrcz.writeMRC(mrcz.to_dask(tmp_path / "src.mrcz") * 2, tmp_path / "from_dask.mrcz",
                  compressor="zstd")
    mrcz.writeMRC(data * 2, tmp_path / "from_numpy.mrcz", compressor="zstd")
    assert (tmp_path / "from_dask.mrcz").read_bytes() == (tmp_path / "from_numpy.mrcz").read_bytes()


@needs_dask
def test_writing_a_dask_array_computes_each_chunk_once(tmp_path, rng):
    import dask
    import dask.array as da

    data = movie(rng)
    computed = []

    def double(block):
        computed.append(block.shape[0])
        return block * 2

    array = da.from_array(data, chunks=(4, 48, 80)).map_blocks(double, dtype=data.dtype)
    computed.clear()  # dask may call it on an empty block to learn the result's type
    with dask.config.set(scheduler="threads"):  # in this process, even with a Client alive
        mrcz.writeMRC(array, tmp_path / "twice.mrcz", compressor="zstd")
    assert sorted(n for n in computed if n) == [1, 1, 4, 4, 4, 4]  # 3 z-chunks x 2 y-chunks
    np.testing.assert_array_equal(mrcz.readMRC(tmp_path / "twice.mrcz")[0], data * 2)


def test_to_dask_rejects_bad_chunking(tmp_path, rng):
    pytest.importorskip("dask", reason=INSTALL_DASK)
    mrcz.writeMRC(movie(rng), tmp_path / "m.mrcz", compressor="zstd")
    with pytest.raises(ValueError, match="frames_per_chunk"):
        mrcz.to_dask(tmp_path / "m.mrcz", 0)


# ----------------------------------------------------------------------------- HyperSpy

def client_python() -> str:
    venv = os.environ.get("MRCZ_CLIENT_VENV")
    if venv and (Path(venv) / "bin" / "python").is_file():
        return str(Path(venv) / "bin" / "python")
    probe = subprocess.run([sys.executable, "-c", "import hyperspy.api, rsciio.mrcz"],
                           capture_output=True, check=False)
    if probe.returncode:
        pytest.skip("hyperspy/rosettasciio not installed: tools/client_venv.sh DIR and "
                    "export MRCZ_CLIENT_VENV=DIR")
    return sys.executable


def test_hyperspy_lazy_load_computes_frames_on_demand(tmp_path):
    python = client_python()
    frame_shape, frames, wanted = (4096, 4096), 40, 17
    base = np.random.default_rng(3).poisson(1.0, frame_shape).astype(np.float32)
    path = tmp_path / "movie.mrcz"
    with mrcz.MRCZWriter(path, base, compressor="zstd", meta={"detector": "K3"}) as writer:
        for k in range(frames):
            base[0, 0] = k
            writer.write(base.copy())
    mrcz.writeMRC(np.stack([base[:8, :8]] * 2), tmp_path / "warmup.mrcz", compressor="zstd",
                  meta={"warm": 1})
    base[0, 0] = wanted
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result_file = tmp_path / "result.json"
    subprocess.run([python, str(TESTS / "clients" / "hyperspy_lazy.py"), str(path), str(wanted),
                    str(result_file), str(tmp_path / "warmup.mrcz")], env=env, check=True,
                   timeout=300)
    result = json.loads(result_file.read_text())
    import hashlib

    assert result["lazy"] and result["signal"].startswith("Lazy")
    assert result["shape"] == [frames, *frame_shape]
    assert result["frame_sha256"] == hashlib.sha256(base.tobytes()).hexdigest()
    assert result["peak_growth"] < 3 * base.nbytes, result


# ----------------------------------------------------------------------------- batch

def write_movies(folder: Path, count: int, rng) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(count):
        path = folder / f"movie{i:02d}.mrc"
        mrcz.writeMRC(movie(rng, frames=4 + i % 3, shape=(64, 72)), path, pixelsize=0.8 + i / 10,
                      meta={"movie": i}, voltage=300.0)
        paths.append(path)
    return paths


def jobs(sources: list[Path], targets: Path) -> list[Job]:
    return [Job(str(p), str(targets / (p.name + "z"))) for p in sources]


@needs_distributed
def test_batch_matches_serial_and_resumes_after_a_kill(tmp_path, rng, client):
    sources = write_movies(tmp_path / "in", 20, rng)
    serial, cluster = tmp_path / "serial", tmp_path / "cluster"
    serial.mkdir(), cluster.mkdir()
    assert all(r.status == "done" for r in convert_files(jobs(sources, serial), scheduler=None))
    manifest = tmp_path / "manifest.csv"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]),
               MRCZ_NO_PROGRESS="1")
    run = subprocess.Popen([sys.executable, str(TESTS / "batch_run.py"), str(tmp_path / "in"),
                            str(cluster), str(manifest), "0.4"], env=env, stdout=subprocess.PIPE,
                           text=True, start_new_session=True)
    finished = []
    try:
        for line in run.stdout:
            finished.append(line)
            if len(finished) == 6:
                break
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the run, its scheduler and its workers
        run.wait(timeout=60)
    assert len(finished) == 6, "the batch ended before it could be killed"
    done_before = sorted(p.name for p in cluster.glob("*.mrcz"))
    assert 6 <= len(done_before) < 20
    assert len(read_manifest(manifest)) >= 6

    seen = []
    results = convert_files(jobs(sources, cluster), scheduler=client, skip_existing=True,
                            manifest=manifest, progress=lambda r, done, total: seen.append(done))
    assert seen == list(range(1, 21))
    skipped = sorted(Path(r.target).name for r in results if r.status == "skipped")
    assert skipped == done_before
    assert sum(r.status == "done" for r in results) == 20 - len(done_before)
    rows = read_manifest(manifest)
    assert sorted(Path(r.source).name for r in rows) == sorted(p.name for p in sources)
    assert all(r.status in ("done", "skipped") and r.ratio > 1 and len(r.sha256) == 64
               for r in rows)
    for source in sources:
        name = source.name + "z"
        assert (cluster / name).read_bytes() == (serial / name).read_bytes(), name


def test_batch_lists_failures_and_redoes_bad_outputs(tmp_path, rng):
    sources = write_movies(tmp_path / "in", 3, rng)
    broken = tmp_path / "in" / "broken.mrc"
    broken.write_bytes(b"not an MRC file" * 100)
    out = tmp_path / "out"
    out.mkdir()
    manifest = tmp_path / "manifest.json"
    results = convert_files(jobs([*sources, broken], out), scheduler=None, manifest=manifest)
    assert [r.status for r in results] == ["done", "done", "done", "failed"]
    assert "broken.mrc" in results[3].error
    assert json.loads(manifest.read_text())[3]["status"] == "failed"

    again = convert_files(jobs(sources, out), scheduler=None)
    assert all(r.status == "failed" and "exists" in r.error for r in again)
    assert [r.status for r in convert_files(jobs(sources[:1], out), scheduler=None,
                                            overwrite=True)] == ["done"]
    assert convert_files([], scheduler="local") == []

    damaged = out / "movie01.mrcz"
    damaged.write_bytes(damaged.read_bytes()[:-2000])  # into the chunks, past the index
    (out / "movie02.mrcz").write_bytes((out / "movie00.mrcz").read_bytes())  # wrong content
    assert "does not read back" in verify_output(jobs(sources, out)[1])
    resumed = convert_files(jobs(sources, out), scheduler=None, skip_existing=True,
                            manifest=manifest)
    assert [r.status for r in resumed] == ["skipped", "done", "done"]
    for source in sources:
        np.testing.assert_array_equal(mrcz.readMRC(out / (source.name + "z"))[0],
                                      mrcz.readMRC(source)[0])


def test_batch_outputs_equal_the_compress_command(tmp_path, rng, corpus):
    from mrcz.cli import main

    sources = write_movies(tmp_path / "in", 2, rng)
    sources += [corpus / "mrcfile" / "mrcfile_exthdr.mrc", corpus / "emdb" / "emd_3001.map.gz"]
    by_command, by_batch = tmp_path / "command", tmp_path / "batch"
    by_command.mkdir(), by_batch.mkdir()
    assert main(["compress", "-o", str(by_command), *map(str, sources)]) == 0
    targets = [by_batch / p.name for p in sorted(by_command.iterdir())]
    assert len(targets) == len(sources)
    pairs = {p.name.split(".")[0]: p for p in sources}
    batch_jobs = [Job(str(pairs[t.name.split(".")[0]]), str(t)) for t in targets]
    assert all(r.status == "done" for r in convert_files(batch_jobs, scheduler=None,
                                                        progress=lambda *a: None))
    for target in targets:
        assert target.read_bytes() == (by_command / target.name).read_bytes(), target.name


def test_batch_keeps_the_header(tmp_path, rng):
    (source,) = write_movies(tmp_path / "in", 1, rng)
    target = tmp_path / "movie.mrc.gz"
    (result,) = convert_files([Job(str(source), str(target))], scheduler=None)
    assert result.status == "done", result.error
    image, header = mrcz.readMRC(target)
    want_image, want = mrcz.readMRC(source)
    np.testing.assert_array_equal(image, want_image)
    for key in ("pixelsize", "voltage", "movie"):
        np.testing.assert_array_equal(header[key], want[key])


def test_batch_rejects_an_unknown_scheduler(tmp_path, rng):
    sources = write_movies(tmp_path / "in", 1, rng)
    pytest.importorskip("distributed", reason=INSTALL_DASK)
    with pytest.raises(ValueError, match="scheduler"):
        convert_files(jobs(sources, tmp_path), scheduler="everywhere")


# ----------------------------------------------------------------------------- napari

@needs_npe2
def test_napari_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(REPO / "mrcz" / "napari.yaml")
    manifest.validate_imports()
    (reader,) = manifest.contributions.readers
    assert {"*.mrc", "*.mrcs", "*.mrcz", "*.dm4"} <= set(reader.filename_patterns)


@needs_npe2
def test_napari_reader_gives_lazy_scaled_layers(tmp_path, rng, corpus):
    from mrcz.napari_reader import get_reader

    data = movie(rng)
    path = tmp_path / "m.mrcz"
    mrcz.writeMRC(data, path, compressor="zstd", pixelsize=[2.0, 1.25, 1.5])
    assert get_reader(str(tmp_path / "notes.txt")) is None
    ((array, attributes, kind),) = get_reader(str(path))(str(path))
    assert kind == "image" and attributes["scale"] == pytest.approx([2.0, 1.25, 1.5])
    assert type(array).__name__ == "Array"  # dask: nothing read yet
    np.testing.assert_array_equal(array[3].compute(scheduler="sync"), data[3])
    dm = corpus / "dm" / "3D" / "test-1.dm4"
    ((array, attributes, _),) = get_reader(str(dm))(str(dm))
    np.testing.assert_array_equal(array.compute(scheduler="sync"), np.load(f"{dm}.npy"))
    assert len(attributes["scale"]) == array.ndim


@needs_distributed
def test_command_line_scheduler_local_matches_serial(tmp_path, rng, capsys):
    """``mrcz compress --scheduler local`` on 20 movies: the serial command's bytes; a
    rerun with --skip-existing skips them all; the manifest lists all 20."""
    from mrcz.cli import main

    folder = tmp_path / "movies"
    folder.mkdir()
    for i in range(20):
        mrcz.writeMRC(movie(rng, frames=3, shape=(48, 40)), folder / f"m{i:02d}.mrc",
                      pixelsize=1.2)
    assert main(["compress", str(folder), "-o", str(tmp_path / "serial"), "-q"]) == 0
    manifest = tmp_path / "manifest.csv"
    argv = ["compress", str(folder), "-o", str(tmp_path / "cluster"), "--scheduler", "local",
            "-j", "2", "--manifest", str(manifest), "-q"]
    assert main(argv) == 0
    for serial in sorted((tmp_path / "serial").iterdir()):
        assert (tmp_path / "cluster" / serial.name).read_bytes() == serial.read_bytes()
    (tmp_path / "cluster" / "m07.mrcz").unlink()
    capsys.readouterr()
    assert main(argv + ["--skip-existing", "--json"]) == 0
    statuses = [r["status"] for r in json.loads(capsys.readouterr().out)]
    assert statuses.count("skipped") == 19 and statuses[7] == "done"
    rows = read_manifest(manifest)
    assert len(rows) == 20
    assert (tmp_path / "cluster" / "m07.mrcz").read_bytes() == \
        (tmp_path / "serial" / "m07.mrcz").read_bytes()


@needs_distributed
def test_command_line_scheduler_killed_and_rerun(tmp_path, rng):
    """``mrcz compress --scheduler local`` killed half way (SIGKILL to its process group),
    rerun with --skip-existing: only the rest is converted; outputs equal the serial
    command's and the manifest lists all 20."""
    folder = tmp_path / "movies"
    folder.mkdir()
    for i in range(20):
        frames = rng.normal(0, 1, (8, 512, 512)).astype(np.float32)
        mrcz.writeMRC(frames, folder / f"m{i:02d}.mrc")
    cluster, manifest = tmp_path / "cluster", tmp_path / "manifest.csv"
    argv = [sys.executable, "-m", "mrcz", "compress", str(folder), "-o", str(cluster),
            "--clevel", "9", "--scheduler", "local", "-j", "2", "--manifest", str(manifest),
            "-q"]
    env = {**os.environ, "PYTHONPATH": str(Path(mrcz.__file__).parent.parent)}
    run = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        while run.poll() is None and not (manifest.exists()
                                          and len(read_manifest(manifest)) >= 3):
            time.sleep(0.02)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    finished = {row.source for row in read_manifest(manifest)}
    assert 3 <= len(finished) < 20, "the run ended before it could be killed"
    kept = {p.name: p.stat().st_mtime_ns for p in cluster.glob("*.mrcz")}
    rerun = subprocess.run(argv + ["--skip-existing", "--json"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    statuses = {Path(r["file"]).name: r["status"] for r in json.loads(rerun.stdout)}
    assert {n for n, s in statuses.items() if s == "skipped"} == {Path(f).name for f in finished}
    assert all(s in ("done", "skipped") for s in statuses.values())
    assert all(cluster.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items()
               if n.replace(".mrcz", ".mrc") in {Path(f).name for f in finished})
    assert len(read_manifest(manifest)) == 20
    serial = tmp_path / "serial"
    assert subprocess.run([sys.executable, "-m", "mrcz", "compress", str(folder), "-o",
                           str(serial), "--clevel", "9", "-q"], env=env).returncode == 0
    for path in sorted(serial.iterdir()):
        assert (cluster / path.name).read_bytes() == path.read_bytes()
