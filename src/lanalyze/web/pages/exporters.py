"""``/exporters``: every exporter the collector has heard from, its counters and last contact.

Reads the collector's ``exporters.json`` (written atomically by the collector process), so the
page works whether the collector runs in this process or beside it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lanalyze.flows.exporters import read_exporters
from lanalyze.web.templating import render

STALE_MS = 5 * 60_000


def _load(data_dir: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        return read_exporters(data_dir), ""
    except FileNotFoundError:
        return None, "The collector has not written exporter counters here yet."
    except (OSError, ValueError) as exc:
        return None, f"Cannot read the exporter counters: {exc}"


async def exporters_page(request: Request) -> Response:
    console = request.app.state.console
    data, problem = await asyncio.to_thread(_load, console.data_dir)
    now_ms = time.time_ns() // 1_000_000
    rows = []
    drops: dict[str, int] = {}
    written = started = 0
    if data is not None:
        drops = {str(k): int(v) for k, v in (data.get("kernel_drops") or {}).items()}
        written = int(data.get("written_ms", 0))
        started = int(data.get("started_ms", 0))
        for row in data["exporters"]:
            last = int(row.get("last_seen_ms", 0))
            rows.append(
                {
                    "exporter": str(row.get("exporter", "?")),
                    "domain": int(row.get("observation_domain", 0)),
                    "version": int(row.get("version", 0)),
                    "packets": int(row.get("packets", 0)),
                    "flows": int(row.get("flows", 0)),
                    "sequence_gaps": int(row.get("sequence_gaps", 0)),
                    "decode_errors": int(row.get("decode_errors", 0)),
                    "dropped": int(row.get("unknown_template_records", 0)),
                    "last_seen": last,
                    "stale": bool(last) and now_ms - last > STALE_MS,
                }
            )
    return render(
        request,
        "exporters.html",
        {
            "rows": rows,
            "problem": problem,
            "kernel_drops": drops,
            "written": written,
            "started": started,
        },
    )


routes = [Route("/exporters", exporters_page)]
