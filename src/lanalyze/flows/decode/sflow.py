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

How it runs: the structure (samples, records, variable lengths) is walked in Python with
``struct`` per sample, which is unavoidable for XDR with per-sample record lists; everything
per packet header (Ethernet, VLAN, IP, transport) is read with numpy over all samples of the
batch at once, from a fixed-width array of the first :data:`HEADER_WIDTH` bytes of each header.
The per-sample walk costs about a microsecond of one core (docs/performance.md).

Trust: the bytes are the agent's. Every length is checked against what remains before it is
read, sample and record counts are capped (:data:`MAX_SAMPLES`, :data:`MAX_RECORDS`, the
decoder's ``max_records_per_datagram``), a header is read at most :data:`HEADER_WIDTH` bytes
deep and every header field is bounds-checked against the header's length. A malformed
datagram raises :class:`~.errors.PeerDataError` from :meth:`SflowBatch.walk`, which drops the
whole datagram (its earlier samples too: a datagram is kept whole or not at all).
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lanalyze.flows.decode.errors import PeerDataError
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
MAPPED = b"\0" * 10 + b"\xff\xff"
ZERO16 = bytes(16)
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)

_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_FLOW_TAIL = struct.Struct(">IIIIII")
_FLOW_EXPANDED = struct.Struct(">IIIIIIIIIII")
_RAW = struct.Struct(">IIII")
_SWITCH = struct.Struct(">IIII")
_IPV4_DATA = struct.Struct(">II4s4sIIII")
_IPV6_DATA = struct.Struct(">II16s16sIIII")
_GENERIC = struct.Struct(">IIQIIQIIIIIIQIIIIII")

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
class DatagramHeader:
    sub_agent: int
    sequence: int
    uptime_ms: int
    samples: int
    flows: int
    """Flow samples read (stored as flows)."""
    capped: int
    """Flow samples beyond ``max_records`` (the decoder's per-datagram cap): skipped."""


FIELDS = 16
"""Integers kept per flow sample in :attr:`SflowBatch.meta` (see there)."""


