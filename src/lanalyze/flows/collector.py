"""The flow collector component: binds the UDP listeners and runs the worker processes.

``start()`` binds ``workers`` sockets per listen address (SO_REUSEPORT when more than one; a
busy port is a :class:`~lanalyze.errors.BindError` naming ``flows.listen[i]``), sizes their
receive buffers, and spawns one :mod:`lanalyze.flows.worker` process per worker, each given
one socket per address. Work is spread by the kernel: a process per CPU core scales past one
interpreter's GIL, and one exporter always lands on the same worker, where its templates are.

The parent does no per-flow work. A thread per worker reads its counter reports; the parent
merges them, adds the kernel's receive-drop counters of our sockets, serves them on
``/metrics`` (:class:`~lanalyze.flows.exporters.FlowMetrics`) and rewrites
``<data_dir>/flows/exporters.json`` every few seconds for ``lanalyze flows exporters``, and
with it ``interface_counters.json`` from the workers' sFlow counter records
(:mod:`lanalyze.flows.ifcounters`).

``stop()`` asks every worker to store what it holds and waits for it; a worker that does not
finish in time is terminated (SIGTERM, which also flushes) and then killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import multiprocessing
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lanalyze import metrics
from lanalyze.configbase import per_core
from lanalyze.errors import StartError
from lanalyze.flows import ifcounters
from lanalyze.flows.config import FlowsConfig
from lanalyze.flows.exporters import CollectorTotals, FlowMetrics, merge_snapshots
from lanalyze.flows.ifcounters import InterfaceCounterTable
from lanalyze.flows.receive import bound_address, kernel_drops, open_udp, socket_inode
from lanalyze.flows.store.paths import flow_dir, make_flow_dir
from lanalyze.flows.worker import WorkerSpec, worker_main

if TYPE_CHECKING:
    from lanalyze.flows.store.clickhouse.maintain import ClickHouseMaintainer
from lanalyze.log import JsonFormatter, get_logger

log = get_logger(__name__)

EXPORTERS_WRITE_INTERVAL = 2.0
WORKER_START_TIMEOUT = 60.0
WORKER_STOP_TIMEOUT = 8.0
RESPAWN_MIN_SECONDS = 10.0
AUTO_WORKERS_MAX = 8


def _log_settings() -> tuple[Literal["kv", "json"], str]:
    """The parent's logging set-up, for spawned workers that inherit nothing."""
    root = logging.getLogger()
    json_format = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    level = logging.getLevelName(root.getEffectiveLevel()).lower()
    if level not in ("debug", "info", "warning", "error"):
        level = "info"
    return ("json" if json_format else "kv"), level


class _WorkerHandle:
    def __init__(
        self,
        spec: WorkerSpec,
        process: BaseProcess,
        control: Connection,
        reports: Connection,
    ) -> None:
        self.spec = spec
        self.process = process
        self.control = control
        self.reports = reports
        self.started = time.monotonic()
        self.ready = threading.Event()
        self.failed: str | None = None
        self.last: dict[str, Any] = {}
        self.thread: threading.Thread | None = None


