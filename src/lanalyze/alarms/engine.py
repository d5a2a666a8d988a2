"""The detection component of ``lanalyze serve`` and ``lanalyze flows collect``.

Where it sits: after the store. Every ``alarms.interval`` it lists the newest raw hour
directories of the flow store and reads each segment it has not seen yet (the columns
:data:`~lanalyze.alarms.detect.COLUMNS` only, straight from the page cache: the writer has
just renamed it) into :class:`~lanalyze.alarms.detect.Detector`. One detector per data
directory, in the parent process, sees the flows of every worker: the kernel spreads
exporters over the workers, so a per-worker detector would split a scanner seen by two
exporters. It never rescans history: at its first start it takes the segments already stored
as seen, and afterwards it remembers which segments of the last hours it has read.

Findings go to the alarm store (:mod:`lanalyze.alarms.store`), the store's changes (opened,
escalated, closed) to the notifier (:mod:`lanalyze.alarms.notify`). A mass mailer's alarm gets
what lanalyze's SMTP server received from that address (:meth:`MessageIndex.from_client`).

State (the detector's windows, the segments seen) is snapshotted every
``alarms.snapshot_interval`` and at stop to ``<data_dir>/alarms/state.npz`` (0600, written
then renamed, read with ``allow_pickle=False``), so a restart continues the incidents it was
counting; a damaged snapshot is logged and detection starts afresh from the newest segments.

Trust: segments are our own files; the flows in them are the exporters' (see detect.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import Counter, Gauge, Histogram

from lanalyze import metrics
from lanalyze.alarms.config import ALGORITHMS, AlarmsConfig
from lanalyze.alarms.detect import COLUMNS, Detector, Finding, Partial
from lanalyze.alarms.notify import Channel, Notice, Notifier, build_channels
from lanalyze.alarms.partial import BadNetworksFile
from lanalyze.alarms.store import AlarmStore, Change, alarms_dir, store_path
from lanalyze.alarms.watch import ExportLoss, TemplateChurn, mail_findings
from lanalyze.datadir import file_signature, fsync_dir, make_private_dirs, open_private
from lanalyze.flows.exporters import exporters_path, read_exporters
from lanalyze.flows.store.paths import flow_dir, interfaces_path, raw_dir
from lanalyze.log import RateLimiter, get_logger

log = get_logger(__name__)
_log_limit = RateLimiter(interval=60, burst=3)

FINDINGS = Counter(
    "lanalyze_alarm_findings_total",
    "Detector findings (a subject over a threshold in a look), by algorithm.",
    ["algorithm"],
    registry=metrics.REGISTRY,
)
OPENED = Counter(
    "lanalyze_alarms_opened_total",
    "Alarms opened, by algorithm.",
    ["algorithm"],
    registry=metrics.REGISTRY,
)
CLOSED = Counter(
    "lanalyze_alarms_closed_total",
    "Alarms closed after quiet, by algorithm.",
    ["algorithm"],
    registry=metrics.REGISTRY,
)
OPEN = Gauge(
    "lanalyze_alarms_open",
    "Alarms open now, by algorithm.",
    ["algorithm"],
    registry=metrics.REGISTRY,
)
SEGMENTS = Counter(
    "lanalyze_alarm_segments_total",
    "Stored flow segments the detector read, by outcome (ok, unreadable).",
    ["outcome"],
    registry=metrics.REGISTRY,
)
FLOWS = Counter(
    "lanalyze_alarm_flows_total", "Flows the detector looked at.", registry=metrics.REGISTRY
)
STATE_BYTES = Gauge(
    "lanalyze_alarm_state_bytes",
    "Bytes the detector's windows and baselines hold.",
    registry=metrics.REGISTRY,
)
EVICTED = Gauge(
    "lanalyze_alarm_state_evicted",
    "Keys the detector's windows forgot to stay in alarms.state_memory (since start).",
    registry=metrics.REGISTRY,
)
REPORTS = Counter(
    "lanalyze_alarm_worker_reports_total",
    "Flow workers' detection reports (their share of each flush), by outcome (merged; "
    "dropped: the queue of reports was over alarms.state_memory bytes).",
    ["outcome"],
    registry=metrics.REGISTRY,
)
SECONDS = Histogram(
    "lanalyze_alarm_round_seconds",
    "Time of one detection round (read new segments, detect, store).",
    registry=metrics.REGISTRY,
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

INTERFACE_INTERVAL = 60.0
"""Seconds between looks at the interfaces' utilisation (a query of the rollups)."""
HOURS_WATCHED = 3
"""Raw hour directories looked at each round (the newest): the writer may still add to the
previous hour just after it ends."""
SNAPSHOT = "state.npz"


