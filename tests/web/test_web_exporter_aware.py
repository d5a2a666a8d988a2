"""Interface pages count one exporter's interface, not an ifIndex summed over every router.

The sample store has two exporters (192.168.1.1 and 192.168.1.2) that both number their
interfaces 1 and 2, as routers do.
"""

from __future__ import annotations

import re
import time

import pytest
from starlette.testclient import TestClient

from lanalyze.flows.query import reports
from tests.web.helpers import log_in, make_app
from tests.web.sample_flows import write_sample


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    data_dir = tmp_path_factory.mktemp("flows")
    write_sample(data_dir)
    client = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(client)
    client.data_dir = data_dir  # type: ignore[attr-defined]
    return client


def _table(html: str, table: str) -> dict[str, int]:
    """label -> bytes of a top table."""
    body = html.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in body.split("<tbody>", 1)[1].split("</tr>")[:-1]:
        label = re.search(r'data-csv="([^"]*)"', row)
        value = re.search(r'<td class="num" data-value="(\d+)"', row)
        assert label and value
        rows[label.group(1)] = int(value.group(1))
    return rows


def _window() -> str:
    """The sample's two hours and more, as the pages' query string."""
    now = time.time()
    since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 4 * 3600))
    until = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now + 3600))
    return f"range=custom&from={since}&to={until}"


def _report(client: TestClient, by: str, flt: str) -> dict[str, int]:
    now = time.time_ns() // 1_000_000
    report = reports.top(
        client.data_dir / "flows",  # type: ignore[attr-defined]
        by,
        since=now - 5 * 3_600_000,
        until=now + 3_600_000,
        limit=10,
        filter=flt,
    )
    return {str(row.values[report.dimensions[0]]): row.bytes for row in report.rows}


def test_interface_page_counts_that_exporters_interface_only(client: TestClient) -> None:
    query = _window()
    page = client.get(f"/flows/interface/192.168.1.1/1?{query}")
    assert page.status_code == 200
    apps = _table(page.text, "applications")
    hosts = _table(page.text, "peers")
    assert apps == _report(client, "app", "router ip 192.168.1.1 and if 1")
    assert hosts == _report(client, "ip", "router ip 192.168.1.1 and if 1")
    # The other router's ifIndex 1 is another port: its traffic is not in these tables.
    assert apps != _report(client, "app", "if 1")
    flows = page.text.split('id="flows"', 1)[1].split("</table>", 1)[0]
    assert flows.count("<tr>") > 10
    assert "192.168.1.2" not in flows


def test_interface_page_keeps_the_users_filter(client: TestClient) -> None:
    query = _window()
    page = client.get(f"/flows/interface/192.168.1.2/2?{query}&filter=proto+udp")
    assert page.status_code == 200
    expected = _report(client, "app", "(proto udp) and (router ip 192.168.1.2 and if 2)")
    assert _table(page.text, "applications") == expected
    assert all(label.startswith("udp/") for label in expected)


def test_exporter_page_and_top_by_router(client: TestClient) -> None:
    query = _window()
    page = client.get(f"/flows/exporter/192.168.1.2?{query}")
    assert page.status_code == 200
    table = page.text.split('id="interfaces"', 1)[1].split("</table>", 1)[0]
    assert "192.168.1.2" in table and "192.168.1.1" not in table
    by_router = _report(client, "router", "")
    assert by_router == _report(client, "exporter", "")
    assert set(by_router) == {"192.168.1.1", "192.168.1.2"}


def test_flow_list_links_interfaces_with_their_exporter(client: TestClient) -> None:
    page = client.get(f"/flows/host/10.0.0.7?{_window()}&full=1")
    flows = page.text.split('id="flows"', 1)[1].split("</table>", 1)[0]
    links = set(re.findall(r'href="/flows/interface/([^/"]+)/(\d+)\?', flows))
    assert links and {exporter for exporter, _ in links} == {"192.168.1.1", "192.168.1.2"}
