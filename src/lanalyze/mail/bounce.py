"""Bounce: delivery status notifications for the mail pipeline's last stage (RFC 3464).

The interface between delivery (local and outbound) and notification: a delivery stage
reports per-recipient results that the sender must hear about (failed, delayed, delivered
with NOTIFY=SUCCESS, relayed to a server without DSN) and :class:`Bouncer` decides, from
the recipient's RFC 3461 NOTIFY and the envelope's RET/ENVID, whether and what to send.
Its implementation lands with issue 13; this module fixes the shape both sides share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from lanalyze.mail.queuefile import Envelope

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
