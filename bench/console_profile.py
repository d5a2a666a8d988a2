"""Where a console page's time goes, per report: DuckDB time vs planning (manifest, listings).

Runs the reports of the dashboard (and of the host and application drill-downs) in-process on
the store that ``bench/console_bench.py`` generated, with the answer cache cleared, and prints
for each report its wall time, the time inside DuckDB, the time in the planner, and the plan
(which rollup tables and how many files). There is no peer: the reference is the issue's
500 ms per page, of which the browser takes another 100-200 ms.

    .venv/bin/python bench/console_profile.py [--flows 10000000] [--days 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lanalyze.flows.query import engine, filtered, planner  # noqa: E402
from lanalyze.flows.query.reports import common, flowlist, iface  # noqa: E402
from lanalyze.web import flowreports  # noqa: E402
from lanalyze.web.pages import flows as pages  # noqa: E402

TARGET_MS = 500.0
_spent = {"sql": 0.0, "plan": 0.0}
_plans: list[str] = []


def _instrument() -> None:
    # Every report plans through the planner module and runs through the engine's backend:
    # both are looked up at call time, so wrapping them here times every report.
    backend = engine.backend()
    execute = backend.execute
    plan = planner.plan

    def timed_execute(statement: Any) -> list[tuple[Any, ...]]:
        started = time.perf_counter()
        try:
            rows: list[tuple[Any, ...]] = execute(statement)
            return rows
        finally:
            _spent["sql"] += time.perf_counter() - started

    def timed_plan(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = plan(*args, **kwargs)
        finally:
            _spent["plan"] += time.perf_counter() - started
        _plans.append(result.describe())
        return result

    backend.execute = timed_execute  # type: ignore[method-assign]
    for module in (common, flowlist, iface):
        module.plan = timed_plan  # type: ignore[attr-defined]
    # A drill-down's shared filtered scan runs its DuckDB query outside _execute.
    scan = filtered.flows

    def timed_scan(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return scan(*args, **kwargs)
        finally:
            _spent["sql"] += time.perf_counter() - started

    filtered.flows = timed_scan  # type: ignore[assignment]


def _page_calls(data: Path, name: str) -> dict[str, Callable[[], Any]]:
    view = pages.view_from({"range": "24h"})
    if name.startswith("dashboard"):
        _, choice, *rest = name.split(" ")
        flt = " ".join(rest)
        view = pages.view_from({"range": choice, "filter": flt})
        calls = pages.dashboard_queries(data, view, flt)
        return {k: v for k, v in calls.items() if not (k in pages.PANELS and view.heavy_is_lazy)}
    if name == "host 24h":
        w = flowreports.Window(view.since_ms, view.until_ms, "host 10.0.0.1")
        return {
            "series": lambda: flowreports.series(data, w, "app", 6),
            "apps": lambda: flowreports.top(data, w, "app", "bytes", 10),
            "flows": lambda: flowreports.flows(data, w, 50),
        }
    w = flowreports.Window(view.since_ms, view.until_ms, "proto 6 and port 443")
    return {
        "series": lambda: flowreports.series(data, w, "src_addr", 6),
        "talkers": lambda: flowreports.top(data, w, "src_addr", "bytes", 10),
        "destinations": lambda: flowreports.top(data, w, "dst_addr", "bytes", 10),
        "flows": lambda: flowreports.flows(data, w, 50),
    }


PAGES = [
    "dashboard 1h",
    "dashboard 24h",
    "dashboard 7d",
    "dashboard 30d",
    "dashboard 30d proto tcp",
    "host 24h",
    "application 24h",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = ROOT / "bench" / "out" / f"console-{args.flows}-{args.days}"
    if not (data / "generated.json").exists():
        raise SystemExit(f"{data} is missing: run bench/console_bench.py first")
    _instrument()
    figures: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    plans: dict[tuple[str, str], str] = {}
    for _ in range(args.rounds):
        for page in PAGES:
            flowreports.CACHE.clear()
            filtered.clear()
            for report, call in _page_calls(data, page).items():
                _spent.update(sql=0.0, plan=0.0)
                _plans.clear()
                started = time.perf_counter()
                call()
                wall = time.perf_counter() - started
                figures.setdefault((page, report), []).append(
                    (wall * 1000, _spent["sql"] * 1000, _spent["plan"] * 1000)
                )
                plans[(page, report)] = "; ".join(dict.fromkeys(_plans))
    print(f"{'page':24} {'report':13} {'ms':>6} {'duckdb':>6} {'plan':>5}  plan (medians)")
    totals: dict[str, float] = {}
    for (page, report), runs in figures.items():
        wall, sql, planning = (statistics.median(r[i] for r in runs) for i in range(3))
        totals[page] = totals.get(page, 0.0) + wall
        print(
            f"{page:24} {report:13} {wall:6.0f} {sql:6.0f} {planning:5.0f}  {plans[page, report]}"
        )
    print(f"\n{'page':24} {'target ms':>9} {'ours ms':>7} {'ratio':>6}")
    for page, total in totals.items():
        print(f"{page:24} {TARGET_MS:9.0f} {total:7.0f} {total / TARGET_MS:6.2f}")


if __name__ == "__main__":
    main()
