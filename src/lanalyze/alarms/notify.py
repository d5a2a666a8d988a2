"""Alarm notifications: channels behind one small interface, routed, de-duplicated, limited.

A :class:`Channel` sends one :class:`Notice` (``async send``, raising on failure); the
:class:`Notifier` decides which notices go to which channel (each channel's route: lowest
severity, algorithms), sends each (alarm, event, severity) once, keeps a channel to
``alarms.notify.max_per_minute`` (more are counted and dropped, so a storm of alarms cannot
become a storm of messages) and queues at most ``alarms.notify.queue`` notices. The e-mail
channel (:mod:`lanalyze.alarms.mailchannel`) is one more :class:`Channel`.

- **Webhook**: the notice as JSON, POSTed; ``X-Lanalyze-Signature: sha256=<hex>`` is the
  HMAC-SHA256 of the exact body with the key in ``secret_file``; a failure (connection, 5xx,
  429) is retried after 1 s, 2 s, 4 s, ... up to ``attempts``; a 4xx other than 429 is final.
- **Syslog**: one RFC 5424 message over UDP (section 6: PRI, VERSION 1, TIMESTAMP, HOSTNAME,
  APP-NAME ``lanalyze``, PROCID, MSGID ``ALARM``, one SD-ELEMENT ``alarm@32473``, MSG in
  UTF-8 with a BOM), at most 2048 bytes (RFC 5426 section 3.2 asks receivers for 2048).

Trust: alarm subjects and evidence come from flows and mail (peers' text): JSON-encoded for
webhooks, SD-PARAM values escaped (RFC 5424 section 6.3.3) for syslog. The webhook's answer is
not read beyond its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter

from lanalyze import metrics
from lanalyze.alarms.config import (
    SEVERITIES,
    NotifyConfig,
    Route,
    SyslogConfig,
    WebhookConfig,
)
from lanalyze.alarms.errors import DeliveryError
from lanalyze.configbase import parse_listen
from lanalyze.log import RateLimiter, get_logger

if TYPE_CHECKING:
    from lanalyze.mailer import Mailer

log = get_logger(__name__)
_log_limit = RateLimiter(interval=60, burst=3)

NOTIFICATIONS = Counter(
    "lanalyze_alarm_notifications_total",
    "Alarm notifications, by channel and outcome (sent, failed, rate_limited, duplicate, "
    "queue_full).",
    ["channel", "outcome"],
    registry=metrics.REGISTRY,
)

SIGNATURE_HEADER = "X-Lanalyze-Signature"
SYSLOG_MAX = 2048
SD_ID = "alarm@32473"
"""32473: the enterprise number RFC 5612 reserves for documentation and examples."""
_SYSLOG_SEVERITY = {"warning": 4, "major": 3, "critical": 2}


@dataclass(frozen=True)
class Notice:
    """What a channel sends: an alarm's row and what happened to it."""

    event: str
    alarm: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "alarm": self.alarm}

    @property
    def summary(self) -> str:
        a = self.alarm
        return (
            f"{a['severity']} {a['algorithm']} {a['subject']}: {self.event}, "
            f"value {a['value']:g} (threshold {a['threshold']:g} {a.get('unit', '')})".rstrip()
        )


class Channel(Protocol):
    name: str

    @property
    def route(self) -> Route:
        """Which notices this channel takes."""

    async def send(self, notice: Notice) -> None:
        """Deliver one notice; raise on failure (after the channel's own retries)."""


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookChannel:
    def __init__(self, config: WebhookConfig, index: int) -> None:
        self.config = config
        self.route = config
        self.name = f"webhook{index}"
        self.secret = _read_secret(config.secret_file)
        self.first_delay = 1.0

    async def send(self, notice: Notice) -> None:
        body = json.dumps(notice.to_json(), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "lanalyze"}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        delay = self.first_delay
        problem = ""
        for attempt in range(self.config.attempts):
            if attempt:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 300)
            try:
                # The standard library's client, in a thread: one POST now and then needs
                # no HTTP dependency at run time.
                status = await asyncio.to_thread(
                    _post, self.config.url, body, headers, self.config.timeout
                )
            except OSError as exc:  # refused, unreachable, timed out, TLS
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if status < 300:
                return
            problem = f"HTTP {status}"
            if status < 500 and status != 429:
                break
        raise DeliveryError(problem)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only: the setting's pattern
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _read_secret(path: Path | None) -> bytes | None:
    if path is None:
        return None
    return path.expanduser().read_bytes().strip()


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(notice: Notice, facility: int, hostname: str, now: float | None = None) -> bytes:
    """One RFC 5424 message for a notice."""
    a = notice.alarm
    pri = facility * 8 + _SYSLOG_SEVERITY.get(str(a["severity"]), 5)
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    host = "".join(c for c in hostname if 33 <= ord(c) <= 126)[:255] or "-"
    params = {
        "id": str(a["id"]),
        "event": notice.event,
        "algorithm": str(a["algorithm"]),
        "severity": str(a["severity"]),
        "subject": str(a["subject"]),
        "value": f"{a['value']:g}",
    }
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_escape(v)}"' for k, v in params.items()) + "]"
    header = (
        f"<{pri}>1 {stamp.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} {host} "
        f"lanalyze {os.getpid()} ALARM {sd} "
    )
    data = header.encode() + b"\xef\xbb\xbf" + notice.summary.encode()
    return data[:SYSLOG_MAX]


