"""The one column catalogue of a stored flow (in the spirit of Akvorado's schema package).

Every flow column is declared once, here. From this list come:

* the storage schema (:func:`arrow_schema`, and through it the Parquet files and rollups),
* the decoders' field map (:data:`BY_IPFIX_ID`: IPFIX / NetFlow v9 information element id ->
  column, with how to convert the wire value),
* the report dimensions (:func:`dimensions`: the columns a report may group or filter by).

IP addresses are stored as 16 bytes, IPv4 as IPv4-mapped IPv6 (``::ffff:a.b.c.d``), so one
column holds both families; MAC addresses as the 48-bit integer. Timestamps are UTC
milliseconds since the epoch. Counters are the raw exported values; ``sampling_rate`` (1 when
unsampled) is kept beside them and reports multiply by it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    # Imported where used: the report commands read the catalogue's names and kinds only,
    # and numpy with pyarrow would double their start-up (docs/performance.md).
    import numpy as np
    import pyarrow as pa

    LABEL_TYPE: pa.DataType

Kind = Literal["u8", "u16", "u32", "u64", "ip", "mac", "time_ms", "str"]


@functools.cache
def _arrow_types() -> dict[Kind, pa.DataType]:
    import pyarrow as pa

    return {
        "u8": pa.uint8(),
        "u16": pa.uint16(),
        "u32": pa.uint32(),
        "u64": pa.uint64(),
        "ip": pa.binary(16),
        "mac": pa.uint64(),
        "time_ms": pa.uint64(),
        "str": pa.string(),
    }


@functools.cache
def _numpy_dtypes() -> dict[Kind, np.dtype[np.generic]]:
    import numpy as np

    return {
        "u8": np.dtype(np.uint8),
        "u16": np.dtype(np.uint16),
        "u32": np.dtype(np.uint32),
        "u64": np.dtype(np.uint64),
        "ip": np.dtype("S16"),
        "mac": np.dtype(np.uint64),
        "time_ms": np.dtype(np.uint64),
        "str": np.dtype(object),
    }


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    description: str
    ipfix_ids: tuple[int, ...] = ()
    """IANA IPFIX element ids (= NetFlow v9 field types below 128) that fill this column."""
    dimension: bool = False
    """Reports may group and filter by it."""
    metric: bool = False
    """Summed by reports (bytes, packets, flows)."""
    aliases: tuple[str, ...] = field(default=())
    """Other names users type for it (``srcip`` for ``src_addr``)."""

    @property
    def arrow_type(self) -> pa.DataType:
        return _arrow_types()[self.kind]

    @property
    def numpy_dtype(self) -> np.dtype[np.generic]:
        return _numpy_dtypes()[self.kind]


COLUMNS: tuple[Column, ...] = (
    # When and from whom.
    Column("time_received", "time_ms", "When the collector received the export packet."),
    Column("time_start", "time_ms", "Flow start (UTC).", (150, 152, 154, 156, 22)),
    Column("time_end", "time_ms", "Flow end (UTC).", (151, 153, 155, 157, 21)),
    Column("exporter", "ip", "Address the export packet came from.", dimension=True),
    Column(
        "observation_domain",
        "u32",
        "IPFIX observation domain id / NetFlow v9 source id (0 for v5).",
        dimension=True,
    ),
    Column("sampling_rate", "u32", "1 in N packets sampled (1: unsampled).", (34, 305, 306)),
    Column("sampler_id", "u32", "Sampler that produced the flow (IE 48 / 302).", (48, 302)),
    # Counters.
    Column("bytes", "u64", "Octets as exported (not scaled by sampling).", (1, 85), metric=True),
    Column("packets", "u64", "Packets as exported (not scaled).", (2, 86), metric=True),
    Column("flows", "u64", "Flows this record stands for (1, or IE 3).", (3,), metric=True),
    # Addresses and ports.
    Column("src_addr", "ip", "Source address.", (8, 27), True, aliases=("srcip", "src_ip")),
    Column("dst_addr", "ip", "Destination address.", (12, 28), True, aliases=("dstip", "dst_ip")),
    Column("src_port", "u16", "Source transport port.", (7,), True, aliases=("srcport",)),
    Column("dst_port", "u16", "Destination transport port.", (11,), True, aliases=("dstport",)),
    Column("protocol", "u8", "IP protocol number.", (4,), True, aliases=("proto",)),
    Column("tos", "u8", "IP type of service byte (DSCP << 2 | ECN).", (5,), True),
    Column("tcp_flags", "u8", "Cumulative TCP flags.", (6,), True, aliases=("flags",)),
    Column("icmp_type", "u8", "ICMP / ICMPv6 type.", (176, 178), True),
    Column("icmp_code", "u8", "ICMP / ICMPv6 code.", (177, 179), True),
    Column("src_mask", "u8", "Source prefix length.", (9, 29), True),
    Column("dst_mask", "u8", "Destination prefix length.", (13, 30), True),
    Column("next_hop", "ip", "IP next hop.", (15, 62), True),
    Column("bgp_next_hop", "ip", "BGP next hop.", (18, 63), True),
    # Routing and interfaces.
    Column("src_as", "u32", "Source AS number.", (16,), True, aliases=("srcas",)),
    Column("dst_as", "u32", "Destination AS number.", (17,), True, aliases=("dstas",)),
    Column("in_if", "u32", "Input interface ifIndex.", (10, 252), True, aliases=("input",)),
    Column("out_if", "u32", "Output interface ifIndex.", (14, 253), True, aliases=("output",)),
    Column("direction", "u8", "Flow direction: 0 ingress, 1 egress.", (61,), True),
    Column("end_reason", "u8", "Flow end reason (IE 136).", (136,), True),
    Column("src_vlan", "u16", "Source VLAN id.", (58, 243), True),
    Column("dst_vlan", "u16", "Destination VLAN id.", (59, 254), True),
    Column("src_mac", "mac", "Source MAC address.", (56, 81), True),
    Column("dst_mac", "mac", "Destination MAC address.", (80, 57), True),
    Column("ip_version", "u8", "IP version (4 or 6).", (60,), True),
    Column(
        "app_id",
        "u64",
        "Application id (IE 95, RFC 6759: engine << 24 | selector for 4 bytes).",
        (95,),
        True,
        aliases=("appid",),
    ),
    # Enrichment at ingest (lanalyze.flows.enrich): text, null when unknown or not configured.
    Column(
        "src_country", "str", "Source country (ISO 3166 code).", (), True, aliases=("srccountry",)
    ),
    Column(
        "dst_country", "str", "Destination country (ISO 3166).", (), True, aliases=("dstcountry",)
    ),
    Column("src_as_name", "str", "Source AS organisation.", (), True, aliases=("srcasname",)),
    Column("dst_as_name", "str", "Destination AS organisation.", (), True, aliases=("dstasname",)),
    Column("src_net_name", "str", "Source network name.", (), True, aliases=("srcnetname",)),
    Column("dst_net_name", "str", "Destination network name.", (), True, aliases=("dstnetname",)),
    Column("src_net_role", "str", "Source network role.", (), True, aliases=("srcnetrole",)),
    Column("dst_net_role", "str", "Destination network role.", (), True, aliases=("dstnetrole",)),
    Column("exporter_name", "str", "Exporter name (rules).", (), True, aliases=("exportername",)),
    Column("in_if_name", "str", "Input interface name.", (), True, aliases=("inifname",)),
    Column("out_if_name", "str", "Output interface name.", (), True, aliases=("outifname",)),
    Column(
        "in_if_boundary", "str", "Input interface boundary.", (), True, aliases=("inifboundary",)
    ),
    Column(
        "out_if_boundary", "str", "Output interface boundary.", (), True, aliases=("outifboundary",)
    ),
    Column(
        "in_if_provider", "str", "Input interface provider.", (), True, aliases=("inifprovider",)
    ),
    Column(
        "out_if_provider", "str", "Output interface provider.", (), True, aliases=("outifprovider",)
    ),
    Column("app_name", "str", "Application name (IE 95 or port).", (), True, aliases=("appname",)),
    # Elements with no column of their own, as JSON {"ENTERPRISE:ID": value}. Kept, not dropped.
    Column("extra", "str", "Other and enterprise-specific elements as JSON (hex for bytes)."),
)

BY_NAME: dict[str, Column] = {column.name: column for column in COLUMNS}

BY_IPFIX_ID: dict[int, Column] = {
    element: column for column in COLUMNS for element in column.ipfix_ids
}


@functools.cache
def arrow_schema() -> pa.Schema:
    # Cached: the schema is immutable, and building its fields per decoded batch showed up in
    # the ingest profile.
    import pyarrow as pa

    return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.kind == "str") for c in COLUMNS])


LABEL_COLUMNS = tuple(c.name for c in COLUMNS if c.kind == "str" and c.name != "extra")
"""The enrichment names (issue 16, :mod:`lanalyze.flows.enrich`): few distinct values each."""


@functools.cache
def label_type() -> pa.DataType:
    """How the ingest path carries a name column: indices into the few distinct names
    (also as ``LABEL_TYPE``)."""
    import pyarrow as pa

    return pa.dictionary(pa.int32(), pa.string())


def __getattr__(name: str) -> Any:
    if name == "LABEL_TYPE":  # a constant once; built on first use now (pyarrow)
        return label_type()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def batch_schema() -> pa.Schema:
    """The schema of the ingest path's batches (:func:`to_record_batch`): the stored schema
    with the name columns as dictionary arrays (:data:`LABEL_TYPE`), so no text is made per
    flow. Stored, they are text again (a Parquet string column, dictionary-encoded); a
    segment omits the name columns that are entirely null (:mod:`lanalyze.flows.store.writer`)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(f.name, label_type(), nullable=True) if f.name in LABEL_COLUMNS else f
            for f in arrow_schema()
        ]
    )


