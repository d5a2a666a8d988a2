"""Sending mail lanalyze writes itself (scheduled reports, alarm notifications): one rule.

The message goes, in this order of preference:

1. **to the mail component of this process** (``lanalyze serve`` with ``mail.enabled``): its
   :class:`~lanalyze.mail.pickup.Pickup` queues it durably and the queue manager delivers it
   (local mailboxes, or outbound by MX or ``mail.outbound.relay_host``, with retries and
   bounces to ``mailer.sender``);
2. **into the data directory's queue** when ``mail.enabled`` and another process serves this
   data directory (it holds ``lanalyze.lock``; e.g. ``lanalyze reports run`` beside a running
   ``lanalyze serve``): a standalone Pickup writes the queue file and that server's next scan
   of ``queue/active/`` (``mail.queue.scan_interval``) delivers it;
3. **to ``mailer.relay_host``** over SMTP (STARTTLS or implicit TLS with a verified
   certificate, AUTH when ``mailer.relay_user`` is set) when it is set: with no server to
   deliver, or with mail disabled;
4. otherwise, with ``mail.enabled``, into the queue as in 2 (delivered when ``lanalyze
   serve`` next starts; the result says so); with mail disabled and no relay host it is an
   error (:class:`MailerError`).

Trust: the message is ours; its text may carry peers' data (alarm subjects, report rows),
which the callers put in headers through :mod:`email` (encoded, no line breaks). Recipient
addresses come from the configuration. The relay's password is never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import fcntl
import os
import smtplib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from prometheus_client import Counter
from pydantic import Field, SecretStr

from lanalyze import metrics
from lanalyze.configbase import Section
from lanalyze.errors import MailerError
from lanalyze.log import get_logger
from lanalyze.mail.config import HostPort, MailAddress, split_hostport

if TYPE_CHECKING:
    from lanalyze.config import Config
    from lanalyze.mail.pickup import Pickup

log = get_logger(__name__)

MESSAGES = Counter(
    "lanalyze_mailer_messages_total",
    "Messages lanalyze generated (reports, notifications), by route (server: this process's "
    "mail queue, queue: the data directory's queue, relay: mailer.relay_host) and outcome.",
    ["route", "outcome"],
    registry=metrics.REGISTRY,
)


class MailerConfig(Section):
    sender: MailAddress | None = Field(
        default=None,
        description="Envelope sender and From: of the mail lanalyze writes (reports, alarm "
        "notifications); bounces come back to it. Unset: `lanalyze@` + `general.hostname`.",
    )
    relay_host: HostPort | None = Field(
        default=None,
        description="SMTP server for that mail when no lanalyze mail server delivers it "
        "(mail disabled, or `lanalyze reports run` with no server running), e.g. "
        "`smtp.example.net:587`.",
    )
    relay_tls: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="TLS to `mailer.relay_host`: STARTTLS (port 587), implicit TLS (465), or "
        "none (only for a relay on this machine). The certificate is verified.",
    )
    relay_user: str | None = Field(
        default=None, description="AUTH login at `mailer.relay_host` (only over TLS)."
    )
    relay_password: SecretStr | None = Field(
        default=None, description="Password of `mailer.relay_user`. A secret: never logged."
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificates to verify `mailer.relay_host` with (unset: the system's).",
    )
    timeout: float = Field(
        default=60.0, gt=0, le=600, description="Seconds per SMTP command at `relay_host`."
    )


@dataclass(frozen=True)
class Sent:
    route: str
    """``server``, ``queue`` or ``relay``."""
    detail: str
    """The queue id, or the relay host."""
    waiting: bool = False
    """Queued with no server running: delivered when ``lanalyze serve`` starts."""


def sender_of(config: Config) -> str:
    return config.mailer.sender or f"lanalyze@{config.general.hostname}"


def served_elsewhere(data_dir: Path) -> bool:
    """Whether another process holds the data directory's lock (a running serve)."""
    from lanalyze.instance import LOCK_NAME

    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


