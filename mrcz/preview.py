"""Pictures of image data for people: a frame (or sum, or power spectrum) above its histogram.

Drawing needs Pillow, the optional extra ``imaging`` (``pip install "mrcz[imaging]"``);
the numbers (scaling, spectrum, histogram) are plain numpy.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import UnsupportedError

HISTOGRAM_HEIGHT = 120
HISTOGRAM_BINS = 256
#: Display range: these percentiles of the values map to black and white.
CLIP_PERCENTILES = (0.5, 99.5)


def power_spectrum(frame: np.ndarray) -> np.ndarray:
    """log(1 + |FFT|^2) of a 2-D frame, zero frequency in the centre."""
    data = np.asarray(frame, dtype=np.float64)
    data = data - data.mean()
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(data))) ** 2
    return np.log1p(spectrum)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """A 2-D frame scaled to uint8 between its 0.5 and 99.5 percentiles (complex: magnitude)."""
    data = np.asarray(frame)
    if np.iscomplexobj(data):
        data = np.abs(data)
    data = data.astype(np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, np.uint8)
    low, high = np.percentile(finite, CLIP_PERCENTILES)
    if high <= low:
        high = low + 1.0
    scaled = np.clip((np.nan_to_num(data, nan=low) - low) / (high - low), 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def histogram_strip(frame: np.ndarray, width: int, height: int = HISTOGRAM_HEIGHT) -> np.ndarray:
    """A ``height`` x ``width`` uint8 picture of the value histogram (log counts, dark bars)."""
    data = np.asarray(frame)
    if np.iscomplexobj(data):
        data = np.abs(data)
    data = data[np.isfinite(data)].astype(np.float64)
    strip = np.full((height, width), 255, np.uint8)
    if data.size == 0:
        return strip
    low, high = float(data.min()), float(data.max())
    counts, _ = np.histogram(data, bins=width, range=(low, high if high > low else low + 1))
    levels = np.log1p(counts)
    bars = np.round(levels / max(levels.max(), 1e-12) * (height - 1)).astype(int)
    rows = np.arange(height)[:, None]
    strip[rows >= (height - bars)[None, :]] = 40
    return strip


def preview_array(frame: np.ndarray, max_size: int = 512) -> np.ndarray:
    """The uint8 picture: the frame (shrunk so its longer side is at most ``max_size``)
    with its histogram below, as one 2-D array."""
    gray = to_gray(frame)
    step = max(1, int(np.ceil(max(gray.shape) / max_size)))
    if step > 1:  # block means keep the picture's noise level honest
        ny, nx = (gray.shape[0] // step) * step, (gray.shape[1] // step) * step
        blocks = gray[:ny, :nx].reshape(ny // step, step, nx // step, step)
        gray = blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    gap = np.full((4, gray.shape[1]), 255, np.uint8)
    return np.vstack([gray, gap, histogram_strip(frame, gray.shape[1])])


def save_png(picture: np.ndarray, path: str | os.PathLike) -> tuple[int, int]:
    """Write a uint8 2-D array as a PNG; returns ``(width, height)``."""
    image_module = _pillow()
    image = image_module.fromarray(np.ascontiguousarray(picture, dtype=np.uint8))
    image.save(os.fspath(path), format="PNG")
    return image.size


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise UnsupportedError('pictures need Pillow: pip install "mrcz[imaging]"') from None
    return Image
