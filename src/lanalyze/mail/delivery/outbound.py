"""Outbound delivery scheduling: destinations, connections, per-recipient state, bounces.

The queue manager (:mod:`lanalyze.mail.queue`) hands over a queue file once its local
recipients are done (or when it has outlived ``mail.queue.max_lifetime`` or is due a delay
warning); from then until :meth:`OutboundQueue.submit`'s callback the file is ours alone.
Its non-local recipients (``Envelope.relay``) are grouped by destination
(:func:`~lanalyze.mail.delivery.nexthop.route`); each destination has a queue of jobs and
its own connections (:mod:`~lanalyze.mail.delivery.smtp`), several messages per connection.

Concurrency, as Postfix's qmgr(8) "slow start": a destination starts with
``initial_per_destination`` connections, gets one more per successful delivery up to
``max_per_destination``, and is halved when no host of it can be reached; all destinations
together use at most ``max_connections``. A dead destination fails its queued jobs at once
(deferred), so it never holds up the others. A connection with no job left waits
``IDLE_SECONDS`` for the next one (Postfix's connection cache), unless other destinations
wait for a connection slot.

Per-recipient state is written to the queue file (``Envelope.rcpt``, :func:`queuefile.rewrite`,
or the file released when nothing is left) as soon as a transaction's final reply arrives,
before the connection sends anything else, through :class:`StateWriter`'s group commit (one
directory fsync for the records of every connection that finished meanwhile); a recipient
leaves ``Envelope.relay`` only once its 2xx/5xx is on disk. A crash therefore never skips a
recipient, and sends a message again only to a peer whose 250 came in RFC 1047's window:
after the peer took it and before our record was on disk, at most one transaction per open
connection (at least once, as every MTA).

Bounces (RFC 3464, through :class:`~lanalyze.mail.bounce.Bouncer`) are asked for before the
state is written: a crash in between repeats a notification rather than losing it. Results
handed over: ``failed`` (5xx, null MX, lifetime over), ``delayed`` (once, after
``mail.queue.delay_warning``), ``delivered`` (the bouncer decides by NOTIFY=SUCCESS).

Memory: messages being sent are held in memory up to ``mail.outbound.max_memory`` bytes;
later ones wait.

Trust: queue files are ours; everything from the network is handled in the modules named.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lanalyze.datadir import fsync_dir
from lanalyze.log import RateLimiter, get_logger
from lanalyze.mail import metrics
from lanalyze.mail.bounce import Bouncer, RecipientResult
from lanalyze.mail.config import MailConfig
from lanalyze.mail.delivery.maildir import Outcome, strip_marked
from lanalyze.mail.delivery.mtasts import MtaSts
from lanalyze.mail.delivery.nexthop import Destination, NextHop, route
from lanalyze.mail.delivery.smtp import (
    Outgoing,
    RcptResult,
    SessionOptions,
    TlsMode,
    open_session,
)
from lanalyze.mail.errors import CorruptQueueFile, PermanentRoute, RouteError
from lanalyze.mail.queuefile import (
    Envelope,
    Layout,
    Recycler,
    read_queue_file,
    rewrite,
    verify_message,
)

log = get_logger(__name__)
_dest_log = RateLimiter(interval=30.0, burst=3)

RCPT_PER_TRANSACTION = 50  # as Postfix's smtp_destination_recipient_limit
# A connection whose destination has no job left waits this long for one before QUIT (as
# Postfix's smtp_connection_cache_time_limit): mail that trickles in at the rate it is
# sent otherwise paid a connect, greeting, EHLO and QUIT for every message or two.
IDLE_SECONDS = 2.0
MAX_DESTINATIONS = 10_000  # destination states kept (beyond, idle ones are forgotten)

Done = Callable[[str, "Path | None", int], None]
"""(queue id, path of the rewritten file to retry or None when finished, attempts)."""


@dataclass
class Message:
    path: Path
    envelope: Envelope
    raw: bytes  # the queued message (what a bounce quotes)
    data: bytes  # what is sent: prepended fields + message
    jobs_left: int = 0
    results: list[RcptResult] = field(default_factory=list)  # every result of this attempt
    pending: list[RcptResult] = field(default_factory=list)  # not yet in the envelope
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def cost(self) -> int:
        return len(self.raw) + len(self.data)


@dataclass
class Job:
    message: Message
    recipients: list[str]


@dataclass
class DestinationState:
    destination: Destination
    kind: str  # mx | transport | relay_host
    jobs: deque[Job] = field(default_factory=deque)
    active: int = 0
    limit: float = 1.0
    last_error: str = ""
    failures: int = 0
    idle: int = 0  # connections open and waiting for a job (IDLE_SECONDS at most)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # a job for an idle one


def destination_class(destination: Destination) -> str:
    if destination.relay:
        return "relay_host"
    return "mx" if destination.mx and destination.port == 25 else "transport"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


class OutboundQueue:
    """The outbound side of the queue manager (see the module docstring)."""

    def __init__(
        self,
        config: MailConfig,
        hostname: str,
        layout: Layout,
        nexthop: NextHop,
        executor: Executor,
        *,
        record: Callable[[list[Outcome]], Awaitable[None]],
        bouncer: Bouncer | None = None,
    ) -> None:
        self.config = config
        self.outbound = config.outbound
        self.hostname = hostname
        self.layout = layout
        self.nexthop = nexthop
        self.executor = executor
        # Set by the queue manager: the file is back in its hands (or finished).
        self.done: Done = lambda name, path, attempts: None
        # Set by the queue manager: a file submitted as relay-only that has local
        # recipients after all goes back to local delivery first.
        self.local_first: Callable[[str], None] = lambda path: None
        self.record = record
        self.bouncer = bouncer
        self.mtasts = (
            MtaSts(nexthop.resolver, config.outbound.ca_file, config.outbound.connect_timeout)
            if config.outbound.mta_sts
            else None
        )
        self.recycler = Recycler(layout)
        self.states = StateWriter(executor)
        self.destinations: dict[str, DestinationState] = {}
        self._waiting: deque[DestinationState] = deque()  # for a global connection slot
        self._connections = 0
        self._memory = 0
        self._memory_free = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.messages: dict[str, Message] = {}
        self._counters: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ intake

    def submit(
        self,
        path: str | Path,
        loaded: tuple[Envelope, bytes] | None = None,
        *,
        fresh: bool = False,
    ) -> None:
        """Take over a queue file; ``loaded``: its envelope and message, already read and
        checked by local delivery (small messages), so the file is not read again.
        ``fresh``: straight from acceptance, local delivery not asked yet (a file with local
        recipients goes back to the queue manager's ``local_first``)."""
        self._spawn(self._load(Path(path), loaded, fresh))

    def _spawn(self, coro: Any) -> None:
        if self._stopping:
            # A connection ending during stop() pumps its destination's queue: a task started
            # now would outlive the loop (its socket then closed by the garbage collector).
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self._stopping = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            # Together: each connection says QUIT (with its own timeout) as it closes.
            await asyncio.gather(*tasks, return_exceptions=True)
            # Done tasks leave the set by callbacks the loop has yet to run: drop them here,
            # or this loop could spin without yielding to it.
            self._tasks.difference_update(tasks)

    async def _load(
        self, path: Path, loaded: tuple[Envelope, bytes] | None, fresh: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        name = path.name
        try:
            if loaded is not None:
                envelope, raw = loaded
                while self._memory and self._memory + 2 * len(raw) > self.outbound.max_memory:
                    self._memory_free.clear()
                    await self._memory_free.wait()
            else:
                # One trip to the thread when the file fits the memory left (the common
                # case); else wait for room by its size, then read it.
                budget = self.outbound.max_memory - self._memory if self._memory else None
                size, read = await loop.run_in_executor(self.executor, _read_within, path, budget)
                if read is None:
                    while self._memory and self._memory + 2 * size > self.outbound.max_memory:
                        self._memory_free.clear()
                        await self._memory_free.wait()
                    read = await loop.run_in_executor(self.executor, _read, path)
                envelope, raw = read
        except FileNotFoundError:
            self.done(name, None, 0)  # deleted meanwhile (`mail queue delete`)
            return
        except (CorruptQueueFile, OSError) as exc:
            log.error("mail.outbound.corrupt", extra={"queue_id": name, "error": str(exc)})
            with contextlib.suppress(OSError):
                await loop.run_in_executor(
                    self.executor, os.rename, path, self.layout.q("corrupt") / name
                )
            await self.record([Outcome(name, "corrupt", None, str(exc))])
            self.done(name, None, 0)
            return
        if fresh and envelope.local:
            self.local_first(str(path))
            return
        head = envelope.prepend.encode("utf-8", "surrogateescape")
        message = Message(path, envelope, raw, head + strip_marked(raw, envelope))
        self._memory += message.cost
        self.messages[name] = message
        groups: dict[str, tuple[Destination, list[str]]] = {}
        expired = time.time() - envelope.received_at > self.config.queue.max_lifetime
        if not expired:
            for recipient in envelope.relay:
                destination = route(domain_of(recipient), self.outbound)
                groups.setdefault(destination.key, (destination, []))[1].append(recipient)
        jobs = [
            (key, destination, recipients[i : i + RCPT_PER_TRANSACTION])
            for key, (destination, recipients) in groups.items()
            for i in range(0, len(recipients), RCPT_PER_TRANSACTION)
        ]
        message.jobs_left = len(jobs)
        if not jobs:
            self._spawn(self._finish(message))
            return
        for key, destination, recipients in jobs:
            state = self.destinations.get(key)
            if state is None:
                state = self.destinations[key] = DestinationState(
                    destination,
                    destination_class(destination),
                    limit=float(
                        min(
                            self.outbound.initial_per_destination, self.outbound.max_per_destination
                        )
                    ),
                )
            state.jobs.append(Job(message, recipients))
            self._pump(state)

    # ------------------------------------------------------------------ connections

    def _pump(self, state: DestinationState) -> None:
        # A new connection only for more queued jobs than connections busy: the busy ones
        # take the next job when done, idle ones at once (connection reuse).
        if state.jobs and state.idle:
            state.ready.set()
        while state.jobs and state.active < min(max(1, int(state.limit)), len(state.jobs)):
            if self._connections >= self.outbound.max_connections:
                if state not in self._waiting:
                    self._waiting.append(state)
                    for other in self.destinations.values():
                        if other.idle:  # idle connections give their slots up
                            other.ready.set()
                return
            state.active += 1
            self._connections += 1
            self._spawn(self._connection(state))

    def _options(self, destination: Destination, tls: TlsMode) -> SessionOptions:
        auth = None
        if destination.relay and self.outbound.relay_user and self.outbound.relay_password:
            auth = (self.outbound.relay_user, self.outbound.relay_password.get_secret_value())
        return SessionOptions(
            hostname=self.hostname,
            port=destination.port,
            tls=tls,
            connect_timeout=self.outbound.connect_timeout,
            command_timeout=self.outbound.command_timeout,
            data_timeout=self.outbound.data_timeout,
            ca_file=self.outbound.ca_file,
            auth=auth,
        )

    def _tls_mode(self, destination: Destination) -> TlsMode:
        if destination.relay:
            return "required"
        return self.outbound.tls

    async def _connection(self, state: DestinationState) -> None:
        destination = state.destination
        current: Job | None = None  # the job being sent: finished even if a bug strikes
        try:
            try:
                hosts = await self.nexthop.hosts(destination)
            except RouteError as exc:
                final = "bounced" if isinstance(exc, PermanentRoute) else "deferred"
                self._fail_queued(state, final, exc.status, exc.text, destination.name)
                return
            tls = self._tls_mode(destination)
            if self.mtasts is not None and destination.mx and not destination.relay:
                policy = await self.mtasts.policy(destination.name)
                if policy is not None and policy.mode == "enforce":
                    # RFC 8461 §4: only the hosts the policy names, only with verified TLS.
                    hosts = [h for h in hosts if policy.matches(h[0])]
                    tls = "required"
                    if not hosts:
                        text = f"no MX host of {destination.name} matches its MTA-STS policy"
                        self._fail_queued(state, "deferred", "4.7.5", text, destination.name)
                        return
            errors: list[str] = []
            options = self._options(destination, tls)
            session = await open_session(hosts, options, errors)
            if session is None:
                metrics.OUTBOUND_CONNECTIONS.labels("failed", state.kind).inc()
                state.limit = max(1.0, state.limit / 2)
                state.failures += 1
                text = "; ".join(errors[-3:]) or f"no host of {destination.name} answered"
                state.last_error = text
                if _dest_log.allow(destination.key):
                    log.warning(
                        "mail.outbound.destination_down",
                        extra={"destination": destination.key, "error": text},
                    )
                self._fail_queued(state, "deferred", "4.4.1", text, destination.name)
                return
            metrics.OUTBOUND_CONNECTIONS.labels("opened", state.kind).inc()
            if session.tls:
                metrics.OUTBOUND_CONNECTIONS.labels("tls", state.kind).inc()
            state.failures = 0
            try:
                while session.usable and session.sent < self.outbound.messages_per_connection:
                    if not state.jobs:
                        if not await self._idle(state) or not session.alive:
                            break
                        continue  # a job came (or went to another idle connection)
                    job = current = state.jobs.popleft()
                    message = job.message
                    envelope = message.envelope
                    outgoing = Outgoing(
                        mail_from=envelope.mail_from,
                        recipients=job.recipients,
                        data=message.data,
                        notify={r: envelope.dsn.get(r, {}).get("notify") for r in job.recipients},
                        orcpt={r: envelope.dsn.get(r, {}).get("orcpt") for r in job.recipients},
                        ret=envelope.ret,
                        envid=envelope.envid,
                    )
                    results = await session.send(outgoing)
                    if any(r.state == "delivered" for r in results):
                        state.limit = min(float(self.outbound.max_per_destination), state.limit + 1)
                    current = None
                    # RFC 1047: the peer has the message from its 250 on; until our record
                    # of it is on disk a crash sends it again. That window is this await and
                    # nothing more: the next transaction on this connection starts after it.
                    await self._record_job(job, results, state.kind)
            finally:
                await session.close()
        except Exception:
            log.exception(
                "mail.outbound.connection_crashed", extra={"destination": destination.key}
            )
            if current is not None:
                state.jobs.appendleft(current)
            self._fail_queued(state, "deferred", "4.3.0", "internal error", destination.name)
        finally:
            state.active -= 1
            self._connections -= 1
            self._pump(state)
            if not state.jobs and not state.active and len(self.destinations) > MAX_DESTINATIONS:
                # Bounded memory: an idle destination's state (its slow-start level, last
                # error) is forgotten once many domains have been seen.
                self.destinations.pop(destination.key, None)
            while self._waiting and self._connections < self.outbound.max_connections:
                self._pump(self._waiting.popleft())

    async def _idle(self, state: DestinationState) -> bool:
        """Keep a connection for the destination's next job: True when one came."""
        if self._waiting:
            return False  # other destinations wait for a connection slot: free this one
        state.idle += 1
        try:
            state.ready.clear()
            async with asyncio.timeout(IDLE_SECONDS):
                await state.ready.wait()
        except TimeoutError:
            return False
        finally:
            state.idle -= 1
        return True

    def _fail_queued(
        self, state: DestinationState, result: str, status: str, text: str, host: str
    ) -> None:
        """Every job queued for a destination gets the same result (a dead or impossible
        destination): they would all fail alike, and must not wait behind it."""
        while state.jobs:
            job = state.jobs.popleft()
            results = [RcptResult(r, result, status, text, host) for r in job.recipients]  # type: ignore[arg-type]
            # Nothing was sent: no duplicate to fear, so the records need not be awaited.
            action = self._job_done(job, results, state.kind)
            if action is not None:
                self._spawn(action)

    async def _record_job(self, job: Job, results: Sequence[RcptResult], kind: str) -> None:
        action = self._job_done(job, results, kind)
        if action is not None:
            await action

    def _job_done(
        self, job: Job, results: Sequence[RcptResult], kind: str
    ) -> Awaitable[None] | None:
        """Count a transaction's results; the write they call for (the file finished, or the
        delivered recipients checkpointed while other jobs of the message are still out)."""
        message = job.message
        message.results.extend(results)
        message.pending.extend(results)
        message.jobs_left -= 1
        for result in results:
            key = (result.state, kind)
            counter = self._counters.get(key)
            if counter is None:  # labels() resolved once per (result, class): bounded sets
                counter = self._counters[key] = metrics.OUTBOUND_RECIPIENTS.labels(*key)
            counter.inc()
        if message.jobs_left == 0:
            return self._finish(message)
        if any(r.state == "delivered" for r in results):
            return self._checkpoint(message)
        return None

    # ------------------------------------------------------------------ state

    def _apply(self, message: Message, results: Sequence[RcptResult]) -> None:
        envelope = message.envelope
        now = time.time()
        for result in results:
            entry = envelope.rcpt.setdefault(result.recipient, {})
            entry["attempts"] = int(entry.get("attempts", 0)) + 1
            entry.update(
                state=result.state, reply=result.reply, status=result.status, host=result.host
            )
            if result.state == "deferred":
                entry["next_attempt"] = now + self._delay(envelope.attempts + 1)
            if result.state != "deferred" and result.recipient in envelope.relay:
                envelope.relay.remove(result.recipient)

    def _delay(self, attempts: int) -> float:
        queue = self.config.queue
        return float(min(queue.retry_max, queue.retry_min * 2 ** max(0, attempts - 1)))

    async def _checkpoint(self, message: Message) -> None:
        """Mid-attempt: recipients already delivered are written down before the others end."""
        async with message.lock:
            done = [r for r in message.pending if r.state != "deferred"]
            if not done or message.jobs_left == 0:
                return  # nothing new to write, or _finish writes it anyway
            self._apply(message, done)
            message.pending = [r for r in message.pending if r.state == "deferred"]
            try:
                await self.states.run(
                    partial(
                        _rewrite, message.path, message.path, message.envelope, len(message.raw)
                    )
                )
            except OSError as exc:
                log.error(
                    "mail.outbound.state_write_failed",
                    extra={"queue_id": message.path.name, "error": str(exc)},
                )

    async def _finish(self, message: Message) -> None:
        name = message.path.name
        try:
            async with message.lock:
                await self._finish_locked(message)
        except Exception:
            log.exception("mail.outbound.finish_failed", extra={"queue_id": name})
            self.done(name, message.path, message.envelope.attempts)
        finally:
            self.messages.pop(name, None)
            self._memory -= message.cost
            self._memory_free.set()

    async def _finish_locked(self, message: Message) -> None:
        envelope = message.envelope
        name = message.path.name
        loop = asyncio.get_running_loop()
        results = message.results
        ran = bool(results)
        self._apply(message, message.pending)
        message.pending = []
        now = time.time()
        age = now - envelope.received_at
        report: list[RecipientResult] = []
        for result in results:
            if result.state == "bounced":
                report.append(
                    RecipientResult(
                        result.recipient, "failed", result.status, _diagnostic(result), _mta(result)
                    )
                )
            elif result.state == "delivered":
                # RFC 3461 §4.1: a server without DSN cannot pass NOTIFY on: "relayed".
                report.append(
                    RecipientResult(
                        result.recipient,
                        "delivered" if result.dsn else "relayed",
                        result.status,
                        _diagnostic(result),
                        _mta(result),
                    )
                )
        remaining = list(envelope.relay) + [r for r in envelope.local if r not in envelope.relay]
        if remaining and age > self.config.queue.max_lifetime:
            for recipient in remaining:
                last = envelope.rcpt.get(recipient, {})
                reply = str(last.get("reply") or envelope.last_error or "")
                report.append(
                    RecipientResult(
                        recipient,
                        "failed",
                        "4.4.7",
                        f"delivery time expired; last error: {reply}"[:900],
                        None,
                    )
                )
                envelope.rcpt.setdefault(recipient, {}).update(
                    state="bounced", status="4.4.7", reply="delivery time expired"
                )
                metrics.OUTBOUND_RECIPIENTS.labels("expired", "all").inc()
            envelope.relay.clear()
            envelope.local.clear()
            remaining = []
        elif (
            remaining
            and self.config.queue.delay_warning
            and age > self.config.queue.delay_warning
            and not envelope.delay_warned
        ):
            for recipient in remaining:
                last = envelope.rcpt.get(recipient, {})
                report.append(
                    RecipientResult(
                        recipient,
                        "delayed",
                        str(last.get("status") or "4.0.0"),
                        str(last.get("reply") or envelope.last_error or "")[:900],
                        None,
                    )
                )
            envelope.delay_warned = True
        bouncer = None
        if report:
            for action in {r.action for r in report}:
                metrics.BOUNCE_REPORTS.labels(action).inc(sum(r.action == action for r in report))
            if self.bouncer is not None:
                bouncer = self.bouncer
            elif log.isEnabledFor(logging.INFO):
                for item in report:
                    log.info(
                        "mail.outbound.result",
                        extra={
                            "queue_id": name,
                            "recipient": item.recipient,
                            "action": item.action,
                            "status": item.status,
                            "diagnostic": item.diagnostic,
                        },
                    )
        delivered_to = [
            r
            for r in envelope.recipients
            if r not in envelope.local
            and r not in envelope.relay
            and envelope.rcpt.get(r, {}).get("state") != "bounced"
        ]
        if not remaining:
            # One step in the state writer: the bouncer's notices first (a crash repeats a
            # notice, never loses one), then the file released, durably.
            await self.states.run(
                partial(_release, bouncer, report, message, self.recycler.release)
            )
            metrics.DELIVERY_LATENCY.observe(max(0.0, age))
            status = "delivered" if delivered_to else "bounced"
            await self.record([Outcome(name, status, envelope, "", delivered_to)])
            self.done(name, None, envelope.attempts)
            return
        if ran and not envelope.local:  # local delivery counted its own attempt
            envelope.attempts += 1
            deferred = [r for r in results if r.state == "deferred"]
            if deferred:
                envelope.last_error = f"{deferred[0].recipient}: {deferred[0].reply}"[:900]
        target = self.layout.q("deferred") / name
        if bouncer is not None:
            await loop.run_in_executor(self.executor, bouncer.report, envelope, message.raw, report)
        await self.states.run(partial(_rewrite, message.path, target, envelope, len(message.raw)))
        await self.record([Outcome(name, "deferred", envelope, envelope.last_error, delivered_to)])
        self.done(name, target, envelope.attempts)


def _diagnostic(result: RcptResult) -> str:
    """RFC 3464 §2.3.6: ``smtp; 550 5.1.1 ...`` for a server's reply, else our text."""
    text = result.reply
    if text[:3].isdigit():
        return f"smtp; {text}"
    return text


def _mta(result: RcptResult) -> str | None:
    host = result.host.partition("[")[0]
    return host or None


def _read_within(path: Path, budget: int | None) -> tuple[int, tuple[Envelope, bytes] | None]:
    """The file's size, and its contents if twice its size fits ``budget`` (None: any)."""
    size = os.stat(path).st_size
    if budget is not None and 2 * size > budget:
        return size, None
    return size, _read(path)


def _read(path: Path) -> tuple[Envelope, bytes]:
    envelope, raw = read_queue_file(str(path))
    verify_message(path, envelope, raw)
    return envelope, raw


def _rewrite(path: Path, target: Path, envelope: Envelope, length: int) -> set[str]:
    rewrite(path, target, envelope, length)  # fsyncs the file and its directories itself
    return set()


def _release(
    bouncer: Bouncer | None,
    report: list[RecipientResult],
    message: Message,
    release: Callable[[str, int], None],
) -> set[str]:
    """State-writer step of a finished message: notices, then the queue file released (to
    ``free/`` for reuse); its directory is fsynced with the rest of the batch."""
    if bouncer is not None:
        bouncer.report(message.envelope, message.raw, report)
    release(str(message.path), len(message.raw))
    return {str(message.path.parent)}


class StateWriter:
    """Group commit of per-recipient state (the outbound side's one writer of queue files).

    Each step (a function run in ``executor``) changes queue files and returns the
    directories whose entries it changed; the steps gathered while a batch is written run in
    the next batch, which then fsyncs each directory once: many connections' records share
    one flush, and each caller's ``await`` returns only once its own step is on disk.
    """

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._steps: list[tuple[Callable[[], set[str]], asyncio.Future[None]]] = []
        self._running = False

    async def run(self, step: Callable[[], set[str]]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._steps.append((step, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._steps:
                steps, self._steps = self._steps, []
                try:
                    errors = await loop.run_in_executor(
                        self.executor, _write_batch, [step for step, _ in steps]
                    )
                except BaseException as exc:  # the executor is gone (stopping)
                    errors = [exc] * len(steps)
                metrics.OUTBOUND_STATE_BATCHES.inc()
                for (_, future), error in zip(steps, errors, strict=True):
                    if future.done():
                        continue
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
        finally:
            self._running = False


def _write_batch(steps: list[Callable[[], set[str]]]) -> list[BaseException | None]:
    """The state writer's thread: every step, then one fsync per directory touched."""
    errors: list[BaseException | None] = []
    directories: set[str] = set()
    for step in steps:
        try:
            directories |= step()
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
    for directory in sorted(directories):
        try:
            fsync_dir(Path(directory))
        except OSError as exc:
            # Not known to be durable: every step of the batch fails alike.
            return [error or exc for error in errors]
    return errors
