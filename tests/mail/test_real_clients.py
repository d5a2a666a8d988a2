"""Real SMTP clients against the server: swaks (plain, pipelining, STARTTLS+AUTH, implicit
TLS) and Postfix's smtp-source (new connection per message and reused)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.mail.conftest import PASSWORD, RunningServer, password_hash, run_server


@pytest.fixture
def server(data_dir: Path, tls_pair: tuple[Path, Path]) -> Iterator[RunningServer]:
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


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("swaks")
    return subprocess.run(
        [tool, "--timeout", "20", *args], capture_output=True, text=True, timeout=60
    )


def test_swaks_plain_and_pipelined(server: RunningServer) -> None:
    base = [
        "--server",
        f"127.0.0.1:{server.port()}",
        "--from",
        "x@remote.test",
        "--to",
        "alice@example.test",
    ]
    result = swaks(*base, "--header", "Subject: from swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 Ok: queued as" in result.stdout
    result = swaks(*base, "--pipeline")
    assert result.returncode == 0, result.stdout + result.stderr
    messages = server.wait_delivered(2)
    assert any(b"Subject: from swaks" in m for m in messages)


def test_swaks_starttls_auth_on_submission(server: RunningServer) -> None:
    result = swaks(
        "--server",
        f"127.0.0.1:{server.port('submission')}",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
        "--from",
        "alice@example.test",
        "--to",
        "bob@example.test",
        "--header",
        "From: alice@example.test",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout
    server.wait_delivered(1, mailbox="bob@example.test")


def test_swaks_implicit_tls_auth_login(server: RunningServer) -> None:
    result = swaks(
        "--server",
        f"127.0.0.1:{server.port('smtps')}",
        "--tls-on-connect",
        "--auth",
        "LOGIN",
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
        "--from",
        "alice@example.test",
        "--to",
        "alice@example.test",
        "--header",
        "From: alice@example.test",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    server.wait_delivered(1)


@pytest.mark.parametrize("reuse", [False, True])
def test_smtp_source(server: RunningServer, reuse: bool) -> None:
    tool = require_tool("smtp-source")
    args = [
        tool,
        "-s",
        "5",
        "-m",
        "60",
        "-l",
        "4096",
        "-f",
        "x@remote.test",
        "-t",
        "alice@example.test",
    ]
    if reuse:
        args.append("-d")
    result = subprocess.run(
        [*args, f"127.0.0.1:{server.port()}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    messages = server.wait_delivered(60)
    assert len(messages) == 60
    assert all(m.startswith(b"Return-Path: <x@remote.test>\n") for m in messages)
