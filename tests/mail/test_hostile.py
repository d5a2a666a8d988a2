"""Hostile and broken clients against the running server over real sockets."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanalyze.metrics import REGISTRY
from tests.mail.conftest import RunningServer, run_server

_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Raw:
    """A byte-exact SMTP client: send raw bytes, read replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        _OPEN.append(self.sock)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int = 1) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < count:
            line = self._line()
            if line is None:
                break
            if line[3:4] != b"-":
                out.append(line)
        return out

    def _line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def closed(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def dialogue(port: int, data: bytes, count: int) -> list[bytes]:
    raw = Raw(port)
    try:
        raw.replies(1)
        raw.send(data)
        return raw.replies(count)
    finally:
        raw.close()


ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"


@pytest.mark.parametrize(
    "variant", [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r\r\n", b"\r\n.\r"]
)
def test_smuggling_variants_end_the_session(mail_server: RunningServer, variant: bytes) -> None:
    smuggled = (
        b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        b"Subject: forged\r\n\r\nsmuggled\r\n.\r\n"
    )
    raw = Raw(mail_server.port())
    raw.replies(1)
    raw.send(ENVELOPE + b"Subject: first\r\n\r\nbody" + variant + smuggled + b"QUIT\r\n")
    replies = raw.replies(6)
    assert [r[:3] for r in replies[:4]] == [b"250", b"250", b"250", b"354"]
    assert replies[4].startswith(b"521 5.5.2")
    assert raw.closed()
    time.sleep(0.3)
    assert mail_server.messages() == []


def test_long_lines_get_500(mail_server: RunningServer) -> None:
    replies = dialogue(mail_server.port(), b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n", 2)
    assert replies[0].startswith(b"500 5.5.2") and replies[1].startswith(b"250")


def test_out_of_order_and_error_limit(data_dir: Path) -> None:
    with run_server(data_dir, hard_error_limit=4) as running:
        raw = Raw(running.port())
        raw.replies(1)
        raw.send(b"RCPT TO:<alice@example.test>\r\nDATA\r\nHELO c\r\nDATA\r\nBOGUS\r\nX\r\n")
        replies = raw.replies(7)
        assert [r[:3] for r in replies] == [b"503", b"503", b"250", b"503", b"502", b"421"]
        assert raw.closed()


def test_relay_tricks_are_denied(mail_server: RunningServer) -> None:
    tricks = [
        b"someone@elsewhere.test",
        b"alice%elsewhere.test@example.test",
        b"elsewhere.test!alice@example.test",
        b"@elsewhere.test:alice@example.test",
        b'"alice@elsewhere.test"@example.test',
        b"alice@[127.0.0.1]",
        b"alice@example.test.elsewhere.test",
    ]
    commands = b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\n" + b"".join(
        b"RCPT TO:<" + t + b">\r\n" for t in tricks
    )
    replies = dialogue(mail_server.port(), commands + b"RCPT TO:<nobody@example.test>\r\n", 10)
    for trick, reply in zip(tricks, replies[2:9], strict=True):
        assert reply.startswith(b"554 5.7.1 Relay access denied"), (trick, reply)
    assert replies[9].startswith(b"550 5.1.1")


def test_limits_recipients_and_size(data_dir: Path) -> None:
    with run_server(data_dir, max_recipients=2, max_message_size=4096) as running:
        rcpt = b"RCPT TO:<alice@example.test>\r\n"
        replies = dialogue(
            running.port(),
            b"EHLO c\r\nMAIL FROM:<a@remote.test> SIZE=5000\r\nMAIL FROM:<a@remote.test>\r\n"
            + rcpt * 3
            + b"DATA\r\n"
            + (b"y" * 100 + b"\r\n") * 60
            + b".\r\nNOOP\r\n",
            9,
        )
        assert [r[:3] for r in replies] == [
            b"250",
            b"552",
            b"250",
            b"250",
            b"250",
            b"452",
            b"354",
            b"552",
            b"250",
        ]
        assert replies[5].startswith(b"452 4.5.3") and replies[7].startswith(b"552 5.3.4")


def test_idle_and_slow_clients_time_out(data_dir: Path) -> None:
    with run_server(data_dir, command_timeout=1.0, data_timeout=1.0) as running:
        idle = Raw(running.port())
        slow = Raw(running.port())
        idle.replies(1)
        slow.replies(1)
        started = time.monotonic()
        for _ in range(12):  # one byte every 0.25 s never completes a command
            try:
                slow.send(b"N")
            except OSError:
                break
            time.sleep(0.25)
        assert idle.replies(1)[0].startswith(b"421 4.4.2")
        assert idle.closed()
        assert slow.replies(1)[0].startswith(b"421 4.4.2")
        assert time.monotonic() - started < 6


def test_connection_limits(data_dir: Path) -> None:
    with run_server(data_dir, max_connections_per_client=2, max_connections=3) as running:
        first, second = Raw(running.port()), Raw(running.port())
        assert first.replies(1)[0].startswith(b"220")
        assert second.replies(1)[0].startswith(b"220")
        third = Raw(running.port())
        assert third.replies(1)[0].startswith(b"421 4.7.0")
        assert third.closed()
        first.close()
        time.sleep(0.2)
        fourth = Raw(running.port())
        assert fourth.replies(1)[0].startswith(b"220")


def test_plaintext_pipelined_after_starttls_is_discarded(
    data_dir: Path, tls_pair: tuple[Path, Path]
) -> None:
    cert, key = tls_pair
    with run_server(data_dir, tls_cert=str(cert), tls_key=str(key)) as running:
        raw = Raw(running.port())
        raw.replies(1)
        raw.send(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@remote.test>\r\n")
        assert raw.replies(2)[1].startswith(b"220 2.0.0")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        tls = context.wrap_socket(raw.sock, server_hostname="mx.example.test")
        _OPEN.append(tls)
        tls.sendall(b"EHLO c\r\nRCPT TO:<alice@example.test>\r\n")
        data = b""
        while data.count(b"\r\n") < 2 or b"\r\n5" not in b"\r\n" + data:
            data += tls.recv(4096)
        assert b"503 5.5.1 Error: need MAIL command" in data  # the injected MAIL never ran
        tls.close()


def test_rejections_are_counted_on_metrics(mail_server: RunningServer) -> None:
    dialogue(mail_server.port(), b"EHLO c\r\nMAIL FROM:<a@r.test>\r\nRCPT TO:<x@far.test>\r\n", 3)
    time.sleep(0.2)
    value = REGISTRY.get_sample_value(
        "lanalyze_smtp_rejections_total", {"listener": "mta", "reason": "relay_denied"}
    )
    assert value is not None and value >= 1
    assert REGISTRY.get_sample_value(
        "lanalyze_smtp_commands_total", {"listener": "mta", "command": "EHLO"}
    )


def _stalled(running: RunningServer) -> list[tuple[int, bool]]:
    """(bytes buffered for the client, reading paused) of each open connection."""

    def look() -> list[tuple[int, bool]]:
        return [
            (c.transport.get_write_buffer_size(), c._write_paused)
            for c in running.server._connections
            if c.transport is not None
        ]

    return running.call(look)


def test_a_client_that_never_reads_is_bounded_then_dropped(data_dir: Path) -> None:
    """Issue 12.2: pipelined commands from a client that never reads its replies. The server
    stops reading it once its unread replies reach mail.write_buffer (so the client's send
    blocks: what it could push is what the kernel buffers hold), keeps at most that plus one
    batch of replies, and drops it after mail.write_timeout even though replies keep being
    produced. Before: the server read everything and buffered every reply (80 MiB in 4 s)."""
    write_buffer = 16 * 1024
    timeouts = ("lanalyze_smtp_rejections_total", {"listener": "mta", "reason": "timeout"})
    with run_server(data_dir, write_buffer=write_buffer, write_timeout=5.0) as running:
        before = REGISTRY.get_sample_value(*timeouts) or 0.0
        sock = socket.socket()
        _OPEN.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", running.port()))
        sock.settimeout(0.2)
        chunk = b"HELP\r\n" * 10_000
        sent = 0
        state: list[tuple[int, bool]] = []
        # Send until the server says it stopped reading us (a busy machine may only be slow
        # to read, which also blocks the send for a while).
        while sent < 8 * 1024 * 1024:  # the old server took all of it (and 130 MB of replies)
            try:
                sent += sock.send(chunk)
            except TimeoutError:
                state = _stalled(running)
                if state and state[0][1]:
                    break
        assert sent < 8 * 1024 * 1024, "the server kept reading a client that does not read"
        [(buffered, paused)] = state
        assert paused
        # The high-water mark plus at most one batch of replies (64 HELP replies < 8 KiB).
        assert buffered <= write_buffer + 8 * 1024
        # Dropped after write_timeout although the client is still connected and sending.
        deadline = time.monotonic() + 60
        while _stalled(running) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _stalled(running) == []
    assert (REGISTRY.get_sample_value(*timeouts) or 0.0) == before + 1
    assert REGISTRY.get_sample_value("lanalyze_smtp_write_stalls_total", {"listener": "mta"})


def test_a_client_that_reads_late_gets_every_reply(data_dir: Path) -> None:
    """Flow control loses nothing: a client that pipelines far beyond the write buffer and
    only then reads gets every reply, in order."""
    with run_server(data_dir, write_buffer=4096) as running:
        raw = Raw(running.port())
        raw.replies(1)
        count = 20_000
        sender = threading.Thread(target=raw.send, args=(b"NOOP\r\n" * count + b"QUIT\r\n",))
        sender.start()
        replies = raw.replies(count + 1)
        sender.join()
    assert len(replies) == count + 1
    assert all(r.startswith(b"250 ") for r in replies[:count]) and replies[-1].startswith(b"221")
