"""Cleanup: spool a message as it arrives, process it, make it durable before the 250.

Postfix's cleanup(8) stage in one module. The SMTP connection hands :class:`Cleanup` a
finished :class:`Transaction` and gets back the queue ID or the refusal; cleanup owns the
envelope, the header checks of submission mail (every From: and Sender:), the sender
checks' verdict (:mod:`lanalyze.mail.authhook`), the fields to prepend (Received:,
Authentication-Results:, DKIM-Signature:) and the commit. It reads the message through
:meth:`Spool.message` only: exactly the message's bytes, whatever the file holds beyond.

A :class:`Spool` holds a message's first bytes in memory and streams the rest to
``queue/incoming/<id>`` once ``mail.spool_memory`` is exceeded, so a large message never
sits in memory. :class:`Committer` makes messages
durable: write what is left (one ``writev``), append the trailer (envelope, with the CRC-32
of the message), then either flush each file, rename into ``queue/active/`` and ``fsync``
that directory (``mail.sync = fsync``), or rename the whole batch and flush data and names
with one ``syncfs`` (``syncfs``: one journal commit per batch; see :mod:`queuefile` for why a
crash inside that window cannot deliver a partial message). Every message waiting when a
batch starts shares the batch's flushes (group commit), and the batch runs in one worker
thread so the event loop never waits on the disk.
Only when its batch has finished does a session send ``250 ... queued as ID``; on any error
the session gets a 451 and the files are removed.

Trust: message bytes and header fields are the peer's: copied, parsed by lossless parsers
that never raise (:mod:`lanalyze.mail.auth.message`, :mod:`lanalyze.mail.headers`) and
sanitised before they reach a header line; the paths are ours (queue IDs are generated here,
never taken from a peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import itertools
import os
import secrets
import time
import zlib
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from lanalyze.datadir import fsync_dir
from lanalyze.log import get_logger
from lanalyze.mail.auth.message import SenderFields, sender_fields, split_message
from lanalyze.mail.headers import header_summary, sanitize
from lanalyze.mail.queuefile import (
    Envelope,
    Layout,
    Recycler,
    Syncer,
    footer,
    read_message,
)
from lanalyze.mail.smtp.protocol import Reply

if TYPE_CHECKING:
    from lanalyze.mail.authhook import AuthHook
    from lanalyze.mail.smtp.address import Path as SMTPPath
    from lanalyze.mail.users import Directory

log = get_logger(__name__)
T = TypeVar("T")

HEAD_BYTES = 65536  # kept in memory for header parsing (From, Subject, Message-ID)
_IOV_MAX = 1024  # Linux's limit on buffers per writev


_SEQUENCE = itertools.count()
_PREFIX = secrets.token_hex(2).upper()  # per process: two servers never collide


def new_queue_id() -> str:
    """Sortable by time, unique across restarts: microseconds, a per-process tag, a counter."""
    return f"{time.time_ns() // 1000:X}{_PREFIX}{next(_SEQUENCE) % 0x100000:05X}"


@dataclass
class Spool:
    path: str
    memory_limit: int
    parts: list[bytes] = field(default_factory=list)
    buffered: int = 0
    length: int = 0
    head: bytearray = field(default_factory=bytearray)
    fd: int | None = None
    crc32: int = 0
    # Opens the file: a recycled queue file when there is one (queuefile.Recycler).
    opener: Callable[[str], tuple[int, bool]] | None = None
    recycled: bool = False  # then truncate to ``written`` when done
    written: int = 0

    def append(self, data: bytes) -> None:
        self.parts.append(data)
        self.buffered += len(data)
        self.length += len(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]

    @property
    def over_limit(self) -> bool:
        return self.buffered > self.memory_limit

    def take(self) -> list[bytes]:
        parts = self.parts
        self.parts = []
        self.buffered = 0
        return parts

    def write_parts(self, parts: list[bytes]) -> None:
        """Thread side: append bytes to the spool file (opened on first use)."""
        if self.fd is None:
            if self.opener is not None:
                self.fd, self.recycled = self.opener(self.path)
            else:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        pending: list[bytes | memoryview] = [part for part in parts if part]
        self.written += sum(len(part) for part in pending)
        while pending:
            # One writev per message in the common case; a short write resumes where it stopped.
            written = os.writev(self.fd, pending[:_IOV_MAX])
            while pending and written >= len(pending[0]):
                written -= len(pending[0])
                pending.pop(0)
            if written:
                pending[0] = memoryview(pending[0])[written:]

    async def flush(self) -> None:
        """Move what is buffered to the spool file (before an auth check, or when large)."""
        parts = self.take()
        if parts or self.fd is None:
            await asyncio.to_thread(self.write_parts, parts)

    def message_sync(self) -> bytes:
        """The whole message: what reached the spool file (exactly ``written`` bytes of it:
        a recycled file is longer until the commit truncates it) and what is still buffered.

        Call only once the message is complete and no flush is running (the file prefix and
        ``parts`` must not move meanwhile)."""
        on_disk = read_message(self.path, self.written) if self.written else b""
        message = on_disk + b"".join(self.parts) if self.parts else on_disk
        if len(message) != self.length:
            # Only a file changed under us gets here: never check or sign other bytes.
            raise OSError(f"{self.path}: spool holds {len(message)} of {self.length} bytes")
        return message

    async def message(self) -> bytes:
        """:meth:`message_sync`, off the event loop when part of it is on disk."""
        if self.written == 0:
            return b"".join(self.parts)
        return await asyncio.to_thread(self.message_sync)

    def discard_sync(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def discard(self) -> None:
        self.take()
        if self.fd is not None:
            await asyncio.to_thread(self.discard_sync)


class BatchedRecorder(Generic[T]):
    """Hands items to ``write`` in ``executor`` at most every ``delay`` seconds, all those
    gathered meanwhile in one call.

    For the message index (derived data, never on the way to a 250): one SQLite transaction
    per commit batch cost ~0.3 ms of CPU per message over the SMTP processes (lock traffic
    between the acceptors, WAL pages written again for every few rows, and the GIL hand-offs
    of each statement); one transaction every quarter second costs a fraction of that. The
    rows appear at most ``delay`` seconds later.
    """

    def __init__(
        self, write: Callable[[list[T]], None], executor: Executor, delay: float = 0.25
    ) -> None:
        self.write = write
        self.executor = executor
        self.delay = delay
        self._items: list[T] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[None] | None = None

    def add(self, items: list[T]) -> None:
        self._items.extend(items)
        if self._timer is None and self._running is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        items, self._items = self._items, []
        if not items:
            return
        running = asyncio.get_running_loop().run_in_executor(self.executor, self._call, items)
        self._running = running
        running.add_done_callback(self._done)

    def _done(self, _: asyncio.Future[None]) -> None:
        self._running = None
        if self._items and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._flush)

    def _call(self, items: list[T]) -> None:
        try:
            self.write(items)
        except Exception:  # the index is derived data; the queue file is what counts
            log.exception("mail.index.record_failed")

    async def close(self) -> None:
        """Write what is left now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._running is not None:
            await asyncio.shield(self._running)
        items, self._items = self._items, []
        if items:
            await asyncio.get_running_loop().run_in_executor(self.executor, self._call, items)