class FlowCollector:
    name = "flows"

    def __init__(self, config: FlowsConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.addresses: list[str] = []
        """The bound addresses (a port 0 in the config resolved), in config order."""
        self._socks: list[list[socket.socket]] = []
        self._workers: list[_WorkerHandle] = []
        self._lock = threading.Lock()
        self._started_ms = 0
        self._metrics: FlowMetrics | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._token = ""
        self._retired: list[dict[str, Any]] = []
        self._respawns = 0
        self._upkeep: ClickHouseMaintainer | None = None
        self._interfaces = InterfaceCounterTable()
        self.detection: Any = None
        """Set (an ``AlarmsConfig``) by the alarm engine: workers send their share of
        detection to ``detection_sink`` (:mod:`lanalyze.alarms.partial`)."""
        self.detection_sink: Callable[[Any], None] | None = None

    @property
    def clickhouse(self) -> bool:
        """Flows go to ClickHouse (``flows.store.backend``), not to Parquet files."""
        return self.config.store.backend == "clickhouse"

    @property
    def writer_token(self) -> str:
        """The part of this run's writer ids shared by its workers (``w<n>x<token>``)."""
        return self._token

    @property
    def worker_count(self) -> int:
        # Automatic: one per core, but each worker's socket may hold flows.receive_buffer of
        # kernel memory, so a large machine does not get dozens by default.
        return per_core(self.config.workers, AUTO_WORKERS_MAX)

    # -- start -------------------------------------------------------------------------------

    def _bind(self) -> None:
        workers = self.worker_count
        try:
            for index, address in enumerate(self.config.listen):
                key = f"flows.listen[{index}]"
                buffer = self.config.receive_buffer
                first = open_udp(address, key, receive_buffer=buffer, reuse_port=workers > 1)
                group = [first]
                self._socks.append(group)
                actual = bound_address(first)
                for _ in range(workers - 1):
                    group.append(
                        open_udp(actual, key, receive_buffer=buffer, reuse_port=True, join=True)
                    )
                self.addresses.append(actual)
        except BaseException:
            self._close_sockets()
            raise

    def _close_sockets(self) -> None:
        for group in self._socks:
            for sock in group:
                sock.close()
        self._socks.clear()

    def _spawn(self) -> None:
        self._token = secrets.token_hex(3)
        for index in range(self.worker_count):
            self._workers.append(self._spawn_worker(index, f"w{index}x{self._token}"))

    def _spawn_worker(self, index: int, writer_id: str) -> _WorkerHandle:
        context = multiprocessing.get_context("spawn")
        log_format, log_level = _log_settings()
        spec = WorkerSpec(
            index=index,
            writer_id=writer_id,
            data_dir=self.data_dir,
            flush_interval=self.config.flush_interval,
            segment_max_rows=self.config.segment_max_rows,
            compression=self.config.compression,
            compression_level=self.config.compression_level,
            max_templates_per_exporter=self.config.max_templates_per_exporter,
            max_exporters=self.config.max_exporters,
            sampling_rates=dict(self.config.sampling_rates),
            template_memory=self.config.template_memory,
            template_memory_per_exporter=self.config.template_memory_per_exporter,
            max_records_per_datagram=self.config.max_records_per_datagram,
            exporters_allowed=(
                None
                if self.config.exporters_allowed is None
                else list(self.config.exporters_allowed)
            ),
            enrich=self.config.enrich,
            networks=dict(self.config.networks),
            log_format=log_format,
            log_level=log_level,
            clickhouse=self.config.store if self.clickhouse else None,
            spool_max_bytes=self.config.store.spool_max_bytes // self.worker_count,
            detect=self.detection,
            detect_workers=self.worker_count,
        )
        control_parent, control_child = context.Pipe()
        reports_parent, reports_child = context.Pipe(duplex=False)
        socks = [group[index] for group in self._socks]
        process = context.Process(
            target=worker_main,
            args=(spec, socks, control_child, reports_child),
            name=f"lanalyze-flows-{index}",
            daemon=True,
        )
        process.start()
        control_child.close()
        reports_child.close()
        handle = _WorkerHandle(spec, process, control_parent, reports_parent)
        handle.thread = threading.Thread(
            target=self._read_reports, args=(handle,), name=f"flow-reports-{index}"
        )
        handle.thread.daemon = True
        handle.thread.start()
        return handle

    def _respawn_dead_workers(self) -> None:
        """A worker that died (our bug, or the OOM killer) leaves its sockets unread: the
        kernel keeps sending its exporters there. Start a new one on the same sockets; its
        predecessor's counters are kept so the totals never go backwards."""
        now = time.monotonic()
        for position, handle in enumerate(self._workers):
            if self._stopping or handle.process.is_alive():
                continue
            if now - handle.started < RESPAWN_MIN_SECONDS:
                continue
            handle.process.join(0)
            if handle.thread is not None:
                handle.thread.join(1.0)
            handle.control.close()
            handle.reports.close()
            with self._lock:
                self._retired.append(dict(handle.last))
            self._respawns += 1
            index = handle.spec.index
            log.error(
                "flows.worker_restarted",
                extra={"worker": index, "exitcode": handle.process.exitcode},
            )
            self._workers[position] = self._spawn_worker(
                index, f"w{index}x{self._token}r{self._respawns}"
            )

    def _read_reports(self, handle: _WorkerHandle) -> None:
        while True:
            try:
                kind, message = handle.reports.recv()
            except (EOFError, OSError):
                break
            if kind == "failed":
                handle.failed = str(message)
                handle.ready.set()
                break
            if kind == "detect":
                sink = self.detection_sink
                if sink is not None:
                    sink(message)
                continue
            with self._lock:
                if isinstance(message, dict):
                    self._interfaces.update(message.pop("interface_counters", ()))
                handle.last = message
            handle.ready.set()
        handle.ready.set()
        if not self._stopping and handle.failed is None:
            # A worker exits 0 only after a SIGTERM: systemd's stop signals every process of
            # the service at once, so the workers may finish before we hear of the stop.
            # That is a clean stop, not a crash to report (or an error in the journal).
            handle.process.join(2.0)
            exitcode = handle.process.exitcode
            if exitcode == 0:
                log.info("flows.worker_stopped", extra={"worker": handle.spec.index})
            else:
                log.error(
                    "flows.worker_exited",
                    extra={"worker": handle.spec.index, "exitcode": exitcode},
                )

    def _wait_ready(self) -> list[str]:
        """Problems of workers that did not start (empty when all run)."""
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        problems = []
        for handle in list(self._workers):
            handle.ready.wait(max(0.0, deadline - time.monotonic()))
            if handle.failed:
                problems.append(handle.failed)
            elif not handle.last:
                problems.append(f"worker {handle.spec.index} did not start")
        return problems

    async def _announce_ready(self) -> None:
        problems = await asyncio.to_thread(self._wait_ready)
        if problems:
            for problem in problems:
                log.error("flows.worker_start_failed", extra={"problem": problem})
        else:
            log.info("flows.ready", extra={"workers": len(self._workers)})

    async def start(self) -> None:
        """Bind (errors name the key), then spawn the workers without waiting for them.

        The sockets are bound before the workers exist, so what arrives while they import
        their libraries (seconds on a busy machine) waits in the kernel buffer; other
        components need not wait. ``flows.ready`` is logged once every worker runs.
        """
        self._started_ms = time.time_ns() // 1_000_000
        self._stopping = False
        self._retired = []
        self._bind()
        try:
            flows_dir = flow_dir(self.data_dir)
            try:
                # Private (0700) where new: flows say who talks to whom (docs/security.md).
                await asyncio.to_thread(make_flow_dir, self.data_dir)
            except OSError as exc:
                raise StartError(
                    f"cannot create the flow store {flows_dir} (general.data_dir): "
                    f"{exc.strerror or exc}"
                ) from None
            clickhouse_ready = True
            if self.clickhouse:
                clickhouse_ready = await self._check_clickhouse()
            await asyncio.to_thread(self._spawn)
        except BaseException:
            await self._shutdown_workers()
            self._close_sockets()
            raise
        self._metrics = FlowMetrics(self.totals)
        metrics.REGISTRY.register(self._metrics)
        self._tasks = [
            asyncio.create_task(self._write_exporters_periodically()),
            asyncio.create_task(self._announce_ready()),
        ]
        if self._upkeep is not None:
            self._tasks.append(asyncio.create_task(self._clickhouse_upkeep(clickhouse_ready)))
        for address in self.addresses:
            log.info("flows.listening", extra={"address": address, "workers": len(self._workers)})

    # -- ClickHouse --------------------------------------------------------------------------

    async def _check_clickhouse(self) -> bool:
        """Create the missing tables on every server; a differing schema refuses the start.
        An unreachable server does not: flows are spooled until it answers."""
        from lanalyze.flows.errors import SchemaMismatch
        from lanalyze.flows.store.clickhouse.maintain import ClickHouseMaintainer
        from lanalyze.flows.store.clickhouse.spool import adopt_orphans
        from lanalyze.flows.store.paths import SPOOL

        moved = await asyncio.to_thread(
            adopt_orphans, flow_dir(self.data_dir) / SPOOL, self.worker_count
        )
        if moved:
            log.info("flows.spool_adopted", extra={"batches": moved})
        self._upkeep = ClickHouseMaintainer(self.config.store, self.config.rollup)
        try:
            return await asyncio.to_thread(self._upkeep.ensure)
        except SchemaMismatch as exc:
            raise StartError(f"flows.store: {exc}") from None

    async def _clickhouse_upkeep(self, ready: bool) -> None:
        """Until every server has the schema, try again every retry_interval; then drop
        partitions past retention every flows.rollup.interval (when rollups are enabled)."""
        from lanalyze.flows.errors import SchemaMismatch

        assert self._upkeep is not None
        while not ready:
            await asyncio.sleep(self.config.store.retry_interval)
            try:
                ready = await asyncio.to_thread(self._upkeep.ensure)
            except SchemaMismatch as exc:
                # Found later (the server was down at start): the inserts will fail and
                # spool; say loudly why, once per round.
                log.error("flows.clickhouse_schema_differs", extra={"error": str(exc)})
        if not self.config.rollup.enabled:
            return
        while True:
            if self.config.store.fill_rollups:
                # before expire: a day is recomputed while its minutes are still there
                await asyncio.to_thread(self._upkeep.fill)
            await asyncio.to_thread(self._upkeep.expire)
            await asyncio.sleep(self.config.rollup.interval)

    # -- counters ----------------------------------------------------------------------------

    def totals(self) -> CollectorTotals:
        with self._lock:
            reports = [dict(handle.last) for handle in self._workers] + self._retired
            # Counter records the table refused (new interfaces beyond its bound): on the
            # workers' metric of dropped counter records.
            decoder: dict[str, int] = {"interface_counters_dropped": self._interfaces.dropped}
        store: dict[str, int] = self._upkeep.counters() if self._upkeep is not None else {}
        for report in reports:
            for name, value in report.get("store", {}).items():
                store[name] = store.get(name, 0) + int(value)
            for name, value in report.get("decoder", {}).items():
                decoder[name] = decoder.get(name, 0) + int(value)
        drops_by_inode = kernel_drops(
            socket_inode(sock) for group in self._socks for sock in group if sock.fileno() >= 0
        )
        drops: dict[str, int] = {}
        for address, group in zip(self.addresses, self._socks, strict=False):
            drops[address] = sum(
                drops_by_inode.get(socket_inode(sock), 0) for sock in group if sock.fileno() >= 0
            )
        return CollectorTotals(
            exporters=merge_snapshots(
                (report.get("exporters", []) for report in reports), self.config.max_exporters
            ),
            kernel_drops=drops,
            store=store,
            decoder=decoder,
            datagrams=sum(int(report.get("datagrams", 0)) for report in reports),
            started_ms=self._started_ms,
        )

    def _write_exporters(self) -> None:
        try:
            self.totals().write(self.data_dir)
        except OSError as exc:
            log.error("flows.exporters_write_failed", extra={"error": str(exc)})
        with self._lock:
            snapshot = self._interfaces.snapshot()
        if snapshot is not None:
            try:
                ifcounters.write(flow_dir(self.data_dir), snapshot)
            except OSError as exc:
                self._interfaces.changed = True  # written again next time
                log.error("flows.interface_counters_write_failed", extra={"error": str(exc)})

    async def _write_exporters_periodically(self) -> None:
        while True:
            await asyncio.sleep(EXPORTERS_WRITE_INTERVAL)
            await asyncio.to_thread(self._respawn_dead_workers)
            await asyncio.to_thread(self._write_exporters)

    # -- stop --------------------------------------------------------------------------------

    async def _shutdown_workers(self) -> None:
        self._stopping = True
        for handle in self._workers:
            with contextlib.suppress(OSError):
                handle.control.send("stop")
        await asyncio.to_thread(self._join_workers)

    def _join_workers(self) -> None:
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT
        for handle in self._workers:
            handle.process.join(max(0.1, deadline - time.monotonic()))
        for handle in self._workers:
            if handle.process.is_alive():
                log.error("flows.worker_stop_timeout", extra={"worker": handle.spec.index})
                handle.process.terminate()
                handle.process.join(1.0)
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join(1.0)
            if handle.thread is not None:
                handle.thread.join(1.0)
            handle.control.close()
            handle.reports.close()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._shutdown_workers()
        await asyncio.to_thread(self._write_exporters)
        if self._metrics is not None:
            metrics.REGISTRY.unregister(self._metrics)
            self._metrics = None
        self._close_sockets()
        self._workers.clear()
        log.info("flows.stopped")


DEFAULT_PORT = 2055


def with_default_port(value: str) -> str:
    """``ADDR`` alone (``192.0.2.1``, ``::``, ``[::1]``) means ``ADDR:2055``."""
    if value.startswith("["):
        return value if "]:" in value else f"{value}:{DEFAULT_PORT}"
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value if ":" in value else f"{value}:{DEFAULT_PORT}"
    return f"[{address}]:{DEFAULT_PORT}" if address.version == 6 else f"{value}:{DEFAULT_PORT}"


async def run_until_signalled(collector: FlowCollector) -> None:
    """``lanalyze flows collect``: run until SIGINT/SIGTERM, then store everything and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await collector.start()
    try:
        await stop.wait()
        log.info("flows.stopping")
    finally:
        await collector.stop()
