"""Flow pages over stored test flows, without a browser: numbers, links, filter errors."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from lanalyze.flows.query import reports
from tests.web.helpers import log_in, make_app
from tests.web.sample_flows import TOP_TALKER, write_exporters_file, write_sample


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    data_dir = tmp_path_factory.mktemp("flows")
    write_sample(data_dir)
    write_exporters_file(data_dir)
    client = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(client)
    client.data_dir = data_dir  # type: ignore[attr-defined]
    return client


def _first_row(html: str, table: str) -> list[str]:
    body = html.split(f'id="{table}"', 1)[1].split("<tbody>", 1)[1]
    row = body.split("</tr>", 1)[0]
    return [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    ]


def test_dashboard_shows_the_same_numbers_as_the_reports_api(client: TestClient) -> None:
    page = client.get("/?range=6h")
    assert page.status_code == 200
    first = _first_row(page.text, "talkers")
    assert first[0] == TOP_TALKER
    now = time.time_ns() // 1_000_000
    report = reports.top(
        client.data_dir / "flows",
        "src_addr",
        since=now - 6 * 3600_000,
        until=now,
        limit=1,  # type: ignore[attr-defined]
    )
    expected = report.rows[0].bytes
    value = re.search(r'id="talkers".*?<td class="num" data-value="(\d+)"', page.text, re.S)
    assert value and int(value.group(1)) == expected
    for table in ("destinations", "applications", "conversations", "exporters", "interfaces"):
        assert f'id="{table}"' in page.text, table
    assert 'id="traffic-data"' in page.text


def test_drill_down_links_keep_range_filter_and_order(client: TestClient) -> None:
    page = client.get("/?range=24h&filter=proto+tcp&order=packets")
    link = re.search(rf'href="(/flows/host/{re.escape(TOP_TALKER)}\?[^"]+)"', page.text)
    assert link
    target = link.group(1).replace("&amp;", "&")
    assert "range=24h" in target and "filter=proto+tcp" in target and "order=packets" in target
    host = client.get(target)
    assert host.status_code == 200
    assert f"Host {TOP_TALKER}" in host.text
    assert 'id="flows"' in host.text
    # Over 24 hours the peers (raw flows only) are deferred to a panel the script fetches.
    panel = re.search(r'id="panel-peers" data-panel="([^"]+)"', host.text)
    assert panel
    peers = client.get(panel.group(1).replace("&amp;", "&"))
    assert peers.status_code == 200
    assert 'id="peers"' in peers.text and "range=24h" in peers.text
    assert TOP_TALKER not in _first_row(peers.text, "peers")[0]
    full = client.get(target + "&full=1")
    assert 'id="peers"' in full.text
    # Every flow listed involves the host and is TCP.
    rows = host.text.split('id="flows"', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert rows.count("<tr>") > 0
    for row in rows.split("<tr>")[1:]:
        assert TOP_TALKER in row and "<td>tcp</td>" in row


@pytest.mark.parametrize(
    "path",
    [
        "/flows/app/tcp/443",
        "/flows/app/udp/53",
        "/flows/conversation/10.0.0.7/192.0.2.10",
        "/flows/interface/192.168.1.1/1",
        "/flows/exporter/192.168.1.1",
        "/flows/host/2001:db8::1",
    ],
)
def test_drill_down_pages_render(client: TestClient, path: str) -> None:
    page = client.get(path + "?range=6h")
    assert page.status_code == 200, page.text[-500:]
    assert "No flows match" not in page.text.split('id="content"', 1)[1].split("</section>", 1)[0]


def test_bad_paths_are_404(client: TestClient) -> None:
    assert client.get("/flows/host/not-an-address").status_code == 404
    assert client.get("/flows/app/nope/80").status_code == 404
    assert client.get("/flows/app/tcp/70000").status_code == 404


def test_malformed_filter_shows_the_caret_under_the_mistake(client: TestClient) -> None:
    page = client.get("/", params={"filter": "proto tcp and port 99999"})
    assert page.status_code == 400
    block = re.search(r'<pre class="filter-error"[^>]*>(.*?)</pre>', page.text, re.S)
    assert block
    lines = block.group(1).splitlines()
    caret = lines[-1].index("^")
    assert lines[-2][caret:].startswith("99999"), lines
    assert 'aria-invalid="true"' in page.text


def test_filter_text_is_escaped_in_the_page(client: TestClient) -> None:
    page = client.get("/", params={"filter": '"><script>alert(1)</script>'})
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;" in page.text or "&#34;&gt;&lt;script" in page.text


def test_custom_range_and_bad_custom_range(client: TestClient) -> None:
    page = client.get("/?range=custom&from=2020-01-01T00:00&to=2020-01-02T00:00")
    assert page.status_code == 200
    assert "No flows match in this range." in page.text
    bad = client.get("/?range=custom&from=2020-01-02T00:00&to=2020-01-01T00:00")
    assert "showing the last hour" in bad.text


def test_exporters_page_lists_counters(client: TestClient) -> None:
    page = client.get("/exporters")
    assert page.status_code == 200
    assert "192.168.1.1" in page.text and "36,000" in page.text
    assert "0.0.0.0:2055" in page.text  # kernel drops
    assert "silent" in page.text  # 192.168.1.2 last seen an hour ago


def test_exporters_page_without_collector_file(tmp_path: Path) -> None:
    client = TestClient(make_app(tmp_path))
    log_in(client)
    page = client.get("/exporters")
    assert page.status_code == 200
    assert "has not written exporter counters" in page.text


def test_answer_cache_expires_and_is_bounded() -> None:
    from lanalyze.web.flowreports import AnswerCache

    cache = AnswerCache(ttl=0.05, max_entries=3)
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get_or_compute(("a",), compute) == 1
    assert cache.get_or_compute(("a",), compute) == 1
    time.sleep(0.06)
    assert cache.get_or_compute(("a",), compute) == 2
    for key in "bcde":
        cache.get_or_compute((key,), compute)
    assert len(cache._entries) == 3


def test_auto_refresh_choice_is_kept(client: TestClient) -> None:
    page = client.get("/?range=15m&refresh=30")
    assert 'data-refresh="30"' in page.text
    link = re.search(r'href="(/flows/host/[^"]+)"', page.text)
    assert link and "refresh=30" in link.group(1)
    assert 'data-refresh=""' in client.get("/?refresh=7").text  # unknown choice: off


def test_warming_fills_the_cache_for_the_dashboard(tmp_path: Path) -> None:
    from lanalyze.web import flowreports
    from lanalyze.web.pages.flows import warm_dashboards

    write_sample(tmp_path)
    flowreports.CACHE.clear()
    assert warm_dashboards(tmp_path, ["7d"]) == 6
    entries = len(flowreports.CACHE._entries)
    assert entries >= 5
    client = TestClient(make_app(tmp_path))
    log_in(client)
    assert client.get("/?range=7d").status_code == 200
    # Only the deferred conversations panel is missing; the rest was answered from memory
    # (a 7-day window ends on a whole hour, so the visit asks the same questions).
    assert len(flowreports.CACHE._entries) == entries


def _interface_rows(html: str) -> list[tuple[str, list[float]]]:
    """(exporter, data-values of the other cells) per row of the interfaces table."""
    table = html.split('id="interfaces"', 1)[1].split("</table>", 1)[0]
    rows = []
    for row in table.split("<tbody>", 1)[1].split("</tr>")[:-1]:
        exporter = re.sub(r"<[^>]+>", "", re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[0])
        values = [float(v) for v in re.findall(r'data-value="([^"]+)"', row)]
        rows.append((exporter.strip(), values))
    return rows


def test_interfaces_table_has_packets_and_flows_equal_to_raw_flows(client: TestClient) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from tests.web.sample_flows import mapped

    now = time.time()
    since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 4 * 3600))
    until = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now + 3600))
    files = sorted((client.data_dir / "flows" / "raw").glob("*/*.parquet"))  # type: ignore[attr-defined]
    raw = pq.ParquetFile(files[0]).read().to_pydict()
    for path in files[1:]:
        more = pq.ParquetFile(path).read().to_pydict()
        raw = {name: raw[name] + more[name] for name in raw}
    scale = np.array(raw["sampling_rate"], dtype=np.int64)
    expected: dict[tuple[str, int], list[int]] = {}
    for exporter in ("192.168.1.1", "192.168.1.2"):
        mine = np.array([e == mapped(exporter) for e in raw["exporter"]])
        for ifindex in (1, 2):
            counts = []
            for side in ("in_if", "out_if"):
                on = mine & (np.array(raw[side]) == ifindex)
                counts.append(int((np.array(raw["packets"])[on] * scale[on]).sum()))
                counts.append(int(on.sum()))
            # as the table: packets in, packets out, flows in, flows out
            expected[(exporter, ifindex)] = [counts[0], counts[2], counts[1], counts[3]]
    for order, first, second in (("packets", 0, 1), ("flows", 2, 3), ("bytes", None, None)):
        page = client.get(f"/?range=custom&from={since}&to={until}&order={order}")
        assert page.status_code == 200
        head = page.text.split('id="interfaces"', 1)[1].split("</thead>", 1)[0]
        for name in ("in_packets", "out_packets", "in_flows", "out_flows"):
            assert f'data-csv-name="{name}"' in head, name
        rows = _interface_rows(page.text)
        got = {(exporter, int(v[0])): [int(x) for x in v[-4:]] for exporter, v in rows}
        assert got == expected
        if first is not None:
            totals = [v[-4:][first] + v[-4:][second] for _, v in rows]
            assert totals == sorted(totals, reverse=True), order
        else:
            totals = [v[3] + v[4] for _, v in rows]
            assert totals == sorted(totals, reverse=True)


def test_flow_table_is_on_the_report_time_axis(tmp_path: Path) -> None:
    """Replayed captures: flows started years before the collector received them. The flow
    table shows (and is ordered by) the receive time the charts bucket by."""
    from tests.web.sample_flows import mapped, sample_flows, write_flows

    now = time.time_ns() // 1_000_000
    batch = sample_flows(now, 300)
    batch["time_start"] -= 5 * 365 * 86_400_000
    batch["time_end"] -= 5 * 365 * 86_400_000
    write_flows(tmp_path, batch)
    client = TestClient(make_app(tmp_path), follow_redirects=False)
    log_in(client)
    page = client.get(f"/flows/host/{TOP_TALKER}?range=1h").text
    table = page.split('id="flows"', 1)[1].split("</table>", 1)[0]
    assert "Received (UTC)" in table and "Start (UTC)" not in table
    shown = [int(v) for v in re.findall(r'<tr>\s*<td data-value="(\d+)"', table)]
    assert shown and shown == sorted(shown, reverse=True)
    host = mapped(TOP_TALKER)
    involved = (batch["src_addr"] == host) | (batch["dst_addr"] == host)
    assert shown[0] == int(batch["time_received"][involved].max())
    assert shown[0] > now - 3_600_000  # not the start time, years ago
