"""A restart in the middle of an incident gives one alarm with the counts of both halves; an
exporter that goes silent raises one alarm; the alarm store's lifecycle and files."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

from lanalyze.alarms.detect import Finding
from lanalyze.alarms.store import AlarmQuery, AlarmStore, store_path
from tests.alarms.helpers import Collector, Flow, alarm_list, of, send_flows, write_config
from tests.conftest import free_port
from tests.flows.test_collect import wait_until


def test_restart_in_the_middle_of_a_scan_is_one_alarm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    config = write_config(tmp_path / "lanalyze.toml", port, f'[general]\ndata_dir = "{data}"\n')
    first = [Flow("10.9.1.1", f"203.0.113.{i}", 40000 + i, 23) for i in range(1, 121)]
    second = [Flow("10.9.1.1", f"203.0.114.{i}", 40000 + i, 23) for i in range(1, 121)]

    collector = Collector(config, data)
    send_flows(port, first)
    [alarm] = wait_until(lambda: of(alarm_list(data), "scan_horizontal"), 20, "first alarm")
    assert alarm["value"] == 120
    assert collector.stop() == 0
    assert stat.S_IMODE((data / "alarms" / "state.npz").stat().st_mode) == 0o600

    collector = Collector(config, data)
    try:
        send_flows(port, second)
        # The window's count went on from 120 (the snapshot), in the same alarm.
        wait_until(lambda: alarm_list(data)[0]["value"] == 240, 20, "count continued")
    finally:
        assert collector.stop() == 0
    [again] = of(alarm_list(data), "scan_horizontal")
    assert again["id"] == alarm["id"] and again["findings"] >= 2 and again["state"] == "open"


def test_silent_exporter(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    config = write_config(
        tmp_path / "lanalyze.toml",
        port,
        f'[general]\ndata_dir = "{data}"\n',
    )
    text = config.read_text().replace("silent_after = 3600", "silent_after = 2")
    config.write_text(text)
    collector = Collector(config, data)
    try:
        # Two exporters; 127.0.0.3 is heard once, 127.0.0.2 keeps talking.
        send_flows(port, [Flow("10.1.1.1", "10.1.1.2")], source="127.0.0.3")

        def silent() -> list[dict[str, object]]:
            send_flows(port, [Flow("10.1.1.1", "10.1.1.2")], source="127.0.0.2")
            return of(alarm_list(data), "exporter_silent")

        [alarm] = wait_until(silent, 30, "silent exporter alarm")
        assert alarm["subject"] == "127.0.0.3"
        assert alarm["severity"] == "warning"
    finally:
        assert collector.stop() == 0


def finding(subject: str, value: float) -> Finding:
    return Finding("scan_vertical", subject, value, 100, "ports", {"ports": []}, "", 0, subject)


def test_store_one_row_per_incident_closed_after_quiet_and_acked(tmp_path: Path) -> None:
    store = AlarmStore(store_path(tmp_path))
    [opened] = store.record([finding("a", 150)], now=1000)
    assert (opened.event, opened.alarm["severity"]) == ("opened", "warning")
    [escalated] = store.record([finding("a", 500)], now=1010)
    assert (escalated.event, escalated.alarm["severity"]) == ("escalated", "major")
    [updated] = store.record([finding("a", 120)], now=1020)
    assert updated.event == "updated"
    assert updated.alarm["severity"] == "major" and updated.alarm["peak"] == 500
    assert store.close_quiet(300, now=1300) == []
    [closed] = store.close_quiet(300, now=1321)
    assert closed.event == "closed" and closed.alarm["closed_at"] == 1321
    # After the incident closed, the same subject opens a new one.
    [again] = store.record([finding("a", 150)], now=2000)
    assert again.event == "opened" and again.alarm["id"] != opened.alarm["id"]
    assert store.ack(again.alarm["id"], "alice", now=2001)
    assert not store.ack(999, "alice")
    rows = store.search(AlarmQuery(open_only=True)).rows
    assert [(r["id"], r["ack_by"]) for r in rows] == [(again.alarm["id"], "alice")]
    assert [p[1] for p in store.points(opened.alarm["id"])] == [150, 500, 120]
    store.close()
    assert stat.S_IMODE(store_path(tmp_path).stat().st_mode) == 0o600


def test_ack_and_show_commands(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import lanalyze_cmd

    data = tmp_path / "data"
    with AlarmStore(store_path(data)) as store:
        [change] = store.record([finding("10.0.0.7 -> 192.0.2.1", 300)])
    config = tmp_path / "lanalyze.toml"
    config.write_text(f'[general]\ndata_dir = "{data}"\n')

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*lanalyze_cmd(), "--config", str(config), "alarms", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    alarm_id = str(change.alarm["id"])
    assert run("ack", alarm_id, "--by", "bob").returncode == 0
    shown = run("show", alarm_id).stdout
    assert "ack:" in shown and "bob at" in shown and "10.0.0.7 -> 192.0.2.1" in shown
    listed = run("ls").stdout.splitlines()
    assert len(listed) == 2 and "yes" in listed[1] and "warning" in listed[1]  # 3x: warning
    missing = run("ack", "999")
    assert missing.returncode == 1 and "no alarm 999" in missing.stderr
