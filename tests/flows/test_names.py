"""Reverse DNS names in reports: the resolver, `--resolve` on the commands, the console toggle.

A real Knot server on loopback serves the reverse zones of 127.0.0.0/24 and 2001:db8::/32
(PTR records for some addresses, none for others), the root zone (so that any other name is
NXDOMAIN) and a zone configured broken (SERVFAIL).
A DNS server that answers too late cannot be made of Knot: a UDP socket that reads nothing
stands in for it (a real socket, just a silent peer).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from lanalyze.flows import catalogue
from lanalyze.flows.config import NamesConfig
from lanalyze.flows.query import names
from lanalyze.metrics import REGISTRY
from tests.conftest import lanalyze_cmd
from tests.mail.dnsserver import KnotServer, knot_server
from tests.web.helpers import log_in, make_app
from tests.web.sample_flows import mapped, write_flows

V6_ZONE = "8.b.d.0.1.0.0.2.ip6.arpa"
V6_HOST = "2001:db8::9"
# 2001:db8::9 below its zone: the nibbles of its low 96 bits, last first.
V6_LABEL = ipaddress.ip_address(V6_HOST).reverse_pointer.removesuffix("." + V6_ZONE)


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    zones: dict[str, str | None] = {
        ".": "",  # every other name is NXDOMAIN, as on the Internet
        "0.0.127.in-addr.arpa": "2 PTR router-a.example.\n3 PTR router-b.example.\n"
        "7 PTR talker.example.\n",
        V6_ZONE: f"{V6_LABEL} PTR six.example.\n",
        "1.0.10.in-addr.arpa": None,
    }
    with knot_server(tmp_path_factory.mktemp("knot"), zones) as server:
        yield server


@pytest.fixture
def silent() -> Iterator[str]:
    """A UDP "DNS server" that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def test_names_are_looked_up_cached_and_failures_stay_addresses(dns: KnotServer) -> None:
    resolver = names.ReverseNames(NamesConfig(resolver=dns.address))
    try:
        before = {
            "name": value("lanalyze_flows_names_lookups_total", result="name"),
            "no_name": value("lanalyze_flows_names_lookups_total", result="no_name"),
            "failed": value("lanalyze_flows_names_lookups_total", result="failed"),
            "hits": value("lanalyze_flows_names_cache_hits_total"),
        }
        asked = ["127.0.0.2", "127.0.0.3", V6_HOST, "::ffff:127.0.0.7", "127.0.0.4", "10.0.1.5"]
        found = resolver.lookup([*asked, "not an address", "127.0.0.2"], budget=10)
        assert found == {
            "127.0.0.2": "router-a.example",
            "127.0.0.3": "router-b.example",
            V6_HOST: "six.example",
            "::ffff:127.0.0.7": "talker.example",
        }
        assert value("lanalyze_flows_names_lookups_total", result="name") == before["name"] + 4
        assert value("lanalyze_flows_names_lookups_total", result="no_name") == (
            before["no_name"] + 1
        )
        assert value("lanalyze_flows_names_lookups_total", result="failed") == (
            before["failed"] + 1
        )
        # Asked again: every answer from the cache (the failure too, for a while).
        assert resolver.lookup(asked, budget=10) == found
        assert value("lanalyze_flows_names_cache_hits_total") == before["hits"] + len(asked)
        assert value("lanalyze_flows_names_lookups_total", result="name") == before["name"] + 4
    finally:
        resolver.close()


def test_a_view_waits_no_longer_than_its_budget(silent: str) -> None:
    resolver = names.ReverseNames(NamesConfig(resolver=silent, timeout=30, max_pending=3))
    try:
        timeouts = value("lanalyze_flows_names_timeouts_total")
        skipped = value("lanalyze_flows_names_skipped_total")
        asked = [f"192.0.2.{i}" for i in range(1, 6)]
        assert resolver.lookup(asked, budget=0.2) == {}
        # Back with the lookups still running (their own timeout is 30 s): the budget ended
        # the wait, not the lookups; beyond max_pending nothing was queued.
        assert len(resolver._pending) == 3
        assert value("lanalyze_flows_names_timeouts_total") == timeouts + 3
        assert value("lanalyze_flows_names_skipped_total") == skipped + 2
    finally:
        resolver.close()
    assert resolver._pending == {}


