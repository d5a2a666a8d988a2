"""softflowd's sequence numbers through FlowDecoder: no false gaps, a dropped datagram counted.

softflowd's IPFIX sequence numbers count the message's own records (post-increment, not
RFC 7011 §3.1's count before it); its v9 numbers count packets (RFC 3954 §5.1). The datagrams
of a real replay are captured on a UDP socket and decoded by the walk (``decode``) and the bulk
path (``decode_rows``), in batches so that the convention detection spans batches.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lanalyze.flows.decode import FlowDecoder, Packet
from tests.conftest import require_tool
from tests.flows.test_decode_templates import data_message, template_message
from tests.flows.test_decode_v5 import as_rows
from tests.flows.test_softflowd import replay, write_capture

EXPORTER = "127.0.0.1"
BATCH = 16


def capture_softflowd(version: int, workdir: Path) -> list[bytes]:
    softflowd = require_tool("softflowd")
    capture = workdir / "flows.pcap"
    write_capture(capture)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 2**20)
        sock.bind(("127.0.0.1", 0))
        replay(softflowd, capture, sock.getsockname()[1], version, workdir)
        sock.settimeout(2)
        datagrams: list[bytes] = []
        for _ in range(100_000):
            try:
                datagrams.append(sock.recv(65535))
            except TimeoutError:
                break
    return datagrams


def totals(datagrams: list[bytes], bulk: bool) -> tuple[int, int]:
    """(flows, sequence gaps) of decoding ``datagrams`` in batches of :data:`BATCH`."""
    decoder = FlowDecoder()
    flows = gaps = 0
    for start in range(0, len(datagrams), BATCH):
        chunk = datagrams[start : start + BATCH]
        if bulk:
            rows, lengths, codes, names = as_rows(chunk, [EXPORTER] * len(chunk))
            batch = decoder.decode_rows(rows, lengths, codes, names, 1_700_000_000_000)
        else:
            batch = decoder.decode([Packet(d, EXPORTER, 1_700_000_000_000) for d in chunk])
        flows += sum(s.flows for s in batch.stats)
        gaps += sum(s.sequence_gaps for s in batch.stats)
    return flows, gaps


@pytest.mark.parametrize("version", [9, 10])
def test_softflowd_sequences_count_only_real_loss(version: int, tmp_path: Path) -> None:
    datagrams = capture_softflowd(version, tmp_path)
    assert len(datagrams) > 60
    for bulk in (False, True):
        flows, gaps = totals(datagrams, bulk)
        assert (flows, gaps) == (3000, 0)
        middle = len(datagrams) // 2
        dropped = datagrams[:middle] + datagrams[middle + 1 :]
        flows_left, gaps_left = totals(dropped, bulk)
        lost = flows - flows_left
        assert lost > 0
        # v9 numbers export packets, IPFIX data records.
        assert gaps_left == (1 if version == 9 else lost)


def stream(counts: list[int], *, post_increment: bool, lost: dict[int, int]) -> list[bytes]:
    """A template, then data messages of ``counts`` records numbered in one convention;
    ``lost[i]`` records go missing before message ``i``."""
    datagrams = [template_message()]
    sent = 0
    for index, count in enumerate(counts):
        sent += lost.get(index, 0)
        if post_increment:
            sent += count
            datagrams.append(data_message(count, sequence=sent))
        else:
            datagrams.append(data_message(count, sequence=sent))
            sent += count
    return datagrams


@pytest.mark.parametrize("post_increment", [False, True])
@pytest.mark.parametrize("bulk", [False, True])
def test_real_gaps_count_in_either_convention(post_increment: bool, bulk: bool) -> None:
    counts = [3, 5, 2, 4, 4, 1, 6, 2, 3, 5] * 4
    # Losses while the convention is undecided (message 2) and after (message 30).
    lost = {2: 7, 30: 4}
    datagrams = stream(counts, post_increment=post_increment, lost=lost)
    decoder = FlowDecoder()
    flows = gaps = 0
    for start in range(0, len(datagrams), 8):
        chunk = datagrams[start : start + 8]
        if bulk:
            rows, lengths, codes, names = as_rows(chunk, [EXPORTER] * len(chunk))
            batch = decoder.decode_rows(rows, lengths, codes, names, 1_700_000_000_000)
        else:
            batch = decoder.decode([Packet(d, EXPORTER, 1_700_000_000_000) for d in chunk])
        flows += sum(s.flows for s in batch.stats)
        gaps += sum(s.sequence_gaps for s in batch.stats)
    assert (flows, gaps) == (sum(counts), 11)
    domain = decoder._state.exporters[EXPORTER].domains[(10, 1)]
    assert domain.post_increment is post_increment


def test_equal_record_counts_need_no_convention() -> None:
    """Messages of one size read the same in both conventions: gaps count, nothing decided."""
    for post_increment in (False, True):
        datagrams = stream([4] * 20, post_increment=post_increment, lost={10: 4})
        batch = FlowDecoder().decode([Packet(d, EXPORTER, 1_700_000_000_000) for d in datagrams])
        assert sum(s.sequence_gaps for s in batch.stats) == 4
