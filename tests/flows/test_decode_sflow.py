"""sFlow v5 decoding: datagrams built here field by field after the sFlow v5 specification
(flow samples, expanded flow samples, raw headers, extended records, counter samples), and
malformed ones. The real exporter (pmacct's sfprobe) is in test_sflow_pmacct.py."""

from __future__ import annotations

import ipaddress
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from lanalyze.flows.decode import FlowDecoder, Packet, sflow
from lanalyze.flows.ifcounters import InterfaceCounterTable
from lanalyze.flows.query import interfaces
from lanalyze.flows.store.paths import interface_counters_path, interfaces_path
from tests.flows.test_decode_v5 import as_rows, same_batches, v5_datagram, v5_record

NOW = 1_700_000_000_000
EXPORTER = "192.0.2.1"
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def _padded(body: bytes) -> bytes:
    return body + b"\0" * (-len(body) % 4)


def record(data_format: int, body: bytes) -> bytes:
    body = _padded(body)
    return struct.pack(">II", data_format, len(body)) + body


def address(text: str) -> bytes:
    parsed = ipaddress.ip_address(text)
    return struct.pack(">I", 1 if parsed.version == 4 else 2) + parsed.packed


def sflow_datagram(
    samples: list[bytes],
    sequence: int = 1,
    sub_agent: int = 0,
    agent: str = "192.0.2.1",
    uptime: int = 100_000,
) -> bytes:
    head = struct.pack(">I", 5) + address(agent)
    return (
        head + struct.pack(">IIII", sub_agent, sequence, uptime, len(samples)) + b"".join(samples)
    )


def flow_sample(
    records: list[bytes],
    rate: int = 1,
    input: int = 1,
    output: int = 2,
    expanded: bool = False,
    sequence: int = 1,
) -> bytes:
    if expanded:
        # interface_expanded: the format (top 2 bits of the compact form) in a word of its own.
        interfaces = (input >> 30, input & 0x3FFFFFFF, output >> 30, output & 0x3FFFFFFF)
        body = struct.pack(">IIIIIIIIIII", sequence, 0, 7, rate, 1000, 0, *interfaces, len(records))
    else:
        body = struct.pack(">IIIIIIII", sequence, 7, rate, 1000, 0, input, output, len(records))
    return record(3 if expanded else 1, body + b"".join(records))


def raw_header(frame: bytes, protocol: int = 1, frame_length: int | None = None) -> bytes:
    length = len(frame) + 4 if frame_length is None else frame_length
    return record(1, struct.pack(">IIII", protocol, length, 4, len(frame)) + frame)


def switch(src_vlan: int, dst_vlan: int) -> bytes:
    return record(1001, struct.pack(">IIII", src_vlan, 0, dst_vlan, 0))


def router(next_hop: str, src_mask: int, dst_mask: int) -> bytes:
    return record(1002, address(next_hop) + struct.pack(">II", src_mask, dst_mask))


def gateway(next_hop: str, src_as: int, path: list[list[int]]) -> bytes:
    body = address(next_hop) + struct.pack(">IIII", 64500, src_as, 64501, len(path))
    for segment in path:
        body += struct.pack(">II", 2, len(segment)) + b"".join(
            struct.pack(">I", a) for a in segment
        )
    return record(1003, body + struct.pack(">II", 0, 100))  # no communities, local pref


def ipv4_data(src: str, dst: str, protocol: int, sport: int, dport: int, length: int) -> bytes:
    ips = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    return record(
        3,
        struct.pack(">II", length, protocol) + ips + struct.pack(">IIII", sport, dport, 0x10, 0x20),
    )


def counter_sample(records: list[bytes], expanded: bool = False) -> bytes:
    if expanded:
        head = struct.pack(">IIII", 1, 0, 3, len(records))
    else:
        head = struct.pack(">III", 1, 3, len(records))
    return record(4 if expanded else 2, head + b"".join(records))


