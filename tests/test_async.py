"""Background I/O: same bytes under concurrency, errors, atomicity, limits, exit, asyncio."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import mrcz
from mrcz import futures

REPO = Path(__file__).resolve().parent.parent
CODECS = [None, "zstd", "lz4", "lz4hc", "zlib", "blosclz"]
#: Frame shapes whose blosc block sizes differ (0, 64 KiB, 256 KiB, 1 MiB).
SHAPES = [((5, 300, 200), "int16"), ((6, 512, 512), "int8"), ((3, 512, 512), "float32"),
          ((2, 1024, 1024), "float32"), ((4, 256, 384), "uint16")]


@pytest.fixture(autouse=True)
def _reset_async():
    """Every test starts and ends with an idle queue, no limits, default workers."""
    yield
    futures.flushAsync(raise_errors=False)
    futures.setAsyncLimits()
    futures.set_async_workers(futures.DEFAULT_WORKERS)


def counted(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    return rng.poisson(1.5, size=shape).astype(dtype)


class SlowFrames:
    """An array-like whose frames come only when ``gate`` is set (and may fail).

    Gated writes use ``n_threads=1`` so that frames are fetched in the job's own
    thread: a blocked fetch on the shared codec pool would stall every other job.
    """

    def __init__(self, data: np.ndarray, gate: threading.Event | None = None,
                 fail_at: int | None = None, delay: float = 0.0) -> None:
        self.data, self.gate, self.fail_at, self.delay = data, gate, fail_at, delay
        self.shape, self.dtype = data.shape, data.dtype
        self.started = threading.Event()

    def __getitem__(self, z: int) -> np.ndarray:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(20), "test gate never opened"
        if self.fail_at is not None and z >= self.fail_at:
            raise RuntimeError(f"camera lost frame {z}")
        time.sleep(self.delay)
        return self.data[z]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


# ----------------------------------------------------------------------------- determinism

def write_cases(rng: np.random.Generator, count: int) -> list[tuple[object, dict]]:
    """``count`` (image, writeMRC keywords) pairs mixing codecs, levels, threads, layouts."""
    cases = []
    for i in range(count):
        shape, dtype = SHAPES[i % len(SHAPES)]
        image = counted(rng, shape, dtype)
        if i % 7 == 3:
            image = list(image)
        kwargs = {"compressor": CODECS[i % len(CODECS)], "clevel": [1, 3, 5, 9][i % 4],
                  "n_threads": [1, 2, 4][i % 3], "pixelsize": [1.0 + i, 1.5, 1.5],
                  "voltage": 300.0, "meta": {"case": i, "dose": 1.5}}
        if i % 8 == 7 and kwargs["compressor"] and mrcz.BLOSC2_PRESENT:
            kwargs["backend"] = "blosc2"
        cases.append((image, kwargs))
    return cases


def test_concurrent_writes_match_serial_bytes(tmp_path, rng):
    cases = write_cases(rng, 30)
    serial, mixed = tmp_path / "serial", tmp_path / "mixed"
    serial.mkdir()
    mixed.mkdir()
    for i, (image, kwargs) in enumerate(cases):
        mrcz.writeMRC(image, serial / f"{i}.mrcz", **kwargs)

    futures.set_async_workers(4)
    async_cases = [i for i in range(len(cases)) if i % 5]
    thread_cases = [i for i in range(len(cases)) if not i % 5]
    pending, side_reads = [], []
    for i in async_cases:  # reads of other files run alongside the writes
        pending.append(futures.asyncWriteMRC(cases[i][0], mixed / f"{i}.mrcz", **cases[i][1]))
        side_reads.append((i, futures.asyncReadMRC(serial / f"{i}.mrcz", n_threads=2)))

    def user_thread(i: int) -> None:
        mrcz.writeMRC(cases[i][0], mixed / f"{i}.mrcz", **cases[i][1])

    threads = [threading.Thread(target=user_thread, args=(i,)) for i in thread_cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for future in pending:
        assert future.result(timeout=60) is None
    for i, future in side_reads:
        np.testing.assert_array_equal(np.asarray(future.result(timeout=60)[0]),
                                      np.asarray(cases[i][0]))
    for i in range(len(cases)):
        assert (mixed / f"{i}.mrcz").read_bytes() == (serial / f"{i}.mrcz").read_bytes(), i
    assert leftovers(mixed) == []

    reads = [futures.asyncReadMRC(mixed / f"{i}.mrcz") for i in range(len(cases))]
    for i, future in enumerate(reads):
        image, header = future.result(timeout=60)
        expected, kwargs = cases[i]
        if isinstance(expected, list):
            assert isinstance(image, list)
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
        assert header["case"] == i and header["dose"] == 1.5
        assert header["compressor"] == kwargs["compressor"]
        assert header["voltage"] == 300.0
        np.testing.assert_allclose(header["pixelsize"], [1.0 + i, 1.5, 1.5])


def test_foreign_blosc_settings_do_not_change_bytes(tmp_path, rng):
    """Whatever other code left in python-blosc's global settings, mrcz writes the same file."""
    import blosc

    image = counted(rng, (3, 1024, 1024), "float32")
    kwargs = {"compressor": "zstd", "clevel": 1}
    mrcz.writeMRC(image, tmp_path / "ref.mrcz", **kwargs)
    mrcz.writeMRC(image, tmp_path / "ref2.mrcz", backend="blosc2", **kwargs)
    old_threads = blosc.set_nthreads(2)
    try:
        for i in range(2):
            blosc.set_blocksize(4096)  # e.g. the original mrcz or another library
            blosc.set_nthreads(2)
            futures.asyncWriteMRC(image, tmp_path / f"a{i}.mrcz", **kwargs).result(timeout=60)
            futures.asyncWriteMRC(image, tmp_path / f"b{i}.mrcz", backend="blosc2",
                                  **kwargs).result(timeout=60)
    finally:
        blosc.set_blocksize(0)
        blosc.set_nthreads(old_threads)
    for i in range(2):
        assert (tmp_path / f"b{i}.mrcz").read_bytes() == (tmp_path / "ref2.mrcz").read_bytes()
        assert (tmp_path / f"a{i}.mrcz").read_bytes() == (tmp_path / "ref.mrcz").read_bytes()


