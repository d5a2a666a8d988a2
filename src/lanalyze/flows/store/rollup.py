"""The rollup maintainer: tails new raw segments into rollup tables, compacts, expires.

Every ``flows.rollup.interval`` seconds, in a worker thread (never on the event loop):

1. **Roll up** raw segments the manifest does not cover yet: Arrow's hash aggregation
   (:mod:`~lanalyze.flows.store.rollup_aggregate`) sums bytes, packets and flows (scaled by
   sampling) per minute for every rollup table
   (:data:`~lanalyze.flows.store.layout.ROLLUP_TABLES`), decoding up to 1 GiB of segments a
   round in chunks on two threads, then per hour from those; each (resolution, table, hour)
   gets a new part file, and the manifest records the parts and the raw files they cover,
   in one atomic replace. Memory is bounded by ``flows.rollup.max_memory`` whatever the
   backlog: half of it for the chunks being decoded and summed (sized from the segments'
   row counts), the rest for the per-minute sums held; once those reach a quarter they are
   written out as parts and released before the next chunks (an hour may then get several
   parts in one round; compaction merges them as it merges any).
2. **Compact** closed hours (``close_after`` seconds past their end): merge each hour's parts
   into one, merge its small raw segments into ``<first>-compact-<n>`` files (which name the
   segments they replace, so readers never count twice), and build the 6-hour, day and week
   parts of closed blocks, days and weeks (DuckDB re-sums those small parts).
3. **Expire** by age and by size per kind (raw, 1m, 1h and 6h, 1d and 1w), oldest first.
4. Delete unreferenced files once a grace period has passed, so running queries finish.

Only one maintainer works on a data directory at a time (an ``flock`` on
``rollup/.maintainer.lock``); readers never lock. Parts are written before the manifest names
them; a crash leaves at worst unreferenced files, removed at the next start. Every file is
created 0600 and every directory 0700 (:mod:`lanalyze.datadir`).

Trust: the raw segments are our own collector's files; a file that cannot be read is logged,
counted and skipped (left to raw queries), never a crash of the maintainer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import Counter

from lanalyze import metrics
from lanalyze.datadir import FILE_MODE, create_private, make_private_dirs
from lanalyze.flows.catalogue import arrow_schema, conform
from lanalyze.flows.config import RollupConfig
from lanalyze.flows.store.layout import (
    COMPACT_TAG,
    DAY_KEYED,
    DAY_MS,
    HOUR_MS,
    REPLACES_KEY,
    RESOLUTIONS,
    ROLLUP_TABLES,
    SIX_HOURS_MS,
    WEEK_MS,
    Manifest,
    RollupTable,
    block_of,
    bucket_key,
    day_name,
    hour_start,
    key_end,
    key_span,
    key_start,
    list_raw_files,
    list_raw_hours,
    read_manifest,
    write_manifest,
)
from lanalyze.flows.store.paths import (
    hour_dir,
    maintainer_lock_path,
    part_path,
    rollup_dir,
)
from lanalyze.flows.store.rollup_aggregate import (
    WORK_BYTES_PER_ROW,
    Partial,
    merge,
    summarise_files,
)
from lanalyze.log import get_logger

if TYPE_CHECKING:
    from lanalyze.flows.collector import FlowCollector

log = get_logger(__name__)

ROLLED_FILES = Counter(
    "lanalyze_rollup_raw_files_total",
    "Raw segments added to the rollup tables.",
    registry=metrics.REGISTRY,
)
ROLLED_ROWS = Counter(
    "lanalyze_rollup_raw_rows_total",
    "Raw flow records added to the rollup tables.",
    registry=metrics.REGISTRY,
)
ROLLUP_ERRORS = Counter(
    "lanalyze_rollup_errors_total",
    "Maintenance steps that failed (unreadable segment, disk error); retried next round.",
    ["step"],
    registry=metrics.REGISTRY,
)
EXPIRED_FILES = Counter(
    "lanalyze_rollup_expired_files_total",
    "Files removed by retention, per kind (raw, 1m, 1h, 1d).",
    ["kind"],
    registry=metrics.REGISTRY,
)

GRACE_SECONDS = 120.0
BATCH_BYTES = 1024 * 1024 * 1024  # raw bytes on disk rolled up (and named) per manifest write
CHUNK_BYTES = 64 * 1024 * 1024  # raw bytes decoded at once, at most (rows bound it too)
ROLLUP_THREADS = 2
COMPACT_ROWS = 4_000_000
SMALL_SEGMENT_BYTES = 16 * 1024 * 1024  # raw segments at least this big are not merged
OPEN_HOUR_PARTS = 16  # an open hour's parts are merged once this many accumulate
SUM_COLUMNS = ("bytes", "packets", "flows")


class RollupMaintainer:
    """Component keeping the rollups of one flow data directory (``<data_dir>/flows``)."""

    name = "rollup"

    def __init__(self, config: RollupConfig, flow_dir: Path) -> None:
        self.config = config
        self.data = flow_dir
        self._task: asyncio.Task[None] | None = None
        self._lock_file: IO[bytes] | None = None
        self._stopping = asyncio.Event()
        self._halt = threading.Event()  # seen by the worker thread between batches
        self._compact_seq = 0
        self._compacted: dict[str, int] = {}  # raw hour -> directory mtime when found done
        self.peak_held_bytes = 0
        """The most bytes a roll-up held at once by the maintainer's own count: chunks being
        summed (estimated from their rows) and the sums waiting to be written."""

    async def start(self) -> None:
        self._halt.clear()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._halt.set()
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        self.release()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                ROLLUP_ERRORS.labels("round").inc()
                log.exception("rollup.round_failed", extra={"data": str(self.data)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.interval)

    # --- locking -------------------------------------------------------------------------------

    def _acquire(self) -> bool:
        if self._lock_file is not None:
            return True
        lock_path = maintainer_lock_path(self.data)
        make_private_dirs(lock_path.parent)
        # Created 0600 like every file of the store; "ab": never truncates another's lock.
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        handle = open(fd, "ab")  # noqa: SIM115 (kept open: the lock lives as long as it)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        self._remove_orphans()
        return True

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # --- one round -----------------------------------------------------------------------------

    def run_once(self, now: float | None = None) -> dict[str, int]:
        """One maintenance round (blocking). Returns what it did, for tests and logs."""
        now = time.time() if now is None else now
        done = {"rolled_files": 0, "compacted": 0, "days": 0, "expired": 0, "deleted": 0}
        if not self._acquire():
            log.debug("rollup.busy", extra={"data": str(self.data)})
            return done
        connection = duckdb.connect(":memory:", config={"threads": 1})
        try:
            done["rolled_files"] = self._roll_up_new()
            done["compacted"] = self._compact(connection, now)
            done["days"] = self._build_days(connection, now)
            done["expired"] = self._expire(now)
            done["deleted"] = self._delete_pending(now)
        finally:
            connection.close()
        if any(done.values()):
            log.info("rollup.round", extra=done)
        return done

    # --- 1. roll up ----------------------------------------------------------------------------

    def _uncovered(self, manifest: Manifest) -> list[tuple[str, str]]:
        expired = manifest.expired_before.get("raw", 0)
        found: list[tuple[str, str]] = []
        for hour in list_raw_hours(self.data):
            if hour_start(hour) + HOUR_MS <= expired:
                continue
            found.extend(
                (hour, name)
                for name in list_raw_files(self.data, hour)
                if not manifest.covers(hour, name, self.data)
            )
        return found

    def _roll_up_new(self) -> int:
        total = 0
        while not self._halt.is_set():
            manifest = read_manifest(self.data)
            pending = self._uncovered(manifest)
            if not pending:
                return total
            batch: list[tuple[str, str]] = []
            size = 0
            for hour, name in pending:
                path = hour_dir(self.data, hour) / name
                try:
                    size += path.stat().st_size
                except FileNotFoundError:
                    continue
                batch.append((hour, name))
                if size >= BATCH_BYTES:
                    break
            if not batch:
                return total
            try:
                rows = self._roll_up(manifest, batch)
            except (duckdb.Error, OSError, pa.ArrowException) as exc:
                ROLLUP_ERRORS.labels("rollup").inc()
                log.warning("rollup.batch_failed", extra={"files": len(batch), "error": str(exc)})
                return total
            ROLLED_FILES.inc(len(batch))
            ROLLED_ROWS.inc(rows)
            total += len(batch)
        return total

    def _chunks(self, paths: list[str]) -> list[tuple[list[str], int]]:
        """Consecutive groups of segments, each with the bytes its summing may take: at most
        CHUNK_BYTES on disk and a share of half of ``max_memory`` by rows (compression makes
        bytes on disk a poor guide: zstd segments decode to ~8 times their size)."""
        limit = max(1, self.config.max_memory // (2 * ROLLUP_THREADS))
        chunks: list[tuple[list[str], int]] = []
        names: list[str] = []
        size = work = 0
        for path in paths:
            try:
                rows = pq.read_metadata(path).num_rows
            except (OSError, pa.ArrowException):
                rows = 0  # summing it reports the error
            cost = rows * WORK_BYTES_PER_ROW
            if names and (size >= CHUNK_BYTES or work + cost > limit):
                chunks.append((names, work))
                names, size, work = [], 0, 0
            names.append(path)
            size += _size(Path(path))
            work += cost
        if names:
            chunks.append((names, work))
        return chunks

    def _roll_up(self, manifest: Manifest, batch: list[tuple[str, str]]) -> int:
        # The per-minute sums are Arrow's (rollup_aggregate): no DuckDB connection here.
        paths = [str(hour_dir(self.data, hour) / name) for hour, name in batch]
        chunks = self._chunks(paths)
        batch_id = f"{int(time.time() * 1000)}-{os.getpid()}-{self._next_seq()}"
        written: list[tuple[str, str, str, str]] = []
        latest_of: dict[str, int] = {}
        held: list[Partial] = []
        held_bytes = 0
        rows = 0
        flushes = 0
        # Chunks are summed on ROLLUP_THREADS threads (Arrow's reader and aggregation drop
        # the GIL), never more submitted than that: a finished chunk's sums wait here, counted.
        with ThreadPoolExecutor(ROLLUP_THREADS, thread_name_prefix="rollup") as pool:
            running: deque[tuple[Future[Partial], int]] = deque()
            queued = iter(chunks)
            while True:
                while len(running) < ROLLUP_THREADS:
                    chunk = next(queued, None)
                    if chunk is None:
                        break
                    running.append((pool.submit(summarise_files, chunk[0]), chunk[1]))
                self._count_held(held_bytes + sum(work for _, work in running))
                if not running:
                    break
                future, _ = running.popleft()
                partial = future.result()
                rows += partial.rows
                latest_of.update(partial.latest)
                if partial.tables:
                    held.append(partial)
                    held_bytes += _table_bytes(partial.tables.values())
                self._count_held(held_bytes + sum(work for _, work in running))
                if held_bytes >= self.config.max_memory // 4:
                    in_flight = sum(work for _, work in running)
                    written += self._flush(held, f"{batch_id}-{flushes}", in_flight)
                    held, held_bytes = [], 0
                    flushes += 1
        if held:
            name = batch_id if not flushes else f"{batch_id}-{flushes}"
            written += self._flush(held, name, 0)
        manifest = read_manifest(self.data)
        for (hour_key, name), path in zip(batch, paths, strict=True):
            manifest.covered.setdefault(hour_key, []).append(name)
            # An empty segment has no flows: the hour's start is a safe "latest".
            latest = latest_of.get(path, hour_start(hour_key))
            manifest.latest[hour_key] = max(manifest.latest.get(hour_key, 0), latest)
        touched_hours: set[str] = set()
        for resolution, table_name, key, name in written:
            manifest.parts.setdefault(resolution, {}).setdefault(table_name, {}).setdefault(
                key, []
            ).append(name)
            touched_hours.add(key)
        self._invalidate_days(manifest, touched_hours, time.time())
        write_manifest(self.data, manifest)
        return rows

    def _flush(
        self, held: list[Partial], batch_id: str, in_flight: int
    ) -> list[tuple[str, str, str, str]]:
        """Write the held sums as minute and hour parts, table by table, releasing each
        table's sums once written."""
        written: list[tuple[str, str, str, str]] = []
        remaining = sum(_table_bytes(p.tables.values()) for p in held)
        for table in ROLLUP_TABLES:
            parts = [p.tables.pop(table.name) for p in held if table.name in p.tables]
            share = _table_bytes(parts)
            minute = merge(parts, table.columns)
            del parts
            # The concatenated copy and the summed table beside the held sums.
            self._count_held(in_flight + remaining + 2 * _table_bytes([minute]))
            remaining -= share
            if minute.num_rows == 0:
                continue
            written += self._write_parts("1m", table.name, minute, batch_id)
            hour = merge([minute], table.columns, HOUR_MS)
            written += self._write_parts("1h", table.name, hour, batch_id)
            del minute, hour
        return written

    def _count_held(self, held: int) -> None:
        self.peak_held_bytes = max(self.peak_held_bytes, held)

    def _next_seq(self) -> int:
        self._compact_seq += 1
        return self._compact_seq

    def _write_parts(
        self, resolution: str, table_name: str, table: pa.Table, batch_id: str
    ) -> list[tuple[str, str, str, str]]:
        if table.num_rows == 0:
            return []
        times = table.column("time").to_numpy()
        span = key_span(resolution)
        containers = times - times % span
        edges = np.flatnonzero(np.diff(containers)) + 1
        written = []
        for lo, hi in zip([0, *edges.tolist()], [*edges.tolist(), len(times)], strict=True):
            key = bucket_key(resolution, int(containers[lo]))
            name = f"{batch_id}.parquet"
            path = part_path(self.data, resolution, table_name, key, name)
            self._write_parquet(table.slice(lo, hi - lo), path)
            written.append((resolution, table_name, key, name))
        return written

    def _write_parquet(
        self, table: pa.Table, path: Path, metadata: dict[bytes, bytes] | None = None
    ) -> None:
        make_private_dirs(path.parent)
        temp = path.with_name(f".{path.name}.tmp")
        create_private(temp)  # pyarrow truncates it and keeps the mode; the rename too
        if metadata:
            table = table.replace_schema_metadata(metadata)
        pq.write_table(
            table,
            temp,
            compression=self.config.compression,
            row_group_size=1_000_000,
        )
        os.replace(temp, path)

    def _invalidate_days(self, manifest: Manifest, hours: set[str], now: float) -> None:
        """A day, 6-hour or week part is stale once one of its hours changed: drop it (rebuilt
        once the hours are compacted again)."""
        starts = [hour_start(h) for h in hours]
        for resolution in DAY_KEYED:
            span = RESOLUTIONS[resolution]
            touched = {s - s % span for s in starts}
            # Weeks are filed under their first day, the others under the hour's day.
            days = {day_name(w) for w in touched} if resolution == "1w" else {h[:8] for h in hours}
            for table_name, keyed in manifest.parts.get(resolution, {}).items():
                for day in days & set(keyed):
                    stale = [
                        n
                        for n in keyed[day]
                        if resolution == "1d" or block_of(n) in touched or block_of(n) < 0
                    ]
                    keyed[day] = [n for n in keyed[day] if n not in stale]
                    if not keyed[day]:
                        del keyed[day]
                    for name in stale:
                        relative = part_path(Path(), resolution, table_name, day, name)
                        manifest.pending_delete.append((now + GRACE_SECONDS, str(relative)))

    # --- 2. compaction -------------------------------------------------------------------------

    def _compact(self, connection: duckdb.DuckDBPyConnection, now: float) -> int:
        closed_before = int((now - self.config.close_after) * 1000)
        manifest = read_manifest(self.data)
        changed = 0
        for resolution in ("1m", "1h"):
            for table in ROLLUP_TABLES:
                keyed = manifest.parts.get(resolution, {}).get(table.name, {})
                for key, names in list(keyed.items()):
                    closed = hour_start(key) + HOUR_MS <= closed_before
                    if len(names) < 2 or (not closed and len(names) < OPEN_HOUR_PARTS):
                        continue
                    paths = [
                        str(part_path(self.data, resolution, table.name, key, n)) for n in names
                    ]
                    merged = _reaggregate_files(connection, paths, table.columns)
                    name = f"c{int(now * 1000)}-{self._next_seq()}.parquet"
                    self._write_parquet(
                        merged, part_path(self.data, resolution, table.name, key, name)
                    )
                    keyed[key] = [name]
                    manifest.pending_delete.extend(
                        (
                            now + GRACE_SECONDS,
                            str(part_path(Path(), resolution, table.name, key, n)),
                        )
                        for n in names
                    )
                    changed += 1
        if changed:
            write_manifest(self.data, manifest)
        changed += self._compact_raw(now, closed_before)
        return changed

    def _compact_raw(self, now: float, closed_before: int) -> int:
        manifest = read_manifest(self.data)
        changed = 0
        hours = list_raw_hours(self.data)
        present = set(hours)  # forget hours retention removed
        self._compacted = {h: v for h, v in self._compacted.items() if h in present}
        for hour in hours:
            if hour_start(hour) + HOUR_MS > closed_before:
                continue
            directory = hour_dir(self.data, hour)
            try:
                stamp = directory.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self._compacted.get(hour) == stamp:
                continue  # nothing renamed in since this hour was last found done
            names = list_raw_files(self.data, hour)
            # Segments of a busy collector are big already: rewriting them would cost as
            # much as writing them did, for no fewer row groups. Only small ones are merged.
            small = [
                n
                for n in names
                if COMPACT_TAG not in n and _size(directory / n) < SMALL_SEGMENT_BYTES
            ]
            if len(small) < 2:
                self._compacted[hour] = stamp
                continue
            if not all(manifest.covers(hour, n, self.data) for n in names):
                continue
            groups: list[list[str]] = [[]]
            rows = 0
            for name in small:
                count = pq.read_metadata(directory / name).num_rows
                if groups[-1] and rows + count > COMPACT_ROWS:
                    groups.append([])
                    rows = 0
                groups[-1].append(name)
                rows += count
            for group in groups:
                if len(group) < 2:
                    continue
                compact_name = (
                    f"{group[0].split('-', 1)[0]}{COMPACT_TAG}{self._next_seq()}-{int(now)}.parquet"
                )
                self._merge_raw(directory, group, compact_name)
                covered = manifest.covered.setdefault(hour, [])
                covered[:] = [n for n in covered if n not in group] + [compact_name]
                manifest.pending_delete.extend(
                    (now + GRACE_SECONDS, str(Path("raw") / hour / n)) for n in group
                )
                changed += 1
            write_manifest(self.data, manifest)
        return changed

    def _merge_raw(self, directory: Path, names: list[str], compact_name: str) -> None:
        # The catalogue's schema: segments written before a column was added get it (null).
        first = arrow_schema()
        schema = first.with_metadata({REPLACES_KEY: json.dumps(names).encode()})
        temp = directory / f".{compact_name}.tmp"
        create_private(temp)
        with pq.ParquetWriter(temp, schema, compression=self.config.compression) as writer:
            pending: list[pa.Table] = []
            rows = 0
            for name in names:
                table = conform(pq.read_table(directory / name)).cast(first)
                pending.append(table)
                rows += table.num_rows
                if rows >= 1_000_000:
                    writer.write_table(
                        pa.concat_tables(pending).replace_schema_metadata(schema.metadata),
                        row_group_size=1_000_000,
                    )
                    pending, rows = [], 0
            if pending:
                writer.write_table(
                    pa.concat_tables(pending).replace_schema_metadata(schema.metadata),
                    row_group_size=1_000_000,
                )
        os.replace(temp, directory / compact_name)

    def _build_days(self, connection: duckdb.DuckDBPyConnection, now: float) -> int:
        manifest = read_manifest(self.data)
        closed_before = int((now - self.config.close_after) * 1000)
        built = 0
        expired_1h = manifest.expired_before.get("1h", 0)
        for table in ROLLUP_TABLES:
            hours = manifest.parts.get("1h", {}).get(table.name, {})
            days_done = manifest.parts.get("1d", {}).get(table.name, {})
            by_day: dict[str, list[str]] = {}
            for key in hours:
                by_day.setdefault(key[:8], []).append(key)
            for day, keys in by_day.items():
                built += self._build_blocks(
                    connection, manifest, table, day=day, hour_keys=keys, now=now
                )
                start = key_start("1d", day)
                if day in days_done or start + DAY_MS > closed_before or start < expired_1h:
                    continue
                if any(len(hours[k]) > 1 for k in keys):
                    continue  # compact the hours first
                paths = [
                    str(part_path(self.data, "1h", table.name, k, n))
                    for k in keys
                    for n in hours[k]
                ]
                merged = _reaggregate_files(connection, paths, table.columns, DAY_MS)
                name = f"d{int(now * 1000)}-{self._next_seq()}.parquet"
                self._write_parquet(merged, part_path(self.data, "1d", table.name, day, name))
                manifest.parts.setdefault("1d", {}).setdefault(table.name, {})[day] = [name]
                built += 1
            built += self._build_weeks(connection, manifest, table, closed_before)
        if built:
            write_manifest(self.data, manifest)
        return built

    def _build_weeks(
        self,
        connection: duckdb.DuckDBPyConnection,
        manifest: Manifest,
        table: RollupTable,
        closed_before: int,
    ) -> int:
        """Closed weeks not built yet, from their day parts: a 30-day report then reads ~4
        week parts and a few days instead of 30 day parts (rows: parts x keys)."""
        days = manifest.parts.get("1d", {}).get(table.name, {})
        hour_days = {key[:8] for key in manifest.parts.get("1h", {}).get(table.name, {})}
        weeks = manifest.parts.setdefault("1w", {}).setdefault(table.name, {})
        starts = {key_start("1d", day) - key_start("1d", day) % WEEK_MS for day in days}
        built = 0
        for week in sorted(starts):
            key = day_name(week)
            if key in weeks or week + WEEK_MS > closed_before:
                continue
            if week < manifest.expired_before.get("1d", 0):
                continue
            members = [day_name(day) for day in range(week, week + WEEK_MS, DAY_MS)]
            # A day with hour parts but no day part yet is still to build: wait for it.
            if any(day not in days and day in hour_days for day in members):
                continue
            paths = [
                str(part_path(self.data, "1d", table.name, day, n))
                for day in members
                for n in days.get(day, [])
            ]
            merged = _reaggregate_files(connection, paths, table.columns, WEEK_MS)
            name = f"w{week}-{self._next_seq()}.parquet"
            self._write_parquet(merged, part_path(self.data, "1w", table.name, key, name))
            weeks[key] = [name]
            built += 1
        return built

    def _build_blocks(
        self,
        connection: duckdb.DuckDBPyConnection,
        manifest: Manifest,
        table: RollupTable,
        *,
        day: str,
        hour_keys: list[str],
        now: float,
    ) -> int:
        """The day's closed 6-hour blocks not built yet, from their (compacted) hour parts."""
        closed_before = int((now - self.config.close_after) * 1000)
        hours = manifest.parts["1h"][table.name]
        blocks = manifest.parts.setdefault("6h", {}).setdefault(table.name, {})
        done = {block_of(name) for name in blocks.get(day, [])}
        built = 0
        for block in range(key_start("1d", day), key_start("1d", day) + DAY_MS, SIX_HOURS_MS):
            if block in done or block + SIX_HOURS_MS > closed_before:
                continue
            if block < manifest.expired_before.get("1h", 0):
                continue
            keys = [k for k in hour_keys if block <= hour_start(k) < block + SIX_HOURS_MS]
            if not keys or any(len(hours[k]) > 1 for k in keys):
                continue  # nothing there, or hours still to compact
            paths = [
                str(part_path(self.data, "1h", table.name, k, n)) for k in keys for n in hours[k]
            ]
            merged = _reaggregate_files(connection, paths, table.columns, SIX_HOURS_MS)
            name = f"b{block}-{self._next_seq()}.parquet"
            self._write_parquet(merged, part_path(self.data, "6h", table.name, day, name))
            blocks.setdefault(day, []).append(name)
            built += 1
        return built

    # --- 3. retention --------------------------------------------------------------------------

    def _limits(self) -> dict[str, tuple[float, int]]:
        c = self.config
        return {
            "raw": (c.raw_max_age, c.raw_max_bytes),
            "1m": (c.minute_max_age, c.minute_max_bytes),
            "1h": (c.hour_max_age, c.hour_max_bytes),
            "6h": (c.hour_max_age, c.hour_max_bytes),
            "1d": (c.day_max_age, c.day_max_bytes),
            "1w": (c.day_max_age, c.day_max_bytes),
        }

    def _expire(self, now: float) -> int:
        manifest = read_manifest(self.data)
        removed = 0
        for kind, (max_age_days, max_bytes) in self._limits().items():
            containers = self._containers(kind, manifest)
            doomed: set[str] = set()
            if max_age_days > 0:
                cutoff = int((now - max_age_days * 86400) * 1000)
                doomed.update(k for k, (end, _) in containers.items() if end <= cutoff)
            if max_bytes > 0:
                total = sum(size for k, (_, size) in containers.items() if k not in doomed)
                for key in sorted(containers):
                    if total <= max_bytes:
                        break
                    if key not in doomed:
                        doomed.add(key)
                        total -= containers[key][1]
            if not doomed:
                continue
            horizon = max(containers[k][0] for k in doomed)
            manifest.expired_before[kind] = max(manifest.expired_before.get(kind, 0), horizon)
            removed += self._remove(kind, manifest, doomed, now)
        if removed:
            write_manifest(self.data, manifest)
        return removed

    def _containers(self, kind: str, manifest: Manifest) -> dict[str, tuple[int, int]]:
        """Hour (or day) key -> (end ms, bytes on disk) of one kind of table."""
        found: dict[str, tuple[int, int]] = {}
        if kind == "raw":
            for hour in list_raw_hours(self.data):
                directory = hour_dir(self.data, hour)
                size = sum(_size(directory / n) for n in os.listdir(directory))
                found[hour] = (hour_start(hour) + HOUR_MS, size)
            return found
        for table_name, keyed in manifest.parts.get(kind, {}).items():
            for key, names in keyed.items():
                end, size = found.get(key, (key_end(kind, key), 0))
                size += sum(_size(part_path(self.data, kind, table_name, key, n)) for n in names)
                found[key] = (end, size)
        return found

    def _remove(self, kind: str, manifest: Manifest, keys: set[str], now: float) -> int:
        removed = 0
        if kind == "raw":
            # Raw hours go at once: a reader that listed them re-plans on the missing file.
            for hour in keys:
                directory = hour_dir(self.data, hour)
                removed += len(os.listdir(directory)) if directory.is_dir() else 0
                shutil.rmtree(directory, ignore_errors=True)
                manifest.covered.pop(hour, None)
            EXPIRED_FILES.labels(kind).inc(removed)
            return removed
        if kind == "1h":
            for key in keys:
                manifest.latest.pop(key, None)
        for table_name, keyed in manifest.parts.get(kind, {}).items():
            for key in keys & set(keyed):
                for name in keyed.pop(key):
                    relative = part_path(Path(), kind, table_name, key, name)
                    manifest.pending_delete.append((now + GRACE_SECONDS, str(relative)))
                    removed += 1
        EXPIRED_FILES.labels(kind).inc(removed)
        return removed

    # --- 4. deletion ---------------------------------------------------------------------------

    def _delete_pending(self, now: float) -> int:
        manifest = read_manifest(self.data)
        due = [(t, p) for t, p in manifest.pending_delete if t <= now]
        if not due:
            return 0
        for _, relative in due:
            path = self.data / relative
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty
        manifest.pending_delete = [(t, p) for t, p in manifest.pending_delete if t > now]
        write_manifest(self.data, manifest)
        return len(due)

    def _remove_orphans(self) -> None:
        """Parts a crash left unnamed by the manifest, and temporaries."""
        manifest = read_manifest(self.data)
        known = {str(self.data / p) for _, p in manifest.pending_delete}
        for resolution, tables in manifest.parts.items():
            for table_name, keyed in tables.items():
                for key, names in keyed.items():
                    known.update(
                        str(part_path(self.data, resolution, table_name, key, n)) for n in names
                    )
        for resolution in RESOLUTIONS:
            base = rollup_dir(self.data) / resolution
            if not base.is_dir():
                continue
            for path in base.glob("*/*/*"):
                if path.is_file() and str(path) not in known:
                    path.unlink(missing_ok=True)
        for hour in list_raw_hours(self.data):
            for path in hour_dir(self.data, hour).glob(f".*{COMPACT_TAG}*.tmp"):
                path.unlink(missing_ok=True)


