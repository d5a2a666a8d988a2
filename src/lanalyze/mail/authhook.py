"""The seam between the SMTP pipeline and :mod:`lanalyze.mail.auth` (SPF/DKIM/DMARC/ARC).

The auth component is optional: when ``[mail.auth]`` is absent or disabled, or the package
cannot be imported, every message takes the no-op path (no checks, no Authentication-Results
line). When enabled, ``check`` runs after the final dot / last BDAT on the message's bytes
(exactly the bytes that will be queued: :meth:`~lanalyze.mail.cleanup.Spool.message`, never
the spool file as a whole), before cleanup commits it, so a reject becomes ``550 5.7.1``
instead of a 250; quarantine delivers to the mailbox's ``.Junk`` folder. A checker that fails
(our bug, a broken DNS library) is logged and the message is accepted unchecked rather than
lost.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lanalyze.log import get_logger

if TYPE_CHECKING:
    from lanalyze.mail.config import MailConfig
    from lanalyze.mail.queuefile import Envelope

log = get_logger(__name__)
CHECK_TIMEOUT = 60.0


@dataclass
class Verdict:
    action: str  # accept | reject | quarantine
    header: str
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    strip_ranges: list[list[int]] = field(default_factory=list)


class AuthHook:
    def __init__(self, config: MailConfig, authserv_id: str) -> None:
        self.settings = getattr(config, "auth", None)
        self.local_domains = list(config.domains)
        self.authserv_id = authserv_id
        self.enabled = bool(self.settings is not None and getattr(self.settings, "enabled", False))
        self._impl: Any = None

    async def start(self) -> None:
        if not self.enabled:
            return
        try:
            module = importlib.import_module("lanalyze.mail.auth")
            self._impl = module.Authenticator(
                self.settings, self.authserv_id, local_domains=self.local_domains
            )
            await self._impl.start()
        except Exception:
            log.exception("mail.auth.unavailable")
            self._impl = None
            self.enabled = False

    async def stop(self) -> None:
        if self._impl is not None:
            await self._impl.stop()
            self._impl = None

    async def check(
        self, message: bytes, envelope: Envelope, helo: str, user: str | None
    ) -> Verdict | None:
        if self._impl is None:
            return None
        try:
            # A deadline on this task (no task of its own, unlike wait_for).
            async with asyncio.timeout(CHECK_TIMEOUT):
                verdict = await self._impl.check(
                    message,
                    mail_from=envelope.mail_from,
                    helo=helo,
                    client_ip=envelope.client_ip,
                    rcpt_to=list(envelope.recipients),
                    authenticated_user=user,
                )
        except Exception:
            log.exception("mail.auth.check_failed", extra={"queue_id": envelope.queue_id})
            return None
        header = verdict.header
        if isinstance(header, bytes):
            header = header.decode("utf-8", "surrogateescape")
        strip = getattr(verdict, "strip_headers", None) or []
        ranges = [[int(a), int(b)] for a, b in strip] if isinstance(strip, list) else []
        return Verdict(
            action=str(verdict.action),
            header=header,
            reason=str(getattr(verdict, "reason", "")),
            data=verdict.as_dict(),
            strip_ranges=ranges,
        )

    async def sign(self, message: bytes, user: str, from_address: str) -> str:
        sign = getattr(self._impl, "sign", None)
        if sign is None:
            return ""
        try:
            header = await sign(message, user=user, from_domain=from_address.rpartition("@")[2])
        except Exception:
            log.exception("mail.auth.sign_failed")
            return ""
        if isinstance(header, bytes):
            header = header.decode("utf-8", "surrogateescape")
        return str(header or "")
