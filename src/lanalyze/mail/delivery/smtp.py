"""The outbound SMTP connection: the asyncio shell around the client core (``smtp/client.py``).

:func:`open_session` walks a destination's (host, address) list (from
:mod:`~lanalyze.mail.delivery.nexthop`) until one greets, says EHLO (HELO for a server that
refuses it), and gets TLS as the policy asks (RFC 3207):

- ``opportunistic``: STARTTLS when offered, the certificate not checked (RFC 7435); a failed
  handshake is retried once in clear with the same address, as Postfix's ``may`` level does;
- ``required`` (the relay host, ``mail.outbound.tls = "required"``, an MTA-STS ``enforce``
  domain, RFC 8461 §5): STARTTLS must be offered and the certificate must verify against
  ``mail.outbound.ca_file`` (or the system's CAs) for the host name; otherwise the host is
  skipped and nothing is sent in clear;
- ``none``: never.

Then AUTH PLAIN (RFC 4954) at the relay host when a login is configured. A :class:`Session`
sends several messages in turn (:meth:`Session.send`), each one transaction: MAIL, RCPT...,
and DATA or BDAT, pipelined when offered (RFC 2920), and returns a result per recipient:
``delivered`` (2xx after the data), ``deferred`` (4xx, or the connection lost before the
final reply), ``bounced`` (5xx). A connection lost mid-transaction leaves its recipients
deferred: they are sent again later (at least once, never skipped).

Trust: the remote server is untrusted: each reply has ``command_timeout`` (the final reply
after the data ``data_timeout``) and the parser's size bounds; its reply text is kept
sanitised (control characters removed) and cut to 500 characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lanalyze.log import RateLimiter, get_logger
from lanalyze.mail.errors import ReplyError, SessionFailed
from lanalyze.mail.smtp.client import ClientCore, Prepared, Replied, Unsendable, prepare

log = get_logger(__name__)
_peer_log = RateLimiter(interval=10.0, burst=5)

TlsMode = Literal["opportunistic", "required", "none"]
READ_SIZE = 65_536


@dataclass(frozen=True)
class SessionOptions:
    hostname: str
    port: int
    tls: TlsMode
    connect_timeout: float
    command_timeout: float
    data_timeout: float
    ca_file: Path | None = None
    auth: tuple[str, str] | None = None  # (user, password) for AUTH PLAIN


@dataclass(frozen=True)
class RcptResult:
    recipient: str
    state: Literal["delivered", "deferred", "bounced"]
    status: str  # RFC 3463
    reply: str  # "550 5.1.1 no such user" or what went wrong
    host: str  # "mx.example.net[192.0.2.1]"
    dsn: bool = True  # the server offered DSN (else a delivery is "relayed", RFC 3464 §2.3.3)


@dataclass
class Outgoing:
    """One transaction: a message (with its prepended header lines) to some recipients."""

    mail_from: str
    recipients: list[str]
    data: bytes
    notify: dict[str, list[str] | None]
    orcpt: dict[str, str | None]
    ret: str | None = None
    envid: str | None = None


_contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}


def tls_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    """One client context per (verify, CA file): building one reads the CA store."""
    key = (verify, str(ca_file) if ca_file else None)
    context = _contexts.get(key)
    if context is None:
        if verify:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _contexts[key] = context
    return context


class Session:
    """One open SMTP connection, ready for transactions."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        core: ClientCore,
        options: SessionOptions,
        host: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.core = core
        self.options = options
        self.host = host  # "name[address]"
        self.tls = False
        self.usable = True
        self.sent = 0

    @property
    def alive(self) -> bool:
        """Still usable after waiting idle: the server has not closed the connection."""
        return self.usable and not self.reader.at_eof() and not self.writer.is_closing()

    async def _replies(self, count: int, timeout: float) -> list[Replied]:
        events: list[Replied] = []
        while len(events) < count:
            try:
                # asyncio.timeout, not wait_for: no task per read (a few per message).
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                self.usable = False
                raise SessionFailed(f"timeout waiting for a reply from {self.host}") from None
            except (OSError, ssl.SSLError) as exc:
                self.usable = False
                raise SessionFailed(f"connection to {self.host} failed: {exc}") from None
            if not data:
                self.usable = False
                raise SessionFailed(f"{self.host} closed the connection")
            try:
                events.extend(self.core.receive(data))
            except ReplyError as exc:
                self.usable = False
                if _peer_log.allow(self.host):
                    log.warning(
                        "mail.outbound.bad_reply", extra={"host": self.host, "error": str(exc)}
                    )
                raise SessionFailed(f"{self.host}: {exc}") from None
        return events

    async def _write(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(self.options.data_timeout):
                await self.writer.drain()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.usable = False
            raise SessionFailed(f"writing to {self.host} failed: {exc!r}") from None

    async def command(self, data: bytes) -> Replied:
        await self._write(data)
        return (await self._replies(1, self.options.command_timeout))[0]

    async def send(self, out: Outgoing) -> list[RcptResult]:
        """One transaction; never raises for the server's or the network's faults."""
        results: dict[str, RcptResult] = {}

        def settle(recipients: list[str], state: str, status: str, text: str) -> None:
            for recipient in recipients:
                if recipient not in results:
                    results[recipient] = RcptResult(
                        recipient,
                        state,  # type: ignore[arg-type]
                        status,
                        text,
                        self.host,
                        self.core.ext.dsn,
                    )

        prepared = prepare(
            out.data, out.mail_from, out.recipients, self.core.ext, ret=out.ret, envid=out.envid
        )
        if isinstance(prepared, Unsendable):
            settle(out.recipients, "bounced", prepared.status, prepared.text)
            return [results[r] for r in out.recipients]
        self.sent += 1
        try:
            await self._transaction(out, prepared, results, settle)
        except SessionFailed as exc:
            settle(out.recipients, "deferred", exc.status, exc.text)
        return [results[r] for r in out.recipients]

    async def _transaction(self, out: Outgoing, prepared: Prepared, results, settle) -> None:  # type: ignore[no-untyped-def]
        core = self.core
        chunking = core.ext.chunking
        pipelined = core.ext.pipelining
        commands = [core.mail(out.mail_from, prepared.mail_params)]
        for recipient in out.recipients:
            commands.append(
                core.rcpt(recipient, out.notify.get(recipient), out.orcpt.get(recipient))
            )
        if pipelined:
            if not chunking:
                commands.append(core.data())
            await self._write(b"".join(commands))
            replies = await self._replies(len(commands), self.options.command_timeout)
        else:
            replies = []
            for command in commands:
                replies.append(await self.command(command))
                if replies[0].reply.code >= 400:
                    break  # MAIL refused: no RCPT
        mail = replies[0].reply
        accepted: list[str] = []
        for event in replies[1:]:
            if event.tag != "rcpt":
                continue
            if event.reply.positive:
                accepted.append(event.arg)
            else:
                state = "bounced" if event.reply.permanent else "deferred"
                settle([event.arg], state, event.reply.status, event.reply.text)
        data_reply = next((e.reply for e in replies if e.tag == "data"), None)
        if not mail.positive:
            state = "bounced" if mail.permanent else "deferred"
            settle(out.recipients, state, mail.status, mail.text)
            if data_reply is not None and data_reply.code == 354:
                await self._replies_after(core.body(b""))
            await self._reset()
            return
        if not accepted:
            if data_reply is not None and data_reply.code == 354:
                await self._replies_after(core.body(b""))  # RFC 2920 §3.1: end the empty data
            await self._reset()
            return
        if chunking:
            final = (await self._replies_after(core.bdat(prepared.data))).reply
        else:
            if data_reply is None:
                data_reply = (await self.command(core.data())).reply
            if data_reply.code != 354:
                state = "bounced" if data_reply.permanent else "deferred"
                settle(accepted, state, data_reply.status, data_reply.text)
                await self._reset()
                return
            final = (await self._replies_after(core.body(prepared.data))).reply
        if final.positive:
            settle(accepted, "delivered", final.status, final.text)
        else:
            settle(accepted, "bounced" if final.permanent else "deferred", final.status, final.text)

    async def _replies_after(self, data: bytes) -> Replied:
        await self._write(data)
        return (await self._replies(1, self.options.data_timeout))[0]

    async def _reset(self) -> None:
        with contextlib.suppress(SessionFailed):
            reply = await self.command(self.core.rset())
            if not reply.reply.positive:
                self.usable = False

    async def close(self) -> None:
        if self.usable:
            with contextlib.suppress(SessionFailed):
                await asyncio.wait_for(self.command(self.core.quit()), 5.0)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 5.0)