def as_stored(table: pa.Table) -> pa.Table:
    """A table of :func:`batch_schema` (or already stored) with :func:`arrow_schema`'s types:
    the name columns as plain text (for stores that take no dictionaries)."""
    if table.schema.equals(arrow_schema()):
        return table
    return table.cast(arrow_schema())


ADDED_COLUMNS = frozenset(
    {"app_id", *(c.name for c in COLUMNS if c.kind == "str" and c.name != "extra")}
)
"""Columns added by the enrichment work (issue 16): segments written before lack them."""


def conform(table: pa.Table) -> pa.Table:
    """A table of stored flows with every catalogue column, in catalogue order: columns an
    older segment lacks (:data:`ADDED_COLUMNS`) are added, null (text) or zero (numbers)."""
    import numpy as np
    import pyarrow as pa

    rows = table.num_rows
    names = set(table.column_names)
    arrays = []
    for item in arrow_schema():
        if item.name in names:
            arrays.append(table.column(item.name))
        elif pa.types.is_string(item.type):
            arrays.append(pa.nulls(rows, item.type))
        else:
            arrays.append(pa.array(np.zeros(rows, dtype=BY_NAME[item.name].numpy_dtype)))
    return pa.Table.from_arrays(arrays, schema=arrow_schema())


def dimensions() -> list[Column]:
    return [column for column in COLUMNS if column.dimension]