def snapshot_path(data_dir: Path) -> Path:
    return alarms_dir(data_dir) / SNAPSHOT


def mail_listen_hosts(mail: Any) -> list[str]:
    """The specific addresses lanalyze's own SMTP listeners bind (not 0.0.0.0/::), as /32 or
    /128 networks: mail from them is ours, not a mass mailer."""
    from lanalyze.configbase import parse_listen

    hosts: list[str] = []
    if mail is None or not getattr(mail, "enabled", False):
        return hosts
    for address in [*mail.listen, *mail.submission_listen, *mail.smtps_listen]:
        host, _ = parse_listen(address)
        if host in ("0.0.0.0", "::", "localhost"):  # noqa: S104 - every address: none of them
            continue
        hosts.append(host)
    return hosts


class AlarmEngine:
    name = "alarms"

    def __init__(
        self,
        config: AlarmsConfig,
        data_dir: Path,
        *,
        mail: Any = None,
        hostname: str = "localhost",
        channels: list[Channel] | None = None,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.flows = flow_dir(data_dir)
        inside = list(config.inside)
        if mail is not None:
            inside += list(mail.trusted_networks)
        self.detector = Detector(
            config.model_copy(update={"inside": inside}), mail_servers=mail_listen_hosts(mail)
        )
        self.hostname = hostname
        self._channels = channels
        self.notifier: Notifier | None = None
        self.store: AlarmStore | None = None
        self.seen: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_snapshot = 0.0
        self._mail_index = data_dir / "mail" / "index.sqlite"
        self.loss = ExportLoss(config.exporter)
        self.churn = TemplateChurn(config.template_churn)
        self._exporters_file = exporters_path(data_dir)
        self._exporters_seen: object = None
        self._mail_looked = 0.0
        self._bad_file = BadNetworksFile(self.config.bad_networks)
        self._interfaces_looked = 0.0
        self._collector: Any = None
        self._reports: deque[Partial] = deque()
        self._reports_bytes = 0
        self._reports_lock = threading.Lock()
        self._round_lock = threading.Lock()

    def attach(self, collector: Any) -> None:
        """Detect on the flows of this process's collector (a ``FlowCollector`` not yet
        started) from its workers' reports instead of reading its segments back."""
        self._collector = collector
        collector.detection = self.config
        collector.detection_sink = self.feed

    def feed(self, partial: Partial) -> None:
        """A worker's report (called from the collector's report threads). The queue holds
        at most ``alarms.state_memory`` bytes: beyond, reports are dropped and counted."""
        size = partial.nbytes
        with self._reports_lock:
            if self._reports and self._reports_bytes + size > self.config.state_memory:
                REPORTS.labels("dropped").inc()
                if _log_limit.allow("dropped") is not None:
                    log.warning("alarms.reports_dropped", extra={"bytes": self._reports_bytes})
                return
            self._reports.append(partial)
            self._reports_bytes += size

    def _take_reports(self) -> list[Partial]:
        with self._reports_lock:
            reports = list(self._reports)
            self._reports.clear()
            self._reports_bytes = 0
        return reports

    # -- lifecycle --

    async def start(self) -> None:
        await asyncio.to_thread(self._open)
        channels = self._channels
        if channels is None:
            channels = build_channels(self.config.notify, self.hostname)
        self.notifier = Notifier(self.config.notify, channels)
        await self.notifier.start()
        self._task = asyncio.create_task(self._loop())
        log.info("alarms.started", extra={"seen_segments": sum(map(len, self.seen.values()))})

    def _open(self) -> None:
        make_private_dirs(alarms_dir(self.data_dir))
        self.store = AlarmStore(store_path(self.data_dir))
        if not self._restore():
            # First start (or a lost snapshot): what is stored already is history.
            for hour, names in self._listing().items():
                self.seen[hour] = names
        self._last_snapshot = time.monotonic()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        changes = await asyncio.to_thread(self._final)
        self._notify(changes)
        if self.notifier is not None:
            await self.notifier.stop()
        if self.store is not None:
            self.store.close()
            self.store = None

    def _final(self) -> list[Change]:
        changes = self.round()
        self.save_snapshot()
        return changes

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval)
            try:
                changes = await asyncio.to_thread(self.round)
            except Exception:
                log.exception("alarms.round_failed")
                continue
            self._notify(changes)

    def _notify(self, changes: list[Change]) -> None:
        if self.notifier is None:
            return
        for change in changes:
            self.notifier.submit(Notice(change.event, change.alarm))

    # -- one round (in a worker thread) --

    def round(self, now: float | None = None) -> list[Change]:
        """Merge the workers' reports, read the new segments, detect, store; the store's
        changes. One round at a time: a cancelled loop's round goes on in its thread while
        ``stop`` runs the last one (two snapshots at once raced on the temporary file)."""
        with self._round_lock:
            return self._round(now)

    def _round(self, now: float | None) -> list[Change]:
        assert self.store is not None
        now = time.time() if now is None else now
        now_ms = int(now * 1000)
        findings: list[Finding] = []
        with SECONDS.time():
            self._load_bad_networks()
            for partial in self._take_reports():
                REPORTS.labels("merged").inc()
                FLOWS.inc(partial.flows)
                findings += self.detector.merge(now_ms, partial)
            for path in self._new_segments():
                table = self._read(path)
                if table is None:
                    continue
                FLOWS.inc(table.num_rows)
                findings += self.detector.process(now_ms, table)
            findings += self.detector.tick(now_ms)
            findings += self._export_loss(now_ms)
            findings += self._mail_side(now)
            findings += self._interfaces(now)
            for finding in findings:
                FINDINGS.labels(finding.algorithm).inc()
            findings = _one_per_subject(findings)
            for finding in findings:
                # In the finding, not added after: the alarm is written whole, so no reader
                # (the console, the API) ever sees a mass mailer alarm without its mail.
                if finding.algorithm == "mass_mailer" and finding.address:
                    self._mail_evidence(finding)
            changes = self.store.record(findings, now) if findings else []
            closed = self.store.close_quiet(self.config.close_after, now)
        for change in changes:
            if change.event == "opened":
                OPENED.labels(change.alarm["algorithm"]).inc()
                log.warning(
                    "alarms.opened",
                    extra={
                        "id": change.alarm["id"],
                        "algorithm": change.alarm["algorithm"],
                        "subject": change.alarm["subject"],
                        "severity": change.alarm["severity"],
                    },
                )
        for change in closed:
            CLOSED.labels(change.alarm["algorithm"]).inc()
        counts = self.store.open_counts()
        for algorithm in ALGORITHMS:
            OPEN.labels(algorithm).set(counts.get(algorithm, 0))
        STATE_BYTES.set(self.detector.nbytes)
        EVICTED.set(self.detector.evicted())
        if time.monotonic() - self._last_snapshot >= self.config.snapshot_interval:
            self.save_snapshot()
        return changes + closed

    def _load_bad_networks(self) -> None:
        """(Re)read ``alarms.bad_networks.file`` when it changed (its signature)."""
        changed, bad, bad_lines = self._bad_file.poll()
        if not changed:
            return
        if bad is None:
            if self.detector.bad is not None:
                log.warning(
                    "alarms.bad_networks_missing",
                    extra={"path": str(self.config.bad_networks.file)},
                )
            self.detector.bad = None
            return
        self.detector.bad = bad
        log.info(
            "alarms.bad_networks_loaded",
            extra={
                "path": str(self.config.bad_networks.file),
                "networks": bad.size,
                "bad_lines": bad_lines,
            },
        )

    def _export_loss(self, now_ms: int) -> list[Finding]:
        """Loss and template-churn findings when the collector rewrote ``exporters.json``
        since the last look."""
        loss, churn = self.config.exporter.enabled, self.config.template_churn.enabled
        if not (loss or churn):
            return []
        signature = file_signature(self._exporters_file)
        if signature is None or signature == self._exporters_seen:
            return []
        self._exporters_seen = signature
        try:
            data = read_exporters(self.data_dir)
            rows = data["exporters"]
        except (OSError, ValueError) as exc:
            if _log_limit.allow("exporters") is not None:
                log.warning("alarms.exporters_unreadable", extra={"error": str(exc)})
            return []
        findings = self.loss.observe(now_ms, rows) if loss else []
        if churn:
            started = data.get("started_ms")
            findings += self.churn.observe(now_ms, rows, started if isinstance(started, int) else 0)
        return findings

    def _interfaces(self, now: float) -> list[Finding]:
        """Once a minute: interfaces whose average bits/s over the last
        ``alarms.interface.minutes`` is over ``percent`` of their SNMP speed, from the flow
        reports (the rollups; the same answer as ``lanalyze flows interfaces``)."""
        cfg = self.config.interface
        if not cfg.enabled or now - self._interfaces_looked < INTERFACE_INTERVAL:
            return []
        self._interfaces_looked = now
        if not interfaces_path(self.flows).exists():
            return []  # no SNMP speeds: nothing to compare with (and no query engine loaded)
        from lanalyze.flows.errors import ReportError
        from lanalyze.flows.query.reports.iface import top_interfaces

        until = int(now * 1000)
        since = until - cfg.minutes * 60_000
        try:
            rows = top_interfaces(self.flows, since=since, until=until, limit=1000)
        except (ReportError, OSError) as exc:
            if _log_limit.allow("interfaces") is not None:
                log.warning("alarms.interfaces_failed", extra={"error": str(exc)})
            return []
        out = []
        for row in rows:
            worst = max(row.in_util_pct or 0.0, row.out_util_pct or 0.0)
            if worst < cfg.percent:
                continue
            name = f" ({row.name})" if row.name else ""
            out.append(
                Finding(
                    "interface_utilisation",
                    f"{row.exporter} if {row.interface}{name}",
                    worst,
                    cfg.percent,
                    "% of speed",
                    {
                        "in_util_pct": row.in_util_pct,
                        "out_util_pct": row.out_util_pct,
                        "in_bps": row.in_bps,
                        "out_bps": row.out_bps,
                        "speed_bps": row.speed_bps,
                        "interface": row.interface,
                    },
                    # No exporter term in the filter language yet: the drill-down is the
                    # console's interface page (exporter and ifIndex in its path).
                    "",
                    since,
                    row.exporter,
                )
            )
        return out

    def _mail_side(self, now: float) -> list[Finding]:
        """Mail findings every ``alarms.mail.interval`` from the message index."""
        from lanalyze.mail.index import MessageIndex

        cfg = self.config.mail
        if not cfg.enabled or now - self._mail_looked < cfg.interval:
            return []
        self._mail_looked = now
        index = MessageIndex.open_readonly(self._mail_index)
        if index is None:
            return []
        since = now - cfg.window
        try:
            with index:
                activity = index.activity(since)
        except sqlite3.Error as exc:  # an index an older version wrote, or being created
            if _log_limit.allow("mail") is not None:
                log.warning("alarms.mail_index_unreadable", extra={"error": str(exc)})
            return []
        return mail_findings(activity, cfg, int(since * 1000))

    def _mail_evidence(self, finding: Finding) -> None:
        """What the SMTP server received from the mass mailer's address, with verdicts."""
        from lanalyze.mail.index import MessageIndex

        index = MessageIndex.open_readonly(self._mail_index)
        if index is None:
            return
        try:
            since = finding.window_start_ms / 1000 - self.config.mass_mailer.window
            mail = index.from_client(finding.address, since)
        except sqlite3.Error as exc:  # an index an older version wrote, or being created
            if _log_limit.allow("mail") is not None:
                log.warning("alarms.mail_index_unreadable", extra={"error": str(exc)})
            return
        finally:
            index.close()
        slim = [
            {
                k: m.get(k)
                for k in (
                    "queue_id",
                    "received_at",
                    "mail_from",
                    "header_from",
                    "subject",
                    "recipients",
                    "action",
                    "marks",
                    "forged",
                )
            }
            | {"verdicts": {k: (m.get("auth") or {}).get(k) for k in ("spf", "dkim", "dmarc")}}
            for m in mail["messages"]
        ]
        mail["messages"] = slim
        finding.evidence["mail"] = mail

    def _listing(self) -> dict[str, set[str]]:
        """The newest hour directories' segment names (no temporaries, no compacted files:
        those hold flows already seen)."""
        root = raw_dir(self.flows)
        try:
            hours = sorted(
                entry.name for entry in os.scandir(root) if entry.is_dir() and entry.name.isdigit()
            )[-HOURS_WATCHED:]
        except FileNotFoundError:
            return {}
        listing: dict[str, set[str]] = {}
        for hour in hours:
            try:
                names = {
                    name
                    for name in os.listdir(root / hour)
                    if name.endswith(".parquet")
                    and not name.startswith(".")
                    and "-compact-" not in name
                }
            except FileNotFoundError:
                continue
            listing[hour] = names
        return listing

    def _new_segments(self) -> list[Path]:
        listing = self._listing()
        new: list[Path] = []
        for hour, names in listing.items():
            seen = self.seen.setdefault(hour, set())
            fresh = sorted(names - seen)
            seen.update(fresh)
            # Forget names the maintainer merged away: they will not come back.
            seen &= names
            new += [raw_dir(self.flows) / hour / name for name in fresh if not self._ours(name)]
        for hour in list(self.seen):
            if hour not in listing:
                del self.seen[hour]
        return new

    def _ours(self, name: str) -> bool:
        """Written by a worker of the attached collector: its flows came in its reports."""
        token = self._collector.writer_token if self._collector is not None else ""
        if not token:
            return False
        parts = name.split("-")
        return len(parts) >= 3 and re.fullmatch(rf"w\d+x{token}(r\d+)?", parts[1]) is not None

    def _read(self, path: Path) -> pa.Table | None:
        try:
            # One thread: pyarrow's thread pool costs three times the CPU on segments this size.
            table = pq.read_table(path, columns=list(COLUMNS), memory_map=True, use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            # Deleted by retention or compaction between listing and reading, or damaged.
            SEGMENTS.labels("unreadable").inc()
            if _log_limit.allow("read") is not None:
                log.warning("alarms.segment_unreadable", extra={"path": str(path), "error": exc})
            return None
        SEGMENTS.labels("ok").inc()
        return table

    # -- snapshot --

    def save_snapshot(self) -> None:
        data = self.detector.snapshot()
        seen = [f"{hour}/{name}" for hour, names in self.seen.items() for name in sorted(names)]
        data["seen"] = np.array(seen, dtype=np.str_) if seen else np.zeros(0, "U1")
        path = snapshot_path(self.data_dir)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(open_private(tmp), "wb") as handle:
            np.savez(handle, **data)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        self._last_snapshot = time.monotonic()

    def _restore(self) -> bool:
        path = snapshot_path(self.data_dir)
        try:
            with np.load(path, allow_pickle=False) as archive:
                data = {name: archive[name] for name in archive.files}
            self.detector.restore(data)
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError) as exc:
            log.warning("alarms.snapshot_unreadable", extra={"path": str(path), "error": exc})
            return False
        for item in data.get("seen", []):
            hour, _, name = str(item).partition("/")
            self.seen.setdefault(hour, set()).add(name)
        return True


