"""Naming applications: protocol + service port -> ``tcp/443 https``.

The service port of a flow is the lower of its two ports (the well-known side of a client
conversation); names come from a small built-in table, completed from ``/etc/services`` when
the host has one (read once, trusted as the host's own file).
"""

from __future__ import annotations

import functools
from pathlib import Path

PROTOCOL_NAMES = {
    1: "icmp",
    2: "igmp",
    6: "tcp",
    17: "udp",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmp6",
    89: "ospf",
    132: "sctp",
}
"""IP protocol numbers and their names: the one table (filters, labels, console URLs)."""
PROTOCOL_NUMBERS = {name: number for number, name in PROTOCOL_NAMES.items()}

_BUILTIN = {
    20: "ftp-data",
    21: "ftp",
    22: "ssh",
    23: "telnet",
    25: "smtp",
    53: "domain",
    67: "bootps",
    68: "bootpc",
    69: "tftp",
    80: "http",
    88: "kerberos",
    110: "pop3",
    123: "ntp",
    137: "netbios-ns",
    138: "netbios-dgm",
    139: "netbios-ssn",
    143: "imap",
    161: "snmp",
    162: "snmp-trap",
    179: "bgp",
    389: "ldap",
    443: "https",
    445: "microsoft-ds",
    465: "submissions",
    514: "syslog",
    587: "submission",
    636: "ldaps",
    853: "domain-s",
    993: "imaps",
    995: "pop3s",
    1194: "openvpn",
    1812: "radius",
    2055: "netflow",
    3306: "mysql",
    3389: "ms-wbt-server",
    4739: "ipfix",
    5060: "sip",
    5353: "mdns",
    5432: "postgresql",
    6379: "redis",
    8080: "http-alt",
    8443: "https-alt",
    9995: "netflow",
}


@functools.cache
def _services(path: str = "/etc/services") -> dict[tuple[str, int], str]:
    names: dict[tuple[str, int], str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return names
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or "/" not in fields[1]:
            continue
        port_text, _, proto = fields[1].partition("/")
        if port_text.isdigit():
            names.setdefault((proto, int(port_text)), fields[0])
    return names


def protocol_name(protocol: int) -> str:
    return PROTOCOL_NAMES.get(protocol, str(protocol))


def service_name(protocol: int, port: int) -> str:
    proto = PROTOCOL_NAMES.get(protocol, "")
    return _services().get((proto, port)) or _BUILTIN.get(port, "")


def application(protocol: int, port: int) -> str:
    """``tcp/443 https``; ``tcp/50000`` when unnamed; just the protocol when port-less."""
    proto = protocol_name(protocol)
    if protocol not in (6, 17, 132):
        return proto
    name = service_name(protocol, port)
    return f"{proto}/{port} {name}" if name else f"{proto}/{port}"
