"""``lanalyze serve``: start every enabled component in order, stop them in reverse.

SIGTERM and SIGINT stop the process cleanly: each component's ``stop()`` flushes what it
holds. A component that cannot start stops the ones already started and the process exits
non-zero with the component's message.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import TYPE_CHECKING

from lanalyze.config import Config
from lanalyze.instance import DataDirLock
from lanalyze.log import get_logger
from lanalyze.service import Component, run_loop

if TYPE_CHECKING:
    from lanalyze.mail.server import MailServer

__all__ = ["build_components", "run", "run_loop"]

log = get_logger(__name__)


def build_components(config: Config) -> list[Component]:
    from lanalyze.mailer import Mailer

    components: list[Component] = []
    # Mail lanalyze writes (alarm notifications, scheduled reports) goes through this
    # process's mail server once it has started (mailer.py); it is created further down.
    mail_server: MailServer | None = None
    mailer = Mailer(config, lambda: mail_server.pickup if mail_server is not None else None)
    if config.flows.enabled:
        from lanalyze.flows.collector import FlowCollector
        from lanalyze.flows.store.paths import flow_dir

        collector = FlowCollector(config.flows, config.general.data_path)
        components.append(collector)
        # With ClickHouse its views keep the rollups and the collector drops old partitions.
        if config.flows.rollup.enabled and config.flows.store.backend == "parquet":
            from lanalyze.flows.store.rollup import RollupMaintainer

            components.append(
                RollupMaintainer(config.flows.rollup, flow_dir(config.general.data_path))
            )
        if config.flows.snmp.enabled:
            from lanalyze.flows.snmp import SnmpPoller

            components.append(SnmpPoller(config.flows.snmp, flow_dir(config.general.data_path)))
        if config.alarms.enabled:
            from lanalyze.alarms.engine import AlarmEngine
            from lanalyze.alarms.notify import build_channels

            channels = build_channels(
                config.alarms.notify,
                config.general.hostname,
                mailer=mailer,
                data_dir=config.general.data_path,
            )
            engine = AlarmEngine(
                config.alarms,
                config.general.data_path,
                mail=config.mail,
                hostname=config.general.hostname,
                channels=channels,
            )
            engine.attach(collector)  # detection from the workers' reports
            components.append(engine)
    if config.mail.enabled:
        from lanalyze.mail.server import MailServer

        mail_server = MailServer(config.mail, config.general)
        components.append(mail_server)
    if config.web.enabled or config.flows.query.socket:
        from lanalyze.flows.query import reports

        # The console, the API and the report socket answer flow reports in this process:
        # with [flows.query].
        reports.apply_config(config.flows.query, config.flows.store)
    if config.web.enabled:
        from lanalyze.web.app import WebServer

        components.append(WebServer(config.web, config.general.data_path))
    if config.flows.query.socket:
        from lanalyze.flows.query.reportserver import ReportSocket

        components.append(ReportSocket(config.flows.query, config.general.data_path))
    if config.reports:
        from lanalyze.reports.scheduler import ReportScheduler

        components.append(ReportScheduler(config, mailer))
    return components


async def run(config: Config) -> None:
    lock = DataDirLock(config.general.data_path)
    lock.acquire()
    try:
        await _run(config)
    finally:
        lock.release()


async def _run(config: Config) -> None:
    components = build_components(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Component] = []
    try:
        for component in components:
            await component.start()
            started.append(component)
        # Startup leaves a large heap of long-lived objects (modules, configuration) that every
        # full collection walked again: ~20 ms each, several a minute under mail load, on the
        # event loop. Move them to the permanent generation (as flows/worker.py does).
        gc.collect()
        gc.freeze()
        log.info("serve.started", extra={"components": ",".join(c.name for c in started)})
        await stop.wait()
        log.info("serve.stopping")
    finally:
        for component in reversed(started):
            try:
                await asyncio.wait_for(component.stop(), timeout=10)
            except Exception:
                log.exception("serve.stop_failed", extra={"component": component.name})
    log.info("serve.stopped")
