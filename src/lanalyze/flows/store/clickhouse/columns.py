"""Whole-buffer column writers for the collector's numpy inserts (clickhouse-driver).

clickhouse-driver writes a numpy ``String`` or ``FixedString(N)`` column value by value: it
checks every value for null (pandas), copies the array, turns it into a list of Python
``bytes`` and writes each with its length. For a batch of a million flows with five address
columns and sixteen enrichment names that was ~2.5 µs of CPU a flow, most of the writer's
cost (docs/performance.md, "ClickHouse inserts"). Here the same bytes are built with numpy:

* ``FixedString(N)`` from an ``S<N>`` array: its buffer is already the native encoding
  (N bytes a value, zero-padded);
* ``String`` from an ``S<W>`` array: each value's length as a varint, then its bytes, built
  through one boolean mask over the array's rows (:func:`native_strings`).

Any other input goes the driver's own way. :func:`install` puts these classes in the driver's
numpy column factory for clients with ``strings_as_bytes`` (the writer's); a driver whose
layout differs keeps its own (slower, same bytes). An ``S`` array cannot hold a trailing NUL
byte (numpy strips it), so a name ending in NUL loses it: names are text.

Trust: the arrays are the collector's own columns, never a peer's bytes as they came.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

_lock = threading.Lock()
_installed: list[bool] = []  # [True] once installed in this process


def native_strings(values: np.ndarray) -> bytes:
    """The native ``String`` column encoding of an ``S<W>`` array (varint length + bytes)."""
    rows = len(values)
    width = values.dtype.itemsize
    if rows == 0:
        return b""
    lengths = np.char.str_len(values).astype(np.int64)
    if not lengths.any():
        return bytes(rows)  # every value empty: one zero length byte each
    if width >= 1 << 21:
        raise ValueError("a text value over 2 MiB")
    data = np.ascontiguousarray(values).view(np.uint8).reshape(rows, width)
    out = np.zeros((rows, 3 + width), dtype=np.uint8)
    mask = np.zeros((rows, 3 + width), dtype=bool)
    two, three = lengths >= 1 << 7, lengths >= 1 << 14
    out[:, 0] = (lengths & 0x7F) | (two << 7)
    out[:, 1] = ((lengths >> 7) & 0x7F) | (three << 7)
    out[:, 2] = lengths >> 14
    out[:, 3:] = data
    mask[:, 0] = True
    mask[:, 1] = two
    mask[:, 2] = three
    mask[:, 3:] = np.arange(width) < lengths[:, None]
    return out[mask].tobytes()


def _is_bytes(items: Any) -> bool:
    return isinstance(items, np.ndarray) and items.dtype.kind == "S" and items.ndim == 1


def install() -> None:
    """Use the whole-buffer writers in this process's clickhouse-driver (idempotent)."""
    with _lock:
        if _installed:
            return
        _installed.append(True)
        try:
            from clickhouse_driver.columns.numpy import service, stringcolumn

            original = service.create_string_column
            base_fixed = stringcolumn.NumpyByteFixedString
            base_text = stringcolumn.NumpyByteStringColumn
        except (ImportError, AttributeError):
            return  # another driver layout: its own writers, same bytes

        class FixedBytes(base_fixed):  # type: ignore[misc, valid-type]
            def prepare_items(self, items: Any) -> Any:
                # no nulls in an S array: the driver's null scan and copy are skipped
                return items if _is_bytes(items) else super().prepare_items(items)

            def write_items(self, items: Any, buf: Any) -> None:
                if _is_bytes(items) and items.dtype.itemsize == self.length:
                    buf.write(np.ascontiguousarray(items).tobytes())
                else:
                    super().write_items(items, buf)

        class Text(base_text):  # type: ignore[misc, valid-type]
            def prepare_items(self, items: Any) -> Any:
                return items if _is_bytes(items) else super().prepare_items(items)

            def write_items(self, items: Any, buf: Any) -> None:
                if _is_bytes(items):
                    buf.write(native_strings(items))
                else:
                    super().write_items(items, buf)

        def create_string_column(spec: str, column_options: dict[str, Any]) -> Any:
            context = column_options.get("context")
            settings = context.client_settings if context is not None else {}
            if not settings.get("strings_as_bytes"):
                return original(spec, column_options)
            if spec == "String":
                return Text(**column_options)
            return FixedBytes(int(spec[len("FixedString(") : -1]), **column_options)

        service.create_string_column = create_string_column
