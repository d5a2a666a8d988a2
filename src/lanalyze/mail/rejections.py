"""Rejections for the message index: what the SMTP server refused, to whom, and why.

The SMTP core (:mod:`lanalyze.mail.smtp.protocol`) emits a
:class:`~lanalyze.mail.smtp.protocol.Rejection` event for every reply of 400 or more: the
command's verb, the reply, a reason word from a fixed vocabulary, and the envelope at that
moment (the refused MAIL's or RCPT's address, a refused message's recipients). The shell
(:mod:`lanalyze.mail.server`) makes the same events for what it refuses itself (connection
limit, timeout) and hands each to :meth:`RejectionLog.record`; accepted mail never comes here.
``record`` runs on the event loop and does no I/O: it keeps the reasons a sysadmin cares about
and puts one tuple on a bounded queue. Nothing is read back out of reply text. A writer thread
takes what has gathered, inserts it in one SQLite transaction
(:meth:`lanalyze.mail.index.MessageIndex.record_rejections`) and deletes rows older than
``mail.index.rejected_retention_days`` every hour. When the queue is full the rejection is
counted in ``lanalyze_mail_rejections_dropped_total`` and forgotten: a flood of refused
connections never grows our memory.

Not recorded: protocol noise (syntax errors, unknown commands, commands out of order, long
lines, a cancelled AUTH) and AUTH attempts refused by the throttle; those are counted on
``/metrics``, and when a client makes too many errors the ``421`` that ends its session is
recorded. No command line is stored (AUTH lines carry passwords).

Trust: addresses and HELO names are the peer's; they are stripped of control characters and
truncated before they are stored, and rendered escaped by the readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from lanalyze.log import get_logger
from lanalyze.mail.headers import sanitize
from lanalyze.mail.index import IndexConfig, MessageIndex
from lanalyze.mail.smtp.protocol import REFUSAL_REASONS, Rejection
from lanalyze.metrics import REGISTRY

log = get_logger(__name__)

RECORDED = Counter(
    "lanalyze_mail_rejections_recorded",
    "Rejections written to the message index, by listener.",
    ["listener"],
    registry=REGISTRY,
)
DROPPED = Counter(
    "lanalyze_mail_rejections_dropped",
    "Rejections not recorded because the index writer's queue was full (or it failed).",
    ["listener"],
    registry=REGISTRY,
)
PRUNED = Counter(
    "lanalyze_mail_rejections_pruned",
    "Rejection rows deleted for being older than mail.index.rejected_retention_days.",
    registry=REGISTRY,
)

FIELD_LIMIT = 256
BATCH = 1000
PRUNE_EVERY = 3600.0
# The index's vocabulary (the console names each): a Rejection's reason -> the stored one.
# Reasons not here are protocol noise. A refusal whose maker gave no reason word (a policy
# or message check without one) is stored as "other".
STORED: dict[str, str] = {
    reason: reason
    for reason in REFUSAL_REASONS - {"recipient_rejected", "message_rejected", "auth_throttled"}
} | {"recipient_rejected": "other", "message_rejected": "other"}
# auth_throttled is left out on purpose: the first failures are stored (auth_failed), and a
# guesser kept at the limit would otherwise write a row per attempt.


class RejectionLog:
    """Bounded queue on the loop side, one writer thread on the index side."""

    def __init__(self, index_path: Path, config: IndexConfig) -> None:
        self.index_path = index_path
        self.config = config
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.rejected_queue)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._dropped: dict[str, Any] = {}

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mail-rejections", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()  # the writer stores what is queued, then ends
        with contextlib.suppress(queue.Full):  # wakes it now (when full, it is awake)
            self._queue.put_nowait(None)
        await asyncio.to_thread(thread.join, 30.0)

    # ---------------------------------------------------------------- event loop side

    def record(
        self,
        listener: str,
        client_ip: str,
        helo: str | None,
        user: str | None,
        rejection: Rejection,
    ) -> None:
        """Queue ``rejection`` (made by the SMTP core or the shell) when it is one the index
        keeps; never raises."""
        reason = STORED.get(rejection.reason)
        if reason is None:
            return
        try:
            reply = rejection.reply
            self._put(
                listener,
                (
                    time.time(),
                    client_ip,
                    listener,
                    sanitize(helo or "", FIELD_LIMIT),
                    sanitize(rejection.mail_from or "", FIELD_LIMIT),
                    sanitize(rejection.recipient, 4 * FIELD_LIMIT),
                    user,
                    reply.code,
                    reason,
                    sanitize(reply.text, FIELD_LIMIT),
                ),
            )
        except Exception:  # our bug: never let it end the client's session
            log.exception("mail.rejections.internal_error")

    def _put(self, listener: str, row: tuple[Any, ...]) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            counter = self._dropped.get(listener)
            if counter is None:
                counter = self._dropped[listener] = DROPPED.labels(listener)
            counter.inc()

    # ---------------------------------------------------------------- writer thread

    def _run(self) -> None:
        index: MessageIndex | None = None
        next_prune = 0.0
        while True:
            batch: list[tuple[Any, ...]] = []
            try:
                item = self._queue.get(timeout=0 if self._stopping.is_set() else 1.0)
                while True:
                    if item is not None:  # None: stop() waking us
                        batch.append(item)
                    if len(batch) >= BATCH:
                        break
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            if not batch and self._stopping.is_set():
                break
            now = time.time()
            if not batch and now < next_prune:
                continue
            try:
                if index is None:
                    index = MessageIndex(self.index_path)
                if batch:
                    index.record_rejections(batch)
                    for row in batch:
                        RECORDED.labels(row[2]).inc()
                if now >= next_prune:
                    next_prune = now + PRUNE_EVERY
                    PRUNED.inc(
                        index.prune_rejections(now - self.config.rejected_retention_days * 86400)
                    )
            except Exception as exc:  # disk full, a lock held too long: lose this batch only
                for row in batch:
                    DROPPED.labels(row[2]).inc()
                log.warning("mail.rejections.write_failed", extra={"error": str(exc)})
                if index is not None:
                    with contextlib.suppress(Exception):
                        index.close()
                index = None
        if index is not None:
            index.close()
