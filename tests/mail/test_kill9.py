"""kill -9 under load loses no acknowledged message and delivers no partial one.

Real `lanalyze serve` processes; clients send numbered messages over several connections
and record which ones got their 250. The server is killed with SIGKILL twice while under
load, restarted each time, and finally every acknowledged message must be in the Maildir,
and every Maildir file must be complete (its last line is the end marker).
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import threading
import time
from pathlib import Path

from tests.conftest import free_port, lanalyze_cmd

END = b"END-OF-MESSAGE"


def start(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*lanalyze_cmd(), "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as client:
                client.noop()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start")


def load(port: int, stop: threading.Event, acked: set[str], worker: int) -> None:
    number = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                while not stop.is_set():
                    number += 1
                    token = f"w{worker}-n{number}"
                    body = (
                        (
                            f"Subject: {token}\r\n\r\n"
                            + ("filler line\r\n" * 200)
                            + f"token {token}\r\n"
                        ).encode()
                        + END
                        + b"\r\n"
                    )
                    client.sendmail("load@remote.test", ["alice@example.test"], body)
                    acked.add(token)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)


def test_kill9_under_load_loses_nothing(tmp_path: Path, data_dir: Path) -> None:
    port = free_port()
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
mailboxes = ["alice@example.test"]
[mail.queue]
scan_interval = 0.5
[mail.auth]
enabled = false
""")
    acked: set[str] = set()
    for round_ in range(2):
        proc = start(config, port)
        stop = threading.Event()
        workers = [
            threading.Thread(target=load, args=(port, stop, acked, 10 * round_ + n))
            for n in range(6)
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
        new = data_dir / "mail" / "maildirs" / "alice@example.test" / "new"
        queue = data_dir / "mail" / "queue"
        deadline = time.monotonic() + 30
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
    for path in new.iterdir():
        data = path.read_bytes()
        assert data.endswith(END + b"\n"), f"partial message in new/: {path.name}"
        match = re.search(rb"token (w\d+-n\d+)\n", data)
        assert match is not None
        token = match.group(1).decode()
        delivered[token] = delivered.get(token, 0) + 1
    duplicates = sum(delivered.values()) - len(delivered)
    print(f"acknowledged {len(acked)}, delivered {len(delivered)}, duplicates {duplicates}")
    lost = acked - delivered.keys()
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages lost: {sorted(lost)[:5]}"
    assert not list((queue / "incoming").iterdir())
