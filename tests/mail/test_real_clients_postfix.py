"""Postfix as a peer MTA: a private Postfix instance relays to lanalyze (with STARTTLS).

The instance has its own config and queue directories in a temporary directory and runs
master(8) in the foreground (``postfix -c DIR start`` would need the directory listed in the
system's main.cf); nothing system-wide is touched. Needs root, as Postfix itself does.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, require_tool
from tests.mail.conftest import run_server

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/spool
data_directory = {base}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = peer.example.net
mydomain = example.net
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = /dev/stdout
alias_maps =
alias_database =
smtpd_peername_lookup = no
smtp_host_lookup = native
"""

QUEUE_DIRS = [
    "incoming",
    "active",
    "deferred",
    "defer",
    "bounce",
    "corrupt",
    "maildrop",
    "hold",
    "flush",
    "saved",
    "trace",
    "private",
    "public",
    "pid",
]


def wait_greeting(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                if conn.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"Postfix did not answer on {port}")


@pytest.fixture
def postfix_base() -> Iterator[Path]:
    require_tool("postfix")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    # Not under pytest's tmp_path: the postfix user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="postfix-peer-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def start_postfix(base: Path, port: int, relay_port: int) -> subprocess.Popen[bytes]:
    etc = base / "etc"
    etc.mkdir()
    (base / "data").mkdir()
    shutil.chown(base / "data", "postfix")
    (etc / "main.cf").write_text(MAIN_CF.format(base=base, relay_port=relay_port))
    (etc / "master.cf").write_text(MASTER_CF.format(port=port))
    for name in QUEUE_DIRS:
        path = base / "spool" / name
        path.mkdir(parents=True)
        if name != "pid":
            shutil.chown(path, "postfix")
            os.chmod(path, 0o700)
    for name, mode in (("public", 0o710), ("maildrop", 0o730)):
        shutil.chown(base / "spool" / name, "postfix", "postdrop")
        os.chmod(base / "spool" / name, mode)
    log = (base / "maillog").open("wb")
    proc = subprocess.Popen(
        ["/usr/lib/postfix/sbin/master", "-c", str(etc), "-d"], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    wait_greeting(port)
    return proc


def test_postfix_relays_to_lanalyze_over_starttls(
    postfix_base: Path, data_dir: Path, tls_pair: tuple[Path, Path]
) -> None:
    cert, key = tls_pair
    port = free_port()
    with run_server(data_dir, tls_cert=str(cert), tls_key=str(key)) as running:
        proc = start_postfix(postfix_base, port, running.port())
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
                refused = client.sendmail(
                    "someone@example.net",
                    ["alice@example.test"],
                    b"From: someone@example.net\r\nSubject: via postfix\r\n\r\nrelayed\r\n",
                )
                assert refused == {}
            deadline = time.monotonic() + 30
            while not running.messages() and time.monotonic() < deadline:
                time.sleep(0.1)
            messages = running.messages()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    log = (postfix_base / "maillog").read_text(errors="replace")
    assert len(messages) == 1, log[-3000:]
    delivered = messages[0]
    assert b"Subject: via postfix" in delivered
    assert b"Received: from peer.example.net ([127.0.0.1])" in delivered
    assert b"with ESMTPS id" in delivered  # Postfix used STARTTLS (security level encrypt)
    assert "status=sent" in log
