"""The collector's decoder bounds end to end: real UDP on loopback, a worker process, /metrics."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from lanalyze import metrics
from lanalyze.flows.collector import FlowCollector
from lanalyze.flows.config import FlowsConfig
from tests.conftest import free_port
from tests.flows.test_collect import stored, v5_datagram, wait_until
from tests.flows.test_decode_templates import flow_set, ipfix_message, template_message


def send_from(source: str, port: int, datagrams: list[bytes]) -> None:
    """From a chosen loopback address (all of 127/8 is local): a second, distinct exporter."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))


def test_allow_list_cap_and_template_state_on_metrics(data_dir: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    config = FlowsConfig(
        listen=[f"127.0.0.1:{port}"],
        workers=1,
        flush_interval=0.2,
        exporters_allowed=["127.0.0.2/32"],
        max_records_per_datagram=4096,
    )
    one_byte = template_message(300, [(4, 1)])
    many_records = ipfix_message([flow_set(300, b"\x06" * 10_000)])

    async def scenario() -> str:
        collector = FlowCollector(config, data_dir)
        await collector.start()
        try:
            refused = [v5_datagram(i * 30, 0) for i in range(3)]
            await asyncio.to_thread(send_from, "127.0.0.1", port, refused)
            await asyncio.to_thread(send_from, "127.0.0.2", port, [v5_datagram(0, 0)])
            await asyncio.to_thread(send_from, "127.0.0.2", port, [one_byte])
            # After the template (the worker reads in arrival order from one socket).
            await asyncio.to_thread(send_from, "127.0.0.2", port, [many_records])
            await asyncio.to_thread(wait_until, lambda: stored(data_dir) == 30 + 4096, 20)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                text = metrics.render().decode()
                if "lanalyze_flow_datagrams_capped_total 1" in text:
                    return text
                await asyncio.sleep(0.1)
            return metrics.render().decode()
        finally:
            await collector.stop()

    text = asyncio.run(scenario())
    assert "lanalyze_flow_datagrams_not_allowed_total 3" in text
    assert "lanalyze_flow_datagrams_capped_total 1" in text
    assert "lanalyze_flow_templates 1" in text
    assert "lanalyze_flow_templates_refused_total 0" in text
    state = [line for line in text.splitlines() if line.startswith("lanalyze_flow_template_state")]
    assert state and float(state[0].split()[-1]) > 0
    # The refused source has no exporter row (forged sources must not fill the table).
    flow_lines = [line for line in text.splitlines() if line.startswith("lanalyze_flow_")]
    assert any('exporter="127.0.0.2"' in line for line in flow_lines)
    assert not any('exporter="127.0.0.1"' in line for line in flow_lines)
    assert stored(data_dir) == 30 + 4096