@dataclass(slots=True)
class _Pending:
    spool: Spool
    envelope: Envelope
    done: Callable[[BaseException | None], None]
    parts: list[bytes]


class Committer:
    """Group commit of finished spools into ``queue/active/``."""

    def __init__(
        self,
        layout: Layout,
        executor: Executor,
        on_committed: Callable[[list[Envelope]], None] | None = None,
        syncer: Syncer | None = None,
        record_executor: Executor | None = None,
    ) -> None:
        self.layout = layout
        self.record_executor = record_executor or executor
        self.syncer = syncer or Syncer("fsync")
        self.recycler = Recycler(layout)
        # Strings, not Paths, on the per-message path: pathlib costs tens of microseconds.
        self._incoming = str(layout.q("incoming"))
        self._active = str(layout.q("active"))
        self.executor = executor
        self.on_committed = on_committed
        self._recorder: BatchedRecorder[Envelope] | None = (
            BatchedRecorder(on_committed, self.record_executor) if on_committed else None
        )
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.committed = 0

    def spool(self, queue_id: str, memory_limit: int) -> Spool:
        return Spool(
            os.path.join(self._incoming, queue_id), memory_limit, opener=self.recycler.open
        )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mail-cleanup")

    async def stop(self) -> None:
        if self._task is not None:
            while self._pending:
                await asyncio.sleep(0.01)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._recorder is not None:
            await self._recorder.close()

    def submit(
        self, spool: Spool, envelope: Envelope, done: Callable[[BaseException | None], None]
    ) -> None:
        """Queue a finished message for the next batch. ``done(None)`` runs on the event loop
        once it is durable in ``queue/active/``, ``done(error)`` if it is not (then nothing
        of it is there). No future or task per message: the SMTP shell's common path."""
        self._pending.append(_Pending(spool, envelope, done, spool.take()))
        self._wake.set()

    async def commit(self, spool: Spool, envelope: Envelope) -> None:
        """Returns once the message is durable in ``queue/active/``; raises OSError if not."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(error: BaseException | None) -> None:
            if future.done():  # the waiter was cancelled
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self.submit(spool, envelope, done)
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                errors = await loop.run_in_executor(self.executor, self._commit_batch, batch)
            except Exception as exc:  # our bug or a dead disk: nobody gets a 250
                log.exception("mail.cleanup.batch_failed")
                errors = [exc] * len(batch)
            committed = []
            for item, error in zip(batch, errors, strict=True):
                if error is None:
                    committed.append(item.envelope)
                try:
                    item.done(error)
                except Exception:  # our bug in a session's callback: the others still answer
                    log.exception("mail.cleanup.callback_failed")
            if committed and self._recorder is not None:
                # After the replies: the index is derived data and must not delay a 250
                # (nor, in its own thread and gathered over batches, the next batch).
                self._recorder.add(committed)

    def _commit_batch(self, batch: list[_Pending]) -> list[BaseException | None]:
        active = self._active
        errors: list[BaseException | None] = []
        written: list[_Pending] = []
        for item in batch:
            spool = item.spool
            try:
                item.envelope.size = spool.length
                item.envelope.crc32 = spool.crc32
                spool.write_parts([*item.parts, footer(spool.length, item.envelope.trailer())])
                assert spool.fd is not None
                if spool.recycled:
                    os.ftruncate(spool.fd, spool.written)
                self.syncer.file(spool.fd)
                os.close(spool.fd)
                spool.fd = None
                written.append(item)
                errors.append(None)
            except OSError as exc:
                log.error("mail.cleanup.write_failed", extra={"error": str(exc)})
                with contextlib.suppress(OSError):
                    spool.discard_sync()
                errors.append(exc)
        if not written:
            return errors
        renamed: list[str] = []
        try:
            if self.syncer.rename_first:
                # One flush covers data and names; the CRC in the trailer catches a file whose
                # data a power cut left incomplete (never acknowledged, so never delivered).
                for item in written:
                    target = os.path.join(active, item.envelope.queue_id)
                    os.rename(item.spool.path, target)
                    renamed.append(target)
                self.syncer.batch(self.layout.q("incoming"))
            else:
                # Data first, then names: a crash never leaves a half-written file in active/.
                self.syncer.batch(self.layout.q("incoming"))
                for item in written:
                    target = os.path.join(active, item.envelope.queue_id)
                    os.rename(item.spool.path, target)
                    renamed.append(target)
                fsync_dir(Path(active))
        except OSError as exc:
            log.error("mail.cleanup.sync_failed", extra={"error": str(exc)})
            # These clients get a temporary failure and will send again: the queue scanner
            # must not also deliver the copies already renamed into active/.
            for target in renamed:
                with contextlib.suppress(OSError):
                    os.unlink(target)
            return [exc] * len(batch)
        self.batches += 1
        self.committed += len(written)
        return errors


# ---------------------------------------------------------------- acceptance (cleanup(8))

R_WRITE_ERROR = Reply(451, "4.3.0 Error: queue file write error", "local_error")
R_HEADER_FROM_NOT_YOURS = Reply(
    553, "5.7.1 From: header address not owned by user", "header_from_not_allowed"
)
# The rejection log classifies by "From: header" in the text (rejections.classify).
R_HEADER_SENDER_NOT_YOURS = Reply(
    553, "5.7.1 From: header check: Sender: not owned by user", "header_from_not_allowed"
)
R_HEADER_FROM_REPEATED = Reply(
    553, "5.7.1 From: header repeated: one From: field per message", "header_from_not_allowed"
)
R_HEADER_FROM_TOO_LONG = Reply(
    553, "5.7.1 From: header or Sender: field too long", "header_from_not_allowed"
)


@functools.lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    """The Received: date, formatted once per second (not once per message)."""
    return email.utils.formatdate(second, localtime=False)


@dataclass(slots=True)
class Transaction:
    """A finished SMTP transaction as the connection hands it over: the spooled message (all
    of it received) and what the session knows about it. Everything but ``listener`` and
    ``queue_id`` is the peer's."""

    queue_id: str
    spool: Spool
    mail_from: str
    recipients: list[SMTPPath]
    client_ip: str
    helo: str
    listener: str  # mta | submission | smtps
    user: str | None  # the authenticated submission user
    tls: bool
    esmtp: bool
    flushing: asyncio.Task[None] | None = None  # the spool's flush still running, if any
    # RFC 3461 parameters as the core decoded them (smtp/dsn.py): into the envelope as given.
    ret: str | None = None
    envid: str | None = None
    dsn: dict[str, dict[str, Any]] = field(default_factory=dict)


