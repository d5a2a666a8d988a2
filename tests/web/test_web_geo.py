"""Countries and AS in the console (issue 16): flags, AS names, panels and their drill-downs.

The flows are the web tests' sample flows, enriched by the real :class:`Enricher` from two
small ``.mmdb`` files written in the test (``mmdb_writer``, read back by ``maxminddb``) and
stored in the raw layout the collector writes. Pages are read through the ASGI app, and once
in Debian's chromium against a real ``lanalyze serve`` (like ``test_web_browser.py``).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from lanalyze.flows import catalogue
from lanalyze.flows.enrich import Enricher
from lanalyze.flows.enrich.config import EnrichConfig
from lanalyze.web.flowreports import flag
from tests.conftest import free_port, lanalyze_cmd, require_tool
from tests.flows.test_enrich import write_mmdb
from tests.web.helpers import ALICE_HASH, PASSWORD, log_in, make_app
from tests.web.sample_flows import HOUR_MS, sample_flows, write_sample
from tests.web.test_web_browser import CHROMIUM_ARGS

# The sample flows' servers: 203.0.113.9 in NL / AS64500, 198.51.100.5 in US / AS64501; the
# clients (10.0.0.x) and the other servers are in neither database.
COUNTRIES = {
    "203.0.113.0/24": {"country": {"iso_code": "NL"}},
    "198.51.100.0/24": {"country": {"iso_code": "US"}},
}
ASES = {
    "203.0.113.0/24": {
        "autonomous_system_number": 64500,
        "autonomous_system_organization": "ExampleNet",
    },
    "198.51.100.0/24": {
        "autonomous_system_number": 64501,
        "autonomous_system_organization": "OtherNet",
    },
}
NL_FLAG = "\U0001f1f3\U0001f1f1"


def write_enriched(data_dir: Path, mmdb: Path) -> None:
    """The sample flows with country and AS from the test databases, one segment per hour."""
    write_mmdb(mmdb / "country.mmdb", COUNTRIES, "GeoLite2-Country")
    write_mmdb(mmdb / "asn.mmdb", ASES, "GeoLite2-ASN")
    enricher = Enricher(
        EnrichConfig(geoip_country=mmdb / "country.mmdb", geoip_asn=mmdb / "asn.mmdb"), {}
    )
    columns = sample_flows(time.time_ns() // 1_000_000)
    labels = enricher.enrich(columns)
    table = catalogue.as_stored(
        pa.Table.from_batches([catalogue.to_record_batch(columns, None, labels)])
    )
    hours = columns["time_received"] // HOUR_MS
    for seq, hour in enumerate(np.unique(hours)):
        part = table.filter(pa.array(hours == hour))
        name = time.strftime("%Y%m%d%H", time.gmtime(int(hour) * HOUR_MS // 1000))
        directory = data_dir / "flows" / "raw" / name
        directory.mkdir(parents=True, exist_ok=True)
        first = int(np.min(columns["time_received"][hours == hour]))
        pq.write_table(part, directory / f"{first}-geo-{seq}.parquet")


@pytest.fixture(scope="module")
def enriched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("geo")
    write_enriched(data_dir, tmp_path_factory.mktemp("mmdb"))
    return data_dir


@pytest.fixture(scope="module")
def client(enriched: Path) -> TestClient:
    client = TestClient(make_app(enriched), follow_redirects=False)
    log_in(client)
    return client


def _rows(html: str, table: str) -> list[tuple[str, str]]:
    """(first cell's text, its link) of each row of ``table``."""
    body = html.split(f'id="{table}"', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = []
    for row in body.split("</tr>")[:-1]:
        cell = re.search(r"<td[^>]*>(.*?)</td>", row, re.S)
        assert cell, row
        link = re.search(r'href="([^"]+)"', cell.group(1))
        text = re.sub(r"<[^>]+>", "", cell.group(1)).strip()
        rows.append((text, link.group(1).replace("&amp;", "&") if link else ""))
    return rows


def _filter_of(link: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["filter"][0]


def test_flag_is_two_regional_indicators_and_nothing_for_other_codes() -> None:
    assert flag("NL") == NL_FLAG
    assert flag("de") == "\U0001f1e9\U0001f1ea"
    for code in ("", "N", "NLD", "1A", "<s"):
        assert flag(code) == ""


def test_dashboard_shows_countries_with_flags_and_as_names(client: TestClient) -> None:
    page = client.get("/?range=6h")
    assert page.status_code == 200
    for table in ("src-countries", "dst-countries", "src-ases", "dst-ases"):
        assert f'id="{table}"' in page.text, table
    assert 'id="geo-empty"' not in page.text
    countries = dict(_rows(page.text, "dst-countries"))
    assert f"{NL_FLAG} NL" in countries and "\U0001f1fa\U0001f1f8 US" in countries
    assert _filter_of(countries[f"{NL_FLAG} NL"]) == "dst country NL"
    assert countries["unknown"] == ""  # flows the databases do not know: no link
    ases = dict(_rows(page.text, "src-ases"))
    assert _filter_of(ases["AS64500 ExampleNet"]) == "src as 64500"
    assert _filter_of(ases["AS64501 OtherNet"]) == "src as 64501"


def test_drill_down_link_keeps_the_filter_and_narrows_to_the_country(
    client: TestClient,
) -> None:
    page = client.get("/?range=6h&filter=proto+tcp")
    link = dict(_rows(page.text, "dst-countries"))[f"{NL_FLAG} NL"]
    assert _filter_of(link) == "(proto tcp) and (dst country NL)"
    assert "range=6h" in link
    narrowed = client.get(link)
    assert narrowed.status_code == 200
    assert [text for text, _ in _rows(narrowed.text, "dst-countries")] == [f"{NL_FLAG} NL"]
    assert [text for text, _ in _rows(narrowed.text, "dst-ases")] == ["AS64500 ExampleNet"]
    assert [text for text, _ in _rows(narrowed.text, "destinations")] == ["203.0.113.9"]


def test_beyond_six_hours_the_tables_come_after_the_page(client: TestClient) -> None:
    page = client.get("/?range=24h&filter=proto+tcp")
    assert 'id="src-countries"' not in page.text
    placeholder = re.search(r'id="panel-geo" data-panel="([^"]+)"', page.text)
    assert placeholder, page.text
    panel = client.get(placeholder.group(1).replace("&amp;", "&"))
    assert panel.status_code == 200
    link = dict(_rows(panel.text, "dst-countries"))[f"{NL_FLAG} NL"]
    assert _filter_of(link) == "(proto tcp) and (dst country NL)"
    assert "range=24h" in link and "panel=" not in link


def test_host_page_has_the_panels_and_links_stay_on_the_host(client: TestClient) -> None:
    page = client.get("/flows/host/203.0.113.9?range=6h")
    assert page.status_code == 200
    rows = dict(_rows(page.text, "src-countries"))
    # Half the host's flows come from it (NL), the others from clients no database knows.
    assert set(rows) == {f"{NL_FLAG} NL", "unknown"}
    link = rows[f"{NL_FLAG} NL"]
    assert link.startswith("/flows/host/203.0.113.9?")
    assert _filter_of(link) == "src country NL"
    assert _filter_of(dict(_rows(page.text, "dst-ases"))["AS64500 ExampleNet"]) == "dst as 64500"


def test_flows_without_enrichment_say_how_to_get_it(tmp_path: Path) -> None:
    write_sample(tmp_path)
    plain = TestClient(make_app(tmp_path), follow_redirects=False)
    log_in(plain)
    page = plain.get("/?range=6h")
    assert page.status_code == 200
    assert 'id="geo-empty"' in page.text and "flows.enrich.geoip_country" in page.text
    assert 'id="src-countries"' not in page.text
    # No flows at all in the range: no panel (the other tables say there are none).
    empty = plain.get("/?range=custom&from=2001-01-01T00:00&to=2001-01-02T00:00")
    assert empty.status_code == 200
    assert 'id="geo-empty"' not in empty.text and 'id="src-countries"' not in empty.text


# -- in a browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(enriched: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("geo-serve")
    port = free_port()
    config = tmp / "lanalyze.toml"
    config.write_text(
        f'[general]\ndata_dir = "{enriched}"\nhostname = "mx.test.example"\n'
        "[flows]\nenabled = false\n[mail]\nenabled = false\n"
        f'[web]\nlisten = "127.0.0.1:{port}"\n'
        f'[[web.users]]\nname = "alice"\npassword_hash = "{ALICE_HASH}"\n'
    )
    proc = subprocess.Popen(
        [*lanalyze_cmd(), "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                break
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"serve did not start: {proc.communicate()[1]}") from exc
            time.sleep(0.1)
    try:
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_flags_and_as_panels_in_a_browser(server: str) -> None:
    chromium = require_tool("chromium")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=server, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(10_000)
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        try:
            page.goto("/login")
            page.get_by_label("User name").fill("alice")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.goto("/?range=6h")
            nl = page.locator("#dst-countries tbody tr", has_text="NL")
            expect(nl.locator(".flag")).to_have_text(NL_FLAG)
            expect(page.locator("#src-ases tbody tr", has_text="AS64500")).to_contain_text(
                "ExampleNet"
            )
            # The country's link narrows the dashboard: the filter box shows the term.
            nl.get_by_role("link").click()
            expect(page).to_have_url(re.compile(r"filter=dst\+country\+NL"))
            expect(page.get_by_label(re.compile("^Filter"))).to_have_value("dst country NL")
            expect(page.locator("#destinations tbody tr")).to_have_count(1)
            # Over a day the tables come after the page, put in place by its script.
            page.goto("/?range=24h")
            expect(
                page.locator("#dst-countries tbody tr", has_text="NL").locator(".flag")
            ).to_have_text(NL_FLAG)
            expect(page.locator("#panel-geo")).not_to_have_attribute("aria-busy", "true")
            # An AS link from the host page stays on the host.
            page.goto("/flows/host/203.0.113.9?range=6h")
            page.locator("#dst-ases tbody a", has_text="AS64500").click()
            expect(page).to_have_url(re.compile(r"/flows/host/203\.0\.113\.9\?.*dst\+as\+64500"))
            expect(page.locator("#flows tbody tr").first).to_be_visible()
        finally:
            context.close()
            browser.close()
    # Flags are text: the pages loaded nothing from anywhere but the console itself.
    assert requested and all(url.startswith(server) for url in requested), requested
