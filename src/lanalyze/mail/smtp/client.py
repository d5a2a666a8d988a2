"""The SMTP client core (sans-IO): commands out as bytes, replies in as bytes, events out.

RFC 5321 (the dialogue, reply syntax §4.2, dot-stuffing §4.5.2), RFC 1869/5321 §4.1.1.1
(EHLO keywords), RFC 2920 (PIPELINING: MAIL, every RCPT and DATA in one write, the replies
read in order), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8), RFC 3030
(CHUNKING: ``BDAT n LAST``), RFC 3207 (STARTTLS), RFC 4954 + RFC 4616 (AUTH PLAIN),
RFC 3461 §4 (DSN parameters passed on when the server offers DSN).

:class:`ClientCore` knows which command each awaited reply answers: the shell writes what the
core's builders return and feeds what it reads to :meth:`ClientCore.receive`, which returns
one :class:`Replied` per complete reply, tagged with the command it answers.
:func:`prepare` decides, before a transaction, how a message can be sent to a server with
the extensions it offered: as it is, downgraded from 8-bit to quoted-printable (as Postfix
does for a server without 8BITMIME), or not at all (a permanent failure: 8-bit headers or
non-ASCII addresses without SMTPUTF8, larger than the server's SIZE).

Trust: replies come from a remote server (untrusted): a line is at most ``MAX_LINE`` bytes, a
reply at most ``MAX_LINES`` lines, a code three digits; anything else raises
:class:`~lanalyze.mail.errors.ReplyError` and the shell drops the connection. Reply text is
kept for logs, DSNs and the queue view with control characters removed.
"""

from __future__ import annotations

import base64
import email
import email.policy
import quopri
import re
from collections import deque
from dataclasses import dataclass, field

from lanalyze.mail.errors import ReplyError

