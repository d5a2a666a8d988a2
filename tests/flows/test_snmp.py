"""Interface names and speeds from a real SNMP agent (Debian's snmpd) into the reports."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.testclient import TestClient

from lanalyze import metrics
from lanalyze.flows.config import FlowsConfig, SnmpConfig
from lanalyze.flows.query import interfaces as interface_names
from lanalyze.flows.snmp import SnmpPoller, interface_table, poll_targets
from lanalyze.flows.store.synthetic import random_flows, v4_addresses, write_flows
from lanalyze.web import api_flows
from tests.conftest import free_port, lanalyze_cmd, require_tool
from tests.web.helpers import log_in, make_app

COMMUNITY = "testcommunity"
HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
WINDOW = {"since": "2023-11-14T22:00:00Z", "until": "2023-11-14T23:00:00Z"}
FLOW_BYTES = 450_000_000  # over the hour: 1 Mb/s in and out of lo (10 Mb/s): 10 %


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """snmpd on a free loopback UDP port with its own config; yields the port."""
    snmpd = require_tool("snmpd")
    home = tmp_path_factory.mktemp("snmpd")
    conf = home / "snmpd.conf"
    conf.write_text(f"rocommunity {COMMUNITY} 127.0.0.1\n")
    port = free_port(socket.SOCK_DGRAM)
    log_path = home / "snmpd.log"
    env = {**os.environ, "MIBS": "", "MIBDIRS": str(home)}  # no MIB parsing noise
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [snmpd, "-f", "-Lo", "-C", "-c", str(conf), "-p", str(home / "pid"),
             f"udp:127.0.0.1:{port}"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while b"NET-SNMP version" not in log_path.read_bytes():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "snmpd did not start"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def config(port: int, community: str = COMMUNITY, **extra: object) -> SnmpConfig:
    return SnmpConfig.model_validate(
        {
            "enabled": True,
            "timeout": 0.5,
            "retries": 0,
            "exporters": {"127.0.0.1": {"community": community, "port": port}},
            **extra,
        }
    )


async def poll(snmp: SnmpConfig, flow_dir: Path) -> dict[str, int]:
    poller = SnmpPoller(snmp, flow_dir)
    await poller.start()
    try:
        return await poller.poll_once()
    finally:
        await poller.stop()


@pytest.fixture(scope="module")
def polled(agent: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flow directory with snmpd's interfaces polled and an hour of flows over ifIndex 1."""
    flow_dir = tmp_path_factory.mktemp("data") / "flows"
    found = asyncio.run(poll(config(agent), flow_dir))
    assert found.get("127.0.0.1", 0) >= 1
    columns = random_flows(100, T0, T0 + HOUR, seed=3)
    columns["exporter"][:] = v4_addresses(np.full(100, 0x7F000001, dtype=np.uint32))
    columns["in_if"][:] = 1
    columns["out_if"][:] = 1
    columns["sampling_rate"][:] = 1
    columns["bytes"][:] = FLOW_BYTES // 100
    write_flows(flow_dir, columns, segment_ms=HOUR)
    return flow_dir


def test_poller_writes_loopback_name_and_speed(polled: Path) -> None:
    data = json.loads((polled / "interfaces.json").read_text())
    lo = data["127.0.0.1"]["1"]
    assert lo["name"] == "lo"
    assert lo["description"] == "lo"
    assert lo["speed_bps"] > 0
    assert lo["polled_at"].endswith("Z")
    assert not list(polled.glob(".*.tmp"))
    assert metric("lanalyze_snmp_polls_total", exporter="127.0.0.1") >= 1


