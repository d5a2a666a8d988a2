"""Hypothesis fuzz of FlowDecoder.decode: random and mutated datagrams never raise, and the
template memory stays within its bounds."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanalyze.flows.decode import FlowDecoder, Packet
from tests.flows.test_decode_templates import (
    FLOW_FIELDS,
    data_message,
    flow_set,
    ip4,
    ipfix_message,
    ipfix_options_template,
    template_message,
    template_record,
    v9_options_template,
    v9_packet,
)
from tests.flows.test_decode_v5 import as_rows, same_batches, v5_datagram, v5_record

# LANALYZE_FUZZ_EXAMPLES=5000 for a longer local run; the suite keeps each test < ~10 s.
EXAMPLES = int(os.environ.get("LANALYZE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_TEMPLATES = 8
MAX_EXPORTERS = 3
# Tight byte bounds (a few templates an exporter), a small record cap and an allow-list that
# refuses one of EXPORTER_NAMES: the walk and the bulk read must agree under them too.
TIGHT = {
    "memory_budget": 96 * 1024,
    "exporter_share": 40 * 1024,
    "max_records_per_datagram": 3,
    "exporters_allowed": ["192.0.2.0/24", "2001:db8::/32"],
}

VARIABLE_TEMPLATE = ipfix_message(
    [flow_set(2, template_record(400, [(8, 4), (82, 0xFFFF), (2, 4), (1000, 2, 9), (315, 0xFFFF)]))]
)
VARIABLE_DATA = ipfix_message(
    [flow_set(400, ip4("10.9.9.9") + b"\x04eth0" + struct.pack(">I", 5) + b"\x12\x34\x02\xab\xcd")]
)
OPTIONS = ipfix_message(
    [flow_set(3, ipfix_options_template(500, [(302, 4)], [(305, 4), (306, 4)]))]
)
OPTIONS_DATA = ipfix_message([flow_set(500, struct.pack(">III", 1, 1, 99))])
V9_TEMPLATES = v9_packet(
    [
        flow_set(1, v9_options_template(300, [(1, 4)], [(48, 1), (50, 4)]), pad=2),
        flow_set(0, template_record(256, [(8, 4), (1, 4), (22, 4), (21, 4)], ipfix=False)),
    ]
)
V9_DATA = v9_packet([flow_set(256, ip4("10.0.0.1") + struct.pack(">III", 1500, 1, 2))])
V9_OPTIONS_DATA = v9_packet([flow_set(300, struct.pack(">IBI", 0, 4, 512), pad=3)])

# Elements sharing columns (IPv4 and IPv6 source, delta and total bytes) and a frame section.
SHARED_TEMPLATE = ipfix_message(
    [flow_set(2, template_record(700, [(85, 8), (1, 8), (27, 16), (8, 4), (315, 0xFFFF)]))]
)
FRAME = bytes.fromhex("0202020202020404040404048100002a0800") + bytes.fromhex(
    "4500002100010000401100000c0000020c63360104d200350011000068656c6c6f"
)
SHARED_DATA = ipfix_message(
    [
        flow_set(
            700,
            struct.pack(">QQ", 900, 100)
            + bytes(16)
            + ip4("10.0.0.9")
            + bytes([len(FRAME)])
            + FRAME,
        )
    ]
)

SEEDS = [
    SHARED_DATA,
    v5_datagram([v5_record(i) for i in range(3)]),
    template_message(),
    data_message(3),
    VARIABLE_TEMPLATE,
    VARIABLE_DATA,
    OPTIONS,
    OPTIONS_DATA,
    V9_TEMPLATES,
    V9_DATA,
    V9_OPTIONS_DATA,
    ipfix_message([flow_set(2, template_record(256, FLOW_FIELDS) + struct.pack(">HH", 2, 0))]),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["set", "truncate", "insert", "word"]))
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if action == "set":
            data[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        else:
            # Lengths and counts are 16-bit words: push them to their extremes.
            value = draw(st.sampled_from([0, 1, 3, 4, 255, 256, 0x7FFF, 0xFFFF]))
            data[position : position + 2] = struct.pack(">H", value)
    return bytes(data)


def random_datagram() -> st.SearchStrategy[bytes]:
    header = st.sampled_from([b"\x00\x05", b"\x00\x09", b"\x00\x0a", b"\x00\x07", b""])
    return st.builds(lambda h, body: h + body, header, st.binary(max_size=300))


def check(packets: list[bytes], exporters: list[str]) -> None:
    decoder = FlowDecoder(max_templates_per_exporter=MAX_TEMPLATES, max_exporters=MAX_EXPORTERS)
    batch = decoder.decode(
        [
            Packet(data, exporter, 1_700_000_000_000)
            for data, exporter in zip(packets, exporters, strict=True)
        ]
    )
    n = batch.rows
    assert all(len(column) == n for column in batch.columns.values())
    assert batch.extra is None or len(batch.extra) == n
    batch.to_record_batch()
    assert decoder.template_count <= MAX_TEMPLATES * MAX_EXPORTERS
    assert decoder.exporter_count <= MAX_EXPORTERS
    decoder.load_templates(decoder.save_templates())
    # The collector's path (datagrams as recvmmsg rows) decodes the same flows.
    other = FlowDecoder(max_templates_per_exporter=MAX_TEMPLATES, max_exporters=MAX_EXPORTERS)
    rows, lengths, codes, names = as_rows(packets, exporters)
    same_batches(other.decode_rows(rows, lengths, codes, names, 1_700_000_000_000), batch)
    # Under tight bounds: the same on both paths, and within the bytes.
    tight = [FlowDecoder(max_exporters=MAX_EXPORTERS, **TIGHT) for _ in range(2)]  # type: ignore[arg-type]
    walked = tight[0].decode(
        [Packet(d, e, 1_700_000_000_000) for d, e in zip(packets, exporters, strict=True)]
    )
    same_batches(tight[1].decode_rows(rows, lengths, codes, names, 1_700_000_000_000), walked)
    for decoder in tight:
        assert decoder._state.used <= decoder._state.budget
        assert decoder._state.compiled.used <= decoder._state.compiled.budget
        assert decoder.state_bytes <= TIGHT["memory_budget"]  # type: ignore[operator]


EXPORTER_NAMES = st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "198.51.100.9"])


@FUZZ
@given(st.lists(st.one_of(mutated(), random_datagram()), min_size=1, max_size=12), st.data())
def test_mutated_and_random_datagrams_never_raise(
    packets: list[bytes], data: st.DataObject
) -> None:
    exporters = [data.draw(EXPORTER_NAMES) for _ in packets]
    # Valid templates first, so mutated data sets reach the record decoders.
    seeds = [template_message(), VARIABLE_TEMPLATE, OPTIONS, V9_TEMPLATES, SHARED_TEMPLATE]
    check(seeds + packets, [exporters[0]] * len(seeds) + exporters)


@FUZZ
@given(st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=40), EXPORTER_NAMES)
def test_template_floods_stay_bounded(bodies: list[bytes], exporter: str) -> None:
    # Random template sets (ids and field lists) for many template ids.
    packets = [
        ipfix_message([flow_set(2, struct.pack(">HH", 256 + i, len(body) // 4) + body)])
        for i, body in enumerate(bodies)
    ]
    packets += [template_message(1000 + i) for i in range(3 * MAX_TEMPLATES)]
    check(packets, [exporter] * len(packets))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2, 3]),  # v9 template / options, IPFIX template / options
            st.lists(
                st.tuples(
                    st.integers(0, 0xFFFF),
                    st.sampled_from([0, 1, 2, 3, 4, 8, 16, 255, 0xFFFF]),
                ),
                max_size=6,
            ),
            st.integers(0, 3),
            st.binary(max_size=80),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_templates_then_data_for_them(
    cases: list[tuple[int, list[tuple[int, int]], int, bytes]],
) -> None:
    """Structurally valid but arbitrary templates (any element, length 0, 65535, enterprise
    bits, scopes), each followed by random data for it: nothing raises or loops."""
    packets = []
    for kind, fields, scope, data in cases:
        specs = b"".join(struct.pack(">HH", element, length) for element, length in fields)
        if kind in (2, 3) and element_pairs_end_with_enterprise(fields):
            specs += b"\0\0\0\x09"  # a PEN for the last specifier, so the record is whole
        if kind == 0:
            packets.append(v9_packet([flow_set(0, struct.pack(">HH", 300, len(fields)) + specs)]))
            packets.append(v9_packet([flow_set(300, data)]))
        elif kind == 1:
            scoped = min(scope, len(fields))
            body = struct.pack(">HHH", 301, 4 * scoped, 4 * (len(fields) - scoped)) + specs
            packets.append(v9_packet([flow_set(1, body)]))
            packets.append(v9_packet([flow_set(301, data)]))
        else:
            options = kind == 3
            header = struct.pack(">HH", 302, len(fields))
            if options:
                header += struct.pack(">H", scope)
            packets.append(ipfix_message([flow_set(2 + options, header + specs)]))
            packets.append(ipfix_message([flow_set(302, data)]))
    check(packets, ["192.0.2.1"] * len(packets))


def element_pairs_end_with_enterprise(fields: list[tuple[int, int]]) -> bool:
    return bool(fields) and bool(fields[-1][0] & 0x8000)


# Bulk path of decode_rows (one data set of a known fixed-length template per datagram)
# against the exact walk of decode(): mixed batches of templates, redefinitions,
# withdrawals, option records, sequence gaps, padding, several streams and exporters.
BULK_TEMPLATES = {
    "flow": FLOW_FIELDS,
    "short": [(8, 4), (12, 4), (1, 4), (2, 4)],
    "extra": [(8, 4), (1, 8), (1000, 2), (22, 4), (21, 4)],
    "variable": [(8, 4), (82, 0xFFFF), (1, 4)],
    "sampled": [(8, 4), (1, 4), (302, 2)],
}
V9_FIELDS = [(8, 4), (1, 4), (22, 4), (21, 4)]
BULK_OPTIONS = ipfix_options_template(500, [(302, 2)], [(305, 4), (306, 4), (160, 8)])


def record_bytes(fields: list[tuple[int, int]], seed: int) -> bytes:
    out = b""
    for index, (_, length) in enumerate(fields):
        if length == 0xFFFF:
            out += b"\x03abc"
        else:
            out += bytes((seed * 31 + index * 7 + j) % 256 for j in range(length))
    return out


@st.composite
def bulk_event(draw: st.DrawFn) -> tuple[bytes, str, int]:
    """A datagram, its exporter and the data records it means to carry."""
    exporter = draw(st.sampled_from(["192.0.2.1"] * 3 + ["192.0.2.2"] * 2 + ["2001:db8::1"]))
    domain = draw(st.sampled_from([1, 2, 0]))
    sequence = draw(st.sampled_from([0, 5, 1000, 2**32 - 3, 2**31 + 7]))
    template_id = draw(st.sampled_from([256, 257]))
    shape = draw(st.sampled_from(sorted(BULK_TEMPLATES)))
    fields = BULK_TEMPLATES[shape]
    kind = draw(
        st.sampled_from(
            ["data"] * 10
            + ["mixed_sets"] * 3
            + ["template", "withdraw", "options", "two_sets", "v9", "v9t", "bad"]
        )
    )
    count = draw(st.integers(0, 4))
    pad = draw(st.sampled_from([0, 0, 1, 3]))
    body = b"".join(record_bytes(fields, draw(st.integers(0, 255))) for _ in range(count))
    if kind == "template":
        sets = [flow_set(2, template_record(template_id, fields))]
    elif kind == "withdraw":
        sets = [flow_set(2, struct.pack(">HH", template_id, 0))]
    elif kind == "options":
        sets = [flow_set(3, BULK_OPTIONS)]
        sets.append(flow_set(500, struct.pack(">HIIQ", 7, 1, draw(st.integers(1, 9)), 10**12)))
    elif kind == "two_sets":
        sets = [flow_set(template_id, body, pad=pad), flow_set(template_id, body)]
    elif kind == "mixed_sets":
        # softflowd's shape: one record per set, IPv4 and IPv6 templates interleaved.
        sets = [
            flow_set(
                256 + i % 2, record_bytes(FLOW_FIELDS if i % 2 == 0 else BULK_TEMPLATES["extra"], i)
            )
            for i in range(count + 1)
        ]
    elif kind in ("v9", "v9t"):
        if kind == "v9t":
            set_ = flow_set(0, template_record(template_id, V9_FIELDS, ipfix=False))
        else:
            records = b"".join(record_bytes(V9_FIELDS, i) for i in range(count))
            set_ = flow_set(template_id, records, pad=pad)
        return v9_packet([set_], sequence=sequence, source_id=domain), exporter, 1
    else:
        sets = [flow_set(template_id, body, pad=pad)]
    message = ipfix_message(sets, sequence=sequence, domain=domain)
    if kind == "bad":
        message = message[: draw(st.integers(0, len(message)))]
    records = {"template": 0, "withdraw": 0, "options": 1, "two_sets": 2 * count}
    return message, exporter, records.get(kind, count + 1 if kind == "mixed_sets" else count)


@st.composite
def numbered_batches(draw: st.DrawFn) -> list[list[tuple[bytes, str]]]:
    """Batches of :func:`bulk_event` datagrams whose sequence numbers mostly follow their
    stream's convention, drawn per stream (IPFIX: records before the message, RFC 7011, or
    including it, softflowd; v9: packets), with random drops (lost records or packets).
    Record counts are the walk's own (a scratch decoder's); in a *focused* example most IPFIX
    datagrams are moved to one stream, with fewer drops and no exporter evicted, so that its
    convention gets decided."""
    batches = draw(
        st.lists(st.lists(bulk_event(), min_size=1, max_size=30), min_size=1, max_size=3)
    )
    focused = draw(st.booleans())
    scratch = FlowDecoder(max_templates_per_exporter=MAX_TEMPLATES, max_exporters=2)
    scratch.decode([Packet(d, e, 1_700_000_000_000) for d, e in BULK_SEEDS])
    sent: dict[tuple[str, bytes], int] = {}
    post_increment: dict[tuple[str, bytes], bool] = {}
    out: list[list[tuple[bytes, str]]] = []
    for events in batches:
        numbered = []
        for drawn, drawn_exporter, _ in events:
            message, exporter = drawn, drawn_exporter
            if focused and exporter != "192.0.2.1":
                exporter = "192.0.2.2"  # two exporters: none evicted
            v9 = message[:2] == b"\x00\x09"
            at = 12 if v9 else 8
            if len(message) < at + 8 or (not focused and draw(st.integers(0, 9)) == 0):
                scratch.decode([Packet(message, exporter, 1_700_000_000_000)])
                numbered.append((message, exporter))  # its random sequence number
                continue
            if focused and not v9 and draw(st.integers(0, 4)):
                message, exporter = message[:12] + struct.pack(">I", 1) + message[16:], "192.0.2.1"
            scratch.decode([Packet(message, exporter, 1_700_000_000_000)])
            domain_id = int.from_bytes(message[at + 4 : at + 8], "big")
            state = scratch._state.exporters[exporter].domains.get((9 if v9 else 10, domain_id))
            stream = (exporter, message[:2] + message[at + 4 : at + 8])
            if stream not in sent:
                sent[stream] = draw(st.sampled_from([0, 1000, 2**32 - 5]))
                post_increment[stream] = draw(st.booleans())
            if draw(st.integers(0, 15 if focused else 7)) == 0:
                sent[stream] += draw(st.integers(1, 5))  # lost in transit
            unit = 1 if v9 or state is None else state.last_records or 0
            if post_increment[stream] and not v9:
                sent[stream] += unit
                sequence = sent[stream]
            else:
                sequence, sent[stream] = sent[stream], sent[stream] + unit
            number = struct.pack(">I", sequence % 2**32)
            numbered.append((message[:at] + number + message[at + 4 :], exporter))
        out.append(numbered)
    return out


# Known templates up front, so that most data datagrams can take the bulk path.
BULK_SEEDS = [
    (ipfix_message([flow_set(2, template_record(256, FLOW_FIELDS))]), "192.0.2.1"),
    (ipfix_message([flow_set(2, template_record(257, BULK_TEMPLATES["extra"]))]), "192.0.2.1"),
    (ipfix_message([flow_set(2, template_record(256, FLOW_FIELDS))], domain=2), "192.0.2.2"),
    (v9_packet([flow_set(0, template_record(256, V9_FIELDS, ipfix=False))]), "192.0.2.2"),
]


@FUZZ
@given(numbered_batches())
def test_bulk_rows_decode_as_the_walk(batches: list[list[tuple[bytes, str]]]) -> None:
    walked = FlowDecoder(max_templates_per_exporter=MAX_TEMPLATES, max_exporters=2)
    bulk = FlowDecoder(max_templates_per_exporter=MAX_TEMPLATES, max_exporters=2)
    batches[0] = BULK_SEEDS + batches[0]
    for events in batches:
        datas = [data for data, _ in events]
        exporters = [exporter for _, exporter in events]
        expected = walked.decode(
            [Packet(d, e, 1_700_000_000_000) for d, e in zip(datas, exporters, strict=True)]
        )
        rows, lengths, codes, names = as_rows(datas, exporters)
        same_batches(bulk.decode_rows(rows, lengths, codes, names, 1_700_000_000_000), expected)
    assert walked.save_templates() == bulk.save_templates()
    assert sequence_states(walked) == sequence_states(bulk)


@FUZZ
@given(numbered_batches())
def test_bulk_rows_decode_as_the_walk_under_tight_bounds(
    batches: list[list[tuple[bytes, str]]],
) -> None:
    walked = FlowDecoder(max_exporters=2, **TIGHT)  # type: ignore[arg-type]
    bulk = FlowDecoder(max_exporters=2, **TIGHT)  # type: ignore[arg-type]
    batches[0] = BULK_SEEDS + batches[0]
    for events in batches:
        datas = [data for data, _ in events]
        exporters = [exporter for _, exporter in events]
        expected = walked.decode(
            [Packet(d, e, 1_700_000_000_000) for d, e in zip(datas, exporters, strict=True)]
        )
        rows, lengths, codes, names = as_rows(datas, exporters)
        same_batches(bulk.decode_rows(rows, lengths, codes, names, 1_700_000_000_000), expected)
        assert bulk.state_bytes <= 96 * 1024
    assert walked.save_templates() == bulk.save_templates()
    assert walked.counters == bulk.counters


def sequence_states(decoder: FlowDecoder) -> list[tuple[object, ...]]:
    """Every stream's sequence tracking: conventions decided, evidence and deferred gaps."""
    return [
        (
            *(name, key, d.last_sequence, d.last_records),
            *(d.post_increment, d.evidence, d.deferred_pre, d.deferred_post),
        )
        for name, exporter in sorted(decoder._state.exporters.items())
        for key, d in sorted(exporter.domains.items())
    ]


