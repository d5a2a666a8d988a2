"""The SMTP listeners: an asyncio ``Protocol`` shell around the sans-IO core.

Each connection owns an :class:`~lanalyze.mail.smtp.protocol.SMTPSession`; this shell only
moves bytes, enforces connection limits and timeouts (RFC 5321 §4.5.3.2, configurable),
upgrades to TLS (RFC 3207), verifies passwords in a thread, and at the end of each message
runs the pipeline: header summary, sender binding on submission, the authentication checks
(:mod:`lanalyze.mail.auth`, when enabled), then cleanup's durable group commit; only after
that does the client get ``250 2.0.0 Ok: queued as ID``. The queue manager then delivers.

The shell is a ``Protocol`` rather than streams because a stream reader costs a coroutine
switch per line, and the benchmark target (twice Postfix) leaves no room for that.

Trust: peers are untrusted. Their faults are answered, counted (:mod:`.metrics`) and logged
rate-limited naming the peer; a peer can hold at most one read, the line limit and
``mail.spool_memory`` bytes of our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import multiprocessing
import os
import ssl
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from lanalyze.log import RateLimiter, get_logger
from lanalyze.mail import metrics
from lanalyze.mail.acceptors import start_delivery_worker
from lanalyze.mail.auth.message import SenderFields, sender_fields, split_message
from lanalyze.mail.authhook import AuthHook
from lanalyze.mail.cleanup import BatchedRecorder, Committer, Spool, new_queue_id
from lanalyze.mail.config import MailConfig
from lanalyze.mail.delivery.maildir import MaildirDelivery, Outcome
from lanalyze.mail.headers import header_summary, sanitize
from lanalyze.mail.index import MessageIndex
from lanalyze.mail.queue import QueueManager
from lanalyze.mail.queuefile import Envelope, Layout, Syncer
from lanalyze.mail.rejections import RejectionLog
from lanalyze.mail.smtp.protocol import (
    R_BYE,
    AuthAttempt,
    Close,
    Event,
    Limits,
    MessageAbort,
    MessageBegin,
    MessageChunk,
    MessageEnd,
    Reply,
    SessionOptions,
    SMTPSession,
    StartTLS,
    State,
)
from lanalyze.mail.users import Directory
from lanalyze.service import bind_socket

if TYPE_CHECKING:
    from lanalyze.config import GeneralConfig

log = get_logger(__name__)
_peer_log = RateLimiter(interval=10.0, burst=5)

R_TIMEOUT = Reply(421, "4.4.2 Error: timeout exceeded")
R_TOO_MANY_CONNECTIONS = Reply(421, "4.7.0 Error: too many connections")
R_WRITE_ERROR = Reply(451, "4.3.0 Error: queue file write error")
R_HEADER_FROM_NOT_YOURS = Reply(553, "5.7.1 From: header address not owned by user")
# The rejection log classifies by "From: header" in the text (rejections.classify).
R_HEADER_SENDER_NOT_YOURS = Reply(553, "5.7.1 From: header check: Sender: not owned by user")
R_HEADER_FROM_REPEATED = Reply(553, "5.7.1 From: header repeated: one From: field per message")
R_HEADER_FROM_TOO_LONG = Reply(553, "5.7.1 From: header or Sender: field too long")
_BYE = R_BYE.encode()


@functools.lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    """The Received: date, formatted once per second (not once per message)."""
    return email.utils.formatdate(second, localtime=False)


@dataclass
class Listener:
    kind: str  # mta | submission | smtps
    options: SessionOptions
    ssl_context: ssl.SSLContext | None

    def __post_init__(self) -> None:
        # Resolved once: labels() per message is measurable at thousands of messages/s.
        self.served = metrics.CONNECTIONS.labels(self.kind, "served")
        self.open = metrics.OPEN_CONNECTIONS.labels(self.kind)
        self.messages = metrics.MESSAGES.labels(self.kind)
        self.bytes = metrics.BYTES.labels(self.kind)
        self._children: dict[tuple[int, str], Any] = {}

    def counter(self, family: Any, label: str) -> Any:
        """``family.labels(kind, label)``, resolved once (the label sets are bounded)."""
        key = (id(family), label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(self.kind, label)
        return child


class MailServer:
    """The mail component: listeners, cleanup, queue manager, delivery, index."""

    name = "mail"

    def __init__(self, config: MailConfig, general: GeneralConfig, *, role: str = "main") -> None:
        self.role = role  # "main", or "acceptor": sessions and cleanup only (acceptors.py)
        self.general = general
        self.config = config
        self.hostname = general.hostname
        self.layout = Layout(general.data_path)
        self.active_dir = str(self.layout.q("active"))
        self.directory = Directory(config)
        self.auth = AuthHook(config, general.hostname)
        self._servers: list[asyncio.Server] = []
        self._connections: set[SMTPConnection] = set()
        self._per_client: dict[str, int] = {}
        self._disk: ThreadPoolExecutor | None = None
        # The index has its own thread: a SQLite write waiting for another process's lock
        # (acceptors share the file) must not hold up the next group commit.
        self._index_pool: ThreadPoolExecutor | None = None
        self._delivery_pool: Executor | None = None
        self.index: MessageIndex | None = None
        self._outcomes: BatchedRecorder[Outcome] | None = None
        self.rejections: RejectionLog | None = None
        self.committer: Committer | None = None
        self.queue: QueueManager | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._acceptors: list[Any] = []

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            # A listener that cannot bind (BindError) must not leave workers behind.
            await self.stop()
            raise

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="mail-disk")
        await loop.run_in_executor(self._disk, self.layout.create)
        self._index_pool = ThreadPoolExecutor(1, thread_name_prefix="mail-index")
        self.index = await loop.run_in_executor(self._index_pool, MessageIndex, self.layout.index)
        self._outcomes = BatchedRecorder(self._write_outcomes, self._index_pool)
        if self.config.index.record_rejections:
            self.rejections = RejectionLog(self.layout.index, self.config.index)
            await self.rejections.start()
        syncer = Syncer(self.config.sync)
        self.committer = Committer(
            self.layout,
            self._disk,
            self.index.record_accepted,
            syncer=syncer,
            record_executor=self._index_pool,
        )
        if self.role == "main":
            # Delivery runs in its own process: its file work and Python parts then use the
            # other core instead of contending for the GIL with the SMTP sessions.
            self._delivery_pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=start_delivery_worker,
                initargs=(os.getpid(), self.config.queue.delivery_nice),
            )
            self.queue = QueueManager(
                self.config.queue,
                self.layout,
                MaildirDelivery(self.layout, syncer),
                self._delivery_pool,
                self._record_outcomes,
            )
        await self.auth.start()
        await self.committer.start()
        if self.queue is not None:
            await self.queue.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="mail-timeouts")
        tls = self._ssl_context()
        limits = Limits(
            max_message_size=self.config.max_message_size,
            max_recipients=self.config.max_recipients,
            hard_error_limit=self.config.hard_error_limit,
        )
        auth_available = bool(self.config.users)

        def options(implicit_tls: bool, auth_required: bool) -> SessionOptions:
            return SessionOptions(
                hostname=self.hostname,
                tls_available=tls is not None,
                tls_active=implicit_tls,
                auth_available=auth_available,
                auth_required=auth_required,
                limits=limits,
            )

        groups = [
            ("listen", Listener("mta", options(False, False), None), self.config.listen),
            (
                "submission_listen",
                Listener("submission", options(False, True), None),
                self.config.submission_listen,
            ),
            ("smtps_listen", Listener("smtps", options(True, True), tls), self.config.smtps_listen),
        ]
        for key, listener, addresses in groups:
            for number, address in enumerate(addresses):
                sock = bind_socket(
                    address, f"mail.{key}[{number}]", reuse_port=self.config.acceptors > 1
                )
                server = await loop.create_server(
                    lambda listener=listener: SMTPConnection(self, listener, tls),
                    sock=sock,
                    ssl=listener.ssl_context,
                    backlog=1024,
                )
                self._servers.append(server)
                self.addresses.setdefault(listener.kind, []).append(sock.getsockname()[:2])
        if self.role == "main" and self.config.acceptors > 1:
            from lanalyze.mail.acceptors import spawn_acceptors

            self._acceptors = spawn_acceptors(self, self.config.acceptors - 1)
        log.info("mail.started", extra={"listeners": self.addresses})

    async def stop(self) -> None:
        if self._acceptors:
            from lanalyze.mail.acceptors import stop_acceptors

            await asyncio.to_thread(stop_acceptors, self._acceptors)
            self._acceptors = []
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.shutdown()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.committer is not None:
            await self.committer.stop()
        if self.queue is not None:
            await self.queue.stop()
        if self._outcomes is not None:
            await self._outcomes.close()
            self._outcomes = None
        await self.auth.stop()
        if self.rejections is not None:
            await self.rejections.stop()
            self.rejections = None
        loop = asyncio.get_running_loop()
        if self.index is not None and self._index_pool is not None:
            await loop.run_in_executor(self._index_pool, self.index.close)
            self.index = None
        for pool in (self._disk, self._index_pool, self._delivery_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._disk = self._index_pool = self._delivery_pool = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    async def _record_outcomes(self, outcomes: list[Outcome]) -> None:
        if outcomes and self._outcomes is not None:
            self._outcomes.add(outcomes)

    def _write_outcomes(self, outcomes: list[Outcome]) -> None:
        """Index thread: delivery results, gathered over a quarter second."""
        if self.index is None:
            return
        updates = [
            (
                o.queue_id,
                o.status,
                o.envelope.attempts if o.envelope else 0,
                o.error,
                o.delivered_to,
            )
            for o in outcomes
        ]
        envelopes = [o.envelope for o in outcomes if o.envelope is not None]
        self.index.set_status(updates, envelopes)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for connection in list(self._connections):
                if connection.deadline < now:
                    connection.timeout()

    # ---------------------------------------------------------------- connection accounting

    def admit(self, connection: SMTPConnection) -> bool:
        ip = connection.client_ip
        if len(self._connections) >= self.config.max_connections:
            return False
        if self._per_client.get(ip, 0) >= self.config.max_connections_per_client:
            return False
        self._connections.add(connection)
        self._per_client[ip] = self._per_client.get(ip, 0) + 1
        return True

    def release(self, connection: SMTPConnection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            left = self._per_client.get(connection.client_ip, 1) - 1
            if left:
                self._per_client[connection.client_ip] = left
            else:
                self._per_client.pop(connection.client_ip, None)


class SMTPConnection(asyncio.Protocol):
    """One client: bytes to the session, replies to the socket, events to the pipeline."""

    def __init__(self, server: MailServer, listener: Listener, tls: ssl.SSLContext | None) -> None:
        self.server = server
        self.listener = listener
        self.tls_context = tls
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.session: SMTPSession | None = None
        self.spool: Spool | None = None
        self.queue_id = ""
        self.begin: MessageBegin | None = None
        self.deadline = float("inf")
        self._flushing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        transport = self.transport = cast(asyncio.Transport, base)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else ""
        kind = self.listener.kind
        if not self.server.admit(self):
            metrics.CONNECTIONS.labels(kind, "refused").inc()
            metrics.REJECTIONS.labels(kind, "connection_limit").inc()
            self._warn("smtp.connection_refused", "connection limit")
            transport.write(R_TOO_MANY_CONNECTIONS.encode())
            self._rejected(b"", R_TOO_MANY_CONNECTIONS.encode())
            transport.close()
            return
        self.listener.served.inc()
        self.listener.open.inc()
        self.session = SMTPSession(self.listener.options, self.server.directory, self.client_ip)
        self._touch(self.server.config.command_timeout)
        transport.write(self.session.greeting())

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None or self._closing:
            return
        errors = session.errors
        events = session.receive(data)
        out = session.data_to_send()
        if session.errors != errors or (session.state is State.CLOSED and not out.endswith(_BYE)):
            self._rejected(data, out)
        if out or session.in_message:
            self._touch(
                self.server.config.data_timeout
                if session.in_message
                else self.server.config.command_timeout
            )
        self._dispatch(out, events)

    def connection_lost(self, exc: Exception | None) -> None:
        session = self.session
        if session is None:
            return
        self._dispatch(b"", session.connection_lost())
        self._closing = True
        self.server.release(self)
        self.listener.open.dec()
        self._flush_counters()
        self.session = None

    # ---------------------------------------------------------------- pipeline

    def _touch(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def timeout(self) -> None:
        self._warn("smtp.timeout", "timeout")
        metrics.REJECTIONS.labels(self.listener.kind, "timeout").inc()
        self.deadline = float("inf")
        if self.transport is not None and not self._closing:
            self.transport.write(R_TIMEOUT.encode())
            self._rejected(b"", R_TIMEOUT.encode())
            self._close_transport()

    def shutdown(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(Reply(421, "4.3.2 Error: service shutting down").encode())
            self._close_transport()

    def _close_transport(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def _dispatch(self, out: bytes, events: list[Event]) -> None:
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out)
        for event in events:
            if isinstance(event, MessageChunk):
                if self.spool is not None:
                    self.spool.append(event.data)
                    if self.spool.over_limit and self._flushing is None:
                        self._start_flush()
            elif isinstance(event, MessageBegin):
                self.begin = event
                self.queue_id = new_queue_id()
                assert self.server.committer is not None
                self.spool = self.server.committer.spool(
                    self.queue_id, self.server.config.spool_memory
                )
            elif isinstance(event, MessageEnd):
                self._finish_message()
            elif isinstance(event, MessageAbort):
                self._drop_spool()
            elif isinstance(event, AuthAttempt):
                self._spawn(self._authenticate(event))
            elif isinstance(event, StartTLS):
                if transport is not None:
                    # Now, not in the task: the ClientHello must reach TLS, not the session.
                    transport.pause_reading()
                self._spawn(self._start_tls())
            elif isinstance(event, Close):
                self._close_transport()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_flush(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # backpressure while the spool reaches the disk

        async def flush() -> None:
            spool = self.spool
            try:
                while spool is not None and spool.buffered:
                    await spool.flush()
            except OSError as exc:
                log.error("mail.spool.write_failed", extra={"error": str(exc)})
            finally:
                self._flushing = None
                if self.transport is not None and not self._closing:
                    self.transport.resume_reading()

        self._flushing = asyncio.get_running_loop().create_task(flush())

    def _drop_spool(self) -> None:
        spool, self.spool = self.spool, None
        if spool is not None:
            self._spawn(self._discard(spool))

    async def _discard(self, spool: Spool) -> None:
        if self._flushing is not None:
            await self._flushing
        await spool.discard()

    def _resume(self, reply: Reply) -> None:
        session = self.session
        if session is None:
            return
        errors = session.errors
        events = session.message_done(reply)
        self._touch(self.server.config.command_timeout)
        out = session.data_to_send()
        if session.errors != errors:
            self._rejected(b"", out)
        self._dispatch(out, events)

    def _rejected(self, data: bytes, out: bytes) -> None:
        """Hook: a reply in ``out`` refused something (accepted mail never comes here)."""
        if self.server.rejections is not None:
            self.server.rejections.seen(self, data, out)

    def _finish_message(self) -> None:
        spool, begin, queue_id = self.spool, self.begin, self.queue_id
        self.spool = None
        session = self.session
        if spool is None or begin is None or session is None:
            return
        if self._flushing is not None or self.server.auth.enabled or session.user is not None:
            # Submission mail has its whole header checked (_accept): it reads the message.
            self._spawn(self._finish_checked(spool, begin, queue_id, session))
            return
        # The common case has nothing to await before the group commit: no task and no
        # future per message, the commit batch calls back on the loop.
        try:
            prepared = self._prepare(spool, begin, queue_id, session)
        except Exception:
            log.exception("mail.accept_failed", extra={"queue_id": queue_id})
            prepared = R_WRITE_ERROR
        if isinstance(prepared, Reply):
            self._spawn(self._refused(spool, prepared))
            return
        prepared.prepend = self._received(prepared, session, prepared.received_at)
        assert self.server.committer is not None

        def committed(error: BaseException | None) -> None:
            if error is None:
                self._accepted(spool, queue_id)
            else:
                self._spawn(self._refused(spool, R_WRITE_ERROR))

        self.server.committer.submit(spool, prepared, committed)

    async def _finish_checked(
        self, spool: Spool, begin: MessageBegin, queue_id: str, session: SMTPSession
    ) -> None:
        """With authentication checks, or after a large message's spool flush."""
        try:
            reply = await self._accept(spool, begin, queue_id, session)
        except Exception:
            log.exception("mail.accept_failed", extra={"queue_id": queue_id})
            reply = R_WRITE_ERROR
        if reply.code == 250:
            self._accepted(spool, queue_id)
        else:
            await self._refused(spool, reply)

    def _accepted(self, spool: Spool, queue_id: str) -> None:
        self.listener.messages.inc()
        self.listener.bytes.inc(spool.length)
        if self.server.queue is not None:  # acceptors: the main process's scan finds it
            self.server.queue.submit(os.path.join(self.server.active_dir, queue_id))
        self._resume(Reply(250, f"2.0.0 Ok: queued as {queue_id}"))

    async def _refused(self, spool: Spool, reply: Reply) -> None:
        await self._discard(spool)
        self._resume(reply)

    def _prepare(
        self, spool: Spool, begin: MessageBegin, queue_id: str, session: SMTPSession
    ) -> Envelope | Reply:
        """The envelope of a finished message, or the reply refusing it (no I/O)."""
        server = self.server
        summary = header_summary(bytes(spool.head))
        local: dict[str, list[str]] = {}
        relay: list[str] = []
        for path in begin.recipients:
            destination = server.directory.destination(path)
            if destination.relay:
                relay.append(path.address)
            else:
                local.setdefault(path.address, []).extend(destination.mailboxes)
        return Envelope(
            queue_id=queue_id,
            mail_from=begin.mail_from.address,
            recipients=[p.address for p in begin.recipients],
            local=local,
            relay=relay,
            received_at=time.time(),
            client_ip=self.client_ip,
            helo=sanitize(session.helo or ""),
            listener=self.listener.kind,
            user=session.user,
            tls=session.tls,
            header_from=summary.header_from,
            subject=summary.subject,
            message_id=summary.message_id,
        )

    async def _accept(
        self, spool: Spool, begin: MessageBegin, queue_id: str, session: SMTPSession
    ) -> Reply:
        if self._flushing is not None:
            await self._flushing
        server = self.server
        envelope = self._prepare(spool, begin, queue_id, session)
        if isinstance(envelope, Reply):
            return envelope
        prepend = self._received(envelope, session, envelope.received_at)
        message = b""
        senders = None
        if server.auth.enabled or session.user is not None:
            # The message's bytes, exactly as they will be queued: not the spool file, which
            # may be a recycled one still holding an older message's tail (issue 18).
            message = await spool.message()
        if session.user is not None:
            senders = sender_fields(split_message(message)[0])
            refusal = self._header_senders_refusal(session.user, senders)
            if refusal is not None:
                return refusal
        if server.auth.enabled:
            verdict = await server.auth.check(message, envelope, session)
            if verdict is not None:
                if verdict.action == "reject":
                    return Reply(550, f"5.7.1 {sanitize(verdict.reason) or 'Message rejected'}")
                envelope.action = verdict.action
                envelope.auth = verdict.data
                envelope.extra["strip_ranges"] = verdict.strip_ranges
                prepend = verdict.header + prepend
            if senders is not None and senders.from_addresses:
                # Every From: address is the user's (checked above); there is one field.
                signature = await server.auth.sign(
                    message, session.user or "", senders.from_addresses[0]
                )
                prepend = signature + prepend
        envelope.prepend = prepend
        assert server.committer is not None
        try:
            await server.committer.commit(spool, envelope)
        except OSError:
            return R_WRITE_ERROR
        return Reply(250, f"2.0.0 Ok: queued as {queue_id}")

    def _header_senders_refusal(self, user: str, senders: SenderFields) -> Reply | None:
        """Issue 12.3: a submission user may send only as themselves, in every From: and
        Sender: field of the whole header, and in one From: field only (a second one is
        what some clients display)."""
        if senders.oversized:
            return R_HEADER_FROM_TOO_LONG
        if senders.from_fields > 1:
            return R_HEADER_FROM_REPEATED
        directory = self.server.directory
        if not all(directory.may_send_as(user, a) for a in senders.from_addresses):
            return R_HEADER_FROM_NOT_YOURS
        if not all(directory.may_send_as(user, a) for a in senders.sender_addresses):
            return R_HEADER_SENDER_NOT_YOURS
        return None

    def _received(self, envelope: Envelope, session: SMTPSession, now: float) -> str:
        protocol = "ESMTP" if session.esmtp else "SMTP"
        if session.tls:
            protocol += "S"
        if session.user is not None:
            protocol += "A"  # RFC 3848
        tail = f"\r\n\tfor <{envelope.recipients[0]}>" if len(envelope.recipients) == 1 else ""
        date = _rfc5322_date(int(now))
        return (
            f"Received: from {envelope.helo} ([{envelope.client_ip}])\r\n"
            f"\tby {self.server.hostname} (lanalyze) with {protocol} id {envelope.queue_id}"
            f"{tail}; {date}\r\n"
        )

    async def _authenticate(self, attempt: AuthAttempt) -> None:
        ok = await asyncio.to_thread(
            self.server.directory.verify_password, attempt.username, attempt.password
        )
        session = self.session
        if session is None:
            return
        if not ok:
            self._warn("smtp.auth_failed", "auth_failed")
        events = session.auth_done(attempt.username if ok else None)
        self._dispatch(session.data_to_send(), events)

    async def _start_tls(self) -> None:
        session, transport = self.session, self.transport
        if session is None or transport is None or self.tls_context is None:
            return
        loop = asyncio.get_running_loop()
        try:
            new_transport = await asyncio.wait_for(
                loop.start_tls(transport, self, self.tls_context, server_side=True),
                timeout=self.server.config.command_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self._warn("smtp.tls_failed", str(exc))
            metrics.REJECTIONS.labels(self.listener.kind, "tls_failed").inc()
            transport.abort()
            return
        if new_transport is None:
            return
        self.transport = new_transport
        self._touch(self.server.config.command_timeout)
        events = session.tls_started()
        self._dispatch(session.data_to_send(), events)

    # ---------------------------------------------------------------- reporting

    def _warn(self, event: str, detail: str) -> None:
        suppressed = _peer_log.allow(self.client_ip)
        if suppressed is not None:
            log.warning(
                event,
                extra={
                    "peer": self.client_ip,
                    "listener": self.listener.kind,
                    "detail": detail,
                    "suppressed": suppressed,
                },
            )

    def _flush_counters(self) -> None:
        session = self.session
        if session is None:
            return
        listener = self.listener
        for command, count in session.commands.items():
            listener.counter(metrics.COMMANDS, command).inc(count)
        for reason, count in session.rejections.items():
            listener.counter(metrics.REJECTIONS, reason).inc(count)
        if session.rejections:
            self._warn("smtp.session_errors", ",".join(sorted(session.rejections)))
        session.commands.clear()
        session.rejections.clear()
