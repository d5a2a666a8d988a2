"""Crash and restart: stored flows survive kill -9, templates survive a restart."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import free_port
from tests.flows.test_collect import (
    Collector,
    ipfix_data_set,
    ipfix_message,
    ipfix_template_set,
    send,
    start_collector,
    stored,
    v5_datagram,
    wait_until,
)

__all__ = ["start_collector"]  # the fixture, imported for this module's tests


def test_flows_stored_before_kill_9_survive(
    data_dir: Path, start_collector: Callable[..., Collector]
) -> None:
    port = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port}"], workers=2, session=True)
    send(port, [v5_datagram(i * 30, i * 30) for i in range(50)])
    wait_until(lambda: stored(data_dir) == 1500, 15, "1500 flows stored")
    # The whole process group at once: no worker gets to flush anything after this.
    os.killpg(collector.proc.pid, signal.SIGKILL)
    collector.proc.wait(timeout=10)
    collector.log_file.close()

    files = sorted((data_dir / "flows" / "raw").glob("*/*.parquet"))
    assert files
    assert sum(pq.read_metadata(path).num_rows for path in files) == 1500
    assert stored(data_dir, "count(distinct src_addr)") == 1500

    # A new collector on the same directory goes on where the old one stopped.
    again = start_collector([f"127.0.0.1:{port}"])
    send(port, [v5_datagram(0, 2000, 10)])
    wait_until(lambda: stored(data_dir) == 1510, 15, "1510 flows stored")
    assert again.stop() == 0


def test_templates_persist_across_a_restart(
    data_dir: Path, start_collector: Callable[..., Collector]
) -> None:
    port = free_port(socket.SOCK_DGRAM)
    first = start_collector([f"127.0.0.1:{port}"])
    send(port, [ipfix_message([ipfix_template_set(), ipfix_data_set(0, 10)], 0)])
    wait_until(lambda: stored(data_dir) == 10, 15, "10 IPFIX flows stored")
    assert first.stop() == 0
    assert list((data_dir / "flows" / "templates").glob("worker-*.bin"))

    # Data before the exporter's next template refresh still decodes.
    second = start_collector([f"127.0.0.1:{port}"])
    send(port, [ipfix_message([ipfix_data_set(100, 20)], 10)])
    wait_until(lambda: stored(data_dir) == 30, 15, "30 IPFIX flows stored")
    assert second.stop() == 0
    assert stored(data_dir, "sum(packets)") == 60
    assert stored(data_dir, "count(distinct observation_domain)") == 1


def test_ctrl_c_to_the_process_group_stores_everything_and_exits_0(
    data_dir: Path, start_collector: Callable[..., Collector]
) -> None:
    port = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port}"], workers=2, session=True)
    send(port, [v5_datagram(i * 30, i * 30) for i in range(40)])
    # At once, as a terminal's Ctrl-C does: parent and workers all get SIGINT; what was
    # received (even not yet decoded) is stored before the exit.
    os.killpg(collector.proc.pid, signal.SIGINT)
    assert collector.proc.wait(timeout=30) == 0, collector.log
    collector.log_file.close()
    assert stored(data_dir) == 1200
    assert "Traceback" not in collector.log
