"""The report scheduler: a ``lanalyze serve`` component that mails each ``[[reports]]``
entry when its schedule says, and a missed run once on start.

State: ``<data_dir>/reports/state.json`` (0600, rewritten atomically) holds, per report, the
scheduled time of its last run (UTC). On start, a report whose schedule had a run between
that time and now (the server was down) is sent once, for the period of the latest missed
run; a report with no state yet (new, or first start) starts from now and sends nothing
old. Then each report runs at its next scheduled time. A run that fails (bad filter, store
unreadable, no way to send) is counted (``lanalyze_reports_total{outcome="failed"}``),
logged, and not retried: the next scheduled run comes as usual.

The wall clock may jump (NTP, suspend): the loop sleeps at most a minute at a time and then
looks at the clock again, so a run is neither skipped nor sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter

from lanalyze import metrics
from lanalyze.datadir import atomic_write_bytes
from lanalyze.log import get_logger

if TYPE_CHECKING:
    from lanalyze.config import Config
    from lanalyze.mailer import Mailer, Sent
    from lanalyze.reports.config import ReportConfig

log = get_logger(__name__)

REPORTS = Counter(
    "lanalyze_reports_total",
    "Scheduled report mails, by report and outcome (sent, failed).",
    ["report", "outcome"],
    registry=metrics.REGISTRY,
)
STATE_NAME = "state.json"
MAX_STATE_BYTES = 1_048_576


def state_path(data_dir: Path) -> Path:
    return data_dir / "reports" / STATE_NAME


def load_state(data_dir: Path) -> dict[str, datetime]:
    """Last scheduled run per report; an unreadable file counts as none (logged)."""
    path = state_path(data_dir)
    try:
        with path.open("rb") as handle:
            raw = json.loads(handle.read(MAX_STATE_BYTES))
        return {
            str(name): datetime.fromtimestamp(float(value), UTC)
            for name, value in dict(raw).items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError) as exc:
        log.warning("reports.state_unreadable", extra={"path": str(path), "error": str(exc)})
        return {}


def save_state(data_dir: Path, state: dict[str, datetime]) -> None:
    data = {name: moment.timestamp() for name, moment in sorted(state.items())}
    atomic_write_bytes(state_path(data_dir), json.dumps(data, indent=1).encode() + b"\n")


async def send_report(
    report: ReportConfig,
    config: Config,
    mailer: Mailer,
    at: datetime,
    recipients: Sequence[str] | None = None,
) -> Sent:
    """Build ``report`` for its period before ``at`` and mail it; counts the outcome."""
    from lanalyze.reports.build import build
    from lanalyze.reports.message import compose

    try:
        data = await asyncio.to_thread(build, report, config, at)
        sent = await mailer.send(compose(data), list(recipients or report.recipients))
    except Exception as exc:
        REPORTS.labels(report.name, "failed").inc()
        log.warning(
            "reports.failed",
            extra={"report": report.name, "error": f"{type(exc).__name__}: {exc}"},
        )
        raise
    REPORTS.labels(report.name, "sent").inc()
    log.info(
        "reports.sent",
        extra={"report": report.name, "at": at.isoformat(), "route": sent.route, "id": sent.detail},
    )
    return sent


class ReportScheduler:
    name = "reports"

    def __init__(
        self,
        config: Config,
        mailer: Mailer,
        *,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.mailer = mailer
        self.data_dir = config.general.data_path
        # Both replaceable so a test can run days of schedule without waiting for them.
        self.clock = clock or (lambda: datetime.now(UTC))
        self.sleep = sleep or asyncio.sleep
        self.state: dict[str, datetime] = {}
        self.caught_up = asyncio.Event()
        """Set once the missed runs found at start have been sent (tests wait for it)."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.state = await asyncio.to_thread(load_state, self.data_dir)
        self._task = asyncio.create_task(self._run(), name="report-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        now = self.clock()
        for report in self.config.reports:
            last = self.state.get(report.name)
            if last is None:
                await self._record(report, now)
                continue
            missed = report.cron.latest_until(last, now, report.zone)
            if missed is not None:
                log.info("reports.missed", extra={"report": report.name, "at": missed.isoformat()})
                await self._fire(report, missed)
        self.caught_up.set()
        while True:
            now = self.clock()
            due = {
                report.name: report.cron.next_after(self.state.get(report.name, now), report.zone)
                for report in self.config.reports
            }
            if not due:
                return
            ready = [r for r in self.config.reports if due[r.name] <= now]
            if not ready:
                wait = (min(due.values()) - now).total_seconds()
                await self.sleep(min(max(wait, 0.05), 60.0))
                continue
            for report in ready:
                await self._fire(report, due[report.name])

    async def _fire(self, report: ReportConfig, at: datetime) -> None:
        # A failure is counted and logged by send_report; the next run comes as scheduled.
        with contextlib.suppress(Exception):
            await send_report(report, self.config, self.mailer, at)
        await self._record(report, at)

    async def _record(self, report: ReportConfig, at: datetime) -> None:
        self.state[report.name] = at
        try:
            await asyncio.to_thread(save_state, self.data_dir, dict(self.state))
        except OSError as exc:
            log.warning("reports.state_write_failed", extra={"error": str(exc)})
