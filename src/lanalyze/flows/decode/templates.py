"""NetFlow v9 (RFC 3954 §5.2-5.3) and IPFIX (RFC 7011 §3.4) templates, compiled once.

A template is compiled, when it arrives, into a numpy structured dtype over its fixed-length
fields and a list of per-field operations (which catalogue column it fills and how). Every data
set of that template is then read with one ``np.frombuffer`` and converted column by column
(:mod:`lanalyze.flows.decode.records`), never record by record.

Templates with IPFIX variable-length fields (RFC 7011 §7, length 65535) cannot be described
by one dtype: :meth:`Template.split_variable` walks such records one by one in Python (the
only per-record loop; bounded by the set length, at most one iteration per 1 byte of the set),
copies the fixed fields into a contiguous buffer for the vectorised path and keeps the
variable fields for the ``extra`` column. Variable-length elements have no catalogue column
(they are strings and octet arrays), so nothing is lost by that split.

Trust: template fields come from the peer; absurd ones (zero length, too many fields, fixed
record longer than a datagram) raise :class:`PeerDataError` and the template is not stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lanalyze.flows import catalogue
from lanalyze.flows.decode.errors import PeerDataError
from lanalyze.flows.decode.frames import DATA_LINK_FRAME_SECTION, FRAME_KEY, frame_columns

VARIABLE_LENGTH = 0xFFFF
MAX_FIELDS = 512
"""More fields than any real exporter sends (Cisco's largest are ~100); bounds memory."""
MAX_RECORD_LENGTH = 65535 - 16
TEMPLATE_BYTES = 2048
FIELD_BYTES = 512
"""A compiled template's memory, estimated: measured with tracemalloc at 1.4 KiB plus 160
(variable-length) to 470 (enterprise elements) bytes a field, rounded up."""

PADDING_ELEMENT = 210

# Elements handled specially by the record converter (not a plain integer into a column).
TIME_ABSOLUTE = {
    150: ("time_start", "s"),
    151: ("time_end", "s"),
    152: ("time_start", "ms"),
    153: ("time_end", "ms"),
    154: ("time_start", "ntp"),
    155: ("time_end", "ntp"),
    156: ("time_start", "ntp"),
    157: ("time_end", "ntp"),
}
# observationTime{Seconds,Milliseconds,Microseconds,Nanoseconds}: start and end when no
# flow times are exported (NAT event records, for example).
TIME_OBSERVATION = {322: "s", 323: "ms", 324: "ntp", 325: "ntp"}
TIME_DELTA_MICROS = {158: "time_start", 159: "time_end"}
TIME_UPTIME = {22: "time_start", 21: "time_end"}
SYSTEM_INIT_MS = 160
ICMP_TYPE_CODE = (32, 139)
SAMPLER_ID = (48, 302)
SAMPLING_INTERVAL = (34, 50)
PACKET_INTERVAL, PACKET_SPACE = 305, 306
IPV4_ELEMENTS = {8, 12, 15, 18}
IPV6_ELEMENTS = {27, 28, 62, 63}
IP_VERSION = 60

# IANA elements of type string: decoded as text in ``extra`` (others are shown as hex).
STRING_ELEMENTS = {82, 83, 84, 94, 96, 100, 236, 335}


@dataclass(frozen=True, slots=True)
class Field:
    element: int
    length: int
    enterprise: int = 0
    scope: bool = False
    """A NetFlow v9 scope field: its type numbers are a namespace of their own (RFC 3954 §6.1)."""

    @property
    def key(self) -> str:
        return f"{self.enterprise}:{self.element}"


@dataclass(frozen=True, slots=True)
class FieldOp:
    """How one fixed-length field of a record becomes output."""

    name: str  # field name in the compiled dtype
    kind: str  # "int", "ip", "mac", "time", "uptime", "delta", "icmp", "sampler", "rate",
    # "init", "space", "extra", "version"
    column: str = ""
    unit: str = ""
    key: str = ""
    length: int = 0
    text: bool = False
    element: int = 0


def _preference(op: FieldOp) -> int:
    if op.kind in ("int", "mac", "ip"):
        return catalogue.BY_NAME[op.column].ipfix_ids.index(op.element)
    return 0


def _int_dtype(length: int) -> Any:
    if length in (1, 2, 4, 8):
        return f">u{length}"
    return ("u1", (length,))


class Template:
    """One (options) template: its fields, compiled dtype and conversion operations."""

    __slots__ = (
        "dtype",
        "fields",
        "fixed",
        "fixed_length",
        "min_length",
        "ops",
        "options",
        "shared_ip_columns",
        "template_id",
        "var_fields",
        "wire",
    )

    def __init__(self, template_id: int, fields: tuple[Field, ...], options: bool) -> None:
        if not fields:
            raise PeerDataError(f"template {template_id} has no fields")
        if len(fields) > MAX_FIELDS:
            raise PeerDataError(
                f"template {template_id} has {len(fields)} fields (max {MAX_FIELDS})"
            )
        for f in fields:
            if f.length == 0 and not f.scope:
                raise PeerDataError(f"template {template_id}: element {f.key} has length 0")
        self.template_id = template_id
        self.fields = fields
        self.wire = b""
        """The template record as the exporter sent it (refreshes compare it); empty when
        restored from a saved state."""
        self.options = options
        self.fixed = all(f.length != VARIABLE_LENGTH for f in fields)
        self.fixed_length = sum(f.length for f in fields if f.length != VARIABLE_LENGTH)
        self.min_length = self.fixed_length + sum(1 for f in fields if f.length == VARIABLE_LENGTH)
        if self.min_length == 0:
            raise PeerDataError(f"template {template_id}: records would have no bytes")
        if self.fixed_length > MAX_RECORD_LENGTH:
            raise PeerDataError(
                f"template {template_id}: record length {self.fixed_length} exceeds a datagram"
            )
        names: list[str] = []
        formats: list[Any] = []
        ops: list[FieldOp] = []
        self.var_fields: list[tuple[int, Field]] = []
        for index, f in enumerate(fields):
            if f.length == VARIABLE_LENGTH:
                self.var_fields.append((index, f))
                continue
            if f.length == 0:
                continue  # zero-length v9 scope fields (seen on real exporters) carry nothing
            name = f"f{index}"
            op = _compile_field(name, f)
            names.append(name)
            as_bytes = op.kind in ("ip", "mac") or (op.kind == "extra" and f.enterprise != 0)
            if op.kind == "ip" and f.length == 4:
                formats.append(np.uint32)  # native: only copied into ::ffff:a.b.c.d
            else:
                formats.append(("u1", (f.length,)) if as_bytes else _int_dtype(f.length))
            if op.kind != "skip":
                ops.append(op)
        self.dtype = np.dtype({"names": names, "formats": formats}) if names else np.dtype([])
        # Where several elements fill one column (octetDeltaCount and octetTotalCount...), the
        # catalogue lists them by preference: the converter applies the preferred one first and
        # lets the others fill only its gaps.
        self.ops = tuple(sorted(ops, key=_preference))
        ip_columns = [op.column for op in self.ops if op.kind == "ip"]
        self.shared_ip_columns = frozenset(c for c in ip_columns if ip_columns.count(c) > 1)

    @property
    def footprint(self) -> int:
        """Estimated bytes of this object with its dtype, operations and wire bytes."""
        return TEMPLATE_BYTES + FIELD_BYTES * len(self.fields) + len(self.wire)

    @property
    def has_sampler_id(self) -> bool:
        return any(op.kind == "sampler" for op in self.ops)

    def split_variable(
        self, data: bytes, start: int, end: int, limit: int = 2**31
    ) -> tuple[bytes, list[dict[str, Any]], int, bool]:
        """Records of a set with variable-length fields: (fixed parts, variable values,
        count, whether records beyond ``limit`` were left unread).

        Trailing bytes shorter than the smallest record are padding (RFC 7011 §3.3.1); a
        record that overruns the set raises :class:`PeerDataError`.
        """
        fixed_parts: list[bytes] = []
        extras: list[dict[str, Any]] = []
        fields = self.fields
        pos = start
        while end - pos >= self.min_length:
            if len(extras) == limit:
                return b"".join(fixed_parts), extras, limit, True
            values: dict[str, Any] = {}
            for f in fields:
                length = f.length
                if length == VARIABLE_LENGTH:
                    if pos >= end:
                        raise PeerDataError("variable-length field overruns its set")
                    length = data[pos]
                    pos += 1
                    if length == 255:
                        if pos + 2 > end:
                            raise PeerDataError("variable-length field overruns its set")
                        length = (data[pos] << 8) | data[pos + 1]
                        pos += 2
                    if pos + length > end:
                        raise PeerDataError("variable-length field overruns its set")
                    raw = data[pos : pos + length]
                    values[f.key] = element_value(f, raw, variable=True)
                    if f.element == DATA_LINK_FRAME_SECTION and not f.enterprise:
                        values[FRAME_KEY] = frame_columns(raw)
                else:
                    if pos + length > end:
                        raise PeerDataError("record overruns its set")
                    fixed_parts.append(data[pos : pos + length])
                pos += length
            extras.append(values)
        return b"".join(fixed_parts), extras, len(extras), False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.template_id,
            "options": self.options,
            "fields": [[f.element, f.length, f.enterprise, int(f.scope)] for f in self.fields],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Template:
        fields = tuple(
            Field(int(e), int(length), int(pen), bool(scope))
            for e, length, pen, scope in data["fields"]
        )
        return cls(int(data["id"]), fields, bool(data["options"]))


def element_value(f: Field, raw: bytes, variable: bool = False) -> Any:
    """A value for ``extra``: text for IANA string elements, int for fixed-length IANA
    elements of 1, 2, 4 or 8 bytes, hex for the rest (enterprise elements, octet arrays)."""
    if f.enterprise == 0 and f.element in STRING_ELEMENTS:
        return raw.rstrip(b"\0").decode("utf-8", "replace")
    if f.enterprise == 0 and not variable and len(raw) in (1, 2, 4, 8):
        return int.from_bytes(raw, "big")
    return raw.hex()


def _compile_field(name: str, f: Field) -> FieldOp:
    if f.scope:
        return FieldOp(name, "skip")
    if f.enterprise:
        return FieldOp(name, "extra", key=f.key, length=f.length)
    e = f.element
    if e == PADDING_ELEMENT:
        return FieldOp(name, "skip")
    if e in TIME_ABSOLUTE:
        column, unit = TIME_ABSOLUTE[e]
        expected = 4 if unit == "s" else 8
        if f.length == expected:
            return FieldOp(name, "time", column=column, unit=unit)
    elif e in TIME_OBSERVATION:
        unit = TIME_OBSERVATION[e]
        if f.length == (4 if unit == "s" else 8):
            return FieldOp(name, "time", column="observation", unit=unit)
    elif e in TIME_DELTA_MICROS:
        if f.length == 4:
            return FieldOp(name, "delta", column=TIME_DELTA_MICROS[e])
    elif e in TIME_UPTIME:
        if f.length in (4, 8):
            return FieldOp(name, "uptime", column=TIME_UPTIME[e])
    elif e == SYSTEM_INIT_MS:
        if f.length == 8:
            return FieldOp(name, "init")
    elif e in ICMP_TYPE_CODE:
        if f.length == 2:
            return FieldOp(name, "icmp")
    elif e in SAMPLER_ID:
        if f.length <= 8:
            return FieldOp(name, "sampler", column="sampler_id")
    elif e in SAMPLING_INTERVAL or e == PACKET_INTERVAL:
        if f.length <= 8:
            return FieldOp(name, "rate", unit=str(e))
    elif e == PACKET_SPACE:
        if f.length <= 8:
            return FieldOp(name, "space")
    elif e == IP_VERSION:
        if f.length == 1:
            return FieldOp(name, "version", column="ip_version")
    elif e in catalogue.BY_IPFIX_ID:
        target = catalogue.BY_IPFIX_ID[e]
        if target.kind == "ip" and f.length in (4, 16):
            return FieldOp(name, "ip", column=target.name, length=f.length, element=e)
        if target.kind == "mac" and f.length == 6:
            return FieldOp(name, "mac", column=target.name, element=e)
        if target.kind in ("u8", "u16", "u32", "u64") and f.length <= 8:
            return FieldOp(name, "int", column=target.name, length=f.length, element=e)
    text = e in STRING_ELEMENTS
    return FieldOp(name, "extra", key=f.key, length=f.length, text=text)
