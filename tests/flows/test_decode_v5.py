"""NetFlow v5: hand-built datagrams through FlowDecoder (values, sampling, sequence, bad input)."""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pyarrow as pa

from lanalyze.flows import catalogue
from lanalyze.flows.decode import DecodedBatch, FlowDecoder, Packet

UNIX_SECS = 1_700_000_000
UPTIME = 100_000


def v5_record(index: int, **overrides: int) -> bytes:
    values = {
        "src": int(ipaddress.IPv4Address("10.0.0.1")) + index,
        "dst": int(ipaddress.IPv4Address("192.0.2.1")),
        "next_hop": int(ipaddress.IPv4Address("198.51.100.1")),
        "input": 3,
        "output": 4,
        "packets": 10 + index,
        "bytes": 1000 + index,
        "first": UPTIME - 5000,
        "last": UPTIME - 1000,
        "src_port": 1024 + index,
        "dst_port": 443,
        "tcp_flags": 0x1B,
        "protocol": 6,
        "tos": 0x28,
        "src_as": 64500,
        "dst_as": 64501,
        "src_mask": 24,
        "dst_mask": 16,
    }
    values.update(overrides)
    return struct.pack(
        ">IIIHHIIIIHHBBBBHHBBH",
        values["src"],
        values["dst"],
        values["next_hop"],
        values["input"],
        values["output"],
        values["packets"],
        values["bytes"],
        values["first"],
        values["last"],
        values["src_port"],
        values["dst_port"],
        0,
        values["tcp_flags"],
        values["protocol"],
        values["tos"],
        values["src_as"],
        values["dst_as"],
        values["src_mask"],
        values["dst_mask"],
        0,
    )


def v5_datagram(
    records: list[bytes],
    *,
    sequence: int = 0,
    sampling: int = 0,
    engine: tuple[int, int] = (0, 0),
    count: int | None = None,
    nsecs: int = 250_000_000,
) -> bytes:
    header = struct.pack(
        ">HHIIIIBBH",
        5,
        len(records) if count is None else count,
        UPTIME,
        UNIX_SECS,
        nsecs,
        sequence,
        engine[0],
        engine[1],
        sampling,
    )
    return header + b"".join(records)


def packet(data: bytes, exporter: str = "192.0.2.10") -> Packet:
    return Packet(data, exporter, 1_700_000_001_000)


def mapped(text: str) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(text).packed


def test_v5_values_and_times() -> None:
    decoder = FlowDecoder()
    batch = decoder.decode([packet(v5_datagram([v5_record(i) for i in range(30)], sequence=7))])
    assert batch.rows == 30
    c = batch.columns
    assert c["src_addr"][0] == mapped("10.0.0.1")
    assert c["src_addr"][29] == mapped("10.0.0.30")
    assert c["dst_addr"][0] == mapped("192.0.2.1")
    assert c["next_hop"][0] == mapped("198.51.100.1")
    assert c["exporter"][0] == mapped("192.0.2.10")
    export_ms = UNIX_SECS * 1000 + 250
    assert int(c["time_start"][0]) == export_ms - 5000
    assert int(c["time_end"][0]) == export_ms - 1000
    assert int(c["time_received"][0]) == 1_700_000_001_000
    assert c["packets"].tolist() == [10 + i for i in range(30)]
    assert c["bytes"][3] == 1003
    assert c["src_port"][3] == 1027 and c["dst_port"][3] == 443
    assert c["protocol"][0] == 6 and c["tos"][0] == 0x28 and c["tcp_flags"][0] == 0x1B
    assert c["in_if"][0] == 3 and c["out_if"][0] == 4
    assert c["src_as"][0] == 64500 and c["dst_as"][0] == 64501
    assert c["src_mask"][0] == 24 and c["dst_mask"][0] == 16
    assert c["ip_version"][0] == 4
    assert c["sampling_rate"][0] == 1 and c["flows"][0] == 1
    assert batch.extra is None
    (stats,) = batch.stats
    assert (stats.version, stats.packets, stats.flows, stats.last_sequence) == (5, 1, 30, 7)
    record_batch = batch.to_record_batch()
    assert isinstance(record_batch, pa.RecordBatch)
    assert record_batch.schema == catalogue.batch_schema()


def test_v5_sampling_header_and_configured_rate() -> None:
    decoder = FlowDecoder(sampling_rates={"192.0.2.11": 50, "192.0.2.10": 7})
    sampled = v5_datagram([v5_record(0)], sampling=(1 << 14) | 100)
    unsampled = v5_datagram([v5_record(0)])
    batch = decoder.decode(
        [
            packet(sampled),  # the header's rate wins over the configured one
            packet(unsampled, exporter="192.0.2.12"),
            packet(unsampled, exporter="::ffff:192.0.2.11"),  # seen on a dual-stack socket
        ]
    )
    assert sorted(batch.columns["sampling_rate"].tolist()) == [1, 50, 100]
    # Counters stay raw: reports scale them.
    assert batch.columns["packets"].tolist() == [10, 10, 10]


