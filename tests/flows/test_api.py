"""The JSON API: same reports as the CLI, 400 with the message on bad input, OpenAPI."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from lanalyze.flows.query import reports
from lanalyze.flows.store.synthetic import random_flows, write_flows
from lanalyze.web import api_alarms, api_flows, api_mail
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
    api_routes = [*api_flows.routes, *api_mail.routes, *api_alarms.routes]
    api_paths = {
        r.path
        for r in api_routes
        if r.path.startswith(("/api/flows/", "/api/mail/", "/api/alarms"))
    }  # type: ignore[attr-defined]
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


def test_openapi_document_is_valid_openapi(client: TestClient) -> None:
    from openapi_spec_validator import validate

    document = client.get("/api/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    validate(document)


def _query_names(source: str) -> set[str]:
    """The query parameters a handler's source reads by name (``query_params.get("x")``)."""
    return set(re.findall(r"query_params(?:\.get\(|\[)[\"']([a-z_]+)[\"']", source))


def test_openapi_describes_every_parameter_of_every_route() -> None:
    """Each route's parameters are exactly its model's fields, each described and typed."""
    endpoints = {
        e.path: e for e in [*api_flows.ENDPOINTS, *api_mail.ENDPOINTS, *api_alarms.ENDPOINTS]
    }
    for path, item in api_flows.OPENAPI["paths"].items():
        endpoint = endpoints[path]
        parameters = item["get"]["parameters"]
        fields = {f.alias or name for name, f in endpoint.params.model_fields.items()}
        assert {p["name"] for p in parameters} == fields, path
        for parameter in parameters:
            assert parameter["in"] == "query"
            assert parameter["description"].strip(), (path, parameter["name"])
            schema = parameter["schema"]
            assert schema.get("type") in ("string", "integer", "boolean"), (path, parameter)
            # Only keywords the checks implement (a stray `ge` would be a bound unsaid).
            assert set(schema) <= {"type", "default", "minimum", "maximum", "enum", "examples"}, (
                path,
                parameter,
            )
        # Nothing read from the query string behind the model's back.
        source = inspect.getsource(endpoint.prepare)
        assert _query_names(source) <= fields, path
    for module in (api_flows, api_mail, api_alarms):
        assert not _query_names(inspect.getsource(module)), module


def _bad_values(schema: dict[str, Any]) -> list[str]:
    """Values the document says a parameter does not take."""
    bad = []
    if schema.get("type") == "integer":
        bad.append("ten")
        bad.append("1.5")
        if "minimum" in schema:
            bad.append(str(schema["minimum"] - 1))
        if "maximum" in schema:
            bad.append(str(schema["maximum"] + 1))
    if "enum" in schema:
        bad.append("no-such-choice")
    return bad


def _api_client(tmp_path: Path, flow_dir: Path) -> TestClient:
    app = Starlette(routes=[*api_flows.routes, *api_mail.routes, *api_alarms.routes])
    app.state.flow_dir = flow_dir
    app.state.console = SimpleNamespace(data_dir=tmp_path)
    return TestClient(app)


def test_every_value_the_document_excludes_is_a_400_naming_the_parameter(
    tmp_path: Path, flow_dir: Path
) -> None:
    """The document and the checks agree: out of range, wrong type, not in the enum -> 400."""
    client = _api_client(tmp_path, flow_dir)
    # What each route needs to get past its own required parameters.
    needs = {"/api/flows/top": {"by": "srcip"}}
    tried = 0
    for path, item in api_flows.OPENAPI["paths"].items():
        for parameter in item["get"]["parameters"]:
            name = parameter["name"]
            for value in _bad_values(parameter["schema"]):
                params = {**needs.get(path, {}), **WINDOW, name: value}
                if name == "if":
                    params["exporter"] = "192.0.2.1"
                response = client.get(path, params=params)
                assert response.status_code == 400, (path, name, value, response.text)
                error = response.json()["error"]
                tried += 1
                # The reports layer words its own ranges (the CLI's messages): "limit",
                # "number of series", "interface"; every other message names the parameter.
                assert name in error or any(
                    word in error for word in ("limit", "number of series", "interface")
                ), (path, name, value, error)
    assert tried > 30


def test_documented_defaults_are_the_defaults(tmp_path: Path, flow_dir: Path) -> None:
    client = _api_client(tmp_path, flow_dir)
    top = client.get("/api/flows/top", params={"by": "srcip", **WINDOW}).json()
    assert len(top["rows"]) == 10 and top["order"] == "bytes"
    listed = client.get("/api/flows/list", params=WINDOW).json()
    assert len(listed["flows"]) == 20
    # An empty parameter is an absent one.
    same = client.get("/api/flows/top", params={"by": "srcip", "n": "", "order": "", **WINDOW})
    assert same.json()["rows"] == top["rows"]


def test_required_parameter_missing_says_so(client: TestClient) -> None:
    response = client.get("/api/flows/top")
    assert response.status_code == 400
    assert response.json() == {"error": "by is required (for example by=srcip)"}
    pair = client.get("/api/flows/interfaces", params={"if": "3"})
    assert pair.status_code == 400 and pair.json()["error"] == "exporter and if go together"


def test_answers_match_the_documented_schemas(client: TestClient) -> None:
    from openapi_schema_validator import OAS31Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    document = client.get("/api/openapi.json").json()
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:api", resource)
    calls = [
        ("/api/flows/top", {"by": "srcip,proto", "n": "3"}),
        ("/api/flows/series", {"by": "dstport", "n": "3"}),
        ("/api/flows/list", {"n": "3"}),
        ("/api/flows/interfaces", {}),
        ("/api/flows/status", {}),
        ("/api/flows/exporters", {}),
    ]
    for path, params in calls:
        response = client.get(path, params={**params, **WINDOW})
        assert response.status_code == 200, response.text
        schema = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"
        ]
        ref = "urn:api" + schema["$ref"]
        OAS31Validator({"$ref": ref}, registry=registry).validate(response.json())
    bad = client.get("/api/flows/top", params={"by": "srcip", "filter": "port 99999"})
    OAS31Validator({"$ref": "urn:api#/components/schemas/Error"}, registry=registry).validate(
        bad.json()
    )


def test_api_in_the_console_app_needs_a_login(flow_dir: Path) -> None:
    app = make_app(flow_dir.parent)
    with TestClient(app) as browser:
        assert browser.get("/api/flows/status").status_code == 401
        log_in(browser)
        response = browser.get("/api/flows/top", params={"by": "dstport", **WINDOW})
        assert response.status_code == 200, response.text
        assert response.json()["total"]["flows"] == 5000
        assert browser.get("/api/openapi.json").status_code == 200


def test_openapi_document_is_readable_without_login(flow_dir: Path) -> None:
    with TestClient(make_app(flow_dir.parent)) as anonymous:
        response = anonymous.get("/api/openapi.json")
        assert response.status_code == 200
        assert "/api/flows/top" in response.json()["paths"]
        assert anonymous.get("/api/openapi.jsonx").status_code == 401


def test_only_the_documented_name_is_read(client: TestClient) -> None:
    # `if` is a Python keyword, so the model's field has another name; only `if` counts.
    response = client.get(
        "/api/flows/interfaces", params={"exporter": "192.0.2.1", "interface": "1", **WINDOW}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "exporter and if go together"
