"""NetFlow v9 and IPFIX: hand-built packets for templates, options, sampling and bad input.

The builders here are also used by the fuzz tests (test_decode_fuzz.py) as seeds.
"""

from __future__ import annotations

import ipaddress
import json
import struct

import numpy as np
import pytest

from lanalyze.flows.decode import FlowDecoder, Packet

EXPORT_SECS = 1_700_000_000
UPTIME_MS = 3_600_000
EXPORTER = "2001:db8::7"

FieldSpec = tuple[int, int] | tuple[int, int, int]


def fields_bytes(fields: list[FieldSpec], ipfix: bool = True) -> bytes:
    out = b""
    for spec in fields:
        element, length = spec[0], spec[1]
        enterprise = spec[2] if len(spec) == 3 else 0
        if enterprise and ipfix:
            out += struct.pack(">HHI", element | 0x8000, length, enterprise)
        else:
            out += struct.pack(">HH", element, length)
    return out


def template_record(template_id: int, fields: list[FieldSpec], ipfix: bool = True) -> bytes:
    return struct.pack(">HH", template_id, len(fields)) + fields_bytes(fields, ipfix)


def ipfix_options_template(
    template_id: int, scope: list[FieldSpec], fields: list[FieldSpec]
) -> bytes:
    return struct.pack(">HHH", template_id, len(scope) + len(fields), len(scope)) + fields_bytes(
        scope + fields
    )


def v9_options_template(template_id: int, scope: list[FieldSpec], fields: list[FieldSpec]) -> bytes:
    return struct.pack(">HHH", template_id, 4 * len(scope), 4 * len(fields)) + fields_bytes(
        scope + fields, ipfix=False
    )


def flow_set(set_id: int, body: bytes, pad: int = 0) -> bytes:
    body += b"\0" * pad
    return struct.pack(">HH", set_id, len(body) + 4) + body


def ipfix_message(sets: list[bytes], *, sequence: int = 0, domain: int = 1) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body), EXPORT_SECS, sequence, domain) + body


def v9_packet(sets: list[bytes], *, sequence: int = 0, source_id: int = 0) -> bytes:
    return struct.pack(
        ">HHIIII", 9, len(sets), UPTIME_MS, EXPORT_SECS, sequence, source_id
    ) + b"".join(sets)


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def mapped(text: str) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + ip4(text)


def addresses(column: np.ndarray) -> list[bytes]:
    """16-byte addresses as bytes (``tolist()`` of an S16 array drops trailing zero bytes)."""
    return [row.tobytes() for row in np.ascontiguousarray(column).view(np.uint8).reshape(-1, 16)]


def packet(data: bytes, exporter: str = EXPORTER) -> Packet:
    return Packet(data, exporter, 1_700_000_010_000)


# A softflowd-like IPFIX template: addresses, ports, protocol, counters, ms times.
FLOW_FIELDS: list[FieldSpec] = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (5, 1),
    (2, 8),
    (1, 8),
    (152, 8),
    (153, 8),
    (10, 4),
    (14, 4),
    (210, 3),  # paddingOctets
]


def flow_record(index: int, start_ms: int = EXPORT_SECS * 1000 - 9000) -> bytes:
    return (
        ip4("10.1.0.1")[:3]
        + bytes([index % 256])
        + ip4("192.0.2.99")
        + struct.pack(">HHBBBQQ", 5000 + index, 53, 17, 0, 0xB8, 2, 120 + index)
        + struct.pack(">QQII", start_ms, start_ms + 500, 7, 8)
        + b"\0\0\0"
    )


def template_message(template_id: int = 256, fields: list[FieldSpec] = FLOW_FIELDS) -> bytes:
    return ipfix_message([flow_set(2, template_record(template_id, fields))])


def data_message(count: int, template_id: int = 256, sequence: int = 0) -> bytes:
    body = b"".join(flow_record(i) for i in range(count))
    return ipfix_message([flow_set(template_id, body)], sequence=sequence)


