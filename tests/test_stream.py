"""MRCZWriter / MRCZReader: round trips, byte identity with writeMRC, atomicity, appends."""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import mrcz
from mrcz import frameindex
from mrcz.errors import CorruptDataError
from mrcz.stream import MRCZReader, MRCZWriter, iter_frames

CASES = [  # (dtype, compressor, clevel)
    ("int8", None, 1), ("int8", "zstd", 1), ("uint16", "lz4", 9), ("float32", "zlib", 2),
    ("uint8", "zstd", 3), ("float32", None, 1), ("int16", "blosclz", 5),
]


def counted(rng, dtype, shape=(5, 48, 40)) -> np.ndarray:
    data = rng.poisson(3.0, shape)
    return (data * 1.25 if np.dtype(dtype).kind == "f" else data).astype(dtype)


def stream(path, frames, **kwargs) -> None:
    with MRCZWriter(path, frames[0], **kwargs) as writer:
        writer.write(frames[0])       # one frame
        writer.write(frames[1:3])     # a stack
        for frame in frames[3:]:
            writer.write(frame)


@pytest.mark.parametrize("dtype, compressor, clevel", CASES)
def test_stream_file_equals_writeMRC_file(tmp_path, rng, dtype, compressor, clevel):
    frames = counted(rng, dtype)
    kwargs = dict(compressor=compressor, clevel=clevel, pixelsize=[1.5, 1.25, 1.25],
                  voltage=300.0, C3=2.7, gain=0.8, meta={"camera": "K3", "dose": 1.5})
    stream(tmp_path / "s.mrc", frames, **kwargs)
    mrcz.writeMRC(frames, tmp_path / "w.mrc", **kwargs)
    assert (tmp_path / "s.mrc").read_bytes() == (tmp_path / "w.mrc").read_bytes()


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_list_layout_equals_writeMRC_list(tmp_path, rng, compressor):
    frames = counted(rng, "int16")
    stream(tmp_path / "s.mrc", frames, compressor=compressor, slices=1, quickStats=False)
    mrcz.writeMRC(list(frames), tmp_path / "w.mrc", compressor=compressor, quickStats=False)
    assert (tmp_path / "s.mrc").read_bytes() == (tmp_path / "w.mrc").read_bytes()
    image, _ = mrcz.readMRC(tmp_path / "s.mrc")
    assert isinstance(image, list) and np.array_equal(np.stack(image), frames)


@pytest.mark.parametrize("endian", ["le", "be"])
@pytest.mark.parametrize("dtype, compressor, clevel", CASES)
def test_reader_round_trip(tmp_path, rng, dtype, compressor, clevel, endian):
    frames = counted(rng, dtype)
    path = tmp_path / "m.mrc"
    mrcz.writeMRC(frames, path, compressor=compressor, clevel=clevel, endian=endian)
    with MRCZReader(path, n_threads=2) as reader:
        assert len(reader) == 5 and reader.shape == frames.shape
        assert reader.dtype == frames.dtype
        assert reader.header["dimensions"].tolist() == [5, 48, 40]
        assert np.array_equal(reader[3], frames[3])
        assert np.array_equal(reader[-1], frames[-1])
        assert np.array_equal(reader[1:4], frames[1:4])
        assert np.array_equal(reader[::2], frames[::2])
        assert np.array_equal(reader[[4, 0]], frames[[4, 0]])
        assert np.array_equal(np.stack(list(reader)), frames)
        with pytest.raises(IndexError):
            reader[5]
    assert np.array_equal(np.stack(list(iter_frames(path))), frames)


def test_uint4_plain_stream(tmp_path, rng):
    frames = rng.integers(0, 16, (3, 10, 7)).astype(np.uint8)
    stream(tmp_path / "s.mrc", frames, dtype="uint4")
    mrcz.writeMRC(frames, tmp_path / "w.mrc", dtype="uint4")
    assert (tmp_path / "s.mrc").read_bytes() == (tmp_path / "w.mrc").read_bytes()
    with MRCZReader(tmp_path / "s.mrc") as reader:
        assert np.array_equal(reader[:], frames)


