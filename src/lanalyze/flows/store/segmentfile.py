"""Raw flow segments encoded as Parquet with numpy: the writer's fast path.

Why by hand: pyarrow's Parquet writer spent ~0.20 µs of CPU per flow on a raw segment, as
much as nfcapd spends on a whole v5 flow, and 40 % of it on the five 16-byte address columns,
which it serialises value by value (a pointer and a 16-byte copy per value), compressed or
not (docs/performance.md, issue 19). A segment as the collector writes it is simple: one row
group, required integer and address columns, the all-null ``extra`` column. Here each column
is one data page: integers byte-stream-split with one numpy transpose, addresses as their
bytes (PLAIN is the values back to back), each page compressed whole with Arrow's LZ4_RAW
codec; about 0.12 µs a flow, and fewer bytes (one page per column, compressed at once).

Format: Apache Parquet (parquet-format 2.x, ``parquet.thrift``): ``PAR1``, per column a
``PageHeader`` (DATA_PAGE, v1) and its compressed page, then the ``FileMetaData`` footer in
the Thrift compact protocol, its length (4 bytes, little-endian) and ``PAR1``. Types as
pyarrow writes them (INT32 with the UINT_8/16/32 converted and INTEGER logical types, INT64
UINT_64, FIXED_LEN_BYTE_ARRAY(16), an OPTIONAL BYTE_ARRAY UTF8 for ``extra``), TYPE_ORDER
column orders, and min/max statistics for the time columns (readers prune by them). Readers
(DuckDB, pyarrow) see the same schema and values as pyarrow's files: a test compares them.

Anything else (enrichment name columns, a non-null ``extra``, a codec other than LZ4 or none)
returns False and the caller uses pyarrow. Nothing here parses untrusted bytes.
"""

from __future__ import annotations

import os
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from lanalyze.flows.catalogue import COLUMNS, Column

Array = npt.NDArray[Any]

MAGIC = b"PAR1"
CREATED_BY = b"lanalyze segmentfile version 1.0.0"

# parquet.thrift enums.
_INT32, _INT64, _BYTE_ARRAY, _FLBA = 1, 2, 6, 7
_REQUIRED, _OPTIONAL = 0, 1
_PLAIN, _RLE, _BYTE_STREAM_SPLIT = 0, 3, 9
_UNCOMPRESSED, _LZ4_RAW = 0, 7
_DATA_PAGE = 0
_UTF8, _UINT_8, _UINT_16, _UINT_32, _UINT_64 = 0, 11, 12, 13, 14

# Thrift compact protocol type codes.
_T_TRUE, _T_FALSE, _T_BYTE, _T_I32, _T_I64, _T_BINARY, _T_LIST, _T_STRUCT = (
    1,
    2,
    3,
    5,
    6,
    8,
    9,
    12,
)

MAX_ROWS = 2**22
"""Larger segments (an import's; a collector's are at most ``flows.segment_max_rows``) go to
pyarrow, which cuts them into row groups and pages: one page here holds a whole column, so
this bounds a page to 64 MiB (addresses) and the encoder's memory to a few such pages."""
CODECS = {"lz4": _LZ4_RAW, "none": _UNCOMPRESSED}
"""``flows.compression`` values this writer handles; others go to pyarrow."""
STATISTICS = ("time_received", "time_start", "time_end")

# (physical type, converted type, bit width, bytes per value) per catalogue kind.
_INTEGER_KINDS = {
    "u8": (_INT32, _UINT_8, 8, 4),
    "u16": (_INT32, _UINT_16, 16, 4),
    "u32": (_INT32, _UINT_32, 32, 4),
    "u64": (_INT64, _UINT_64, 64, 8),
    "mac": (_INT64, _UINT_64, 64, 8),
    "time_ms": (_INT64, _UINT_64, 64, 8),
}