def generic_counters(index: int, speed: int, in_octets: int, out_octets: int) -> bytes:
    body = struct.pack(
        ">IIQIIQIIIIIIQIIIIII",
        *(index, 6, speed, 1, 3, in_octets, 10, 0, 0, 0, 0, 0, out_octets, 10, 0, 0, 0, 0, 0),
    )
    return record(1, body)


def ipv4_packet(src: str, dst: str, protocol: int, transport: bytes, payload: int = 0) -> bytes:
    total = 20 + len(transport) + payload
    ips = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    return struct.pack(">BBHHHBBH", 0x45, 0xB8, total, 1, 0, 64, protocol, 0) + ips + transport


def ipv6_packet(src: str, dst: str, protocol: int, transport: bytes, payload: int = 0) -> bytes:
    ips = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    first = (6 << 28) | (0x2E << 20)
    return struct.pack(">IHBB", first, len(transport) + payload, protocol, 64) + ips + transport


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)


def udp(sport: int, dport: int, payload: int = 0) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + payload, 0)


def ethernet(ip: bytes, vlans: tuple[int, ...] = (), ethertype: int = 0x0800) -> bytes:
    tags = b""
    for position, vlan in enumerate(vlans):
        tags += struct.pack(">HH", 0x88A8 if position == 0 and len(vlans) > 1 else 0x8100, vlan)
    return MAC_B + MAC_A + tags + struct.pack(">H", ethertype) + ip


def decode(*datagrams: bytes, **options: object) -> tuple[FlowDecoder, object]:
    decoder = FlowDecoder(**options)  # type: ignore[arg-type]
    return decoder, decoder.decode([Packet(d, EXPORTER, NOW) for d in datagrams])


def text(raw: bytes) -> str:
    value = ipaddress.IPv6Address(bytes(raw))
    return str(value.ipv4_mapped or value)


TCP_SAMPLE = flow_sample(
    [
        raw_header(
            ethernet(ipv4_packet("10.0.0.1", "198.51.100.7", 6, tcp(40000, 443, 0x12), 60), (42,)),
            frame_length=14 + 4 + 20 + 20 + 60 + 4,  # the payload is not in the header
        ),
        switch(42, 43),
        router("192.0.2.254", 24, 16),
        gateway("203.0.113.1", 64496, [[64510, 64511], [64499]]),
    ],
    rate=512,
    input=3,
    output=4,
)
UDP6_SAMPLE = flow_sample(
    [
        raw_header(
            ethernet(
                ipv6_packet("2001:db8::1", "2001:db8::2", 17, udp(5353, 53, 30)), (7, 8), 0x86DD
            )
        )
    ],
    rate=1000,
    input=0x3FFFFFFF,
    output=(2 << 30) | 2,  # "multiple": no single ifIndex
    expanded=True,
)
ICMP_SAMPLE = flow_sample(
    [
        raw_header(
            ipv4_packet("10.0.0.2", "10.0.0.3", 1, bytes([8, 0, 0, 0])), protocol=11, frame_length=0
        )
    ],
)
DATA_SAMPLE = flow_sample([ipv4_data("10.0.0.4", "10.0.0.5", 6, 1234, 80, 1500)], rate=0)