class SflowBatch:
    """The sFlow datagrams of one decoder batch: walked one by one (:meth:`walk`), then their
    flow samples turned into catalogue columns at once (:meth:`columns`).

    The walk copies nothing per sample: it notes where each sample's header is (which kept
    datagram, at which offset, how long), and :meth:`columns` gathers all headers with one
    numpy indexing of the joined datagrams."""

    def __init__(self, max_records: int, configured_rates: dict[bytes, int]) -> None:
        self.max_records = max_records
        self.rates = configured_rates
        # Per flow sample, FIELDS integers: datagram number, chunk holding the header, its
        # offset there, header length, header protocol, frame length, rate, in_if, out_if,
        # domain, src_vlan, dst_vlan, src_mask, dst_mask, src_as, dst_as.
        self.meta = array("q")
        # Kept datagrams and synthesised headers (records 3 and 4), joined by columns().
        self.chunks: list[bytes] = []
        self.datagram_received: list[int] = []
        self.datagram_exporter: list[bytes] = []
        # (flow index, next hop, BGP next hop) of the samples that carried either.
        self.hops: list[tuple[int, bytes, bytes]] = []
        self.counters: list[InterfaceCounters] = []
        self.counters_dropped = 0
        self._flows = 0
        self._address16: dict[str, bytes] = {}

    @property
    def flows(self) -> int:
        return self._flows

    def exporter16(self, name: str) -> bytes:
        from lanalyze.flows.decode.state import address16

        value = self._address16.get(name)
        if value is None:
            value = self._address16[name] = address16(name)
        return value

    def walk(self, data: bytes, name: str, received_ms: int) -> DatagramHeader:
        """Reads one datagram; returns its header and what it added. Raises
        :class:`PeerDataError` (having added nothing) if it is malformed."""
        marks = (
            self._flows,
            len(self.chunks),
            len(self.datagram_received),
            len(self.hops),
            len(self.counters),
        )
        try:
            return self._walk(data, name, received_ms)
        except (PeerDataError, struct.error) as exc:
            self._flows = marks[0]
            del self.meta[marks[0] * FIELDS :]
            del self.chunks[marks[1] :]
            del self.datagram_received[marks[2] :], self.datagram_exporter[marks[2] :]
            del self.hops[marks[3] :]
            del self.counters[marks[4] :]
            if isinstance(exc, PeerDataError):
                raise
            raise PeerDataError(f"truncated sFlow datagram ({len(data)} bytes)") from None

    def _walk(self, data: bytes, name: str, received_ms: int) -> DatagramHeader:
        size = len(data)
        if size < 28:
            raise PeerDataError(f"sFlow datagram of {size} bytes is shorter than its header")
        version, address_type = _U32X2.unpack_from(data, 0)
        if version != VERSION:
            raise PeerDataError(f"sFlow version {version} is not 5")
        if address_type == 1:
            pos = 12
        elif address_type == 2:
            pos = 24
        else:
            raise PeerDataError(f"sFlow agent address type {address_type} is not 1 or 2")
        sub_agent, sequence, uptime, samples = struct.unpack_from(">IIII", data, pos)
        pos += 16
        if samples > MAX_SAMPLES:
            raise PeerDataError(f"sFlow datagram claims {samples} samples (at most {MAX_SAMPLES})")
        exporter16 = self.exporter16(name)
        configured = self.rates.get(exporter16, 1)
        datagram = len(self.datagram_received)
        chunk = len(self.chunks)
        self.chunks.append(data)
        self.datagram_received.append(received_ms)
        self.datagram_exporter.append(exporter16)
        added = capped = 0
        flow_sample = self._flow_sample
        for _ in range(samples):
            if pos + 8 > size:
                raise PeerDataError(f"sFlow sample header past the end ({size} bytes)")
            data_format, length = _U32X2.unpack_from(data, pos)
            pos += 8
            end = pos + length
            if end > size or length % 4:
                raise PeerDataError(f"sFlow sample of {length} bytes overruns the datagram")
            if data_format in (FLOW_SAMPLE, FLOW_SAMPLE_EXPANDED):
                if added < self.max_records:
                    flow_sample(data, pos, end, data_format, datagram, chunk, sub_agent, configured)
                    added += 1
                else:
                    capped += 1
            elif data_format in (COUNTER_SAMPLE, COUNTER_SAMPLE_EXPANDED):
                self._counter_sample(data, pos, end, data_format, name, received_ms, uptime)
            pos = end
        self._flows += added
        return DatagramHeader(sub_agent, sequence, uptime, samples, added, capped)

    def _flow_sample(  # noqa: PLR0917 - one sample's context; one branch a record
        self,
        data: bytes,
        pos: int,
        end: int,
        data_format: int,
        datagram: int,
        chunk: int,
        domain: int,
        configured: int,
    ) -> None:
        if data_format == FLOW_SAMPLE:
            if pos + 32 > end:
                raise PeerDataError("sFlow flow sample shorter than its fields")
            rate, _pool, _drops, in_if, out_if, count = _FLOW_TAIL.unpack_from(data, pos + 8)
            # Compact form: top 2 bits the format (0: one ifIndex), 30 bits the value.
            if in_if >> 30 or in_if == UNKNOWN_INTERFACE:
                in_if = 0
            if out_if >> 30 or out_if == UNKNOWN_INTERFACE:
                out_if = 0
            pos += 32
        else:
            if pos + 44 > end:
                raise PeerDataError("sFlow expanded flow sample shorter than its fields")
            fields = _FLOW_EXPANDED.unpack_from(data, pos)
            rate, count = fields[3], fields[10]
            in_if = fields[7] if fields[6] == 0 and fields[7] != UNKNOWN_INTERFACE else 0
            out_if = fields[9] if fields[8] == 0 and fields[9] != UNKNOWN_INTERFACE else 0
            pos += 44
        if count > MAX_RECORDS:
            raise PeerDataError(f"sFlow sample claims {count} records (at most {MAX_RECORDS})")
        frame_length = protocol = header_length = header_offset = 0
        header_chunk = chunk
        src_vlan = dst_vlan = src_mask = dst_mask = src_as = dst_as = 0
        next_hop = bgp_next_hop = None
        have_header = False
        for _ in range(count):
            if pos + 8 > end:
                raise PeerDataError("sFlow record header past the end of its sample")
            record, length = _U32X2.unpack_from(data, pos)
            start = pos + 8
            pos = stop = start + length
            if stop > end or length % 4:
                raise PeerDataError(f"sFlow record of {length} bytes overruns its sample")
            if record == RAW_HEADER:
                if length < 16:
                    continue
                protocol, frame_length, _stripped, header_length = _RAW.unpack_from(data, start)
                if header_length > length - 16:
                    raise PeerDataError(
                        f"sFlow header of {header_length} bytes overruns its record"
                    )
                header_chunk, header_offset, have_header = chunk, start + 16, True
            elif record == EXTENDED_SWITCH:
                if length >= 16:
                    src_vlan, _, dst_vlan, _ = _SWITCH.unpack_from(data, start)
            elif record == EXTENDED_ROUTER:
                next_hop, at = _address(data, start, stop)
                if at + 8 > stop:
                    raise PeerDataError("sFlow extended router record too short")
                src_mask, dst_mask = _U32X2.unpack_from(data, at)
            elif record == EXTENDED_GATEWAY:
                bgp_next_hop, src_as, dst_as = _gateway(data, start, stop)
            elif record in (IPV4_DATA, IPV6_DATA) and not have_header:
                synthesised = _sampled_ip(data, record, start, length)
                if synthesised is not None:
                    frame_length, header = synthesised
                    protocol = PROTO_IPV4 if record == IPV4_DATA else PROTO_IPV6
                    header_chunk, header_offset, header_length = len(self.chunks), 0, len(header)
                    self.chunks.append(header)
                    have_header = True
        if next_hop is not None or bgp_next_hop is not None:
            flow = len(self.meta) // FIELDS
            self.hops.append((flow, next_hop or ZERO16, bgp_next_hop or ZERO16))
        self.meta.extend(
            (
                datagram,
                header_chunk,
                header_offset,
                min(header_length, HEADER_WIDTH),
                protocol,
                frame_length,
                rate or configured,
                in_if,
                out_if,
                domain,
                src_vlan & 0xFFF,
                dst_vlan & 0xFFF,
                min(src_mask, 128),
                min(dst_mask, 128),
                src_as,
                dst_as,
            )
        )

    def _counter_sample(  # noqa: PLR0917
        self,
        data: bytes,
        pos: int,
        end: int,
        data_format: int,
        name: str,
        received_ms: int,
        uptime: int,
    ) -> None:
        pos += 12 if data_format == COUNTER_SAMPLE else 16  # seq, source id(s), record count
        if pos > end:
            raise PeerDataError("sFlow counter sample shorter than its fields")
        (count,) = _U32.unpack_from(data, pos - 4)
        if count > MAX_RECORDS:
            raise PeerDataError(f"sFlow sample claims {count} records (at most {MAX_RECORDS})")
        for _ in range(count):
            if pos + 8 > end:
                raise PeerDataError("sFlow record header past the end of its sample")
            record, length = _U32X2.unpack_from(data, pos)
            start = pos + 8
            pos = start + length
            if pos > end or length % 4:
                raise PeerDataError(f"sFlow record of {length} bytes overruns its sample")
            if record != GENERIC_INTERFACE or length < _GENERIC.size:
                continue
            fields = _GENERIC.unpack_from(data, start)
            if len(self.counters) >= MAX_COUNTERS_PER_BATCH:
                self.counters_dropped += 1
                continue
            self.counters.append(
                InterfaceCounters(
                    exporter=name,
                    if_index=fields[0],
                    speed_bps=fields[2],
                    in_octets=fields[5],
                    out_octets=fields[12],
                    received_ms=received_ms,
                    uptime_ms=uptime,
                )
            )

    def columns(self) -> dict[str, Array]:
        """The batch's flow samples as catalogue columns (numpy over all of them)."""
        n = self._flows
        columns = new_columns(n, FILLED)
        if not n:
            return columns
        meta = np.frombuffer(self.meta, dtype=np.int64).reshape(n, FIELDS)
        datagram = meta[:, 0]
        received = np.array(self.datagram_received, dtype=np.uint64)[datagram]
        columns["time_received"][:] = received
        columns["time_start"][:] = received
        columns["time_end"][:] = received
        columns["exporter"][:] = np.array(self.datagram_exporter, dtype="S16")[datagram]
        columns["sampling_rate"][:] = np.maximum(meta[:, 6], 1)
        columns["in_if"][:] = meta[:, 7]
        columns["out_if"][:] = meta[:, 8]
        columns["observation_domain"][:] = meta[:, 9]
        columns["packets"][:] = 1
        for index, name in enumerate(
            ("src_vlan", "dst_vlan", "src_mask", "dst_mask", "src_as", "dst_as"), start=10
        ):
            values = meta[:, index]
            if values.any():
                columns[name] = values.astype(columns[name].dtype)
        if self.hops:
            where = np.array([hop[0] for hop in self.hops], dtype=np.int64)
            for name, position in (("next_hop", 1), ("bgp_next_hop", 2)):
                values = np.zeros(n, dtype="S16")
                values[where] = np.array([hop[position] for hop in self.hops], dtype="S16")
                if values.view(np.uint8).any():
                    columns[name] = values
        # Every header's first HEADER_WIDTH bytes, gathered from the joined chunks at once
        # (bytes past a header's length are its record's neighbours: never read, every
        # field is checked against the length).
        sizes = np.fromiter(map(len, self.chunks), dtype=np.int64, count=len(self.chunks))
        base = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1], out=base[1:])
        joined = np.frombuffer(b"".join(self.chunks) + bytes(HEADER_WIDTH), dtype=np.uint8)
        windows = np.lib.stride_tricks.sliding_window_view(joined, HEADER_WIDTH)
        raw = windows[base[meta[:, 1]] + meta[:, 2]]
        frame_bytes = meta[:, 5]
        ip_bytes = parse_headers(raw, meta[:, 4], meta[:, 3], columns)
        columns["bytes"][:] = np.where(frame_bytes > 0, frame_bytes, ip_bytes)
        return columns


