"""Pickup: queue a message generated here (a DSN, an alarm, a scheduled report) without SMTP.

Postfix's pickup(8)/sendmail(1) path: the caller hands over the message's bytes, the envelope
sender and the recipients; :class:`Pickup` resolves the recipients as cleanup does (local
mailboxes, aliases, or relay for the outbound queue manager: :meth:`Directory.destination`),
writes a queue file in the one format (:mod:`lanalyze.mail.queuefile`: message, JSON trailer
with the CRC-32, footer) under ``queue/incoming/``, flushes it, renames it into
``queue/active/`` and flushes that directory, records the index row, and tells the queue
manager. When :meth:`Pickup.queue` returns, the message is on stable storage, exactly as an
SMTP message is when its client gets the 250.

Why not cleanup's :class:`~lanalyze.mail.cleanup.Committer`: it belongs to the SMTP event loop
(group commit for thousands of messages a second), while pickup's callers are delivery
threads and processes, the alarm engine and the report scheduler, a few messages a minute.
Each message is fsynced on its own (never ``syncfs``, which would flush the whole disk for
one file), whatever ``mail.sync`` says.

Two entry points: :meth:`Pickup.queue` (blocking; from a thread or another process) and
:meth:`Pickup.aqueue` (from the event loop; the disk work runs in a thread).

Trust: the message and the addresses come from our own code, but may carry text that came
from a peer (a bounced message's headers, a remote server's reply); recipients are parsed
with the SMTP address parser (:class:`AddressError` for a bad one), message lines are given
CRLF ends, and nothing becomes a path but the queue id we generate.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lanalyze.datadir import FILE_MODE, fsync_dir
from lanalyze.log import get_logger
from lanalyze.mail.cleanup import HEAD_BYTES, new_queue_id, route
from lanalyze.mail.headers import header_summary
from lanalyze.mail.index import MessageIndex
from lanalyze.mail.metrics import PICKUPS
from lanalyze.mail.queuefile import Envelope, Layout, footer
from lanalyze.mail.smtp.address import parse_path

if TYPE_CHECKING:
    from lanalyze.mail.users import Directory

log = get_logger(__name__)


def crlf(message: bytes) -> bytes:
    """Every line end CRLF, as queue files hold messages (generated text often has LF)."""
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class Pickup:
    """Queue locally generated messages; thread-safe, no state but the configuration."""

    def __init__(
        self,
        layout: Layout,
        directory: Directory,
        hostname: str,
        *,
        on_queued: Callable[[str], None] | None = None,
        record: Callable[[list[Envelope]], None] | None = None,
    ) -> None:
        self.layout = layout
        self.directory = directory
        self.hostname = hostname
        # Called with the new file's path once it is durable (from the caller's thread): the
        # server hands it to its queue manager; without it the next scan of active/ finds it.
        self.on_queued = on_queued
        # Writes index rows; default: a connection of our own per message (few messages).
        self.record = record

    def envelope(
        self,
        mail_from: str,
        recipients: Sequence[str],
        *,
        queue_id: str | None = None,
        ret: str | None = None,
        envid: str | None = None,
        dsn: dict[str, dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Envelope:
        """The envelope of a new message (recipients resolved); raises AddressError."""
        if not recipients:
            raise ValueError("no recipients")
        if mail_from:
            parse_path(mail_from, allow_null=False)
        paths = [parse_path(recipient, allow_null=False) for recipient in recipients]
        local, relay, mail_from, routed = route(self.directory, paths, mail_from)
        addresses = [path.address for path in paths]
        return Envelope(
            queue_id=queue_id or new_queue_id(),
            mail_from=mail_from,
            recipients=addresses,
            local=local,
            relay=relay,
            received_at=time.time(),
            client_ip="",
            helo="",
            listener="local",
            ret=ret,
            envid=envid,
            dsn=dict(dsn or {}),
            extra={**routed, **(extra or {})},
        )

    def queue(
        self,
        message: bytes,
        mail_from: str,
        recipients: Sequence[str],
        *,
        ret: str | None = None,
        envid: str | None = None,
        dsn: dict[str, dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Queue ``message`` durably; return its queue id. Blocks on the disk (call from a
        thread, or use :meth:`aqueue`); raises AddressError for a bad address, OSError when
        the queue cannot be written (then nothing of the message is in ``active/``)."""
        envelope = self.envelope(mail_from, recipients, ret=ret, envid=envid, dsn=dsn, extra=extra)
        return self.commit(envelope, message)

    async def aqueue(
        self,
        message: bytes,
        mail_from: str,
        recipients: Sequence[str],
        *,
        ret: str | None = None,
        envid: str | None = None,
        dsn: dict[str, dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """:meth:`queue` for the event loop: the disk work runs in a thread."""
        envelope = self.envelope(mail_from, recipients, ret=ret, envid=envid, dsn=dsn, extra=extra)
        return await asyncio.to_thread(self.commit, envelope, message)

    def commit(self, envelope: Envelope, message: bytes) -> str:
        """Write ``envelope`` and ``message`` as a queue file in ``active/``, durably."""
        message = crlf(message)
        summary = header_summary(message[:HEAD_BYTES])
        envelope.header_from = summary.header_from
        envelope.subject = summary.subject
        envelope.message_id = summary.message_id
        envelope.size = len(message)
        envelope.crc32 = zlib.crc32(message)
        if not envelope.prepend:
            date = email.utils.formatdate(envelope.received_at, localtime=False)
            envelope.prepend = (
                f"Received: by {self.hostname} (lanalyze) id {envelope.queue_id}"
                f" (local pickup); {date}\r\n"
            )
        queue_id = envelope.queue_id
        tmp = self.layout.q("incoming") / queue_id
        target = self.layout.q("active") / queue_id
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            try:
                data = message + footer(len(message), envelope.trailer())
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            PICKUPS.labels("failed").inc()
            raise
        fsync_dir(target.parent)
        PICKUPS.labels("queued").inc()
        log.info(
            "mail.pickup.queued",
            extra={
                "queue_id": queue_id,
                "from": envelope.mail_from,
                "recipients": envelope.recipients[:10],
                "kind": envelope.extra.get("dsn", "local"),
            },
        )
        self._record(envelope)
        if self.on_queued is not None:
            try:
                self.on_queued(str(target))
            except Exception:  # the scan of active/ finds it anyway
                log.exception("mail.pickup.notify_failed")
        return queue_id

    def _record(self, envelope: Envelope) -> None:
        try:
            if self.record is not None:
                self.record([envelope])
            elif self.layout.index.exists():
                with MessageIndex(self.layout.index) as index:
                    index.record_accepted([envelope])
        except (sqlite3.Error, OSError, RuntimeError):
            # Derived data: the queue file is what counts (as cleanup's BatchedRecorder).
            log.exception("mail.index.record_failed")
