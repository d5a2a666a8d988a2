"""IPFIX (RFC 7011): the message header and (options) template sets.

Header (§3.1): version 10, message length, export time (s), sequence number (data records sent
before this message, per observation domain), observation domain id. Template set id 2 (§3.4.1),
options template set id 3 (§3.4.2.2: scope fields are ordinary information elements), data sets
id >= 256. Field specifiers with the enterprise bit carry a private enterprise number (§3.2);
length 65535 marks a variable-length field (§7). A template (or options template) record with
field count 0 withdraws that template; id 2 (resp. 3) withdraws all of them (§8.1).
Everything here is the peer's input; lengths that do not add up raise :class:`PeerDataError`.
"""

from __future__ import annotations

import struct

from lanalyze.flows.decode.errors import PeerDataError
from lanalyze.flows.decode.templates import Field
from lanalyze.flows.decode.v9 import TemplateEvent

VERSION = 10
HEADER = struct.Struct(">HHIII")
TEMPLATE_SET = 2
OPTIONS_TEMPLATE_SET = 3


def parse_template_set(data: bytes, start: int, end: int, options: bool) -> list[TemplateEvent]:
    events: list[TemplateEvent] = []
    pos = start
    all_id = OPTIONS_TEMPLATE_SET if options else TEMPLATE_SET
    while end - pos >= 4:
        template_id, count = struct.unpack_from(">HH", data, pos)
        record = pos
        pos += 4
        if count == 0:
            if template_id == all_id:
                events.append(("withdraw_all", int(options), None))
            elif template_id >= 256:
                events.append(("withdraw", template_id, None))
            else:
                raise PeerDataError(f"IPFIX withdrawal of reserved template id {template_id}")
            continue
        if template_id < 256:
            raise PeerDataError(f"IPFIX template id {template_id} is reserved (< 256)")
        if options:
            if pos + 2 > end:
                raise PeerDataError(f"IPFIX options template {template_id} is truncated")
            (scope,) = struct.unpack_from(">H", data, pos)
            pos += 2
            if scope == 0 or scope > count:
                raise PeerDataError(
                    f"IPFIX options template {template_id}: scope field count {scope} "
                    f"of {count} fields"
                )
        for _ in range(count):
            # Only the lengths of the field specifiers here (enterprise bit: 8 bytes, else 4);
            # their contents are read if the template turns out to be new.
            if pos + 4 > end:
                raise PeerDataError(f"IPFIX template {template_id}: fields overrun the set")
            pos += 8 if data[pos] & 0x80 else 4
        if pos > end:
            raise PeerDataError(f"IPFIX template {template_id}: fields overrun the set")
        events.append(("add", template_id, data[record:pos]))
    return events


def template_fields(wire: bytes, options: bool) -> tuple[Field, ...]:
    """The fields of a template record returned by :func:`parse_template_set`."""
    fields: list[Field] = []
    pos = 6 if options else 4
    while pos < len(wire):
        element, length = struct.unpack_from(">HH", wire, pos)
        pos += 4
        enterprise = 0
        if element & 0x8000:
            (enterprise,) = struct.unpack_from(">I", wire, pos)
            pos += 4
            element &= 0x7FFF
        fields.append(Field(element, length, enterprise))
    return tuple(fields)
