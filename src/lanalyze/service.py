"""The shape every component shares, and the errors a start can fail with.

A component is built from its validated config section and explicit dependencies (an inert
constructor: no sockets, threads or files yet), then ``await start()`` binds and spawns,
``await stop()`` flushes and releases. :class:`BindError` names the address and the config key so
the operator knows what to change.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from lanalyze.configbase import parse_listen
from lanalyze.errors import BindError


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def bind_socket(
    address: str,
    key: str,
    kind: socket.SocketKind = socket.SOCK_STREAM,
    *,
    reuse_port: bool = False,
    join: bool = False,
) -> socket.socket:
    """Create and bind a socket for ``HOST:PORT``, raising :class:`BindError` on failure.

    With ``reuse_port`` the kernel lets any process of the same user bind the same port and
    then splits the traffic among them: a second lanalyze started by mistake would silently
    take part of the flows or mail. So the first socket of a group (``join=False``) is only
    bound after a probe socket *without* SO_REUSEPORT could bind the address, i.e. nobody else
    holds it; the later sockets of our own group (more workers, acceptor processes) pass
    ``join=True``.
    """
    host, port = parse_listen(address)
    try:
        infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(address, key, str(exc)) from None
    family, socktype, proto, _, sockaddr = infos[0]
    if reuse_port and not join and port != 0:
        _probe_free(address, key, infos[0])
    sock = socket.socket(family, socktype, proto)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += holder_text(kind, sockaddr[1])
        raise BindError(address, key, reason) from None
    sock.setblocking(False)
    return sock


def _probe_free(address: str, key: str, info: tuple[Any, ...]) -> None:
    family, socktype, proto, _, sockaddr = info
    probe = socket.socket(family, socktype, proto)
    try:
        if socktype == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            port = int(str(sockaddr[1]))
            raise BindError(
                address,
                key,
                "already in use by another process"
                + holder_text(socket.SocketKind(socktype), port)
                + "; two servers must not share a listener (stop the other one, or give this "
                "one another address)",
            ) from None
        raise BindError(address, key, exc.strerror or str(exc)) from None
    finally:
        probe.close()


def holder_text(kind: socket.SocketKind, port: object) -> str:
    """`` (pid N: command)`` of a process holding a local ``port``, where /proc tells."""
    holder = port_holder(kind, int(str(port)))
    return f" (pid {holder[0]}: {holder[1]})" if holder else ""


def port_holder(kind: socket.SocketKind, port: int) -> tuple[int, str] | None:
    """The first process with a socket bound to local ``port``: Linux's /proc, best effort.

    Only processes we may inspect are found (all of them as root, our own otherwise).
    """
    tables = ("tcp", "tcp6") if kind == socket.SOCK_STREAM else ("udp", "udp6")
    inodes: set[str] = set()
    for table in tables:
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    raw = (entry / "cmdline").read_bytes()
                    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
                    return int(entry.name), command[:200]
        except OSError:
            continue
    return None


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed: several times the socket throughput of the default
    loop, which the SMTP acceptance target needs (docs/performance.md). Here, not in
    ``serve.py``, so a process running one component (an SMTP acceptor) needs no import of
    the module that builds them all."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