def test_bulk_rows_sequences_and_streams() -> None:
    """Many data-only datagrams of two streams after their templates: bulk, gaps counted."""
    datas = [
        template_message(),
        ipfix_message([flow_set(2, template_record(256, FLOW_FIELDS))], domain=2),
    ]
    datas += [data_message(3, sequence=3 * n + (n > 20)) for n in range(40)]
    datas += [
        ipfix_message([flow_set(256, record_bytes(FLOW_FIELDS, n) * 2)], sequence=2 * n, domain=2)
        for n in range(30)
    ]
    exporters = ["192.0.2.1"] * len(datas)
    walked, bulk = FlowDecoder(), FlowDecoder()
    expected = walked.decode(
        [Packet(d, e, 1_700_000_000_000) for d, e in zip(datas, exporters, strict=True)]
    )
    rows, lengths, codes, names = as_rows(datas, exporters)
    got = bulk.decode_rows(rows, lengths, codes, names, 1_700_000_000_000)
    same_batches(got, expected)
    assert got.rows == 180
    assert sum(s.sequence_gaps for s in got.stats) == 1


def test_bulk_rows_walk_datagrams_of_many_sets() -> None:
    """More sets than the numpy set walk takes (and one short set): the walk, same counts."""
    many = ipfix_message(
        [flow_set(256, record_bytes(FLOW_FIELDS, i)) for i in range(70)], sequence=0
    )
    short = ipfix_message([flow_set(256, record_bytes(FLOW_FIELDS, 1)), flow_set(256, b"\0")])
    datas = [template_message(), many, data_message(2, sequence=70), short, many]
    exporters = ["192.0.2.1"] * len(datas)
    walked, bulk = FlowDecoder(), FlowDecoder()
    expected = walked.decode(
        [Packet(d, e, 1_700_000_000_000) for d, e in zip(datas, exporters, strict=True)]
    )
    rows, lengths, codes, names = as_rows(datas, exporters)
    got = bulk.decode_rows(rows, lengths, codes, names, 1_700_000_000_000)
    same_batches(got, expected)
    assert got.rows == 70 + 2 + 1 + 70
