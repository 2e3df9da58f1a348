"""The codec layer: chunks, block sizes, chunk index, determinism under threads; stats; pool."""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import mrcz
from mrcz import cli, codec
from mrcz.errors import CorruptDataError
from mrcz.reader import MRCSource
from mrcz.stats import Stats, min_max_sum
from mrcz.stream import MRCZWriter
from mrcz.workers import Pipeline


@pytest.mark.parametrize("cname", sorted(codec.BLOSC1_CODECS))
@pytest.mark.parametrize("dtype", ["int8", "uint16", "float32"])
def test_chunk_round_trip_is_bitshuffled(rng, cname, dtype):
    frame = rng.poisson(0.8, (64, 48)).astype(dtype)
    chunk = codec.compress_frame(frame, cname, 1, codec.choose_blocksize(frame.nbytes))
    header = codec.ChunkHeader.parse(chunk)
    wide = cname in codec.WIDE_TYPESIZE_CODECS and frame.itemsize == 1  # declared_typesize
    assert (header.nbytes, header.cbytes, header.typesize) == (
        frame.nbytes, len(chunk), codec.WIDE_TYPESIZE if wide else frame.itemsize)
    assert header.shuffle == "bit" and header.version == 2
    out = np.empty_like(frame)
    codec.decompress_into(chunk, out, "x")
    assert np.array_equal(out, frame)


def test_choose_blocksize_rule():
    assert codec.choose_blocksize(4096 * 4096) == 2**20               # counted int8 movie
    assert codec.choose_blocksize(4096 * 4096 * 2, 2) == 2**21        # uint16: 2**20 elements
    assert codec.choose_blocksize(4096 * 4096 * 4, 4) == 2**21        # float32: 2 MiB cap
    assert codec.choose_blocksize(128 * 128 * 4, 4) == 128 * 128 * 4  # particle: one block
    assert codec.choose_blocksize(4096 * 4096 * 4, 4, "zlib") == 2**16


def test_decompress_refuses_wrong_size(rng):
    frame = rng.poisson(0.8, (32, 32)).astype(np.int8)
    chunk = codec.compress_frame(frame, "zstd", 1, 0)
    with pytest.raises(CorruptDataError):
        codec.decompress_into(chunk, np.empty((32, 31), np.int8), "x")
    with pytest.raises(CorruptDataError):
        codec.decompress_into(chunk[:16] + bytes(len(chunk) - 16), np.empty_like(frame), "x")


def write_chunks(path, frames, cname="lz4") -> list[bytes]:
    chunks = [codec.compress_frame(f, cname, 5, 0) for f in frames]
    path.write_bytes(b"".join(chunks))
    return chunks


def test_index_chunks_walks_headers(tmp_path, rng):
    frames = rng.poisson(2.0, (4, 40, 30)).astype(np.uint16)
    chunks = write_chunks(tmp_path / "c", frames)
    fd = os.open(tmp_path / "c", os.O_RDONLY)
    try:
        index = codec.index_chunks(fd, 0, 4, sum(map(len, chunks)), frames[0].nbytes, "c")
        with pytest.raises(CorruptDataError):  # truncated
            codec.index_chunks(fd, 0, 4, sum(map(len, chunks)) - 1, frames[0].nbytes, "c")
        with pytest.raises(CorruptDataError):  # frames of another size
            codec.index_chunks(fd, 0, 4, 10**9, frames[0].nbytes * 2, "c")
    finally:
        os.close(fd)
    offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    assert index == [(int(o), len(c)) for o, c in zip(offsets, chunks)]


def test_index_chunks_on_corrupted_header(tmp_path, rng):
    frames = rng.poisson(2.0, (3, 40, 30)).astype(np.uint16)
    chunks = write_chunks(tmp_path / "c", frames)
    raw = bytearray((tmp_path / "c").read_bytes())
    raw[len(chunks[0]) + 12:len(chunks[0]) + 16] = (3).to_bytes(4, "little")  # cbytes < 16
    (tmp_path / "c").write_bytes(bytes(raw))
    fd = os.open(tmp_path / "c", os.O_RDONLY)
    try:
        with pytest.raises(CorruptDataError):
            codec.index_chunks(fd, 0, 3, len(raw), frames[0].nbytes, "c")
    finally:
        os.close(fd)