async def _connect(name: str, address: str, options: SessionOptions, tls: TlsMode) -> Session:
    host = f"{name}[{address}]"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, options.port, limit=READ_SIZE),
            options.connect_timeout,
        )
    except (OSError, TimeoutError) as exc:
        raise SessionFailed(f"connect to {host}:{options.port}: {exc!r}") from None
    core = ClientCore(options.hostname)
    session = Session(reader, writer, core, options, host)
    try:
        greeting = (await session._replies(1, options.connect_timeout))[0].reply
        if greeting.code != 220:
            raise SessionFailed(
                f"{host} greeted with {greeting.text}", greeting.status, greeting.permanent
            )
        ehlo = await session.command(core.ehlo())
        if not ehlo.reply.positive:
            helo = await session.command(core.helo())
            if not helo.reply.positive:
                raise SessionFailed(f"{host} refused HELO: {helo.reply.text}", helo.reply.status)
        if tls != "none" and (core.ext.starttls or tls == "required"):
            if not core.ext.starttls:
                raise SessionFailed(f"{host} does not offer STARTTLS (TLS required)", "4.7.5")
            reply = await session.command(core.starttls())
            if reply.reply.code != 220:
                raise SessionFailed(f"{host} refused STARTTLS: {reply.reply.text}", "4.7.5")
            context = tls_context(tls == "required", options.ca_file)
            try:
                await asyncio.wait_for(
                    writer.start_tls(context, server_hostname=name), options.connect_timeout
                )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                session.usable = False
                raise SessionFailed(f"TLS with {host} failed: {exc}", "4.7.5") from None
            session.tls = True
            core.tls_started()
            ehlo = await session.command(core.ehlo())
            if not ehlo.reply.positive:
                raise SessionFailed(f"{host} refused EHLO after TLS: {ehlo.reply.text}")
        if options.auth is not None:
            if "PLAIN" not in core.ext.auth:
                raise SessionFailed(f"{host} offers no AUTH PLAIN", "4.7.8")
            reply = await session.command(core.auth_plain(*options.auth))
            if reply.reply.code != 235:
                raise SessionFailed(f"{host} refused our login: {reply.reply.text}", "4.7.8")
    except BaseException:
        session.usable = False
        await session.close()
        raise
    return session


async def open_session(
    hosts: list[tuple[str, str]], options: SessionOptions, errors: list[str]
) -> Session | None:
    """A session with the first host that works, or None (``errors`` says why per host)."""
    for name, address in hosts:
        try:
            return await _connect(name, address, options, options.tls)
        except SessionFailed as exc:
            if options.tls == "opportunistic" and exc.status == "4.7.5" and "TLS with" in exc.text:
                try:  # RFC 7435: a broken handshake is no reason not to deliver in clear
                    return await _connect(name, address, options, "none")
                except SessionFailed as again:
                    exc = again
            errors.append(exc.text)
            if _peer_log.allow(name):
                log.info("mail.outbound.host_failed", extra={"host": name, "error": exc.text})
    return None
