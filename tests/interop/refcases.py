"""Test images and result dumps shared by the interop scripts and tests.

Imported by ``ref_write.py`` and ``ref_read.py`` inside reference virtualenvs
(numpy 1.26 to 2.x, any mrcz release) and by ``tests/test_interop.py``, so it
needs nothing but the standard library and numpy.

A *case* is a JSON object::

    {"name": "float32-stack-zstd-le", "dtype": "float32", "layout": "stack",
     "seed": 7, "write": {<keyword arguments for writeMRC>}}

``dtype`` ``"uint4"`` means uint8 values 0-15 written with ``dtype='uint4'``.
"""
import json

import numpy as np

#: (frames, slices per frame, ny, nx); nx even for uint4, no axis of length 1.
FRAMES, SLICES, NY, NX = 3, 2, 20, 24

#: Layouts and the shape of the whole data set each one writes.
LAYOUT_SHAPES = {
    "image": (NY, NX),
    "stack": (FRAMES, NY, NX),
    "frames2d": (FRAMES, NY, NX),
    "frames3d": (FRAMES, SLICES, NY, NX),
}


def random_values(dtype, shape, seed):
    """Return reproducible values of ``dtype`` spanning its range.

    Parameters
    ----------
    dtype : str
        A numpy dtype name, or ``"uint4"`` for uint8 values 0-15.
    shape : tuple of int
    seed : int
    """
    rs = np.random.RandomState(seed)
    if dtype == "uint4":
        return rs.randint(0, 16, size=shape).astype(np.uint8)
    dt = np.dtype(dtype)
    if dt.kind == "c":
        return (rs.standard_normal(shape) * 100
                + 1j * rs.standard_normal(shape) * 100).astype(dt)
    if dt.kind == "f":
        return (rs.standard_normal(shape) * 100).astype(dt)
    info = np.iinfo(dt)
    return rs.randint(int(info.min), int(info.max) + 1, size=shape, dtype=dt)


def make_image(case):
    """Return the image argument for ``writeMRC``: an array or a list of frames."""
    values = random_values(case["dtype"], LAYOUT_SHAPES[case["layout"]], case["seed"])
    if case["layout"].startswith("frames"):
        return list(values)
    return values


def stacked(image):
    """Return an array or a list of equal frames as one array."""
    if isinstance(image, list):
        return np.stack([np.asarray(frame) for frame in image])
    return np.asarray(image)


def jsonable(value):
    """Return ``value`` (a header dict, say) with numpy types and bytes made JSON-safe."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    return value


def describe(image, header, npy_path):
    """Save what ``readMRC`` returned to ``npy_path`` and describe it.

    Returns
    -------
    dict
        ``kind`` ("list" or "array"), ``dtype`` (numpy ``dtype.str`` of the
        first frame), ``shapes`` (every frame's shape, one entry for an array),
        ``values`` (``npy_path``) and the ``header`` dict made JSON-safe.
    """
    frames = image if isinstance(image, list) else [image]
    np.save(npy_path, stacked(image))
    return {
        "kind": "list" if isinstance(image, list) else "array",
        "dtype": np.asarray(frames[0]).dtype.str,
        "shapes": [list(np.shape(frame)) for frame in frames],
        "values": npy_path,
        "header": jsonable(header),
    }


def error_text(exc):
    """Return ``'TypeName: message'`` for an exception."""
    return "%s: %s" % (type(exc).__name__, exc)


def load_json(path):
    """Return the JSON document stored at ``path``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_json(path, document):
    """Store ``document`` as JSON at ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f)
