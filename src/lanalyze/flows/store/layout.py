"""The rollup tables, their time buckets, the manifest and the raw-file listings: what the
rollup maintainer (writer) and the reports (readers) agree on.

Layout under the flow data directory (``<general.data_dir>/flows``; the paths themselves are
built by :mod:`lanalyze.flows.store.paths` only)::

    raw/<YYYYMMDDHH>/<first_ms>-<writer>-<seq>.parquet    raw flows (the collector's segments)
    rollup/<res>/<table>/<bucket hour or day>/<name>.parquet   sums per time bucket
    rollup/manifest.json                                    which raw files the rollups cover

Every file is written under a name starting with ``.`` and renamed, so a file with a final
name is complete and immutable; readers only list directories and read the manifest, which
the one maintainer replaces atomically. A compacted raw file (``<first>-compact-<n>``) names
in its Parquet metadata the raw files it replaces, so a reader that lists a directory while
compaction runs never counts a flow twice. Files leave the manifest before they are deleted,
after a grace period long enough for a running query to finish reading them.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lanalyze.datadir import make_private_dirs, open_private
from lanalyze.flows.store.paths import RAW, hour_dir, manifest_path, raw_dir

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
DAY_MS = 86_400_000
SIX_HOURS_MS = 6 * HOUR_MS
WEEK_MS = 7 * DAY_MS
"""Weeks start at multiples of 7 days since the epoch (Thursdays, 00:00 UTC)."""
RESOLUTIONS: dict[str, int] = {
    "1m": MINUTE_MS,
    "1h": HOUR_MS,
    "6h": SIX_HOURS_MS,
    "1d": DAY_MS,
    "1w": WEEK_MS,
}
DAY_KEYED = ("6h", "1d", "1w")
"""Resolutions whose parts are filed by day (the others by hour); a week's under its first."""
REPLACES_KEY = b"lanalyze.replaces"
COMPACT_TAG = "-compact-"


@dataclass(frozen=True)
class RollupTable:
    """A set of dimensions kept, summed per time bucket, at every resolution."""

    name: str
    columns: tuple[str, ...]
    """Stored columns (catalogue names, plus the derived ``service_port``)."""


# Ordered from the smallest (fastest) to the largest: the planner takes the first that has
# every column a report needs. Few dimensions per table keep each one small: a top-10 over
# 30 days reads one row per (day, key), not one per flow.
ROLLUP_TABLES: tuple[RollupTable, ...] = (
    RollupTable("iface", ("exporter", "in_if", "out_if")),
    RollupTable("proto", ("protocol", "ip_version")),
    RollupTable("app", ("protocol", "service_port")),
    RollupTable("dst_port", ("protocol", "dst_port")),
    RollupTable("src_port", ("protocol", "src_port")),
    RollupTable(
        "summary",
        (
            "exporter",
            "in_if",
            "out_if",
            "protocol",
            "ip_version",
            "tos",
            "tcp_flags",
            "src_as",
            "dst_as",
            "service_port",
        ),
    ),
    # Enrichment (issue 16): country, AS and network names per side, after ``summary`` so a
    # report by AS number alone keeps reading that one.
    RollupTable(
        "src_geo", ("src_country", "src_as", "src_as_name", "src_net_name", "src_net_role")
    ),
    RollupTable(
        "dst_geo", ("dst_country", "dst_as", "dst_as_name", "dst_net_name", "dst_net_role")
    ),
    RollupTable("src_addr", ("src_addr",)),
    RollupTable("dst_addr", ("dst_addr",)),
    # The same with the protocol, after the address-only tables so unfiltered reports keep
    # reading the smaller ones: a top-N of addresses filtered by protocol (``proto tcp``)
    # would read raw flows otherwise (5 s over 30 days, 10 M flows).
    RollupTable("src_addr_proto", ("src_addr", "protocol")),
    RollupTable("dst_addr_proto", ("dst_addr", "protocol")),
)
TABLES_BY_NAME = {table.name: table for table in ROLLUP_TABLES}