class _Compact:
    """A Thrift compact-protocol writer: just the parts ``parquet.thrift``'s structs use."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._last = [0]

    def _varint(self, value: int) -> None:
        while value > 0x7F:
            self.out.append((value & 0x7F) | 0x80)
            value >>= 7
        self.out.append(value)

    def _zigzag(self, value: int) -> None:
        self._varint(value * 2 if value >= 0 else -value * 2 - 1)

    def _field(self, fid: int, ctype: int) -> None:
        delta = fid - self._last[-1]
        if 0 < delta <= 15:
            self.out.append((delta << 4) | ctype)
        else:
            self.out.append(ctype)
            self._zigzag(fid)
        self._last[-1] = fid

    def i32(self, fid: int, value: int) -> None:
        self._field(fid, _T_I32)
        self._zigzag(value)

    def i64(self, fid: int, value: int) -> None:
        self._field(fid, _T_I64)
        self._zigzag(value)

    def byte(self, fid: int, value: int) -> None:
        self._field(fid, _T_BYTE)
        self.out.append(value & 0xFF)

    def boolean(self, fid: int, value: bool) -> None:
        self._field(fid, _T_TRUE if value else _T_FALSE)

    def binary(self, fid: int, value: bytes) -> None:
        self._field(fid, _T_BINARY)
        self._varint(len(value))
        self.out += value

    def begin(self, fid: int) -> None:
        """A struct-valued field; :meth:`end` closes it."""
        self._field(fid, _T_STRUCT)
        self._last.append(0)

    def end(self) -> None:
        self.out.append(0)
        self._last.pop()

    def _list(self, fid: int, ctype: int, size: int) -> None:
        self._field(fid, _T_LIST)
        if size < 15:
            self.out.append((size << 4) | ctype)
        else:
            self.out.append(0xF0 | ctype)
            self._varint(size)

    def i32_list(self, fid: int, values: list[int]) -> None:
        self._list(fid, _T_I32, len(values))
        for value in values:
            self._zigzag(value)

    def binary_list(self, fid: int, values: list[bytes]) -> None:
        self._list(fid, _T_BINARY, len(values))
        for value in values:
            self._varint(len(value))
            self.out += value

    def struct_list(self, fid: int, size: int) -> None:
        """A list of structs: then each element between :meth:`element` and :meth:`end`."""
        self._list(fid, _T_STRUCT, size)

    def element(self) -> None:
        self._last.append(0)

    def stop(self) -> bytes:
        """The top-level struct, closed."""
        self.out.append(0)
        return bytes(self.out)


def _page_header(uncompressed: int, compressed: int, values: int, encoding: int) -> bytes:
    header = _Compact()
    header.i32(1, _DATA_PAGE)
    header.i32(2, uncompressed)
    header.i32(3, compressed)
    header.begin(5)  # DataPageHeader
    header.i32(1, values)
    header.i32(2, encoding)
    header.i32(3, _RLE)  # definition levels
    header.i32(4, _RLE)  # repetition levels
    header.end()
    return header.stop()


def _addresses(chunks: list[pa.Array], rows: int) -> Array:
    """16-byte addresses back to back (PLAIN): one copy from the batches' buffers."""
    out = np.empty((rows, 16), dtype=np.uint8)
    at = 0
    for chunk in chunks:
        n = len(chunk)
        data = chunk.buffers()[1]
        assert data is not None
        out[at : at + n] = np.frombuffer(data, np.uint8, n * 16, chunk.offset * 16).reshape(n, 16)
        at += n
    return out.reshape(-1)


def _integers(chunks: list[pa.Array], column: Column, rows: int) -> tuple[Array, int, int]:
    """The page of an integer column byte-stream-split (byte 0 of every value, then byte 1
    ...), and the column's minimum and maximum. A constant column (half of a v5 segment's)
    is filled stream by stream; 8- and 16-bit values, stored as INT32, have zero upper
    streams; only the others are transposed."""
    dtype = column.numpy_dtype
    size = dtype.itemsize
    width = _INTEGER_KINDS[column.kind][3]
    parts = []
    for chunk in chunks:
        data = chunk.buffers()[1]
        assert data is not None
        parts.append(np.frombuffer(data, dtype, len(chunk), chunk.offset * size))
    low = min(int(part.min()) for part in parts if len(part))
    high = max(int(part.max()) for part in parts if len(part))
    split = np.empty((width, rows), dtype=np.uint8)
    if low == high:
        for stream, byte in enumerate(low.to_bytes(width, "little")):
            split[stream].fill(byte)
        return split.reshape(-1), low, high
    at = 0
    for part in parts:
        n = len(part)
        split[:size, at : at + n] = part.view(np.uint8).reshape(n, size).T
        at += n
    if size < width:
        split[size:] = 0
    return split.reshape(-1), low, high


def _null_levels(rows: int) -> bytes:
    """Definition levels of ``rows`` nulls (max level 1): one RLE run of zeros, its length
    first (data page v1)."""
    run = _Compact()
    run._varint(rows << 1)
    run.out.append(0)
    return len(run.out).to_bytes(4, "little") + bytes(run.out)


def can_write(table: pa.Table, compression: str) -> bool:
    """Whether :func:`write` handles this segment (else pyarrow does)."""
    if compression not in CODECS or not 0 < table.num_rows <= MAX_ROWS:
        return False
    if table.column_names != [c.name for c in COLUMNS if c.name in table.column_names]:
        return False
    names = set(table.column_names)
    for column in COLUMNS:
        if column.kind == "str":
            if column.name == "extra":
                if "extra" not in names or table.column("extra").null_count != table.num_rows:
                    return False
            elif column.name in names:
                return False  # enrichment names: dictionary pages, pyarrow's job
        elif (
            column.name not in names
            or table.column(column.name).null_count
            or table.schema.field(column.name).type != column.arrow_type
        ):
            return False
    return True


