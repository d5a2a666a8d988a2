"""Report dimensions: what ``--by`` accepts, the SQL that computes each key, how it is shown.

Every dimension column of the catalogue (:func:`lanalyze.flows.catalogue.dimensions`) is a
dimension under its name and aliases (``src_addr``, ``srcip``, ...). On top of those come the
derived ones: either-side (``ip``, ``port``, ``as``, ``if``, and the enrichment names
``country``, ``asname``, ``netname``, ``netrole``, ``ifname``, ``ifboundary``: a flow counts
once under each side, like ``nfdump -s ip``), ``app``, ``proto``, ``conversation`` (address
pair, both directions together), ``conversation-ports``, ``dscp``, ``flags`` and subnet rollups
(``srcnet/24``, ``dstnet/48``, ``net/16``; one length applies to IPv4 addresses as at most /32
and to IPv6 as given, ``srcnet/24/48`` gives both).

Key SQL is fixed text over column names; prefix masks travel as parameters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from lanalyze.flows import catalogue
from lanalyze.flows.errors import DimensionError
from lanalyze.flows.query.apps import application, protocol_name, service_name

V4_LOW = b"\x00" * 10 + b"\xff\xff" + b"\x00" * 4
V4_HIGH = b"\x00" * 10 + b"\xff\xff" + b"\xff" * 4
FLAG_LETTERS = "CEUAPRSF"  # nfdump's order, bit 7 .. bit 0


@dataclass(frozen=True)
class KeyExpr:
    sql: str
    params: tuple[object, ...] = ()


@dataclass(frozen=True)
class Dimension:
    """A ``--by`` dimension: the stored columns it reads and the key SQL computed from them.

    Reports first sum per exact stored values (``bases``), then compute ``keys`` over those
    sums (``{0}``, ``{1}``... name the base columns): a subnet or conversation is computed
    once per distinct address, not once per flow or rollup row.
    """

    name: str
    bases: tuple[tuple[str, ...], ...]
    """Stored columns, per variant: one variant; two (source, destination) for either-side."""
    keys: tuple[KeyExpr, ...]
    render: Callable[[tuple[object, ...]], object]
    prefix: tuple[int, int] | None = None
    """A subnet dimension's (IPv4, IPv6) prefix lengths: a dialect without ``::BIT`` casts
    (ClickHouse) masks the address its own way from these."""

    @property
    def width(self) -> int:
        return len(self.keys)

    @property
    def either(self) -> bool:
        return len(self.bases) > 1

    @property
    def needs(self) -> frozenset[str]:
        return frozenset(column for base in self.bases for column in base)

    def variant_needs(self, index: int) -> frozenset[str]:
        return frozenset(self.variant_needs_ordered(index))

    def variant_needs_ordered(self, index: int) -> tuple[str, ...]:
        return self.bases[min(index, len(self.bases) - 1)]

    @property
    def identity(self) -> bool:
        """The keys are the base columns themselves (no second aggregation needed)."""
        return [k.sql for k in self.keys] == [f"{{{i}}}" for i in range(len(self.bases[0]))]


def format_ip(value: object) -> str:
    if not isinstance(value, bytes | bytearray) or len(value) != 16:
        return str(value)
    packed = bytes(value)
    if packed[:12] == V4_LOW[:12]:
        return str(ipaddress.IPv4Address(packed[12:]))
    return str(ipaddress.IPv6Address(packed))


def format_flags(value: int) -> str:
    return "".join(
        letter if value & (0x80 >> index) else "." for index, letter in enumerate(FLAG_LETTERS)
    )


def format_mac(value: int) -> str:
    return ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


def _int(values: tuple[object, ...]) -> object:
    return values[0]


def _text(values: tuple[object, ...]) -> object:
    """An enrichment name (:mod:`lanalyze.flows.enrich`); unknown (null) shows as ""."""
    return values[0] if values[0] is not None else ""


def _ip(values: tuple[object, ...]) -> object:
    return format_ip(values[0])


_IDENTITY = (KeyExpr("{0}"),)


def _single(name: str, column: str, render: Callable[[tuple[object, ...]], object]) -> Dimension:
    return Dimension(name, ((column,),), _IDENTITY, render)


def _either(
    name: str, columns: tuple[str, str], render: Callable[[tuple[object, ...]], object]
) -> Dimension:
    return Dimension(name, ((columns[0],), (columns[1],)), _IDENTITY, render)


def _catalogue_dimensions() -> dict[str, Dimension]:
    found: dict[str, Dimension] = {}
    for column in catalogue.dimensions():
        if column.kind == "ip":
            render: Callable[[tuple[object, ...]], object] = _ip
        elif column.kind == "mac":

            def render(values: tuple[object, ...]) -> object:
                return format_mac(int(values[0]))  # type: ignore[call-overload]
        elif column.kind == "str":
            render = _text
        else:
            render = _int
        for name in (column.name, *column.aliases):
            found[name] = _single(name, column.name, render)
    return found


def _proto(values: tuple[object, ...]) -> object:
    return protocol_name(int(values[0]))  # type: ignore[call-overload]


def _app(values: tuple[object, ...]) -> object:
    return application(int(values[0]), int(values[1]))  # type: ignore[call-overload]


def _app_name(values: tuple[object, ...]) -> object:
    name, protocol, port = values
    if name:
        return name
    number, service = int(protocol), int(port)  # type: ignore[call-overload]
    if number in (6, 17, 132):
        return service_name(number, service) or application(number, service)
    return application(number, service)


def _flags(values: tuple[object, ...]) -> object:
    return format_flags(int(values[0]))  # type: ignore[call-overload]


def _conversation(values: tuple[object, ...]) -> object:
    return f"{format_ip(values[0])} <-> {format_ip(values[1])}"


def _conversation_ports(values: tuple[object, ...]) -> object:
    a, a_port, b, b_port = values
    return f"{_with_port(a, a_port)} <-> {_with_port(b, b_port)}"


def _with_port(address: object, port: object) -> str:
    text = format_ip(address)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


_A_FIRST = "({0} < {2} OR ({0} = {2} AND {1} <= {3}))"


def _derived() -> dict[str, Dimension]:
    dims = {
        "ip": _either("ip", ("src_addr", "dst_addr"), _ip),
        "port": _either("port", ("src_port", "dst_port"), _int),
        "as": _either("as", ("src_as", "dst_as"), _int),
        "if": _either("if", ("in_if", "out_if"), _int),
        # Enrichment names, either side (a flow counts under its source's and destination's).
        "country": _either("country", ("src_country", "dst_country"), _text),
        "asname": _either("asname", ("src_as_name", "dst_as_name"), _text),
        "netname": _either("netname", ("src_net_name", "dst_net_name"), _text),
        "netrole": _either("netrole", ("src_net_role", "dst_net_role"), _text),
        "ifname": _either("ifname", ("in_if_name", "out_if_name"), _text),
        "ifboundary": _either("ifboundary", ("in_if_boundary", "out_if_boundary"), _text),
        "inif": _single("inif", "in_if", _int),
        "outif": _single("outif", "out_if", _int),
        "proto": _single("proto", "protocol", _proto),
        "protocol": _single("protocol", "protocol", _proto),
        "flags": _single("flags", "tcp_flags", _flags),
        "tcp_flags": _single("tcp_flags", "tcp_flags", _flags),
        "dscp": Dimension("dscp", (("tos",),), (KeyExpr("{0} >> 2"),), _int),
        "app": Dimension(
            "app", (("protocol", "service_port"),), (KeyExpr("{0}"), KeyExpr("{1}")), _app
        ),
        "conversation": Dimension(
            "conversation",
            (("src_addr", "dst_addr"),),
            (KeyExpr("least({0}, {1})"), KeyExpr("greatest({0}, {1})")),
            _conversation,
        ),
        "conversation-ports": Dimension(
            "conversation-ports",
            (("src_addr", "src_port", "dst_addr", "dst_port"),),
            (
                KeyExpr(f"CASE WHEN {_A_FIRST} THEN {{0}} ELSE {{2}} END"),
                KeyExpr(f"CASE WHEN {_A_FIRST} THEN {{1}} ELSE {{3}} END"),
                KeyExpr(f"CASE WHEN {_A_FIRST} THEN {{2}} ELSE {{0}} END"),
                KeyExpr(f"CASE WHEN {_A_FIRST} THEN {{3}} ELSE {{1}} END"),
            ),
            _conversation_ports,
        ),
    }
    # Exported application names (IE 95), else the port table's, like ``app``.
    dims["appname"] = Dimension(
        "appname",
        (("app_name", "protocol", "service_port"),),
        (KeyExpr("{0}"), KeyExpr("{1}"), KeyExpr("{2}")),
        _app_name,
    )
    dims["app_name"] = dims["appname"]
    dims["conv"] = dims["conversation"]
    # nfdump's name for the exporter statistic (``-s router``).
    dims["router"] = _single("router", "exporter", _ip)
    dims["service_port"] = _single("service_port", "service_port", _int)
    return dims


_NAMED: dict[str, Dimension] = {**_catalogue_dimensions(), **_derived()}


def _mask_bits(length: int) -> str:
    return "1" * length + "0" * (128 - length)


def _subnet(name: str, side: str, v4_length: int, v6_length: int) -> Dimension:
    key = KeyExpr(
        "CASE WHEN {0} BETWEEN ? AND ? THEN ({0}::BIT & ?::BIT)::BLOB "
        "ELSE ({0}::BIT & ?::BIT)::BLOB END",
        (V4_LOW, V4_HIGH, _mask_bits(96 + v4_length), _mask_bits(v6_length)),
    )

    def render(values: tuple[object, ...]) -> object:
        value = values[0]
        text = format_ip(value)
        return f"{text}/{v6_length if ':' in text else v4_length}"

    if side == "either":
        return Dimension(
            name, (("src_addr",), ("dst_addr",)), (key,), render, (v4_length, v6_length)
        )
    return Dimension(name, ((f"{side}_addr",),), (key,), render, (v4_length, v6_length))


def dimension(name: str) -> Dimension:
    """The dimension ``name`` names (case-insensitive); DimensionError if none."""
    key = name.strip().lower()
    if key in _NAMED:
        return _NAMED[key]
    for prefix, side in (("srcnet/", "src"), ("dstnet/", "dst"), ("net/", "either")):
        if key.startswith(prefix):
            lengths = key[len(prefix) :].split("/")
            if not 1 <= len(lengths) <= 2 or not all(p.isdigit() for p in lengths):
                break
            first = int(lengths[0])
            v6 = int(lengths[1]) if len(lengths) == 2 else first
            v4 = min(first, 32)
            if not 0 <= v4 <= 32 or not 0 <= v6 <= 128:
                break
            return _subnet(key, side, v4, v6)
    raise DimensionError(
        f"unknown dimension {name!r}; known: {', '.join(sorted(known_names()))}, "
        "srcnet/N, dstnet/N, net/N"
    )


def parse_dimensions(text: str) -> list[Dimension]:
    """``srcip,dstport`` -> dimensions; at most one either-side dimension."""
    names = [part for part in text.split(",") if part.strip()]
    if not names:
        raise DimensionError("no dimension given (for example --by srcip)")
    if len(names) > 8:
        raise DimensionError("at most 8 dimensions")
    dims = [dimension(name) for name in names]
    if sum(d.either for d in dims) > 1:
        raise DimensionError(
            "at most one either-side dimension (ip, port, as, if, country, asname, netname, "
            "netrole, ifname, ifboundary, net/N)"
        )
    return dims


def known_names() -> list[str]:
    return sorted(_NAMED)
