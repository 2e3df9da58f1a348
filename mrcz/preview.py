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
#: Rows under the histogram bars where the value range is written.
LABEL_HEIGHT = 14
#: Display range: these percentiles of the values map to black and white.
CLIP_PERCENTILES = (0.5, 99.5)


def power_spectrum(frame: np.ndarray) -> np.ndarray:
    """``log(1 + |FFT|**2)`` of a 2-D frame (its mean removed), zero frequency in the centre."""
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
    """A ``height`` x ``width`` uint8 picture of the value histogram (log counts, dark
    bars), with :data:`LABEL_HEIGHT` blank rows at the bottom for the value range."""
    data = np.asarray(frame)
    if np.iscomplexobj(data):
        data = np.abs(data)
    integral = data.dtype.kind in "iub"
    data = data[np.isfinite(data)].astype(np.float64)
    strip = np.full((height, width), 255, np.uint8)
    if data.size == 0:
        return strip
    low, high = float(data.min()), float(data.max())
    bins = min(width, int(high - low) + 1) if integral else width
    counts, _ = np.histogram(data, bins=bins, range=(low, high if high > low else low + 1))
    counts = counts[np.arange(width) * bins // width]  # integers: one bar per value
    levels = np.log1p(counts)
    bars_height = height - LABEL_HEIGHT
    bars = np.round(levels / max(levels.max(), 1e-12) * (bars_height - 1)).astype(int)
    rows = np.arange(bars_height)[:, None]
    strip[:bars_height][rows >= (bars_height - bars)[None, :]] = 40
    return strip


def value_range(frame: np.ndarray) -> tuple[float, float]:
    """The smallest and largest finite value (of the magnitude for complex data)."""
    data = np.asarray(frame)
    data = np.abs(data) if np.iscomplexobj(data) else data
    finite = data[np.isfinite(data)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def preview_array(frame: np.ndarray, max_size: int = 512) -> np.ndarray:
    """The uint8 picture: the frame, its longer side brought to at most ``max_size``
    (shrunk by block means, or enlarged by a whole factor so each pixel stays a
    sharp square), with its histogram below, as one 2-D array."""
    gray = to_gray(frame)
    longest = max(gray.shape)
    step = max(1, int(np.ceil(longest / max_size)))
    if step > 1:  # block means keep the picture's noise level honest
        ny, nx = (gray.shape[0] // step) * step, (gray.shape[1] // step) * step
        blocks = gray[:ny, :nx].reshape(ny // step, step, nx // step, step)
        gray = blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    elif longest * 2 <= max_size:
        factor = max_size // longest
        gray = np.repeat(np.repeat(gray, factor, axis=0), factor, axis=1)
    gap = np.full((4, gray.shape[1]), 255, np.uint8)
    return np.vstack([gray, gap, histogram_strip(frame, gray.shape[1])])


def save_png(picture: np.ndarray, path: str | os.PathLike,
             value_range: tuple[float, float] | None = None) -> tuple[int, int]:
    """Write a uint8 2-D array as a PNG; returns ``(width, height)``. With
    ``value_range`` its ends are written in the bottom corners, under the histogram."""
    image_module, draw_module = _pillow()
    image = image_module.fromarray(np.ascontiguousarray(picture, dtype=np.uint8))
    if value_range is not None:
        draw = draw_module.Draw(image)
        low, high = (f"{v:.4g}" for v in value_range)
        top = image.height - LABEL_HEIGHT + 1
        draw.text((2, top), low, fill=0)
        draw.text((image.width - 2 - draw.textlength(high), top), high, fill=0)
    image.save(os.fspath(path), format="PNG")
    return image.size


def _pillow() -> Any:
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise UnsupportedError('pictures need Pillow: pip install "mrcz[imaging]"') from None
    return Image, ImageDraw