def test_exception_inside_with_leaves_no_file(tmp_path, rng):
    frames = counted(rng, "int8")
    path = tmp_path / "m.mrcz"
    with pytest.raises(RuntimeError):
        with MRCZWriter(path, (48, 40), np.int8, compressor="zstd") as writer:
            writer.write(frames)
            raise RuntimeError("detector fault")
    assert list(tmp_path.iterdir()) == []
    mrcz.writeMRC(frames, path)
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with MRCZWriter(path, frames[0]) as writer:
            writer.write(frames[::-1])
            raise KeyboardInterrupt
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_bad_frames_are_refused_and_abort_cleans_up(tmp_path, rng):
    path = tmp_path / "m.mrc"
    writer = MRCZWriter(path, (48, 40), np.float32)
    with pytest.raises(ValueError):
        writer.write(np.zeros((40, 48), np.float32))
    with pytest.raises(TypeError):
        writer.write(np.zeros((48, 40), np.complex64))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(mrcz.MRCZError):
        with MRCZWriter(path, (4, 4), np.int8):
            pass  # no frames: nothing to finalise
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writes_equal_serial_writes(tmp_path, rng):
    """Different codecs, levels and block sizes at once write what they write alone."""
    jobs = [  # shapes give blosc's own block size, 64 KiB and 1 MiB blocks
        (counted(rng, "int8", (3, 64, 64)), "zstd", 1),
        (counted(rng, "int8", (3, 512, 512)), "lz4", 9),
        (counted(rng, "float32", (2, 1024, 1024)), "zstd", 4),
        (counted(rng, "uint16", (3, 512, 256)), "zlib", 1),
    ]

    def write(k: int, folder: Path) -> None:
        frames, compressor, clevel = jobs[k]
        if k % 2:
            stream(folder / f"{k}.mrcz", frames, compressor=compressor, clevel=clevel)
        else:
            mrcz.writeMRC(frames, folder / f"{k}.mrcz", compressor=compressor, clevel=clevel)

    for folder in ("serial", "threads"):
        (tmp_path / folder).mkdir()
    for k in range(len(jobs)):
        write(k, tmp_path / "serial")
    threads = [threading.Thread(target=write, args=(k, tmp_path / "threads"))
               for k in range(len(jobs)) for _ in range(1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(len(jobs)):
        assert ((tmp_path / "serial" / f"{k}.mrcz").read_bytes()
                == (tmp_path / "threads" / f"{k}.mrcz").read_bytes())


@pytest.mark.parametrize("idx", [0, 2, -1, (1, 3)])
def test_idx_on_compressed_reads(tmp_path, rng, idx):
    frames = counted(rng, "uint16")
    path = tmp_path / "m.mrcz"
    mrcz.writeMRC(frames, path, compressor="zstd")
    image, header = mrcz.readMRC(path, idx=idx)
    expected = frames[idx[0]:idx[1] + 1] if isinstance(idx, tuple) else frames[idx]
    assert np.array_equal(image, expected)


def test_append_three_frames_to_compressed_movie(tmp_path, rng):
    frames = counted(rng, "int8", (8, 48, 40))
    path = tmp_path / "m.mrcz"
    mrcz.writeMRC(frames[:5], path, compressor="zstd", clevel=2)
    mrcz.writeMRC(frames[5:], path, compressor="zstd", idx=5)
    image, header = mrcz.readMRC(path)
    assert np.array_equal(image, frames)
    assert header["maxImage"] == frames.max() and header["minImage"] == frames.min()
    assert header["meanImage"] == pytest.approx(frames.mean(), rel=1e-6)
    mrcz.writeMRC(frames, tmp_path / "w.mrcz", compressor="zstd", clevel=2)
    assert path.read_bytes()[1024:] == (tmp_path / "w.mrcz").read_bytes()[1024:]


def corrupt_second_chunk(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    first = int.from_bytes(raw[1024 + 12:1024 + 16], "little")
    raw[1024 + first + 4:1024 + first + 8] = (10**6).to_bytes(4, "little")  # nbytes
    path.write_bytes(bytes(raw))


def test_corrupted_chunk_header_raises(tmp_path, rng):
    path = tmp_path / "m.mrcz"
    frames = counted(rng, "int8")
    mrcz.writeMRC(frames, path, compressor="zstd")
    corrupt_second_chunk(path)
    with pytest.raises(CorruptDataError, match="chunk 1 "):
        mrcz.readMRC(path)
    # The frame index finds chunk 3 without walking past chunk 1, and checks it.
    np.testing.assert_array_equal(mrcz.readMRC(path, idx=3)[0], frames[3])
    with pytest.raises(CorruptDataError, match="chunk 1 "):
        MRCZReader(path)[1]
    # Without the index the chunk headers are walked, and the walk stops at chunk 1.
    raw = path.read_bytes()
    path.write_bytes(raw[:-frameindex.trailer_bytes(len(frames))])
    with pytest.raises(CorruptDataError):
        mrcz.readMRC(path, idx=3)
    with pytest.raises(CorruptDataError):
        MRCZReader(path)


def test_original_reads_stream_files(tmp_path, rng, original_python):
    frames = counted(rng, "uint16")
    stream(tmp_path / "m.mrcz", frames, compressor="zstd", clevel=1, voltage=300.0)
    stream(tmp_path / "p.mrc", frames, quickStats=False)
    np.save(tmp_path / "f.npy", frames)
    script = ("import sys, numpy as np, mrcz\n"
              "f = np.load(sys.argv[1])\n"
              "for p in sys.argv[2:]:\n"
              "    a, h = mrcz.readMRC(p)\n"
              "    a = np.asarray(a)  # plain: a list of one 3-D frame (mz = nz)\n"
              "    assert np.array_equal(a.reshape(f.shape), f) and a.dtype == f.dtype, p\n"
              "    assert h['voltage'] in (0.0, 300.0) and h['maxImage'] == f.max(), h\n")
    done = subprocess.run([str(original_python), "-c", script, str(tmp_path / "f.npy"),
                           str(tmp_path / "m.mrcz"), str(tmp_path / "p.mrc")],
                          capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr


def test_reader_reads_whole_file_compressed_plain_forward(tmp_path, rng):
    frames = counted(rng, "int16")
    mrcz.writeMRC(frames, tmp_path / "m.mrc.gz")
    with MRCZReader(tmp_path / "m.mrc.gz") as reader:
        assert np.array_equal(np.stack(list(reader)), frames)
