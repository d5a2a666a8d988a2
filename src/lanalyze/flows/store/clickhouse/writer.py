"""The collector's ClickHouse writer: columnar inserts, a disk spool, exactly-once replay.

It stands where :class:`~lanalyze.flows.store.writer.SegmentWriter` stands (same ``write``,
``stats``, ``writer_id``, ``schema``), behind the same
:class:`~lanalyze.flows.store.writer.BackgroundWriter` thread, so the workers' receive loop
is the same for both backends and a slow ClickHouse never stops receiving.

**Insert.** A worker's batch (up to ``flows.segment_max_rows`` flows) is cut into inserts of
at most :data:`MAX_INSERT_ROWS` rows, each sent as ONE native-protocol block
(``clickhouse_driver``, ``columnar=True``, numpy arrays: the numeric columns go over the wire
as their buffers, no Python object per value). Every row of an insert carries the insert's
``batch_id`` (random 64 bits). Where it can, the writer inserts straight into a shard's
``flows_local``, the shards in turn (one insert each): when every shard of
``flows.store.cluster`` (``system.clusters``, asked once per connection) has one server and
that server is in ``flows.store.servers`` by the same host and port. Otherwise it inserts
into the Distributed table ``flows`` with ``insert_distributed_sync=1``, where the batch id
is the sharding key. Either way the whole insert goes to one shard, as one block, which
MergeTree writes as one part: all or nothing. Straight is cheaper: through the Distributed
table, the server asked parses every block and, for half of them, encodes and sends it on to
the other shard, which parses it again.

**Spool.** An insert that fails (connection refused, timeout, server error) goes to the
worker's :class:`~.spool.Spool` on local disk with its batch id; so do later batches while the
spool is not empty (order kept, and a dead server is not asked for every batch) until
``flows.store.retry_interval`` has passed. Then the spool is replayed oldest first.

**Exactly once.** 18.16's plain MergeTree has no insert deduplication, and an insert that
raised may still have been stored (the answer was lost, or came after our timeout). So before
inserting a spooled batch the writer asks the cluster ``count() ... WHERE batch_id = <id>``
(within the batch's ``time_received`` range, which the primary key prunes): the batch's row
count means it is stored (the file is removed, counted as a duplicate avoided), zero means it
is not (it is inserted), and a query that fails leaves it spooled for the next round. As an
insert is one part on one shard, there is no third answer; should one come (a partial
insert by some future server), it is logged and the batch left out rather than doubled. The
one case this cannot see is an insert still running on the server when the check runs (our
timeout shorter than the server's work): ``flows.store.insert_timeout`` should stay well
above an insert's time, and the replay waits ``retry_interval`` first.

Counters (``stats``, summed by the collector onto ``/metrics``): inserts, rows, insert
errors, spooled/replayed/duplicate batches, spool bytes and files (gauges), dropped rows and
batches (spool full). Errors are logged rate-limited, naming the servers, never the password.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lanalyze.flows.catalogue import COLUMNS, as_stored, batch_schema
from lanalyze.flows.config import StoreConfig, parse_server
from lanalyze.flows.store.clickhouse import columns
from lanalyze.flows.store.clickhouse.connect import INSERT_SETTINGS, client, servers_text
from lanalyze.flows.store.clickhouse.schema import BATCH_COLUMN, RAW, RAW_LOCAL, TEXT_DIMENSIONS
from lanalyze.flows.store.clickhouse.spool import Spool
from lanalyze.flows.store.writer import StoreStats
from lanalyze.log import RateLimiter, get_logger

log = get_logger(__name__)

MAX_INSERT_ROWS = 1_000_000
"""Rows per insert: below the driver's ``insert_block_size`` (1,048,576), so an insert is one
block and one part."""
_INSERT_COLUMNS = ", ".join([c.name for c in COLUMNS] + [BATCH_COLUMN])


def new_batch_id() -> int:
    """64 random bits, never 0 (rows inserted by other means carry 0)."""
    return int.from_bytes(os.urandom(8), "little") or 1


def numpy_columns(table: pa.Table, batch_id: int) -> list[np.ndarray]:
    """The columns of a catalogue table as the driver's numpy input, in catalogue order.

    Numbers are zero-copy views where Arrow holds one chunk; addresses become ``S16`` views of
    the fixed-size binary buffer; the enrichment names ``S`` arrays with ``''`` for null
    (:func:`text_values`), both written as whole buffers (:mod:`.columns`); ``extra``
    (nullable, rarely set) an object array of str/None."""
    rows = table.num_rows
    arrays: list[np.ndarray] = []
    for column in COLUMNS:
        data = table.column(column.name)
        if column.kind == "ip":
            chunk = data.combine_chunks() if data.num_chunks != 1 else data.chunk(0)
            buffer = chunk.buffers()[1]
            arrays.append(np.frombuffer(buffer, dtype="S16", count=rows, offset=chunk.offset * 16))
        elif column.name in TEXT_DIMENSIONS:
            arrays.append(text_values(data))
        elif column.kind == "str":
            arrays.append(data.to_numpy(zero_copy_only=False))
        else:
            arrays.append(data.to_numpy())
    arrays.append(np.full(rows, batch_id, dtype=np.uint64))
    return arrays


def text_values(data: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A text column for a ClickHouse ``String`` (:data:`~.schema.TEXT_DIMENSIONS`): UTF-8 in
    an ``S<W>`` array, null as ``''``, which :mod:`.columns` writes as one buffer. Through a
    dictionary: each distinct name is encoded once (a batch holds a few dozen names in a
    million rows) and the rows are one numpy ``take``; a column with no name at all
    (enrichment not configured) is one ``zeros``."""
    rows = len(data)
    if data.null_count == rows:
        return np.zeros(rows, dtype="S1")
    if isinstance(data, pa.ChunkedArray):
        data = data.combine_chunks()
    if not pa.types.is_dictionary(data.type):
        data = pc.dictionary_encode(data)
    encoded = [name.encode() for name in data.dictionary.to_pylist()]
    names = np.array([*encoded, b""], dtype=f"S{max(1, *map(len, encoded))}")
    # the last name, '', is the index null rows get
    indices = pc.fill_null(data.indices, len(data.dictionary)).to_numpy()
    result: np.ndarray = names[indices]
    return result


