"""The exporters list after a restart: live counters merged with what the store holds.

The collector's counters (exporters.json) restart from zero at every start; `flows exporters`,
the console's Exporters page and /api/flows/exporters must still list an exporter whose flows
are stored, with its stored totals equal to `flows top --by exporter`. A real softflowd
exports to a real collector here, which is then restarted; the store-only and empty-store
cases use stores written by the collector's own segment writer.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from lanalyze.flows.config import QueryConfig
from lanalyze.flows.query import reports
from lanalyze.flows.store.paths import flow_dir
from lanalyze.flows.store.synthetic import random_flows, write_flows
from tests.conftest import free_port, lanalyze_cmd, require_tool
from tests.flows.test_collect import Collector, start_collector, stored, wait_until
from tests.flows.test_softflowd import replay, write_capture
from tests.web.helpers import log_in, make_app

__all__ = ["start_collector"]

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


def run(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lanalyze_cmd(), "flows", *args, "--data", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def exporters_json(data_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(data_dir, "exporters", "--format", "json").stdout)
    return data


def top_by_exporter(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    args = ["top", "--by", "exporter", "-n", "0", "--since", "2000-01-01", "--format", "json"]
    result = json.loads(run(data_dir, *args).stdout)
    return {r["exporter"]: (r["flows"], r["packets"], r["bytes"]) for r in result}


@pytest.fixture
def console() -> Iterator[Callable[[Path], TestClient]]:
    def make(data_dir: Path) -> TestClient:
        client = TestClient(make_app(data_dir))
        log_in(client)
        return client

    yield make
    reports.apply_config(QueryConfig())


def page_rows(client: TestClient) -> dict[str, str]:
    page = client.get("/exporters")
    assert page.status_code == 200, page.text
    rows = re.findall(r'<tr>\s*<td class="mono">([^<]+)</td>(.*?)</tr>', page.text, re.S)
    return dict(rows)


def test_after_a_restart_the_stored_exporter_is_listed_with_its_totals(
    tmp_path: Path,
    data_dir: Path,
    start_collector: Callable[..., Collector],
    console: Callable[[Path], TestClient],
) -> None:
    softflowd = require_tool("softflowd")
    capture = tmp_path / "flows.pcap"
    write_capture(capture, flows_v4=600, flows_v6=300)
    port = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port}"])
    replay(softflowd, capture, port, 10, tmp_path)
    wait_until(lambda: stored(data_dir) == 900, 20, "900 flows stored")
    assert collector.stop() == 0

    restarted_at = time.time_ns() // 1_000_000
    collector = start_collector([f"127.0.0.1:{port}"])

    def restarted() -> bool:
        path = data_dir / "flows" / "exporters.json"
        return bool(json.loads(path.read_text()).get("started_ms", 0) >= restarted_at)

    wait_until(restarted, 20, "the restarted collector's exporters.json")
    expected = top_by_exporter(data_dir)
    assert list(expected) == ["127.0.0.1"] and expected["127.0.0.1"][0] == 900

    data = exporters_json(data_dir)
    (row,) = data["exporters"]
    assert row["exporter"] == "127.0.0.1" and row["live"] is False
    assert (row["packets"], row["flows"], row["last_seen_ms"]) == (0, 0, 0)
    stored_totals = (row["stored_flows"], row["stored_packets"], row["stored_bytes"])
    assert stored_totals == expected["127.0.0.1"]
    first, last = row["stored_first_ms"], row["stored_last_ms"]
    assert first <= last < restarted_at
    assert data["started_ms"] >= restarted_at and data["stored"]["unread"] == ""

    table = run(data_dir, "exporters").stdout
    line = next(text for text in table.splitlines() if text.startswith("127.0.0.1"))
    assert "not since collector start" in line
    assert f" {expected['127.0.0.1'][0]} " in f"{line} "
    assert str(expected["127.0.0.1"][2]) in line

    client = console(data_dir)
    api = client.get("/api/flows/exporters").json()
    assert api["exporters"] == data["exporters"]
    body = page_rows(client)["127.0.0.1"]
    assert "not heard from since the collector started" in body
    assert f'data-value="{expected["127.0.0.1"][2]}"' in body
    assert f'data-value="{expected["127.0.0.1"][0]}"' in body

    # Heard from again: live counters and stored totals on one row.
    replay(softflowd, capture, port, 10, tmp_path)
    wait_until(lambda: stored(data_dir) == 1800, 20, "1800 flows stored")

    def live() -> bool:
        rows = exporters_json(data_dir)["exporters"]
        return bool(rows and rows[0]["live"] and rows[0]["flows"] == 900)

    wait_until(live, 20, "live counters after the restart")
    (row,) = exporters_json(data_dir)["exporters"]
    assert row["stored_flows"] == 1800 == top_by_exporter(data_dir)["127.0.0.1"][0]
    assert collector.stop() == 0


def test_an_exporter_only_in_the_store_is_listed(
    data_dir: Path, console: Callable[[Path], TestClient]
) -> None:
    # No collector ever ran here (no exporters.json): the store alone answers.
    write_flows(flow_dir(data_dir), random_flows(2_000, T0, T0 + 2 * HOUR, seed=3))
    expected = top_by_exporter(data_dir)
    assert sorted(expected) == ["192.0.2.1", "192.0.2.2"]
    data = exporters_json(data_dir)
    got = {
        r["exporter"]: (r["stored_flows"], r["stored_packets"], r["stored_bytes"])
        for r in data["exporters"]
    }
    assert got == expected
    assert all(r["live"] is False for r in data["exporters"])
    assert "started_ms" not in data
    table = run(data_dir, "exporters").stdout
    assert "192.0.2.2" in table and "no collector has run" in table

    client = console(data_dir)
    assert client.get("/api/flows/exporters").json()["exporters"] == data["exporters"]
    rows = page_rows(client)
    assert sorted(rows) == ["192.0.2.1", "192.0.2.2"]
    assert "not heard from since the collector started" in rows["192.0.2.2"]
    assert f'data-value="{expected["192.0.2.2"][2]}"' in rows["192.0.2.2"]


def test_a_store_over_the_raw_budget_does_not_fail_the_list(
    data_dir: Path, console: Callable[[Path], TestClient]
) -> None:
    write_flows(flow_dir(data_dir), random_flows(500, T0, T0 + HOUR, seed=4))
    config = data_dir.parent / "tiny.toml"
    config.write_text("[flows.query]\nmax_raw_bytes = 1\n")
    out = subprocess.run(
        [*lanalyze_cmd(), "--config", str(config), "flows", "exporters", "--data", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Nothing rolled up and the raw flows over the budget: no rows, and the reason.
    assert out.returncode == 1
    assert "raw flow files not rolled up yet were not read" in out.stderr

    reports.apply_config(QueryConfig(max_raw_bytes=1))
    client = console(data_dir)
    page = client.get("/exporters")
    assert page.status_code == 200
    assert "raw flow files not rolled up yet were not read" in page.text
    api = client.get("/api/flows/exporters")
    assert api.status_code == 200
    assert "max_raw_bytes" in api.json()["stored"]["unread"]


def test_an_empty_store_lists_the_live_exporters_with_nothing_stored(
    data_dir: Path, console: Callable[[Path], TestClient]
) -> None:
    directory = flow_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    live = {"exporter": "192.0.2.9", "observation_domain": 0, "packets": 4, "flows": 40}
    (directory / "exporters.json").write_text(
        json.dumps({"started_ms": T0, "written_ms": T0, "exporters": [live]})
    )
    data = exporters_json(data_dir)
    (row,) = data["exporters"]
    assert row["live"] is True and row["flows"] == 40
    assert (row["stored_flows"], row["stored_bytes"], row["stored_first_ms"]) == (0, 0, None)
    assert data["stored"] == {"plan": "no data", "unread": ""}
    client = console(data_dir)
    assert client.get("/api/flows/exporters").json()["exporters"] == data["exporters"]
    body = page_rows(client)["192.0.2.9"]
    assert 'data-value="40"' in body and "not heard from" not in body

    # Nothing live and nothing stored: the command says so, as before.
    (directory / "exporters.json").unlink()
    out = run(data_dir, "exporters", check=False)
    assert out.returncode == 1 and "no collector has run" in out.stderr


def test_the_stored_list_is_bounded(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lanalyze.flows.query.reports import exporters

    write_flows(flow_dir(data_dir), random_flows(1_000, T0, T0 + HOUR, seed=5))
    everything = exporters.stored_exporters(flow_dir(data_dir))
    assert len(everything.rows) == 2 and everything.unread == ""
    monkeypatch.setattr(exporters, "MAX_STORED", 1)
    cut = exporters.stored_exporters(flow_dir(data_dir))
    assert [row.exporter for row in cut.rows] == [
        max(everything.rows, key=lambda row: row.bytes).exporter
    ]
    assert "only the 1 exporters with most bytes" in cut.unread


def test_an_sflow_exporter_reads_sflow_5_and_json_keeps_the_number(
    data_dir: Path, console: Callable[[Path], TestClient]
) -> None:
    # sFlow is counted under version 0x10005 (65541) to keep it apart from NetFlow v5; the
    # table and the page show "sFlow 5", NetFlow/IPFIX numbers stay as they were, the JSON
    # keeps the number and names it in `protocol`.
    directory = flow_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    rows = [
        {"exporter": "192.0.2.5", "observation_domain": 7, "version": 0x10005, "flows": 3},
        {"exporter": "192.0.2.9", "observation_domain": 0, "version": 9, "flows": 4},
        {"exporter": "192.0.2.10", "observation_domain": 1, "version": 10, "flows": 5},
        {"exporter": "192.0.2.11", "observation_domain": 0, "version": 5, "flows": 6},
        {"exporter": "192.0.2.12", "observation_domain": 0, "flows": 0},
    ]
    (directory / "exporters.json").write_text(
        json.dumps({"started_ms": T0, "written_ms": T0, "exporters": rows})
    )
    table = run(data_dir, "exporters").stdout.splitlines()
    # Cells are at least two spaces apart; "sFlow 5" holds one.
    cells = {c[0]: c[1:3] for c in (re.split(r"\s{2,}", line) for line in table[1:6])}
    assert cells == {
        "192.0.2.5": ["7", "sFlow 5"],
        "192.0.2.9": ["0", "9"],
        "192.0.2.10": ["1", "10"],
        "192.0.2.11": ["0", "5"],
        "192.0.2.12": ["0", "-"],
    }
    assert "65541" not in "\n".join(table)
    data = exporters_json(data_dir)
    named = {r["exporter"]: (r["version"], r["protocol"]) for r in data["exporters"]}
    assert named == {
        "192.0.2.5": (65541, "sFlow 5"),
        "192.0.2.9": (9, "NetFlow v9"),
        "192.0.2.10": (10, "IPFIX"),
        "192.0.2.11": (5, "NetFlow v5"),
        "192.0.2.12": (0, ""),
    }
    client = console(data_dir)
    assert client.get("/api/flows/exporters").json()["exporters"] == data["exporters"]
    page = page_rows(client)
    assert '<td class="num" data-value="65541">sFlow 5</td>' in page["192.0.2.5"]
    assert '<td class="num" data-value="9">9</td>' in page["192.0.2.9"]
    assert '<td class="num" data-value="10">10</td>' in page["192.0.2.10"]
