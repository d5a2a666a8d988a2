"""The alarm store as a JSON API: ``/api/alarms`` (a list with filters) and
``/api/alarms/detail`` (one alarm with its chart points and drill-down link).

The same read API as ``lanalyze alarms ls/show`` and the console's Alarms page
(:mod:`lanalyze.alarms.store`). Each route's query parameters are a typed model below (the
routes and their part of ``/api/openapi.json`` are generated from them, :mod:`lanalyze.web.api`).

Trust: query parameters are the (authenticated) user's; they reach SQL only as parameters,
subject text cut at 200 characters. Store reads run in a worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from prometheus_client import Counter, Histogram
from pydantic import Field
from starlette.requests import Request

from lanalyze import metrics
from lanalyze.alarms.config import ALGORITHMS, SEVERITIES
from lanalyze.alarms.store import AlarmQuery, AlarmStore
from lanalyze.flows.query.timespec import window
from lanalyze.web import api
from lanalyze.web.api import (
    ApiMetrics,
    Endpoint,
    Flag,
    Integer,
    Job,
    Params,
    SearchText,
    enum_of,
    member_of,
)
from lanalyze.web.errors import BadRequest

MAX_LIMIT = 1000

METRICS = ApiMetrics(
    Counter(
        "lanalyze_api_alarms_requests_total",
        "Alarm API requests, by route and outcome (ok, bad_request).",
        ["route", "outcome"],
        registry=metrics.REGISTRY,
    ),
    Histogram(
        "lanalyze_api_alarms_request_seconds",
        "Time to answer an alarm API request, by route.",
        ["route"],
        registry=metrics.REGISTRY,
        buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    ),
)

ANY = ("", *ALGORITHMS)
AlgorithmChoice = Annotated[str, member_of(ANY), enum_of(ANY)]
SEVERITY_CHOICES = ("", *SEVERITIES)
SeverityChoice = Annotated[str, member_of(SEVERITY_CHOICES), enum_of(SEVERITY_CHOICES)]


class AlarmParams(Params):
    open: Flag = Field(False, description="Open alarms only.")
    algorithm: AlgorithmChoice = Field("", description="This algorithm only.")
    severity: SeverityChoice = Field("", description="This severity only.")
    subject: SearchText = Field("", description="Subject contains this.")
    since: str | None = Field(
        None, description="Seen since: ISO 8601 or relative (-7d). Default: any time."
    )
    limit: Integer = Field(100, ge=1, le=MAX_LIMIT, description="Alarms at most, newest first.")

    def query(self) -> AlarmQuery:
        since = window(self.since, None, "-7d")[0] / 1000 if self.since else None
        return AlarmQuery(
            open_only=self.open,
            algorithm=self.algorithm,
            severity=self.severity,
            subject=self.subject,
            limit=self.limit,
            since=since,
        )


class DetailParams(Params):
    id: Integer = Field(ge=1, description="The alarm's id.", examples=[1])


def flows_link(alarm: dict[str, Any]) -> str | None:
    """The console's flow page for the alarm's flows: its filter, from its window's start to
    its last finding (plus a minute each side), or None when it has no filter."""
    from lanalyze.web.pages.flows import format_utc_minute

    if not alarm.get("filter"):
        return None
    since = int(min(alarm["window_start"], alarm["opened_at"]) * 1000) - 60_000
    until = int(alarm["last_seen"] * 1000) + 60_000
    query = {
        "range": "custom",
        "from": format_utc_minute(since),
        "to": format_utc_minute(until),
        "filter": alarm["filter"],
    }
    return "/flows?" + urlencode(query)


def _list(request: Request, p: AlarmParams) -> Job:
    query = p.query()
    data_dir: Path = request.app.state.console.data_dir

    def run() -> dict[str, Any]:
        store = AlarmStore.open_readonly(data_dir)
        if store is None:
            return {"total": 0, "rows": []}
        with store:
            found = store.search(query)
        return {"total": found.total, "rows": found.rows}

    return run


def detail(data_dir: Path, alarm_id: int) -> dict[str, Any] | None:
    """One alarm with its points and its drill-down link (the API and the page)."""
    store = AlarmStore.open_readonly(data_dir)
    if store is None:
        return None
    with store:
        alarm = store.get(alarm_id)
        if alarm is None:
            return None
        alarm["points"] = [[at, value] for at, value in store.points(alarm_id)]
    alarm["flows_link"] = flows_link(alarm)
    return alarm


def _detail(request: Request, p: DetailParams) -> Job:
    data_dir: Path = request.app.state.console.data_dir

    def run() -> dict[str, Any]:
        alarm = detail(data_dir, p.id)
        if alarm is None:
            raise BadRequest(f"id: no alarm {p.id}")
        return alarm

    return run


ENDPOINTS: list[Endpoint[Any]] = [
    Endpoint("/api/alarms", "Alarms, newest first", AlarmParams, "AlarmList", _list),
    Endpoint(
        "/api/alarms/detail",
        "One alarm with its evidence, chart points and flow drill-down link",
        DetailParams,
        "Alarm",
        _detail,
    ),
]

SCHEMAS: dict[str, Any] = {
    "AlarmList": {
        "type": "object",
        "properties": {
            "total": {"type": "integer"},
            "rows": {"type": "array", "items": {"$ref": "#/components/schemas/Alarm"}},
        },
    },
    "Alarm": {
        "type": "object",
        "description": "An alarm: `id`, `algorithm`, `subject`, `address`, `severity`, `state` "
        "(open, closed), `opened_at`, `updated_at`, `last_seen`, `closed_at` (Unix seconds), "
        "`findings`, `value`, `peak`, `threshold`, `unit`, `filter` (nfdump syntax), "
        "`window_start`, `evidence` (top targets, ports, sources; a mass mailer's `mail`), "
        "`ack_by`, `ack_at`; the detail adds `points` [[time, value]] and `flows_link`.",
    },
}

routes = [api.route(endpoint, METRICS, (BadRequest,)) for endpoint in ENDPOINTS]