def test_ipfix_template_then_data_with_padding() -> None:
    decoder = FlowDecoder()
    # The data set ends with 2 bytes of set padding (shorter than a record, RFC 7011 §3.3.1).
    body = b"".join(flow_record(i) for i in range(3))
    data = ipfix_message([flow_set(256, body, pad=2)])
    batch = decoder.decode([packet(template_message()), packet(data)])
    assert batch.rows == 3
    c = batch.columns
    assert c["src_addr"][2] == mapped("10.1.0.2")
    assert c["dst_addr"][0] == mapped("192.0.2.99")
    assert c["src_port"].tolist() == [5000, 5001, 5002]
    assert c["dst_port"][0] == 53 and c["protocol"][0] == 17 and c["tos"][0] == 0xB8
    assert c["packets"][1] == 2 and c["bytes"][1] == 121
    assert int(c["time_start"][0]) == EXPORT_SECS * 1000 - 9000
    assert int(c["time_end"][0]) == EXPORT_SECS * 1000 - 8500
    assert c["in_if"][0] == 7 and c["out_if"][0] == 8
    assert c["ip_version"][0] == 4
    assert c["exporter"][0] == ipaddress.IPv6Address(EXPORTER).packed
    assert c["observation_domain"][0] == 1
    assert batch.extra is None  # padding is not kept
    assert sum(s.decode_errors for s in batch.stats) == 0


def test_template_and_data_in_one_message_and_refresh() -> None:
    decoder = FlowDecoder()
    one = ipfix_message(
        [flow_set(2, template_record(300, FLOW_FIELDS)), flow_set(300, flow_record(1))]
    )
    assert decoder.decode([packet(one)]).rows == 1
    assert decoder.template_count == 1
    assert decoder.decode([packet(one)]).rows == 1  # refresh keeps one template
    assert decoder.template_count == 1


def test_data_before_template_is_counted_and_dropped() -> None:
    decoder = FlowDecoder()
    batch = decoder.decode([packet(data_message(2))])
    assert batch.rows == 0
    assert batch.stats[0].unknown_template_records == 1
    assert "before its template" in batch.problems[0].reason
    batch = decoder.decode([packet(template_message()), packet(data_message(2))])
    assert batch.rows == 2


def test_ipfix_withdrawal_and_all_withdrawal() -> None:
    decoder = FlowDecoder()
    decoder.decode([packet(template_message(256)), packet(template_message(257))])
    assert decoder.template_count == 2
    withdraw = ipfix_message([flow_set(2, struct.pack(">HH", 256, 0))])
    batch = decoder.decode([packet(withdraw), packet(data_message(1, 256))])
    assert batch.rows == 0 and batch.stats[0].unknown_template_records == 1
    assert decoder.decode([packet(data_message(1, 257))]).rows == 1
    withdraw_all = ipfix_message([flow_set(2, struct.pack(">HH", 2, 0))])
    decoder.decode([packet(withdraw_all)])
    assert decoder.template_count == 0
    assert decoder.decode([packet(data_message(1, 257))]).rows == 0


def test_redefinition_applies_to_later_data_only() -> None:
    decoder = FlowDecoder()
    short_fields: list[FieldSpec] = [(8, 4), (2, 4)]
    redefine = ipfix_message([flow_set(2, template_record(256, short_fields))])
    short_data = ipfix_message([flow_set(256, ip4("203.0.113.5") + struct.pack(">I", 77))])
    batch = decoder.decode(
        [packet(template_message()), packet(data_message(2)), packet(redefine), packet(short_data)]
    )
    assert batch.rows == 3
    src = addresses(batch.columns["src_addr"])
    assert mapped("203.0.113.5") in src and mapped("10.1.0.0") in src
    assert 77 in batch.columns["packets"].tolist()


def test_variable_length_and_enterprise_fields_go_to_extra() -> None:
    decoder = FlowDecoder()
    fields: list[FieldSpec] = [(8, 4), (82, 0xFFFF), (2, 4), (1000, 2, 9), (315, 0xFFFF)]
    template = ipfix_message([flow_set(2, template_record(400, fields))])
    long_frame = bytes(range(256)) + bytes(44)  # 300 bytes: the 3-byte length form
    record1 = ip4("10.9.9.9") + b"\x04eth0" + struct.pack(">I", 5) + b"\x12\x34" + b"\x02\xab\xcd"
    record2 = (
        ip4("10.9.9.10")
        + b"\x00"
        + struct.pack(">I", 6)
        + b"\x00\x01"
        + b"\xff"
        + struct.pack(">H", len(long_frame))
        + long_frame
    )
    data = ipfix_message([flow_set(400, record1 + record2)])
    batch = decoder.decode([packet(template), packet(data)])
    assert batch.rows == 2
    assert batch.columns["packets"].tolist() == [5, 6]
    assert batch.columns["src_addr"][1] == mapped("10.9.9.10")
    assert batch.extra is not None
    first = json.loads(batch.extra[0] or "{}")
    second = json.loads(batch.extra[1] or "{}")
    assert first == {"9:1000": "1234", "0:82": "eth0", "0:315": "abcd"}
    assert second["0:82"] == "" and second["9:1000"] == "0001"
    assert second["0:315"] == long_frame.hex()


