"""The collector's ClickHouse upkeep: the schema at start, retention by partition drops.

At start (:meth:`ClickHouseMaintainer.ensure`) every server of ``flows.store.servers`` gets the
tables it lacks (:func:`.schema.ensure`; no ``ON CLUSTER`` without ZooKeeper); a table that
differs is a :class:`~lanalyze.flows.errors.SchemaMismatch`, which the collector turns into a
refusal to start. A server that cannot be reached is not an error: the collector keeps
receiving (its workers spool) and tries again every ``flows.store.retry_interval``.

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
from lanalyze.log import RateLimiter, get_logger

log = get_logger(__name__)

DAY_MS = 86_400_000


class ClickHouseMaintainer:
    def __init__(self, store: StoreConfig, rollup: RollupConfig) -> None:
        self.store = store
        self.retention = schema.Retention.from_config(rollup)
        self.ready: set[str] = set()
        """Servers whose schema is checked and complete."""
        self.dropped = 0
        self.limiter = RateLimiter(interval=60.0, burst=2)

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
                extra={"server": server, "database": self.store.database, "created": len(created)},
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
