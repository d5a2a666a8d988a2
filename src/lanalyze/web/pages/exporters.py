"""``/exporters``: every exporter heard from or stored, its counters, stored totals, last contact.

Shows :func:`~lanalyze.flows.query.reports.exporters.exporters_overview`: the collector's
``exporters.json`` (written atomically by the collector process, so the page works whether
the collector runs in this process or beside it; its counters restart at every collector
start) merged with what the store holds per exporter, the same answer as ``flows exporters``
and ``/api/flows/exporters``. A store too big to read in the raw budget does not fail the
page: the overview says what it could not count.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lanalyze.flows.exporters import version_label
from lanalyze.flows.query.reports.exporters import ExportersOverview, exporters_overview
from lanalyze.web.templating import render

STALE_MS = 5 * 60_000


def _problem(overview: ExportersOverview) -> str:
    if overview.collector is not None:
        return ""
    if overview.collector_missing:
        return "The collector has not written exporter counters here yet."
    return f"Cannot read the exporter counters: {overview.collector_problem}"


async def exporters_page(request: Request) -> Response:
    console = request.app.state.console
    overview = await asyncio.to_thread(exporters_overview, console.data_dir)
    now_ms = time.time_ns() // 1_000_000
    rows = []
    collector = overview.collector or {}
    drops = {str(k): int(v) for k, v in (collector.get("kernel_drops") or {}).items()}
    written = int(collector.get("written_ms", 0))
    started = int(collector.get("started_ms", 0))
    for row in overview.rows:
        live, stored = row.live, row.stored
        last = live.last_seen_ms if live else 0
        rows.append(
            {
                "exporter": row.exporter,
                "live": live is not None,
                "domain": live.observation_domain if live else None,
                "version": live.version if live else None,
                "version_label": version_label(live.version) if live else "",
                "packets": live.packets if live else None,
                "flows": live.flows if live else None,
                "sequence_gaps": live.sequence_gaps if live else None,
                "decode_errors": live.decode_errors if live else None,
                "dropped": live.unknown_template_records if live else None,
                "last_seen": last,
                "stale": bool(last) and now_ms - last > STALE_MS,
                "stored_flows": stored.flows if stored else 0,
                "stored_bytes": stored.bytes if stored else 0,
                "stored_first": stored.first_ms if stored else None,
                "stored_last": stored.last_ms if stored else None,
            }
        )
    return render(
        request,
        "exporters.html",
        {
            "rows": rows,
            "problem": _problem(overview),
            "unread": overview.stored.unread,
            "kernel_drops": drops,
            "written": written,
            "started": started,
        },
    )


routes = [Route("/exporters", exporters_page)]
