"""sFlow version 5 (sflow.org, "sFlow Version 5", July 2004): flow and counter samples.

Datagram (spec §"sFlow Datagram Format", XDR, all big-endian 32-bit words): version 5, the
agent's address (type 1: IPv4, 2: IPv6), sub-agent id, datagram sequence number, uptime (ms),
sample count, then samples, each ``data_format`` (enterprise << 12 | format) and a length.
Read here (enterprise 0):

* flow samples (format 1) and expanded flow samples (format 3): sampling rate, input and
  output interface (format 0 only: an ifIndex; "discarded" and "multiple" give 0), and their
  flow records: raw packet header (1: Ethernet, IPv4 or IPv6 header; 802.1Q / 802.1ad tags,
  TCP, UDP, SCTP ports, TCP flags, ICMP/ICMPv6 type and code), sampled IPv4 (3) and IPv6
  (4) data when no header was sent, extended switch (1001: VLANs), router (1002: next hop,
  masks) and gateway (1003: BGP next hop, source AS, destination AS as the last AS of the
  path);
* counter samples (format 2) and expanded counter samples (format 4): generic interface
  counters (record 1: ifIndex, ifSpeed, ifInOctets, ifOutOctets), for the interface reports.

Every other sample and record is skipped by its length (the format is built for that).

One flow sample is one stored flow: ``packets`` 1 and ``bytes`` the sample's frame length
(the packet as it was on the wire, layer 2 included: for Ethernet the header and the FCS, 18
bytes more than the IP length NetFlow counts; what pmacct's ``sfacctd`` and sflowtool count;
the IP length when the agent sends 0), ``sampling_rate`` the
sample's rate (the configured ``flows.sampling_rates`` one when the agent says 0), so reports
scale it like sampled NetFlow. sFlow carries no flow times: start and end are the time the
datagram was received. The observation domain is the sub-agent id; sequence gaps count lost
datagrams per (exporter, sub-agent).

When a sample has several records of one kind, its last one counts; a raw header wins over
sampled IPv4/IPv6 data. Flow samples beyond the decoder's ``max_records_per_datagram`` in a
datagram are skipped unread and the datagram counted.

How it runs: vectorised like the NetFlow path, over all sFlow datagrams of a batch at once
(:meth:`SflowBatch.decode`). The datagrams are joined, each starting on a multiple of 4, so
every XDR word is one element of a big-endian ``uint32`` view; the samples are walked with
one numpy pass per sample position (every datagram's first sample, then every second one,
...), the records with one pass per record position over all samples, the AS paths with one
pass per segment position; each record kind is then read as columns, and every packet
header (Ethernet, VLAN tags, IPv4/IPv6, transport) from one fixed-width array of each
header's first :data:`HEADER_WIDTH` bytes, gathered at once. No Python runs per sample or
record; per datagram only to hand back its counts (docs/performance.md).

Trust: the bytes are the agent's. Every length is checked against what remains of its
datagram, sample or record before anything inside it is used, sample and record counts are
capped (:data:`MAX_SAMPLES`, :data:`MAX_RECORDS`), a header is read at most
:data:`HEADER_WIDTH` bytes deep and every header field is bounds-checked against the header's
length; every read of the joined buffer is clamped inside it. A malformed datagram is dropped
whole (its good samples too: a datagram is kept whole or not at all), with the reason
(:class:`DatagramResult`) the decoder counts and logs as the exporter's decode error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lanalyze.flows.decode.records import new_columns

Array = npt.NDArray[Any]

VERSION = 5
STATS_VERSION = 0x10005
"""The ``version`` sFlow v5 exporters are counted under (:class:`ExporterStats`): bit 16 tells
it from NetFlow v5, whose datagrams also start with a 5 (as a 16-bit number)."""
HEADER_WIDTH = 128
"""Bytes of each sampled packet header read: Ethernet, two VLAN tags, an IPv4 header with
options (60) and a TCP header's flags fit; agents send 128 by default."""
MAX_SAMPLES = 1024
"""Samples read from one datagram at most (a 64 KiB datagram holds fewer real ones)."""
MAX_RECORDS = 64
"""Records read from one sample at most (agents send 2-6)."""
MAX_COUNTERS_PER_BATCH = 65536
"""Interface counter records kept from one batch; more are counted and dropped."""

