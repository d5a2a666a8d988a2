"""The SMTP listeners: an asyncio ``Protocol`` shell around the sans-IO core.

Each connection owns an :class:`~lanalyze.mail.smtp.protocol.SMTPSession`; this shell only
moves bytes, enforces connection limits and timeouts (RFC 5321 §4.5.3.2, configurable),
upgrades to TLS (RFC 3207), verifies passwords in a thread, and at the end of each message
hands the finished transaction to :class:`~lanalyze.mail.cleanup.Cleanup` (envelope, sender
binding on submission, the authentication checks, signing, the durable group commit), whose
answer it sends: ``250 2.0.0 Ok: queued as ID`` or the refusal. The queue manager then
delivers.

The shell is a ``Protocol`` rather than streams because a stream reader costs a coroutine
switch per line, and the benchmark target (twice Postfix) leaves no room for that.

Trust: peers are untrusted. Their faults are answered, counted (:mod:`.metrics`) and logged
rate-limited naming the peer; a peer can hold at most one read, the line limit and
``mail.spool_memory`` bytes of our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from lanalyze.mail.authhook import AuthHook
from lanalyze.mail.cleanup import (
    BatchedRecorder,
    Cleanup,
    Committer,
    Spool,
    Transaction,
    new_queue_id,
)
from lanalyze.mail.config import MailConfig
from lanalyze.mail.delivery.maildir import MaildirDelivery, Outcome
from lanalyze.mail.index import MessageIndex
from lanalyze.mail.queue import QueueManager
from lanalyze.mail.queuefile import Layout, Syncer
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
_BYE = R_BYE.encode()


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
        self.cleanup: Cleanup | None = None
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
        self.cleanup = Cleanup(self.committer, self.directory, self.auth, self.hostname)
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
        """Hand the finished transaction to cleanup; its answer resumes the session."""
        spool, begin, queue_id = self.spool, self.begin, self.queue_id
        self.spool = None
        session = self.session
        if spool is None or begin is None or session is None:
            return
        assert self.server.cleanup is not None
        transaction = Transaction(
            queue_id=queue_id,
            spool=spool,
            mail_from=begin.mail_from.address,
            recipients=begin.recipients,
            client_ip=self.client_ip,
            helo=session.helo or "",
            listener=self.listener.kind,
            user=session.user,
            tls=session.tls,
            esmtp=session.esmtp,
            flushing=self._flushing,
        )

        def done(reply: Reply) -> None:
            if reply.code == 250:
                self.listener.messages.inc()
                self.listener.bytes.inc(spool.length)
                if self.server.queue is not None:  # acceptors: the main process's scan finds it
                    self.server.queue.submit(os.path.join(self.server.active_dir, queue_id))
            self._resume(reply)

        self.server.cleanup.finish(transaction, done)

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
