"""One flow worker process: receive -> decode -> hand to the store writer thread.

The parent binds one socket per listen address per worker (SO_REUSEPORT), so the kernel
spreads exporters over workers and keeps each exporter on one worker: its templates stay in
that worker's decoder. A worker owns its decoder, its writer id and its template file.

The loop reads datagrams in batches (:class:`~lanalyze.flows.receive.BatchReceiver`), decodes
each batch at once (the decoders are vectorised over records) and collects Arrow batches;
every ``flush_interval`` (or ``segment_max_rows``) they go to the
:class:`~lanalyze.flows.store.writer.BackgroundWriter`, which writes Parquet in its own thread
(pyarrow releases the GIL), so a slow disk never stops receiving; with
``[flows.store] backend = "clickhouse"`` the same thread inserts into ClickHouse instead
(:mod:`lanalyze.flows.store.clickhouse.writer`), spooling to local disk while it is away.

Counters go to the parent every second over a pipe; the parent owns ``/metrics`` and
``exporters.json``. SIGINT is ignored (Ctrl-C reaches the whole process group; the parent
decides), SIGTERM and a ``stop`` message or the parent's death flush and exit.

Trust: datagrams are untrusted; the decoder never raises on them, and if it raised anyway
(our bug) the batch is counted as a decode error per exporter and logged, not fatal.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import os
import select
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import pyarrow as pa

from lanalyze.datadir import atomic_write_bytes
from lanalyze.flows import catalogue
from lanalyze.flows.config import StoreConfig
from lanalyze.flows.enrich import enrich_or_log, make_enricher
from lanalyze.flows.enrich.config import EnrichConfig, NetworkAttributes
from lanalyze.flows.exporters import ExporterCounterSet
from lanalyze.flows.receive import BatchReceiver, Received
from lanalyze.flows.store.paths import flow_dir, spool_dir, template_file, templates_dir
from lanalyze.flows.store.writer import (
    BackgroundWriter,
    Compression,
    SegmentWriter,
    StoreWriter,
)
from lanalyze.log import RateLimiter, get_logger, setup_logging

log = get_logger(__name__)

REPORT_INTERVAL = 1.0
TEMPLATE_SAVE_INTERVAL = 2.0
DRAIN_SECONDS = 0.1
BATCH_GATHER_SECONDS = 0.05
"""Seconds a worker lets datagrams gather after a drain. Each batch has a fixed cost, so at
0.5 M flows/s a worker's receive thread spent 0.37-0.40 µs a flow with 20 ms, 0.26-0.29 with
50 ms and 0.25-0.26 with 100 ms (docs/performance.md, issue 19); 50 ms of v5 at 1.5 M flows/s
is 2,500 datagrams, a few MB of the 64 MiB receive buffer, and nothing against the 1 s flush
interval."""
MAX_PENDING_INTERFACES = 10_000
"""sFlow interface counter records a worker holds between two reports (one a second); more
are dropped and counted (``lanalyze_flow_interface_counters_dropped_total``). Agents send one
per interface every 20-30 s."""
GC_THRESHOLD = 50_000
"""Allocations between young-generation collections in a worker (Python's default: 700)."""


@dataclass
class WorkerSpec:
    index: int
    writer_id: str
    data_dir: Path
    flush_interval: float = 1.0
    segment_max_rows: int = 500_000
    compression: Compression = "lz4"
    compression_level: int | None = None
    max_templates_per_exporter: int = 1024
    max_exporters: int = 10_000
    sampling_rates: dict[str, int] = field(default_factory=dict)
    template_memory: int = 64 * 2**20
    template_memory_per_exporter: int = 4 * 2**20
    max_records_per_datagram: int = 4096
    exporters_allowed: list[str] | None = None
    enrich: EnrichConfig | None = None
    """Enrichment at ingest (None or not enabled: the text columns stay null)."""
    networks: dict[str, NetworkAttributes] = field(default_factory=dict)
    log_format: Literal["kv", "json"] = "kv"
    log_level: str = "info"
    clickhouse: StoreConfig | None = None
    """Set: the ClickHouse backend (flows.store), this worker spooling to at most
    ``spool_max_bytes``."""
    spool_max_bytes: int = 0
    detect: Any = None
    """Set (an ``AlarmsConfig``): detection runs beside this collector, and the worker sends
    its share of it (:mod:`lanalyze.alarms.partial`) to the parent every flush."""
    detect_workers: int = 1


def merge_template_states(blobs: list[bytes]) -> bytes:
    """One decoder state holding the exporters of several saved ones (later blobs win).

    The state is the decoder's versioned JSON (``{"version", "exporters": [{"exporter",
    ...}]}``); anything else is passed through whole for the decoder to judge.
    """
    if len(blobs) == 1:
        return blobs[0]
    merged: dict[str, Any] = {}
    version: Any = None
    try:
        for blob in blobs:
            data = json.loads(blob)
            if version is not None and data["version"] != version:
                raise ValueError("template states of different versions")
            version = data["version"]
            for item in data["exporters"]:
                merged[str(item["exporter"])] = item
    except (ValueError, KeyError, TypeError):
        return blobs[-1]
    return json.dumps({"version": version, "exporters": list(merged.values())}).encode()


class ProblemLog:
    """Decode problems: every one counted by the decoder, a few logged per exporter."""

    def __init__(self) -> None:
        self.limiter = RateLimiter(interval=10.0, burst=5)
        self.count = 0

    def report(self, exporter: str, reason: str) -> None:
        self.count += 1
        suppressed = self.limiter.allow(exporter)
        if suppressed is not None:
            log.warning(
                "flows.bad_datagram",
                extra={"exporter": exporter, "reason": reason, "suppressed": suppressed},
            )


class FlowWorker:
    """The loop of one worker; :func:`worker_main` runs it in a child process."""

    def __init__(
        self,
        spec: WorkerSpec,
        socks: list[socket.socket],
        control: Connection | None = None,
        reports: Connection | None = None,
    ) -> None:
        from lanalyze.flows.decode import FlowDecoder

        self.spec = spec
        self.socks = socks
        self.control = control
        self.reports = reports
        self.decoder = FlowDecoder(
            max_templates_per_exporter=spec.max_templates_per_exporter,
            max_exporters=spec.max_exporters,
            sampling_rates=spec.sampling_rates,
            memory_budget=spec.template_memory,
            exporter_share=spec.template_memory_per_exporter,
            max_records_per_datagram=spec.max_records_per_datagram,
            exporters_allowed=spec.exporters_allowed,
        )
        self.writer: StoreWriter
        if spec.clickhouse is not None:
            from lanalyze.flows.store.clickhouse.spool import Spool
            from lanalyze.flows.store.clickhouse.writer import ClickHouseWriter

            spool = Spool(spool_dir(flow_dir(spec.data_dir), spec.index), spec.spool_max_bytes)
            self.writer = ClickHouseWriter(spec.clickhouse, spec.writer_id, spool)
        else:
            self.writer = SegmentWriter(
                flow_dir(spec.data_dir),
                spec.writer_id,
                compression=spec.compression,
                compression_level=spec.compression_level,
            )
        self.store = BackgroundWriter(self.writer)
        self.receiver = BatchReceiver(socks)
        self.enricher = make_enricher(
            spec.enrich, spec.networks, flow_dir(spec.data_dir), self.decoder.application_names
        )
        self.counters = ExporterCounterSet(spec.max_exporters)
        self.detection: Any = None
        if spec.detect is not None:
            from lanalyze.alarms.partial import Reducer

            self.detection = Reducer(spec.detect, spec.detect_workers)
        self.problems = ProblemLog()
        self.stopping = False
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_since = 0.0
        self._templates_saved: bytes | None = None
        # sFlow counter records since the last report, in arrival order (the parent makes
        # rates of consecutive ones).
        self._interface_counters: list[list[int | str]] = []

    # -- templates -------------------------------------------------------------------------

    @property
    def template_file(self) -> Path:
        return template_file(flow_dir(self.spec.data_dir), self.spec.index)

    def load_templates(self) -> None:
        """Load every worker's saved templates: after a restart an exporter may hash to a
        different worker than before. This worker's own file wins where they overlap."""
        directory = templates_dir(flow_dir(self.spec.data_dir))
        files = sorted(directory.glob("worker-*.bin")) if directory.is_dir() else []
        files.sort(key=lambda path: path == self.template_file)
        blobs: list[bytes] = []
        for path in files:
            try:
                blobs.append(path.read_bytes())
            except OSError as exc:
                log.warning("flows.templates_unreadable", extra={"file": str(path), "error": exc})
        if not blobs:
            return
        try:
            self.decoder.load_templates(merge_template_states(blobs))
        except ValueError as exc:
            log.warning("flows.templates_unusable", extra={"error": str(exc)})
        self._templates_saved = self.decoder.save_templates()

    def save_templates(self) -> None:
        state = self.decoder.save_templates()
        if state == self._templates_saved:
            return
        try:
            atomic_write_bytes(self.template_file, state)
            self._templates_saved = state
        except OSError as exc:
            log.error("flows.templates_save_failed", extra={"error": str(exc)})

    # -- the loop ----------------------------------------------------------------------------

    def ingest(self, got: Received) -> int:
        """Decode one batch of datagrams and queue its flows; returns the flow count."""
        from lanalyze.flows.decode import Packet

        received_ms = got.received_ms
        try:
            if got.rows is not None:
                assert got.lengths is not None and got.exporter_codes is not None
                batch = self.decoder.decode_rows(
                    got.rows, got.lengths, got.exporter_codes, got.exporters or [], received_ms
                )
            else:
                views = got.views
                repeat = itertools.repeat(received_ms, len(views))
                batch = self.decoder.decode(list(map(Packet, views, got.sources, repeat)))
        except Exception:
            # The decoder promises not to raise on peer data: this is our bug. Count it on
            # every exporter of the batch, log it once per exporter, and keep going.
            for source in sorted(set(got.sources)):
                self.counters.note_error(source, received_ms)
                if self.problems.limiter.allow(("bug", source)) is not None:
                    log.exception("flows.decoder_bug", extra={"exporter": source})
            return 0
        self.counters.add(batch.stats, received_ms)
        if batch.interface_counters:
            pending = self._interface_counters
            room = max(0, MAX_PENDING_INTERFACES - len(pending))
            self.decoder.counters.interface_counters_dropped += max(
                0, len(batch.interface_counters) - room
            )
            pending.extend(
                [
                    item.exporter,
                    item.if_index,
                    item.speed_bps,
                    item.in_octets,
                    item.out_octets,
                    item.received_ms,
                    item.uptime_ms,
                ]
                for item in batch.interface_counters[:room]
            )
        for problem in batch.problems:
            self.problems.report(problem.exporter, problem.reason)
        if batch.rows:
            if not self._pending:
                self._pending_since = time.monotonic()
            record_batch = self.to_record_batch(batch)
            self._pending.append(record_batch)
            if self.detection is not None:
                self._detect(lambda: self.detection.add(received_ms, record_batch))
            self._pending_rows += batch.rows
            if self._pending_rows >= self.spec.segment_max_rows:
                self.flush()
        return int(batch.rows)

    def to_record_batch(self, batch: Any) -> pa.RecordBatch:
        """The batch as stored: with the enrichment columns when enrichment is on."""
        if self.enricher is None:
            return batch.to_record_batch()
        labels = enrich_or_log(self.enricher, batch.columns, self.problems.limiter)
        return catalogue.to_record_batch(batch.columns, batch.extra, labels)

    def flush(self) -> None:
        if self._pending:
            self.store.submit(self._pending)
            self._pending = []
            self._pending_rows = 0
        if self.detection is not None and self.reports is not None:
            partial = self._detect(lambda: self.detection.take(time.time_ns() // 1_000_000))
            if partial is not None:
                try:
                    self.reports.send(("detect", partial))
                except (BrokenPipeError, OSError):
                    self.stopping = True

    def _detect(self, call: Any) -> Any:
        """Detection's share (our code, not the peer's bytes): a bug there is logged and
        costs the detection of this batch, never the ingest."""
        try:
            return call()
        except Exception:
            if self.problems.limiter.allow(("bug", "detect")) is not None:
                log.exception("flows.detection_bug")
            return None

    def drain(self) -> None:
        """Read and decode until the sockets are empty, or for at most ``DRAIN_SECONDS`` so
        the loop still flushes, reports and hears the parent under a sustained flood."""
        receiver = self.receiver
        started = time.monotonic()
        while True:
            got = receiver.receive()
            if got.count:
                self.ingest(got)
            if got.count < receiver.max_datagrams and got.nbytes <= receiver.limit:
                return
            if time.monotonic() - started >= DRAIN_SECONDS:
                return

    def report(self, kind: str = "report") -> None:
        if self.reports is None:
            return
        message: dict[str, Any] = {
            "worker": self.spec.index,
            "exporters": self.counters.snapshot(),
            "store": asdict(self.store.stats),
            "datagrams": self.receiver.datagrams,
            "problems": self.problems.count,
            "decoder": {
                **asdict(self.decoder.counters),
                "state_bytes": self.decoder.state_bytes,
                "templates": self.decoder.template_count,
                **(
                    {f"enrich_{k}": v for k, v in asdict(self.enricher.counters).items()}
                    if self.enricher is not None
                    else {}
                ),
            },
        }
        if self._interface_counters:
            message["interface_counters"] = self._interface_counters
            self._interface_counters = []
        try:
            self.reports.send((kind, message))
        except (BrokenPipeError, OSError):
            self.stopping = True

    def _on_control(self) -> None:
        assert self.control is not None
        try:
            if not self.control.poll():
                return
            command = self.control.recv()
        except (EOFError, OSError):
            command = "stop"  # the parent is gone
        if command == "stop":
            self.stopping = True

    def run(self) -> None:
        self.writer.remove_stale_temporaries()
        self.load_templates()
        # The loop allocates a few thousand short-lived container objects a batch (packets,
        # lists), which trigger the cyclic GC, and each collection walked every object of
        # numpy and pyarrow (2-3 % of the worker's CPU in the profile). The loop creates no
        # cycles that matter: move what exists to the permanent generation, collect rarely.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD)
        self.store.start()
        poller = select.poll()
        for sock in self.socks:
            poller.register(sock.fileno(), select.POLLIN)
        control_fd = -1
        if self.control is not None:
            control_fd = self.control.fileno()
            poller.register(control_fd, select.POLLIN)
        self.report("ready")
        next_report = time.monotonic() + REPORT_INTERVAL
        next_templates = time.monotonic() + TEMPLATE_SAVE_INTERVAL
        try:
            while not self.stopping:
                now = time.monotonic()
                due = min(next_report, next_templates)
                if self._pending:
                    due = min(due, self._pending_since + self.spec.flush_interval)
                timeout_ms = max(0, int((due - now) * 1000) + 1)
                try:
                    events = poller.poll(timeout_ms)
                except InterruptedError:
                    events = []
                for fd, _mask in events:
                    if fd == control_fd:
                        self._on_control()
                    else:
                        started = time.monotonic()
                        self.drain()
                        # Let datagrams gather before the next batch: each batch has a fixed
                        # cost (tens of columns, numpy and Arrow set-up), so a worker woken
                        # for every datagram or two spends several times the CPU per flow.
                        # The kernel buffer holds far more than BATCH_GATHER_SECONDS of
                        # line rate; the added latency is nothing against the flush interval.
                        rest = BATCH_GATHER_SECONDS - (time.monotonic() - started)
                        if rest > 0:
                            time.sleep(rest)
                        break
                now = time.monotonic()
                if self._pending and now - self._pending_since >= self.spec.flush_interval:
                    self.flush()
                if now >= next_templates:
                    self.save_templates()
                    next_templates = now + TEMPLATE_SAVE_INTERVAL
                if now >= next_report:
                    self.report()
                    next_report = now + REPORT_INTERVAL
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Store what arrived (including what waits in the socket buffers), then report."""
        with contextlib.suppress(OSError):
            self.drain()
        self.flush()
        self.store.close()
        if self.enricher is not None:
            self.enricher.close()
        self.save_templates()
        self.report("final")


def worker_main(
    spec: WorkerSpec, socks: list[socket.socket], control: Connection, reports: Connection
) -> None:
    """Entry point of a worker process (spawned: nothing inherited but these arguments)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(spec.log_format, spec.log_level)
    for sock in socks:
        sock.setblocking(False)
    worker: FlowWorker | None = None
    try:
        worker = FlowWorker(spec, socks, control, reports)
    except Exception as exc:
        log.exception("flows.worker_failed", extra={"worker": spec.index})
        reports.send(("failed", f"worker {spec.index}: {exc}"))
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        assert worker is not None
        worker.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    logging.getLogger(__name__).debug("flows.worker_started", extra={"pid": os.getpid()})
    worker.run()