def test_variable_length_overrun_drops_the_set() -> None:
    decoder = FlowDecoder()
    fields: list[FieldSpec] = [(8, 4), (82, 0xFFFF)]
    template = ipfix_message([flow_set(2, template_record(401, fields))])
    data = ipfix_message([flow_set(401, ip4("10.0.0.1") + b"\x30abc")])
    batch = decoder.decode([packet(template), packet(data)])
    assert batch.rows == 0
    assert batch.stats[0].decode_errors == 1


def test_ipfix_sequence_gaps_count_data_records() -> None:
    decoder = FlowDecoder()
    batch = decoder.decode(
        [
            packet(template_message()),
            packet(data_message(3, sequence=0)),
            packet(data_message(2, sequence=3)),
            packet(data_message(1, sequence=9)),  # 4 records lost
        ]
    )
    (stats,) = batch.stats
    assert stats.sequence_gaps == 4
    assert stats.flows == 6 and stats.packets == 4 and stats.last_sequence == 9


def test_v9_uptime_times_sequence_and_icmp_typecode() -> None:
    decoder = FlowDecoder()
    fields: list[FieldSpec] = [(27, 16), (28, 16), (4, 1), (32, 2), (22, 4), (21, 4), (1, 4)]
    template = v9_packet([flow_set(0, template_record(260, fields, ipfix=False))], sequence=1)
    src = ipaddress.IPv6Address("2001:db8::1").packed
    dst = ipaddress.IPv6Address("2001:db8::2").packed
    record = (
        src + dst + struct.pack(">BHIII", 58, (128 << 8) | 0, UPTIME_MS - 4000, UPTIME_MS - 10, 64)
    )
    data = v9_packet([flow_set(260, record + record, pad=2)], sequence=2, source_id=5)
    gap = v9_packet([flow_set(260, record)], sequence=9, source_id=5)
    batch = decoder.decode([packet(template), packet(data, "192.0.2.1"), packet(gap, "192.0.2.1")])
    # The template came from another exporter: only the last datagrams' exporter matters.
    assert batch.rows == 0
    template = v9_packet(
        [flow_set(0, template_record(260, fields, ipfix=False))], sequence=1, source_id=5
    )
    batch = decoder.decode([packet(template), packet(data), packet(gap)])
    assert batch.rows == 3
    c = batch.columns
    assert c["src_addr"][0] == src and c["ip_version"][0] == 6
    assert (c["icmp_type"][0], c["icmp_code"][0]) == (128, 0)
    export_ms = EXPORT_SECS * 1000
    assert int(c["time_start"][0]) == export_ms - 4000
    assert int(c["time_end"][0]) == export_ms - 10
    stats = {s.observation_domain: s for s in batch.stats}
    assert stats[5].sequence_gaps == 6  # v9 counts export packets: 3..8 lost
    assert stats[5].flows == 3


