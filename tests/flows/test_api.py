"""The JSON API: same reports as the CLI, 400 with the message on bad input, OpenAPI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from lanalyze.flows.query import reports
from lanalyze.flows.store.synthetic import random_flows, write_flows
from lanalyze.web import api_flows, api_mail
from tests.web.helpers import log_in, make_app

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
WINDOW = {"since": "2023-11-14T22:00:00Z", "until": "2023-11-15T00:00:00Z"}


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    flows = data / "flows"
    write_flows(flows, random_flows(5_000, T0, T0 + 2 * HOUR, seed=11), segment_ms=HOUR)
    (flows / "exporters.json").write_text(
        json.dumps({"exporters": [{"exporter": "192.0.2.1", "flows": 5000}]})
    )
    return flows


@pytest.fixture(scope="module")
def client(flow_dir: Path) -> TestClient:
    app = Starlette(routes=api_flows.routes)
    app.state.flow_dir = flow_dir
    return TestClient(app)


def test_top_equals_the_python_report(client: TestClient, flow_dir: Path) -> None:
    response = client.get("/api/flows/top", params={"by": "srcip,proto", "n": "5", **WINDOW})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = reports.top(flow_dir, "srcip,proto", since=T0, until=T0 + 2 * HOUR, limit=5)
    assert body["rows"] == [row.to_json() for row in expected.rows]
    assert body["total"]["flows"] == 5000
    assert set(body["rows"][0]) == {
        "srcip",
        "proto",
        "bytes",
        "packets",
        "flows",
        "bps",
        "pps",
        "share",
    }


def test_interfaces_carry_packets_and_flows_ranked_by_order(
    client: TestClient, flow_dir: Path
) -> None:
    for order in ("bytes", "packets", "flows"):
        response = client.get("/api/flows/interfaces", params={"n": "0", "order": order, **WINDOW})
        assert response.status_code == 200, response.text
        rows = response.json()["interfaces"]
        assert rows == [
            row.to_json()
            for row in reports.top_interfaces(
                flow_dir, since=T0, until=T0 + 2 * HOUR, order=order, limit=0, use_rollups=False
            )
        ]
        totals = [row[f"in_{order}"] + row[f"out_{order}"] for row in rows]
        assert totals == sorted(totals, reverse=True)
        # Every flow counts once in and once out.
        assert sum(row["in_flows"] for row in rows) == sum(row["out_flows"] for row in rows) == 5000
    bad = client.get("/api/flows/interfaces", params={"order": "bits", **WINDOW})
    assert bad.status_code == 400 and "order must be" in bad.json()["error"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/flows/series", {"by": "dstport", "n": "3", "bucket": "10m"}),
        ("/api/flows/list", {"n": "5", "filter": "proto udp"}),
        ("/api/flows/interfaces", {}),
        ("/api/flows/interfaces", {"exporter": "192.0.2.1", "if": "1", "bucket": "1h"}),
        ("/api/flows/status", {}),
        ("/api/flows/exporters", {}),
    ],
)
def test_other_reports(client: TestClient, path: str, params: dict[str, str]) -> None:
    response = client.get(path, params={**params, **WINDOW})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body
    if path.endswith("/list"):
        assert len(body["flows"]) == 5
        assert all(flow["protocol"] == 17 for flow in body["flows"])
    if path.endswith("/series"):
        assert body["groups"][-1] == "other"
        assert sum(p["flows"] for p in body["points"]) == 5000


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"by": "nosuch"}, "unknown dimension"),
        ({}, "by is required"),
        ({"by": "srcip", "n": "ten"}, "n must be an integer"),
        ({"by": "srcip", "order": "bits"}, "order must be"),
        ({"by": "srcip", "since": "yesterday"}, "cannot read time"),
        ({"by": "srcip", "n": "-1"}, "limit must be"),
    ],
)
def test_validation_errors_are_400(
    client: TestClient, params: dict[str, str], fragment: str
) -> None:
    response = client.get("/api/flows/top", params=params)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_requests_are_counted(client: TestClient) -> None:
    from lanalyze import metrics

    client.get("/api/flows/status")
    client.get("/api/flows/top", params={"by": "nosuch"})
    text = metrics.render().decode()
    assert 'lanalyze_api_flow_reports_total{outcome="ok",report="status"}' in text
    assert 'lanalyze_api_flow_reports_total{outcome="bad_request",report="top"}' in text


def test_filter_error_carries_the_caret(client: TestClient) -> None:
    response = client.get("/api/flows/top", params={"by": "srcip", "filter": "port 99999"})
    assert response.status_code == 400
    body = response.json()
    assert body["filter"] == {
        "message": "number out of range (0 to 65535)",
        "text": "port 99999",
        "column": 5,
    }
    assert body["error"].splitlines()[2] == "       ^"


def test_openapi_document_lists_every_route(client: TestClient) -> None:
    document = client.get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.")
    api_routes = [*api_flows.routes, *api_mail.routes]
    api_paths = {r.path for r in api_routes if r.path.startswith(("/api/flows/", "/api/mail/"))}  # type: ignore[attr-defined]
    assert set(document["paths"]) == api_paths
    top = document["paths"]["/api/flows/top"]["get"]
    assert {p["name"] for p in top["parameters"]} >= {
        "by",
        "order",
        "n",
        "since",
        "until",
        "filter",
    }


def test_api_in_the_console_app_needs_a_login(flow_dir: Path) -> None:
    app = make_app(flow_dir.parent)
    with TestClient(app) as browser:
        assert browser.get("/api/flows/status").status_code == 401
        log_in(browser)
        response = browser.get("/api/flows/top", params={"by": "dstport", **WINDOW})
        assert response.status_code == 200, response.text
        assert response.json()["total"]["flows"] == 5000
        assert browser.get("/api/openapi.json").status_code == 200
