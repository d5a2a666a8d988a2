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

Flow control (RFC 2920 §3.1 lets a server stop reading while its replies are not read): the
transport's write buffer has a high-water mark (``mail.write_buffer``); when a client's
unread replies reach it, asyncio calls :meth:`SMTPConnection.pause_writing` and the shell
stops reading that client, and the core stops parsing after ``MAX_PENDING_REPLIES`` replies
of one read, so a client that pipelines commands and never reads costs at most one read, one
batch of replies and the high-water mark. A stalled client has ``mail.write_timeout`` seconds
to read; our own replies do not extend that deadline, and then the connection is aborted
(``close()`` would wait for the unread bytes forever).

AUTH failures are limited per client address and over all clients
(``mail.auth_failures_per_client``, ``mail.auth_failures_total`` within
``mail.auth_failure_window``, :class:`lanalyze.throttle.ClientThrottle`): beyond, AUTH is
answered ``454 4.7.0`` without an argon2 verification. The counts are per process (each
acceptor keeps its own), so with ``mail.acceptors = N`` a client may get up to N times the
limit.

Rejections: the core's :class:`~lanalyze.mail.smtp.protocol.Rejection` events (and the
shell's own, for limits and timeouts) go to :class:`~lanalyze.mail.rejections.RejectionLog`.

Trust: peers are untrusted. Their faults are answered, counted (:mod:`.metrics`) and logged
rate-limited naming the peer; a peer can hold at most one read, the line limit, one batch of
replies plus ``mail.write_buffer``, and ``mail.spool_memory`` bytes of our memory.
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
from lanalyze.mail import metrics, srs
from lanalyze.mail.acceptors import (
    acceptor_finished,
    acceptor_started,
    serve_until_signal,
    spawn_acceptors,
    start_delivery_worker,
    stop_acceptors,
    tell_queued,
)
from lanalyze.mail.auth.dns import Resolver
from lanalyze.mail.authhook import AuthHook
from lanalyze.mail.bounce import Bouncer, DSNBouncer
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
from lanalyze.mail.delivery.nexthop import NextHop
from lanalyze.mail.delivery.outbound import OutboundQueue
from lanalyze.mail.index import MessageIndex
from lanalyze.mail.pickup import Pickup
from lanalyze.mail.queue import QueueManager
from lanalyze.mail.queuefile import Layout, Syncer
from lanalyze.mail.rejections import RejectionLog
from lanalyze.mail.smtp.address import Path as SMTPPath
from lanalyze.mail.smtp.protocol import (
    AuthAttempt,
    Close,
    Event,
    Limits,
    MessageAbort,
    MessageBegin,
    MessageChunk,
    MessageEnd,
    Rejection,
    Reply,
    SessionOptions,
    SMTPSession,
    StartTLS,
)
from lanalyze.mail.users import Directory
from lanalyze.service import bind_socket
from lanalyze.throttle import ClientThrottle

if TYPE_CHECKING:
    from lanalyze.config import GeneralConfig

log = get_logger(__name__)
_peer_log = RateLimiter(interval=10.0, burst=5)

