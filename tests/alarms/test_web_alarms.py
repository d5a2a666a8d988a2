"""/api/alarms, /api/alarms/detail (in the OpenAPI document) and the console's Alarms pages."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from lanalyze.alarms.detect import Finding
from lanalyze.alarms.store import AlarmStore, store_path
from tests.web.helpers import csrf_of, log_in, make_app


@pytest.fixture
def client(data_dir: Path) -> TestClient:
    with AlarmStore(store_path(data_dir)) as store:
        scan = Finding(
            "scan_horizontal",
            "10.0.0.9 tcp/22",
            150,
            100,
            "hosts",
            {"targets": [{"address": "203.0.113.1", "flows": 1, "value": 1.0}]},
            "src ip 10.0.0.9 and proto tcp and dst port 22",
            1_700_000_000_000,
            "10.0.0.9",
        )
        store.record([scan], now=1_700_000_010)
        store.record([scan], now=1_700_000_020)
        flood = Finding("flood", "<b>198.51.100.1</b>", 40, 1, "x", {}, "", 0, "198.51.100.1")
        store.record([flood], now=1_700_000_030)
    client = TestClient(make_app(data_dir))
    log_in(client)
    return client


def test_api_lists_filters_and_details(client: TestClient) -> None:
    rows = client.get("/api/alarms").json()["rows"]
    assert [r["algorithm"] for r in rows] == ["flood", "scan_horizontal"]
    only = client.get("/api/alarms?algorithm=scan_horizontal&open=1").json()
    assert only["total"] == 1
    bad = client.get("/api/alarms?algorithm=nope")
    assert bad.status_code == 400 and "algorithm must be one of" in bad.json()["error"]
    detail = client.get(f"/api/alarms/detail?id={only['rows'][0]['id']}").json()
    assert [p[1] for p in detail["points"]] == [150, 150]
    link = urlsplit(detail["flows_link"])
    query = parse_qs(link.query)
    assert link.path == "/flows" and query["range"] == ["custom"]
    assert query["filter"] == ["src ip 10.0.0.9 and proto tcp and dst port 22"]
    assert query["from"] == ["2023-11-14T22:12"] and query["to"] == ["2023-11-14T22:14"]
    assert client.get("/api/alarms/detail?id=99").status_code == 400
    paths = client.get("/api/openapi.json").json()["paths"]
    assert {"/api/alarms", "/api/alarms/detail"} <= set(paths)


def test_pages_show_escape_and_ack(client: TestClient) -> None:
    page = client.get("/alarms?open=1")
    assert page.status_code == 200
    assert "10.0.0.9 tcp/22" in page.text
    assert "&lt;b&gt;198.51.100.1&lt;/b&gt;" in page.text and "<b>198" not in page.text
    [scan] = [r for r in client.get("/api/alarms").json()["rows"] if r["algorithm"] != "flood"]
    view = client.get(f"/alarms/{scan['id']}")
    assert view.status_code == 200
    assert "/flows?range=custom" in view.text and "/flows/host/10.0.0.9" in view.text
    assert "alarmvalue-data" in view.text
    refused = client.post(f"/alarms/{scan['id']}/ack", follow_redirects=False)
    assert refused.status_code == 403  # no CSRF token
    token = csrf_of(client, "/alarms")
    done = client.post(f"/alarms/{scan['id']}/ack", data={"csrf": token}, follow_redirects=False)
    assert done.status_code == 303
    assert client.get(f"/api/alarms/detail?id={scan['id']}").json()["ack_by"] == "alice"
    assert client.get("/alarms/999").status_code == 404
