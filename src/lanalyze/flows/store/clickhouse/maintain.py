"""The collector's ClickHouse upkeep: the schema at start, hour and day rollups, retention.

At start (:meth:`ClickHouseMaintainer.ensure`) every server of ``flows.store.servers`` gets the
tables it lacks (:func:`.schema.ensure`; no ``ON CLUSTER`` without ZooKeeper); a table that
differs is a :class:`~lanalyze.flows.errors.SchemaMismatch`, which the collector turns into a
refusal to start. A server that cannot be reached is not an error: the collector keeps
receiving (its workers spool) and tries again every ``flows.store.retry_interval``.

Hour and day rollups (:meth:`ClickHouseMaintainer.fill`, every ``flows.rollup.interval``, when
``flows.store.fill_rollups``): only the minute rollups are materialized views (:mod:`.schema`);
a pass recomputes, on each server from its own tables, the ``1h`` partitions (6 hours)
holding an hour that ended and got flows since the last pass, from ``1m``, then the ``1d``
partitions (weeks) of the days that ended since (or got late flows after they ended) from
``1h``: ``INSERT ... SELECT`` into the ``_fill`` table, then
``REPLACE PARTITION`` (atomic, idempotent: a pass that fails half way is simply done again).
Only hours that ended ``flows.store.insert_timeout`` before the slowest server's clock are
filled: an insert that started before that has finished (its rows are in ``1m``). When every
server is done, the pass's time goes into ``rollup_filled`` on each: the planner reads ``1h``
and ``1d`` only for hours that ended and were last touched before it. Two collectors filling at
once could replace a newer recomputation with an older one: with several collectors, one fills
(``fill_rollups = false`` on the others; docs/scale-out.md). A day whose minute rollups are past
``minute_max_age`` (dropped, or about to be) is not recomputed when its hours exist: flows that
arrive that late (a spool replayed days later) are in the raw and minute tables only, counted
in ``late_skipped``.

Retention (:meth:`ClickHouseMaintainer.expire`): ``flows.rollup.raw_max_age``,
``minute_max_age``, ``hour_max_age`` and ``day_max_age`` drop every partition whose whole span
is older (``ALTER TABLE ... DROP PARTITION``, which 18.16 has; it has no TTL). Several
collectors may do this at once: dropping what another just dropped is harmless. Partition
values come from ``system.parts`` and are parsed as integers before they are written back.
"""

from __future__ import annotations

import time
from typing import Any

from lanalyze.flows.config import RollupConfig, StoreConfig
from lanalyze.flows.store.clickhouse import schema
from lanalyze.flows.store.clickhouse.connect import client
from lanalyze.flows.store.layout import ROLLUP_TABLES
from lanalyze.log import RateLimiter, get_logger

log = get_logger(__name__)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