def metrics() -> list[Column]:
    return [column for column in COLUMNS if column.metric]


def resolve(name: str) -> Column:
    """The column a user's name refers to (its own name or an alias); KeyError if none."""
    if name in BY_NAME:
        return BY_NAME[name]
    for column in COLUMNS:
        if name in column.aliases:
            return column
    raise KeyError(name)


def empty_batch(rows: int) -> dict[str, np.ndarray]:
    """Zero-filled columns for ``rows`` flows: decoders fill what their records carry."""
    import numpy as np

    batch = {c.name: np.zeros(rows, dtype=c.numpy_dtype) for c in COLUMNS if c.kind != "str"}
    batch["flows"][:] = 1
    batch["sampling_rate"][:] = 1
    return batch


def to_record_batch(
    columns: dict[str, np.ndarray],
    extra: list[str | None] | None = None,
    labels: dict[str, pa.Array] | None = None,
) -> pa.RecordBatch:
    """A decoder's numpy columns as an Arrow batch in catalogue order (the store's input).

    Zero-copy where the numpy layout is Arrow's (contiguous, native order): the batch shares
    the decoder's memory, so the ingest path pays no conversion per flow. ``extra`` absent is
    an all-null column, built without a Python list; so is every name column ``labels`` (the
    enricher's dictionary columns, :mod:`lanalyze.flows.enrich`) does not give. The schema is
    :func:`batch_schema`."""
    import pyarrow as pa

    LABEL_TYPE = label_type()  # the name it had as a module constant
    rows = len(columns["bytes"])
    arrays: list[pa.Array] = []
    nulls: pa.Array | None = None  # one all-null array for every absent name column
    for column in COLUMNS:
        if column.name in LABEL_COLUMNS:
            given = labels.get(column.name) if labels else None
            if given is None:
                nulls = pa.nulls(rows, LABEL_TYPE) if nulls is None else nulls
                arrays.append(nulls)
            else:
                arrays.append(given if given.type == LABEL_TYPE else given.dictionary_encode())
        elif column.kind == "str":
            if extra is not None:
                arrays.append(pa.array(extra, pa.string()))
            else:
                arrays.append(pa.nulls(rows, pa.string()))
        else:
            arrays.append(_wrap(columns[column.name], column, rows))
    return pa.RecordBatch.from_arrays(arrays, schema=batch_schema())


def _wrap(values: np.ndarray, column: Column, rows: int) -> pa.Array:
    """A numpy column as an Arrow array sharing its memory. ``Array.from_buffers`` over the
    array's buffer costs a tenth of ``pa.array`` (7 against 10-70 µs a column: ``pa.array``
    inspects the numpy array for pandas types first), ~30 columns every batch. A column not
    already in Arrow's layout (another dtype, a strided view) takes the general way."""
    import numpy as np  # lazily, as everywhere in this module: report commands never load it
    import pyarrow as pa

    if values.dtype != column.numpy_dtype or values.ndim != 1 or len(values) != rows:
        if column.kind == "ip":
            data = np.ascontiguousarray(values).view(np.uint8)
            return pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), rows, [None, pa.py_buffer(data)]
            )
        return pa.array(values, column.arrow_type)
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(column.arrow_type, rows, [None, pa.py_buffer(values)])