def test_v5_sequence_gaps_count_flows_in_arrival_order() -> None:
    decoder = FlowDecoder()
    two = [v5_record(0), v5_record(1)]
    one = [v5_record(0)]
    # Different lengths on purpose: grouped by length internally, accounted in arrival order.
    batch = decoder.decode(
        [
            packet(v5_datagram(two, sequence=100)),
            packet(v5_datagram(one, sequence=102)),
            packet(v5_datagram(two, sequence=110)),  # 7 flows lost
        ]
    )
    (stats,) = batch.stats
    assert stats.sequence_gaps == 7
    assert stats.flows == 5 and stats.packets == 3 and stats.last_sequence == 110
    batch = decoder.decode([packet(v5_datagram(one, sequence=112))])
    assert batch.stats[0].sequence_gaps == 0


def test_v5_engine_is_the_observation_domain() -> None:
    batch = FlowDecoder().decode([packet(v5_datagram([v5_record(0)], engine=(1, 2)))])
    assert batch.columns["observation_domain"][0] == 0x0102
    assert batch.stats[0].observation_domain == 0x0102


def test_v5_icmp_type_code_from_destination_port() -> None:
    record = v5_record(0, protocol=1, src_port=0, dst_port=(3 << 8) | 1)
    batch = FlowDecoder().decode([packet(v5_datagram([record]))])
    assert (batch.columns["icmp_type"][0], batch.columns["icmp_code"][0]) == (3, 1)


def test_v5_bad_datagrams_are_counted_and_dropped() -> None:
    good = v5_datagram([v5_record(0)])
    overrun = v5_datagram([v5_record(0)], count=5)
    too_many = v5_datagram([v5_record(i) for i in range(31)])
    zero = v5_datagram([v5_record(0)], count=0)
    padded = good + b"\0" * 7
    batch = FlowDecoder().decode(
        [packet(d) for d in (good, overrun, too_many, zero, good[:50], padded, b"\0\x05")]
    )
    assert batch.rows == 2  # good and padded
    errors = sum(s.decode_errors for s in batch.stats)
    assert errors == 5
    assert len(batch.problems) == 5
    assert all(p.exporter == "192.0.2.10" for p in batch.problems)


def test_v5_many_datagrams_mixed_with_unknown_versions() -> None:
    datagrams = [v5_datagram([v5_record(i) for i in range(1 + n % 30)]) for n in range(200)]
    # Version 8 (router-side aggregation) is not decoded; 7 was the unknown one before v7.
    packets = [packet(d) for d in datagrams] + [packet(b"\x00\x08" + b"\0" * 30)]
    batch = FlowDecoder().decode(packets)
    assert batch.rows == sum(1 + n % 30 for n in range(200))
    assert np.all(batch.columns["protocol"] == 6)
    assert any("unknown export version 8" in p.reason for p in batch.problems)


