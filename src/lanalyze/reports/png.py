"""Charts as PNG images for report mails: bars and line series on a numpy raster.

Mail clients show no SVG and fetch no remote content, so a report's charts travel as inline
PNG parts. Why not a plotting library: matplotlib is on the package index, but it brings
~40 MB of dependencies and half a second of import for two chart shapes whose labels and
figures are in the mail's HTML table beside them anyway; this module needs numpy (already
ours) and zlib. No text is drawn: the table under each chart names the bars and the colours.

The encoder writes the PNG (ISO/IEC 15948, W3C PNG 2nd edition) chunks IHDR (8-bit RGB,
no interlace), one IDAT (each row with filter type 0, deflated) and IEND, each with its
CRC-32 (section 5.3).

Trust: the values come from our own reports; NaN and infinities are drawn as zero, and the
image size is fixed by the caller (at most :data:`MAX_PIXELS`).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

MAX_PIXELS = 2_000_000
PALETTE = (
    (0x2B, 0x6C, 0xB0),
    (0xE0, 0x7B, 0x39),
    (0x3A, 0x9E, 0x5C),
    (0xC4, 0x3E, 0x4B),
    (0x8E, 0x6C, 0xB8),
    (0x7F, 0x7F, 0x7F),
    (0xD4, 0xA0, 0x17),
    (0x1A, 0xA3, 0xB5),
)
"""Series colours, also used for the legend swatches in the HTML (``colour_hex``)."""
BACKGROUND = (0xFF, 0xFF, 0xFF)
AXIS = (0x88, 0x88, 0x88)
GRID = (0xE6, 0xE6, 0xE6)
MARGIN = 8


def colour_hex(index: int) -> str:
    r, g, b = PALETTE[index % len(PALETTE)]
    return f"#{r:02x}{g:02x}{b:02x}"


def encode_png(pixels: np.ndarray) -> bytes:
    """An ``(height, width, 3)`` uint8 array as PNG bytes."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError("expected an (height, width, 3) uint8 array")
    height, width, _ = pixels.shape
    if not 0 < height * width <= MAX_PIXELS:
        raise ValueError("image size out of range")
    rows = np.zeros((height, 1 + width * 3), dtype=np.uint8)  # filter byte 0: None
    rows[:, 1:] = pixels.reshape(height, width * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def _canvas(width: int, height: int) -> np.ndarray:
    if not 0 < width * height <= MAX_PIXELS:
        raise ValueError("image size out of range")
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    return image


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(array) & (array > 0), array, 0.0)


def _grid(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> None:
    for fraction in (0.25, 0.5, 0.75, 1.0):
        y = bottom - round((bottom - top) * fraction)
        image[y, left:right] = GRID
    image[bottom, left:right] = AXIS
    image[top : bottom + 1, left] = AXIS


def bar_chart(groups: Sequence[Sequence[float]], *, width: int = 640, height: int = 240) -> bytes:
    """Vertical bars: one cluster per category, one bar per series in it (``groups[s][c]``
    is series ``s`` of category ``c``), coloured by :data:`PALETTE` in series order."""
    image = _canvas(width, height)
    series = [_clean(values) for values in groups]
    categories = max((len(values) for values in series), default=0)
    top, bottom, left, right = MARGIN, height - MARGIN, MARGIN, width - MARGIN
    _grid(image, top, bottom, left, right)
    peak = max((float(values.max()) for values in series if values.size), default=0.0)
    if categories and peak > 0:
        slot = (right - left - 1) / categories
        bar = max(1.0, slot * 0.8 / len(series))
        for s, values in enumerate(series):
            colour = PALETTE[s % len(PALETTE)]
            for c, value in enumerate(values):
                x0 = left + 1 + round(c * slot + slot * 0.1 + s * bar)
                x1 = max(x0 + 1, left + 1 + round(c * slot + slot * 0.1 + (s + 1) * bar))
                y0 = bottom - round((bottom - top) * value / peak)
                if y0 < bottom:
                    image[y0:bottom, x0 : min(x1, right)] = colour
    return encode_png(image)


def line_chart(lines: Sequence[Sequence[float]], *, width: int = 640, height: int = 240) -> bytes:
    """Line series over equally spaced points (``lines[s][t]``), 2 px wide, in palette order."""
    image = _canvas(width, height)
    series = [_clean(values) for values in lines]
    points = max((len(values) for values in series), default=0)
    top, bottom, left, right = MARGIN, height - MARGIN, MARGIN, width - MARGIN
    _grid(image, top, bottom, left, right)
    peak = max((float(values.max()) for values in series if values.size), default=0.0)
    if points and peak > 0:
        span = right - left - 2
        for s, values in enumerate(series):
            colour = PALETTE[s % len(PALETTE)]
            xs = left + 1 + np.arange(len(values)) * (span / max(points - 1, 1))
            ys = bottom - 1 - values / peak * (bottom - top - 2)
            if len(values) == 1:
                xs, ys = np.repeat(xs, 2), np.repeat(ys, 2)
            # Walk the polyline by its length in pixels (half-pixel steps): no pixel column
            # or row of a steep segment is skipped.
            length = np.concatenate(([0.0], np.cumsum(np.abs(np.diff(xs)) + np.abs(np.diff(ys)))))
            t = np.arange(0.0, float(length[-1]) + 0.5, 0.5)
            px = np.interp(t, length, xs).round().astype(np.int64)
            py = np.interp(t, length, ys).round().astype(np.int64)
            for dy in (0, 1):
                image[np.clip(py + dy, top, bottom - 1), np.clip(px, left + 1, right - 1)] = colour
    return encode_png(image)
