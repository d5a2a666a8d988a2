"""The SMTP server dialogue as a sans-IO state machine: bytes in, replies and events out.

Implements RFC 5321 (§4.1 commands, §4.2 replies, §4.5.2 transparency, §4.5.3.1 line
limits), RFC 3463 / 2034 enhanced status codes, RFC 2920 PIPELINING, RFC 1870 SIZE,
RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3207 STARTTLS, RFC 4954 AUTH (PLAIN per RFC 4616,
LOGIN), RFC 3030 CHUNKING (BDAT), RFC 3461 DSN (NOTIFY, ORCPT, RET, ENVID; parsed by
:mod:`.dsn`, handed on in :class:`MessageBegin`).

No sockets, no asyncio, no files: :meth:`SMTPSession.receive` takes the peer's bytes and
returns :class:`Event` objects; the replies to send accumulate in :meth:`data_to_send`.
Where the shell must do I/O before the dialogue can go on (end of a message: spool, check,
fsync; AUTH: an argon2 verification in a thread; STARTTLS) the session pauses, keeps
pipelined input (bounded), and resumes when the shell reports the outcome
(:meth:`message_done`, :meth:`auth_done`, :meth:`tls_started`).

Trust: every byte comes from an unauthenticated peer. Lines end with CRLF only: a bare CR
or bare LF anywhere, in commands or in DATA, ends the session with ``521 5.5.2`` (Postfix's
``smtpd_forbid_bare_newline = yes``), so no SMTP-smuggling variant (``\\n.\\n``,
``\\r.\\r``, ``\\r\\n.\\r\\r\\n`` ...) can end DATA early or start a second message. Input
buffering is bounded by the line limit (1000 octets) plus one read; message bytes leave as
:class:`MessageChunk` events as they arrive. Replies are bounded too: after
``MAX_PENDING_REPLIES`` unsent replies the session stops parsing (:attr:`SMTPSession.held`)
until the shell has taken them and calls :meth:`SMTPSession.receive` again, so a client that
pipelines commands and never reads its replies cannot make one read cost megabytes (RFC 2920
§3.1 lets a server stop reading while its replies are not read). Lines are parsed at an offset
into the read, not by re-slicing the rest of the buffer per line. Peer faults become replies
(and a :class:`Rejection` event with a reason word), never exceptions; an exception out of this
module is our bug.

States: the dialogue's phases are :class:`State` values and ``_TRANSITIONS`` is the table of
the allowed moves between them (h11's approach); the handlers parse, decide and call
:meth:`SMTPSession._enter`, which refuses a move the table does not hold.

Why hand-written instead of aiosmtpd: aiosmtpd is an asyncio ``StreamReader`` loop (not
sans-IO, so it cannot be fuzzed or driven without sockets), holds each whole message in
memory, lacks CHUNKING, and its per-line coroutine overhead keeps it below Postfix's
throughput on this project's benchmark (issue 5 measured 730-990 msg/s against Postfix's
1,200-1,300). Nothing of aiosmtpd is reused; address parsing is in :mod:`.address`.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from lanalyze.mail.errors import AddressError
from lanalyze.mail.smtp.address import Path, parse_params, parse_path, split_path
from lanalyze.mail.smtp.dsn import mail_dsn, rcpt_dsn

MAX_LINE = 1000  # octets including CRLF, RFC 5321 §4.5.3.1.6
MAX_PAUSED_INPUT = 64 * 1024  # pipelined bytes kept while the shell works; more = pause reading
# Replies produced by one read before parsing stops until the shell has sent them: the largest
# reply (EHLO, or a 5xx quoting a 1000-octet line) stays under 1 KiB, so this bounds a read's
# replies to tens of KiB however many commands it pipelines.
MAX_PENDING_REPLIES = 64


class State(Enum):
    COMMAND = "command"  # reading command lines
    DATA = "data"  # reading message lines up to <CRLF>.<CRLF>
    BDAT = "bdat"  # reading a BDAT chunk's octets
    AUTH = "auth"  # reading an AUTH response line (RFC 4954 §4)
    PAUSED = "paused"  # the shell works (message end, AUTH check, STARTTLS); input is kept
    CLOSED = "closed"  # nothing more is read or answered


# The allowed moves, in one place. COMMAND -> PAUSED: AUTH with an initial response, STARTTLS;
# DATA/BDAT -> PAUSED: the message is complete; AUTH -> PAUSED: the last response line;
# PAUSED -> COMMAND: the shell's answer (message_done, auth_done, tls_started). Every state
# may close.
_TRANSITIONS: dict[State, frozenset[State]] = {
    State.COMMAND: frozenset({State.DATA, State.BDAT, State.AUTH, State.PAUSED, State.CLOSED}),
    State.DATA: frozenset({State.COMMAND, State.PAUSED, State.CLOSED}),
    State.BDAT: frozenset({State.COMMAND, State.PAUSED, State.CLOSED}),
    State.AUTH: frozenset({State.COMMAND, State.PAUSED, State.CLOSED}),
    State.PAUSED: frozenset({State.COMMAND, State.CLOSED}),
    State.CLOSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str  # "5.7.1 Relay access denied"; several lines separated by "\n"
    # Why a refusing reply refuses (a word of REASONS), for replies made outside this module
    # (the recipient policy, the shell's message checks): the core reports it in its
    # Rejection event instead of anyone reading it back out of the text.
    reason: str = field(default="", compare=False)
    # The bytes on the wire, built once with the reply: a reply is sent once or, for the
    # module's constants, thousands of times a second.
    wire: bytes = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        lines = self.text.split("\n")
        out = [f"{self.code}-{line}\r\n" for line in lines[:-1]]
        out.append(f"{self.code} {lines[-1]}\r\n")
        object.__setattr__(self, "wire", "".join(out).encode("utf-8", "surrogateescape"))

    def encode(self) -> bytes:
        return self.wire


def _const(code: int, text: str) -> Reply:
    """A fixed reply (kept as a name so the hot paths compare by identity)."""
    return Reply(code, text)


R_MAIL_OK = _const(250, "2.1.0 Ok")
R_RCPT_OK = _const(250, "2.1.5 Ok")
R_OK = _const(250, "2.0.0 Ok")
R_GO_AHEAD = _const(354, "End data with <CR><LF>.<CR><LF>")
R_BYE = _const(221, "2.0.0 Bye")


class Event:
    """Something the shell must act on."""

    __slots__ = ()


@dataclass(slots=True)
class MessageBegin(Event):
    """DATA or the first BDAT was accepted: open a spool for this envelope."""

    mail_from: Path
    recipients: list[Path]
    params: dict[str, str]
    # RFC 3461, decoded: RET, ENVID, and recipient address -> {"notify": [...], "orcpt": ...}
    ret: str | None = None
    envid: str | None = None
    dsn: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class MessageChunk(Event):
    """Message bytes (dot-stuffing undone, CRLF line ends) to append to the spool."""

    data: bytes


@dataclass(slots=True)
class MessageEnd(Event):
    """The message is complete. The session pauses until :meth:`SMTPSession.message_done`."""

    size: int


@dataclass(slots=True)
class MessageAbort(Event):
    """The message will not be accepted (too big, bad line, peer gone): drop its spool."""

    reason: str


@dataclass(slots=True)
class AuthAttempt(Event):
    """Verify these credentials; the session pauses until :meth:`SMTPSession.auth_done`."""

    mechanism: str
    username: str
    password: str


@dataclass(slots=True)
class StartTLS(Event):
    """Upgrade the transport now; pending plaintext was discarded (RFC 3207 §4.2)."""


@dataclass(slots=True)
class Close(Event):
    """Send what is pending, then close the connection."""

    reason: str


@dataclass(slots=True)
class Rejection(Event):
    """A reply of 400 or more refused something: what, why, and the envelope at that moment.

    The shell counts it and hands it to the rejection log (:mod:`lanalyze.mail.rejections`);
    nobody reads reasons out of reply text. Only refusals make one: accepted mail allocates
    nothing here.
    """

    command: str  # the refused command's verb ("RCPT", "DATA" ...; "" for the connection)
    reply: Reply
    reason: str  # a word of REASONS
    mail_from: str | None = None  # the envelope sender (MAIL's own address when MAIL is refused)
    recipient: str = ""  # RCPT's address; a refused message's recipients, comma-separated


# Every reason word a Rejection (and the rejections counter on /metrics) may carry: protocol
# noise (counted, not recorded in the message index) and the refusals a sysadmin cares about
# (mail/rejections.py records these).
NOISE_REASONS = frozenset(
    {"syntax", "unknown_command", "out_of_order", "line_too_long", "auth_refused", "auth_cancelled"}
)
REFUSAL_REASONS = frozenset(
    {
        "unknown_user",
        "relay_denied",
        "recipient_rejected",
        "sender_not_allowed",
        "header_from_not_allowed",
        "too_big",
        "too_many_recipients",
        "too_many_errors",
        "connection_limit",
        "flood",
        "bare_newline",
        "auth_required",
        "auth_failed",
        "auth_throttled",
        "timeout",
        "policy_reject",
        "local_error",
        "message_rejected",
        "other",
    }
)
REASONS = NOISE_REASONS | REFUSAL_REASONS


class Policy(Protocol):
    """Who may send what where: pure decisions, no I/O (:class:`lanalyze.mail.users.Directory`).

    A refusal is a :class:`Reply` carrying its ``reason`` word (``unknown_user``,
    ``relay_denied``, ``sender_not_allowed``); without one the core says ``recipient_rejected``
    or ``sender_not_allowed``.
    """

    def check_sender(self, session: SMTPSession, path: Path) -> Reply | None: ...

    def check_recipient(self, session: SMTPSession, path: Path) -> Reply | None: ...


class AcceptAll:
    def check_sender(self, session: SMTPSession, path: Path) -> Reply | None:
        return None

    def check_recipient(self, session: SMTPSession, path: Path) -> Reply | None:
        return None


@dataclass
class Limits:
    max_message_size: int = 10_240_000
    max_recipients: int = 1000
    hard_error_limit: int = 20


@dataclass
class SessionOptions:
    hostname: str = "localhost"
    tls_available: bool = False  # a certificate is configured: offer STARTTLS
    tls_active: bool = False  # implicit TLS listener (port 465 style)
    auth_available: bool = False  # submission users exist: offer AUTH once TLS is up
    auth_required: bool = False  # submission listener: AUTH before MAIL
    limits: Limits = field(default_factory=Limits)


R_BARE_NEWLINE = _const(521, "5.5.2 Error: bare CR or LF received")
R_LINE_TOO_LONG = _const(500, "5.5.2 Error: line too long")
R_TOO_MANY_ERRORS = _const(421, "4.7.0 Error: too many errors")
R_NEED_HELO = _const(503, "5.5.1 Error: send HELO/EHLO first")
R_TOO_BIG = _const(552, "5.3.4 Error: message too big")
R_AUTH_FAILED = _const(535, "5.7.8 Error: authentication failed")
R_TOO_MANY_RECIPIENTS = _const(452, "4.5.3 Error: too many recipients")
_HANDLED = b"\0handled"  # _line(): the bytes were consumed and already answered
COMMANDS = frozenset(
    [
        "HELO",
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "BDAT",
        "RSET",
        "NOOP",
        "QUIT",
        "HELP",
        "VRFY",
        "STARTTLS",
        "AUTH",
    ]
)


class SMTPSession:
    """One SMTP connection's dialogue. Feed bytes with :meth:`receive`."""

    def __init__(
        self, options: SessionOptions, policy: Policy | None = None, client_ip: str = ""
    ) -> None:
        self.options = options
        self.limits = options.limits
        self.policy: Policy = policy or AcceptAll()
        self.client_ip = client_ip
        self.state = State.COMMAND
        self.tls = options.tls_active
        self.esmtp = False
        self.helo: str | None = None
        self.user: str | None = None
        self.mail_from: Path | None = None
        self.mail_params: dict[str, str] = {}
        self.recipients: list[Path] = []
        self.ret: str | None = None  # RFC 3461 RET and ENVID of this transaction's MAIL
        self.envid: str | None = None
        self.dsn: dict[str, dict[str, Any]] = {}  # recipient -> NOTIFY/ORCPT given with RCPT
        self.errors = 0  # every refusing reply (the shell's rejection hook compares it)
        # Those that count toward hard_error_limit: the client's protocol errors, not our
        # refusals of whole messages (a DMARC reject of forwarded mail is not the relay's
        # fault), as Postfix's smtpd_hard_error_limit counts.
        self.protocol_errors = 0
        self.commands: Counter[str] = Counter()  # flushed to /metrics by the shell
        self.rejections: Counter[str] = Counter()
        # Unparsed input is self._buf[self._pos:]: parsing moves the offset, and the consumed
        # prefix is dropped once per read (re-slicing the rest per line was quadratic).
        self._buf = b""
        self._pos = 0
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._verb = ""  # the command being answered, for Rejection events
        self._skip_line = False  # inside an over-long line, dropping until its CRLF
        self._message_size = 0
        self._message_failed: Reply | None = None
        self._bdat_remaining = 0
        self._bdat_last = False
        self._bdat_active = False  # a BDAT transfer has begun for this transaction
        self._auth_pending: tuple[str, str] | None = None  # (mechanism, step)
        self._auth_user = ""
        self._held = False  # parsing stopped at MAX_PENDING_REPLIES, input left

    # ---------------------------------------------------------------- the shell's interface

    def greeting(self) -> bytes:
        return _greeting(self.options.hostname)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def paused(self) -> bool:
        return self.state is State.PAUSED

    @property
    def input_backlog(self) -> int:
        return len(self._buf) - self._pos

    @property
    def held(self) -> bool:
        """Parsing stopped at ``MAX_PENDING_REPLIES`` with input left: once the replies are
        sent (and the peer reads them), call ``receive(b"")`` to go on."""
        return self._held

    @property
    def in_message(self) -> bool:
        return self.state in (State.DATA, State.BDAT)

    def receive(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if data:
            # One copy per read: the unparsed rest (at most a line or a held read) and the
            # new bytes; when everything was parsed, the read itself is the buffer.
            self._buf = self._buf[self._pos :] + data if self._pos < len(self._buf) else data
            self._pos = 0
        if self.state is State.PAUSED:
            if self.input_backlog > MAX_PAUSED_INPUT:
                # A client that pipelines this much while we wait is not a real client.
                self._close(Reply(421, "4.7.0 Error: too much pipelined input"), "flood")
        else:
            self._run()
        return self._take_events()

    def message_done(self, reply: Reply) -> list[Event]:
        """The shell's answer to :class:`MessageEnd`: ``250 ... queued as ID`` or a rejection."""
        if self.state is not State.PAUSED:
            return self._take_events()  # closed meanwhile: nobody to answer
        self._enter(State.COMMAND)
        self._bdat_active = False  # the message is complete: nothing left to abort
        # Before the reset: a refusal's Rejection names this transaction's envelope.
        self._reply(reply, "message_rejected", protocol_error=False)
        self._reset_transaction()
        self._run()
        return self._take_events()

    def auth_done(self, user: str | None, refusal: Reply | None = None) -> list[Event]:
        """The shell's answer to :class:`AuthAttempt`: the user, or None with the refusing
        reply (default ``535 5.7.8``; the shell's throttle answers ``454 4.7.0`` unchecked)."""
        if self.state is not State.PAUSED:
            return self._take_events()
        self._enter(State.COMMAND)
        if user is None:
            self._reply(refusal or R_AUTH_FAILED, "auth_failed")
        else:
            self.user = user
            self._reply(Reply(235, "2.7.0 Authentication successful"))
        self._run()
        return self._take_events()

    def tls_started(self) -> list[Event]:
        """RFC 3207 §4.2: forget everything learnt before TLS.

        Plaintext that followed STARTTLS was dropped when STARTTLS was read; the shell stops
        reading at :class:`StartTLS`, so what was fed since is already TLS application data
        (a fast client's EHLO) and is processed now.
        """
        self.tls = True
        self.helo = None
        self.esmtp = False
        if self.state is State.CLOSED:
            return self._take_events()
        self._reset_transaction()
        if self.state is State.PAUSED:
            self._enter(State.COMMAND)
        self._run()
        return self._take_events()

    def connection_lost(self) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if self.in_message:
            self._events.append(MessageAbort("connection lost"))
        self._enter(State.CLOSED)
        return self._take_events()

    # ---------------------------------------------------------------- internals

    def _take_events(self) -> list[Event]:
        events = self._events
        self._events = []
        return events

    def _enter(self, state: State) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise AssertionError(f"SMTP state {self.state.name} -> {state.name}")  # our bug
        self.state = state

    def _reply(
        self,
        reply: Reply,
        reason: str | None = None,
        path: Path | None = None,
        *,
        protocol_error: bool = True,
    ) -> None:
        """Queue ``reply``; a refusal (400 or more) also counts as an error with ``reason``
        (the reply's own reason first) and becomes a :class:`Rejection` naming ``path``.
        ``protocol_error=False`` for our refusals of whole messages, which do not count
        toward ``hard_error_limit``."""
        self._out.append(reply.wire)
        if reply.code >= 400:
            self._refused(reply, reply.reason or reason or "other", path)
            if protocol_error:
                self.protocol_errors += 1
            if (
                self.protocol_errors >= self.limits.hard_error_limit
                and self.state is not State.CLOSED
                and reply.code != 421
            ):
                self._close(R_TOO_MANY_ERRORS, "too_many_errors")

    def _refused(self, reply: Reply, reason: str, path: Path | None = None) -> None:
        self.errors += 1
        self.rejections[reason] += 1
        verb = self._verb
        mail_from = self.mail_from.address if self.mail_from is not None else None
        recipient = ""
        if path is not None:
            if verb == "MAIL":
                mail_from = path.address
            else:
                recipient = path.address
        elif verb in ("DATA", "BDAT") and self.recipients:
            recipient = ", ".join(p.address for p in self.recipients)
        self._events.append(Rejection(verb, reply, reason, mail_from, recipient))

    def _close(self, reply: Reply, reason: str) -> None:
        """Answer ``reply`` (421, 521) and end the session; not counted as an error."""
        self._out.append(reply.wire)
        self.rejections[reason] += 1
        mail_from = self.mail_from.address if self.mail_from is not None else None
        self._events.append(Rejection(self._verb, reply, reason, mail_from))
        if self.in_message or self._bdat_active:
            self._events.append(MessageAbort(reason))
        self._enter(State.CLOSED)
        self._drop_input()
        self._events.append(Close(reason))

    def _drop_input(self) -> None:
        self._buf = b""
        self._pos = 0

    def _reset_transaction(self) -> None:
        self.mail_from = None
        self.mail_params = {}
        self.recipients = []
        self.ret = self.envid = None
        self.dsn = {}
        self._message_size = 0
        self._message_failed = None
        self._bdat_active = False
        self._bdat_remaining = 0
        self._bdat_last = False

    def _run(self) -> None:
        out = self._out
        while (
            self._pos < len(self._buf)
            and self.state is not State.PAUSED
            and self.state is not State.CLOSED
        ):
            if len(out) >= MAX_PENDING_REPLIES:
                self._held = True
                return
            if self._skip_line:
                if not self._skip():
                    break
                if self.state is not State.DATA:  # in DATA the message has failed already
                    self._reply(R_LINE_TOO_LONG, "line_too_long")
            elif self.state is State.DATA:
                if not self._data():
                    break
            elif self.state is State.BDAT:
                self._bdat_chunk()
            else:
                line = self._line()
                if line is None:
                    break
                if line is _HANDLED:
                    continue
                if self.state is State.AUTH:
                    self._auth_line(line)
                else:
                    self._command(line)
        self._held = False

    def _skip(self) -> bool:
        """Inside an over-long line (command or DATA): drop input up to its CRLF. True when
        the line has ended; False when more input is needed or the session closed."""
        buf, pos = self._buf, self._pos
        end = buf.find(b"\n", pos)
        if end < 0:
            last = len(buf) - 1
            if buf.find(b"\r", pos, last) >= 0:
                self._close(R_BARE_NEWLINE, "bare_newline")
            else:
                # A CR at the very end may be the first half of the CRLF: keep it.
                self._pos = last if buf[last] == 13 else len(buf)
            return False
        if end == pos or buf[end - 1] != 13 or buf.find(b"\r", pos, end - 1) >= 0:
            self._close(R_BARE_NEWLINE, "bare_newline")
            return False
        self._pos = end + 1
        self._skip_line = False
        return True

    def _line(self) -> bytes | None:
        """The next complete command line without CRLF, or None when more bytes are needed."""
        buf, pos = self._buf, self._pos
        end = buf.find(b"\n", pos)
        if end < 0:
            last = len(buf) - 1
            if buf.find(b"\r", pos, last) >= 0:
                self._close(R_BARE_NEWLINE, "bare_newline")
            elif len(buf) - pos >= MAX_LINE:
                self._skip_line = True
                self._pos = last if buf[last] == 13 else len(buf)
            return None
        if end == pos or buf[end - 1] != 13 or buf.find(b"\r", pos, end - 1) >= 0:
            self._close(R_BARE_NEWLINE, "bare_newline")
            return None
        self._pos = end + 1
        if end + 1 - pos > MAX_LINE:
            self._reply(R_LINE_TOO_LONG, "line_too_long")
            return _HANDLED
        return buf[pos : end - 1]

    # ---------------------------------------------------------------- commands

    def _command(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "surrogateescape")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb not in COMMANDS:
            self._verb = ""
            self.commands["unknown"] += 1
            if not verb:
                self._reply(Reply(500, "5.5.2 Error: bad syntax"), "syntax")
            else:
                self._reply(Reply(502, "5.5.2 Error: command not recognized"), "unknown_command")
            return
        self.commands[verb] += 1
        self._verb = verb
        _HANDLERS[verb](self, arg.strip(" "))

    def _cmd_helo(self, arg: str) -> None:
        if not arg:
            self._reply(Reply(501, "5.5.4 Syntax: HELO hostname"), "syntax")
            return
        self._reset_transaction()
        self.helo = arg
        self.esmtp = False
        self._reply(Reply(250, self.options.hostname))

    def _cmd_ehlo(self, arg: str) -> None:
        if not arg:
            self._reply(Reply(501, "5.5.4 Syntax: EHLO hostname"), "syntax")
            return
        self._reset_transaction()
        self.helo = arg
        self.esmtp = True
        self._reply(
            _ehlo_reply(
                self.options.hostname,
                self.limits.max_message_size,
                self.options.tls_available and not self.tls,
                self._auth_offered(),
            )
        )

    def _auth_offered(self) -> bool:
        return self.options.auth_available and self.tls and self.user is None

    def _cmd_mail(self, arg: str) -> None:
        if self.helo is None:
            self._reply(R_NEED_HELO, "out_of_order")
            return
        if self.mail_from is not None:
            self._reply(Reply(503, "5.5.1 Error: nested MAIL command"), "out_of_order")
            return
        if self.options.auth_required and self.user is None:
            self._reply(Reply(530, "5.7.0 Authentication required"), "auth_required")
            return
        if arg[:5].upper() != "FROM:":
            self._reply(Reply(501, "5.5.4 Syntax: MAIL FROM:<address>"), "syntax")
            return
        try:
            raw, rest = split_path(arg[5:])
            path = parse_path(raw, allow_null=True)
            params = parse_params(rest)
        except AddressError as exc:
            self._reply(Reply(501, f"5.1.7 Bad sender address syntax: {exc}"), "syntax")
            return
        problem = self._check_mail_params(params)
        if problem is not None:
            self._reply(*problem, path)
            return
        try:
            ret, envid = mail_dsn(params) if "RET" in params or "ENVID" in params else (None, None)
        except AddressError as exc:
            self._reply(Reply(501, f"5.5.4 Invalid DSN parameter: {exc}"), "syntax", path)
            return
        rejected = self.policy.check_sender(self, path)
        if rejected is not None:
            self._reply(rejected, "sender_not_allowed", path)
            return
        self.mail_from = path
        self.mail_params = params
        self.ret, self.envid = ret, envid
        self._reply(R_MAIL_OK)

    def _check_mail_params(self, params: dict[str, str]) -> tuple[Reply, str] | None:
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit():
                    return Reply(501, "5.5.4 Bad SIZE parameter"), "syntax"
                if int(value) > self.limits.max_message_size:
                    return R_TOO_BIG, "too_big"
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return Reply(501, "5.5.4 Unsupported BODY parameter"), "syntax"
            elif key in ("SMTPUTF8", "AUTH", "RET", "ENVID"):
                continue  # AUTH= is accepted and ignored; RET and ENVID are parsed by the caller
            else:
                return Reply(555, f"5.5.4 Unsupported option: {key[:40]}"), "syntax"
        return None

    def _cmd_rcpt(self, arg: str) -> None:
        if self.mail_from is None:
            self._reply(Reply(503, "5.5.1 Error: need MAIL command"), "out_of_order")
            return
        if self._bdat_active:
            self._reply(Reply(503, "5.5.1 Error: BDAT in progress"), "out_of_order")
            return
        if arg[:3].upper() != "TO:":
            self._reply(Reply(501, "5.5.4 Syntax: RCPT TO:<address>"), "syntax")
            return
        try:
            raw, rest = split_path(arg[3:])
            path = parse_path(raw, allow_null=False)
            params = parse_params(rest)
        except AddressError as exc:
            self._reply(Reply(501, f"5.1.3 Bad recipient address syntax: {exc}"), "syntax")
            return
        if any(key not in ("NOTIFY", "ORCPT") for key in params):
            self._reply(Reply(555, "5.5.4 Unsupported RCPT option"), "syntax")
            return
        try:
            dsn = rcpt_dsn(params) if params else None
        except AddressError as exc:
            self._reply(Reply(501, f"5.5.4 Invalid DSN parameter: {exc}"), "syntax", path)
            return
        if len(self.recipients) >= self.limits.max_recipients:
            self._reply(R_TOO_MANY_RECIPIENTS, "too_many_recipients", path)
            return
        rejected = self.policy.check_recipient(self, path)
        if rejected is not None:
            self._reply(rejected, "recipient_rejected", path)
            return
        self.recipients.append(path)
        if dsn is not None:
            self.dsn[path.address] = dsn
        self._reply(R_RCPT_OK)

    def _transaction_ready(self) -> bool:
        if self.mail_from is None:
            self._reply(Reply(503, "5.5.1 Error: need MAIL command"), "out_of_order")
            return False
        if not self.recipients:
            self._reply(Reply(503, "5.5.1 Error: need RCPT command"), "out_of_order")
            return False
        return True

    def _cmd_data(self, arg: str) -> None:
        if arg:
            self._reply(Reply(501, "5.5.4 Syntax: DATA"), "syntax")
            return
        if self._bdat_active:
            self._reply(Reply(503, "5.5.1 Error: DATA after BDAT"), "out_of_order")
            return
        if not self._transaction_ready():
            return
        assert self.mail_from is not None
        self._events.append(self._begin(self.mail_from))
        self._reply(R_GO_AHEAD)
        self._enter(State.DATA)

    def _begin(self, mail_from: Path) -> MessageBegin:
        return MessageBegin(
            mail_from,
            list(self.recipients),
            self.mail_params,
            self.ret,
            self.envid,
            dict(self.dsn) if self.dsn else {},
        )

    def _cmd_bdat(self, arg: str) -> None:
        parts = arg.split()
        if not parts or not parts[0].isdigit() or len(parts) > 2 or len(parts[0]) > 12:
            self._reply(Reply(501, "5.5.4 Syntax: BDAT size [LAST]"), "syntax")
            # Without a size the chunk cannot be skipped: the stream is lost.
            self._close(Reply(421, "4.5.4 Error: cannot resynchronise"), "syntax")
            return
        if len(parts) == 2 and parts[1].upper() != "LAST":
            self._reply(Reply(501, "5.5.4 Syntax: BDAT size [LAST]"), "syntax")
            self._close(Reply(421, "4.5.4 Error: cannot resynchronise"), "syntax")
            return
        self._bdat_remaining = int(parts[0])
        self._bdat_last = len(parts) == 2
        if self.mail_from is None or not self.recipients:
            # RFC 3030 §2: the chunk is still read, then refused.
            self._message_failed = Reply(503, "5.5.1 Error: need MAIL and RCPT before BDAT")
        elif not self._bdat_active:
            self._bdat_active = True
            self._events.append(self._begin(self.mail_from))
        self._enter(State.BDAT)
        if self._bdat_remaining == 0:
            self._bdat_finish()

    def _bdat_chunk(self) -> None:
        pos = self._pos
        take = min(self._bdat_remaining, len(self._buf) - pos)
        self._pos = pos + take
        self._bdat_remaining -= take
        if self._bdat_active and self._message_failed is None:
            self._message_size += take
            if self._message_size > self.limits.max_message_size:
                self._message_failed = R_TOO_BIG
                self._events.append(MessageAbort("too_big"))
            elif take:
                self._events.append(MessageChunk(self._buf[pos : pos + take]))
        if self._bdat_remaining == 0:
            self._bdat_finish()

    def _bdat_finish(self) -> None:
        self._enter(State.COMMAND)
        failed = self._message_failed
        if failed is not None:
            if self._bdat_active or failed is R_TOO_BIG:
                self._bdat_active = False
                self._reply(failed, "too_big" if failed is R_TOO_BIG else "out_of_order")
                self._reset_transaction()
            else:
                self._message_failed = None
                self._reply(failed, "out_of_order")
            return
        if self._bdat_last:
            self._enter(State.PAUSED)
            self._events.append(MessageEnd(self._message_size))
        else:
            self._reply(Reply(250, f"2.0.0 Ok: {self._message_size} octets received"))

    def _data(self) -> bool:
        """Consume DATA bytes; False when more input is needed."""
        buf, pos = self._buf, self._pos
        # The unparsed input always starts at the beginning of a line.
        if buf.startswith(b".\r\n", pos):
            term = pos
        else:
            found = buf.find(b"\r\n.\r\n", pos)
            term = found + 2 if found >= 0 else -1
        if term >= 0:
            body_end, rest = term, term + 3
        else:
            last = buf.rfind(b"\r\n", pos)
            body_end = rest = last + 2 if last >= 0 else pos
            # The incomplete last line: no LF at all, and a CR only as its last octet.
            if buf.find(b"\n", rest) >= 0 or buf.find(b"\r", rest, len(buf) - 1) >= 0:
                self._close(R_BARE_NEWLINE, "bare_newline")
                return False
            if len(buf) - rest >= MAX_LINE:
                self._skip_line = True
                self._fail_message(R_LINE_TOO_LONG)
                rest = len(buf) - 1 if buf[-1] == 13 else len(buf)
        if body_end > pos:
            body = buf[pos:body_end]
            crlf = body.count(b"\r\n")
            if body.count(b"\n") != crlf or body.count(b"\r") != crlf:
                self._close(R_BARE_NEWLINE, "bare_newline")
                return False
            if len(body) > MAX_LINE - 2 and has_long_line(body, MAX_LINE - 2):
                self._fail_message(R_LINE_TOO_LONG)
            if self._message_failed is None:
                chunk = body.replace(b"\r\n.", b"\r\n")
                if chunk.startswith(b"."):
                    chunk = chunk[1:]
                self._message_size += len(chunk)
                if self._message_size > self.limits.max_message_size:
                    self._fail_message(R_TOO_BIG)
                else:
                    self._events.append(MessageChunk(chunk))
        self._pos = rest
        if term < 0:
            return False
        if self._message_failed is not None:
            failed = self._message_failed
            self._enter(State.COMMAND)
            self._reply(failed, "too_big" if failed is R_TOO_BIG else "line_too_long")
            self._reset_transaction()
            return True
        self._enter(State.PAUSED)
        self._events.append(MessageEnd(self._message_size))
        return True

    def _fail_message(self, reply: Reply) -> None:
        if self._message_failed is None:
            self._message_failed = reply
            self._events.append(MessageAbort("too_big" if reply is R_TOO_BIG else "bad_line"))

    def _cmd_rset(self, arg: str) -> None:
        if self._bdat_active:
            self._events.append(MessageAbort("rset"))
        self._reset_transaction()
        self._reply(R_OK)

    def _cmd_noop(self, arg: str) -> None:
        self._reply(R_OK)

    def _cmd_quit(self, arg: str) -> None:
        self._out.append(R_BYE.wire)
        if self._bdat_active:
            self._events.append(MessageAbort("quit"))
        self._enter(State.CLOSED)
        self._drop_input()
        self._events.append(Close("quit"))

    def _cmd_help(self, arg: str) -> None:
        self._reply(Reply(214, "2.0.0 Commands: " + " ".join(sorted(COMMANDS))))

    def _cmd_vrfy(self, arg: str) -> None:
        if not arg:
            self._reply(Reply(501, "5.5.4 Syntax: VRFY address"), "syntax")
            return
        # No user enumeration (RFC 5321 §3.5.3 allows 252).
        self._reply(Reply(252, "2.0.0 Cannot VRFY user; send mail and it will be tried"))

    def _cmd_starttls(self, arg: str) -> None:
        if not self.options.tls_available or self.tls:
            self._reply(Reply(502, "5.5.1 Error: STARTTLS not available"), "out_of_order")
            return
        if arg:
            self._reply(Reply(501, "5.5.4 Syntax: STARTTLS"), "syntax")
            return
        self._reply(Reply(220, "2.0.0 Ready to start TLS"))
        self._drop_input()  # RFC 3207 §4.2 / CVE-2011-0411: no plaintext survives the upgrade
        self._enter(State.PAUSED)
        self._events.append(StartTLS())

    def _cmd_auth(self, arg: str) -> None:
        if not self._auth_offered():
            if self.user is not None:
                self._reply(Reply(503, "5.5.1 Error: already authenticated"), "out_of_order")
            else:
                self._reply(Reply(503, "5.5.1 Error: authentication not enabled"), "auth_refused")
            return
        if self.mail_from is not None:
            self._reply(Reply(503, "5.5.1 Error: MAIL transaction in progress"), "out_of_order")
            return
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        initial = initial.strip()
        if mechanism == "PLAIN":
            if initial:
                self._auth_plain(initial)
            else:
                self._auth_pending = ("PLAIN", "response")
                self._enter(State.AUTH)
                self._reply(Reply(334, ""))
        elif mechanism == "LOGIN":
            if initial:
                self._auth_login_user(initial)
            else:
                self._auth_pending = ("LOGIN", "user")
                self._enter(State.AUTH)
                self._reply(Reply(334, "VXNlcm5hbWU6"))
        else:
            self._reply(Reply(504, "5.5.4 Unrecognized authentication type"), "syntax")

    def _auth_line(self, line: bytes) -> None:
        mechanism, step = self._auth_pending or ("", "")
        self._auth_pending = None
        self._enter(State.COMMAND)
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            self._reply(Reply(501, "5.0.0 Authentication cancelled"), "auth_cancelled")
        elif mechanism == "PLAIN":
            self._auth_plain(text)
        elif step == "user":
            self._auth_login_user(text)
        else:
            password = _b64(text)
            if password is None:
                self._reply(Reply(501, "5.5.2 Cannot decode response"), "syntax")
                return
            self._auth_ask("LOGIN", self._auth_user, password)

    def _auth_login_user(self, text: str) -> None:
        user = _b64(text)
        if user is None:
            self._reply(Reply(501, "5.5.2 Cannot decode response"), "syntax")
            return
        self._auth_user = user
        self._auth_pending = ("LOGIN", "password")
        self._enter(State.AUTH)
        self._reply(Reply(334, "UGFzc3dvcmQ6"))

    def _auth_plain(self, text: str) -> None:
        decoded = _b64(text)
        parts = decoded.split("\0") if decoded is not None else []
        if len(parts) != 3 or not parts[1]:
            self._reply(Reply(501, "5.5.2 Cannot decode response"), "syntax")
            return
        _authzid, user, password = parts
        self._auth_ask("PLAIN", user, password)

    def _auth_ask(self, mechanism: str, user: str, password: str) -> None:
        self._enter(State.PAUSED)
        self._events.append(AuthAttempt(mechanism, user, password))


def has_long_line(body: bytes, limit: int) -> bool:
    """Whether a line of ``body`` (CRLF-terminated lines, no bare CR or LF) has more than
    ``limit`` octets before its CRLF.

    Every such line covers a multiple of ``limit + 1``, so only the lines around those
    offsets are measured: a few ``find`` calls per 4 KiB instead of a list of every line.
    """
    for offset in range(0, len(body), limit + 1):
        end = body.find(b"\r", offset)
        if end >= 0 and end - (body.rfind(b"\n", 0, offset + 1) + 1) > limit:
            return True
    return False


# Verb -> handler, resolved once instead of a getattr on a formatted name per command.
_HANDLERS = {verb: getattr(SMTPSession, f"_cmd_{verb.lower()}") for verb in COMMANDS}


@functools.lru_cache(maxsize=64)
def _greeting(hostname: str) -> bytes:
    return Reply(220, f"{hostname} ESMTP lanalyze").encode()


@functools.lru_cache(maxsize=64)
def _ehlo_reply(hostname: str, max_size: int, starttls: bool, auth: bool) -> Reply:
    lines = [
        hostname,
        "PIPELINING",
        f"SIZE {max_size}",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ]
    if starttls:
        lines.append("STARTTLS")
    if auth:
        lines.append("AUTH PLAIN LOGIN")
    return Reply(250, "\n".join(lines))


def _b64(text: str) -> str | None:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
