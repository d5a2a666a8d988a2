"""Alarm pages: the list with filters, one alarm with its chart, evidence and drill-downs,
and acknowledging it (a POST, which the auth middleware lets through only with the session's
CSRF token; the user acknowledging is the logged-in one).

Reads go through the alarm store's read API (:mod:`lanalyze.alarms.store`) in threads; the
list takes the API's parameters leniently (a bad one falls back to its default).
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from lanalyze.alarms.config import ALGORITHMS, SEVERITIES
from lanalyze.alarms.store import AlarmStore, store_path
from lanalyze.web.api_alarms import AlarmParams, detail
from lanalyze.web.templating import render


def _data_dir(request: Request) -> Path:
    return Path(request.app.state.console.data_dir)


async def alarm_list(request: Request) -> Response:
    params = AlarmParams.lenient(request.query_params)
    data_dir = _data_dir(request)

    def run() -> dict[str, Any]:
        store = AlarmStore.open_readonly(data_dir)
        if store is None:
            return {"total": 0, "rows": []}
        with store:
            found = store.search(params.query())
        return {"total": found.total, "rows": found.rows}

    result = await asyncio.to_thread(run)
    return render(
        request,
        "alarms.html",
        {
            "result": result,
            "form": params,
            "algorithms": ALGORITHMS,
            "severities": SEVERITIES,
        },
    )


def chart_data(alarm: dict[str, Any]) -> dict[str, Any]:
    """The alarm's value over time as the console's chart data."""
    times = [int(at * 1000) for at, _ in alarm["points"]]
    steps = [b - a for a, b in itertools.pairwise(times) if b > a]
    return {
        "times": times,
        "since": times[0] if times else 0,
        "until": times[-1] + (min(steps) if steps else 1000) if times else 0,
        "bucket_ms": min(steps) if steps else 1000,
        "unit": alarm["unit"],
        "integer": False,
        "stacked": False,
        "series": [{"name": "value", "values": [float(v) for _, v in alarm["points"]]}],
    }


def drill_links(alarm: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, URL) of the flow pages for the alarm's host, exporter or flows."""
    links: list[tuple[str, str]] = []
    if alarm.get("flows_link"):
        links.append(("Matching flows", alarm["flows_link"]))
    address = alarm.get("address") or ""
    interface = alarm.get("evidence", {}).get("interface")
    if address and alarm["algorithm"] == "interface_utilisation" and interface is not None:
        links.append(("Interface", f"/flows/interface/{quote(address, safe='')}/{int(interface)}"))
    if address and alarm["algorithm"] in ("exporter_silent", "exporter_loss", "template_churn"):
        links.append(("Exporter", f"/flows/exporter/{quote(address, safe='')}"))
    elif address:
        links.append(("Host", f"/flows/host/{quote(address, safe='')}"))
    if alarm["algorithm"] == "mass_mailer" and address:
        links.append(("Mail from this host", "/mail/rejected?client=" + quote(address)))
    return links


async def alarm_view(request: Request) -> Response:
    alarm_id = int(request.path_params["alarm_id"])
    alarm = await asyncio.to_thread(detail, _data_dir(request), alarm_id)
    if alarm is None:
        raise HTTPException(404, "no such alarm")
    return render(
        request,
        "alarm.html",
        {
            "alarm": alarm,
            "chart_data": chart_data(alarm),
            "links": drill_links(alarm),
            "done": request.query_params.get("done", ""),
        },
    )


async def alarm_ack(request: Request) -> Response:
    alarm_id = int(request.path_params["alarm_id"])
    session = request.scope.get("state", {}).get("session")
    who = session.user if session is not None else "api"
    path = store_path(_data_dir(request))

    def run() -> bool:
        if not path.exists():
            return False
        with AlarmStore(path) as store:
            return store.ack(alarm_id, who)

    if not await asyncio.to_thread(run):
        raise HTTPException(404, "no such alarm")
    return RedirectResponse(f"/alarms/{alarm_id}?done=ack", status_code=303)


routes = [
    Route("/alarms", alarm_list),
    Route("/alarms/{alarm_id:int}", alarm_view),
    Route("/alarms/{alarm_id:int}/ack", alarm_ack, methods=["POST"]),
]