class ClickHouseWriter:
    """Inserts tables into ``<database>.flows``; spools and replays when that fails."""

    def __init__(
        self,
        config: StoreConfig,
        writer_id: str,
        spool: Spool,
        *,
        max_insert_rows: int = MAX_INSERT_ROWS,
    ) -> None:
        self.config = config
        self.writer_id = writer_id
        self.schema = batch_schema()  # what the workers hand over (names as dictionaries)
        self.spool = spool
        self.max_insert_rows = max_insert_rows
        self.stats = StoreStats()
        self.limiter = RateLimiter(interval=30.0, burst=3)
        self._client: Any = None
        self._shards: list[str] | None = None
        """The servers to insert into straight, shard by shard; [] through ``flows``; None:
        not asked yet on this connection."""
        self._shard_clients: dict[str, Any] = {}
        self._turn = 0
        self._retry_at = 0.0
        self._insert_sql = f"INSERT INTO {config.database}.{RAW} ({_INSERT_COLUMNS}) VALUES"
        self._local_sql = f"INSERT INTO {config.database}.{RAW_LOCAL} ({_INSERT_COLUMNS}) VALUES"
        self._count_sql = (
            # database: a validated identifier; the values are bound by the driver
            f"SELECT count() FROM {config.database}.{RAW} WHERE time_received >= %(lo)s"  # noqa: S608
            f" AND time_received <= %(hi)s AND {BATCH_COLUMN} = %(id)s"
        )
        self._sync_spool_stats()

    # -- the SegmentWriter interface ---------------------------------------------------------

    def write(self, batches: Sequence[pa.RecordBatch] | pa.Table) -> list[int]:
        """Insert (or spool) the rows; returns the batch ids they went under."""
        table = as_stored(
            batches
            if isinstance(batches, pa.Table)
            else pa.Table.from_batches(list(batches), schema=self.schema)
        )
        ids = []
        for start in range(0, table.num_rows, self.max_insert_rows):
            part = table.slice(start, self.max_insert_rows)
            batch_id = new_batch_id()
            ids.append(batch_id)
            if (
                len(self.spool)
                or time.monotonic() < self._retry_at
                or not self._insert(part, batch_id)
            ):
                self._to_spool(part, batch_id)
        self.replay()
        return ids

    def idle(self) -> None:
        """Called by the writer thread when no batch came for a while: replay the spool."""
        self.replay()

    def remove_stale_temporaries(self) -> int:
        """Take up the spool a previous run left (its crash temporaries are deleted)."""
        self.spool.load()
        self._sync_spool_stats()
        if len(self.spool):
            log.info(
                "flows.spool_found",
                extra={
                    "writer": self.writer_id,
                    "batches": len(self.spool),
                    "bytes": self.spool.bytes,
                },
            )
        return 0

    def close(self) -> None:
        self._disconnect()

    # -- inserts -----------------------------------------------------------------------------

    def _connection(self, server: str | None = None) -> Any:
        """The client of the servers in order (``server`` None) or of one server."""
        if server is not None:
            if server not in self._shard_clients:
                columns.install()
                self._shard_clients[server] = client(
                    self.config, server, use_numpy=True, strings_as_bytes=True
                )
            return self._shard_clients[server]
        if self._client is None:
            columns.install()
            # strings as bytes: addresses and names go as the S arrays numpy_columns makes
            self._client = client(self.config, use_numpy=True, strings_as_bytes=True)
        return self._client

    def _disconnect(self) -> None:
        for connection in [self._client, *self._shard_clients.values()]:
            if connection is not None:
                # closing a connection that already broke: nothing to report
                with contextlib.suppress(Exception):
                    connection.disconnect()
        self._client = None
        self._shard_clients = {}
        self._shards = None

    def shard_servers(self) -> list[str]:
        """The configured server of each shard, in shard order, when every shard of the
        cluster has exactly one and it is configured; [] otherwise (module docstring)."""
        if self._shards is None:
            rows = self._connection().execute(
                "SELECT shard_num, host_name, host_address, port FROM system.clusters"
                " WHERE cluster = %(cluster)s",
                {"cluster": self.config.cluster},
            )
            self._shards = _shard_servers(rows, self.config.servers)
            log.info(
                "flows.clickhouse_insert_path",
                extra={
                    "writer": self.writer_id,
                    "path": "shards" if self._shards else "distributed",
                    "shards": len(self._shards),
                },
            )
        return self._shards

    def _failed(self, action: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self._disconnect()
        self._retry_at = time.monotonic() + self.config.retry_interval
        suppressed = self.limiter.allow(action)
        if suppressed is not None:
            log.warning(
                "flows.clickhouse_failed",
                extra={
                    "writer": self.writer_id,
                    "action": action,
                    "servers": servers_text(self.config),
                    "error": _short(exc),
                    "spooled_batches": len(self.spool),
                    "suppressed": suppressed,
                },
            )

    def _insert(self, table: pa.Table, batch_id: int) -> bool:
        from clickhouse_driver.errors import Error as DriverError

        try:
            shards = self.shard_servers()
            if shards:
                self._turn = (self._turn + 1) % len(shards)
                self._connection(shards[self._turn]).execute(
                    self._local_sql, numpy_columns(table, batch_id), columnar=True
                )
            else:
                self._connection().execute(
                    self._insert_sql,
                    numpy_columns(table, batch_id),
                    columnar=True,
                    settings=INSERT_SETTINGS,
                )
        except (TimeoutError, DriverError, OSError, EOFError) as exc:
            self._failed("insert", exc)
            return False
        self.stats.inserts += 1
        self.stats.rows += table.num_rows
        return True

    def _stored_rows(self, table: pa.Table, batch_id: int) -> int | None:
        """Rows of ``batch_id`` the cluster holds; None when it cannot be asked now."""
        from clickhouse_driver.errors import Error as DriverError

        received = table.column("time_received")
        params = {
            "lo": int(pc.min(received).as_py()),
            "hi": int(pc.max(received).as_py()),
            "id": batch_id,
        }
        try:
            result = self._connection().execute(self._count_sql, params)
        except (TimeoutError, DriverError, OSError, EOFError) as exc:
            self._failed("check", exc)
            return None
        return int(result[0][0])

    def insert_once(self, table: pa.Table, batch_id: int) -> str | None:
        """Store ``table`` under ``batch_id`` unless the cluster already holds it: "inserted",
        "present", "partial" (logged; left alone), or None when ClickHouse failed."""
        stored = self._stored_rows(table, batch_id)
        if stored is None:
            return None
        if stored == table.num_rows:
            self.stats.duplicates += 1
            return "present"
        if stored:
            log.error(
                "flows.clickhouse_partial_batch",
                extra={
                    "batch": f"{batch_id:016x}",
                    "rows": table.num_rows,
                    "stored": stored,
                },
            )
            self.stats.partial += 1
            return "partial"
        return "inserted" if self._insert(table, batch_id) else None

    # -- the spool ---------------------------------------------------------------------------

    def _to_spool(self, table: pa.Table, batch_id: int) -> None:
        if self.spool.put(table, batch_id):
            self.stats.spooled += 1
        else:
            suppressed = self.limiter.allow("spool_full")
            if suppressed is not None:
                log.error(
                    "flows.spool_full",
                    extra={
                        "writer": self.writer_id,
                        "rows": table.num_rows,
                        "spool_bytes": self.spool.bytes,
                        "suppressed": suppressed,
                    },
                )
        self._sync_spool_stats()

    def replay(self) -> None:
        """Insert spooled batches, oldest first, each exactly once, until one fails."""
        while len(self.spool) and time.monotonic() >= self._retry_at:
            entry = self.spool.oldest()
            assert entry is not None
            table = self.spool.read(entry)
            if table is None:
                continue
            if table.num_rows == 0:
                self.spool.remove(entry)
                continue
            outcome = self.insert_once(table, entry.batch_id)
            if outcome is None:
                break
            if outcome == "inserted":
                self.stats.replayed += 1
            self.spool.remove(entry)
            self._sync_spool_stats()
        self._sync_spool_stats()

    def _sync_spool_stats(self) -> None:
        self.stats.spool_bytes = self.spool.bytes
        self.stats.spool_segments = len(self.spool)
        self.stats.spool_dropped_rows = self.spool.dropped_rows
        self.stats.spool_dropped_batches = self.spool.dropped_batches


def _shard_servers(rows: Sequence[tuple[Any, ...]], servers: Sequence[str]) -> list[str]:
    """``system.clusters`` rows (shard, host name, host address, port) against the
    configured ``servers``: one configured server per shard, in shard order, or []."""
    configured: dict[tuple[str, int], str] = {}
    for server in servers:
        configured.setdefault(parse_server(server), server)
    replicas: dict[int, list[tuple[str, str, int]]] = {}
    for shard, name, address, port in rows:
        replicas.setdefault(int(shard), []).append((_text(name), _text(address), int(port)))
    found = []
    for shard in sorted(replicas):
        if len(replicas[shard]) != 1:
            return []  # replicas: the Distributed table knows which is alive
        name, address, port = replicas[shard][0]
        match = configured.get((name, port)) or configured.get((address, port))
        if match is None:
            return []
        found.append(match)
    return found


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _short(exc: BaseException) -> str:
    """The first line of an error (a server exception carries its whole stack trace)."""
    text = str(exc).strip().splitlines()
    head = text[0] if text else type(exc).__name__
    if len(text) > 1 and head.startswith("Code:"):
        head = f"{head} {text[1]}"
    return head[:300]