def test_threads_with_different_block_sizes_write_serial_bytes(rng):
    frames = [rng.poisson(0.8, shape).astype(np.int8) for shape in
              ((64, 64), (512, 512), (1024, 1024), (256, 1024))]
    settings = [("zstd", 1, 0), ("lz4", 9, 2**16), ("zstd", 3, 2**20), ("zlib", 1, 2**18)]
    serial = [codec.compress_frame(f, *s) for f, s in zip(frames, settings)]
    results: dict[tuple[int, int], bytes] = {}

    def work(t: int) -> None:
        for rep in range(6):
            k = (t + rep) % len(frames)
            results[t, rep] = codec.compress_frame(frames[k], *settings[k])
            out = np.empty_like(frames[k])  # reads with blosc threads in between
            codec.decompress_into(serial[k], out, "x", nthreads=1 + rep % 2)
            assert np.array_equal(out, frames[k])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (t, rep), chunk in results.items():
        assert chunk == serial[(t + rep) % len(frames)]


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32",
                                   "float16", "float32"])
def test_frame_stats_are_exact(rng, dtype):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info:
        frame = rng.integers(info.min, info.max, (300, 257), endpoint=True).astype(dtype)
    else:
        frame = rng.normal(100, 20, (300, 257)).astype(dtype)
    stats = Stats.of_frame(frame, with_rms=True)
    exact = int(frame.astype(object).sum()) if info else float(frame.sum(dtype=np.float64))
    assert min_max_sum(frame)[2] == pytest.approx(exact, rel=1e-15 if info else 1e-12)
    assert (stats.minimum, stats.maximum) == (frame.min(), frame.max())
    assert stats.mean == pytest.approx(frame.mean(dtype=np.float64), rel=1e-12)
    assert stats.m2 / frame.size == pytest.approx(frame.var(dtype=np.float64), rel=1e-9)


def test_combined_stats_equal_whole_array(rng):
    frames = rng.poisson(0.8, (7, 33, 20)).astype(np.uint16)
    total = Stats()
    for frame in frames:
        total.add(Stats.of_frame(frame, with_rms=True))
    dmin, dmax, dmean, rms = total.header_values()
    assert (dmin, dmax) == (frames.min(), frames.max())
    assert dmean == pytest.approx(frames.mean(), rel=1e-12)
    assert rms == pytest.approx(frames.std(), rel=1e-9)


@pytest.mark.parametrize("n_threads", [1, 2, 4])
def test_pipeline_keeps_order_and_bounds_work_in_flight(n_threads):
    seen: list[int] = []
    running, peak = [0], [0]
    lock = threading.Lock()

    def square(x: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        with lock:
            running[0] -= 1
        return x * x

    pipeline = Pipeline(square, seen.append, n_threads)
    for x in range(50):
        pipeline.put(x)
        assert x + 1 - len(seen) <= max(1, 2 * n_threads)
    pipeline.finish()
    assert seen == [x * x for x in range(50)]


def test_pipeline_cancel_waits_for_workers():
    started = threading.Event()
    release = threading.Event()
    done: list[int] = []

    def slow(x: int) -> int:
        started.set()
        release.wait(5)
        done.append(x)
        return x

    pipeline = Pipeline(slow, lambda r: None, 2)
    pipeline.put(1)
    started.wait(5)
    threading.Timer(0.05, release.set).start()
    pipeline.cancel()
    assert done == [1]


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32",
                                   "float16", "float32"])