FLOW_SAMPLE, COUNTER_SAMPLE, FLOW_SAMPLE_EXPANDED, COUNTER_SAMPLE_EXPANDED = 1, 2, 3, 4
RAW_HEADER, ETHERNET_DATA, IPV4_DATA, IPV6_DATA = 1, 2, 3, 4
EXTENDED_SWITCH, EXTENDED_ROUTER, EXTENDED_GATEWAY = 1001, 1002, 1003
GENERIC_INTERFACE = 1
PROTO_ETHERNET, PROTO_IPV4, PROTO_IPV6 = 1, 11, 12

UNKNOWN_INTERFACE = 0x3FFFFFFF
"""The ifIndex an agent sends for "not known" (spec: "the value 0x3FFFFFFF")."""
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)

FILLED = frozenset(
    {
        "time_received",
        "time_start",
        "time_end",
        "exporter",
        "observation_domain",
        "sampling_rate",
        "bytes",
        "packets",
        "in_if",
        "out_if",
    }
)


@dataclass(frozen=True)
class InterfaceCounters:
    """One generic interface counters record (sFlow v5 counter record 1) of one agent."""

    exporter: str
    """The datagram's source, as flows name their exporter."""
    if_index: int
    speed_bps: int
    """ifSpeed (0: unknown)."""
    in_octets: int
    out_octets: int
    received_ms: int
    uptime_ms: int
    """The agent's uptime when it sent the datagram (tells a counter reset from a wrap)."""


@dataclass
class DatagramResult:
    """What one sFlow datagram of the batch gave, in arrival order."""

    name: str
    problem: str | None
    """Why the datagram was dropped whole (None: it was read)."""
    sub_agent: int = 0
    sequence: int = 0
    flows: int = 0
    """Flow samples read (stored as flows)."""
    capped: int = 0
    """Flow samples beyond ``max_records`` (the decoder's per-datagram cap): skipped."""


@dataclass
class SflowResult:
    datagrams: list[DatagramResult]
    columns: dict[str, Array] | None
    counters: list[InterfaceCounters]
    counters_dropped: int


# Why a datagram is dropped, by code (0: it is not).
_REASONS = (
    "",
    "sFlow datagram shorter than its header",
    "sFlow agent address type is not 1 or 2",
    f"sFlow datagram claims more than {MAX_SAMPLES} samples",
    "sFlow sample overruns the datagram (or its length is not a multiple of 4)",
    "sFlow flow or counter sample shorter than its fields",
    f"sFlow sample claims more than {MAX_RECORDS} records",
    "sFlow record overruns its sample (or its length is not a multiple of 4)",
    "sFlow raw packet header overruns its record",
    "sFlow extended router record too short (or an address type not 0, 1 or 2)",
    "sFlow extended gateway record too short (or an address type not 0, 1 or 2)",
    f"sFlow AS path of more than {MAX_RECORDS} segments",
    "sFlow AS path segment overruns its record",
)
PAD = 256
"""Zero bytes after the joined datagrams: every read lands inside the buffer; whether it is
inside the datagram, sample or record is checked apart."""


