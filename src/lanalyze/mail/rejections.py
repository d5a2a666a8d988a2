"""Rejections for the message index: what the SMTP server refused, to whom, and why.

The SMTP shell (:mod:`lanalyze.mail.server`) calls :meth:`RejectionLog.seen` only after a
read or a message ended with a reply of 400 or more (it compares the session's error count,
an int, before and after), so accepted mail costs nothing here. ``seen`` runs on the event
loop and does no I/O: it pairs the refusing replies with the commands of the same read
(RFC 2920 keeps replies in command order), classifies them with a fixed vocabulary, and puts
one tuple per rejection on a bounded queue. A writer thread takes what has gathered, inserts it
in one SQLite transaction (:meth:`lanalyze.mail.index.MessageIndex.record_rejections`) and
deletes rows older than ``mail.index.rejected_retention_days`` every hour. When the queue is
full the rejection is counted in ``lanalyze_mail_rejections_dropped_total`` and forgotten:
a flood of refused connections never grows our memory.

Not recorded: protocol noise (syntax errors, unknown commands, commands out of order, long
lines); those are counted on ``/metrics`` and, when a client makes too many, the ``421`` that
ends its session is recorded. AUTH lines are never looked at (they carry passwords).

Trust: addresses, HELO names and command lines are the peer's; they are stripped of control
characters and truncated before they are stored, and rendered escaped by the readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from lanalyze.log import get_logger
from lanalyze.mail.headers import sanitize
from lanalyze.mail.index import IndexConfig, MessageIndex
from lanalyze.metrics import REGISTRY

if TYPE_CHECKING:
    from lanalyze.mail.server import SMTPConnection

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
# Reply codes of protocol noise (syntax, order, unknown command, line too long).
NOISE = frozenset({500, 501, 502, 503, 504, 555})
# Refusals of a whole message (after DATA): its envelope is the connection's MessageBegin.
MESSAGE_REASONS = frozenset({"policy_reject", "too_big", "header_from_not_allowed", "local_error"})


def classify(code: int, text: str) -> str | None:
    """The reason word for a refusing reply, or None for protocol noise."""
    if code in NOISE:
        return None
    if text.startswith("5.1.1"):
        return "unknown_user"
    if "Relay access denied" in text:
        return "relay_denied"
    if "Sender address rejected" in text:
        return "sender_not_allowed"
    if "From: header" in text:
        return "header_from_not_allowed"
    if code == 552 or text.startswith("5.3.4"):
        return "too_big"
    if text.startswith("4.5.3"):
        return "too_many_recipients"
    if "too many errors" in text:
        return "too_many_errors"
    if "too many connections" in text:
        return "connection_limit"
    if "pipelined input" in text:
        return "flood"
    if "bare CR or LF" in text:
        return "bare_newline"
    if code == 530:
        return "auth_required"
    if code in (535, 454) or text.startswith("5.7.8"):
        return "auth_failed"
    if text.startswith("4.4.2"):
        return "timeout"
    if code == 550:
        return "policy_reject"  # the sender checks (DMARC, ...) after DATA
    if code == 451:
        return "local_error"
    return "other"


def replies(out: bytes) -> list[tuple[int, str]]:
    """Final lines of the replies in ``out`` (continuation lines ``NNN-`` skipped)."""
    found = []
    for line in out.split(b"\r\n"):
        if len(line) >= 3 and line[:3].isdigit() and line[3:4] != b"-":
            found.append((int(line[:3]), line[4:].decode("utf-8", "replace")))
    return found


def commands(data: bytes, count: int) -> list[str]:
    """The first ``count`` complete command lines of ``data``, up to the first DATA/BDAT
    (what follows them is message content, not commands)."""
    lines: list[str] = []
    # maxsplit: a read of message data holds thousands of lines, only the first few matter.
    for raw in data.split(b"\r\n", count)[:-1]:
        line = raw.decode("utf-8", "replace")
        verb = line[:4].upper()
        if verb == "AUTH":  # its argument (and the lines after) carry credentials
            lines.append(verb)
            break
        lines.append(line)
        if verb in ("DATA", "BDAT"):
            break
    return lines


def _path(argument: str) -> str:
    """The address of ``TO:<a@b> PARAMS`` / ``FROM:<a@b>``, roughly: for display only."""
    _, _, rest = argument.partition(":")
    rest = rest.strip()
    if rest.startswith("<"):
        end = rest.find(">")
        return rest[1:end] if end > 0 else rest[1:]
    return rest.split(" ", 1)[0]


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

    def seen(self, connection: SMTPConnection, data: bytes, out: bytes) -> None:
        """``out`` holds at least one refusing reply to the commands in ``data`` (empty
        when the reply ends a message); never raises."""
        try:
            self._seen(connection, data, out)
        except Exception:  # our bug: never let it end the client's session
            log.exception("mail.rejections.internal_error")

    def _seen(self, connection: SMTPConnection, data: bytes, out: bytes) -> None:
        found = replies(out)
        lines = commands(data, len(found)) if data else []
        session = connection.session
        begin = connection.begin
        helo = session.helo if session is not None else None
        user = session.user if session is not None else None
        current_sender = (
            session.mail_from.address
            if session is not None and session.mail_from is not None
            else None
        )
        now = time.time()
        for number, (code, text) in enumerate(found):
            if code < 400:
                if number < len(lines) and lines[number][:4].upper() == "MAIL":
                    current_sender = _path(lines[number][4:])
                continue
            reason = classify(code, text)
            if reason is None:
                continue
            sender, recipient = current_sender, ""
            line = lines[number] if number < len(lines) else ""
            verb = line[:4].upper()
            if verb == "RCPT":
                recipient = _path(line[4:])
            elif verb == "MAIL":
                sender = _path(line[4:])
            elif begin is not None and reason in MESSAGE_REASONS:
                sender = begin.mail_from.address
                recipient = ", ".join(p.address for p in begin.recipients)
            self._put(
                connection.listener.kind,
                (
                    now,
                    connection.client_ip,
                    connection.listener.kind,
                    sanitize(helo or "", FIELD_LIMIT),
                    sanitize(sender or "", FIELD_LIMIT),
                    sanitize(recipient, 4 * FIELD_LIMIT),
                    user,
                    code,
                    reason,
                    sanitize(text, FIELD_LIMIT),
                ),
            )

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