def test_frame_statistics_match_numpy(dtype):
    from mrcz.stats import Stats
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info:
        frame = rng.integers(info.min, info.max, size=(300, 200), endpoint=True).astype(dtype)
    else:
        frame = (rng.normal(1000.0, 3.0, size=(300, 200))).astype(dtype)
    stats = Stats.of_frame(frame, True)
    wide = frame.astype(np.float64)
    assert (stats.minimum, stats.maximum) == (wide.min(), wide.max())
    assert stats.mean == pytest.approx(wide.mean(), rel=1e-12)
    assert stats.m2 == pytest.approx(wide.var() * wide.size, rel=1e-9)


def test_lazy_source_reading_with_the_pool_does_not_deadlock(tmp_path):
    import mrcz

    movie = np.random.default_rng(3).poisson(0.8, size=(6, 64, 64)).astype(np.int8)
    mrcz.writeMRC(movie, tmp_path / "in.mrcz", compressor="zstd")

    class LazyMovie:  # frames read on demand with a multi-threaded readMRC
        shape, dtype = movie.shape, movie.dtype

        def __getitem__(self, z):  # two slices, so the read itself uses the pool
            first = min(z, len(movie) - 2)
            pair = mrcz.readMRC(tmp_path / "in.mrcz", idx=(first, first + 1), n_threads=2)[0]
            return pair[z - first]

    done = threading.Event()

    def convert():
        mrcz.writeMRC(LazyMovie(), tmp_path / "out.mrcz", compressor="lz4", n_threads=2)
        done.set()

    threading.Thread(target=convert, daemon=True).start()
    assert done.wait(30), "writeMRC deadlocked on the shared pool"
    np.testing.assert_array_equal(mrcz.readMRC(tmp_path / "out.mrcz")[0], movie)


def test_python_blosc_settings_are_restored_for_other_users(tmp_path):
    import blosc

    import mrcz

    blosc.set_blocksize(2**15)
    before_threads = blosc.set_nthreads(3)
    blosc.set_nthreads(3)
    try:
        mrcz.writeMRC(np.ones((3, 256, 256), np.int8), tmp_path / "x.mrcz", compressor="zstd")
        mrcz.readMRC(tmp_path / "x.mrcz")
        assert blosc.get_blocksize() == 2**15
        assert blosc.set_nthreads(3) == 3
    finally:
        blosc.set_blocksize(0)
        blosc.set_nthreads(before_threads)


@pytest.mark.parametrize("shuffle, recorded", [("bit", "bit"), ("byte", "byte"), (None, "none")])
@pytest.mark.parametrize("backend", [None, "blosc2"])
def test_chunk_records_the_filter_asked_for(rng, shuffle, recorded, backend):
    frame = (rng.poisson(0.8, (64, 64)) * rng.normal(1, 0.05, (64, 64))).astype(np.float32)
    chunk = codec.compress_frame(frame, "zstd", 1, frame.nbytes, backend, shuffle)
    if backend == "blosc2":  # first filter of the extended header: none 0, byte 1, bit 2
        assert chunk[16] == {"none": 0, "byte": 1, "bit": 2}[recorded]
    else:
        assert codec.ChunkHeader.parse(chunk).shuffle == recorded
    out = np.empty_like(frame)
    codec.decompress_into(chunk, out, "x")
    assert np.array_equal(out, frame)


def test_unknown_shuffle_is_refused():
    with pytest.raises(ValueError, match="shuffle"):
        codec.check_shuffle("bitshuffle")


def test_wide_typesize_only_where_it_divides_the_frame(rng):
    odd = rng.poisson(0.8, (33, 31)).astype(np.int8)
    assert codec.declared_typesize(odd, "lz4") == 1
    assert codec.declared_typesize(odd[:32, :30].copy(), "lz4") == codec.WIDE_TYPESIZE
    assert codec.declared_typesize(odd, "zstd") == 1
    chunk = codec.compress_frame(odd, "lz4", 9, odd.nbytes)
    out = np.empty_like(odd)
    codec.decompress_into(chunk, out, "x")
    assert np.array_equal(out, odd)


