"""Bounce: delivery status notifications for the mail pipeline's last stage (RFC 3464).

The interface between delivery (local and outbound) and notification: a delivery stage
reports per-recipient results that the sender must hear about (failed, delayed, delivered
with NOTIFY=SUCCESS, relayed to a server without DSN) and :class:`Bouncer` decides, from
the recipient's RFC 3461 NOTIFY and the envelope's RET/ENVID, whether and what to send.
:class:`DSNBouncer` is the implementation, Postfix's bounce(8) in one class:

- Which results are reported (RFC 3461 §4.1): NOTIFY=NEVER never; ``failed`` with FAILURE;
  ``delayed`` with DELAY, at most once per message (``Envelope.delay_warned``, which the
  caller sets and persists); ``delivered``/``relayed``/``expanded`` only with SUCCESS. A
  recipient given without NOTIFY counts as FAILURE plus, when ``mail.bounce.delay_warning``
  is on, DELAY (RFC 3461 §4.1 leaves the default to the MTA).
- What is sent (RFC 3464 §2, RFC 3462 multipart/report): a human-readable part, the
  ``message/delivery-status`` part (per-message fields §2.2: Reporting-MTA,
  Original-Envelope-Id, Arrival-Date; per-recipient §2.3: Original-Recipient,
  Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date,
  Will-Retry-Until), then the original: whole (``message/rfc822``) in a failure report unless
  the sender said RET=HDRS or it exceeds ``mail.bounce.return_limit``, otherwise its header
  (``text/rfc822-headers``, RFC 3462 §3). Delay and success reports carry the header only
  (RFC 3461 §4.3: RET is about failure reports).
- From ``MAILER-DAEMON@<hostname>`` with a null envelope sender (RFC 5321 §4.5.5), to the
  original envelope sender, queued through :mod:`lanalyze.mail.pickup`.
- Never a bounce for a bounce: a failed message with a null sender goes to the postmaster
  once as a *double bounce* (``Envelope.extra["double_bounced"]``, persisted by the caller);
  a failed double bounce (``extra["dsn"] == "double_bounce"``) is dropped, logged and
  counted. Delay and success reports are never sent to a null sender.

Trust: results and the original message carry text a remote server or sender wrote (reply
text, header fields): reply text is stripped of control characters and cut before it goes
into a field, and the original is returned as data in its own MIME part, never parsed into
ours. The boundary is random, so no returned text can end a part early.
"""

from __future__ import annotations

import asyncio
import email.utils
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from lanalyze.log import get_logger
from lanalyze.mail.headers import sanitize
from lanalyze.mail.metrics import DSN_SUPPRESSED, DSNS
from lanalyze.mail.queuefile import Envelope
from lanalyze.mail.smtp.dsn import xtext_encode

if TYPE_CHECKING:
    from lanalyze.mail.config import BounceConfig
    from lanalyze.mail.pickup import Pickup

log = get_logger(__name__)

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]


@dataclass(frozen=True)
class RecipientResult:
    """One recipient's outcome as RFC 3464 §2.3 reports it."""

    recipient: str  # envelope recipient as given in RCPT TO
    action: Action
    status: str  # RFC 3463 enhanced status code, e.g. "5.1.1"
    diagnostic: str = ""  # e.g. "smtp; 550 5.1.1 no such user" (RFC 3464 §2.3.6)
    remote_mta: str | None = None  # e.g. "mx.example.net" (RFC 3464 §2.3.5)


class Bouncer(Protocol):
    def report(
        self, envelope: Envelope, message: bytes, results: Sequence[RecipientResult]
    ) -> list[str]:
        """Queue the notifications ``results`` call for; return their queue ids (may be none)."""
        ...


SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
DEFAULT_LIFETIME = 5 * 86400.0  # Postfix's maximal_queue_lifetime, for Will-Retry-Until
MAX_DIAGNOSTIC = 900  # characters of a remote reply kept in a field (a line is <= 998)

_SUBJECTS = {
    "failure": "Undelivered Mail Returned to Sender",
    "delay": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
    "double_bounce": "Undelivered Mail Returned to Sender (double bounce)",
}
_INTRO = {
    "failure": "Your message could not be delivered to one or more recipients.\n"
    "It is attached below. The reason for each recipient is given here.",
    "delay": "Delivery of your message to one or more recipients has been delayed.\n"
    "It is still being retried; you need not send it again. You will be told if it fails.",
    "success": "Your message was delivered to the recipients below, as you asked\n"
    '(a "relayed" recipient was handed to a server that sends no delivery reports).',
    "double_bounce": "A message with an empty envelope sender (a delivery report itself)\n"
    "could not be delivered. It is attached below.",
}