def test_ipfix_times_seconds_nanoseconds_and_system_init() -> None:
    decoder = FlowDecoder()
    ntp = (EXPORT_SECS + 2208988800) << 32 | (1 << 31)  # + 0.5 s
    fields: list[FieldSpec] = [(8, 4), (150, 4), (157, 8)]
    relative: list[FieldSpec] = [(8, 4), (160, 8), (22, 4), (21, 4)]
    template = ipfix_message(
        [flow_set(2, template_record(256, fields) + template_record(257, relative))]
    )
    data = ipfix_message(
        [
            flow_set(256, ip4("10.0.0.1") + struct.pack(">IQ", EXPORT_SECS - 60, ntp)),
            flow_set(
                257,
                ip4("10.0.0.2") + struct.pack(">QII", EXPORT_SECS * 1000 - 3_600_000, 1000, 2000),
            ),
        ]
    )
    batch = decoder.decode([packet(template), packet(data)])
    by_src = {a: i for i, a in enumerate(addresses(batch.columns["src_addr"]))}
    i = by_src[mapped("10.0.0.1")]
    assert int(batch.columns["time_start"][i]) == (EXPORT_SECS - 60) * 1000
    assert int(batch.columns["time_end"][i]) == EXPORT_SECS * 1000 + 500
    j = by_src[mapped("10.0.0.2")]
    init = EXPORT_SECS * 1000 - 3_600_000
    assert int(batch.columns["time_start"][j]) == init + 1000
    assert int(batch.columns["time_end"][j]) == init + 2000


def test_options_sampling_with_several_samplers_ipfix() -> None:
    decoder = FlowDecoder()
    options = ipfix_options_template(500, [(302, 4)], [(305, 4), (306, 4)])
    templates = ipfix_message(
        [
            flow_set(3, options),
            flow_set(2, template_record(256, [(8, 4), (302, 4), (2, 4)])),
        ]
    )
    announce = ipfix_message(
        [flow_set(500, struct.pack(">III", 1, 1, 99) + struct.pack(">III", 2, 1, 9))]
    )
    data = ipfix_message(
        [
            flow_set(
                256,
                ip4("10.0.0.1")
                + struct.pack(">II", 1, 5)
                + ip4("10.0.0.2")
                + struct.pack(">II", 2, 5)
                + ip4("10.0.0.3")
                + struct.pack(">II", 3, 5),
            )
        ]
    )
    batch = decoder.decode([packet(templates), packet(announce), packet(data)])
    assert batch.rows == 3
    assert batch.columns["sampler_id"].tolist() == [1, 2, 3]
    assert batch.columns["sampling_rate"].tolist() == [100, 10, 1]  # sampler 3 is unknown
    assert batch.columns["packets"].tolist() == [5, 5, 5]


def test_options_sampling_v9_single_sampler_without_id_in_data() -> None:
    decoder = FlowDecoder(sampling_rates={EXPORTER: 7})
    options = v9_options_template(300, [(1, 4)], [(48, 1), (50, 4)])
    templates = v9_packet(
        [flow_set(1, options, pad=2), flow_set(0, template_record(256, [(8, 4), (1, 4)], False))]
    )
    data = v9_packet([flow_set(256, ip4("10.0.0.1") + struct.pack(">I", 1500))])
    assert decoder.decode([packet(templates), packet(data)]).columns["sampling_rate"][0] == 7
    announce = v9_packet([flow_set(300, struct.pack(">IBI", 0, 4, 512), pad=3)])
    batch = decoder.decode([packet(announce), packet(data)])
    assert batch.columns["sampling_rate"].tolist() == [512]


def test_template_flood_is_bounded() -> None:
    decoder = FlowDecoder(max_templates_per_exporter=16, max_exporters=4)
    messages = [
        ipfix_message(
            [
                flow_set(
                    2, b"".join(template_record(256 + i * 10 + k, FLOW_FIELDS) for k in range(10))
                )
            ]
        )
        for i in range(20)
    ]
    batch = decoder.decode([packet(m) for m in messages])
    assert decoder.template_count == 16
    assert sum(s.decode_errors for s in batch.stats) > 0
    for n in range(10):
        decoder.decode([packet(template_message(), exporter=f"192.0.2.{n}")])
    assert decoder.exporter_count == 4
    assert decoder.template_count <= 4 * 16