def write(table: pa.Table, sink: IO[bytes], compression: str) -> None:
    """Encode ``table`` (checked by :func:`can_write`) as one Parquet file into ``sink``."""
    rows = table.num_rows
    codec_id = CODECS[compression]
    codec = pa.Codec("lz4_raw") if codec_id == _LZ4_RAW else None
    sink.write(MAGIC)
    offset = len(MAGIC)
    chunks_meta: list[tuple[Column, int, int, int, int, bytes | None, bytes | None]] = []
    total_uncompressed = 0
    for column in COLUMNS:
        low: int | None = None
        high: int | None = None
        if column.kind == "str":
            if column.name != "extra":
                continue
            page = np.frombuffer(_null_levels(rows), np.uint8)
            encoding = _PLAIN
        elif column.kind == "ip":
            page = _addresses(table.column(column.name).chunks, rows)
            encoding = _PLAIN
        else:
            page, low, high = _integers(table.column(column.name).chunks, column, rows)
            encoding = _BYTE_STREAM_SPLIT
        body = codec.compress(page, asbytes=False) if codec is not None else pa.py_buffer(page)
        header = _page_header(len(page), body.size, rows, encoding)
        sink.write(header)
        sink.write(body)
        if column.name not in STATISTICS:
            low = high = None
        uncompressed = len(header) + len(page)
        compressed = len(header) + body.size
        chunks_meta.append(
            (
                column,
                offset,
                uncompressed,
                compressed,
                encoding,
                None if low is None else low.to_bytes(8, "little"),
                None if high is None else high.to_bytes(8, "little"),
            )
        )
        total_uncompressed += uncompressed
        offset += compressed
    footer = _footer(rows, chunks_meta, codec_id, total_uncompressed)
    sink.write(footer)
    sink.write(len(footer).to_bytes(4, "little"))
    sink.write(MAGIC)


def _footer(
    rows: int,
    chunks: list[tuple[Column, int, int, int, int, bytes | None, bytes | None]],
    codec_id: int,
    total_uncompressed: int,
) -> bytes:
    meta = _Compact()
    meta.i32(1, 2)  # version
    meta.struct_list(2, len(chunks) + 1)
    meta.element()  # the root
    meta.binary(4, b"schema")
    meta.i32(5, len(chunks))
    meta.end()
    for column, *_ in chunks:
        meta.element()
        _schema_element(meta, column)
        meta.end()
    meta.i64(3, rows)
    meta.struct_list(4, 1)
    meta.element()  # RowGroup
    meta.struct_list(1, len(chunks))
    for column, offset, uncompressed, compressed, encoding, low, high in chunks:
        meta.element()  # ColumnChunk
        meta.i64(2, 0)  # file_offset (deprecated; pyarrow writes 0 too)
        meta.begin(3)  # ColumnMetaData
        meta.i32(1, _physical(column))
        meta.i32_list(2, [_RLE, encoding] if column.kind == "str" else [encoding])
        meta.binary_list(3, [column.name.encode()])
        meta.i32(4, codec_id)
        meta.i64(5, rows)
        meta.i64(6, uncompressed)
        meta.i64(7, compressed)
        meta.i64(9, offset)
        if low is not None and high is not None:
            meta.begin(12)  # Statistics
            meta.i64(3, 0)  # null_count
            meta.binary(5, high)
            meta.binary(6, low)
            meta.end()
        meta.end()
        meta.end()
    meta.i64(2, total_uncompressed)
    meta.i64(3, rows)
    meta.end()
    meta.binary(6, CREATED_BY)
    meta.struct_list(7, len(chunks))
    for _ in chunks:
        meta.element()  # ColumnOrder
        meta.begin(1)  # TYPE_ORDER
        meta.end()
        meta.end()
    return meta.stop()


def _physical(column: Column) -> int:
    if column.kind == "ip":
        return _FLBA
    if column.kind == "str":
        return _BYTE_ARRAY
    return _INTEGER_KINDS[column.kind][0]


def _schema_element(meta: _Compact, column: Column) -> None:
    meta.i32(1, _physical(column))
    if column.kind == "ip":
        meta.i32(2, 16)
    meta.i32(3, _OPTIONAL if column.kind == "str" else _REQUIRED)
    meta.binary(4, column.name.encode())
    if column.kind == "str":
        meta.i32(6, _UTF8)
        meta.begin(10)  # LogicalType
        meta.begin(1)  # STRING
        meta.end()
        meta.end()
    elif column.kind != "ip":
        _, converted, bits, _ = _INTEGER_KINDS[column.kind]
        meta.i32(6, converted)
        meta.begin(10)  # LogicalType
        meta.begin(10)  # INTEGER
        meta.byte(1, bits)
        meta.boolean(2, False)
        meta.end()
        meta.end()


def write_file(table: pa.Table, path: str | os.PathLike[str], compression: str) -> None:
    with open(path, "wb") as sink:
        write(table, sink, compression)
