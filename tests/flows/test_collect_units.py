"""The collector's pieces on their own: batch receive, kernel counters, exporter counters."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.errors import BindError
from lanalyze.flows.collector import with_default_port
from lanalyze.flows.exporters import (
    OVERFLOW,
    CollectorTotals,
    ExporterCounters,
    ExporterCounterSet,
    merge_snapshots,
    read_exporters,
)
from lanalyze.flows.receive import (
    BatchReceiver,
    kernel_drops,
    open_udp,
    set_receive_buffer,
    socket_inode,
)
from lanalyze.flows.worker import merge_template_states


@pytest.mark.parametrize("multi", [True, False], ids=["recvmmsg", "recvfrom_into"])
def test_batch_receiver_reads_many_datagrams_per_call(multi: bool) -> None:
    receiver_sock = open_udp("127.0.0.1:0", "flows.listen[0]", receive_buffer=1 << 20)
    other_sock = open_udp("[::1]:0", "flows.listen[1]", receive_buffer=1 << 20)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for number in range(50):
                sender.sendto(bytes([number]) * (number + 1), receiver_sock.getsockname())
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender6:
            sender6.sendto(b"six", other_sock.getsockname()[:2])
        receiver = BatchReceiver([receiver_sock, other_sock], max_datagrams=32, multi=multi)
        assert receiver.multi is multi
        first = receiver.receive()
        assert len(first.views) == 32  # a batch is bounded
        # Views are only valid until the next receive: copy them first.
        got = [bytes(v) for v in first.views]
        rest = receiver.receive()
        got += [bytes(v) for v in rest.views]
        assert len(got) == 51 and b"six" in got
        assert sorted(got)[:2] == [bytes([0]), bytes([1]) * 2]
        assert set(first.sources + rest.sources) == {"127.0.0.1", "::1"}
        assert receiver.receive().views == []
        assert receiver.datagrams == 51
        # Slots are reused: a later batch reads the new datagrams and their senders right.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind(("127.0.0.2", 0))
            sender.sendto(b"again", receiver_sock.getsockname())
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender6:
            sender6.sendto(b"six again", other_sock.getsockname()[:2])
        later = receiver.receive()
        pairs = sorted(zip((bytes(v) for v in later.views), later.sources, strict=True))
        assert pairs == [(b"again", "127.0.0.2"), (b"six again", "::1")]
        assert later.nbytes == len(b"again") + len(b"six again")
    finally:
        receiver_sock.close()
        other_sock.close()


def test_batch_receiver_falls_back_when_the_kernel_has_no_recvmmsg() -> None:
    sock = open_udp("127.0.0.1:0", "flows.listen[0]", receive_buffer=1 << 20)
    try:
        receiver = BatchReceiver([sock], multi=True)
        assert receiver._multi is not None
        receiver._multi.receive = lambda fd, start, count: -errno.ENOSYS  # type: ignore[method-assign]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"one", sock.getsockname())
        got = receiver.receive()
        assert not receiver.multi and receiver.receive_errors == 0
        assert [bytes(v) for v in got.views] == [b"one"] and got.sources == ["127.0.0.1"]
    finally:
        sock.close()


def test_receive_buffer_is_raised_and_bind_errors_name_the_key() -> None:
    sock = open_udp("127.0.0.1:0", "flows.listen[0]", receive_buffer=1 << 20)
    try:
        # Linux doubles the figure for its bookkeeping; less means the request was capped.
        assert set_receive_buffer(sock, 4 << 20) >= 4 << 20 or sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF
        ) > (1 << 20)
        port = sock.getsockname()[1]
        with pytest.raises(BindError, match=r"flows\.listen\[3\]"):
            open_udp(f"127.0.0.1:{port}", "flows.listen[3]", receive_buffer=1 << 20)
    finally:
        sock.close()


def test_kernel_drops_are_read_per_socket_inode(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    header += "   uid  timeout inode ref pointer drops\n"
    line = "  {sl}: 0100007F:0807 00000000:0000 07 00000000:00000000 00:00000000 00000000"
    line += "     0        0 {inode} 2 0000000000000000 {drops}\n"
    (tmp_path / "udp").write_text(
        header + line.format(sl=1, inode=111, drops=7) + line.format(sl=2, inode=222, drops=0)
    )
    (tmp_path / "udp6").write_text(header + line.format(sl=1, inode=333, drops=5) + "garbage\n")
    assert kernel_drops([111, 333, 999], proc=tmp_path) == {111: 7, 333: 5}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert kernel_drops([socket_inode(sock)]) == {socket_inode(sock): 0}


def test_counters_are_bounded_and_merge_across_workers() -> None:
    counters = ExporterCounterSet(max_exporters=2)
    rows = [ExporterCounters(f"192.0.2.{i}", 0, 5, packets=1, flows=30) for i in range(5)]
    counters.add(rows, 1000)
    snapshot = counters.snapshot()
    assert [row["exporter"] for row in snapshot] == ["192.0.2.0", "192.0.2.1", OVERFLOW]
    assert snapshot[-1]["flows"] == 90
    other = ExporterCounterSet()
    other.add([ExporterCounters("192.0.2.0", 0, 5, packets=2, flows=60)], 2000)
    merged = merge_snapshots([snapshot, other.snapshot()])
    first = next(row for row in merged if row.exporter == "192.0.2.0")
    assert (first.packets, first.flows, first.last_seen_ms) == (3, 90, 2000)


def test_exporters_file_round_trip(tmp_path: Path) -> None:
    totals = CollectorTotals(
        exporters=[ExporterCounters("2001:db8::1", 7, 10, 3, 75, 1, 2, 4, 1_700_000_000_000)],
        kernel_drops={"[::]:2055": 9},
        store={"rows": 75},
        datagrams=3,
        started_ms=1_699_999_000_000,
    )
    totals.write(tmp_path)
    data = read_exporters(tmp_path)
    assert data["exporters"][0]["unknown_template_records"] == 4
    assert data["kernel_drops"] == {"[::]:2055": 9}
    assert data["exporters"][0]["last_seen_ms"] == 1_700_000_000_000


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("192.0.2.1", "192.0.2.1:2055"),
        ("192.0.2.1:9995", "192.0.2.1:9995"),
        ("::", "[::]:2055"),
        ("[::1]", "[::1]:2055"),
        ("[::1]:4739", "[::1]:4739"),
        ("localhost", "localhost:2055"),
    ],
)
def test_listen_without_port_means_2055(given_value: str, expected: str) -> None:
    assert with_default_port(given_value) == expected


def test_template_states_of_workers_merge() -> None:
    one = b'{"version": 1, "exporters": [{"exporter": "a", "domains": [1]}]}'
    two = b'{"version": 1, "exporters": [{"exporter": "b", "domains": []}, {"exporter": "a"}]}'
    merged = merge_template_states([one, two])
    assert merged.count(b'"exporter"') == 2 and b'"domains": []' in merged
    assert merge_template_states([b"junk", two]) == two


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_proc_parser_never_raises_on_junk(junk: bytes) -> None:
    # /proc is the kernel's, but a format change must not take the collector down.
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "udp").write_bytes(junk)
        kernel_drops([1, 2, 3], proc=Path(directory))