@pytest.mark.parametrize(
    ("description", "data"),
    [
        ("absurd zero-length field", ipfix_message([flow_set(2, template_record(256, [(8, 0)]))])),
        ("reserved template id", ipfix_message([flow_set(2, template_record(12, [(8, 4)]))])),
        ("set overruns message", ipfix_message([flow_set(2, template_record(256, [(8, 4)]))])[:-2]),
        ("message length lies", struct.pack(">HHIII", 10, 500, 0, 0, 0) + b"\0" * 20),
        ("set length zero", ipfix_message([struct.pack(">HH", 256, 0) + b"\0" * 8])),
        ("fields overrun", ipfix_message([flow_set(2, struct.pack(">HH", 256, 50) + b"\0" * 8)])),
        ("v9 truncated header", v9_packet([])[:12]),
        (
            "v9 options template of empty scope fields only",
            v9_packet([flow_set(1, v9_options_template(300, [(1, 0)], []), pad=2)]),
        ),
        (
            "v9 absurd field length",
            v9_packet([flow_set(0, template_record(256, [(8, 0xFFFF)], ipfix=False))]),
        ),
        (
            "options scope count zero",
            ipfix_message([flow_set(3, struct.pack(">HHHHH", 256, 1, 0, 8, 4))]),
        ),
    ],
)
def test_bad_packets_are_counted_not_raised(description: str, data: bytes) -> None:
    decoder = FlowDecoder()
    batch = decoder.decode([packet(data)])
    assert batch.rows == 0, description
    assert sum(s.decode_errors for s in batch.stats) >= 1, description
    assert batch.problems and batch.problems[0].exporter == EXPORTER
    assert decoder.template_count == 0


def test_save_and_load_templates() -> None:
    decoder = FlowDecoder()
    options = ipfix_options_template(500, [(302, 4)], [(34, 4)])
    decoder.decode(
        [
            packet(template_message()),
            packet(ipfix_message([flow_set(3, options)])),
            packet(ipfix_message([flow_set(500, struct.pack(">II", 1, 64))])),
        ]
    )
    state = decoder.save_templates()
    decoder.decode([packet(template_message(), exporter="192.0.2.50"), packet(data_message(1))])
    again = decoder.save_templates()
    decoder.decode([packet(data_message(1), exporter="192.0.2.50"), packet(data_message(1))])
    assert decoder.save_templates() == again  # deterministic: unchanged state, same bytes
    restarted = FlowDecoder()
    restarted.load_templates(state)
    assert restarted.template_count == 2
    batch = restarted.decode([packet(data_message(2))])
    assert batch.rows == 2
    assert batch.columns["sampling_rate"].tolist() == [64, 64]  # the only sampler's rate
    with pytest.raises(ValueError, match="template state"):
        restarted.load_templates(b'{"version": 99}')
    with pytest.raises(ValueError):
        restarted.load_templates(b"not json")


def test_ipfix_uptime_times_against_system_init_from_options() -> None:
    # softflowd's way: systemInitTimeMilliseconds in an option record, 21/22 in the data. The
    # init time may be a fraction of a second *after* the export time (seconds resolution).
    decoder = FlowDecoder()
    init = EXPORT_SECS * 1000 + 400
    messages = [
        ipfix_message(
            [
                flow_set(3, ipfix_options_template(600, [(143, 4)], [(160, 8)])),
                flow_set(2, template_record(256, [(8, 4), (22, 4), (21, 4)])),
                flow_set(600, struct.pack(">IQ", 1, init)),
                flow_set(256, ip4("10.0.0.1") + struct.pack(">II", 100, 250)),
            ]
        )
    ]
    batch = decoder.decode([packet(m) for m in messages])
    assert int(batch.columns["time_start"][0]) == init + 100
    assert int(batch.columns["time_end"][0]) == init + 250


def test_preferred_element_wins_whatever_the_template_order() -> None:
    # octetTotalCount (85) before octetDeltaCount (1): the delta is the flow's bytes; the
    # total only fills records whose delta is zero. IPv4 and IPv6 sources share src_addr.
    decoder = FlowDecoder()
    fields: list[FieldSpec] = [(85, 8), (1, 8), (27, 16), (8, 4)]
    v6 = ipaddress.IPv6Address("2001:db8::5").packed
    records = (
        struct.pack(">QQ", 9000, 100)
        + v6
        + bytes(4)
        + struct.pack(">QQ", 9000, 0)
        + bytes(16)
        + ip4("10.0.0.9")
    )
    batch = decoder.decode(
        [
            packet(ipfix_message([flow_set(2, template_record(256, fields))])),
            packet(ipfix_message([flow_set(256, records)])),
        ]
    )
    assert batch.columns["bytes"].tolist() == [100, 9000]
    assert addresses(batch.columns["src_addr"]) == [v6, mapped("10.0.0.9")]
    assert batch.columns["ip_version"].tolist() == [6, 4]