def test_flow_samples_fill_the_catalogue() -> None:
    _, batch = decode(sflow_datagram([TCP_SAMPLE, UDP6_SAMPLE, ICMP_SAMPLE, DATA_SAMPLE]))
    assert batch.rows == 4
    assert not batch.problems
    rows = batch.to_record_batch().to_pylist()
    tcp_row, udp_row, icmp_row, data_row = rows
    assert (text(tcp_row["src_addr"]), text(tcp_row["dst_addr"])) == ("10.0.0.1", "198.51.100.7")
    assert (tcp_row["src_port"], tcp_row["dst_port"], tcp_row["protocol"]) == (40000, 443, 6)
    assert (tcp_row["tcp_flags"], tcp_row["tos"], tcp_row["ip_version"]) == (0x12, 0xB8, 4)
    # Bytes: the frame length as sFlow (and sfacctd) count it: Ethernet, a tag, IP, FCS.
    assert tcp_row["bytes"] == 14 + 4 + 20 + 20 + 60 + 4
    assert (tcp_row["packets"], tcp_row["flows"], tcp_row["sampling_rate"]) == (1, 1, 512)
    assert (tcp_row["in_if"], tcp_row["out_if"]) == (3, 4)
    assert (tcp_row["src_vlan"], tcp_row["dst_vlan"]) == (42, 43)
    assert (tcp_row["src_mask"], tcp_row["dst_mask"]) == (24, 16)
    assert text(tcp_row["next_hop"]) == "192.0.2.254"
    assert text(tcp_row["bgp_next_hop"]) == "203.0.113.1"
    assert (tcp_row["src_as"], tcp_row["dst_as"]) == (64496, 64499)
    assert tcp_row["src_mac"] == int.from_bytes(MAC_A, "big")
    assert tcp_row["dst_mac"] == int.from_bytes(MAC_B, "big")
    assert text(tcp_row["exporter"]) == EXPORTER
    assert tcp_row["time_start"] == tcp_row["time_end"] == tcp_row["time_received"] == NOW

    assert (text(udp_row["src_addr"]), text(udp_row["dst_addr"])) == ("2001:db8::1", "2001:db8::2")
    assert (udp_row["src_port"], udp_row["dst_port"], udp_row["protocol"]) == (5353, 53, 17)
    assert (udp_row["ip_version"], udp_row["tos"], udp_row["src_vlan"]) == (6, 0x2E, 7)
    assert (udp_row["in_if"], udp_row["out_if"], udp_row["sampling_rate"]) == (0, 0, 1000)

    # A bare IPv4 header (protocol 11) and no frame length: the IP length counts.
    assert (icmp_row["icmp_type"], icmp_row["icmp_code"], icmp_row["dst_port"]) == (8, 0, 0x800)
    assert icmp_row["bytes"] == 24 and icmp_row["src_mac"] == 0

    # Sampled IPv4 data instead of a header; rate 0 means none announced: 1 (configured).
    assert (text(data_row["src_addr"]), data_row["dst_port"], data_row["bytes"]) == (
        "10.0.0.4",
        80,
        1500,
    )
    assert (data_row["tcp_flags"], data_row["tos"], data_row["sampling_rate"]) == (0x10, 0x20, 1)
    stats = {(s.exporter, s.observation_domain, s.version): s for s in batch.stats}
    item = stats[EXPORTER, 0, sflow.STATS_VERSION]
    assert (item.packets, item.flows, item.decode_errors) == (1, 4, 0)


def test_configured_rate_applies_when_the_agent_sends_none() -> None:
    _, batch = decode(sflow_datagram([DATA_SAMPLE, TCP_SAMPLE]), sampling_rates={EXPORTER: 100})
    assert batch.columns["sampling_rate"].tolist() == [100, 512]


def test_unknown_samples_and_records_are_skipped() -> None:
    enterprise = record((9 << 12) | 1, b"\x01\x02\x03\x04" * 3)
    sample = flow_sample([record(2000, b"\0" * 8), *TCP_SAMPLE_RECORDS])
    _, batch = decode(sflow_datagram([enterprise, sample, record(5, b"\0" * 16)]))
    assert batch.rows == 1 and not batch.problems
    assert batch.columns["dst_port"].tolist() == [443]


TCP_SAMPLE_RECORDS = [
    raw_header(ethernet(ipv4_packet("10.0.0.1", "198.51.100.7", 6, tcp(40000, 443, 0x12), 60)))
]