class ClickHouseMaintainer:
    def __init__(self, store: StoreConfig, rollup: RollupConfig) -> None:
        self.store = store
        self.retention = schema.Retention.from_config(rollup)
        self.ready: set[str] = set()
        """Servers whose schema is checked and complete."""
        self.dropped = 0
        """Partitions dropped by retention."""
        self.filled = 0
        """Rollup partitions recomputed (1h days and 1d weeks, per server and table)."""
        self.fill_failures = 0
        self.late_skipped = 0
        self.limiter = RateLimiter(interval=60.0, burst=2)

    def counters(self) -> dict[str, int]:
        """For /metrics (:data:`lanalyze.flows.exporters.CLICKHOUSE_METRICS`)."""
        return {
            "partitions_dropped": self.dropped,
            "rollup_partitions_filled": self.filled,
            "rollup_fill_failures": self.fill_failures,
            "rollup_late_skipped": self.late_skipped,
        }

    def ensure(self) -> bool:
        """Check and complete the schema on every server not done yet; True when all are.

        Raises :class:`~lanalyze.flows.errors.SchemaMismatch` when a server's tables differ."""
        from clickhouse_driver.errors import Error as DriverError
        from clickhouse_driver.errors import ServerException

        for server in self.store.servers:
            if server in self.ready:
                continue
            connection = client(self.store, server)
            try:
                created = schema.ensure(
                    connection, server, self.store.database, self.store.cluster, self.retention
                )
            except ServerException as exc:
                # The server answered and refused our DDL: a configuration problem (user
                # rights, cluster name); keep trying, say so.
                self._unreachable(server, exc)
                continue
            except (DriverError, OSError, EOFError) as exc:
                self._unreachable(server, exc)
                continue
            finally:
                connection.disconnect()
            self.ready.add(server)
            log.info(
                "flows.clickhouse_schema",
                extra={
                    "server": server,
                    "database": self.store.database,
                    "tables_created": len(created),
                },
            )
        return len(self.ready) == len(self.store.servers)

    def _unreachable(self, server: str, exc: BaseException) -> None:
        suppressed = self.limiter.allow(server)
        if suppressed is not None:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            log.warning(
                "flows.clickhouse_unreachable",
                extra={"server": server, "error": first, "suppressed": suppressed},
            )

    def expire(self, now_ms: int | None = None) -> int:
        """Drop the partitions past retention on every reachable server; returns how many."""
        from clickhouse_driver.errors import Error as DriverError

        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        dropped = 0
        for server in self.store.servers:
            connection = client(self.store, server)
            try:
                dropped += self._expire_on(connection, now)
            except (DriverError, OSError, EOFError) as exc:
                self._unreachable(server, exc)
            finally:
                connection.disconnect()
        self.dropped += dropped
        return dropped

    def _expire_on(self, connection: Any, now_ms: int) -> int:
        dropped = 0
        database = self.store.database
        for table in schema.tables(database, self.store.cluster):
            kind = table.retention_kind
            if kind is None or self.retention.days(kind) <= 0:
                continue
            span = schema.PARTITION_MS[kind]
            cutoff = now_ms - int(self.retention.days(kind) * DAY_MS)
            rows = connection.execute(
                "SELECT DISTINCT partition FROM system.parts"
                " WHERE database = %(db)s AND table = %(t)s AND active",
                {"db": database, "t": table.name},
            )
            for (partition,) in rows:
                number = int(str(partition).strip("'"))
                if (number + 1) * span <= cutoff:
                    connection.execute(
                        f"ALTER TABLE {database}.{table.name} DROP PARTITION {number}"
                    )
                    dropped += 1
        return dropped

    # -- hour and day rollups ----------------------------------------------------------------

    def fill(self, now_ms: int | None = None, settle_ms: int | None = None) -> int | None:
        """One pass over every server (module docstring); the partitions recomputed, or None
        when a server failed (the pass is done again next time, no mark written).

        ``now_ms``: the clock to fill by (tests); by default the slowest server's.
        ``settle_ms``: how long an insert may still be running (``insert_timeout``)."""
        from clickhouse_driver.errors import Error as DriverError

        database = self.store.database
        connections = [(server, client(self.store, server)) for server in self.store.servers]
        current = ""  # the server being asked, for the log line of a failure
        try:
            clocks = []
            for server, connection in connections:
                current = server
                clocks.append(int(connection.execute("SELECT toUInt64(now())")[0][0]) * 1000)
            now = min(clocks) if now_ms is None else now_ms
            settle = int(self.store.insert_timeout * 1000) if settle_ms is None else settle_ms
            done = now - settle
            recomputed = 0
            for server, connection in connections:
                current = server
                recomputed += self._fill_on(connection, now, done)
            for server, connection in connections:
                current = server
                connection.execute(
                    f"INSERT INTO {database}.{schema.FILLED_LOCAL} (slot, done) VALUES",
                    [(0, done)],
                )
        except (DriverError, OSError, EOFError) as exc:
            self.fill_failures += 1
            self._unreachable(current, exc)
            return None
        finally:
            for _, connection in connections:
                connection.disconnect()
        self.filled += recomputed
        return recomputed

    def _fill_on(self, connection: Any, now: int, done: int) -> int:
        database = self.store.database
        # our table names in a validated database name; values bound by the driver
        previous = int(
            connection.execute(f"SELECT max(done) FROM {database}.{schema.FILLED_LOCAL}")[0][0]  # noqa: S608
        )
        closed = done - done % HOUR_MS
        # Hours that ended by ``done`` and were touched since the last pass, or ended since.
        hours = [
            int(hour)
            for (hour,) in connection.execute(
                f"SELECT DISTINCT hour FROM {database}.{schema.TOUCHED_LOCAL}"  # noqa: S608
                f" WHERE hour + {HOUR_MS} <= %(closed)s"
                f" AND (touched >= %(previous)s OR hour + {HOUR_MS} > %(previous)s)",
                {"closed": closed, "previous": previous},
            )
        ]
        # Days with flows that ended since the last pass: their day rows are made once, when
        # they end (a week recomputed at every hour would read the week's hours each time).
        days = {
            int(day)
            for (day,) in connection.execute(
                f"SELECT DISTINCT intDiv(hour, {DAY_MS}) AS day"  # noqa: S608
                f" FROM {database}.{schema.TOUCHED_LOCAL}"
                f" WHERE day * {DAY_MS} + {DAY_MS} > %(previous)s"
                f" AND day * {DAY_MS} + {DAY_MS} <= %(closed)s",
                {"closed": closed, "previous": previous},
            )
        }
        # ... and ended days whose hours got flows again (late ones)
        days |= {hour // DAY_MS for hour in hours if hour - hour % DAY_MS + DAY_MS <= closed}
        recomputed = 0
        hour_span, day_span = schema.PARTITION_MS["1h"], schema.PARTITION_MS["1d"]
        for block in sorted({hour // hour_span for hour in hours}):
            if self._fill_partition(connection, "1h", block, now, closed):
                recomputed += 1
        for week in sorted({day * DAY_MS // day_span for day in days}):
            if self._fill_partition(connection, "1d", week, now, closed):
                recomputed += 1
        return recomputed

    def _fill_partition(
        self, connection: Any, resolution: str, number: int, now: int, closed: int
    ) -> bool:
        """Recompute partition ``number`` of every ``resolution`` table from the finer one;
        False when that one may have lost the partition to retention (module docstring)."""
        database = self.store.database
        source = schema.FILLED[resolution]
        span = schema.PARTITION_MS[resolution]
        lo, hi = number * span, min((number + 1) * span, closed)
        width = schema.RESOLUTIONS[resolution]
        age = self.retention.days(source)
        if age > 0 and (number + 1) * span <= now - int(age * DAY_MS):
            held = connection.execute(
                f"SELECT count() FROM {database}.{schema.rollup_name(resolution, 'summary')}_local"  # noqa: S608
                " WHERE time >= %(lo)s AND time < %(hi)s",
                {"lo": number * span, "hi": (number + 1) * span},
            )
            if int(held[0][0]):
                self.late_skipped += 1
                return False
        for table in ROLLUP_TABLES:
            target = f"{database}.{schema.rollup_name(resolution, table.name)}"
            dimensions = "".join(f", {column}" for column in table.columns)
            connection.execute(f"ALTER TABLE {target}_fill DROP PARTITION {number}")
            connection.execute(
                # names are ours; the bounds are bound by the driver
                f"INSERT INTO {target}_fill SELECT intDiv(time, {width}) * {width} AS bucket"  # noqa: S608
                f"{dimensions}, sum(bytes), sum(packets), sum(flows)"
                f" FROM {database}.{schema.rollup_name(source, table.name)}_local"
                f" WHERE time >= %(lo)s AND time < %(hi)s GROUP BY bucket{dimensions}",
                {"lo": lo, "hi": hi},
            )
            connection.execute(
                f"ALTER TABLE {target}_local REPLACE PARTITION {number} FROM {target}_fill"
            )
            connection.execute(f"ALTER TABLE {target}_fill DROP PARTITION {number}")
        return True