class SflowBatch:
    """The sFlow datagrams of one decoder batch, decoded together (:meth:`decode`).

    The XDR structure is walked with numpy over all datagrams at once: one pass per sample
    position (the first sample of every datagram, then the second, ...), then one pass per
    record position over all samples, then each record kind read as columns. No Python runs
    per sample or record; per datagram only to hand back its result."""

    def __init__(self, max_records: int, configured_rates: dict[bytes, int]) -> None:
        self.max_records = max_records
        self.rates = configured_rates
        self._datas: list[bytes] = []
        self._names: list[str] = []
        self._received: list[int] = []

    def add(self, data: bytes, name: str, received_ms: int) -> None:
        self._datas.append(data)
        self._names.append(name)
        self._received.append(received_ms)

    def decode(self) -> SflowResult:
        datas, names = self._datas, self._names
        d = len(datas)
        sizes = np.fromiter(map(len, datas), dtype=np.int64, count=d)
        # Every datagram starts on a multiple of 4 in the joined buffer, so every XDR field
        # (all 32-bit words, at offsets the walk keeps multiples of 4) is one element of a
        # big-endian uint32 view: one gather per field.
        padded = [data + bytes(-len(data) % 4) if len(data) % 4 else data for data in datas]
        base = np.zeros(d, dtype=np.int64)
        steps = (sizes + 3) // 4 * 4
        np.cumsum(steps[:-1], out=base[1:])
        buf = np.frombuffer(b"".join(padded) + bytes(PAD), dtype=np.uint8)
        words = buf.view(">u4")
        limit = len(buf) - 16
        end = base + sizes
        error = np.zeros(d, dtype=np.int64)

        def u32(at: Array) -> Array:
            value: Array = words[np.minimum(at, limit) >> 2].astype(np.int64)
            return value

        def u64(at: Array) -> Array:
            return (u32(at).astype(np.uint64) << np.uint64(32)) | u32(at + 4).astype(np.uint64)

        def fail(where: Array, code: int) -> None:
            """Datagrams ``where`` (indexes, or a mask) are dropped, for the first reason."""
            hit = np.zeros(d, dtype=bool)
            hit[where] = True
            error[hit & (error == 0)] = code

        # -- datagram headers
        address_type = u32(base + 4)
        head = np.where(address_type == 1, 28, 40)
        fail(sizes < 28, 1)
        fail((address_type != 1) & (address_type != 2), 2)
        fail(sizes < head, 1)
        sub_agent = u32(base + head - 16)
        sequence = u32(base + head - 12)
        uptime = u32(base + head - 8)
        samples = u32(base + head - 4)
        fail(samples > MAX_SAMPLES, 3)

        # -- samples: one pass per sample position over all datagrams
        pos = base + head
        left = np.where(error == 0, samples, 0)
        found: list[tuple[Array, Array, Array, Array]] = []
        active = np.flatnonzero(left > 0)
        while len(active):
            at = pos[active]
            data_format = u32(at)
            length = u32(at + 4)
            bad = (at + 8 > end[active]) | (at + 8 + length > end[active]) | (length % 4 != 0)
            if bad.any():
                fail(active[bad], 4)
                active, at, data_format, length = (
                    a[~bad] for a in (active, at, data_format, length)
                )
            found.append((active, data_format, at + 8, at + 8 + length))
            pos[active] = at + 8 + length
            left[active] -= 1
            active = active[left[active] > 0]
        if found:
            s_dgram, s_format, s_start, s_stop = (
                np.concatenate(f) for f in zip(*found, strict=True)
            )
            order = np.argsort(s_dgram, kind="stable")  # per datagram, in sample order
            s_dgram, s_format, s_start, s_stop = (
                a[order] for a in (s_dgram, s_format, s_start, s_stop)
            )
        else:
            s_dgram = s_format = s_start = s_stop = np.zeros(0, dtype=np.int64)

        # -- flow samples beyond the per-datagram cap are skipped unread
        is_flow = (s_format == FLOW_SAMPLE) | (s_format == FLOW_SAMPLE_EXPANDED)
        flow_rank = np.zeros(len(s_dgram), dtype=np.int64)
        if is_flow.any():
            flow_dgram = s_dgram[is_flow]
            first = np.searchsorted(flow_dgram, flow_dgram, side="left")
            flow_rank[is_flow] = np.arange(len(flow_dgram)) - first
        capped_mask = is_flow & (flow_rank >= self.max_records)
        capped = np.bincount(s_dgram[capped_mask], minlength=d)
        is_flow &= ~capped_mask
        is_counter = (s_format == COUNTER_SAMPLE) | (s_format == COUNTER_SAMPLE_EXPANDED)

        # -- flow and counter sample fields
        keep = np.flatnonzero(is_flow | is_counter)
        k_dgram, k_format, k_start, k_stop = (a[keep] for a in (s_dgram, s_format, s_start, s_stop))
        compact = k_format == FLOW_SAMPLE
        expanded = k_format == FLOW_SAMPLE_EXPANDED
        counter = ~(compact | expanded)
        fields = np.select(
            [compact, expanded, k_format == COUNTER_SAMPLE], [32, 44, 12], default=16
        )
        short = k_start + fields > k_stop
        fail(k_dgram[short], 5)
        records = u32(k_start + fields - 4)
        fail(k_dgram[records > MAX_RECORDS], 6)
        rate = np.where(compact, u32(k_start + 8), u32(k_start + 12))
        in_if = np.where(compact, u32(k_start + 20), u32(k_start + 28))
        out_if = np.where(compact, u32(k_start + 24), u32(k_start + 36))
        # Compact form: top 2 bits the format (0: one ifIndex); expanded: a format word.
        in_ok = np.where(compact, in_if >> 30 == 0, u32(k_start + 24) == 0)
        out_ok = np.where(compact, out_if >> 30 == 0, u32(k_start + 32) == 0)
        in_if = np.where(in_ok & (in_if != UNKNOWN_INTERFACE), in_if, 0)
        out_if = np.where(out_ok & (out_if != UNKNOWN_INTERFACE), out_if, 0)

        # -- records: one pass per record position over all samples
        pos = k_start + fields
        left = np.where(short | (records > MAX_RECORDS), 0, records)
        found = []
        active = np.flatnonzero(left > 0)
        while len(active):
            at = pos[active]
            kind = u32(at)
            length = u32(at + 4)
            stop = k_stop[active]
            bad = (at + 8 > stop) | (at + 8 + length > stop) | (length % 4 != 0)
            if bad.any():
                fail(k_dgram[active[bad]], 7)
                active, at, kind, length = (a[~bad] for a in (active, at, kind, length))
            found.append((active, kind, at + 8, length))
            pos[active] = at + 8 + length
            left[active] -= 1
            active = active[left[active] > 0]
        if found:
            r_sample, r_kind, r_start, r_length = (
                np.concatenate(f) for f in zip(*found, strict=True)
            )
            order = np.argsort(r_sample, kind="stable")
            r_sample, r_kind, r_start, r_length = (
                a[order] for a in (r_sample, r_kind, r_start, r_length)
            )
        else:
            r_sample = r_kind = r_start = r_length = np.zeros(0, dtype=np.int64)
        r_counter = counter[r_sample]
        r_dgram = k_dgram[r_sample]

        def last(mask: Array) -> tuple[Array, Array]:
            """The last record per sample among ``mask``: (its sample, its index)."""
            where = np.flatnonzero(mask)
            samples_of = r_sample[where]
            if not len(where):
                return samples_of, where
            is_last = np.r_[samples_of[1:] != samples_of[:-1], True]
            return samples_of[is_last], where[is_last]

        n_k = len(keep)
        # Raw packet header (the last one of a sample).
        raw_mask = ~r_counter & (r_kind == RAW_HEADER) & (r_length >= 16)
        every = np.flatnonzero(raw_mask)
        fail(r_dgram[every][u32(r_start[every] + 12) > r_length[every] - 16], 8)
        hdr_sample, hdr_record = last(raw_mask)
        at = r_start[hdr_record]
        header_length = u32(at + 12)
        protocol = np.zeros(n_k, dtype=np.int64)
        frame_length = np.zeros(n_k, dtype=np.int64)
        h_length = np.zeros(n_k, dtype=np.int64)
        h_offset = np.zeros(n_k, dtype=np.int64)
        protocol[hdr_sample] = u32(at)
        frame_length[hdr_sample] = u32(at + 4)
        h_length[hdr_sample] = np.minimum(header_length, HEADER_WIDTH)
        h_offset[hdr_sample] = at + 16
        has_header = np.zeros(n_k, dtype=bool)
        has_header[hdr_sample] = True
        # Sampled IPv4 / IPv6 data, for samples without a header: the header they describe.
        synthetic: list[tuple[Array, Array]] = []
        for data_kind, size in ((IPV4_DATA, 32), (IPV6_DATA, 56)):
            data_sample, data_record = last(~r_counter & (r_kind == data_kind) & (r_length >= size))
            use = ~has_header[data_sample]
            data_sample, data_record = data_sample[use], data_record[use]
            if not len(data_sample):
                continue
            at = r_start[data_record]
            frame_length[data_sample] = u32(at)
            protocol[data_sample] = PROTO_IPV4 if data_kind == IPV4_DATA else PROTO_IPV6
            rows = np.zeros((len(at), HEADER_WIDTH), dtype=np.uint8)
            proto, sport, dport = u32(at + 4), u32(at + size - 16), u32(at + size - 12)
            flags, tos = u32(at + size - 8), u32(at + size - 4)
            if data_kind == IPV4_DATA:
                total = np.minimum(u32(at), 0xFFFF)
                rows[:, 0], rows[:, 1] = 0x45, tos & 0xFF
                rows[:, 2], rows[:, 3] = total >> 8, total & 0xFF
                rows[:, 9] = proto & 0xFF
                rows[:, 12:20] = buf[at[:, None] + 8 + np.arange(8)]
                transport = 20
            else:
                payload = np.clip(u32(at) - 40, 0, 0xFFFF)
                rows[:, 0] = 0x60 | ((tos >> 4) & 0x0F)
                rows[:, 1] = (tos & 0x0F) << 4
                rows[:, 4], rows[:, 5] = payload >> 8, payload & 0xFF
                rows[:, 6] = proto & 0xFF
                rows[:, 8:40] = buf[at[:, None] + 8 + np.arange(32)]
                transport = 40
            rows[:, transport], rows[:, transport + 1] = (sport >> 8) & 0xFF, sport & 0xFF
            rows[:, transport + 2], rows[:, transport + 3] = (dport >> 8) & 0xFF, dport & 0xFF
            rows[:, transport + 13] = flags & 0xFF
            h_length[data_sample] = transport + 14
            has_header[data_sample] = True
            synthetic.append((data_sample, rows))
        # Extended switch: VLANs.
        src_vlan = np.zeros(n_k, dtype=np.int64)
        dst_vlan = np.zeros(n_k, dtype=np.int64)
        sw_sample, sw_record = last(~r_counter & (r_kind == EXTENDED_SWITCH) & (r_length >= 16))
        src_vlan[sw_sample] = u32(r_start[sw_record]) & 0xFFF
        dst_vlan[sw_sample] = u32(r_start[sw_record] + 8) & 0xFFF
        # Extended router: next hop and masks; extended gateway: BGP next hop and ASes.
        next_hop = np.zeros((n_k, 16), dtype=np.uint8)
        bgp_next_hop = np.zeros((n_k, 16), dtype=np.uint8)
        src_mask = np.zeros(n_k, dtype=np.int64)
        dst_mask = np.zeros(n_k, dtype=np.int64)
        src_as = np.zeros(n_k, dtype=np.int64)
        dst_as = np.zeros(n_k, dtype=np.int64)

        def address(kind: int, target: Array, code: int, after: int) -> tuple[Array, Array, Array]:
            """Every ``kind`` record must hold an address (type 0, 1 or 2) and ``after``
            bytes after it, or its datagram is dropped; the last one of each sample's goes
            into ``target``. Returns (sample, offset of what follows the address)."""
            mask = ~r_counter & (r_kind == kind)
            every = np.flatnonzero(mask)
            family = u32(r_start[every])
            offset = np.select([family == 1, family == 2, family == 0], [8, 20, 4], default=-1)
            bad = (offset < 0) | (offset + after > r_length[every])
            fail(r_dgram[every[bad]], code)
            record_offset = np.zeros(len(r_kind), dtype=np.int64)
            record_offset[every] = offset
            sample_of, record = last(mask)
            offset = record_offset[record]
            at = r_start[record]
            usable = offset >= 0
            sample_of, record, at, offset = (a[usable] for a in (sample_of, record, at, offset))
            v4 = offset == 8
            v6 = offset == 20
            target[sample_of[v4], 10:12] = 0xFF
            target[sample_of[v4], 12:] = buf[at[v4, None] + 4 + np.arange(4)]
            target[sample_of[v6]] = buf[at[v6, None] + 4 + np.arange(16)]
            return sample_of, record, at + offset

        rt_sample, _, rt_after = address(EXTENDED_ROUTER, next_hop, 9, 8)
        src_mask[rt_sample] = np.minimum(u32(rt_after), 128)
        dst_mask[rt_sample] = np.minimum(u32(rt_after + 4), 128)
        gw_sample, gw_record, gw_after = address(EXTENDED_GATEWAY, bgp_next_hop, 10, 16)
        src_as[gw_sample] = u32(gw_after + 4)
        segments = u32(gw_after + 12)
        gw_dgram = k_dgram[gw_sample]
        gw_stop = r_start[gw_record] + r_length[gw_record]
        fail(gw_dgram[segments > MAX_RECORDS], 11)
        # The AS path (of a sample's last gateway record), one pass per segment position:
        # the destination AS is the path's last AS (its origin; 0 for an empty path, where
        # the router's own AS is the destination).
        pos = gw_after + 16
        left = np.where(segments > MAX_RECORDS, 0, segments)
        active = np.flatnonzero(left > 0)
        while len(active):
            at = pos[active]
            count = u32(at + 4)
            room = (gw_stop[active] - at - 8) // 4
            bad = (at + 8 > gw_stop[active]) | (count > room)
            if bad.any():
                fail(gw_dgram[active[bad]], 12)
                active, at, count = active[~bad], at[~bad], count[~bad]
            some = count > 0
            dst_as[gw_sample[active[some]]] = u32(at[some] + 8 + 4 * (count[some] - 1))
            pos[active] = at + 8 + 4 * count
            left[active] -= 1
            active = active[left[active] > 0]

        # -- which datagrams are kept, and their flows
        ok = error == 0
        flow_keep = np.flatnonzero(~counter & ok[k_dgram])
        n = len(flow_keep)
        flows = np.bincount(k_dgram[flow_keep], minlength=d)
        columns: dict[str, Array] | None = None
        if n:
            columns = new_columns(n, FILLED)
            dgram = k_dgram[flow_keep]
            received = np.array(self._received, dtype=np.uint64)[dgram]
            columns["time_received"][:] = received
            columns["time_start"][:] = received
            columns["time_end"][:] = received
            known = {name: self.exporter16(name) for name in dict.fromkeys(names)}
            exporter16 = [known[name] for name in names]
            configured = np.array([self.rates.get(e, 1) for e in exporter16], dtype=np.int64)
            columns["exporter"][:] = np.array(exporter16, dtype="S16")[dgram]
            sample_rate = rate[flow_keep]
            columns["sampling_rate"][:] = np.where(sample_rate > 0, sample_rate, configured[dgram])
            columns["in_if"][:] = in_if[flow_keep]
            columns["out_if"][:] = out_if[flow_keep]
            columns["observation_domain"][:] = sub_agent[dgram]
            columns["packets"][:] = 1
            for name, values in (
                ("src_vlan", src_vlan),
                ("dst_vlan", dst_vlan),
                ("src_mask", src_mask),
                ("dst_mask", dst_mask),
                ("src_as", src_as),
                ("dst_as", dst_as),
            ):
                if values.any():
                    columns[name] = values[flow_keep].astype(columns[name].dtype)
            for name, hops in (("next_hop", next_hop), ("bgp_next_hop", bgp_next_hop)):
                if hops.any():
                    columns[name] = np.ascontiguousarray(hops[flow_keep]).view("S16").reshape(n)
            # Every header's first HEADER_WIDTH bytes with one gather from the joined
            # datagrams (bytes past a header's length are never read: every field is checked
            # against the length), the synthesised ones put in their rows.
            windows = np.lib.stride_tricks.sliding_window_view(buf, HEADER_WIDTH)
            raw = windows[np.minimum(h_offset[flow_keep], len(buf) - HEADER_WIDTH)]
            if synthetic:
                row_of = np.full(n_k, -1, dtype=np.int64)
                row_of[flow_keep] = np.arange(n)
                for sample_of, rows in synthetic:
                    target = row_of[sample_of]
                    raw[target[target >= 0]] = rows[target >= 0]
            ip_bytes = parse_headers(raw, protocol[flow_keep], h_length[flow_keep], columns)
            frame = frame_length[flow_keep]
            columns["bytes"][:] = np.where(frame > 0, frame, ip_bytes)

        # -- interface counters (few: a record per interface every 20-30 s)
        counters: list[InterfaceCounters] = []
        dropped = 0
        generic = np.flatnonzero(
            r_counter & (r_kind == GENERIC_INTERFACE) & (r_length >= 88) & ok[r_dgram]
        )
        if len(generic):
            at = r_start[generic]
            owner = r_dgram[generic]
            dropped = max(0, len(generic) - MAX_COUNTERS_PER_BATCH)
            read = zip(
                owner.tolist(),
                u32(at).tolist(),
                u64(at + 8).tolist(),
                u64(at + 24).tolist(),
                u64(at + 56).tolist(),
                strict=True,
            )
            for dgram_index, if_index, speed, in_octets, out_octets in read:
                if len(counters) >= MAX_COUNTERS_PER_BATCH:
                    break
                counters.append(
                    InterfaceCounters(
                        names[dgram_index],
                        if_index,
                        speed,
                        in_octets,
                        out_octets,
                        self._received[dgram_index],
                        int(uptime[dgram_index]),
                    )
                )

        results = [
            DatagramResult(name, _REASONS[code] if code else None)
            if code
            else DatagramResult(name, None, agent, number, count, over)
            for name, code, agent, number, count, over in zip(
                names,
                error.tolist(),
                sub_agent.tolist(),
                sequence.tolist(),
                flows.tolist(),
                capped.tolist(),
                strict=True,
            )
        ]
        return SflowResult(results, columns, counters, dropped)

    def exporter16(self, name: str) -> bytes:
        from lanalyze.flows.decode.state import address16

        return address16(name)