R_TIMEOUT = Reply(421, "4.4.2 Error: timeout exceeded", "timeout")
# Never sent (the client is not reading): what the rejection log stores for a write stall.
R_WRITE_TIMEOUT = Reply(421, "4.4.2 Error: timeout exceeded (replies not read)", "timeout")
R_TOO_MANY_CONNECTIONS = Reply(421, "4.7.0 Error: too many connections", "connection_limit")
R_AUTH_THROTTLED = Reply(
    454, "4.7.0 Error: too many failed authentications, try again later", "auth_throttled"
)


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
        self.stalls = metrics.WRITE_STALLS.labels(self.kind)
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

    def __init__(
        self,
        config: MailConfig,
        general: GeneralConfig,
        *,
        role: str = "main",
        bouncer: Bouncer | None = None,
    ) -> None:
        self.role = role  # "main", or "acceptor": sessions and cleanup only (acceptors.py)
        self.bouncer = bouncer  # delivery status notifications (None: results only logged)
        self.general = general
        self.config = config
        self.hostname = general.hostname
        self.layout = Layout(general.data_path)
        self.active_dir = str(self.layout.q("active"))
        self.directory = Directory(config, srs.from_config(config, self.layout.root))
        self.auth = AuthHook(config, general.hostname)
        self.auth_failures = ClientThrottle(
            config.auth_failures_per_client,
            config.auth_failures_total,
            config.auth_failure_window,
        )
        self._servers: list[asyncio.Server] = []
        self._connections: set[SMTPConnection] = set()
        self._per_client: dict[str, int] = {}
        self._disk: ThreadPoolExecutor | None = None
        # The index has its own thread: a SQLite write waiting for another process's lock
        # (acceptors share the file) must not hold up the next group commit.
        self._index_pool: ThreadPoolExecutor | None = None
        self._delivery_pool: Executor | None = None
        self._outbound_pool: ThreadPoolExecutor | None = None
        self.index: MessageIndex | None = None
        self._outcomes: BatchedRecorder[Outcome] | None = None
        self.rejections: RejectionLog | None = None
        self.committer: Committer | None = None
        self.cleanup: Cleanup | None = None
        self.queue: QueueManager | None = None
        # Locally generated mail (DSNs, notifications); the bouncer is a DSNBouncer over it
        # unless the caller gave one.
        self.pickup: Pickup | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._flagger: asyncio.Task[None] | None = None
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._acceptors: list[Any] = []
        self._queued_ids: list[tuple[str, bool]] = []  # an acceptor's, for the main process
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            # A listener that cannot bind (BindError) must not leave workers behind.
            await self.stop()
            raise

    async def _start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
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

            def queued(path: str) -> None:  # from pickup's caller's thread
                queue = self.queue
                if queue is not None:
                    loop.call_soon_threadsafe(queue.submit, path)

            self.pickup = Pickup(self.layout, self.directory, self.hostname, on_queued=queued)
            if self.bouncer is None:
                self.bouncer = DSNBouncer(
                    self.config.bounce,
                    self.pickup,
                    self.hostname,
                    self.directory.postmaster,
                    lifetime=self.config.queue.max_lifetime,
                )
            # Delivery runs in its own process: its file work and Python parts then use the
            # other core instead of contending for the GIL with the SMTP sessions.
            self._delivery_pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=start_delivery_worker,
                initargs=(os.getpid(), self.config.queue.delivery_nice),
            )
            self._outbound_pool = ThreadPoolExecutor(2, thread_name_prefix="mail-outbound")
            auth = self.config.auth
            resolver = Resolver(
                auth.resolver, auth.dns_timeout, auth.dns_cache_size, auth.dns_cache_memory
            )
            await loop.run_in_executor(self._outbound_pool, resolver.prepare)
            outbound = OutboundQueue(
                self.config,
                self.hostname,
                self.layout,
                NextHop(resolver),
                self._outbound_pool,
                record=self._record_outcomes,
                bouncer=self.bouncer,
            )
            self.queue = QueueManager(
                self.config.queue,
                self.layout,
                MaildirDelivery(self.layout, syncer, outbound=self.config.outbound.enabled),
                self._delivery_pool,
                self._record_outcomes,
                outbound=outbound,
            )
        await self.auth.start()
        await self.committer.start()
        if self.queue is not None:
            await self.queue.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="mail-timeouts")
        if self.role == "main":
            self._flagger = asyncio.create_task(self._add_flags(), name="mail-index-flags")
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
                    address,
                    f"mail.{key}[{number}]",
                    reuse_port=self.config.acceptor_count > 1,
                    join=self.role != "main",
                )
                server = await loop.create_server(
                    lambda listener=listener: SMTPConnection(self, listener, tls),
                    sock=sock,
                    ssl=listener.ssl_context,
                    backlog=1024,
                )
                self._servers.append(server)
                self.addresses.setdefault(listener.kind, []).append(sock.getsockname()[:2])
        if self.role == "main" and self.config.acceptor_count > 1:
            self._acceptors = spawn_acceptors(
                run_acceptor,
                self.config.model_dump(mode="json"),
                self.general.model_dump(mode="json"),
                self.addresses,
                self.config.acceptor_count - 1,
                on_queued=self._acceptor_queued,
            )
        log.info("mail.started", extra={"listeners": self.addresses})

    def queued(self, queue_id: str, recipients: list[SMTPPath]) -> None:
        """A message was committed: to our queue manager, or (an acceptor) the main one's.

        ``relay only`` (no recipient of a local domain, so nothing for local delivery) lets
        the queue manager hand it straight to the outbound side; it is a hint, checked again
        against the queue file's envelope there."""
        relay_only = not any(
            not r.domain or self.directory.is_local_domain(r.domain) for r in recipients
        )
        if self.queue is not None:
            self.queue.submit(os.path.join(self.active_dir, queue_id), relay_only=relay_only)
            return
        self._queued_ids.append((queue_id, relay_only))
        if len(self._queued_ids) == 1:  # one pipe message per loop pass, not per message
            asyncio.get_running_loop().call_soon(self._tell_queued)

    def _tell_queued(self) -> None:
        items, self._queued_ids = self._queued_ids, []
        tell_queued(items)

    def _acceptor_queued(self, items: list[tuple[str, bool]]) -> None:
        """From an acceptor's pipe reader thread: its committed files, to our queue manager."""
        queue = self.queue
        if queue is None or self._loop is None:
            return
        paths = [(os.path.join(self.active_dir, q), relay) for q, relay in items]
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(queue.submit_many, paths)

    async def stop(self) -> None:
        if self._acceptors:
            await asyncio.to_thread(stop_acceptors, self._acceptors)
            self._acceptors = []
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.shutdown()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for task in (self._sweeper, self._flagger):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
        for pool in (self._disk, self._index_pool, self._delivery_pool, self._outbound_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._disk = self._index_pool = self._delivery_pool = self._outbound_pool = None

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
        files = [(o.queue_id, path) for o in outcomes for path in o.files]
        self.index.set_status(updates, envelopes, files)

    async def _add_flags(self) -> None:
        """Give verdicts an older version stored the imitation flags (lookalike domain,
        display-name spoof, unverified well-known domain), a chunk at a time in the index
        thread, so the marks and the forged filter cover old mail too."""
        from lanalyze.mail.auth.lookalike import header_imitation_flags

        auth = getattr(self.config, "auth", None)
        named = [*self.config.domains, *getattr(auth, "local_domains", [])]
        local = sorted({d.lower() for d in named})

        def compute(header_from: str, dmarc: str) -> list[str]:
            return header_imitation_flags(header_from, dmarc, local)

        loop = asyncio.get_running_loop()
        try:
            while self.index is not None and self._index_pool is not None:
                done = await loop.run_in_executor(self._index_pool, self.index.add_flags, compute)
                if not done:
                    return
        except Exception:  # derived data: the rows keep the flags they had
            log.exception("mail.index.flags_failed")

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
        self._write_paused = False  # unread replies reached mail.write_buffer: not reading
        self._stall_deadline = float("inf")  # when a stalled client is dropped; replies keep it
        self._starting_tls = False  # reading is paused for the handshake

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
            transport.write(R_TOO_MANY_CONNECTIONS.wire)
            self._rejected(Rejection("", R_TOO_MANY_CONNECTIONS, "connection_limit"))
            transport.close()
            return
        # The high-water mark of unread replies (low: a quarter, asyncio's ratio).
        transport.set_write_buffer_limits(high=self.server.config.write_buffer)
        self.listener.served.inc()
        self.listener.open.inc()
        self.session = SMTPSession(self.listener.options, self.server.directory, self.client_ip)
        self._touch(self.server.config.command_timeout)
        transport.write(self.session.greeting())

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None or self._closing:
            return
        events = session.receive(data)
        out = session.data_to_send()
        if out or session.in_message:
            self._touch(
                self.server.config.data_timeout
                if session.in_message
                else self.server.config.command_timeout
            )
        self._dispatch(out, events)
        if session.held:
            self._go_on()

    def pause_writing(self) -> None:
        """asyncio: unread replies reached ``mail.write_buffer``. Stop reading this client
        (and parsing what it sent) until it reads; start the write-stall deadline, which our
        own replies do not move."""
        self._write_paused = True
        self._stall_deadline = time.monotonic() + self.server.config.write_timeout
        self.deadline = min(self.deadline, self._stall_deadline)
        self.listener.stalls.inc()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """asyncio: the client read its replies down to the low-water mark."""
        self._write_paused = False
        self._stall_deadline = float("inf")
        session = self.session
        if session is None or self._closing:
            return
        self._touch(
            self.server.config.data_timeout
            if session.in_message
            else self.server.config.command_timeout
        )
        self._resume_reading()
        self._go_on()

    def _resume_reading(self) -> None:
        """Read again unless another reason to wait remains (a spool flush, a handshake)."""
        if (
            self.transport is not None
            and not self._closing
            and not self._write_paused
            and self._flushing is None
            and not self._starting_tls
        ):
            self.transport.resume_reading()

    def _go_on(self) -> None:
        """Parse the rest of a read the core held at MAX_PENDING_REPLIES, batch by batch,
        while the client keeps reading (a batch that fills the write buffer pauses us)."""
        session = self.session
        while session is not None and session.held and not self._write_paused and not self._closing:
            events = session.receive(b"")
            self._dispatch(session.data_to_send(), events)
            session = self.session

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
        deadline = time.monotonic() + seconds
        # A stalled client's deadline stays: replies produced meanwhile must not extend it.
        self.deadline = deadline if deadline < self._stall_deadline else self._stall_deadline

    def timeout(self) -> None:
        self.deadline = float("inf")
        transport = self.transport
        if transport is None:
            return
        if self._write_paused or self._closing:
            # The client does not read: a 421 would queue behind the replies it ignores, and
            # close() would keep the connection until it reads them. Drop it.
            if self._write_paused:
                self._warn("smtp.write_timeout", "replies not read")
                metrics.REJECTIONS.labels(self.listener.kind, "timeout").inc()
                self._rejected(Rejection("", R_WRITE_TIMEOUT, "timeout"))
            self._closing = True
            transport.abort()
            return
        self._warn("smtp.timeout", "timeout")
        metrics.REJECTIONS.labels(self.listener.kind, "timeout").inc()
        transport.write(R_TIMEOUT.wire)
        self._rejected(Rejection("", R_TIMEOUT, "timeout"))
        self._close_transport()

    def shutdown(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._write_paused:
            transport.abort()  # a client that does not read would hold the server's stop
            self._closing = True
        elif not self._closing:
            transport.write(Reply(421, "4.3.2 Error: service shutting down").wire)
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
                    self._starting_tls = True
                    transport.pause_reading()
                self._spawn(self._start_tls())
            elif isinstance(event, Close):
                self._close_transport()
            elif isinstance(event, Rejection):
                self._rejected(event)

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
                self._resume_reading()

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
        events = session.message_done(reply)
        self._touch(self.server.config.command_timeout)
        self._dispatch(session.data_to_send(), events)
        if session.held:
            self._go_on()

    def _rejected(self, rejection: Rejection) -> None:
        """Hook: the core or the shell refused something (accepted mail never comes here)."""
        rejections = self.server.rejections
        if rejections is not None:
            session = self.session
            rejections.record(
                self.listener.kind,
                self.client_ip,
                session.helo if session is not None else None,
                session.user if session is not None else None,
                rejection,
            )

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
            ret=begin.ret,
            envid=begin.envid,
            dsn=begin.dsn,
        )

        def done(reply: Reply) -> None:
            if reply.code == 250:
                self.listener.messages.inc()
                self.listener.bytes.inc(spool.length)
                self.server.queued(queue_id, begin.recipients)
            self._resume(reply)

        self.server.cleanup.finish(transaction, done)

    async def _authenticate(self, attempt: AuthAttempt) -> None:
        throttle = self.server.auth_failures
        limit = throttle.blocked(self.client_ip)
        if limit is not None:
            # Refused before the argon2 work: that work is what a guesser makes us spend.
            session = self.session
            if session is not None:
                self.listener.counter(metrics.AUTH_THROTTLED, limit).inc()
                self._warn("smtp.auth_throttled", limit)
                self._auth_answer(session, None, R_AUTH_THROTTLED)
            return
        ok = await asyncio.to_thread(
            self.server.directory.verify_password, attempt.username, attempt.password
        )
        session = self.session
        if session is None:
            return
        if not ok:
            throttle.failed(self.client_ip)
            self._warn("smtp.auth_failed", "auth_failed")
        self._auth_answer(session, attempt.username if ok else None, None)

    def _auth_answer(self, session: SMTPSession, user: str | None, refusal: Reply | None) -> None:
        events = session.auth_done(user, refusal)
        self._dispatch(session.data_to_send(), events)
        if session.held:
            self._go_on()

    async def _start_tls(self) -> None:
        session, transport = self.session, self.transport
        if session is None or transport is None or self.tls_context is None:
            self._starting_tls = False
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
        finally:
            self._starting_tls = False
        if new_transport is None:
            return
        self.transport = new_transport
        new_transport.set_write_buffer_limits(high=self.server.config.write_buffer)
        self._touch(self.server.config.command_timeout)
        events = session.tls_started()
        self._dispatch(session.data_to_send(), events)
        if session.held:
            self._go_on()

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


def run_acceptor(
    config_data: dict[str, Any], general_data: dict[str, Any], metrics_pipe: Any, parent: int
) -> None:
    """An extra acceptor process's entry point (:mod:`lanalyze.mail.acceptors` spawns it)."""
    acceptor_started(parent, metrics_pipe)
    from lanalyze.config import GeneralConfig
    from lanalyze.log import setup_logging

    general = GeneralConfig.model_validate(general_data)
    setup_logging(general.log_format, general.log_level)
    serve_until_signal(MailServer(MailConfig.model_validate(config_data), general, role="acceptor"))
    acceptor_finished(metrics_pipe)
