"""Flow columns from a sampled packet's header: IPFIX dataLinkFrameSection (IE 315, RFC 7133).

Exporters that sample packets (Juniper, Cisco, ipfixprobe in some modes) may send the first
bytes of the frame instead of (or besides) the usual elements. Its Ethernet header (802.1Q /
802.1ad tags), IPv4 or IPv6 header and transport ports fill the columns the record left empty;
a record made from one frame counts one packet of the IP packet's length. Only the outermost IP
header is read (SRv6 and IP-in-IP keep their tunnel endpoints). The frame is the peer's data:
every field is bounds-checked, a short or odd frame gives fewer columns, never an error.

IE 315 is variable-length in practice, so this runs in the per-record path of
:meth:`~lanalyze.flows.decode.templates.Template.split_variable`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FRAME_KEY = "frame"
"""Key of the parsed frame in a record's variable values (not an element key: has no ':')."""
DATA_LINK_FRAME_SECTION = 315
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
MAPPED = b"\0" * 10 + b"\xff\xff"

Array = npt.NDArray[Any]


def frame_columns(raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    size = len(raw)
    if size < 14:
        return out
    out["dst_mac"] = int.from_bytes(raw[0:6], "big")
    out["src_mac"] = int.from_bytes(raw[6:12], "big")
    ethertype = (raw[12] << 8) | raw[13]
    pos = 14
    while ethertype in VLAN_TAGS and pos + 4 <= size:
        out.setdefault("src_vlan", ((raw[pos] << 8) | raw[pos + 1]) & 0x0FFF)
        ethertype = (raw[pos + 2] << 8) | raw[pos + 3]
        pos += 4
    if ethertype == 0x0800 and pos + 20 <= size and raw[pos] >> 4 == 4:
        header = (raw[pos] & 0x0F) * 4
        out["ip_version"] = 4
        out["tos"] = raw[pos + 1]
        out["bytes"] = (raw[pos + 2] << 8) | raw[pos + 3]
        protocol = raw[pos + 9]
        out["src_addr"] = MAPPED + raw[pos + 12 : pos + 16]
        out["dst_addr"] = MAPPED + raw[pos + 16 : pos + 20]
        first_fragment = ((raw[pos + 6] & 0x1F) << 8 | raw[pos + 7]) == 0
        transport = pos + header if first_fragment else size
    elif ethertype == 0x86DD and pos + 40 <= size and raw[pos] >> 4 == 6:
        out["ip_version"] = 6
        out["tos"] = ((raw[pos] & 0x0F) << 4) | (raw[pos + 1] >> 4)
        out["bytes"] = ((raw[pos + 4] << 8) | raw[pos + 5]) + 40
        protocol = raw[pos + 6]
        out["src_addr"] = raw[pos + 8 : pos + 24]
        out["dst_addr"] = raw[pos + 24 : pos + 40]
        transport = pos + 40
    else:
        return out
    out["protocol"] = protocol
    out["packets"] = 1
    if protocol in (6, 17, 132) and transport + 4 <= size:
        out["src_port"] = (raw[transport] << 8) | raw[transport + 1]
        out["dst_port"] = (raw[transport + 2] << 8) | raw[transport + 3]
        if protocol == 6 and transport + 14 <= size:
            out["tcp_flags"] = raw[transport + 13]
    elif protocol in (1, 58) and transport + 2 <= size:
        out["icmp_type"] = raw[transport]
        out["icmp_code"] = raw[transport + 1]
    return out


def apply_frames(columns: dict[str, Array], frames: list[dict[str, Any]]) -> None:
    """Fills the rows' empty columns from their parsed frames (``{}`` where none)."""
    names = {name for frame in frames for name in frame}
    for name in names:
        target = columns[name]
        if target.dtype.kind == "S":
            values = np.array([frame.get(name, b"") for frame in frames], dtype="S16")
            raw = np.ascontiguousarray(target).view(np.uint8).reshape(len(target), 16)
            empty = ~raw.any(axis=1)
        else:
            values = np.array([frame.get(name, 0) for frame in frames], dtype=target.dtype)
            empty = target == 0
        mask = empty & np.array([name in frame for frame in frames])
        target[mask] = values[mask]