def test_cli_shows_name_and_utilisation(polled: Path) -> None:
    speed = json.loads((polled / "interfaces.json").read_text())["127.0.0.1"]["1"]["speed_bps"]
    window = ["--since", WINDOW["since"], "--until", WINDOW["until"]]
    result = subprocess.run(
        [*lanalyze_cmd(), "flows", "interfaces", "--format", "json", "--data", str(polled),
         *window],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["exporter"], row["interface"], row["name"]) == ("127.0.0.1", 1, "lo")
    assert row["speed_bps"] == speed
    assert row["in_bps"] == pytest.approx(FLOW_BYTES * 8 / 3600)
    assert row["in_util_pct"] == pytest.approx(row["in_bps"] * 100 / speed, rel=1e-3)
    assert row["out_util_pct"] == pytest.approx(row["out_bps"] * 100 / speed, rel=1e-3)
    table = subprocess.run(
        [*lanalyze_cmd(), "flows", "interfaces", "--data", str(polled), *window],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert " lo " in table.stdout and "%" in table.stdout


def test_api_shows_name_and_utilisation(polled: Path) -> None:
    app = Starlette(routes=api_flows.routes)
    app.state.flow_dir = polled
    client = TestClient(app)
    body = client.get("/api/flows/interfaces", params=WINDOW).json()
    (row,) = body["interfaces"]
    assert row["name"] == "lo" and row["in_util_pct"] > 0
    series = client.get(
        "/api/flows/interfaces", params={**WINDOW, "exporter": "127.0.0.1", "if": "1"}
    ).json()
    assert series["name"] == "lo" and series["speed_bps"] > 0
    assert any(point["in_util_pct"] for point in series["points"])
    flows = client.get("/api/flows/list", params={**WINDOW, "n": "3"}).json()["flows"]
    assert [(f["in_if_name"], f["out_if_name"]) for f in flows] == [("lo", "lo")] * 3
    # An interface the agent does not know stays on ifIndex.
    other = client.get(
        "/api/flows/interfaces", params={**WINDOW, "exporter": "127.0.0.1", "if": "999"}
    ).json()
    assert other["name"] is None and other["speed_bps"] is None


def test_console_shows_name_and_utilisation(polled: Path) -> None:
    client = TestClient(make_app(polled.parent), follow_redirects=False)
    log_in(client)
    page = client.get(
        "/", params={"range": "custom", "from": "2023-11-14T22:00", "to": "2023-11-14T23:00"}
    )
    assert page.status_code == 200
    table = page.text.split('id="interfaces"', 1)[1].split("</table>", 1)[0]
    cells = [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", table, re.S)
    ]
    assert cells[0] == "127.0.0.1"
    assert cells[1].startswith("lo")
    assert cells[2].endswith("%") and cells[3].endswith("%")
    drill = client.get(
        "/flows/interface/127.0.0.1/1",
        params={"range": "custom", "from": "2023-11-14T22:00", "to": "2023-11-14T23:00"},
    )
    assert drill.status_code == 200
    assert re.search(r'id="interface-snmp">SNMP: lo, speed 10', drill.text), drill.text[-3000:]


def test_collect_runs_the_poller(agent: int, tmp_path: Path) -> None:
    conf = tmp_path / "lanalyze.toml"
    conf.write_text(
        "[flows.snmp]\nenabled = true\ninterval = 5\n"
        f'[flows.snmp.exporters."127.0.0.1"]\ncommunity = "{COMMUNITY}"\nport = {agent}\n'
    )
    log_path = tmp_path / "collect.log"
    listen = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*lanalyze_cmd(), "flows", "collect", "--data", str(tmp_path / "data"),
             "--workers", "1", "--listen", listen],
            stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "LANALYZE_CONFIG": str(conf)},
        )  # fmt: skip
    written = tmp_path / "data" / "flows" / "interfaces.json"
    try:
        deadline = time.monotonic() + 30
        while not written.exists():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log_path.read_text()
    assert json.loads(written.read_text())["127.0.0.1"]["1"]["name"] == "lo"
    assert COMMUNITY not in log_path.read_text()