def parse_headers(raw: Array, protocols: Array, lengths: Array, columns: dict[str, Array]) -> Array:
    """Reads the sampled headers with numpy, all at once, into ``columns``; returns each
    packet's IP length (0 where no IP header could be read).

    Row ``i`` of ``raw`` ((n, :data:`HEADER_WIDTH`) uint8) starts with header ``i``, whose
    length is ``lengths[i]`` (at most the width) and header protocol ``protocols[i]`` (the
    raw header record's: 1 Ethernet, 11 IPv4, 12 IPv6). Every read is of a byte inside the
    header; a field whose bytes are not all there stays 0."""
    n = len(raw)
    width = HEADER_WIDTH
    size = np.minimum(lengths, width)
    flat = raw.reshape(-1)
    row_start = np.arange(n) * width

    def byte(at: Array) -> Array:
        return flat[row_start + np.minimum(at, width - 1)].astype(np.int64)

    def u16(at: Array) -> Array:
        return (byte(at) << 8) | byte(at + 1)

    zero = np.zeros(n, dtype=np.int64)
    eth = (protocols == PROTO_ETHERNET) & (size >= 14)
    if eth.any():
        # Each 6-byte address as the low bytes of a big-endian 64-bit integer.
        macs = np.zeros((n, 2, 8), dtype=np.uint8)
        macs[:, :, 2:] = raw[:, :12].reshape(n, 2, 6)
        dst_mac, src_mac = macs.view(">u8").reshape(n, 2).astype(np.uint64).T
        columns["dst_mac"] = np.where(eth, dst_mac, 0).astype(np.uint64)
        columns["src_mac"] = np.where(eth, src_mac, 0).astype(np.uint64)
    ethertype = np.where(eth, u16(zero + 12), 0)
    at = np.where(eth, 14, 0)
    vlan = zero.copy()
    for _ in range(2):  # 802.1ad outer tag, 802.1Q inner one
        tagged = eth & np.isin(ethertype, VLAN_TAGS) & (at + 4 <= size)
        if not tagged.any():
            break
        vlan = np.where(tagged & (vlan == 0), u16(at) & 0x0FFF, vlan)
        ethertype = np.where(tagged, u16(at + 2), ethertype)
        at = np.where(tagged, at + 4, at)
    if vlan.any():
        columns["src_vlan"] = np.where(columns["src_vlan"] == 0, vlan, columns["src_vlan"]).astype(
            np.uint16
        )
    first = byte(at) >> 4
    is4 = ((protocols == PROTO_IPV4) | (eth & (ethertype == 0x0800))) & (first == 4)
    is4 &= at + 20 <= size
    is6 = ((protocols == PROTO_IPV6) | (eth & (ethertype == 0x86DD))) & (first == 6)
    is6 &= at + 40 <= size
    ip = is4 | is6
    ip_bytes = np.where(is4, u16(at + 2), np.where(is6, u16(at + 4) + 40, 0))
    protocol = np.where(is4, byte(at + 9), np.where(is6, byte(at + 6), 0))
    tos = np.where(is4, byte(at + 1), np.where(is6, (u16(at) >> 4) & 0xFF, 0))
    columns["ip_version"] = np.where(is4, 4, np.where(is6, 6, 0)).astype(np.uint8)
    columns["protocol"] = protocol.astype(np.uint8)
    columns["tos"] = tos.astype(np.uint8)
    src = np.zeros((n, 16), dtype=np.uint8)
    dst = np.zeros((n, 16), dtype=np.uint8)
    if is4.any():
        where = np.flatnonzero(is4)
        offsets = at[where, None]
        src[where, 10:12] = 0xFF
        dst[where, 10:12] = 0xFF
        src[where, 12:] = raw[where[:, None], offsets + 12 + np.arange(4)]
        dst[where, 12:] = raw[where[:, None], offsets + 16 + np.arange(4)]
    if is6.any():
        where = np.flatnonzero(is6)
        offsets = at[where, None]
        src[where] = raw[where[:, None], offsets + 8 + np.arange(16)]
        dst[where] = raw[where[:, None], offsets + 24 + np.arange(16)]
    columns["src_addr"] = src.view("S16").reshape(n)
    columns["dst_addr"] = dst.view("S16").reshape(n)
    # Transport: after the IPv4 header (first fragments only) or the fixed IPv6 header.
    first_fragment = (u16(at + 6) & 0x1FFF) == 0
    transport = np.where(is4, at + (byte(at) & 0x0F) * 4, at + 40)
    has_ports = ip & np.isin(protocol, (6, 17, 132)) & (transport + 4 <= size)
    has_ports &= ~is4 | first_fragment
    columns["src_port"] = np.where(has_ports, u16(transport), 0).astype(np.uint16)
    columns["dst_port"] = np.where(has_ports, u16(transport + 2), 0).astype(np.uint16)
    has_flags = has_ports & (protocol == 6) & (transport + 14 <= size)
    columns["tcp_flags"] = np.where(has_flags, byte(transport + 13), 0).astype(np.uint8)
    is_icmp = ip & (((protocol == 1) & is4) | ((protocol == 58) & is6)) & (transport + 2 <= size)
    is_icmp &= ~is4 | first_fragment
    if is_icmp.any():
        icmp_type = np.where(is_icmp, byte(transport), 0)
        icmp_code = np.where(is_icmp, byte(transport + 1), 0)
        columns["icmp_type"] = icmp_type.astype(np.uint8)
        columns["icmp_code"] = icmp_code.astype(np.uint8)
        # As the NetFlow path and nfdump store ICMP: type << 8 | code in the destination port.
        columns["dst_port"] = np.where(
            is_icmp, (icmp_type << 8) | icmp_code, columns["dst_port"]
        ).astype(np.uint16)
    return ip_bytes
