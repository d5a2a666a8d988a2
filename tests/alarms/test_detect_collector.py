"""Each algorithm end to end: synthetic attacks as real NetFlow v5 through `flows collect`.

One collector serves the module's attacks (each with its own subject, windows of a day so no
test's traffic straddles one); each attack raises exactly one alarm naming its subject, and
the same traffic below the threshold (another subject) raises none.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.alarms.helpers import (
    Collector,
    Flow,
    alarm_list,
    alarms,
    of,
    send_flows,
    write_config,
)
from tests.conftest import free_port
from tests.flows.test_collect import wait_until


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Collector, int]]:
    root = tmp_path_factory.mktemp("alarms")
    data = root / "data"
    data.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    bad = root / "drop.txt"
    bad.write_text("; a DROP-style list\n100.64.0.0/24 ; SBL1\nnot a network\n")
    config = write_config(
        root / "lanalyze.toml",
        port,
        f'[general]\ndata_dir = "{data}"\n[alarms.bad_networks]\nfile = "{bad}"\n',
    )
    collector = Collector(config, data)
    yield collector, port
    assert collector.stop() == 0


def raised(collector: Collector, algorithm: str, subject: str) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        rows = of(alarm_list(collector.data_dir), algorithm)
        return [row for row in rows if row["subject"] == subject]

    return wait_until(found, 20, f"{algorithm} alarm for {subject}")  # type: ignore[no-any-return]


def settle(collector: Collector, port: int) -> None:
    """Everything sent so far has been looked at: a marker flood's alarm has appeared."""
    marker = f"198.18.{free_port() % 250}.{free_port() % 250}"
    send_flows(port, [Flow("192.0.2.99", marker, packets=10_000_000)])
    raised(collector, "flood", marker)


def test_horizontal_scan(running: tuple[Collector, int]) -> None:
    collector, port = running
    scan = [Flow("10.9.0.1", f"203.0.113.{i}", 40000 + i, 22) for i in range(1, 151)]
    quiet = [Flow("10.9.0.2", f"203.0.114.{i}", 40000 + i, 22) for i in range(1, 51)]
    send_flows(port, scan + quiet)
    [alarm] = raised(collector, "scan_horizontal", "10.9.0.1 tcp/22")
    settle(collector, port)
    rows = of(alarm_list(collector.data_dir), "scan_horizontal")
    assert [row["subject"] for row in rows] == ["10.9.0.1 tcp/22"]
    assert alarm["value"] >= 100
    assert alarm["filter"] == "src ip 10.9.0.1 and proto tcp and dst port 22"
    assert len(alarm["evidence"]["targets"]) == 10


def test_vertical_scan(running: tuple[Collector, int]) -> None:
    collector, port = running
    scan = [Flow("10.9.0.3", "198.51.100.7", 50000, p) for p in range(1, 151)]
    quiet = [Flow("10.9.0.4", "198.51.100.8", 50000, p) for p in range(1, 51)]
    send_flows(port, scan + quiet)
    [alarm] = raised(collector, "scan_vertical", "10.9.0.3 -> 198.51.100.7")
    settle(collector, port)
    rows = of(alarm_list(collector.data_dir), "scan_vertical")
    assert [row["subject"] for row in rows] == ["10.9.0.3 -> 198.51.100.7"]
    assert {p["port"] for p in alarm["evidence"]["ports"]} <= set(range(1, 151))