def test_sequence_gaps_per_sub_agent() -> None:
    sample = flow_sample(TCP_SAMPLE_RECORDS)
    decoder, batch = decode(
        sflow_datagram([sample], sequence=10),
        sflow_datagram([sample], sequence=11),
        sflow_datagram([sample], sequence=15),  # 12, 13, 14 lost
        sflow_datagram([sample], sequence=3, sub_agent=1),
    )
    stats = {s.observation_domain: s for s in batch.stats}
    assert (stats[0].packets, stats[0].sequence_gaps, stats[0].last_sequence) == (3, 3, 15)
    assert (stats[1].packets, stats[1].sequence_gaps) == (1, 0)
    again = decoder.decode([Packet(sflow_datagram([sample], sequence=17), EXPORTER, NOW)])
    assert again.stats[0].sequence_gaps == 1
    assert batch.columns["observation_domain"].tolist() == [0, 0, 0, 1]


def test_counter_samples_give_interface_counters() -> None:
    _, batch = decode(
        sflow_datagram(
            [
                counter_sample([generic_counters(3, 10**9, 1000, 2000)]),
                counter_sample([record(2, b"\0" * 8), generic_counters(4, 10**10, 5, 6)], True),
                TCP_SAMPLE,
            ],
            uptime=50_000,
        )
    )
    assert batch.rows == 1 and not batch.problems
    got = [
        (c.exporter, c.if_index, c.speed_bps, c.in_octets, c.out_octets, c.uptime_ms)
        for c in batch.interface_counters
    ]
    assert got == [(EXPORTER, 3, 10**9, 1000, 2000, 50_000), (EXPORTER, 4, 10**10, 5, 6, 50_000)]


def test_interface_counter_rates_and_speeds_reach_the_interface_reports(tmp_path: Path) -> None:
    table = InterfaceCounterTable(max_interfaces=2)
    table.update([[EXPORTER, 3, 10**9, 1000, 2000, NOW, 50_000]])
    # 10 s later: 12.5 MB in (10 Mb/s), the out counter reset (agent restart): no out rate.
    table.update([[EXPORTER, 3, 10**9, 1000 + 12_500_000, 2000 + 25_000_000, NOW + 10_000, 60_000]])
    # Named as the reports name exporters (a dual-stack socket gives IPv4-mapped sources).
    table.update(
        [["::ffff:" + EXPORTER, 4, 10**8, 0, 0, NOW, 1], ["192.0.2.9", 1, 10**8, 0, 0, NOW, 1]]
    )
    assert (len(table), table.dropped) == (2, 1)
    data = table.to_json()
    assert data[EXPORTER]["3"]["in_bps"] == 10_000_000.0
    assert data[EXPORTER]["3"]["out_bps"] == 20_000_000.0
    assert data[EXPORTER]["4"]["in_bps"] is None
    table.update([[EXPORTER, 3, 10**9, 5, 5, NOW + 20_000, 10]])  # restarted: no rate
    assert table.to_json()[EXPORTER]["3"]["in_bps"] is None

    snapshot = table.snapshot()
    assert snapshot is not None and table.snapshot() is None  # unchanged since
    interface_counters_path(tmp_path).write_bytes(snapshot)
    known = interfaces.load(tmp_path)
    assert interfaces.describe(known, EXPORTER, 3).speed_bps == 10**9
    assert interfaces.describe(known, EXPORTER, 4).name is None
    # SNMP's speed wins where it has one; its names stay.
    interfaces_path(tmp_path).write_text(
        json.dumps(
            {EXPORTER: {"3": {"name": "xe-0/0/3", "speed_bps": 10**10}, "4": {"name": "ge-4"}}}
        )
    )
    known = interfaces.load(tmp_path)
    assert interfaces.describe(known, EXPORTER, 3) == interfaces.InterfaceInfo(
        "xe-0/0/3", speed_bps=10**10
    )
    assert interfaces.describe(known, EXPORTER, 4) == interfaces.InterfaceInfo(
        "ge-4", speed_bps=10**8
    )


