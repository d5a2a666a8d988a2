"""kill -9 of lanalyze during outbound delivery under load: nothing acknowledged is lost, and
nothing is sent twice but what RFC 1047's window allows.

A real `lanalyze serve` relays (a transport override to a receiving server on loopback);
clients submit numbered messages over several connections and record which got their 250.
The sender is killed with SIGKILL twice while under load and restarted; at the end every
acknowledged message must have been received at least once.

Duplicates: the sender records each transaction's result durably as soon as its final reply
arrives, before anything else happens on that connection (the next MAIL, or QUIT). So the
only transactions a crash may repeat are those whose 250 the receiver sent and after which
the sender said nothing more: the RFC 1047 window, at most one per connection open at the
kill. The receiver is the suite's small SMTP peer (``smtppeer.Peer``), not a second lanalyze
or Postfix, because it must report exactly those transactions (``Peer.unconfirmed``), which
no real MTA does; delivery to real MTAs is tested in ``test_outbound.py``. The test asserts
that every duplicate is one of them.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

from tests.conftest import free_port
from tests.mail.smtppeer import Peer
from tests.mail.test_kill9 import END, start

TOKEN = re.compile(rb"token (w\d+-n\d+)\r?\n")


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
    far = Peer("127.0.0.1", far_port)
    far.start()
    try:
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
    finally:
        far.stop()
    delivered: dict[str, int] = {}
    tokens: list[str] = []
    for received in far.received:
        assert received.data.rstrip(b"\r\n").endswith(END), "partial message delivered"
        match = TOKEN.search(received.data)
        assert match is not None
        token = match.group(1).decode()
        tokens.append(token)
        delivered[token] = delivered.get(token, 0) + 1
    duplicates = sum(delivered.values()) - len(delivered)
    window: dict[str, int] = {}  # token -> times it was in RFC 1047's window
    for index in far.unconfirmed:
        window[tokens[index]] = window.get(tokens[index], 0) + 1
    print(
        f"acknowledged {len(acked)}, delivered {len(delivered)}, duplicates {duplicates}, "
        f"transactions in the RFC 1047 window {len(far.unconfirmed)}"
    )
    lost = acked - delivered.keys()
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages lost: {sorted(lost)[:5]}"
    # Each extra copy of a message needs an earlier copy the sender could not record.
    beyond = {t: n - 1 for t, n in delivered.items() if n - 1 > window.get(t, 0)}
    assert not beyond, (
        f"sent again though the sender had gone on after its 250: {sorted(beyond)[:5]}"
    )