def test_wrong_community_and_no_agent_are_counted(
    agent: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "not-the-community-x7"
    silent = free_port(socket.SOCK_DGRAM)
    snmp = SnmpConfig.model_validate(
        {
            "enabled": True,
            "timeout": 0.3,
            "retries": 0,
            "exporters": {
                "127.0.0.1": {"community": secret, "port": agent},
                "127.0.0.2": {"community": secret, "port": silent},
            },
        }
    )
    before = metric("lanalyze_snmp_poll_failures_total", exporter="127.0.0.1", reason="no_response")
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(poll(snmp, tmp_path)) == {}
    after = metric("lanalyze_snmp_poll_failures_total", exporter="127.0.0.1", reason="no_response")
    assert after == before + 1
    assert metric("lanalyze_snmp_poll_failures_total", exporter="127.0.0.2", reason="no_response")
    assert json.loads((tmp_path / "interfaces.json").read_text()) == {}
    failures = [r for r in caplog.records if r.getMessage() == "snmp.poll_failed"]
    assert {getattr(r, "exporter", None) for r in failures} == {"127.0.0.1", "127.0.0.2"}
    assert secret not in caplog.text
    assert all(secret not in str(vars(r)) for r in caplog.records)


def test_failed_poll_keeps_previous_names(tmp_path: Path) -> None:
    known = {"127.0.0.1": {"1": {"name": "lo", "speed_bps": 10_000_000}}}
    (tmp_path / "interfaces.json").write_text(json.dumps(known))
    silent = free_port(socket.SOCK_DGRAM)
    asyncio.run(poll(config(silent), tmp_path))
    assert json.loads((tmp_path / "interfaces.json").read_text()) == known


def test_without_the_library_reports_stay_on_ifindex(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pysnmp.hlapi.v3arch.asyncio", None)
    poller = SnmpPoller(config(161), tmp_path)

    async def run() -> dict[str, int]:
        await poller.start()
        try:
            return await poller.poll_once()
        finally:
            await poller.stop()

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(run()) == {}
    assert not poller.available
    assert [r.getMessage() for r in caplog.records if r.name == "lanalyze.flows.snmp"] == [
        "snmp.unavailable"
    ]
    assert interface_names.load(tmp_path) == {}


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="no community"):
        SnmpConfig.model_validate({"enabled": True, "exporters": {"192.0.2.1": {}}})
    with pytest.raises(ValidationError, match="names no exporters"):
        SnmpConfig.model_validate({"enabled": True})
    with pytest.raises(ValidationError, match="not an IP address"):
        SnmpConfig.model_validate({"exporters": {"router.example": {"community": "c"}}})
    for bad in ({"port": 0}, {"version": "3"}, {"community": "c", "extra": 1}):
        with pytest.raises(ValidationError):
            SnmpConfig.model_validate({"exporters": {"192.0.2.1": bad}})
    with pytest.raises(ValidationError):
        SnmpConfig.model_validate({"interval": 1})
    snmp = FlowsConfig.model_validate(
        {"snmp": {"enabled": True, "community": "s3cret", "exporters": {"::FFFF:192.0.2.1": {}}}}
    ).snmp
    assert "s3cret" not in repr(snmp) and "s3cret" not in str(snmp.model_dump())
    seen = ["192.0.2.9", "192.0.2.1", "198.51.100.7", "not-an-address"]
    # Seen alone is not enough (a datagram's source can be forged): listed exporters only.
    targets = poll_targets(snmp, seen)
    assert [(t.exporter, t.community) for t in targets] == [("192.0.2.1", "s3cret")]
    inside = snmp.model_copy(update={"networks": ["192.0.2.0/24"]})
    targets = poll_targets(inside, seen)
    assert [(t.exporter, t.community) for t in targets] == [
        ("192.0.2.1", "s3cret"),
        ("192.0.2.9", "s3cret"),
    ]
    assert "s3cret" not in repr(targets)
    with pytest.raises(ValidationError, match="not an IP network"):
        SnmpConfig.model_validate({"networks": ["192.0.2.0/33"]})


def test_interface_table_speeds_and_bad_values() -> None:
    table = interface_table(
        {
            "name": {1: b"ge-0/0/0\x00junk", 2: b"\xff\xfe", 0: b"zero"},
            "alias": {1: b"  uplink  "},
            "high_speed": {1: 10_000, 2: 0, 3: 100},
            "speed": {1: 2**32 - 1, 2: 10_000_000, 3: 100_000_000},
        },
        "2026-01-01T00:00:00Z",
    )
    assert set(table) == {"1", "2", "3"}
    assert table["1"]["name"] == "ge-0/0/0" and table["1"]["alias"] == "uplink"
    assert table["1"]["speed_bps"] == 10_000_000_000
    assert table["2"]["speed_bps"] == 10_000_000 and table["2"]["name"] == "\ufffd\ufffd"
    assert table["3"]["speed_bps"] == 100_000_000 and table["3"]["name"] is None


agent_values = st.one_of(st.none(), st.integers(-(2**64), 2**64), st.binary(max_size=300))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["name", "alias", "description", "high_speed", "speed"]),
        st.dictionaries(st.integers(-(2**40), 2**40), agent_values, max_size=8),
    )
)
def test_interface_table_takes_any_agent_answer(columns: dict[str, dict[int, object]]) -> None:
    table = interface_table(columns, "t")
    for index, entry in table.items():
        assert 1 <= int(index) <= 2**31 - 1
        assert entry["speed_bps"] is None or entry["speed_bps"] > 0
        for field in ("name", "alias", "description"):
            assert entry[field] is None or 0 < len(entry[field]) <= 255
    json.dumps(table)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.dictionaries(st.text(max_size=4), c, max_size=4) | st.lists(c, max_size=3),
        max_leaves=20,
    )
)
def test_reading_any_interfaces_file_never_fails(tmp_path_factory, data: object) -> None:
    directory = tmp_path_factory.mktemp("ifs")
    (directory / "interfaces.json").write_text(json.dumps(data))
    known = interface_names.load(directory)
    info = interface_names.describe(known, "127.0.0.1", 1)
    assert info.speed_bps is None or info.speed_bps > 0
    assert set(known) <= (set(data) if isinstance(data, dict) else set())


