"""Hypothesis fuzz of the sFlow v5 decoder: mutated and truncated datagrams never raise, both
receive paths agree, a datagram is kept whole or not at all, and lengths stay bounded."""

from __future__ import annotations

import struct

from hypothesis import assume, given
from hypothesis import strategies as st

from lanalyze.flows.decode import FlowDecoder, Packet, sflow
from tests.flows.test_decode_fuzz import EXPORTER_NAMES, FUZZ, check
from tests.flows.test_decode_sflow import (
    DATA_SAMPLE,
    ICMP_SAMPLE,
    TCP_SAMPLE,
    UDP6_SAMPLE,
    counter_sample,
    generic_counters,
    sflow_datagram,
)

SEEDS = [
    sflow_datagram([TCP_SAMPLE, UDP6_SAMPLE]),
    sflow_datagram([ICMP_SAMPLE, DATA_SAMPLE], agent="2001:db8::1"),
    sflow_datagram([counter_sample([generic_counters(3, 10**9, 1, 2)]), TCP_SAMPLE]),
    sflow_datagram([counter_sample([generic_counters(4, 10**8, 5, 6)], expanded=True)]),
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
            # XDR counts and lengths are 32-bit words: push them to their extremes, aligned.
            position -= position % 4
            value = draw(st.sampled_from([0, 1, 3, 4, 5, 8, 128, 0xFFFF, 2**31, 2**32 - 1]))
            data[position : position + 4] = struct.pack(">I", value)
    return bytes(data)


def random_datagram() -> st.SearchStrategy[bytes]:
    return st.builds(lambda body: b"\0\0\0\x05" + body, st.binary(max_size=300))


@FUZZ
@given(st.lists(st.one_of(mutated(), random_datagram()), min_size=1, max_size=12), st.data())
def test_mutated_sflow_never_raises_and_both_paths_agree(
    packets: list[bytes], data: st.DataObject
) -> None:
    exporters = [data.draw(EXPORTER_NAMES) for _ in packets]
    check(packets, exporters)


@FUZZ
@given(mutated())
def test_a_datagram_is_kept_whole_or_not_at_all(datagram: bytes) -> None:
    assume(datagram[:4] == b"\0\0\0\x05")  # a mutation may make it another protocol
    decoder = FlowDecoder(max_records_per_datagram=3)
    batch = decoder.decode([Packet(datagram, "192.0.2.1", 1_700_000_000_000)])
    errors = sum(item.decode_errors for item in batch.stats)
    accepted = sum(item.packets for item in batch.stats)
    assert errors + accepted == 1 or (errors == 2 and accepted == 1)  # 2: accepted, capped
    if not accepted:
        assert batch.rows == 0 and not batch.interface_counters
    assert batch.rows <= 3
    assert all(item.version == sflow.STATS_VERSION for item in batch.stats)
    assert len(batch.problems) == errors
