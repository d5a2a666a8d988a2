"""The report commands' side of the report socket: ask a running server, or say there is none.

Imports only the standard library, click and the protocol core: a report the server answers
costs this process an interpreter and click, not DuckDB, pyarrow, numpy or pydantic. Any
trouble (no socket, nobody listening, a server that cannot answer this one identically, a
protocol error) returns ``None`` and the command runs in-process, which also reports every
user error (a bad configuration, a missing directory) the way it always did.

Trust: the socket file must be a socket owned by our own user, and the process that accepts
the connection must run as our user (``SO_PEERCRED``); otherwise it is refused with a
warning on stderr (another user could otherwise feed us a report). The answer is parsed as
bounded, type-checked JSON (:mod:`.reportproto`).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

import click

from lanalyze.configpath import data_dir_hint, default_config_path
from lanalyze.flows.errors import ProtocolError
from lanalyze.flows.query.reportproto import (
    SOCKET_NAME,
    Answer,
    LineBuffer,
    Request,
    decode_answer,
    encode_request,
)

# The answer is the report's printed output; the server holds it to flows.query.socket_max_answer
# (64 MiB by default). This process trusts its own user's server, but still bounds what it reads.
MAX_ANSWER = 1 << 30
CONNECT_TIMEOUT = 2.0  # a server whose backlog is full: run the report here instead of waiting
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    pid, uid, _gid = _CRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    )
    return int(pid), int(uid)


def socket_path(data: Path | None, config_text: str | None) -> Path | None:
    """Where a server answering for this flow directory listens: in the data directory."""
    if data is None:
        data_dir = data_dir_hint(config_text)
        return None if data_dir is None else data_dir / SOCKET_NAME
    from lanalyze.flows.query.cli import flow_dir_of

    return flow_dir_of(data).parent / SOCKET_NAME


def _warn(message: str) -> None:
    click.echo(f"lanalyze: {message}; running the report in this process", err=True)


def _own_socket(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False  # no server (the usual case): nothing to say
    if not stat.S_ISSOCK(info.st_mode):
        _warn(f"{path} is not a socket")
        return False
    if info.st_uid != os.geteuid():
        _warn(f"not using {path}: owned by uid {info.st_uid}, not by this user")
        return False
    return True


def exchange(path: Path, request: Request) -> Answer | None:
    """Send one request and read one answer; ``None`` unless the server answered it."""
    if not _own_socket(path):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(str(path))
            _pid, uid = peer_credentials(sock)
            if uid != os.geteuid():
                _warn(f"not using {path}: its server runs as uid {uid}, not as this user")
                return None
            sock.settimeout(None)  # a long report is not an error
            sock.sendall(encode_request(request))
            reader = LineBuffer(MAX_ANSWER, "server")
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    reader.end_of_input()
                line = reader.feed(data)
                if line is not None:
                    break
        answer = decode_answer(line)
    except (OSError, ProtocolError):
        return None  # stale socket, server stopping, or its bug: the in-process path answers
    return answer if answer.status == "ok" else None


def ask(ctx: click.Context, params: dict[str, Any]) -> Answer | None:
    """Ask the server of this command's data directory to run it; ``None``: run it here."""
    command = ctx.command.name
    app = ctx.find_root().obj
    config_path: Path | None = getattr(app, "config_path", None) or default_config_path()
    config_text = None
    if config_path is not None:
        try:
            config_text = config_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None  # the in-process path reports it
    sent = dict(params)
    data = params.get("data")
    if data is not None:
        # The server has another working directory and maybe another home.
        data = Path(data).expanduser().absolute()
        sent["data"] = str(data)
    path = socket_path(data, config_text)
    if path is None or command is None:
        return None
    request = Request(
        command=command,
        params=sent,
        config_source=None if config_path is None else str(config_path),
        config_text=config_text,
    )
    return exchange(path, request)