def _address(data: bytes, pos: int, stop: int) -> tuple[bytes, int]:
    """An sFlow ``address`` (type, then 4 or 16 bytes) as 16 bytes; and where it ends."""
    if pos + 4 > stop:
        raise PeerDataError("sFlow address past the end of its record")
    (kind,) = _U32.unpack_from(data, pos)
    if kind == 1 and pos + 8 <= stop:
        return MAPPED + data[pos + 4 : pos + 8], pos + 8
    if kind == 2 and pos + 20 <= stop:
        return data[pos + 4 : pos + 20], pos + 20
    if kind == 0:
        return bytes(16), pos + 4
    raise PeerDataError(f"sFlow address of type {kind} does not fit its record")


def _gateway(data: bytes, pos: int, stop: int) -> tuple[bytes, int, int]:
    """Extended gateway: BGP next hop, source AS, and the destination AS (the last AS of the
    AS path: its origin; 0 when the path is empty, the destination being the router's AS)."""
    next_hop, pos = _address(data, pos, stop)
    if pos + 16 > stop:
        raise PeerDataError("sFlow extended gateway record too short")
    _own_as, src_as, _peer_as, segments = struct.unpack_from(">IIII", data, pos)
    pos += 16
    if segments > MAX_RECORDS:
        raise PeerDataError(f"sFlow AS path of {segments} segments (at most {MAX_RECORDS})")
    dst_as = 0
    for _ in range(segments):
        if pos + 8 > stop:
            raise PeerDataError("sFlow AS path segment past the end of its record")
        _kind, length = _U32X2.unpack_from(data, pos)
        pos += 8
        if length > (stop - pos) // 4:
            raise PeerDataError(f"sFlow AS path segment of {length} ASes overruns its record")
        if length:
            (dst_as,) = _U32.unpack_from(data, pos + 4 * (length - 1))
        pos += 4 * length
    return next_hop, src_as, dst_as


