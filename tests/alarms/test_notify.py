"""Notifications received by real peers on loopback: an HTTP server checking the HMAC, a UDP
syslog receiver; routing, de-duplication and the rate limit."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lanalyze.alarms.config import NotifyConfig, Route, SyslogConfig, WebhookConfig
from lanalyze.alarms.notify import (
    Notice,
    Notifier,
    SyslogChannel,
    WebhookChannel,
    deliver,
    syslog_message,
)
from tests.conftest import lanalyze_cmd

SECRET = b"webhook key 1"


class Receiver:
    """A local webhook receiver: answers ``statuses`` in turn (then 200), verifies the HMAC."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.bodies: list[dict[str, Any]] = []
        self.verified: list[bool] = []
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
                    signature = self.headers.get("X-Lanalyze-Signature", "")
                    receiver.verified.append(hmac.compare_digest(signature, expected))
                    receiver.bodies.append(json.loads(body))
                    receiver.got.set()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def syslog_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


def alarm(alarm_id: int = 7, severity: str = "major", algorithm: str = "scan_horizontal") -> dict:
    return {
        "id": alarm_id,
        "algorithm": algorithm,
        "subject": '10.0.0.5 tcp/22 "x"]',
        "severity": severity,
        "value": 150.0,
        "threshold": 100.0,
        "unit": "hosts",
    }


def test_webhook_is_signed_and_retried(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_bytes(SECRET + b"\n")
    receiver = Receiver([503])  # the first attempt fails: retried after 1 s
    try:
        channel = WebhookChannel(WebhookConfig(url=receiver.url, secret_file=secret, attempts=3), 0)
        assert asyncio.run(deliver(channel, Notice("opened", alarm())))
    finally:
        receiver.close()
    assert receiver.verified == [True]
    assert receiver.bodies[0]["event"] == "opened"
    assert receiver.bodies[0]["alarm"]["subject"] == '10.0.0.5 tcp/22 "x"]'


def test_webhook_gives_up_on_a_client_error(receiver: Receiver) -> None:
    receiver.statuses = [404]
    channel = WebhookChannel(WebhookConfig(url=receiver.url, attempts=5), 0)
    assert not asyncio.run(deliver(channel, Notice("opened", alarm())))
    assert receiver.bodies == []


def test_syslog_rfc5424(syslog_socket: socket.socket) -> None:
    port = syslog_socket.getsockname()[1]
    channel = SyslogChannel(SyslogConfig(server=f"127.0.0.1:{port}", facility=16), 0, "gw1")
    assert asyncio.run(deliver(channel, Notice("opened", alarm())))
    data, _ = syslog_socket.recvfrom(4096)
    # <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG (RFC 5424 section 6)
    match = re.fullmatch(
        rb"<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) gw1 lanalyze (\d+) ALARM "
        rb"(\[alarm@32473 [^\n]*?[^\\]\]) \xef\xbb\xbf(.*)",
        data,
        re.S,
    )
    assert match is not None, data
    assert int(match.group(1)) == 16 * 8 + 3  # local0, major -> error (3)
    assert b'subject="10.0.0.5 tcp/22 \\"x\\"\\]"' in match.group(4)
    assert match.group(5).startswith(b"major scan_horizontal")


def test_syslog_message_is_bounded() -> None:
    big = alarm() | {"subject": "x" * 10_000}
    assert len(syslog_message(Notice("opened", big), 16, "h")) == 2048


class Recorder:
    """A channel that keeps what it is given (the Channel interface, in memory)."""

    def __init__(self, route: Route) -> None:
        self.name = "recorder"
        self.route = route
        self.notices: list[Notice] = []

    async def send(self, notice: Notice) -> None:
        self.notices.append(notice)


def test_routing_dedup_and_rate_limit() -> None:
    critical_scans = Recorder(Route(min_severity="critical", algorithms=["scan_horizontal"]))
    everything = Recorder(Route())
    everything.name = "all"
    notifier = Notifier(NotifyConfig(max_per_minute=5), [critical_scans, everything])

    async def scenario() -> None:
        await notifier.start()
        notifier.submit(Notice("opened", alarm(1, "warning")))
        notifier.submit(Notice("opened", alarm(1, "warning")))  # the same again: once
        notifier.submit(Notice("updated", alarm(1, "warning")))  # updates are not sent
        notifier.submit(Notice("escalated", alarm(1, "critical")))
        notifier.submit(Notice("opened", alarm(2, "critical", "flood")))
        for i in range(10, 20):  # a storm: only 5 a minute get through
            notifier.submit(Notice("opened", alarm(i, "warning")))
        await notifier.stop()  # sends what is queued

    asyncio.run(scenario())
    assert [(n.event, n.alarm["id"]) for n in critical_scans.notices] == [("escalated", 1)]
    sent = [(n.event, n.alarm["id"]) for n in everything.notices]
    assert sent == [("opened", 1), ("escalated", 1), ("opened", 2), ("opened", 10), ("opened", 11)]


def test_test_notify_command(
    tmp_path: Path, receiver: Receiver, syslog_socket: socket.socket
) -> None:
    secret = tmp_path / "key"
    secret.write_bytes(SECRET)
    config = tmp_path / "lanalyze.toml"
    config.write_text(
        f'[general]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[[alarms.notify.webhooks]]\nurl = "{receiver.url}"\nsecret_file = "{secret}"\n'
        f'[[alarms.notify.syslog]]\nserver = "127.0.0.1:{syslog_socket.getsockname()[1]}"\n'
    )
    result = subprocess.run(
        [*lanalyze_cmd(), "--config", str(config), "alarms", "test-notify"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["webhook0: sent", "syslog0: sent"]
    assert receiver.verified == [True] and receiver.bodies[0]["event"] == "test"
    data, _ = syslog_socket.recvfrom(4096)
    assert b'ALARM [alarm@32473 id="0" event="test"' in data