def test_same_path_jobs_run_in_submission_order(tmp_path, rng):
    futures.set_async_workers(4)
    path = tmp_path / "x.mrcz"
    images = [np.full((2, 64, 64), i, np.int16) for i in range(12)]
    reads = []
    for i, image in enumerate(images):
        futures.asyncWriteMRC(image, path, compressor=CODECS[i % 6] and "lz4")
        reads.append(futures.asyncReadMRC(str(path)))
    for i, future in enumerate(reads):
        assert int(future.result(timeout=30)[0][0, 0, 0]) == i
    futures.flushAsync()
    assert int(mrcz.readMRC(path)[0][0, 0, 0]) == 11


# ----------------------------------------------------------------------------- errors

def test_missing_folder_fails_through_future_with_oserror(tmp_path):
    future = futures.asyncWriteMRC(np.zeros((4, 4), np.float32), tmp_path / "no" / "x.mrc")
    with pytest.raises(OSError):
        future.result(timeout=10)
    assert isinstance(future.exception(), FileNotFoundError)
    future = futures.asyncReadMRC(tmp_path / "absent.mrc")
    with pytest.raises(FileNotFoundError):
        future.result(timeout=10)


def test_unobserved_failure_is_raised_by_flush(tmp_path):
    futures.asyncWriteMRC(np.zeros((4, 4), np.float32), tmp_path / "no" / "x.mrc")
    with pytest.raises(FileNotFoundError):
        futures.flushAsync(timeout=10)
    futures.flushAsync(timeout=10)  # reported once only
    seen = futures.asyncWriteMRC(np.zeros((4, 4), np.float32), tmp_path / "no" / "y.mrc")
    assert isinstance(seen.exception(timeout=10), OSError)
    futures.flushAsync(timeout=10)  # the caller looked at it: flush stays quiet