class Mailer:
    """Hands generated messages on by the rule of the module docstring. ``server_pickup``
    returns this process's running mail component's pickup (or None)."""

    def __init__(
        self,
        config: Config,
        server_pickup: Callable[[], Pickup | None] | None = None,
        *,
        holds_lock: bool = False,
    ) -> None:
        self.config = config
        self.server_pickup = server_pickup
        self.holds_lock = holds_lock
        """This process holds the data directory's lock without a mail server (``lanalyze
        flows collect``): the lock says nothing of a server that would deliver the queue."""
        self.sender = sender_of(config)
        self._pickup: Pickup | None = None

    def prepare(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        """The header fields every generated message carries."""
        if "From" not in message:
            message["From"] = self.sender
        if "To" not in message:
            message["To"] = ", ".join(recipients)
        if "Date" not in message:
            message["Date"] = email.utils.formatdate(localtime=False)
        if "Message-ID" not in message:
            domain = self.sender.rpartition("@")[2] or self.config.general.hostname
            message["Message-ID"] = email.utils.make_msgid("lanalyze", domain=domain)
        if "Auto-Submitted" not in message:
            message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies

    async def send(self, message: EmailMessage, recipients: Sequence[str]) -> Sent:
        """Send ``message`` to ``recipients``; raise MailerError when it cannot be handed on."""
        if not recipients:
            raise MailerError("no recipients")
        self.prepare(message, recipients)
        data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        pickup = self.server_pickup() if self.server_pickup is not None else None
        route = "server"
        try:
            if pickup is not None:
                queue_id = await pickup.aqueue(data, self.sender, list(recipients))
                sent = Sent("server", queue_id)
            elif self.config.mail.enabled and (
                (served := not self.holds_lock and served_elsewhere(self.config.general.data_path))
                or self.config.mailer.relay_host is None
            ):
                route = "queue"
                waiting = not served
                queue_id = await asyncio.to_thread(self._queue, data, list(recipients))
                sent = Sent("queue", queue_id, waiting)
            elif self.config.mailer.relay_host is not None:
                route = "relay"
                await asyncio.to_thread(self._relay, data, list(recipients))
                sent = Sent("relay", self.config.mailer.relay_host)
            else:
                route = "none"
                raise MailerError(
                    "no way to send mail: mail is disabled (mail.enabled) and "
                    "mailer.relay_host is not set"
                )
        except MailerError:
            MESSAGES.labels(route, "failed").inc()
            raise
        except (OSError, ValueError, smtplib.SMTPException) as exc:
            MESSAGES.labels(route, "failed").inc()
            raise MailerError(f"{route}: {exc}") from exc
        MESSAGES.labels(route, "sent").inc()
        log.info(
            "mailer.sent",
            extra={"route": sent.route, "id": sent.detail, "recipients": len(recipients)},
        )
        return sent

    def _queue(self, data: bytes, recipients: list[str]) -> str:
        if self._pickup is None:
            from lanalyze.mail import srs
            from lanalyze.mail.pickup import Pickup
            from lanalyze.mail.queuefile import Layout
            from lanalyze.mail.users import Directory

            layout = Layout(self.config.general.data_path)
            layout.create()
            directory = Directory(self.config.mail, srs.from_config(self.config.mail, layout.root))
            self._pickup = Pickup(layout, directory, self.config.general.hostname)
        return self._pickup.queue(data, self.sender, recipients)

    def _relay(self, data: bytes, recipients: list[str]) -> None:
        settings = self.config.mailer
        assert settings.relay_host is not None
        host, port = split_hostport(
            settings.relay_host, 465 if settings.relay_tls == "tls" else 587
        )
        context = ssl.create_default_context(
            cafile=str(settings.ca_file.expanduser()) if settings.ca_file else None
        )
        client: smtplib.SMTP
        if settings.relay_tls == "tls":
            client = smtplib.SMTP_SSL(host, port, timeout=settings.timeout, context=context)
        else:
            client = smtplib.SMTP(host, port, timeout=settings.timeout)
        with client:
            client.ehlo(self.config.general.hostname)
            if settings.relay_tls == "starttls":
                client.starttls(context=context)
                client.ehlo(self.config.general.hostname)
            if settings.relay_user:
                if settings.relay_tls == "none":
                    raise MailerError("mailer.relay_user needs TLS (mailer.relay_tls)")
                secret = settings.relay_password
                password = secret.get_secret_value() if secret is not None else ""
                client.login(settings.relay_user, password)
            refused = client.sendmail(self.sender, recipients, data)
        if refused:
            raise MailerError(f"{host} refused {', '.join(sorted(refused))}")
