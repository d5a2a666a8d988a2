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
from lanalyze.flows.decode.templates import Field

VERSION = 9
HEADER = struct.Struct(">HHIIII")
TEMPLATE_SET = 0
OPTIONS_TEMPLATE_SET = 1

TemplateEvent = tuple[str, int, bytes | None]
"""("add", id, wire) | ("withdraw", id, None) | ("withdraw_all", options, None). ``wire`` is
the template record as sent: the caller compiles it only when it differs from the current one
(refreshes are frequent and usually identical), with :func:`template_fields`."""


def parse_template_set(data: bytes, start: int, end: int) -> list[TemplateEvent]:
    events: list[TemplateEvent] = []
    pos = start
    while end - pos >= 4:
        template_id, count = struct.unpack_from(">HH", data, pos)
        if template_id < 256:
            raise PeerDataError(f"v9 template id {template_id} is reserved (< 256)")
        if count == 0:
            raise PeerDataError(f"v9 template {template_id} has no fields")
        if pos + 4 + 4 * count > end:
            raise PeerDataError(f"v9 template {template_id}: {count} fields overrun the flowset")
        events.append(("add", template_id, data[pos : pos + 4 + 4 * count]))
        pos += 4 + 4 * count
    return events


def parse_options_template_set(data: bytes, start: int, end: int) -> list[TemplateEvent]:
    events: list[TemplateEvent] = []
    pos = start
    while end - pos >= 10:
        template_id, scope_length, option_length = struct.unpack_from(">HHH", data, pos)
        if template_id < 256:
            raise PeerDataError(f"v9 options template id {template_id} is reserved (< 256)")
        if scope_length % 4 or option_length % 4 or scope_length + option_length == 0:
            raise PeerDataError(
                f"v9 options template {template_id}: scope length {scope_length} / option "
                f"length {option_length} are not whole fields"
            )
        stop = pos + 6 + scope_length + option_length
        if stop > end:
            raise PeerDataError(f"v9 options template {template_id} overruns the flowset")
        events.append(("add", template_id, data[pos:stop]))
        pos = stop
    return events


def template_fields(wire: bytes, options: bool) -> tuple[Field, ...]:
    """The fields of a template record returned by the parsers above."""
    if options:
        scope_length = struct.unpack_from(">H", wire, 2)[0]
        pairs = [struct.unpack_from(">HH", wire, 6 + i) for i in range(0, len(wire) - 6, 4)]
        fields = tuple(
            Field(element, length, 0, 4 * i < scope_length)
            for i, (element, length) in enumerate(pairs)
        )
    else:
        fields = tuple(Field(*struct.unpack_from(">HH", wire, i)) for i in range(4, len(wire), 4))
    _fixed_lengths_only(struct.unpack_from(">H", wire)[0], fields)
    return fields


def _fixed_lengths_only(template_id: int, fields: tuple[Field, ...] | list[Field]) -> None:
    # NetFlow v9 has no variable-length fields: 65535 here is an absurd length, not IPFIX's
    # variable-length marker.
    for f in fields:
        if f.length == 0xFFFF:
            raise PeerDataError(f"v9 template {template_id}: field {f.element} of length 65535")
