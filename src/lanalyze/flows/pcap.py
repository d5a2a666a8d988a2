"""UDP payloads from pcap and pcapng captures, for ``lanalyze flows decode`` / ``import``.

Formats: classic pcap (both byte orders, microsecond and nanosecond magic) and pcapng (Section
Header, Interface Description, Enhanced and Simple Packet blocks; other blocks are skipped;
per-interface ``if_tsresol``). Link types: Ethernet (with 802.1Q / 802.1ad tags), raw IP
(101, 228, 229 and the BSD 12/14 aliases), Linux cooked capture v1 and v2 (113, 276), BSD
loopback / null (0, 108). IPv4 and IPv6 (hop-by-hop, routing, destination options and fragment
extension headers are walked).

Fragments: IPv4 and IPv6 fragments are reassembled (up to :data:`MAX_PENDING_FRAGMENTS`
datagrams in progress, oldest dropped beyond that); the UDP datagram is yielded when all its
bytes arrived, with the time of the last fragment. Incomplete datagrams are never yielded.

Why hand-written: the maintained pure-Python choices are dpkt (not a dependency here, and
slower than this for the one thing needed) and scapy (very heavy); this is ~200 lines.

Trust: capture files are the user's, but their contents are network data. A file that ends in
the middle of a header or block raises :class:`PcapError` naming the file and the offset; a
malformed packet inside a well-formed file is skipped (counted in :attr:`PcapReader.skipped`).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lanalyze.flows.errors import PcapError

MAX_PENDING_FRAGMENTS = 256
MAX_BLOCK = 64 * 1024 * 1024

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 10**6),
    b"\xa1\xb2\xc3\xd4": (">", 10**6),
    b"\x4d\x3c\xb2\xa1": ("<", 10**9),
    b"\xa1\xb2\x3c\x4d": (">", 10**9),
}
PCAPNG_SHB = 0x0A0D0D0A

LINK_NULL, LINK_ETHERNET, LINK_LOOP = 0, 1, 108
LINK_RAW = {101, 12, 14}
LINK_IPV4, LINK_IPV6 = 228, 229
LINK_SLL, LINK_SLL2 = 113, 276
ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
VLAN_TAGS = {0x8100, 0x88A8, 0x9100}


@dataclass(frozen=True)
class UdpDatagram:
    payload: bytes
    source: str
    """Source IP address as text."""
    source_port: int
    destination_port: int
    time_ms: int
    """Capture time, UTC ms since the epoch."""


class PcapReader:
    """Iterates the UDP datagrams of one capture file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.skipped = 0
        self._fragments: OrderedDict[tuple[object, ...], _Fragments] = OrderedDict()

    def __iter__(self) -> Iterator[UdpDatagram]:
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise PcapError(f"{self.path}: cannot open: {exc.strerror}") from exc
        with handle:
            magic = handle.read(4)
            if len(magic) < 4:
                raise PcapError(f"{self.path}: truncated at offset 0: no capture header")
            if magic in PCAP_MAGIC:
                frames = self._classic(handle, magic)
            elif struct.unpack("<I", magic)[0] == PCAPNG_SHB:
                frames = self._pcapng(handle, magic)
            else:
                raise PcapError(f"{self.path}: offset 0: not a pcap or pcapng file")
            for link, time_ms, frame in frames:
                yield from self._frame(link, time_ms, frame)

    def _read(self, handle: BinaryIO, size: int, what: str) -> bytes:
        offset = handle.tell()
        data = handle.read(size)
        if len(data) < size:
            raise PcapError(
                f"{self.path}: truncated at offset {offset}: {what} needs {size} bytes, "
                f"{len(data)} left"
            )
        return data

    def _classic(self, handle: BinaryIO, magic: bytes) -> Iterator[tuple[int, int, bytes]]:
        order, resolution = PCAP_MAGIC[magic]
        header = self._read(handle, 20, "the file header")
        link = struct.unpack(order + "HHiIII", header)[5] & 0xFFFF
        record = struct.Struct(order + "IIII")
        while True:
            offset = handle.tell()
            head = handle.read(16)
            if not head:
                return
            if len(head) < 16:
                raise PcapError(f"{self.path}: truncated at offset {offset}: packet header")
            seconds, fraction, captured, _ = record.unpack(head)
            if captured > MAX_BLOCK:
                raise PcapError(f"{self.path}: offset {offset}: absurd packet length {captured}")
            frame = self._read(handle, captured, "packet data")
            yield link, seconds * 1000 + fraction * 1000 // resolution, frame

    def _pcapng(self, handle: BinaryIO, magic: bytes) -> Iterator[tuple[int, int, bytes]]:
        order = "<"
        interfaces: list[tuple[int, int]] = []  # (link type, ticks per second)
        first = True
        while True:
            offset = handle.tell()
            head = magic if first else handle.read(4)
            first = False
            if not head:
                return
            rest = self._read(handle, 8 - len(head) if len(head) < 8 else 4, "block header")
            head = (head + rest)[:8]
            block_type = struct.unpack(order + "I", head[:4])[0]
            if block_type == PCAPNG_SHB:
                bom = self._read(handle, 4, "byte-order magic")
                order = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                    raise PcapError(f"{self.path}: offset {offset}: bad pcapng byte-order magic")
                length = struct.unpack(order + "I", head[4:8])[0]
                if length < 28 or length % 4 or length > MAX_BLOCK:
                    raise PcapError(f"{self.path}: offset {offset}: bad block length {length}")
                self._read(handle, length - 12, "section header block")
                interfaces = []
                continue
            length = struct.unpack(order + "I", head[4:8])[0]
            if length < 12 or length % 4 or length > MAX_BLOCK:
                raise PcapError(f"{self.path}: offset {offset}: bad block length {length}")
            body = self._read(handle, length - 8, "block body")[:-4]
            if block_type == 1:  # Interface Description Block
                if len(body) < 8:
                    raise PcapError(f"{self.path}: offset {offset}: short interface block")
                link = struct.unpack(order + "H", body[:2])[0]
                interfaces.append((link, _tsresol(body[8:], order)))
            elif block_type == 6:  # Enhanced Packet Block
                if len(body) < 20:
                    raise PcapError(f"{self.path}: offset {offset}: short packet block")
                iface, high, low, captured, _ = struct.unpack(order + "IIIII", body[:20])
                if iface >= len(interfaces) or captured > len(body) - 20:
                    self.skipped += 1
                    continue
                link, ticks = interfaces[iface]
                stamp = (high << 32) | low
                yield link, stamp * 1000 // ticks, body[20 : 20 + captured]
            elif block_type == 3:  # Simple Packet Block: no timestamp
                if not interfaces or len(body) < 4:
                    self.skipped += 1
                    continue
                original = struct.unpack(order + "I", body[:4])[0]
                yield interfaces[0][0], 0, body[4 : 4 + original]

    def _frame(self, link: int, time_ms: int, frame: bytes) -> Iterator[UdpDatagram]:
        try:
            packet = _network_layer(link, frame)
        except (struct.error, IndexError, ValueError):
            packet = None
        if packet is None:
            self.skipped += 1
            return
        ethertype, data = packet
        try:
            result = (
                self._ipv4(data, time_ms)
                if ethertype == ETHERTYPE_IPV4
                else self._ipv6(data, time_ms)
            )
        except (struct.error, IndexError, ValueError):
            result = None
            self.skipped += 1
        if result is not None:
            yield result

    def _ipv4(self, data: bytes, time_ms: int) -> UdpDatagram | None:
        header_length = (data[0] & 0x0F) * 4
        total = struct.unpack(">H", data[2:4])[0]
        if data[0] >> 4 != 4 or header_length < 20 or total < header_length:
            self.skipped += 1
            return None
        ident, flags_offset = struct.unpack(">HH", data[4:8])
        protocol = data[9]
        source = ipaddress.IPv4Address(data[12:16])
        payload = data[header_length:total]
        more = bool(flags_offset & 0x2000)
        offset = (flags_offset & 0x1FFF) * 8
        if more or offset:
            key = (4, data[12:20], ident, protocol)
            whole = self._reassemble(key, offset, payload, more)
            if whole is None:
                return None
            payload = whole
        if protocol != 17:
            return None
        return _udp(payload, str(source), time_ms)

    def _ipv6(self, data: bytes, time_ms: int) -> UdpDatagram | None:
        if data[0] >> 4 != 6:
            self.skipped += 1
            return None
        length = struct.unpack(">H", data[4:6])[0]
        next_header = data[6]
        source = ipaddress.IPv6Address(data[8:24])
        payload = data[40 : 40 + length]
        fragment: tuple[int, bool, int] | None = None
        for _ in range(8):
            if next_header in (0, 43, 60):
                next_header, payload = payload[0], payload[(payload[1] + 1) * 8 :]
            elif next_header == 44:
                offset_flags, ident = struct.unpack(">HI", payload[2:8])
                fragment = ((offset_flags >> 3) * 8, bool(offset_flags & 1), ident)
                next_header, payload = payload[0], payload[8:]
            else:
                break
        if fragment is not None:
            offset, more, ident = fragment
            whole = self._reassemble((6, data[8:40], ident), offset, payload, more)
            if whole is None:
                return None
            payload = whole
        if next_header != 17:
            return None
        return _udp(payload, str(source), time_ms)

    def _reassemble(
        self, key: tuple[object, ...], offset: int, payload: bytes, more: bool
    ) -> bytes | None:
        pending = self._fragments.get(key)
        if pending is None:
            if len(self._fragments) >= MAX_PENDING_FRAGMENTS:
                self._fragments.popitem(last=False)
                self.skipped += 1
            pending = self._fragments[key] = _Fragments()
        pending.parts[offset] = payload
        if not more:
            pending.total = offset + len(payload)
        if pending.total is None or sum(map(len, pending.parts.values())) < pending.total:
            return None  # not all bytes yet: assemble only when it can succeed
        whole = bytearray()
        for start in sorted(pending.parts):
            if start > len(whole):
                return None  # a hole: wait for the missing fragment
            part = pending.parts[start]
            whole[start : start + len(part)] = part
        if len(whole) < pending.total:
            return None
        del self._fragments[key]
        return bytes(whole[: pending.total])