def test_flood_syn_flood_and_reflection(running: tuple[Collector, int]) -> None:
    collector, port = running
    flood = [Flow(f"192.0.2.{i}", "198.51.100.50", 1000 + i, 80, 17, 0, 20_000) for i in range(10)]
    calm = [Flow(f"192.0.2.{i}", "198.51.100.51", 1000 + i, 80, 17, 0, 5_000) for i in range(10)]
    syn = [Flow(f"203.0.113.{i % 250}", "198.51.100.60", 1024 + i, 80) for i in range(1000)]
    few_syn = [Flow(f"203.0.113.{i % 250}", "198.51.100.61", 1024 + i, 80) for i in range(500)]
    reflect = [Flow(f"8.8.4.{i}", "10.9.0.70", 53, 33000, 17, 0, 100, 120_000) for i in range(20)]
    some = [Flow(f"8.8.4.{i}", "10.9.0.71", 53, 33000, 17, 0, 100, 120_000) for i in range(5)]
    send_flows(port, flood + calm + syn + few_syn + reflect + some)
    raised(collector, "flood", "198.51.100.50")
    raised(collector, "syn_flood", "198.51.100.60")
    [alarm] = raised(collector, "udp_reflection", "10.9.0.70")
    settle(collector, port)
    rows = alarm_list(collector.data_dir)
    subjects = {(row["algorithm"], row["subject"]) for row in rows}
    assert ("flood", "198.51.100.51") not in subjects
    assert not [s for s in subjects if s[0] == "syn_flood" and s[1] != "198.51.100.60"]
    assert [s for s in subjects if s[0] == "udp_reflection"] == [("udp_reflection", "10.9.0.70")]
    assert alarm["evidence"]["ports"] == [{"port": 33000, "flows": 20}]
    assert alarm["evidence"]["reflector_ports"] == [{"port": 53, "flows": 20}]
    assert {r["address"] for r in alarm["evidence"]["reflectors"]} <= {
        f"8.8.4.{i}" for i in range(20)
    }
    assert alarm["severity"] == "warning"  # 2.4 MB against 864 kB a day: under 4 times


def test_mass_mailer_flows(running: tuple[Collector, int]) -> None:
    collector, port = running
    mail = [
        Flow("10.9.0.5", f"198.51.{100 + i // 250}.{i % 250}", 40000 + i, 25, 6, 0x1B, 10)
        for i in range(300)
    ]
    few = [Flow("10.9.0.6", f"198.51.110.{i}", 40000 + i, 25, 6, 0x1B, 10) for i in range(50)]
    server = [
        Flow("203.0.113.9", f"198.51.111.{i}", 40000 + i, 25, 6, 0x1B, 10) for i in range(200)
    ]  # outside -> outside: not ours to judge
    send_flows(port, mail + few + server)
    [alarm] = raised(collector, "mass_mailer", "10.9.0.5")
    settle(collector, port)
    assert [r["subject"] for r in of(alarm_list(collector.data_dir), "mass_mailer")] == ["10.9.0.5"]
    # A mass mailer's connections carry data: they are no port-25 scan.
    assert not of(alarm_list(collector.data_dir), "scan_horizontal") or all(
        r["subject"] != "10.9.0.5 tcp/25" for r in alarm_list(collector.data_dir)
    )
    # The command line shows the same alarm.
    listed = alarms(collector.config, "ls", "--open", "--format", "json")
    assert alarm["id"] in {row["id"] for row in listed}
    shown = alarms(collector.config, "show", str(alarm["id"]), "--format", "json")
    assert shown["subject"] == "10.9.0.5" and shown["points"]


def test_bad_networks_file_reloaded(running: tuple[Collector, int]) -> None:
    collector, port = running
    listed = [Flow("10.9.0.8", "100.64.0.9", 40000, 443, 6, 0x1B, 10)]
    unlisted = [Flow("10.9.0.8", "100.65.0.9", 40000, 443, 6, 0x1B, 10)]
    send_flows(port, listed + unlisted)
    [alarm] = raised(collector, "bad_network", "100.64.0.9")
    assert alarm["evidence"]["network"] == "100.64.0.0/24"
    assert alarm["evidence"]["peers"][0]["address"] == "10.9.0.8"
    assert alarm["filter"] == "ip 100.64.0.9"
    settle(collector, port)
    assert [r["subject"] for r in of(alarm_list(collector.data_dir), "bad_network")] == [
        "100.64.0.9"
    ]
    # The list changes: read again, and the next flows to the new network count.
    bad = collector.config.parent / "drop.txt"
    bad.write_text("100.64.0.0/24\n100.65.0.0/24\n")
    send_flows(port, unlisted)
    raised(collector, "bad_network", "100.65.0.9")
