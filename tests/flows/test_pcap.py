"""The pcap/pcapng reader: formats, link types, fragments, truncation errors, and fuzz."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanalyze.flows.errors import PcapError
from lanalyze.flows.pcap import PcapReader, read_udp

SRC4, DST4 = "192.0.2.7", "198.51.100.1"
SRC6, DST6 = "2001:db8::7", "2001:db8::1"


def udp(payload: bytes, sport: int = 40000, dport: int = 2055) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(segment: bytes, *, ident: int = 1, offset: int = 0, more: bool = False) -> bytes:
    flags = (0x2000 if more else 0) | (offset // 8)
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(segment),
        ident,
        flags,
        64,
        17,
        0,
        ipaddress.IPv4Address(SRC4).packed,
        ipaddress.IPv4Address(DST4).packed,
    )
    return header + segment


def ipv6(segment: bytes, next_header: int = 17) -> bytes:
    return (
        struct.pack(">IHBB", 6 << 28, len(segment), next_header, 64)
        + ipaddress.IPv6Address(SRC6).packed
        + ipaddress.IPv6Address(DST6).packed
        + segment
    )


def ethernet(packet: bytes, *, vlans: int = 0, ethertype: int = 0x0800) -> bytes:
    frame = b"\x02" * 6 + b"\x04" * 6
    for _ in range(vlans):
        frame += struct.pack(">HH", 0x8100, 42)
    return frame + struct.pack(">H", ethertype) + packet


def classic(frames: list[bytes], *, link: int = 1, endian: str = "<", nano: bool = False) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, link)
    for index, frame in enumerate(frames):
        fraction = 5 * (10**8 if nano else 10**5)  # half a second
        out += struct.pack(endian + "IIII", 1_700_000_000 + index, fraction, len(frame), len(frame))
        out += frame
    return out


def pcapng_block(block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def pcapng(frames: list[bytes], *, link: int = 1, simple: bool = False) -> bytes:
    out = pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    # if_tsresol = 9: nanoseconds.
    options = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    out += pcapng_block(1, struct.pack("<HHI", link, 0, 65535) + options)
    out += pcapng_block(0x0BAD, b"custom block, skipped")
    for index, frame in enumerate(frames):
        if simple:
            out += pcapng_block(3, struct.pack("<I", len(frame)) + frame)
        else:
            stamp = (1_700_000_000 + index) * 10**9 + 250_000_000
            out += pcapng_block(
                6,
                struct.pack("<IIIII", 0, stamp >> 32, stamp & 0xFFFFFFFF, len(frame), len(frame))
                + frame,
            )
    return out


def write(tmp_path: Path, data: bytes, name: str = "capture.pcap") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_pcap_both_byte_orders_and_resolutions(
    tmp_path: Path, endian: str, nano: bool
) -> None:
    frames = [ethernet(ipv4(udp(b"one"))), ethernet(ipv4(udp(b"two")), vlans=2)]
    datagrams = list(read_udp(write(tmp_path, classic(frames, endian=endian, nano=nano))))
    assert [d.payload for d in datagrams] == [b"one", b"two"]
    assert datagrams[0].source == SRC4
    assert (datagrams[0].source_port, datagrams[0].destination_port) == (40000, 2055)
    assert datagrams[0].time_ms == 1_700_000_000_500
    assert datagrams[1].time_ms == 1_700_000_001_500


def test_pcapng_enhanced_and_simple_packets(tmp_path: Path) -> None:
    frames = [ethernet(ipv6(udp(b"v6")), ethertype=0x86DD), ethernet(ipv4(udp(b"v4")))]
    datagrams = list(read_udp(write(tmp_path, pcapng(frames), "c.pcapng")))
    assert [(d.payload, d.source) for d in datagrams] == [(b"v6", SRC6), (b"v4", SRC4)]
    assert datagrams[0].time_ms == 1_700_000_000_250
    simple = list(read_udp(write(tmp_path, pcapng(frames, simple=True), "s.pcapng")))
    assert [d.payload for d in simple] == [b"v6", b"v4"]


def sll(packet: bytes, ethertype: int) -> bytes:
    return struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 8, ethertype) + packet


def sll2(packet: bytes, ethertype: int) -> bytes:
    return struct.pack(">HHIHBB8s", ethertype, 0, 1, 1, 0, 6, b"\x02" * 8) + packet


@pytest.mark.parametrize(
    ("link", "frame"),
    [
        (101, ipv4(udp(b"raw"))),
        (228, ipv4(udp(b"raw"))),
        (229, ipv6(udp(b"raw"))),
        (113, sll(ipv4(udp(b"raw")), 0x0800)),
        (276, sll2(ipv6(udp(b"raw")), 0x86DD)),
        (0, struct.pack("<I", 2) + ipv4(udp(b"raw"))),
        (0, struct.pack("<I", 30) + ipv6(udp(b"raw"))),
        (108, struct.pack(">I", 2) + ipv4(udp(b"raw"))),
    ],
)
def test_link_types(tmp_path: Path, link: int, frame: bytes) -> None:
    datagrams = list(read_udp(write(tmp_path, classic([frame], link=link))))
    assert [d.payload for d in datagrams] == [b"raw"]


def test_ipv4_fragments_are_reassembled(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 10
    segment = udp(payload)
    parts = [segment[:1000], segment[1000:2000], segment[2000:]]
    frames = [
        ethernet(ipv4(parts[1], ident=9, offset=1000, more=True)),  # out of order
        ethernet(ipv4(parts[0], ident=9, offset=0, more=True)),
        ethernet(ipv4(udp(b"between"), ident=10)),
        ethernet(ipv4(parts[2], ident=9, offset=2000)),
        ethernet(ipv4(b"lonely fragment", ident=11, offset=800)),  # never completed
    ]
    datagrams = list(read_udp(write(tmp_path, classic(frames))))
    assert [d.payload for d in datagrams] == [b"between", payload]


def test_ipv6_fragments_and_extension_headers(tmp_path: Path) -> None:
    segment = udp(b"x" * 3000)
    first, second = segment[:1496], segment[1496:]

    def fragment(data: bytes, offset: int, more: bool) -> bytes:
        header = struct.pack(">BBHI", 17, 0, (offset // 8) << 3 | int(more), 77)
        return ipv6(header + data, next_header=44)

    hop_by_hop = struct.pack(">BB6x", 17, 0)
    frames = [
        ethernet(fragment(first, 0, True), ethertype=0x86DD),
        ethernet(ipv6(hop_by_hop + udp(b"hbh"), next_header=0), ethertype=0x86DD),
        ethernet(fragment(second, 1496, False), ethertype=0x86DD),
    ]
    datagrams = list(read_udp(write(tmp_path, classic(frames))))
    assert [d.payload for d in datagrams] == [b"hbh", b"x" * 3000]


def test_non_udp_and_garbage_frames_are_skipped(tmp_path: Path) -> None:
    tcp = ipv4(udp(b"tcp"))
    tcp = tcp[:9] + b"\x06" + tcp[10:]
    frames = [ethernet(tcp), ethernet(b"\x45garbage"), ethernet(b"arp", ethertype=0x0806)]
    frames.append(ethernet(ipv4(udp(b"ok"))))
    reader = PcapReader(write(tmp_path, classic(frames)))
    assert [d.payload for d in reader] == [b"ok"]
    assert reader.skipped >= 1


def test_truncated_files_name_file_and_offset(tmp_path: Path) -> None:
    data = classic([ethernet(ipv4(udp(b"payload")))])
    path = write(tmp_path, data[:-3], "short.pcap")
    with pytest.raises(PcapError, match=r"short\.pcap: truncated at offset 40"):
        list(read_udp(path))
    with pytest.raises(PcapError, match="offset 0"):
        list(read_udp(write(tmp_path, b"\0\1\2\3" * 10, "junk.pcap")))
    with pytest.raises(PcapError, match="cannot open"):
        list(read_udp(tmp_path / "missing.pcap"))
    ng = pcapng([ethernet(ipv4(udp(b"payload")))])
    with pytest.raises(PcapError, match=r"cut\.pcapng: truncated at offset \d+"):
        list(read_udp(write(tmp_path, ng[:-6], "cut.pcapng")))


SAMPLES = [
    classic([ethernet(ipv4(udp(b"a" * 40))), ethernet(ipv6(udp(b"b")), ethertype=0x86DD)]),
    classic([ethernet(ipv4(udp(b"c"), ident=3, offset=0, more=True))], endian=">", nano=True),
    pcapng([ethernet(ipv4(udp(b"d" * 30))), ethernet(ipv4(udp(b"e")), vlans=1)]),
]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(SAMPLES),
    st.integers(0, 400),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
)
def test_fuzz_truncated_and_mutated_files_raise_only_pcap_error(
    tmp_path: Path, sample: bytes, cut: int, changes: list[tuple[int, int]]
) -> None:
    data = bytearray(sample[: max(cut, 0)] if cut < len(sample) else sample)
    for position, value in changes:
        if position < len(data):
            data[position] = value
    path = tmp_path / "fuzz.pcap"
    path.write_bytes(bytes(data))
    try:
        for datagram in read_udp(path):
            assert isinstance(datagram.payload, bytes)
    except PcapError as exc:
        assert "fuzz.pcap" in str(exc)
