"""The shape every component shares, and the errors a start can fail with.

A component is built from its validated config section and explicit dependencies (an inert
constructor: no sockets, threads or files yet), then ``await start()`` binds and spawns,
``await stop()`` flushes and releases. :class:`BindError` names the address and the config key so
the operator knows what to change.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any, Protocol

from lanalyze.configbase import parse_listen


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class StartError(Exception):
    """A component could not start for a reason the operator can fix."""


class BindError(StartError):
    def __init__(self, address: str, key: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address} (config key {key}): {reason}")
        self.address = address
        self.key = key


def bind_socket(
    address: str,
    key: str,
    kind: socket.SocketKind = socket.SOCK_STREAM,
    *,
    reuse_port: bool = False,
) -> socket.socket:
    """Create and bind a socket for ``HOST:PORT``, raising :class:`BindError` on failure."""
    host, port = parse_listen(address)
    try:
        infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(address, key, str(exc)) from None
    family, socktype, proto, _, sockaddr = infos[0]
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
        raise BindError(address, key, exc.strerror or str(exc)) from None
    sock.setblocking(False)
    return sock


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
