"""The PNG encoder and the two chart shapes, read back by an independent chunk reader."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from lanalyze.reports import png


def decode(data: bytes) -> np.ndarray:
    """A minimal reader for what the encoder writes (8-bit RGB, filter 0), checking each
    chunk's CRC (PNG section 5.3) and the chunk order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, kinds, idat = 8, [], b""
    width = height = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        kinds.append(kind)
        if kind == b"IHDR":
            width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", body)
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * 3)
    assert not raw[:, 0].any()  # filter type 0 on every row
    return raw[:, 1:].reshape(height, width, 3)


def test_round_trip() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert (decode(png.encode_png(pixels)) == pixels).all()


def test_bad_arrays() -> None:
    with pytest.raises(ValueError):
        png.encode_png(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        png.encode_png(np.zeros((0, 4, 3), dtype=np.uint8))


def test_bars_are_proportional() -> None:
    image = decode(png.bar_chart([[100.0, 50.0, 0.0, float("nan")]], width=400, height=200))
    blue = (image == png.PALETTE[0]).all(axis=2)
    heights = [int(blue[:, x].sum()) for x in (60, 160)]  # the middle of bars 1 and 2
    assert heights[0] > 0 and abs(heights[1] * 2 - heights[0]) <= 2
    assert not blue[:, 260].any() and not blue[:, 360].any()  # zero and NaN draw nothing


def test_lines_use_the_palette_in_order() -> None:
    image = decode(png.line_chart([[0, 10, 0], [5, 5, 5]], width=300, height=150))
    for index in (0, 1):
        assert (image == png.PALETTE[index]).all(axis=2).any()
    # The flat series is one horizontal band: every column between the margins has it.
    second = (image == png.PALETTE[1]).all(axis=2)
    assert second[:, 10:290].any(axis=0).all()


def test_empty_chart_is_a_valid_image() -> None:
    assert decode(png.bar_chart([])).shape == (240, 640, 3)
    assert decode(png.line_chart([[]])).shape == (240, 640, 3)