# Derived rollup columns: SQL over raw columns (fixed text, no user input).
DERIVED_SQL = {
    "service_port": "CASE WHEN dst_port <= src_port THEN dst_port ELSE src_port END",
}


def hour_name(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d%H")


def _name_start(name: str, digits: int) -> int:
    """UTC ms of a ``YYYYMMDD[HH]`` name. Not strptime: its module (with calendar and
    locale) is ~10 ms of a report command's start-up, and it was half the planner's time."""
    if len(name) != digits or not (name.isascii() and name.isdigit()):
        raise ValueError(f"not a {digits}-digit bucket name: {name!r}")
    hour = int(name[8:10]) if digits == 10 else 0
    moment = datetime(int(name[:4]), int(name[4:6]), int(name[6:8]), hour, tzinfo=UTC)
    return int(moment.timestamp()) * 1000


# Cached: a 30-day plan converts every one of its 720 hour names, twice.
@functools.lru_cache(maxsize=65536)
def hour_start(name: str) -> int:
    return _name_start(name, 10)


def day_name(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d")


@functools.lru_cache(maxsize=8192)
def day_start(name: str) -> int:
    return _name_start(name, 8)


def bucket_key(resolution: str, ms: int) -> str:
    """Directory a rollup row of bucket ``ms`` belongs in: its hour, or its day for ``1d``."""
    return day_name(ms) if resolution in DAY_KEYED else hour_name(ms)


def key_start(resolution: str, key: str) -> int:
    return day_start(key) if resolution in DAY_KEYED else hour_start(key)


def key_end(resolution: str, key: str) -> int:
    """End (ms) of what the parts filed under ``key`` may hold."""
    return key_start(resolution, key) + (WEEK_MS if resolution == "1w" else key_span(resolution))


def key_span(resolution: str) -> int:
    return DAY_MS if resolution in DAY_KEYED else HOUR_MS


def block_of(name: str) -> int:
    """Start (ms) of the 6-hour block (or week) a ``6h`` (``1w``) part holds: its name is
    ``b<start>-...`` (``w<start>-...``)."""
    try:
        return int(name[1:].split("-", 1)[0]) if name[:1] in ("b", "w") else -1
    except ValueError:
        return -1


def is_hour_name(name: str) -> bool:
    return len(name) == 10 and name.isdigit()


def list_raw_hours(data: Path) -> list[str]:
    try:
        names = os.listdir(raw_dir(data))
    except FileNotFoundError:
        return []
    return sorted(name for name in names if is_hour_name(name))


def file_first_ms(name: str) -> int:
    try:
        return int(name.split("-", 1)[0])
    except ValueError:
        return 0


def list_raw_files(data: Path, hour: str) -> list[str]:
    """Final (complete) raw file names of one hour, minus those a compacted file replaces."""
    try:
        names = [
            n
            for n in os.listdir(hour_dir(data, hour))
            if n.endswith(".parquet") and not n.startswith(".")
        ]
    except FileNotFoundError:
        return []
    replaced: set[str] = set()
    for name in names:
        if COMPACT_TAG in name:
            replaced.update(compact_replaces(hour_dir(data, hour) / name))
    return sorted(n for n in names if n not in replaced)


# Readers plan several reports a page, each of which used to parse the manifest (hundreds of
# kB for 30 days) and list every hour directory again. Both change only when the maintainer
# or the collector renames a file in, which changes the file's identity or the directory's
# mtime: cache by those. A directory modified within the last second is not cached (two
# renames within one mtime tick would look alike: the "racy" case), so a new segment is never
# missed.
_RACY_SECONDS = 1.0
_LISTING_CACHE_MAX = 8192
_listing_cache: dict[str, tuple[tuple[int, int], list[str]]] = {}
_manifest_cache: dict[Path, tuple[tuple[int, int, int], Manifest]] = {}
_cache_lock = threading.Lock()


def list_raw_files_cached(data: Path, hour: str) -> list[str]:
    """:func:`list_raw_files`, remembered while the hour directory is unchanged (readers only).

    The list returned is shared: do not modify it.
    """
    # Plain strings, not Path objects: a 30-day plan looks up 720 hours, and building and
    # hashing Paths was most of the planner's time.
    directory = os.path.join(data, RAW, hour)
    try:
        stat = os.stat(directory)
    except FileNotFoundError:
        return []
    key = (stat.st_ino, stat.st_mtime_ns)
    with _cache_lock:
        hit = _listing_cache.get(directory)
    if hit is not None and hit[0] == key:
        return hit[1]
    names = list_raw_files(data, hour)
    if time.time() - stat.st_mtime > _RACY_SECONDS:
        with _cache_lock:
            if len(_listing_cache) >= _LISTING_CACHE_MAX:
                _listing_cache.clear()
            _listing_cache[directory] = (key, names)
    return names


def compact_replaces(path: Path) -> list[str]:
    # Imported here: the report commands plan from this module and must not load pyarrow.
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except FileNotFoundError:
        return []
    raw = metadata.get(REPLACES_KEY)
    return list(json.loads(raw)) if raw else []


@dataclass
class Manifest:
    """What the rollups hold. Only the maintainer writes it (atomically); anyone reads it."""

    covered: dict[str, list[str]] = field(default_factory=dict)
    """Raw hour -> raw file names whose flows are in the rollups."""
    parts: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)
    """Resolution -> table -> hour (or day, for ``1d``) -> part file names."""
    latest: dict[str, int] = field(default_factory=dict)
    """Raw hour -> the latest ``time_received`` of the flows the rollups cover there."""
    expired_before: dict[str, int] = field(default_factory=dict)
    """Table kind (``raw``, ``1m``, ``1h``, ``1d``) -> nothing older is kept (ms)."""
    pending_delete: list[tuple[float, str]] = field(default_factory=list)
    """(not before, path relative to the data dir) of files no longer referenced."""

    def covers(self, hour: str, name: str, data: Path) -> bool:
        covered = self.covered.get(hour)
        if not covered:
            return False
        if name in covered:
            return True
        if COMPACT_TAG in name:
            # A compaction newer than this manifest: covered if everything it replaces is.
            replaces = compact_replaces(hour_dir(data, hour) / name)
            return bool(replaces) and set(replaces) <= set(covered)
        return False

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "covered": self.covered,
            "parts": self.parts,
            "latest": self.latest,
            "expired_before": self.expired_before,
            "pending_delete": self.pending_delete,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            covered={k: list(v) for k, v in data.get("covered", {}).items()},
            parts=data.get("parts", {}),
            latest={k: int(v) for k, v in data.get("latest", {}).items()},
            expired_before={k: int(v) for k, v in data.get("expired_before", {}).items()},
            pending_delete=[(float(t), str(p)) for t, p in data.get("pending_delete", [])],
        )


def read_manifest(data: Path) -> Manifest:
    try:
        text = manifest_path(data).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Manifest()
    return Manifest.from_json(json.loads(text))


def read_manifest_shared(data: Path) -> Manifest:
    """:func:`read_manifest`, parsed once per version of the file, for readers only.

    The maintainer replaces the manifest with a new file (``os.replace``), so its inode, size
    or mtime tell a new version. The object returned is shared between threads: never modify
    it (the maintainer uses :func:`read_manifest`).
    """
    path = manifest_path(data)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return Manifest()
    key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        hit = _manifest_cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    manifest = read_manifest(data)
    if time.time() - stat.st_mtime <= _RACY_SECONDS:
        return manifest
    with _cache_lock:
        if len(_manifest_cache) >= 64:
            _manifest_cache.clear()
        _manifest_cache[path] = (key, manifest)
    return manifest


def write_manifest(data: Path, manifest: Manifest) -> None:
    path = manifest_path(data)
    make_private_dirs(path.parent)
    temp = path.with_name(f".manifest.{os.getpid()}.json")
    with open(open_private(temp), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest.to_json(), separators=(",", ":")))
    os.replace(temp, path)
