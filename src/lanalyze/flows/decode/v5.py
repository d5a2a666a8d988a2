"""NetFlow v5, vectorised over a whole batch of export datagrams.

Format (Cisco's "NetFlow Export Datagram Format", v5): a 24-byte header (version, count,
sys_uptime, unix_secs, unix_nsecs, flow_sequence, engine_type, engine_id, sampling_interval:
top 2 bits mode, low 14 bits interval) and ``count`` (1..30) 48-byte records. The observation
domain of a v5 stream is ``engine_type << 8 | engine_id``.

All datagrams of the same length are stacked into one 2-D byte array and read through numpy
structured dtypes: no Python work per record, a few microseconds per datagram (sequence-number
accounting, which must follow arrival order). A datagram whose header count overruns its
length is dropped as the peer's error; bytes after the last record are ignored (padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lanalyze.flows import catalogue

Array = npt.NDArray[Any]

HEADER_LENGTH = 24
RECORD_LENGTH = 48
MAX_COUNT = 30

HEADER = np.dtype(
    [
        ("version", ">u2"),
        ("count", ">u2"),
        ("uptime", ">u4"),
        ("secs", ">u4"),
        ("nsecs", ">u4"),
        ("sequence", ">u4"),
        ("engine_type", "u1"),
        ("engine_id", "u1"),
        ("sampling", ">u2"),
    ]
)
RECORD = np.dtype(
    [
        ("src", "u1", (4,)),
        ("dst", "u1", (4,)),
        ("next_hop", "u1", (4,)),
        ("input", ">u2"),
        ("output", ">u2"),
        ("packets", ">u4"),
        ("bytes", ">u4"),
        ("first", ">u4"),
        ("last", ">u4"),
        ("src_port", ">u2"),
        ("dst_port", ">u2"),
        ("pad1", "u1"),
        ("tcp_flags", "u1"),
        ("protocol", "u1"),
        ("tos", "u1"),
        ("src_as", ">u2"),
        ("dst_as", ">u2"),
        ("src_mask", "u1"),
        ("dst_mask", "u1"),
        ("pad2", ">u2"),
    ]
)
assert HEADER.itemsize == HEADER_LENGTH and RECORD.itemsize == RECORD_LENGTH


@dataclass
class V5Datagrams:
    """Headers of the valid datagrams of a length group, for the caller's accounting."""

    indexes: list[int]  # positions in the batch
    counts: list[int]
    sequences: list[int]
    domains: list[int]


def decode_group(
    datas: Sequence[bytes | memoryview],
    indexes: Sequence[int],
    exporter16: Array,
    received_ms: Array,
    configured_rate: Array,
) -> tuple[dict[str, Array], V5Datagrams, list[int]]:
    """Decodes datagrams of one length; returns columns, valid headers, invalid indexes.

    ``exporter16`` (S16), ``received_ms`` and ``configured_rate`` are per datagram.
    """
    length = len(datas[0])
    k = len(datas)
    slots = (length - HEADER_LENGTH) // RECORD_LENGTH
    raw = np.frombuffer(b"".join(datas), dtype=np.uint8).reshape(k, length)
    header = np.ascontiguousarray(raw[:, :HEADER_LENGTH]).view(HEADER).reshape(k)
    count = header["count"].astype(np.int64)
    valid = (header["version"] == 5) & (count >= 1) & (count <= min(slots, MAX_COUNT))
    bad = np.flatnonzero(~valid)
    if len(bad):
        keep = np.flatnonzero(valid)
        header, raw, count = header[keep], raw[keep], count[keep]
        exporter16, received_ms = exporter16[keep], received_ms[keep]
        configured_rate = configured_rate[keep]
        good_indexes = [indexes[i] for i in keep.tolist()]
        k = len(keep)
    else:
        good_indexes = list(indexes)
    slots = min(slots, MAX_COUNT)
    body = raw[:, HEADER_LENGTH : HEADER_LENGTH + slots * RECORD_LENGTH]
    recs = np.ascontiguousarray(body).view(RECORD).reshape(k * slots)
    if k and int(count.min()) < slots:
        mask = (np.arange(slots)[None, :] < count[:, None]).ravel()
        recs = recs[mask]
    n = len(recs)

    def per_row(values: Array) -> Array:
        return np.repeat(values, count)

    uptime = header["uptime"].astype(np.int64)
    export_ms = header["secs"].astype(np.int64) * 1000 + header["nsecs"].astype(np.int64) // 10**6
    domain = (header["engine_type"].astype(np.uint32) << 8) | header["engine_id"]
    interval = (header["sampling"] & 0x3FFF).astype(np.uint32)
    rate = np.where(interval > 0, interval, configured_rate).astype(np.uint32)

    columns = catalogue.empty_batch(n)
    columns["time_received"][:] = per_row(received_ms)
    columns["exporter"][:] = per_row(exporter16)
    columns["observation_domain"][:] = per_row(domain)
    columns["sampling_rate"][:] = per_row(rate)
    row_export = per_row(export_ms)
    row_uptime = per_row(uptime)
    for column, field in (("time_start", "first"), ("time_end", "last")):
        delta = ((row_uptime - recs[field].astype(np.int64) + 2**31) % 2**32) - 2**31
        columns[column][:] = np.maximum(row_export - delta, 0)
    for column, field in (("src_addr", "src"), ("dst_addr", "dst"), ("next_hop", "next_hop")):
        target = columns[column].view(np.uint8).reshape(n, 16)
        target[:, 10:12] = 0xFF
        target[:, 12:] = recs[field]
    columns["bytes"][:] = recs["bytes"]
    columns["packets"][:] = recs["packets"]
    columns["in_if"][:] = recs["input"]
    columns["out_if"][:] = recs["output"]
    for name in ("src_port", "dst_port", "tcp_flags", "protocol", "tos", "src_mask", "dst_mask"):
        columns[name][:] = recs[name]
    columns["src_as"][:] = recs["src_as"]
    columns["dst_as"][:] = recs["dst_as"]
    columns["ip_version"][:] = 4
    # v5 has no ICMP fields: exporters put type << 8 | code in the destination port.
    is_icmp = columns["protocol"] == 1
    columns["icmp_type"][:] = np.where(is_icmp, recs["dst_port"] >> 8, 0)
    columns["icmp_code"][:] = np.where(is_icmp, recs["dst_port"] & 0xFF, 0)
    headers = V5Datagrams(
        good_indexes,
        count.tolist(),
        header["sequence"].tolist(),
        domain.tolist(),
    )
    return columns, headers, [indexes[i] for i in bad.tolist()]