def test_auto_shuffle_follows_the_data(rng):
    counts = rng.poisson(0.8, (512, 512)).astype(np.int8)
    gain = rng.normal(1.0, 0.05, (512, 512)).astype(np.float32)
    corrected = (rng.poisson(0.8, (512, 512)) * gain).astype(np.float32)
    blocksize = 2**20
    assert codec.choose_shuffle(counts, "zstd", 1, blocksize) == "bit"
    assert codec.choose_shuffle(corrected, "zstd", 1, blocksize) == "byte"


# ----------------------------------------------------------------------------- writers: filters, batches, buffers



def gain_corrected(rng, shape=(4, 256, 256)) -> np.ndarray:
    gain = rng.normal(1.0, 0.05, shape[1:])
    return (rng.poisson(0.8, shape) * gain).astype(np.float32)


def chunk_filters(path: Path) -> list[str]:
    with MRCSource.open(path) as src:
        info = src.info
        chunks = codec.index_chunks(src.fd, info.data_offset, info.shape[0],
                                    os.path.getsize(path), info.shape[1] * info.shape[2]
                                    * info.dtype.itemsize, "x")
        return [codec.ChunkHeader.parse(os.pread(src.fd, 16, offset)).shuffle
                for offset, _ in chunks]


@pytest.mark.parametrize("shuffle, recorded", [("bit", "bit"), ("byte", "byte"), (None, "none"),
                                               ("auto", "byte")])
def test_writers_apply_the_filter_asked_for(tmp_path, rng, shuffle, recorded):
    movie = gain_corrected(rng)
    mrcz.writeMRC(movie, tmp_path / "w.mrcz", compressor="zstd", shuffle=shuffle)
    with MRCZWriter(tmp_path / "s.mrcz", movie[0], compressor="zstd", shuffle=shuffle) as w:
        for frame in movie:
            w.write(frame)
    mrcz.asyncWriteMRC(movie, tmp_path / "a.mrcz", compressor="zstd", shuffle=shuffle).result()
    written = (tmp_path / "w.mrcz").read_bytes()
    assert (tmp_path / "s.mrcz").read_bytes() == written
    assert (tmp_path / "a.mrcz").read_bytes() == written
    assert chunk_filters(tmp_path / "w.mrcz") == [recorded] * len(movie)
    image, _ = mrcz.readMRC(tmp_path / "w.mrcz")
    assert np.array_equal(image, movie)


def test_byte_shuffle_shrinks_gain_corrected_data(tmp_path, rng):
    movie = gain_corrected(rng, (4, 256, 256))
    sizes = {}
    for shuffle in ("bit", "byte"):
        mrcz.writeMRC(movie, tmp_path / "m.mrcz", compressor="zstd", shuffle=shuffle)
        sizes[shuffle] = os.path.getsize(tmp_path / "m.mrcz")
    assert sizes["byte"] < 0.9 * sizes["bit"]


def test_writers_refuse_an_unknown_filter(tmp_path, rng):
    movie = gain_corrected(rng)
    with pytest.raises(ValueError, match="shuffle"):
        mrcz.writeMRC(movie, tmp_path / "w.mrcz", compressor="zstd", shuffle="bits")
    with pytest.raises(ValueError, match="shuffle"):
        MRCZWriter(tmp_path / "s.mrcz", movie[0], compressor="zstd", shuffle=True)
    assert not list(tmp_path.iterdir())


def test_small_frames_in_batches_write_what_one_at_a_time_writes(tmp_path, rng):
    particles = rng.normal(0, 1, (700, 64, 64)).astype(np.float32)  # 16 KiB each: batched
    mrcz.writeMRC(particles, tmp_path / "b.mrcz", compressor="zstd", n_threads=2)
    one_by_one = [codec.compress_frame(p, "zstd", 1, p.nbytes) for p in particles]
    data = (tmp_path / "b.mrcz").read_bytes()
    chunks = b"".join(one_by_one)
    assert data[1024:1024 + len(chunks)] == chunks  # the frame index follows them
    image, header = mrcz.readMRC(tmp_path / "b.mrcz")
    assert np.array_equal(image, particles)
    assert header["maxImage"] == particles.max() and header["minImage"] == particles.min()