class Cleanup:
    """Content and header processing of a finished transaction, as Postfix's cleanup(8):
    the envelope (recipients resolved to mailboxes or relay), the header summary, the
    submission user's From:/Sender: binding, the sender checks' verdict, the Received: and
    Authentication-Results fields and the DKIM signature to prepend, then the durable commit.

    :meth:`finish` answers through ``done(reply)`` on the event loop, exactly once: ``250 ...
    queued as ID`` once the message is durable, or the refusal (the spool is discarded first).
    A transaction with nothing to await (no checks, no submission user, no flush running) is
    prepared and handed to the group commit without a task or future: the fast path.
    """

    def __init__(
        self, committer: Committer, directory: Directory, auth: AuthHook, hostname: str
    ) -> None:
        self.committer = committer
        self.directory = directory
        self.auth = auth
        self.hostname = hostname
        self._tasks: set[asyncio.Task[None]] = set()

    def finish(self, tx: Transaction, done: Callable[[Reply], None]) -> None:
        if tx.flushing is not None or self.auth.enabled or tx.user is not None:
            # Submission mail has its whole header checked (_checked): it reads the message.
            self._spawn(self._finish_checked(tx, done))
            return
        try:
            prepared = self._prepare(tx)
        except Exception:
            log.exception("mail.accept_failed", extra={"queue_id": tx.queue_id})
            prepared = R_WRITE_ERROR
        if isinstance(prepared, Reply):
            self._spawn(self._refuse(tx, prepared, done))
            return
        prepared.prepend = self._received(tx, prepared)

        def committed(error: BaseException | None) -> None:
            if error is None:
                done(_queued(tx.queue_id))
            else:
                self._spawn(self._refuse(tx, R_WRITE_ERROR, done))

        self.committer.submit(tx.spool, prepared, committed)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_checked(self, tx: Transaction, done: Callable[[Reply], None]) -> None:
        """With sender checks, a submission user, or after a large message's spool flush."""
        try:
            reply = await self._checked(tx)
        except Exception:
            log.exception("mail.accept_failed", extra={"queue_id": tx.queue_id})
            reply = R_WRITE_ERROR
        if reply.code == 250:
            done(reply)
        else:
            await self._refuse(tx, reply, done)

    async def _refuse(self, tx: Transaction, reply: Reply, done: Callable[[Reply], None]) -> None:
        if tx.flushing is not None:
            await tx.flushing
        await tx.spool.discard()
        done(reply)

    def _prepare(self, tx: Transaction) -> Envelope | Reply:
        """The envelope of a finished message, or the reply refusing it (no I/O)."""
        summary = header_summary(bytes(tx.spool.head))
        local, relay, mail_from, extra = route(self.directory, tx.recipients, tx.mail_from)
        return Envelope(
            queue_id=tx.queue_id,
            mail_from=mail_from,
            recipients=[p.address for p in tx.recipients],
            local=local,
            relay=relay,
            extra=extra,
            received_at=time.time(),
            client_ip=tx.client_ip,
            helo=sanitize(tx.helo),
            listener=tx.listener,
            user=tx.user,
            tls=tx.tls,
            header_from=summary.header_from,
            subject=summary.subject,
            message_id=summary.message_id,
            ret=tx.ret,
            envid=tx.envid,
            dsn=tx.dsn,
        )

    async def _checked(self, tx: Transaction) -> Reply:
        if tx.flushing is not None:
            await tx.flushing
        envelope = self._prepare(tx)
        if isinstance(envelope, Reply):
            return envelope
        prepend = self._received(tx, envelope)
        message = b""
        senders = None
        if self.auth.enabled or tx.user is not None:
            # The message's bytes, exactly as they will be queued: not the spool file, which
            # may be a recycled one still holding an older message's tail (issue 18).
            message = await tx.spool.message()
        if tx.user is not None:
            senders = sender_fields(split_message(message)[0])
            refusal = self._header_senders_refusal(tx.user, senders)
            if refusal is not None:
                return refusal
        if self.auth.enabled:
            verdict = await self.auth.check(message, envelope, tx.helo, tx.user)
            if verdict is not None:
                if verdict.action == "reject":
                    return Reply(
                        550,
                        f"5.7.1 {sanitize(verdict.reason) or 'Message rejected'}",
                        "policy_reject",
                    )
                envelope.action = verdict.action
                envelope.auth = verdict.data
                envelope.extra["strip_ranges"] = verdict.strip_ranges
                prepend = verdict.header + prepend
            if tx.user is not None and senders is not None and senders.from_addresses:
                # Every From: address is the user's (checked above); there is one field.
                signature = await self.auth.sign(message, tx.user, senders.from_addresses[0])
                prepend = signature + prepend
        envelope.prepend = prepend
        try:
            await self.committer.commit(tx.spool, envelope)
        except OSError:
            return R_WRITE_ERROR
        return _queued(tx.queue_id)

    def _header_senders_refusal(self, user: str, senders: SenderFields) -> Reply | None:
        """Issue 12.3: a submission user may send only as themselves, in every From: and
        Sender: field of the whole header, and in one From: field only (a second one is
        what some clients display)."""
        if senders.oversized:
            return R_HEADER_FROM_TOO_LONG
        if senders.from_fields > 1:
            return R_HEADER_FROM_REPEATED
        if not all(self.directory.may_send_as(user, a) for a in senders.from_addresses):
            return R_HEADER_FROM_NOT_YOURS
        if not all(self.directory.may_send_as(user, a) for a in senders.sender_addresses):
            return R_HEADER_SENDER_NOT_YOURS
        return None

    def _received(self, tx: Transaction, envelope: Envelope) -> str:
        protocol = "ESMTP" if tx.esmtp else "SMTP"
        if tx.tls:
            protocol += "S"
        if tx.user is not None:
            protocol += "A"  # RFC 3848
        tail = f"\r\n\tfor <{envelope.recipients[0]}>" if len(envelope.recipients) == 1 else ""
        date = _rfc5322_date(int(envelope.received_at))
        return (
            f"Received: from {envelope.helo} ([{envelope.client_ip}])\r\n"
            f"\tby {self.hostname} (lanalyze) with {protocol} id {envelope.queue_id}"
            f"{tail}; {date}\r\n"
        )