def test_serve_starts_the_poller_only_when_enabled() -> None:
    from lanalyze.config import Config
    from lanalyze.serve import build_components

    off = Config.model_validate({"mail": {"enabled": False}, "web": {"enabled": False}})
    assert "snmp" not in [c.name for c in build_components(off)]
    on = Config.model_validate(
        {
            "flows": {"snmp": {"enabled": True, "community": "c"}},
            "mail": {"enabled": False},
            "web": {"enabled": False},
        }
    )
    assert "snmp" in [c.name for c in build_components(on)]


def test_a_seen_but_unconfigured_exporter_is_never_sent_the_community(
    agent: int, tmp_path: Path
) -> None:
    """A forged datagram from 127.0.0.9 put it in exporters.json. A UDP listener on its SNMP
    port (161: the tests run as root; skipped otherwise) receives nothing from a poll round
    whose networks do not include it, and the community once they do (the control: the
    listener would have heard it)."""
    forged = "127.0.0.9"
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listener.bind((forged, 161))
    except PermissionError:
        listener.close()
        pytest.skip("binding port 161 needs root")
    listener.setblocking(False)
    flow_dir = tmp_path / "flows"
    flow_dir.mkdir()
    exporters = [{"exporter": forged}, {"exporter": "127.0.0.1"}]
    (flow_dir / "exporters.json").write_text(json.dumps({"exporters": exporters}))
    secret = "community-for-the-routers-x9"

    def snmp(networks: list[str]) -> SnmpConfig:
        return SnmpConfig.model_validate(
            {
                "enabled": True,
                "timeout": 1.0,
                "retries": 0,
                "community": secret,
                "networks": networks,
                "exporters": {"127.0.0.1": {"community": COMMUNITY, "port": agent}},
            }
        )

    def received() -> list[bytes]:
        got = []
        while True:
            try:
                got.append(listener.recv(65535))
            except BlockingIOError:
                return got

    try:
        found = asyncio.run(poll(snmp(["10.0.0.0/8"]), flow_dir))
        assert found.get("127.0.0.1", 0) >= 1  # the configured exporter was polled
        assert received() == []  # poll_once returned: anything sent was queued before
        asyncio.run(poll(snmp(["127.0.0.8/31"]), flow_dir))
        heard = received()
        assert heard and all(secret.encode() in datagram for datagram in heard)
    finally:
        listener.close()
