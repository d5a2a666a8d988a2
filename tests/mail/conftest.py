"""Shared helpers of the mail tests: an in-process MailServer on loopback, in its own thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lanalyze.config import GeneralConfig
from lanalyze.mail.bounce import Bouncer
from lanalyze.mail.config import MailConfig
from lanalyze.mail.server import MailServer
from lanalyze.mail.tls import write_selfsigned
from lanalyze.mail.users import hash_password

PASSWORD = "correct horse"
_HASH: list[str] = []


def password_hash() -> str:
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    return _HASH[0]


def base_config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": ["127.0.0.1:0"],
        "domains": ["example.test"],
        "mailboxes": ["alice@example.test", "bob@example.test"],
        "aliases": {"postmaster@example.test": ["alice@example.test"]},
        "queue": {"retry_min": 0.2, "scan_interval": 0.3},
        "auth": {"enabled": False},  # no DNS in these tests; the auth helper tests its checks
        # One process: these tests look at one server's sessions, limits and counters
        # (test_smtp_acceptors.py runs several).
        "acceptors": 1,
        # Mail to other domains waits in hold/ as before issue 13, unless a test sends it
        # (tests/mail/test_outbound.py): no lookups of made-up domains on the real network.
        "outbound": {"enabled": False},
    }
    data.update(overrides)
    return data


class RunningServer:
    def __init__(self, server: MailServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop

    def port(self, kind: str = "mta") -> int:
        return self.server.addresses[kind][0][1]

    @property
    def maildirs(self) -> Path:
        return self.server.layout.maildirs

    def call(self, fn: Callable[[], Any]) -> Any:
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def messages(self, mailbox: str = "alice@example.test", folder: str = "") -> list[bytes]:
        new = self.maildirs / mailbox / folder / "new"
        if not new.is_dir():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def wait_delivered(
        self,
        count: int,
        mailbox: str = "alice@example.test",
        folder: str = "",
        timeout: float = 10.0,
    ) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(mailbox, folder)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{len(self.messages(mailbox, folder))} of {count} delivered")


@contextmanager
def run_server(
    data_dir: Path,
    *,
    bouncer: Bouncer | None = None,
    hostname: str = "mx.example.test",
    **overrides: Any,
) -> Iterator[RunningServer]:
    config = MailConfig.model_validate(base_config(**overrides))
    general = GeneralConfig(data_dir=data_dir, hostname=hostname)
    server = MailServer(config, general, bouncer=bouncer)
    loop = asyncio.new_event_loop()
    started: Future[None] = Future()

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            try:
                await server.start()
                started.set_result(None)
            except BaseException as exc:
                started.set_exception(exc)

        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.result(timeout=15)
    try:
        yield RunningServer(server, loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    write_selfsigned(cert, key, "mx.example.test", days=2)
    return cert, key


@pytest.fixture
def mail_server(data_dir: Path) -> Iterator[RunningServer]:
    with run_server(data_dir) as running:
        yield running


@pytest.fixture
def tls_server(data_dir: Path, tls_pair: tuple[Path, Path]) -> Iterator[RunningServer]:
    cert, key = tls_pair
    with run_server(
        data_dir,
        tls_cert=str(cert),
        tls_key=str(key),
        submission_listen=["127.0.0.1:0"],
        smtps_listen=["127.0.0.1:0"],
        users=[
            {"name": "alice", "password_hash": password_hash(), "addresses": ["alice@example.test"]}
        ],
    ) as running:
        yield running