MAX_LINE = 2048  # RFC 5321 §4.5.3.1.5 says 512; servers send longer, we keep a margin
MAX_LINES = 100
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ServerReply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as one line: ``550 5.1.1 no such user``."""
        return f"{self.code} " + " ".join(self.lines)[:500]

    @property
    def status(self) -> str:
        """The RFC 3463 enhanced code of the reply, or one derived from its class."""
        match = _ENHANCED.match(self.lines[0] if self.lines else "")
        if match and match.group(1) == str(self.code)[0]:
            return match.group(0)
        return f"{str(self.code)[0]}.0.0"

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class ReplyParser:
    """Complete replies from a byte stream (multi-line: ``250-...`` lines, then ``250 ...``)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._code = 0

    def feed(self, data: bytes) -> list[ServerReply]:
        self._buffer += data
        replies: list[ServerReply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise ReplyError("reply line too long")
                return replies
            if end > MAX_LINE:
                raise ReplyError("reply line too long")
            raw = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if len(raw) < 3 or not raw[:3].isdigit() or raw[:1] not in b"2345":
                raise ReplyError(f"not an SMTP reply: {raw[:40]!r}")
            if len(raw) > 3 and raw[3:4] not in (b" ", b"-"):
                raise ReplyError(f"not an SMTP reply: {raw[:40]!r}")
            code = int(raw[:3])
            if self._lines and code != self._code:
                raise ReplyError("reply code changed inside a multi-line reply")
            self._code = code
            text = _CONTROL.sub(" ", raw[4:].decode("utf-8", "replace"))
            self._lines.append(text)
            if len(self._lines) > MAX_LINES:
                raise ReplyError("reply has too many lines")
            if raw[3:4] != b"-":
                replies.append(ServerReply(code, tuple(self._lines)))
                self._lines = []


@dataclass
class Extensions:
    """What a server offered in its EHLO reply (RFC 5321 §4.1.1.1)."""

    esmtp: bool = False
    pipelining: bool = False
    size: int = 0  # 0: no limit announced
    eightbit: bool = False
    smtputf8: bool = False
    chunking: bool = False
    starttls: bool = False
    dsn: bool = False
    auth: set[str] = field(default_factory=set)

    @classmethod
    def from_ehlo(cls, reply: ServerReply) -> Extensions:
        ext = cls(esmtp=True)
        for line in reply.lines[1:]:
            words = line.upper().split()
            if not words:
                continue
            keyword = words[0]
            if keyword == "PIPELINING":
                ext.pipelining = True
            elif keyword == "SIZE":
                if len(words) > 1 and words[1].isdigit():
                    ext.size = int(words[1])
            elif keyword == "8BITMIME":
                ext.eightbit = True
            elif keyword == "SMTPUTF8":
                ext.smtputf8 = True
            elif keyword == "CHUNKING":
                ext.chunking = True
            elif keyword == "STARTTLS":
                ext.starttls = True
            elif keyword == "DSN":
                ext.dsn = True
            elif keyword == "AUTH" or keyword.startswith("AUTH="):
                ext.auth.update(words[1:])
        return ext


@dataclass(frozen=True)
class Replied:
    """One complete reply and the command it answers (``tag``: greeting, ehlo, mail, rcpt,
    data, body, bdat, starttls, auth, rset, quit) with its argument (the recipient)."""

    tag: str
    arg: str
    reply: ServerReply


@dataclass(frozen=True)
class Prepared:
    """A message ready for one server: the bytes and the MAIL FROM parameters."""

    data: bytes
    mail_params: tuple[str, ...]


@dataclass(frozen=True)
class Unsendable:
    """A message this server can never take (RFC 3463 status for the DSN)."""

    status: str
    text: str


def xtext(value: str) -> str:
    """RFC 3461 §4: characters outside ``!``..``~`` and ``+``, ``=`` as ``+HH``."""
    return "".join(f"+{ord(c):02X}" if c in "+=" or not 33 <= ord(c) <= 126 else c for c in value)


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2: a leading dot doubled, CRLF at the end, then the ``.`` line."""
    stuffed = (b"\r\n" + data).replace(b"\r\n.", b"\r\n..")[2:]
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def downgrade_8bit(message: bytes) -> bytes | None:
    """The message with every 8-bit part re-encoded quoted-printable, as Postfix does for a
    server without 8BITMIME; None when that cannot be done (8-bit header fields)."""
    head, _, _ = message.partition(b"\r\n\r\n")
    if not head.isascii():
        return None
    policy = email.policy.compat32.clone(linesep="\r\n")
    parsed = email.message_from_bytes(message, policy=policy)
    if "MIME-Version" not in parsed:
        # Not MIME: say what the 8-bit text is so that it can be encoded (RFC 2045 §4).
        parsed["MIME-Version"] = "1.0"
        if "Content-Type" not in parsed:
            parsed["Content-Type"] = "text/plain; charset=unknown-8bit"
    for part in parsed.walk():
        if part.is_multipart():
            continue
        encoding = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        if encoding in ("base64", "quoted-printable"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or payload.isascii():
            continue
        del part["Content-Transfer-Encoding"]
        part["Content-Transfer-Encoding"] = "quoted-printable"
        encoded = quopri.encodestring(payload.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
        part.set_payload(encoded.decode("ascii"))
    return parsed.as_bytes(policy=policy)


def prepare(
    message: bytes,
    mail_from: str,
    recipients: list[str],
    ext: Extensions,
    *,
    ret: str | None = None,
    envid: str | None = None,
) -> Prepared | Unsendable:
    """How ``message`` goes to a server offering ``ext`` (see the module docstring)."""
    params: list[str] = []
    addresses_ascii = mail_from.isascii() and all(r.isascii() for r in recipients)
    head, _, _ = message.partition(b"\r\n\r\n")
    if not addresses_ascii or not head.isascii():
        if not ext.smtputf8:
            return Unsendable("5.6.7", "non-ASCII addresses or header fields need SMTPUTF8")
        params.append("SMTPUTF8")
    if not message.isascii():
        if ext.eightbit:
            params.append("BODY=8BITMIME")
        elif "SMTPUTF8" in params:
            pass  # RFC 6531 §3.1: SMTPUTF8 implies 8BITMIME
        else:
            downgraded = downgrade_8bit(message)
            if downgraded is None:
                return Unsendable("5.6.3", "8-bit message, server without 8BITMIME")
            message = downgraded
    if ext.size and len(message) > ext.size:
        return Unsendable("5.3.4", f"message larger than the server's limit ({ext.size} bytes)")
    if ext.size:
        params.insert(0, f"SIZE={len(message)}")
    if ext.dsn:
        if ret in ("FULL", "HDRS"):
            params.append(f"RET={ret}")
        if envid:
            params.append(f"ENVID={xtext(envid)}")
    return Prepared(message, tuple(params))


class ClientCore:
    """The client side of one SMTP connection: builds commands, matches replies to them."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.parser = ReplyParser()
        self.ext = Extensions()
        self._expect: deque[tuple[str, str]] = deque([("greeting", "")])

    @property
    def waiting(self) -> int:
        """Replies still expected."""
        return len(self._expect)

    def receive(self, data: bytes) -> list[Replied]:
        events = []
        for reply in self.parser.feed(data):
            if not self._expect:
                raise ReplyError(f"unexpected reply: {reply.text[:80]}")
            tag, arg = self._expect.popleft()
            if tag == "ehlo" and reply.code == 250:
                self.ext = Extensions.from_ehlo(reply)
            events.append(Replied(tag, arg, reply))
        return events

    def _command(self, tag: str, line: str, arg: str = "") -> bytes:
        self._expect.append((tag, arg))
        return line.encode("utf-8") + b"\r\n"

    def ehlo(self) -> bytes:
        return self._command("ehlo", f"EHLO {self.hostname}")

    def helo(self) -> bytes:
        self.ext = Extensions()
        return self._command("helo", f"HELO {self.hostname}")

    def starttls(self) -> bytes:
        return self._command("starttls", "STARTTLS")

    def tls_started(self) -> None:
        """RFC 3207 §4.2: forget everything learnt before TLS; EHLO again."""
        self.ext = Extensions()
        self.parser = ReplyParser()

    def auth_plain(self, user: str, password: str) -> bytes:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
        return self._command("auth", f"AUTH PLAIN {token}")

    def mail(self, sender: str, params: tuple[str, ...]) -> bytes:
        suffix = "".join(" " + p for p in params)
        return self._command("mail", f"MAIL FROM:<{sender}>{suffix}")

    def rcpt(self, recipient: str, notify: list[str] | None, orcpt: str | None) -> bytes:
        params = ""
        if self.ext.dsn:
            if notify:
                params += " NOTIFY=" + ",".join(notify)
            if orcpt:
                kind, _, address = orcpt.partition(";")
                params += f" ORCPT={kind};{xtext(address)}"
        return self._command("rcpt", f"RCPT TO:<{recipient}>{params}", recipient)

    def data(self) -> bytes:
        return self._command("data", "DATA")

    def body(self, data: bytes) -> bytes:
        self._expect.append(("body", ""))
        return dot_stuff(data)

    def bdat(self, data: bytes) -> bytes:
        self._expect.append(("bdat", ""))
        return b"BDAT %d LAST\r\n" % len(data) + data

    def rset(self) -> bytes:
        return self._command("rset", "RSET")

    def quit(self) -> bytes:
        return self._command("quit", "QUIT")