@pytest.mark.parametrize("compressor", ["zstd", None])
def test_readMRC_fills_the_callers_buffer(tmp_path, rng, compressor):
    movie = rng.poisson(0.8, (5, 64, 48)).astype(np.int16)
    mrcz.writeMRC(movie, tmp_path / "m.mrc", compressor=compressor)
    out = np.full_like(movie, -7)
    image, _ = mrcz.readMRC(tmp_path / "m.mrc", out=out)
    assert np.shares_memory(image, out) and np.array_equal(out, movie)
    one = np.empty(movie.shape[1:], np.int16)
    frame, _ = mrcz.readMRC(tmp_path / "m.mrc", idx=3, out=one)
    assert np.shares_memory(frame, one) and np.array_equal(one, movie[3])
    with pytest.raises(ValueError, match="shape"):
        mrcz.readMRC(tmp_path / "m.mrc", idx=(1, 2), out=out)
    with pytest.raises(ValueError, match="int16"):
        mrcz.readMRC(tmp_path / "m.mrc", out=out.astype(np.float32))


def test_readMRC_out_converts_big_endian_and_widened_files(tmp_path, rng):
    movie = rng.poisson(3.0, (3, 32, 40)).astype(np.uint8)
    for endian in ("le", "be"):
        mrcz.writeMRC(movie, tmp_path / "m.mrc", endian=endian)
        out = np.zeros_like(movie)
        image, _ = mrcz.readMRC(tmp_path / "m.mrc", out=out)
        assert np.shares_memory(image, out) and np.array_equal(out, movie)


def test_original_reads_every_filter_and_the_wide_typesize(tmp_path, rng, original_python):
    movie = gain_corrected(rng)
    counts = rng.poisson(0.8, (4, 64, 64)).astype(np.int8)
    paths = []
    for shuffle in ("bit", "byte", None):
        paths.append(tmp_path / f"{shuffle}.mrcz")
        mrcz.writeMRC(movie, paths[-1], compressor="zstd", shuffle=shuffle)
    mrcz.writeMRC(counts, tmp_path / "lz4.mrcz", compressor="lz4", clevel=9)
    np.save(tmp_path / "movie.npy", movie)
    np.save(tmp_path / "counts.npy", counts)
    script = ("import sys, numpy as np, mrcz\n"
              "for npy, path in zip(sys.argv[1::2], sys.argv[2::2]):\n"
              "    a, h = mrcz.readMRC(path)\n"
              "    assert np.array_equal(np.asarray(a), np.load(npy)), path\n")
    args = []
    for path in paths:
        args += [str(tmp_path / "movie.npy"), str(path)]
    args += [str(tmp_path / "counts.npy"), str(tmp_path / "lz4.mrcz")]
    done = subprocess.run([str(original_python), "-c", script, *args], capture_output=True,
                          text=True, cwd="/")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["compress", "convert"])
def test_cli_shuffle_option(tmp_path, rng, command):
    movie = gain_corrected(rng)
    mrcz.writeMRC(movie, tmp_path / "in.mrc")
    for choice, recorded in (("none", "none"), ("byte", "byte"), ("auto", "byte")):
        out = tmp_path / f"{choice}.mrcz"
        argv = ([command, str(tmp_path / "in.mrc"), "-o", str(out)] if command == "compress"
                else [command, str(tmp_path / "in.mrc"), str(out)])
        assert cli.main([*argv, "--shuffle", choice]) == 0
        assert chunk_filters(out) == [recorded] * len(movie)
        assert np.array_equal(mrcz.readMRC(out)[0], movie)