@pytest.mark.parametrize("compressor", [None, "zstd"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_failing_write_keeps_old_file_and_leaves_no_temp(tmp_path, rng, compressor, n_threads):
    path = tmp_path / "movie.mrcz"
    old = counted(rng, (6, 128, 128), "float32")
    mrcz.writeMRC(old, path, compressor=compressor)
    before = path.read_bytes()
    bad = SlowFrames(counted(rng, (6, 128, 128), "float32"), fail_at=3)
    future = futures.asyncWriteMRC(bad, path, compressor=compressor, n_threads=n_threads)
    with pytest.raises(RuntimeError, match="camera lost frame"):
        future.result(timeout=10)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    fresh = tmp_path / "fresh.mrcz"
    with pytest.raises(RuntimeError):
        futures.asyncWriteMRC(bad, fresh, compressor=compressor).result(timeout=10)
    assert not fresh.exists() and leftovers(tmp_path) == []


def test_bad_arguments_fail_through_future(tmp_path):
    future = futures.asyncWriteMRC(np.zeros((4, 4)), tmp_path / "x.mrcz", compressor="nope")
    with pytest.raises(ValueError):
        future.result(timeout=10)
    with pytest.raises(TypeError):
        futures.asyncWriteMRC(np.zeros((4, 4)), tmp_path / "x.mrc", bogus=1).result(timeout=10)


# ----------------------------------------------------------------------------- copy, workers

def test_copy_true_snapshots_the_image(tmp_path):
    futures.set_async_workers(1)
    gate = threading.Event()
    blocker = futures.asyncWriteMRC(SlowFrames(np.zeros((1, 8, 8), np.int16), gate),
                                    tmp_path / "block.mrc", n_threads=1)
    image = np.ones((2, 32, 32), np.int16)
    snap = futures.asyncWriteMRC(image, tmp_path / "copy.mrc", copy=True)
    image[:] = 7  # the camera reuses its buffer before the write has started
    gate.set()
    blocker.result(timeout=10)
    snap.result(timeout=10)
    assert (mrcz.readMRC(tmp_path / "copy.mrc")[0] == 1).all()
    frames = [np.ones((8, 8), np.int16), np.ones((8, 8), np.int16)]
    source = SlowFrames(np.ones((3, 8, 8), np.int16))
    gate.clear()
    blocker = futures.asyncWriteMRC(SlowFrames(np.zeros((1, 8, 8), np.int16), gate),
                                    tmp_path / "block.mrc", n_threads=1)
    jobs = [futures.asyncWriteMRC(frames, tmp_path / "list.mrc", copy=True),
            futures.asyncWriteMRC(source, tmp_path / "like.mrc", copy=True)]
    frames[1][:] = 5
    source.data[:] = 5
    gate.set()
    for job in (blocker, *jobs):
        job.result(timeout=10)
    listed, _ = mrcz.readMRC(tmp_path / "list.mrc")
    assert isinstance(listed, list) and all((f == 1).all() for f in listed)
    assert (mrcz.readMRC(tmp_path / "like.mrc")[0] == 1).all()


def test_set_async_workers_caps_running_jobs(tmp_path):
    running, peak, lock = [0], [0], threading.Lock()

    class Counting(SlowFrames):
        def __getitem__(self, z):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.02)
            with lock:
                running[0] -= 1
            return self.data[z]

    for workers, expect in ((1, 1), (3, 3)):
        peak[0] = 0
        futures.set_async_workers(workers)
        jobs = [futures.asyncWriteMRC(Counting(np.zeros((4, 8, 8), np.int8)),
                                      tmp_path / f"{workers}-{i}.mrc", n_threads=1)
                for i in range(6)]
        for job in jobs:
            job.result(timeout=10)
        assert peak[0] == expect
    with pytest.raises(ValueError):
        futures.set_async_workers(0)


def test_cancelled_queued_write_writes_nothing(tmp_path):
    futures.set_async_workers(1)
    gate = threading.Event()
    blocker = futures.asyncWriteMRC(SlowFrames(np.zeros((1, 8, 8), np.int16), gate),
                                    tmp_path / "block.mrc", n_threads=1)
    queued = futures.asyncWriteMRC(np.ones((4, 4), np.int16), tmp_path / "never.mrc")
    assert queued.cancel()
    gate.set()
    blocker.result(timeout=10)
    futures.flushAsync(timeout=10)
    assert not (tmp_path / "never.mrc").exists()
    assert futures.asyncStatus().writes == 0


# ----------------------------------------------------------------------------- backpressure

def test_backpressure_blocks_until_room(tmp_path):
    futures.setAsyncLimits(max_pending_writes=2)
    gate = threading.Event()
    image = np.zeros((2, 16, 16), np.float32)
    first = [futures.asyncWriteMRC(SlowFrames(image, gate), tmp_path / f"{i}.mrc", n_threads=1)
             for i in range(2)]
    assert futures.asyncStatus().writes == 2
    returned = threading.Event()

    def third() -> None:
        futures.asyncWriteMRC(image, tmp_path / "2.mrc")
        returned.set()

    caller = threading.Thread(target=third)
    caller.start()
    assert not returned.wait(0.3), "asyncWriteMRC should block while two writes are pending"
    gate.set()
    assert returned.wait(10)
    caller.join()
    for f in first:
        f.result(timeout=10)
    futures.flushAsync(timeout=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.mrc", "1.mrc", "2.mrc"]


def test_backpressure_by_bytes_nonblocking_and_timeout(tmp_path):
    gate = threading.Event()
    image = np.zeros((4, 64, 64), np.float32)  # 64 KiB
    futures.setAsyncLimits(max_pending_bytes=100_000, block=False)
    held = futures.asyncWriteMRC(SlowFrames(image, gate), tmp_path / "a.mrc", n_threads=1)
    assert futures.asyncStatus().write_bytes == image.nbytes
    with pytest.raises(futures.AsyncQueueFull, match="max_pending_bytes=100000"):
        futures.asyncWriteMRC(image, tmp_path / "b.mrc")
    futures.asyncWriteMRC(image[:1], tmp_path / "small.mrc").result(timeout=10)  # 16 KiB fits
    futures.setAsyncLimits(max_pending_bytes=100_000, timeout=0.2)
    start = time.monotonic()
    with pytest.raises(futures.AsyncQueueFull):
        futures.asyncWriteMRC(image, tmp_path / "b.mrc")
    assert time.monotonic() - start >= 0.19
    gate.set()
    held.result(timeout=10)
    big = np.zeros((40, 64, 64), np.float32)  # larger than the limit: admitted alone
    futures.asyncWriteMRC(big, tmp_path / "big.mrc").result(timeout=10)
    assert not (tmp_path / "b.mrc").exists()
    assert futures.asyncStatus() == (0, 0, 0, futures.DEFAULT_WORKERS)


def test_flush_timeout(tmp_path):
    gate = threading.Event()
    held = futures.asyncWriteMRC(SlowFrames(np.zeros((1, 8, 8), np.int8), gate),
                                 tmp_path / "a.mrc", n_threads=1)
    with pytest.raises(TimeoutError):
        futures.flushAsync(timeout=0.1)
    gate.set()
    futures.flushAsync(timeout=10)
    assert held.done() and (tmp_path / "a.mrc").exists()


def test_waiting_inside_a_callback_raises_instead_of_deadlocking(tmp_path):
    futures.set_async_workers(1)
    futures.setAsyncLimits(max_pending_writes=1)
    gate = threading.Event()
    first = futures.asyncWriteMRC(SlowFrames(np.zeros((1, 4, 4), np.int8), gate),
                                  tmp_path / "a.mrc", n_threads=1)
    outcome = []

    def chain(_) -> None:  # runs in the only worker thread: waiting there would deadlock
        try:
            futures.asyncWriteMRC(np.zeros((4, 4), np.int8), tmp_path / "b.mrc")
            outcome.append("admitted")
        except futures.AsyncQueueFull:
            outcome.append("full")

    first.add_done_callback(chain)
    other = threading.Thread(target=futures.asyncWriteMRC,
                             args=(np.zeros((4, 4), np.int8), tmp_path / "c.mrc"))
    other.start()
    while not futures._LIMITER._waiting:
        time.sleep(0.005)
    gate.set()
    other.join(10)
    futures.flushAsync(timeout=10)
    assert outcome == ["full"]
    assert (tmp_path / "c.mrc").exists()


# ----------------------------------------------------------------------------- asyncio

def test_asyncio_forms(tmp_path, rng):
    image = counted(rng, (3, 128, 128), "float32")

    async def main() -> list[int]:
        await futures.awrite_mrc(image, tmp_path / "a.mrcz", compressor="zstd",
                                 meta={"k": 1})
        read, header = await futures.aread_mrc(tmp_path / "a.mrcz")
        np.testing.assert_array_equal(read, image)
        assert header["k"] == 1
        with pytest.raises(FileNotFoundError):
            await futures.awrite_mrc(image, tmp_path / "no" / "b.mrc")
        # under a limit, waiting for room must not block the event loop
        futures.setAsyncLimits(max_pending_writes=1)
        gate = threading.Event()
        held = futures.asyncWriteMRC(SlowFrames(image, gate), tmp_path / "held.mrc",
                                     n_threads=1)
        ticks = []

        async def ticker() -> None:
            for i in range(5):
                ticks.append(i)
                await asyncio.sleep(0.02)
            gate.set()

        await asyncio.gather(futures.awrite_mrc(image, tmp_path / "c.mrc"), ticker())
        held.result(timeout=10)
        # a task cancelled while waiting for room gives its place up and writes nothing
        gate.clear()
        held = futures.asyncWriteMRC(SlowFrames(image, gate), tmp_path / "held2.mrc",
                                     n_threads=1)
        waiting = asyncio.ensure_future(futures.awrite_mrc(image, tmp_path / "d.mrc"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not futures._LIMITER._waiting
        gate.set()
        held.result(timeout=10)
        futures.setAsyncLimits(max_pending_writes=1, block=False)
        gate.clear()
        held = futures.asyncWriteMRC(SlowFrames(image, gate), tmp_path / "held3.mrc",
                                     n_threads=1)
        with pytest.raises(futures.AsyncQueueFull):
            await futures.awrite_mrc(image, tmp_path / "e.mrc")
        gate.set()
        held.result(timeout=10)
        return ticks

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert mrcz.readMRC(tmp_path / "c.mrc")[0].shape == image.shape
    assert not (tmp_path / "d.mrc").exists() and not (tmp_path / "e.mrc").exists()
    assert futures.asyncStatus().writes == 0


# ----------------------------------------------------------------------------- processes

def run_python(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_pending_writes_complete_at_exit(tmp_path):
    proc = run_python(f"""
        import numpy as np, mrcz.futures as fu
        rng = np.random.default_rng(5)
        for i in range(6):
            image = rng.poisson(1.0, size=(6, 512, 512)).astype(np.float32)
            np.save(r"{tmp_path}/%d.npy" % i, image)
            fu.asyncWriteMRC(image, r"{tmp_path}/%d.mrcz" % i, compressor="zstd",
                             n_threads=2)
        fu.asyncWriteMRC(image, r"{tmp_path}/missing/x.mrc")

        import threading, time, concurrent.futures.thread as cft
        def late():  # a user thread submitting while the interpreter shuts down
            deadline = time.monotonic() + 10
            while not cft._shutdown and time.monotonic() < deadline:
                time.sleep(0.005)
            fu.asyncWriteMRC(image, r"{tmp_path}/late.mrc", n_threads=1)
        threading.Thread(target=late).start()
        """)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err.decode()  # a write failed: the exit status says so
    for i in range(6):
        np.testing.assert_array_equal(mrcz.readMRC(tmp_path / f"{i}.mrcz")[0],
                                      np.load(tmp_path / f"{i}.npy"))
    np.testing.assert_array_equal(mrcz.readMRC(tmp_path / "late.mrc")[0],
                                  np.load(tmp_path / "5.npy"))
    assert b"FileNotFoundError" in err  # the unobserved failure is reported, not lost
    assert b"missing/x.mrc" in err
    assert leftovers(tmp_path) == []


def test_executor_shutdown_idiom_waits_for_every_job(tmp_path):
    """mrcz 0.6 users call ``_asyncExecutor.shutdown()`` to wait: it must cover every job."""
    proc = run_python(f"""
        import numpy as np, mrcz.futures as fu
        image = np.ones((4, 64, 64), np.float32)
        for i in range(5):  # same path: queued behind each other, not yet on the executor
            fu.asyncWriteMRC(image * i, r"{tmp_path}/same.mrc", n_threads=1)
        fu._asyncExecutor.shutdown(wait=True)
        assert fu.asyncStatus().jobs == 0
        """)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert (mrcz.readMRC(tmp_path / "same.mrc")[0] == 4).all()


@pytest.mark.parametrize("existing", [True, False])
def test_sigkill_mid_write_leaves_old_or_no_file(tmp_path, rng, existing):
    path = tmp_path / "movie.mrcz"
    old = counted(rng, (8, 256, 256), "float32")
    if existing:
        mrcz.writeMRC(old, path, compressor="zstd")
    before = path.read_bytes() if existing else None
    proc = run_python(f"""
        import time, numpy as np, mrcz.futures as fu
        class Slow:
            shape, dtype = (40, 256, 256), np.dtype("float32")
            def __getitem__(self, z):
                time.sleep(0.02)
                return np.full((256, 256), z, np.float32)
        fu.asyncWriteMRC(Slow(), r"{path}", compressor="zstd", n_threads=1)
        fu.flushAsync()
        """)
    deadline = time.monotonic() + 20
    while not leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert leftovers(tmp_path), "the child never started writing"
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    if existing:
        assert path.read_bytes() == before
        np.testing.assert_array_equal(mrcz.readMRC(path)[0], old)
    else:
        assert not path.exists()
