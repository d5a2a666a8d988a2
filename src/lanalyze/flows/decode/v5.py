"""NetFlow v5 and v7, vectorised over a whole batch of export datagrams.

Format (Cisco's "NetFlow Export Datagram Format", v5): a 24-byte header (version, count,
sys_uptime, unix_secs, unix_nsecs, flow_sequence, engine_type, engine_id, sampling_interval:
top 2 bits mode, low 14 bits interval) and ``count`` (1..30) 48-byte records. The observation
domain of a v5 stream is ``engine_type << 8 | engine_id``.

v7 (the Catalyst 5000/6000 NetFlow Feature Card's format, also sent by fprobe) is v5's layout
with the header's last 4 bytes reserved (so no engine and no sampling interval: domain 0, the
configured rate) and 52-byte records: v5's 48 with the pad byte holding validity flags and a
trailing ``router_sc`` (the shortcut router's address), neither stored. Count 1..28 (Cisco
documents 27, nfdump accepts 28).

ICMP: v5/v7 have no ICMP fields; most exporters put ``type << 8 | code`` in the destination
port, but some put the type in the source port (fprobe: type there, code in the destination
port; some Cisco IOS: type and code there). As nfdump's ``Process_v5_v7`` does, an ICMP
(protocol 1) record with a non-zero source port gets ``type << 8 | code`` in the destination
port and 0 in the source port, so ``--by dstport``, ``icmp-type`` and ``icmp-code`` answer the
same across exporters and ``icmp-type`` agrees with nfdump on the same export. nfdump moves the
source port byte-swapped, which drops fprobe's code; here a source port under 256 with a
destination port under 256 is read as fprobe's (type, code), anything else byte-swapped as
nfdump does. So the one difference from nfdump: fprobe's non-zero ICMP codes are kept.

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

from lanalyze.flows.decode.records import constant, ipv4_mapped, new_columns

Array = npt.NDArray[Any]

HEADER_LENGTH = 24
RECORD_LENGTH = 48
MAX_COUNT = 30
V7_RECORD_LENGTH = 52
V7_MAX_COUNT = 28

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
        # Addresses as native uint32: only copied, never interpreted (see ipv4_mapped).
        ("src", np.uint32),
        ("dst", np.uint32),
        ("next_hop", np.uint32),
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
RECORD_V7 = np.dtype([*RECORD.descr, ("router_sc", np.uint32)])
RECORD_LENGTHS = {5: RECORD_LENGTH, 7: V7_RECORD_LENGTH}
"""Record length per version of this family; every version's header is 24 bytes."""
FILLED = frozenset(
    {
        "time_received",
        "exporter",
        "time_start",
        "time_end",
        "bytes",
        "packets",
        "in_if",
        "out_if",
        "src_port",
        "dst_port",
        "tcp_flags",
        "protocol",
        "tos",
        "src_mask",
        "dst_mask",
        "src_as",
        "dst_as",
    }
)
assert HEADER.itemsize == HEADER_LENGTH and RECORD.itemsize == RECORD_LENGTH
assert RECORD_V7.itemsize == V7_RECORD_LENGTH


@dataclass
class V5Datagrams:
    """Headers of the valid datagrams of a length group, for the caller's accounting."""

    counts: Array
    sequences: Array
    domains: Array
    valid: Array  # bool per datagram of the group: which ones these are


def stack(datas: Sequence[bytes | memoryview]) -> Array:
    """Datagrams of one length as the rows of a 2-D byte array (one copy)."""
    return np.frombuffer(b"".join(datas), dtype=np.uint8).reshape(len(datas), len(datas[0]))