def _store(data_dir: Path) -> None:
    """Flows from 127.0.0.7 (named) and 192.0.2.50 (not), exported by 127.0.0.2 and .3."""
    now = time.time_ns() // 1_000_000
    rows = 40
    batch = catalogue.empty_batch(rows)
    batch["time_received"][:] = now - 60_000 - np.arange(rows)
    batch["time_start"][:] = batch["time_received"] - 1000
    batch["time_end"][:] = batch["time_received"] - 500
    batch["src_addr"][:] = np.where(
        np.arange(rows) % 4 == 0, mapped("192.0.2.50"), mapped("127.0.0.7")
    )
    batch["dst_addr"][:] = mapped(V6_HOST)
    batch["exporter"][:] = np.where(
        np.arange(rows) % 2 == 0, mapped("127.0.0.2"), mapped("127.0.0.3")
    )
    batch["protocol"][:] = 6
    batch["dst_port"][:] = 443
    batch["in_if"][:] = 1
    batch["out_if"][:] = 2
    batch["packets"][:] = 3
    batch["bytes"][:] = 1500
    batch["ip_version"][:] = 4
    write_flows(data_dir, batch)


_WINDOW = ("--no-server", "--since", "-1h", "--data")


def _run(data_dir: Path, config: Path, *args: str) -> str:
    result = subprocess.run(
        [*lanalyze_cmd(), "--config", str(config), "flows", *args, *_WINDOW, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing left running is reported at exit
    return result.stdout


def _run_here(data_dir: Path, config: Path, *args: str) -> str:
    """The same command in this process (quicker than a new interpreter)."""
    from lanalyze.cli import main

    try:
        result = CliRunner().invoke(
            main,
            ["--config", str(config), "flows", *args, *_WINDOW, str(data_dir)],
        )
    finally:
        names.configure(NamesConfig())
    assert result.exit_code == 0, result.output
    return result.output


def test_resolve_on_the_commands(tmp_path: Path, data_dir: Path, dns: KnotServer) -> None:
    _store(data_dir)
    config = tmp_path / "lanalyze.toml"
    config.write_text(f'[flows.query.names]\nresolver = "{dns.address}"\ncli_budget = 10\n')
    table = _run(data_dir, config, "top", "--by", "srcip", "--resolve")
    assert "talker.example" in table and "192.0.2.50" in table
    assert "127.0.0.7" not in table
    plain = _run_here(data_dir, config, "top", "--by", "srcip")
    assert "talker.example" not in plain and "127.0.0.7" in plain

    rows = json.loads(
        _run_here(
            data_dir, config, "top", "--by", "srcip,exporter", "--resolve", "--format", "json"
        )
    )
    named = {(r["srcip"], r["srcip_name"], r["exporter"], r["exporter_name"]) for r in rows}
    assert named == {
        ("127.0.0.7", "talker.example", "127.0.0.2", "router-a.example"),
        ("127.0.0.7", "talker.example", "127.0.0.3", "router-b.example"),
        ("192.0.2.50", None, "127.0.0.2", "router-a.example"),
    }
    csv_text = _run_here(data_dir, config, "list", "-n", "5", "--resolve", "--format", "csv")
    header = csv_text.splitlines()[0].split(",")
    assert header[:3] == ["time_received", "exporter", "exporter_name"]
    assert "src_addr_name" in header and "dst_addr_name" in header
    assert "six.example" in csv_text
    series = _run_here(data_dir, config, "series", "--by", "srcip", "-n", "1", "--resolve")
    assert "talker.example" in series and "other" in series and "127.0.0.7" not in series
    interfaces = json.loads(
        _run_here(data_dir, config, "interfaces", "--resolve", "--format", "json")
    )
    assert {r["exporter_name"] for r in interfaces} == {"router-a.example", "router-b.example"}


@pytest.fixture
def console(data_dir: Path, dns: KnotServer) -> Iterator[TestClient]:
    _store(data_dir)
    names.configure(NamesConfig(resolver=dns.address, budget=5))
    client = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(client)
    try:
        yield client
    finally:
        names.configure(NamesConfig())


def test_console_names_toggle(console: TestClient) -> None:
    plain = console.get("/?range=1h")
    assert plain.status_code == 200
    assert "talker.example" not in plain.text
    assert 'id="names" name="names" type="checkbox" value="1" >' in plain.text

    page = console.get("/?range=1h&names=1")
    assert page.status_code == 200
    talkers = page.text.split('id="talkers"', 1)[1].split("</table>", 1)[0]
    # The name is shown, the link and the CSV keep the address; no name: the address.
    assert re.search(
        r'data-csv="127.0.0.7" title="127.0.0.7"><a href="/flows/host/127.0.0.7\?[^"]*names=1'
        r'[^"]*">talker.example</a>',
        talkers,
    )
    assert ">192.0.2.50</a>" in talkers
    assert "router-a.example" in page.text.split('id="exporters"', 1)[1]
    assert "checked" in page.text.split('id="names"', 1)[1].split(">", 1)[0]

    host = console.get("/flows/host/127.0.0.7?range=1h&names=1&full=1")
    flows = host.text.split('id="flows"', 1)[1].split("</table>", 1)[0]
    assert "six.example" in flows and "router-b.example" in flows
    interface = console.get("/flows/exporter/127.0.0.3?range=1h&names=1")
    table = interface.text.split('id="interfaces"', 1)[1].split("</table>", 1)[0]
    assert 'title="127.0.0.3" data-csv="127.0.0.3">router-b.example<' in table


def test_resolve_on_the_api(console: TestClient) -> None:
    # The JSON API's `resolve` adds COLUMN_name beside the address columns as the CLI's
    # --resolve --format json does (within flows.query.names.budget); without it, no names.
    window = {"since": "-1h"}
    plain = console.get("/api/flows/top", params={**window, "by": "srcip"}).json()
    assert all("srcip_name" not in row for row in plain["rows"])

    top = console.get(
        "/api/flows/top", params={**window, "by": "srcip,exporter", "resolve": "true"}
    )
    assert top.status_code == 200, top.text
    named = {
        (r["srcip"], r["srcip_name"], r["exporter"], r["exporter_name"]) for r in top.json()["rows"]
    }
    assert named == {
        ("127.0.0.7", "talker.example", "127.0.0.2", "router-a.example"),
        ("127.0.0.7", "talker.example", "127.0.0.3", "router-b.example"),
        ("192.0.2.50", None, "127.0.0.2", "router-a.example"),
    }
    flows = console.get("/api/flows/list", params={**window, "n": "5", "resolve": "1"}).json()
    (flow, *_) = flows["flows"]
    assert flow["dst_addr"] == "2001:db8::9" and flow["dst_addr_name"] == "six.example"
    assert flow["exporter_name"] in {"router-a.example", "router-b.example"}
    assert "src_addr_name" in flow
    series = console.get(
        "/api/flows/series", params={**window, "by": "srcip", "n": "1", "resolve": "true"}
    ).json()
    groups = {(p["group"], p["group_name"]) for p in series["points"]}
    assert groups == {("127.0.0.7", "talker.example"), ("other", None)}
    interfaces = console.get("/api/flows/interfaces", params={**window, "resolve": "true"})
    names_of = {r["exporter_name"] for r in interfaces.json()["interfaces"]}
    assert names_of == {"router-a.example", "router-b.example"}
    # A flag as `raw` is: only 1, true or yes ask for names.
    other = console.get("/api/flows/top", params={**window, "by": "srcip", "resolve": "no"})
    assert other.status_code == 200 and "srcip_name" not in other.text
