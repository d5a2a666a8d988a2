"""NetFlow v9 (RFC 3954): the packet header and (options) template flowsets.

Header (§5.1): version 9, count, sysUpTime (ms), unix_secs, package sequence (one per export
packet), source id. Template flowset id 0 (§5.2), options template flowset id 1 (§6.1: scope
fields first, whose type numbers are scope types, not field types), data flowsets id >= 256.
The header's ``count`` (records, templates included) is known to be wrong on some exporters and
is not trusted: the flowset lengths are. Everything here is the peer's input; any length that
does not add up raises :class:`PeerDataError`.

Data records are decoded by the code shared with IPFIX (:mod:`.templated`, :mod:`.records`).
"""

from __future__ import annotations

import struct

from lanalyze.flows.decode.errors import PeerDataError
from lanalyze.flows.decode.templates import Field, Template

VERSION = 9
HEADER = struct.Struct(">HHIIII")
TEMPLATE_SET = 0
OPTIONS_TEMPLATE_SET = 1

TemplateEvent = tuple[str, int, Template | None]
"""("add", id, template) | ("withdraw", id, None) | ("withdraw_all", options, None)."""


def parse_template_set(data: bytes, start: int, end: int) -> list[TemplateEvent]:
    events: list[TemplateEvent] = []
    pos = start
    while end - pos >= 4:
        template_id, count = struct.unpack_from(">HH", data, pos)
        pos += 4
        if template_id < 256:
            raise PeerDataError(f"v9 template id {template_id} is reserved (< 256)")
        if count == 0:
            raise PeerDataError(f"v9 template {template_id} has no fields")
        if pos + 4 * count > end:
            raise PeerDataError(f"v9 template {template_id}: {count} fields overrun the flowset")
        fields = tuple(Field(*struct.unpack_from(">HH", data, pos + 4 * i)) for i in range(count))
        _fixed_lengths_only(template_id, fields)
        pos += 4 * count
        events.append(("add", template_id, Template(template_id, fields, options=False)))
    return events


def parse_options_template_set(data: bytes, start: int, end: int) -> list[TemplateEvent]:
    events: list[TemplateEvent] = []
    pos = start
    while end - pos >= 10:
        template_id, scope_length, option_length = struct.unpack_from(">HHH", data, pos)
        pos += 6
        if template_id < 256:
            raise PeerDataError(f"v9 options template id {template_id} is reserved (< 256)")
        if scope_length % 4 or option_length % 4 or scope_length + option_length == 0:
            raise PeerDataError(
                f"v9 options template {template_id}: scope length {scope_length} / option "
                f"length {option_length} are not whole fields"
            )
        if pos + scope_length + option_length > end:
            raise PeerDataError(f"v9 options template {template_id} overruns the flowset")
        fields: list[Field] = []
        for i in range((scope_length + option_length) // 4):
            element, length = struct.unpack_from(">HH", data, pos + 4 * i)
            fields.append(Field(element, length, 0, scope=4 * i < scope_length))
        pos += scope_length + option_length
        _fixed_lengths_only(template_id, fields)
        events.append(("add", template_id, Template(template_id, tuple(fields), options=True)))
    return events


def _fixed_lengths_only(template_id: int, fields: tuple[Field, ...] | list[Field]) -> None:
    # NetFlow v9 has no variable-length fields: 65535 here is an absurd length, not IPFIX's
    # variable-length marker.
    for f in fields:
        if f.length == 0xFFFF:
            raise PeerDataError(f"v9 template {template_id}: field {f.element} of length 65535")