@dataclass
class _Fragments:
    parts: dict[int, bytes]
    total: int | None

    def __init__(self) -> None:
        self.parts = {}
        self.total = None


def _tsresol(options: bytes, order: str) -> int:
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack(order + "HH", options[pos : pos + 4])
        if code == 0:
            break
        if code == 9 and length >= 1 and pos + 4 < len(options):
            value = options[pos + 4]
            exponent = min(value & 0x7F, 30)
            return int(2**exponent if value & 0x80 else 10**exponent)
        pos += 4 + (length + 3) // 4 * 4
    return 10**6


def _network_layer(link: int, frame: bytes) -> tuple[int, bytes] | None:
    """(ethertype, IP packet) of a link-layer frame, or None if it carries no IP."""
    if link == LINK_ETHERNET:
        ethertype = struct.unpack(">H", frame[12:14])[0]
        pos = 14
        while ethertype in VLAN_TAGS:
            ethertype = struct.unpack(">H", frame[pos + 2 : pos + 4])[0]
            pos += 4
        data = frame[pos:]
    elif link == LINK_SLL:
        ethertype = struct.unpack(">H", frame[14:16])[0]
        data = frame[16:]
    elif link == LINK_SLL2:
        ethertype = struct.unpack(">H", frame[0:2])[0]
        data = frame[20:]
    elif link in (LINK_NULL, LINK_LOOP):
        family = struct.unpack("<I", frame[:4])[0]
        if family > 0xFFFF:
            family = struct.unpack(">I", frame[:4])[0]
        data = frame[4:]
        ethertype = ETHERTYPE_IPV4 if family == 2 else ETHERTYPE_IPV6
        if family not in (2, 10, 24, 28, 30):
            return None
    elif link in LINK_RAW or link in (LINK_IPV4, LINK_IPV6):
        data = frame
        ethertype = ETHERTYPE_IPV6 if frame and frame[0] >> 4 == 6 else ETHERTYPE_IPV4
    else:
        return None
    if ethertype not in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) or not data:
        return None
    return ethertype, data


def _udp(segment: bytes, source: str, time_ms: int) -> UdpDatagram | None:
    if len(segment) < 8:
        return None
    source_port, destination_port, length = struct.unpack(">HHH", segment[:6])
    if length < 8:
        length = len(segment)  # 0 in jumbograms / offloaded captures: trust the IP length
    return UdpDatagram(segment[8:length], source, source_port, destination_port, time_ms)


def read_udp(path: Path | str) -> Iterator[UdpDatagram]:
    """The UDP datagrams of a capture file, in file order."""
    return iter(PcapReader(path))