def _table_bytes(tables: Iterable[pa.Table]) -> int:
    return sum(t.get_total_buffer_size() for t in tables)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _reaggregate_files(
    connection: duckdb.DuckDBPyConnection,
    paths: list[str],
    columns: tuple[str, ...],
    step: int = 1,
) -> pa.Table:
    keys = ", ".join(columns)
    time_sql = "time" if step == 1 else f"(time - time % {step})::UBIGINT"
    return connection.sql(
        f"SELECT {time_sql} AS time, {keys}, "  # noqa: S608 (fixed fragments, files as ?)
        "sum(bytes)::UBIGINT AS bytes, sum(packets)::UBIGINT AS packets, "
        "sum(flows)::UBIGINT AS flows FROM read_parquet(?) GROUP BY ALL ORDER BY time",
        params=[paths],
    ).to_arrow_table()


async def run_collector_with_rollups(
    collector: FlowCollector, config: RollupConfig, flow_dir: Path
) -> None:
    """``lanalyze flows collect``: the collector until a signal, with the maintainer beside."""
    from lanalyze.flows.collector import run_until_signalled

    if not config.enabled or collector.clickhouse:
        # With ClickHouse its views keep the rollups and the collector drops old partitions.
        await run_until_signalled(collector)
        return
    maintainer = RollupMaintainer(config, flow_dir)
    await maintainer.start()
    try:
        await run_until_signalled(collector)
    finally:
        await maintainer.stop()