def _sampled_ip(data: bytes, record: int, start: int, length: int) -> tuple[int, bytes] | None:
    """Sampled IPv4 (record 3) or IPv6 (4) data: its packet length and the header it
    describes, for :func:`parse_headers` (None if the record is too short)."""
    if record == IPV4_DATA:
        if length < _IPV4_DATA.size:
            return None
        size, proto, src, dst, sport, dport, flags, tos = _IPV4_DATA.unpack_from(data, start)
        return size, _ipv4_header(size, proto, src, dst, sport, dport, flags, tos)
    if length < _IPV6_DATA.size:
        return None
    size, proto, src, dst, sport, dport, flags, prio = _IPV6_DATA.unpack_from(data, start)
    return size, _ipv6_header(size, proto, src, dst, sport, dport, flags, prio)


def _ports(proto: int, sport: int, dport: int, flags: int) -> bytes:
    # A transport header shape for parse_headers: ports, then TCP flags at offset 13.
    return struct.pack(">HH9xB", sport & 0xFFFF, dport & 0xFFFF, flags & 0xFF)


def _ipv4_header(  # noqa: PLR0917 - the record's fields
    length: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int, flags: int, tos: int
) -> bytes:
    """Sampled IPv4 data (record 3) as the IPv4 header it describes, for :func:`parse_headers`."""
    head = struct.pack(
        ">BBH4xBB2x4s4s", 0x45, tos & 0xFF, length & 0xFFFF, 64, proto & 0xFF, src, dst
    )
    return head + _ports(proto, sport, dport, flags)


def _ipv6_header(  # noqa: PLR0917
    length: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int, flags: int, prio: int
) -> bytes:
    """Sampled IPv6 data (record 4) as the IPv6 header it describes."""
    first = (6 << 28) | ((prio & 0xFF) << 20)
    payload = max(0, min(length - 40, 0xFFFF))
    head = struct.pack(">IHBB16s16s", first, payload, proto & 0xFF, 64, src, dst)
    return head + _ports(proto, sport, dport, flags)


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
    rows = np.arange(n)

    def byte(at: Array) -> Array:
        return raw[rows, np.minimum(at, width - 1)].astype(np.int64)

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
