"""The e-mail channel: a notice routed by the Notifier, mailed through lanalyze's own mail
server (a real MailServer on loopback, Maildir) and parsed with Python's `email`."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from email.message import EmailMessage
from pathlib import Path

from lanalyze import metrics
from lanalyze.alarms.detect import Finding
from lanalyze.alarms.notify import Notice, Notifier, build_channels
from lanalyze.alarms.store import AlarmStore, store_path
from lanalyze.config import Config
from lanalyze.mailer import Mailer
from tests.mail.conftest import base_config, run_server
from tests.reports.test_png import decode

SUBJECT = '10.0.0.5 tcp/22 <script>"x"]'


def test_alarm_mailed_with_its_chart(data_dir: Path) -> None:
    store = AlarmStore(store_path(data_dir))
    for second, value in enumerate([120.0, 180.0, 150.0]):
        store.record(
            [Finding("scan_horizontal", SUBJECT, value, 100.0, "hosts", {"ports": [22]})],
            now=1_764_000_000.0 + 60 * second,
        )
    row = store.get(1)
    store.close()
    assert row is not None
    config = Config.model_validate(
        {
            "general": {"data_dir": str(data_dir), "hostname": "mx.example.test"},
            "mail": base_config(),
            "alarms": {
                "notify": {
                    "email": [
                        {"recipients": ["alice@example.test"], "min_severity": "warning"},
                        {"recipients": ["bob@example.test"], "min_severity": "critical"},
                    ]
                }
            },
        }
    )
    with run_server(data_dir) as running:
        mailer = Mailer(config, lambda: running.server.pickup)
        channels = build_channels(
            config.alarms.notify, "mx.example.test", mailer=mailer, data_dir=data_dir
        )
        assert [c.name for c in channels] == ["email0", "email1"]
        notifier = Notifier(config.alarms.notify, channels)

        async def scenario() -> None:
            await notifier.start()
            notifier.submit(Notice("opened", row))
            notifier.submit(Notice("opened", row))  # de-duplicated by the notifier
            await notifier.stop()  # sends what is queued and waits for it

        asyncio.run(scenario())
        (raw,) = running.wait_delivered(1)
        assert running.messages("bob@example.test") == []  # routed by severity
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    # Python's folder may fold right after "Subject:" (legal FWS; unfolded it leaves a space).
    subject = str(message["Subject"]).strip()
    assert subject == f"[lanalyze] {row['severity']} scan_horizontal {SUBJECT}: opened"
    assert message["From"] == "lanalyze@mx.example.test"
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_body(("html",))
    assert body is not None
    html = body.get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html  # peers' text escaped
    (cid,) = re.findall(r'src="cid:([^"]+)"', html)
    (image,) = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert str(image["Content-ID"]) == f"<{cid}>"
    assert decode(image.get_content()).shape == (240, 640, 3)
    plain = message.get_body(("plain",))
    assert plain is not None and "scan_horizontal" in plain.get_content()
    sent = metrics.REGISTRY.get_sample_value(
        "lanalyze_alarm_notifications_total", {"channel": "email0", "outcome": "sent"}
    )
    assert sent == 1