def decode_group(
    raw: Array,
    exporter16: Array,
    received_ms: Array,
    configured_rate: Array,
    version: int = 5,
) -> tuple[dict[str, Array], V5Datagrams, Array]:
    """Decodes ``version`` (5 or 7) datagrams of one length, the rows of ``raw`` (k, length)
    uint8; returns columns, the valid datagrams' headers, and the row numbers of the invalid
    ones.

    ``raw`` may be a strided view (the collector passes its receive slots, rows 64 KiB
    apart) whose rows' bytes are contiguous: the records are copied out of it once.
    ``exporter16`` (S16), ``received_ms`` and ``configured_rate`` are per datagram.
    """
    k, length = raw.shape
    if raw.strides[1] != 1:
        raw = np.ascontiguousarray(raw)
    record_length = RECORD_LENGTHS[version]
    max_count = MAX_COUNT if version == 5 else V7_MAX_COUNT
    slots = (length - HEADER_LENGTH) // record_length
    # A view whose last axis is contiguous may change dtype: no copy of the headers.
    header = raw[:, :HEADER_LENGTH].view(HEADER).reshape(k)
    count = header["count"].astype(np.int64)
    valid = (header["version"] == version) & (count >= 1) & (count <= min(slots, max_count))
    bad = np.flatnonzero(~valid)
    if len(bad):
        keep = np.flatnonzero(valid)
        header, raw, count = header[keep], raw[keep], count[keep]
        exporter16, received_ms = exporter16[keep], received_ms[keep]
        configured_rate = configured_rate[keep]
        k = len(keep)
    slots = min(slots, max_count)
    body = raw[:, HEADER_LENGTH : HEADER_LENGTH + slots * record_length]
    recs = np.ascontiguousarray(body).view(RECORD if version == 5 else RECORD_V7)
    recs = recs.reshape(k * slots)
    if k and int(count.min()) < slots:
        mask = (np.arange(slots)[None, :] < count[:, None]).ravel()
        recs = recs[mask]
    n = len(recs)

    def per_row(values: Array) -> Array:
        return np.repeat(values, count)

    def spread(values: Array) -> Array:
        """Per-datagram values per record: the one value itself when every datagram of the
        group has it (a batch's receive time, usually its exporter, domain and rate), which
        numpy broadcasts into the column without a repeated temporary."""
        if k and (values == values[0]).all():
            return values[:1]
        return per_row(values)

    uptime = header["uptime"].astype(np.int64)
    export_ms = header["secs"].astype(np.int64) * 1000 + header["nsecs"] // 10**6
    if version == 5:
        domain = (header["engine_type"].astype(np.uint32) << 8) | header["engine_id"]
        interval = (header["sampling"] & 0x3FFF).astype(np.uint32)
        rate = np.where(interval > 0, interval, configured_rate)
    else:  # v7: those header bytes are reserved
        domain = np.zeros(k, dtype=np.uint32)
        rate = configured_rate

    columns = new_columns(n, FILLED, shared=True)
    columns["time_received"][:] = spread(received_ms)
    columns["exporter"][:] = spread(exporter16)
    for name, values in (("observation_domain", domain), ("sampling_rate", rate)):
        one = spread(values)
        # Left the shared read-only default (as the fields v5 does not carry) when the whole
        # group has it: engine 0, unsampled.
        if len(one) != 1 or int(one[0]) != int(columns[name][0]):
            filled = np.empty(n, dtype=columns[name].dtype)
            filled[:] = one
            columns[name] = filled
    # Epoch ms = (export time - sysUpTime) + first/last, which is linear; only a sysUpTime that
    # wrapped (49.7 days) after the flow started needs a correction, done where it can apply.
    base = spread(export_ms - uptime)
    for column, field in (("time_start", "first"), ("time_end", "last")):
        value = recs[field]
        target = columns[column]
        np.add(base, value, out=target, casting="unsafe")
        suspicious = value > 2**31
        if suspicious.any():
            times = base + value.astype(np.int64)
            fix = suspicious & (value.astype(np.int64) > per_row(uptime) + 2**31)
            times[fix] -= 2**32
            target[:] = np.maximum(times, 0)
    columns["src_addr"] = ipv4_mapped(recs["src"])
    columns["dst_addr"] = ipv4_mapped(recs["dst"])
    columns["next_hop"] = ipv4_mapped(recs["next_hop"])
    columns["bytes"][:] = recs["bytes"]
    columns["packets"][:] = recs["packets"]
    columns["in_if"][:] = recs["input"]
    columns["out_if"][:] = recs["output"]
    for name in ("src_port", "dst_port", "tcp_flags", "protocol", "tos", "src_mask", "dst_mask"):
        columns[name][:] = recs[name]
    _icmp_from_source_port(columns)
    columns["src_as"][:] = recs["src_as"]
    columns["dst_as"][:] = recs["dst_as"]
    columns["ip_version"] = constant(n, columns["ip_version"].dtype, 4)
    # v5 has no ICMP fields: exporters put type << 8 | code in the destination port.
    is_icmp = columns["protocol"] == 1
    if is_icmp.any():
        dst_port = columns["dst_port"]
        columns["icmp_type"] = np.where(is_icmp, dst_port >> 8, 0).astype(np.uint8)
        columns["icmp_code"] = np.where(is_icmp, dst_port & 0xFF, 0).astype(np.uint8)
    return columns, V5Datagrams(count, header["sequence"], domain, valid), bad


def _icmp_from_source_port(columns: dict[str, Array]) -> None:
    """nfdump's normalisation (see the module docstring): an ICMP record whose source port is
    not 0 carries the type there; ``type << 8 | code`` goes to the destination port."""
    src_port = columns["src_port"]
    moved = (columns["protocol"] == 1) & (src_port != 0)
    if moved.any():
        dst_port = columns["dst_port"]
        swapped = ((src_port & 0xFF) << 8) | (src_port >> 8)
        split = (src_port < 256) & (dst_port < 256)  # fprobe: type, code
        dst_port[moved] = np.where(split, swapped | dst_port, swapped)[moved]
        src_port[moved] = 0