class SyslogChannel:
    def __init__(self, config: SyslogConfig, index: int, hostname: str) -> None:
        self.config = config
        self.route = config
        self.name = f"syslog{index}"
        self.hostname = hostname

    async def send(self, notice: Notice) -> None:
        host, port = parse_listen(self.config.server)
        data = syslog_message(notice, self.config.facility, self.hostname)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.sendto(data, (host, port))
        except OSError as exc:
            raise DeliveryError(exc.strerror or str(exc)) from None


def build_channels(
    config: NotifyConfig,
    hostname: str,
    *,
    mailer: Mailer | None = None,
    data_dir: Path | None = None,
) -> list[Channel]:
    """The configured channels; e-mail ones only with a ``mailer`` (and the data directory
    whose alarm store gives their charts)."""
    channels: list[Channel] = []
    for i, webhook in enumerate(config.webhooks):
        channels.append(WebhookChannel(webhook, i))
    for i, syslog in enumerate(config.syslog):
        channels.append(SyslogChannel(syslog, i, hostname))
    if mailer is not None and data_dir is not None:
        from lanalyze.alarms.mailchannel import EmailChannel

        for i, email in enumerate(config.email):
            channels.append(EmailChannel(email, i, mailer, data_dir))
    return channels


def routed(route: Route, notice: Notice) -> bool:
    a = notice.alarm
    if SEVERITIES.index(str(a["severity"])) < SEVERITIES.index(route.min_severity):
        return False
    return not route.algorithms or a["algorithm"] in route.algorithms


class Notifier:
    """Routes notices to channels in the background (``start``/``stop``), see module."""

    DEDUP_KEYS = 10_000

    def __init__(self, config: NotifyConfig, channels: list[Channel]) -> None:
        self.config = config
        self.channels = channels
        self._queue: asyncio.Queue[tuple[Channel, Notice]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sent: dict[tuple[Any, ...], None] = {}
        self._times: dict[str, deque[float]] = {c.name: deque() for c in channels}
        self._inflight: set[asyncio.Task[bool]] = set()

    def submit(self, notice: Notice) -> None:
        """Queue a notice for every channel whose route takes it (from the event loop)."""
        if notice.event not in ("opened", "escalated", "closed"):
            return
        if notice.event == "closed" and not self.config.on_close:
            return
        a = notice.alarm
        key = (a["id"], notice.event, a["severity"])
        for channel in self.channels:
            if not routed(channel.route, notice):
                continue
            if (channel.name, *key) in self._sent:
                NOTIFICATIONS.labels(channel.name, "duplicate").inc()
                continue
            self._sent[(channel.name, *key)] = None
            while len(self._sent) > self.DEDUP_KEYS:
                self._sent.pop(next(iter(self._sent)))
            if not self._allowed(channel.name):
                NOTIFICATIONS.labels(channel.name, "rate_limited").inc()
                continue
            if self._queue is None or self._queue.qsize() >= self.config.queue:
                NOTIFICATIONS.labels(channel.name, "queue_full").inc()
                continue
            self._queue.put_nowait((channel, notice))

    def _allowed(self, name: str) -> bool:
        now = time.monotonic()
        times = self._times.setdefault(name, deque())
        while times and now - times[0] >= 60:
            times.popleft()
        if len(times) >= self.config.max_per_minute:
            return False
        times.append(now)
        return True

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            channel, notice = await self._queue.get()
            # Each send on its own: one slow webhook retrying does not hold up syslog.
            task = asyncio.create_task(deliver(channel, notice))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # What is queued or on its way gets a moment to go out; retries are abandoned.
        while self._queue is not None and not self._queue.empty():
            channel, notice = self._queue.get_nowait()
            task = asyncio.create_task(deliver(channel, notice))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=2)
            for task in self._inflight:
                task.cancel()


async def deliver(channel: Channel, notice: Notice) -> bool:
    try:
        await channel.send(notice)
    except Exception as exc:
        NOTIFICATIONS.labels(channel.name, "failed").inc()
        if _log_limit.allow(channel.name) is not None:
            log.warning(
                "alarms.notify_failed",
                extra={"channel": channel.name, "alarm": notice.alarm.get("id"), "error": str(exc)},
            )
        return False
    NOTIFICATIONS.labels(channel.name, "sent").inc()
    return True