def test_malformed_datagrams_are_counted_and_dropped_whole() -> None:
    good = sflow_datagram([TCP_SAMPLE, TCP_SAMPLE])
    bad = [
        good[:20],  # shorter than the header
        good[:-4],  # the last sample overruns the datagram
        good[:32] + struct.pack(">I", 5000) + good[36:],  # first sample's length too long
        struct.pack(">II", 5, 3) + good[12:],  # agent address type 3
        good[:24] + struct.pack(">I", 100_000) + good[28:],  # sample count over the cap
        sflow_datagram([flow_sample([raw_header(b"\0" * 40)])])[:-8]
        + b"\0" * 8,  # fine: zeros pad a header of zeros (kept below as a non-IP flow)
        sflow_datagram([TCP_SAMPLE, record(1, struct.pack(">IIII", 1, 2, 3, 4))]),  # short sample
        sflow_datagram(
            [flow_sample([record(1, struct.pack(">IIII", 1, 100, 4, 200) + b"\0" * 8)])]
        ),
        sflow_datagram([flow_sample([gateway("192.0.2.1", 1, [[1] * 3])[:-20]])]),
    ]
    _, batch = decode(*bad, good)
    stats = {(s.observation_domain, s.version): s for s in batch.stats}
    assert stats[0, sflow.STATS_VERSION].decode_errors == 8
    assert stats[0, sflow.STATS_VERSION].packets == 2
    # The good datagram's two flows and the zero header's one; nothing of the others.
    assert batch.rows == 3
    assert batch.columns["ip_version"].tolist().count(4) == 2
    assert len(batch.problems) == 8
    assert all(problem.exporter == EXPORTER for problem in batch.problems)
    assert any("overruns" in problem.reason for problem in batch.problems)


def test_flow_samples_beyond_the_record_cap_are_dropped_and_counted() -> None:
    decoder, batch = decode(sflow_datagram([TCP_SAMPLE] * 5), max_records_per_datagram=3)
    assert batch.rows == 3
    assert decoder.counters.datagrams_capped == 1
    assert batch.stats[0].decode_errors == 1 and len(batch.problems) == 1


def test_rows_path_decodes_sflow_beside_netflow() -> None:
    """One listen address, both protocols: the collector's recvmmsg path tells them apart
    per datagram and decodes them as the packet path does."""
    datas = [
        v5_datagram([v5_record(i) for i in range(3)]),
        sflow_datagram([TCP_SAMPLE, UDP6_SAMPLE], sequence=1),
        sflow_datagram([counter_sample([generic_counters(3, 10**9, 1, 2)])], sequence=2),
        v5_datagram([v5_record(5)], sequence=3),
        sflow_datagram([TCP_SAMPLE], sequence=9)[:-3],
    ]
    exporters = [EXPORTER, EXPORTER, "192.0.2.2", EXPORTER, EXPORTER]
    by_packets = FlowDecoder().decode(
        [Packet(d, e, NOW) for d, e in zip(datas, exporters, strict=True)]
    )
    rows, lengths, codes, names = as_rows(datas, exporters)
    by_rows = FlowDecoder().decode_rows(rows, lengths, codes, names, NOW)
    same_batches(by_packets, by_rows)
    assert by_rows.rows == 3 + 2 + 1
    assert len(by_rows.interface_counters) == 1
    versions = {s.version for s in by_rows.stats}
    assert versions == {5, sflow.STATS_VERSION}


@pytest.mark.parametrize("width", [14, 17, 40])
def test_short_headers_give_fewer_columns_never_garbage(width: int) -> None:
    frame = ethernet(ipv4_packet("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, 0x02)), (5,))
    _, batch = decode(sflow_datagram([flow_sample([raw_header(frame[:width], frame_length=100)])]))
    row = batch.to_record_batch().to_pylist()[0]
    assert row["bytes"] == 100
    has_ip = width >= 14 + 4 + 20
    assert row["ip_version"] == (4 if has_ip else 0)
    assert row["src_vlan"] == (5 if width >= 18 else 0)
    assert row["src_port"] == 0  # the transport header is cut off in every case
    assert np.all(batch.columns["tcp_flags"] == 0)


def test_sflow_port_is_listened_on_by_default() -> None:
    from lanalyze.flows.config import FlowsConfig

    assert FlowsConfig().listen == ["127.0.0.1:2055", "127.0.0.1:6343"]