def _one_per_subject(findings: list[Finding]) -> list[Finding]:
    """The last finding of each (algorithm, subject): several segments in one round each
    report the same incident, and the last has the window's newest count."""
    latest: dict[tuple[str, str], Finding] = {}
    for finding in findings:
        latest[(finding.algorithm, finding.subject)] = finding
    return list(latest.values())


async def run_with_alarms(
    config: Any, data_dir: Path, main: Awaitable[None], collector: Any = None
) -> None:
    """``lanalyze flows collect``: run ``main`` with detection beside when it is enabled.

    Its e-mail notifications go by :mod:`lanalyze.mailer`'s rule with no mail server in this
    process: to ``mailer.relay_host`` when set, else (mail enabled) into the data directory's
    queue, which the next ``lanalyze serve`` delivers. This process holds the data
    directory's lock, so that lock is no sign of a server here."""
    if not config.alarms.enabled:
        await main
        return
    from lanalyze.mailer import Mailer

    channels = build_channels(
        config.alarms.notify,
        config.general.hostname,
        mailer=Mailer(config, holds_lock=True),
        data_dir=data_dir,
    )
    engine = AlarmEngine(
        config.alarms,
        data_dir,
        mail=config.mail,
        hostname=config.general.hostname,
        channels=channels,
    )
    if collector is not None:
        engine.attach(collector)
    await engine.start()
    try:
        await main
    finally:
        await engine.stop()
