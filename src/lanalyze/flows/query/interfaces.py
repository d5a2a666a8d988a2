"""Interface names and speeds for the reports: ``<data_dir>/flows/interfaces.json``.

The file is written by the SNMP poller (:mod:`lanalyze.flows.snmp`) in the collector process
and read here by every report process (CLI, API, console), cached by modification time so a
report does not parse it again while it is unchanged. It holds what exporters' agents told us:
names are shown as text and never interpreted; a missing, unreadable or odd file only means
the reports stay on ifIndex.

Shape: ``{exporter: {ifIndex: {name, alias, description, speed_bps, polled_at}}}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class InterfaceInfo:
    """What an exporter's agent said of one interface (None: unknown)."""

    name: str | None = None
    alias: str | None = None
    description: str | None = None
    speed_bps: int | None = None


def percent(bps: float, speed: int | None) -> float | None:
    """Average bits/s as % of the interface's speed (None: speed unknown)."""
    return round(bps * 100 / speed, 3) if speed else None


def describe(known: Known, exporter: str, index: int) -> InterfaceInfo:
    """Name, alias, description and speed of one interface."""
    info = known.get(exporter, {}).get(index, {})
    return InterfaceInfo(
        name=info.get("name") or None,
        alias=info.get("alias") or None,
        description=info.get("description") or None,
        speed_bps=info.get("speed_bps"),
    )
