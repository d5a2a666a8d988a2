"""The queue manager: hands queued messages to delivery agents, retries with backoff.

Like Postfix's qmgr(8): a bounded active set (``mail.queue.max_active`` messages in delivery
at once, the rest wait on disk), deferred messages retried with doubling backoff between
``retry_min`` and ``retry_max``. Each message goes to local delivery first (Maildir, in the
delivery process); when its local recipients are done and it has non-local ones, it is handed
to the outbound side (:class:`~lanalyze.mail.delivery.outbound.OutboundQueue`), which owns the
file until it calls back (finished, or rewritten into ``deferred/`` to retry). With
``mail.outbound.enabled = false`` such mail waits in ``queue/hold/`` as before. A message older
than ``mail.queue.max_lifetime`` (local failures that persist too) is handed over as well so
its remaining recipients are bounced, and one older than ``mail.queue.delay_warning`` for its
one delay notice: nothing is retried for ever, nothing dropped silently.

A message with no recipient of a local domain (acceptance says so when it commits the file, an
acceptor process over its pipe) goes to the outbound side directly: it has nothing for local
delivery, and the hop through the (niced) delivery process was most of a relayed message's
latency on a busy machine.

Stages pass queue file paths, never message objects. At start, ``queue/incoming/`` (never
acknowledged) is emptied and everything in ``active/`` and ``deferred/`` is resumed; a
periodic scan of ``active/`` picks up files moved there by ``lanalyze mail queue retry``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from functools import partial
from pathlib import Path

from lanalyze.log import get_logger
from lanalyze.mail.config import QueueConfig
from lanalyze.mail.delivery.maildir import MaildirDelivery, Outcome
from lanalyze.mail.delivery.outbound import OutboundQueue
from lanalyze.mail.metrics import DELIVERIES, QUEUE_MESSAGES, QUEUE_OLDEST
from lanalyze.mail.queuefile import MESSAGE_QUEUES, Envelope, Layout

log = get_logger(__name__)

MAX_PENDING_IN_MEMORY = 20_000  # beyond this, queue files wait on disk for the next scan
WORKERS = 2


def purge_incoming(layout: Layout) -> int:
    removed = 0
    for path in layout.q("incoming").iterdir():
        path.unlink(missing_ok=True)
        removed += 1
    return removed


class QueueManager:
    def __init__(
        self,
        config: QueueConfig,
        layout: Layout,
        delivery: MaildirDelivery,
        executor: Executor,
        record: Callable[[list[Outcome]], Awaitable[None]],
        *,
        outbound: OutboundQueue | None = None,
    ) -> None:
        self.config = config
        self.outbound = outbound
        if outbound is not None:
            outbound.done = self._outbound_done
            outbound.local_first = self._local_first
        # queue id -> received_at of messages waiting for a retry (the oldest message's age)
        self._waiting_since: dict[str, float] = {}
        self.layout = layout
        self.delivery = delivery
        self.executor = executor
        self.record = record
        self._pending: deque[str] = deque()
        self._known: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.delivered = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(self.executor, purge_incoming, self.layout)
        if removed:
            log.info("mail.queue.incoming_purged", extra={"files": removed})
        for name in ("active", "deferred"):
            names = await loop.run_in_executor(self.executor, _list, self.layout.q(name))
            for queue_id in names:
                self.submit(self.layout.q(name) / queue_id)
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"mail-qmgr-{n}") for n in range(WORKERS)
        ]
        self._tasks.append(asyncio.create_task(self._scanner(), name="mail-qmgr-scan"))
        QUEUE_OLDEST.set_function(self.oldest_age)
        for state in MESSAGE_QUEUES:
            directory = self.layout.q(state)
            QUEUE_MESSAGES.labels(state).set_function(partial(_count, directory))

    async def stop(self) -> None:
        if self.outbound is not None:
            await self.outbound.stop()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def submit(self, path: str | Path, *, relay_only: bool = False) -> None:
        """Deliver a queue file. ``relay_only`` (a hint from acceptance: no recipient of a
        local domain) sends it straight to the outbound side, without the local delivery
        process's hop; outbound hands it back here if its envelope has local recipients."""
        name = os.path.basename(path)
        if name in self._known or len(self._pending) >= MAX_PENDING_IN_MEMORY:
            return
        self._known.add(name)
        outbound = self.outbound
        if relay_only and outbound is not None and outbound.outbound.enabled:
            outbound.submit(path, fresh=True)
            return
        self._pending.append(str(path))
        self._wake.set()

    def submit_many(self, paths: list[tuple[str, bool]]) -> None:
        """(path, relay only) pairs: an acceptor's committed files."""
        for path, relay_only in paths:
            self.submit(path, relay_only=relay_only)

    def _local_first(self, path: str) -> None:
        """The outbound side's hand-back: local recipients to deliver first (already known)."""
        self._pending.append(path)
        self._wake.set()

    @property
    def batch_size(self) -> int:
        return max(1, self.config.max_active // WORKERS)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            batch = [
                self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))
            ]
            try:
                outcomes = await loop.run_in_executor(
                    self.executor, self.delivery.deliver_batch, batch
                )
            except Exception:
                log.exception("mail.queue.delivery_crashed")
                outcomes = []
                for path in batch:
                    self._retry_later(path, 0)
            handed: set[str] = set()
            for outcome in outcomes:
                if self._hand_over(outcome):
                    handed.add(outcome.queue_id)
            for path in batch:
                name = os.path.basename(path)
                if name not in handed:  # the outbound side owns it until it calls back
                    self._known.discard(name)
            statuses = Counter(outcome.status for outcome in outcomes)
            for status, count in statuses.items():  # one labels() per status, not per message
                DELIVERIES.labels("local", status).inc(count)
            for outcome in outcomes:
                if outcome.status == "delivered":
                    self.delivered += 1
                    self._waiting_since.pop(outcome.queue_id, None)
                elif outcome.status == "deferred" and outcome.queue_id not in handed:
                    attempts = outcome.envelope.attempts if outcome.envelope else 1
                    log.warning(
                        "mail.queue.deferred",
                        extra={"queue_id": outcome.queue_id, "error": outcome.error},
                    )
                    if outcome.envelope is not None:
                        self._waiting_since[outcome.queue_id] = outcome.envelope.received_at
                    self._retry_later(self.layout.q("deferred") / outcome.queue_id, attempts)
            for outcome in outcomes:
                if outcome.status == "relay":
                    outcome.status = "queued"  # the index's word for "still in the queue"
            try:
                await self.record(outcomes)
            except Exception:
                log.exception("mail.index.status_failed")

    def _hand_over(self, outcome: Outcome) -> bool:
        """Give a message to the outbound side: relay recipients left, or its time is up."""
        if self.outbound is None or outcome.envelope is None or not outcome.path:
            return False
        envelope = outcome.envelope
        if outcome.status != "relay":
            if outcome.status != "deferred":
                return False
            relay = bool(envelope.relay) and self.outbound.outbound.enabled
            if not (relay or self._due(envelope)):
                return False
        loaded = (envelope, outcome.message) if outcome.message is not None else None
        outcome.message = None  # not kept with the index's batch
        self.outbound.submit(outcome.path, loaded)
        return True

    def _due(self, envelope: Envelope) -> bool:
        """Past the lifetime (bounce) or the delay warning (notify once)."""
        age = time.time() - envelope.received_at
        warning = self.config.delay_warning
        return age > self.config.max_lifetime or (
            bool(warning) and age > warning and not envelope.delay_warned
        )

    def _outbound_done(self, name: str, path: Path | None, attempts: int) -> None:
        self._known.discard(name)
        if path is None:
            self._waiting_since.pop(name, None)
            return
        outbound = self.outbound
        message = outbound.messages.get(name) if outbound is not None else None
        if message is not None:
            self._waiting_since[name] = message.envelope.received_at
        self._retry_later(path, attempts)

    def oldest_age(self) -> float:
        if not self._waiting_since:
            return 0.0
        return max(0.0, time.time() - min(self._waiting_since.values()))

    def _retry_later(self, path: str | Path, attempts: int) -> None:
        name = os.path.basename(path)
        delay = min(self.config.retry_max, self.config.retry_min * 2 ** max(0, attempts - 1))
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(name, None)
            self.submit(path)

        self._timers[name] = asyncio.get_running_loop().call_later(delay, fire)

    async def _scanner(self) -> None:
        loop = asyncio.get_running_loop()
        active = self.layout.q("active")
        while True:
            await asyncio.sleep(self.config.scan_interval)
            try:
                names = await loop.run_in_executor(self.executor, _list, active)
            except OSError as exc:
                log.error("mail.queue.scan_failed", extra={"error": str(exc)})
                continue
            for name in names:
                self.submit(active / name)


def _list(directory: Path) -> list[str]:
    # scandir's d_type, not Path.is_file(): no stat per queue file on every scan.
    with os.scandir(directory) as entries:
        return sorted(entry.name for entry in entries if entry.is_file(follow_symlinks=False))


def _count(directory: Path) -> int:
    """Queue files in a directory, counted when /metrics is read."""
    try:
        with os.scandir(directory) as entries:
            return sum(1 for entry in entries if entry.is_file(follow_symlinks=False))
    except OSError:
        return 0