def dsn_of(envelope: Envelope, recipient: str) -> dict[str, Any]:
    """The RFC 3461 parameters given for ``recipient``, or for the alias it was forwarded
    from (cleanup records ``extra["forwarded"]``: target -> recipient)."""
    found = envelope.dsn.get(recipient)
    if found is None:
        origin = envelope.extra.get("forwarded", {}).get(recipient)
        found = envelope.dsn.get(origin, {}) if origin else {}
    return found


def _date(when: float) -> str:
    return email.utils.formatdate(when, localtime=False, usegmt=True)


def _field(text: str) -> str:
    return sanitize(text, MAX_DIAGNOSTIC)


def header_section(message: bytes) -> bytes:
    """The header of a message (CRLF line ends) up to and including its blank line."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def _cut(header: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of a header, ending at a line end (never inside a field's line)."""
    if len(header) <= limit:
        return header
    end = header.rfind(b"\r\n", 0, limit)
    return header[: end + 2] if end >= 0 else b""


class DSNBouncer:
    """:class:`Bouncer` that builds RFC 3464 reports and queues them through pickup.

    :meth:`report` blocks on the disk (pickup's fsync): call it from a delivery thread, or
    :meth:`areport` from the event loop. It changes ``envelope`` (``delay_warned``,
    ``extra["double_bounced"]``): the caller persists the envelope afterwards, so a crash
    between the two may send one notification twice, never none.
    """

    def __init__(
        self,
        config: BounceConfig,
        pickup: Pickup,
        hostname: str,
        postmaster: str,
        *,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        self.config = config
        self.pickup = pickup
        self.hostname = hostname
        self.postmaster = config.postmaster or postmaster
        self.lifetime = lifetime  # the queue's maximum lifetime, for Will-Retry-Until
        self.sender = f"MAILER-DAEMON@{hostname}"

    # ---------------------------------------------------------------- decisions

    def wanted(self, envelope: Envelope, result: RecipientResult) -> bool:
        """Whether the sender asked (or by default gets) a report of this result."""
        notify = dsn_of(envelope, result.recipient).get("notify")
        if notify is not None and "NEVER" in notify:
            return False
        if result.action == "failed":
            return notify is None or "FAILURE" in notify
        if result.action == "delayed":
            return "DELAY" in notify if notify is not None else self.config.delay_warning
        return notify is not None and "SUCCESS" in notify

    def report(
        self, envelope: Envelope, message: bytes, results: Sequence[RecipientResult]
    ) -> list[str]:
        """Queue the notifications ``results`` call for; return their queue ids (may be none)."""
        if not results:
            return []
        if not envelope.mail_from:
            return self._null_sender(envelope, message, results)
        chosen = [r for r in results if self.wanted(envelope, r)]
        if len(chosen) < len(results):
            DSN_SUPPRESSED.labels("notify").inc(len(results) - len(chosen))
        if any(r.action == "delayed" for r in chosen):
            if envelope.delay_warned:
                DSN_SUPPRESSED.labels("already_sent").inc()
                chosen = [r for r in chosen if r.action != "delayed"]
            else:
                envelope.delay_warned = True
        if not chosen:
            return []
        if any(r.action == "failed" for r in chosen):
            kind = "failure"
        elif any(r.action == "delayed" for r in chosen):
            kind = "delay"
        else:
            kind = "success"
        return [self._send(kind, envelope, message, chosen, envelope.mail_from)]

    async def areport(
        self, envelope: Envelope, message: bytes, results: Sequence[RecipientResult]
    ) -> list[str]:
        """:meth:`report` from the event loop (the disk work in a thread)."""
        return await asyncio.to_thread(self.report, envelope, message, results)

    def _null_sender(
        self, envelope: Envelope, message: bytes, results: Sequence[RecipientResult]
    ) -> list[str]:
        failed = [r for r in results if r.action == "failed"]
        if len(failed) < len(results):
            DSN_SUPPRESSED.labels("null_sender").inc(len(results) - len(failed))
        if not failed:
            return []
        if envelope.extra.get("dsn") == "double_bounce":
            DSN_SUPPRESSED.labels("double_bounce_failed").inc(len(failed))
            log.error(
                "mail.bounce.double_bounce_dropped",
                extra={
                    "queue_id": envelope.queue_id,
                    "recipients": [r.recipient for r in failed][:10],
                    "status": failed[0].status,
                    "diagnostic": _field(failed[0].diagnostic),
                },
            )
            return []
        if envelope.extra.get("double_bounced"):
            DSN_SUPPRESSED.labels("already_sent").inc()
            return []
        envelope.extra["double_bounced"] = True
        return [self._send("double_bounce", envelope, message, failed, self.postmaster)]

    # ---------------------------------------------------------------- the report

    def _send(
        self,
        kind: str,
        envelope: Envelope,
        message: bytes,
        results: Sequence[RecipientResult],
        to: str,
    ) -> str:
        extra: dict[str, Any] = {"dsn": kind, "original": envelope.queue_id}
        # NOTIFY=NEVER: should it travel on to a server that speaks DSN, no report of a report.
        new_envelope = self.pickup.envelope("", [to], dsn={to: {"notify": ["NEVER"]}}, extra=extra)
        body = self.build(kind, envelope, message, results, to=to, queue_id=new_envelope.queue_id)
        queued = self.pickup.commit(new_envelope, body)
        DSNS.labels(kind).inc()
        log.info(
            "mail.bounce.sent",
            extra={
                "kind": kind,
                "queue_id": queued,
                "original": envelope.queue_id,
                "to": to,
                "recipients": [r.recipient for r in results][:10],
            },
        )
        return queued

    def build(
        self,
        kind: str,
        envelope: Envelope,
        message: bytes,
        results: Sequence[RecipientResult],
        *,
        to: str,
        queue_id: str,
    ) -> bytes:
        """The report's bytes (CRLF line ends)."""
        now = time.time()
        boundary = f"{queue_id}.{secrets.token_hex(12)}/{self.hostname}"
        original = envelope.prepend.encode("utf-8", "surrogateescape") + message
        whole = (
            kind in ("failure", "double_bounce")
            and envelope.ret != "HDRS"
            and len(original) <= self.config.return_limit
        )
        if whole:
            returned_type, returned = "message/rfc822", original
        else:
            returned_type = "text/rfc822-headers"
            returned = _cut(header_section(original), self.config.return_limit)

        lines = [
            f"From: Mail Delivery System <{self.sender}>",
            f"To: <{to}>",
            f"Subject: {_SUBJECTS[kind]}",
            f"Date: {_date(now)}",
            f"Message-ID: <{queue_id}.dsn@{self.hostname}>",
            "Auto-Submitted: auto-replied",  # RFC 3834 §5
            "MIME-Version: 1.0",
            "Content-Type: multipart/report; report-type=delivery-status;",
            f'\tboundary="{boundary}"',
            "Content-Transfer-Encoding: 7bit",  # 8bit below when anything is 8-bit
            "",
            "This is a MIME-encapsulated message (RFC 3464 delivery status notification).",
            "",
            f"--{boundary}",
            "Content-Description: Notification",
            "Content-Type: text/plain; charset=utf-8",
            "",
            f"This is the mail system at host {self.hostname}.",
            "",
            *_INTRO[kind].split("\n"),
            "",
        ]
        for result in results:
            line = f"<{_field(result.recipient)}>: {result.action} ({result.status})"
            lines.append(line)
            if result.diagnostic:
                lines.append(f"    {_field(result.diagnostic)}")
        lines += [
            "",
            f"--{boundary}",
            "Content-Description: Delivery report",
            "Content-Type: message/delivery-status",
            "",
            f"Reporting-MTA: dns; {self.hostname}",
        ]
        if envelope.envid:
            lines.append(f"Original-Envelope-Id: {xtext_encode(envelope.envid)}")
        if envelope.received_at:
            lines.append(f"Arrival-Date: {_date(envelope.received_at)}")
        for result in results:
            lines.append("")
            orcpt = dsn_of(envelope, result.recipient).get("orcpt")
            if orcpt:
                addr_type, _, address = str(orcpt).partition(";")
                lines.append(f"Original-Recipient: {addr_type}; {_field(address)}")
            lines += [
                f"Final-Recipient: rfc822; {_field(result.recipient)}",
                f"Action: {result.action}",
                f"Status: {_field(result.status)}",
            ]
            if result.remote_mta:
                lines.append(f"Remote-MTA: dns; {_field(result.remote_mta)}")
            if result.diagnostic:
                diagnostic = _field(result.diagnostic)
                if ";" not in diagnostic.split(" ", 1)[0]:
                    diagnostic = f"X-lanalyze; {diagnostic}"  # RFC 3464 §2.3.6: a type first
                lines.append(f"Diagnostic-Code: {diagnostic}")
            lines.append(f"Last-Attempt-Date: {_date(now)}")
            if result.action == "delayed" and envelope.received_at:
                lines.append(f"Will-Retry-Until: {_date(envelope.received_at + self.lifetime)}")
        lines += [
            "",
            f"--{boundary}",
            "Content-Description: "
            + ("Undelivered message" if whole else "Undelivered message headers"),
            f"Content-Type: {returned_type}",
        ]
        eight_bit = not returned.isascii()
        if eight_bit:
            lines.append("Content-Transfer-Encoding: 8bit")
        text = "\r\n".join(lines) + "\r\n\r\n"
        if eight_bit or not text.isascii():
            # UTF-8 addresses or reply text, or an 8-bit original (RFC 6152).
            text = text.replace(
                "Content-Transfer-Encoding: 7bit", "Content-Transfer-Encoding: 8bit", 1
            )
        head = text.encode("utf-8", "surrogateescape")
        if returned and not returned.endswith(b"\r\n"):
            returned += b"\r\n"
        return head + returned + f"\r\n--{boundary}--\r\n".encode()
