"""Flow columns from IPFIX dataLinkFrameSection (IE 315): hand-built frames and fuzz."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.flows.decode import FlowDecoder
from lanalyze.flows.decode.frames import frame_columns
from tests.flows.test_decode_templates import (
    addresses,
    flow_set,
    ipfix_message,
    mapped,
    packet,
    template_record,
)
from tests.flows.test_pcap import ethernet, ipv4, ipv6, udp


def test_ipv4_udp_frame_with_vlan() -> None:
    frame = ethernet(ipv4(udp(b"hello", sport=5353, dport=53)), vlans=1)
    columns = frame_columns(frame)
    assert columns["src_addr"] == mapped("192.0.2.7")
    assert columns["dst_addr"] == mapped("198.51.100.1")
    assert (columns["src_port"], columns["dst_port"], columns["protocol"]) == (5353, 53, 17)
    assert (columns["src_vlan"], columns["ip_version"], columns["packets"]) == (42, 4, 1)
    assert columns["bytes"] == 20 + 8 + 5
    assert columns["src_mac"] == 0x040404040404 and columns["dst_mac"] == 0x020202020202


def test_ipv6_icmp_frame_and_short_frames() -> None:
    icmp = struct.pack(">BBH", 128, 0, 0) + b"ping"
    frame = ethernet(ipv6(icmp, next_header=58), ethertype=0x86DD)
    columns = frame_columns(frame)
    assert columns["src_addr"] == ipaddress.IPv6Address("2001:db8::7").packed
    assert (columns["icmp_type"], columns["icmp_code"], columns["protocol"]) == (128, 0, 58)
    assert frame_columns(b"\x01\x02") == {}
    assert set(frame_columns(frame[:20])) == {"src_mac", "dst_mac"}


def test_frame_section_fills_an_ipfix_record() -> None:
    decoder = FlowDecoder()
    template = ipfix_message([flow_set(2, template_record(300, [(10, 4), (315, 0xFFFF)]))])
    frame = ethernet(ipv4(udp(b"x" * 10, sport=1, dport=2)))
    data = ipfix_message([flow_set(300, struct.pack(">IB", 7, len(frame)) + frame)])
    batch = decoder.decode([packet(template), packet(data)])
    assert batch.rows == 1
    assert addresses(batch.columns["src_addr"]) == [mapped("192.0.2.7")]
    assert batch.columns["in_if"][0] == 7 and batch.columns["packets"][0] == 1
    assert batch.columns["dst_port"][0] == 2
    assert batch.extra is not None and '"0:315"' in (batch.extra[0] or "")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00"]))
def test_fuzz_frames_never_raise(body: bytes, ethertype: bytes) -> None:
    frame_columns(b"\x02" * 12 + ethertype + body)
