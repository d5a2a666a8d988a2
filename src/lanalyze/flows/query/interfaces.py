"""Interface names and speeds for the reports: ``<data_dir>/flows/interfaces.json``.

The file is written by the SNMP poller (:mod:`lanalyze.flows.snmp`) in the collector process
and read here by every report process (CLI, API, console), cached by modification time so a
report does not parse it again while it is unchanged. It holds what exporters' agents told us:
names are shown as text and never interpreted; a missing, unreadable or odd file only means
the reports stay on ifIndex.

Shape: ``{exporter: {ifIndex: {name, alias, description, speed_bps, polled_at}}}``.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lanalyze.flows.store.paths import interfaces_path

TEXT_FIELDS = ("name", "alias", "description")

Known = Mapping[str, Mapping[int, Mapping[str, Any]]]

_lock = threading.Lock()
_cache: dict[Path, tuple[tuple[int, int], Known]] = {}


def _clean(data: object) -> Known:
    """Keep the well-formed entries of a parsed file (ours, but maybe from another version)."""
    known: dict[str, dict[int, dict[str, Any]]] = {}
    if not isinstance(data, dict):
        return known
    for exporter, table in data.items():
        if not isinstance(exporter, str) or not isinstance(table, dict):
            continue
        entries: dict[int, dict[str, Any]] = {}
        for index, info in table.items():
            if not isinstance(info, dict) or not str(index).isdigit():
                continue
            entry: dict[str, Any] = {
                field: info[field] if isinstance(info.get(field), str) else None
                for field in TEXT_FIELDS
            }
            speed = info.get("speed_bps")
            entry["speed_bps"] = speed if isinstance(speed, int) and speed > 0 else None
            entries[int(index)] = entry
        known[exporter] = entries
    return known


def load(flow_dir: Path) -> Known:
    """The last polled names and speeds; empty when SNMP never ran or the file is unreadable."""
    path = interfaces_path(flow_dir)
    try:
        stat = path.stat()
    except OSError:
        return {}
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    try:
        known = _clean(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        known = {}
    with _lock:
        if len(_cache) > 64:  # one entry per data directory; tests make many
            _cache.clear()
        _cache[path] = (stamp, known)
    return known


def _percent(bps: float, speed: int | None) -> float | None:
    return round(bps * 100 / speed, 3) if speed else None


def describe(known: Known, exporter: str, index: int) -> dict[str, Any]:
    """``name``, ``alias``, ``description`` and ``speed_bps`` of one interface (None: unknown)."""
    info = known.get(exporter, {}).get(index, {})
    return {
        "name": info.get("name") or None,
        "alias": info.get("alias") or None,
        "description": info.get("description") or None,
        "speed_bps": info.get("speed_bps"),
    }


def annotate_rows(flow_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add names, speed and in/out utilisation (% of speed) to top-interface rows in place."""
    known = load(flow_dir)
    for row in rows:
        row.update(describe(known, row["exporter"], row["interface"]))
        row["in_util_pct"] = _percent(row["in_bps"], row["speed_bps"])
        row["out_util_pct"] = _percent(row["out_bps"], row["speed_bps"])
    return rows


def annotate_series(flow_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Add names and speed to one interface's series, and utilisation to each point."""
    known = load(flow_dir)
    address = ipaddress.ip_address(report["exporter"])
    exporter = str(getattr(address, "ipv4_mapped", None) or address)  # as rows name them
    report.update(describe(known, exporter, report["interface"]))
    speed = report["speed_bps"]
    for point in report["points"]:
        point["in_util_pct"] = _percent(point["in_bps"], speed)
        point["out_util_pct"] = _percent(point["out_bps"], speed)
    return report


def annotate_flows(flow_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``in_if_name`` and ``out_if_name`` (None: unknown) to raw flow records in place."""
    known = load(flow_dir)
    for record in records:
        table = known.get(record["exporter"], {})
        for side in ("in_if", "out_if"):
            info = table.get(record[side]) if record.get(side) is not None else None
            record[f"{side}_name"] = (info or {}).get("name") or None
    return records
