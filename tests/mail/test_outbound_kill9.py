"""kill -9 of lanalyze during outbound delivery under load: nothing acknowledged is lost.

A real `lanalyze serve` relays (a transport override to a second lanalyze on loopback, the
receiving MTA whose Maildir is counted); clients submit numbered messages over several
connections and record which got their 250. The sender is killed with SIGKILL twice while
under load and restarted; at the end every acknowledged message must be in the receiver's
Maildir at least once. Duplicates (a message acknowledged by the receiver just before the
kill, whose state was not yet on disk) are counted and printed: the design target is zero,
at-least-once is the guarantee.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

from tests.conftest import free_port
from tests.mail.conftest import run_server
from tests.mail.test_kill9 import END, start


def load(port: int, stop: threading.Event, acked: set[str], worker: int) -> None:
    import smtplib

    number = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                while not stop.is_set():
                    number += 1
                    token = f"w{worker}-n{number}"
                    body = (f"Subject: {token}\r\n\r\ntoken {token}\r\n").encode() + END + b"\r\n"
                    client.sendmail("load@example.test", ["alice@far.test"], body)
                    acked.add(token)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)


def test_kill9_during_outbound_loses_nothing(tmp_path: Path, data_dir: Path) -> None:
    port, far_port = free_port(), free_port()
    config = tmp_path / "lanalyze.toml"
    config.write_text(f"""
[general]
data_dir = "{data_dir}"
hostname = "mx.example.test"
[flows]
enabled = false
[web]
enabled = false
[mail]
listen = ["127.0.0.1:{port}"]
domains = ["example.test"]
mailboxes = ["postmaster@example.test"]
trusted_networks = ["127.0.0.0/8"]
[mail.queue]
scan_interval = 0.5
retry_min = 0.5
retry_max = 1.0
[mail.outbound]
transports = {{ "far.test" = "[127.0.0.1]:{far_port}" }}
tls = "none"
[mail.auth]
enabled = false
""")
    acked: set[str] = set()
    with run_server(
        tmp_path / "far",
        hostname="mx.far.test",
        listen=[f"127.0.0.1:{far_port}"],
        domains=["far.test"],
        mailboxes=["alice@far.test"],
        aliases={},
    ) as far:
        for round_ in range(2):
            proc = start(config, port)
            stop = threading.Event()
            workers = [
                threading.Thread(target=load, args=(port, stop, acked, 10 * round_ + n))
                for n in range(4)
            ]
            for worker in workers:
                worker.start()
            time.sleep(1.5 + round_ * 0.7)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            stop.set()
            for worker in workers:
                worker.join(timeout=10)
            assert proc.stderr is not None
            proc.stderr.close()
        assert len(acked) > 20, "the load did not get going"
        proc = start(config, port)
        try:
            queue = data_dir / "mail" / "queue"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                waiting = [p for d in ("active", "deferred") for p in (queue / d).iterdir()]
                if not waiting:
                    break
                time.sleep(0.2)
            assert not waiting, f"{len(waiting)} messages still queued"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
            assert proc.stderr is not None
            proc.stderr.close()
        delivered: dict[str, int] = {}
        for data in far.messages("alice@far.test"):
            assert data.endswith(END + b"\n"), "partial message delivered"
            match = re.search(rb"token (w\d+-n\d+)\n", data)
            assert match is not None
            token = match.group(1).decode()
            delivered[token] = delivered.get(token, 0) + 1
    duplicates = sum(delivered.values()) - len(delivered)
    print(f"acknowledged {len(acked)}, delivered {len(delivered)}, duplicates {duplicates}")
    lost = acked - delivered.keys()
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages lost: {sorted(lost)[:5]}"
