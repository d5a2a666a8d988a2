"""Interface names and speeds for the reports: ``<data_dir>/flows/interfaces.json``.

The file is written by the SNMP poller (:mod:`lanalyze.flows.snmp`) in the collector process
and read here by every report process (CLI, API, console), cached by modification time so a
report does not parse it again while it is unchanged. It holds what exporters' agents told us:
names are shown as text and never interpreted; a missing, unreadable or odd file only means
the reports stay on ifIndex.

Shape: ``{exporter: {ifIndex: {name, alias, description, speed_bps, polled_at}}}``.

Speeds SNMP does not give (an interface it does not list, or no SNMP at all) come from the
sFlow agents' counter samples, ``interface_counters.json`` (:mod:`lanalyze.flows.ifcounters`,
same care: well-formed entries only); SNMP wins where both know a speed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanalyze.flows.store.paths import interface_counters_path, interfaces_path

TEXT_FIELDS = ("name", "alias", "description")

Known = Mapping[str, Mapping[int, Mapping[str, Any]]]

_lock = threading.Lock()
_cache: dict[Path, tuple[tuple[int, ...], Known]] = {}


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


def _with_counter_speeds(known: Known, data: object) -> Known:
    """``known`` plus the speeds of sFlow counter samples where it has none."""
    if not isinstance(data, dict):
        return known
    merged = {exporter: dict(table) for exporter, table in known.items()}
    for exporter, table in data.items():
        if not isinstance(exporter, str) or not isinstance(table, dict):
            continue
        for index, info in table.items():
            if not isinstance(info, dict) or not str(index).isdigit():
                continue
            speed = info.get("speed_bps")
            if not isinstance(speed, int) or speed <= 0:
                continue
            entries = merged.setdefault(exporter, {})
            entry = entries.get(int(index))
            if entry is None:
                entries[int(index)] = {**dict.fromkeys(TEXT_FIELDS), "speed_bps": speed}
            elif entry.get("speed_bps") is None:
                entries[int(index)] = {**entry, "speed_bps": speed}
    return merged


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, -1)
    return (stat.st_mtime_ns, stat.st_size)


def _read(path: Path) -> object:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def load(flow_dir: Path) -> Known:
    """The last polled names and speeds (with sFlow's speeds where SNMP has none); empty when
    neither file is there or readable."""
    path = interfaces_path(flow_dir)
    counters = interface_counters_path(flow_dir)
    stamp = _stamp(path) + _stamp(counters)
    if stamp == (0, -1, 0, -1):
        return {}
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    known = _clean(_read(path)) if stamp[1] >= 0 else {}
    if stamp[3] >= 0:
        known = _with_counter_speeds(known, _read(counters))
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
