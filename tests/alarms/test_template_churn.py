"""Template churn (exporter health): exporters redefining a template id over and over raise one
alarm each through a real ``lanalyze flows collect``; refreshes of an unchanged template raise
none. The decoder's per-exporter ``template_changes`` counter and the windowed check."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from lanalyze.alarms.config import TemplateChurnConfig
from lanalyze.alarms.watch import TemplateChurn
from lanalyze.flows.decode import FlowDecoder, Packet
from lanalyze.flows.exporters import exporters_path
from tests.alarms.helpers import Collector, alarm_list, of, write_config
from tests.conftest import free_port
from tests.flows.test_collect import wait_until

FIELDS_A = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1))
FIELDS_B = ((8, 4), (12, 4), (4, 1))
Fields = tuple[tuple[int, int], ...]


def template_record(fields: Fields, template_id: int = 256) -> bytes:
    body = b"".join(struct.pack(">HH", element, length) for element, length in fields)
    return struct.pack(">HH", template_id, len(fields)) + body


def ipfix_template(fields: Fields, sequence: int) -> bytes:
    record = template_record(fields)
    body = struct.pack(">HH", 2, 4 + len(record)) + record
    return struct.pack(">HHIII", 10, 16 + len(body), int(time.time()), sequence, 7) + body


def v9_template(fields: Fields, sequence: int) -> bytes:
    record = template_record(fields)
    flowset = struct.pack(">HH", 0, 4 + len(record)) + record
    return struct.pack(">HHIIII", 9, 1, 600_000, int(time.time()), sequence, 3) + flowset


def send(port: int, source: str, datagrams: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))
            time.sleep(0.0002)


def churn(build: Callable[[Fields, int], bytes], start: int, count: int) -> list[bytes]:
    """``count`` template sets flipping template 256 between two field lists."""
    return [build(FIELDS_A if i % 2 else FIELDS_B, start + i) for i in range(count)]


def test_decoder_counts_redefinitions_not_refreshes() -> None:
    decoder = FlowDecoder()

    def changes_of(datagrams: list[bytes], exporter: str) -> int:
        batch = decoder.decode([Packet(d, exporter, 1_700_000_000_000) for d in datagrams])
        return sum(s.template_changes for s in batch.stats)

    refreshes = [ipfix_template(FIELDS_A, 0) for _ in range(5)]
    changes = [ipfix_template(FIELDS_A if i % 2 else FIELDS_B, 0) for i in range(5)]
    assert changes_of(refreshes, "192.0.2.1") == 0
    # The first of these redefines FIELDS_A as FIELDS_B, then each flips it back or forth.
    assert changes_of(changes, "192.0.2.1") == 5
    v9 = [v9_template(FIELDS_A if i % 2 else FIELDS_B, i) for i in range(4)]
    assert changes_of(v9, "192.0.2.2") == 3


def test_window_restart_and_allow_list() -> None:
    churn_check = TemplateChurn(TemplateChurnConfig(changes=10, window=60, allow=["192.0.2.0/28"]))
    row = {"exporter": "198.51.100.1", "observation_domain": 0, "template_changes": 100}
    allowed = row | {"exporter": "192.0.2.5"}
    assert churn_check.observe(0, [row, allowed]) == []  # history starts here
    assert churn_check.observe(10_000, [row | {"template_changes": 109}, allowed]) == []
    [finding] = churn_check.observe(
        20_000, [row | {"template_changes": 110}, allowed | {"template_changes": 500}]
    )
    assert (finding.algorithm, finding.subject, finding.value) == (
        "template_churn",
        row["exporter"],
        10,
    )
    # The window moved past the burst: no more finding.
    assert churn_check.observe(90_000, [row | {"template_changes": 110}]) == []
    # Counters went down (a collector restart): history starts afresh, no negative churn.
    assert churn_check.observe(100_000, [row | {"template_changes": 3}]) == []
    # An exporter first seen: its changes count from the collector's start when that is in
    # the window (a burst before the first look), not when the start is older than it.
    late = {"exporter": "198.51.100.2", "observation_domain": 0, "template_changes": 12}
    [burst] = churn_check.observe(110_000, [late], started_ms=80_000)
    assert (burst.subject, burst.value, burst.window_start_ms) == ("198.51.100.2", 12, 80_000)
    other = late | {"exporter": "198.51.100.3"}
    assert churn_check.observe(110_000, [other], started_ms=10_000) == []


def test_template_churn_through_the_collector(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    config = write_config(
        tmp_path / "lanalyze.toml",
        port,
        f'[general]\ndata_dir = "{data}"\n[alarms.template_churn]\nchanges = 10\nwindow = 86400\n',
    )
    collector = Collector(config, data)
    try:
        # 127.0.0.4 refreshes its unchanged templates (v9 and IPFIX), as exporters do.
        send(port, "127.0.0.4", [ipfix_template(FIELDS_A, 0) for _ in range(40)])
        send(port, "127.0.0.4", [v9_template(FIELDS_A, i) for i in range(40)])
        # 127.0.0.5 (IPFIX) and 127.0.0.6 (v9) redefine template 256 over and over.
        send(port, "127.0.0.5", churn(ipfix_template, 0, 30))
        send(port, "127.0.0.6", churn(v9_template, 0, 30))

        def churners() -> set[str]:
            return {row["subject"] for row in of(alarm_list(data), "template_churn")}

        wait_until(lambda: churners() == {"127.0.0.5", "127.0.0.6"}, 30, "churn alarms")
        rows = json.loads(exporters_path(data).read_text())["exporters"]
        changes = {row["exporter"]: row["template_changes"] for row in rows}
        assert changes == {"127.0.0.4": 0, "127.0.0.5": 29, "127.0.0.6": 29}
        [first] = [a for a in of(alarm_list(data), "template_churn") if a["subject"] == "127.0.0.5"]
        # The incident goes on: more redefinitions are findings of the same alarm.
        send(port, "127.0.0.5", churn(ipfix_template, 0, 30))

        def grown() -> bool:
            [alarm] = [
                a for a in of(alarm_list(data), "template_churn") if a["subject"] == "127.0.0.5"
            ]
            return bool(alarm["findings"] > first["findings"] and alarm["value"] >= 59)

        wait_until(grown, 30, "the same alarm updated")
        alarms = of(alarm_list(data), "template_churn")
        assert sorted(a["subject"] for a in alarms) == ["127.0.0.5", "127.0.0.6"]
        assert {a["id"] for a in alarms if a["subject"] == "127.0.0.5"} == {first["id"]}
    finally:
        assert collector.stop() == 0