def route(
    directory: Directory, recipients: list[SMTPPath], mail_from: str
) -> tuple[dict[str, list[str]], list[str], str, dict[str, Any]]:
    """Where a message's recipients go (RFC 5321 §3.9 forwarding included): ``local``
    (recipient -> mailboxes), ``relay`` (addresses for the outbound queue manager: remote
    recipients, an alias's remote targets, the original senders of SRS addresses), the
    envelope sender to use (SRS-rewritten when anything is forwarded; local deliveries of
    the same message then show it in Return-Path too, as with postsrsd), and the envelope's
    ``extra`` (``forwarded``: target -> the recipient it came from; ``srs_from``: the
    sender before rewriting). The one routing rule of cleanup and pickup."""
    local: dict[str, list[str]] = {}
    relay: list[str] = []
    forwarded: dict[str, str] = {}
    for path in recipients:
        destination = directory.destination(path)
        if destination.relay:
            relay.append(path.address)
            continue
        if destination.mailboxes or not destination.forward:
            local.setdefault(path.address, []).extend(destination.mailboxes)
        for target in destination.forward:
            if target not in relay:
                relay.append(target)
                forwarded[target] = path.address
    extra: dict[str, Any] = {}
    if forwarded:
        extra["forwarded"] = forwarded
        rewritten = directory.forward_sender(mail_from)
        if rewritten != mail_from:
            extra["srs_from"] = mail_from
            mail_from = rewritten
    return local, relay, mail_from, extra


def _queued(queue_id: str) -> Reply:
    return Reply(250, f"2.0.0 Ok: queued as {queue_id}")
