"""`lanalyze flows collect` mails its alarm notifications: a scan through a real collector,
the notice sent to `mailer.relay_host`, a real lanalyze mail server on loopback (Maildir),
and parsed with Python's `email`."""

from __future__ import annotations

import email
import email.policy
import socket
from email.message import EmailMessage
from pathlib import Path

from tests.alarms.helpers import Collector, Flow, send_flows, write_config
from tests.conftest import free_port
from tests.mail.conftest import run_server


def test_flows_collect_mails_notifications(tmp_path: Path) -> None:
    with run_server(tmp_path / "mx") as running:
        data = tmp_path / "data"
        data.mkdir()
        port = free_port(socket.SOCK_DGRAM)
        config = write_config(
            tmp_path / "lanalyze.toml",
            port,
            f'[general]\ndata_dir = "{data}"\nhostname = "collector.example.test"\n'
            "[mail]\nenabled = false\n"
            f'[mailer]\nrelay_host = "127.0.0.1:{running.port()}"\nrelay_tls = "none"\n'
            "[[alarms.notify.email]]\n"
            'recipients = ["bob@example.test"]\n',
        )
        collector = Collector(config, data)
        try:
            scan = [Flow("10.9.7.1", f"203.0.113.{i}", 40000 + i, 23) for i in range(1, 151)]
            send_flows(port, scan)
            raw = running.wait_delivered(1, "bob@example.test", timeout=30)[0]
        finally:
            assert collector.stop() == 0
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    subject = str(message["Subject"]).strip()
    assert subject.startswith("[lanalyze] ")
    assert subject.endswith("scan_horizontal 10.9.7.1 tcp/23: opened")
    assert message["From"] == "lanalyze@collector.example.test"