def as_rows(
    datas: list[bytes], exporters: list[str], width: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Datagrams laid out as the collector's ``recvmmsg`` slots leave them: one row each,
    the rest of a row stale (here: bytes that look like a v5 header)."""
    width = max([width, *map(len, datas)])
    rows = np.full((len(datas) + 3, width), 5, dtype=np.uint8)
    for index, data in enumerate(datas):
        rows[index, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    names = list(dict.fromkeys(exporters))
    codes = np.array([names.index(name) for name in exporters], dtype=np.int64)
    lengths = np.array([len(data) for data in datas], dtype=np.int64)
    return rows, lengths, codes, names


def same_batches(first: DecodedBatch, second: DecodedBatch) -> None:
    """Equal flows (in any order), counters and problems."""

    def flows(batch: DecodedBatch) -> list[str]:
        return sorted(map(repr, batch.to_record_batch().to_pylist()))

    def stats(batch: DecodedBatch) -> list[str]:
        return sorted(map(repr, batch.stats))

    assert flows(first) == flows(second)
    assert stats(first) == stats(second)
    assert sorted(map(repr, first.problems)) == sorted(map(repr, second.problems))


def test_v5_rows_decode_as_packets() -> None:
    datagrams = [
        v5_datagram([v5_record(i) for i in range(1 + n % 4)], sequence=n * 3) for n in range(40)
    ]
    datagrams += [
        v5_datagram([v5_record(0)], count=5),
        v5_datagram([v5_record(0)])[:50],
        b"\x00\x05",
        b"",
        b"\x00\x07" + b"\0" * 30,
        v5_datagram([v5_record(0)]) + b"\0" * 7,
    ]
    exporters = [("192.0.2.1", "192.0.2.2", "2001:db8::1")[n % 3] for n in range(len(datagrams))]
    when = 1_700_000_000_000
    expected = FlowDecoder().decode(
        [Packet(d, e, when) for d, e in zip(datagrams, exporters, strict=True)]
    )
    rows, lengths, codes, names = as_rows(datagrams, exporters)
    got = FlowDecoder().decode_rows(rows, lengths, codes, names, when)
    assert got.rows == expected.rows > 0
    same_batches(got, expected)
    empty = FlowDecoder().decode_rows(rows, lengths[:0], codes[:0], names, when)
    assert empty.rows == 0 and empty.stats == []


def test_v5_rows_read_in_place_and_slots_reused() -> None:
    """Consecutive v5 datagrams of one length (a batch of one exporter kind) are read where
    the receiver left them, through a strided view, not gathered first: the flows (and the
    counters, whose headers are views too) are the walk's, a bad datagram among them is
    dropped, and nothing of the batch refers to the slots, which the next receive reuses."""
    datagrams = [v5_datagram([v5_record(i) for i in range(3)], sequence=n * 3) for n in range(12)]
    datagrams[5] = v5_datagram([v5_record(0)] * 3, count=29)  # count overruns the length
    exporters = [("192.0.2.1", "192.0.2.2")[n % 2] for n in range(len(datagrams))]
    when = 1_700_000_000_000
    expected = FlowDecoder().decode(
        [Packet(d, e, when) for d, e in zip(datagrams, exporters, strict=True)]
    )
    rows, lengths, codes, names = as_rows(datagrams, exporters, width=65536)
    got = FlowDecoder().decode_rows(rows, lengths, codes, names, when)
    assert got.rows == expected.rows == 33
    kept = {name: column.copy() for name, column in got.columns.items()}
    rows[:] = 0xAB  # the next recvmmsg overwrites the slots
    same_batches(got, expected)
    for name, column in got.columns.items():
        assert np.array_equal(column, kept[name]), name


def test_v5_sequence_after_a_restart_counts_no_gap() -> None:
    """Sequence state is not saved with the templates: the first datagram after a start sets
    each stream's baseline, so neither a restart nor the flows missed meanwhile count."""
    first = FlowDecoder()
    first.decode([packet(v5_datagram([v5_record(0)], sequence=100))])
    restarted = FlowDecoder()
    restarted.load_templates(first.save_templates())
    batch = restarted.decode([packet(v5_datagram([v5_record(0)], sequence=5000))])
    assert [s.sequence_gaps for s in batch.stats] == [0]
    batch = restarted.decode([packet(v5_datagram([v5_record(0)], sequence=5003))])
    assert [s.sequence_gaps for s in batch.stats] == [2]


def test_v5_header_values_spread_per_record() -> None:
    """Header values every datagram of a length group shares are broadcast, not repeated;
    domain and rate at their defaults stay the shared read-only default columns (nothing
    allocated per batch); mixed ones are still given record by record."""
    records = [v5_record(i) for i in range(3)]
    same = [v5_datagram(records, sequence=n * 3) for n in range(4)]
    rows, lengths, codes, names = as_rows(same, ["192.0.2.1"] * 4)
    batch = FlowDecoder().decode_rows(rows, lengths, codes, names, 1_700_000_000_000)
    c = batch.columns
    assert batch.rows == 12
    assert c["observation_domain"].tolist() == [0] * 12
    assert c["sampling_rate"].tolist() == [1] * 12
    assert c["ip_version"].tolist() == [4] * 12
    for name in ("observation_domain", "sampling_rate", "ip_version"):
        assert not c[name].flags.writeable, name
    assert set(c["exporter"].tolist()) == {mapped("192.0.2.1")}
    assert set(c["time_received"].tolist()) == {1_700_000_000_000}
    assert set(c["time_start"].tolist()) == {UNIX_SECS * 1000 + 250 - 5000}

    mixed = [
        v5_datagram(records, engine=(1, 2), sampling=(1 << 14) | 10),
        v5_datagram(records, engine=(1, 2), sampling=(1 << 14) | 10, nsecs=750_000_000),
        v5_datagram(records, engine=(0, 3)),
    ]
    rows, lengths, codes, names = as_rows(mixed, ["192.0.2.1", "192.0.2.1", "192.0.2.2"])
    batch = FlowDecoder().decode_rows(rows, lengths, codes, names, 1_700_000_000_000)
    c = batch.columns
    assert c["observation_domain"].tolist() == [0x0102] * 6 + [3] * 3
    assert c["sampling_rate"].tolist() == [10] * 6 + [1] * 3
    assert c["exporter"].tolist() == [mapped("192.0.2.1")] * 6 + [mapped("192.0.2.2")] * 3
    start = UNIX_SECS * 1000 - 5000
    assert c["time_start"].tolist() == [start + 250] * 3 + [start + 750] * 3 + [start + 250] * 3
    uniform = FlowDecoder().decode_rows(rows[:2], lengths[:2], codes[:2], names, 1)
    assert uniform.columns["observation_domain"].tolist() == [0x0102] * 6
    assert uniform.columns["sampling_rate"].tolist() == [10] * 6
