"""UDP socket shell of the flow collector: bind, size the kernel buffer, drain in batches.

No protocol here (decoders are sans-IO, in :mod:`lanalyze.flows.decode`). Datagrams are read
with ``recvmmsg`` (:mod:`lanalyze.flows.recvmmsg`, up to 64 a system call) into preallocated
slots, or where the C library has none with ``recvfrom_into`` into one preallocated buffer,
many per wake-up, and handed on as zero-copy slices; the slices are valid until the next
:meth:`BatchReceiver.receive`.

The kernel's per-socket drop counter (datagrams discarded because the receive buffer was
full) is read from ``/proc/net/udp`` and ``/proc/net/udp6`` by socket inode: the sockets are
ours, the files the kernel's, and a line that does not parse is skipped.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy.typing as npt

from lanalyze.errors import BindError
from lanalyze.flows import recvmmsg
from lanalyze.service import bind_socket

Array = npt.NDArray[Any]
MAX_DATAGRAM = 65535
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for ``size`` bytes of receive buffer (past rmem_max when root); returns the result.

    Linux reports twice the requested size (bookkeeping overhead); we return what it reports.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def open_udp(
    address: str, key: str, *, receive_buffer: int, reuse_port: bool = False, join: bool = False
) -> socket.socket:
    """A bound, non-blocking UDP socket; :class:`BindError` names ``key`` on failure."""
    sock = bind_socket(address, key, socket.SOCK_DGRAM, reuse_port=reuse_port, join=join)
    try:
        set_receive_buffer(sock, receive_buffer)
    except OSError as exc:
        sock.close()
        raise BindError(address, key, f"cannot set receive buffer: {exc.strerror}") from None
    return sock


def bound_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Received:
    """One drain: datagram ``i`` came from ``sources[i]`` (address text), all at
    ``received_ms``. Read with ``recvmmsg``, the datagrams are also (and first) the rows of
    ``rows`` (``lengths[i]`` bytes of row ``i``) from ``exporters[exporter_codes[i]]``, and
    ``views`` and ``sources`` are only built when asked for."""

    def __init__(
        self,
        views: list[memoryview] | None = None,
        sources: list[str] | None = None,
        received_ms: int = 0,
        nbytes: int = 0,
        *,
        rows: Array | None = None,
        lengths: Array | None = None,
        exporter_codes: Array | None = None,
        exporters: list[str] | None = None,
    ) -> None:
        self._views = views
        self._sources = sources
        self.received_ms = received_ms
        self.nbytes = nbytes
        self.rows = rows
        self.lengths = lengths
        self.exporter_codes = exporter_codes
        self.exporters = exporters
        self.count = len(lengths) if lengths is not None else len(views or ())

    @property
    def views(self) -> list[memoryview]:
        if self._views is None:
            if self.rows is None or self.lengths is None:
                self._views = []
            else:
                rows = self.rows
                self._views = [
                    rows[index, :length].data for index, length in enumerate(self.lengths.tolist())
                ]
        return self._views

    @property
    def sources(self) -> list[str]:
        if self._sources is None:
            if self.exporter_codes is None or self.exporters is None:
                self._sources = []
            else:
                self._sources = list(map(self.exporters.__getitem__, self.exporter_codes.tolist()))
        return self._sources


class BatchReceiver:
    """Drains non-blocking sockets into one preallocated buffer, up to a batch at a time."""

    def __init__(
        self,
        socks: Iterable[socket.socket],
        *,
        buffer_bytes: int = 4 * 1024 * 1024,
        max_datagrams: int = 2048,
        multi: bool | None = None,
    ) -> None:
        """``multi``: use ``recvmmsg`` (None: when the C library has it)."""
        self.socks = list(socks)
        if buffer_bytes < 2 * MAX_DATAGRAM:
            raise ValueError("buffer_bytes must hold at least two maximum-size datagrams")
        self.max_datagrams = max_datagrams
        self.datagrams = 0
        self.receive_errors = 0
        self._first = 0
        function = recvmmsg.load() if multi is not False else None
        if multi and function is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        self._buffer_bytes = buffer_bytes
        self._multi = recvmmsg.MultiReceiver(max_datagrams, function) if function else None
        if self._multi is not None:
            self.limit = max_datagrams * MAX_DATAGRAM
            """A batch stops once this much of the buffer is used (the next may be max)."""
        else:
            self._use_recvfrom()

    def _use_recvfrom(self) -> None:
        self._multi = None
        self._buffer = bytearray(self._buffer_bytes)
        self._view = memoryview(self._buffer)
        self.limit = self._buffer_bytes - MAX_DATAGRAM

    @property
    def multi(self) -> bool:
        """Whether datagrams are read with ``recvmmsg``."""
        return self._multi is not None

    def receive(self) -> Received:
        """Read what is queued now, round-robin over the sockets, without blocking."""
        if self._multi is not None:
            return self._receive_multi(self._multi)
        received_ms = time.time_ns() // 1_000_000
        view = self._view
        limit = self.limit
        max_datagrams = self.max_datagrams
        offset = 0
        views: list[memoryview] = []
        sources: list[str] = []
        # Each socket is drained in turn; the first one rotates so none starves the others.
        self._first = (self._first + 1) % len(self.socks)
        for sock in self.socks[self._first :] + self.socks[: self._first]:
            recv = sock.recvfrom_into
            while offset <= limit and len(views) < max_datagrams:
                try:
                    nbytes, addr = recv(view[offset:], MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError as exc:
                    # ICMP errors queued on the socket and the like: not data, not fatal.
                    if exc.errno not in (errno.ECONNREFUSED, errno.EINTR):
                        self.receive_errors += 1
                    break
                views.append(view[offset : offset + nbytes])
                sources.append(addr[0])
                offset += nbytes
        self.datagrams += len(views)
        return Received(views, sources, received_ms, offset)

    def _receive_multi(self, multi: recvmmsg.MultiReceiver) -> Received:
        received_ms = time.time_ns() // 1_000_000
        multi.begin()
        wanted = self.max_datagrams
        count = 0
        self._first = (self._first + 1) % len(self.socks)
        for sock in self.socks[self._first :] + self.socks[: self._first]:
            fd = sock.fileno()
            while count < wanted:
                asked = min(recvmmsg.CALL_MESSAGES, wanted - count)
                got = multi.receive(fd, count, asked)
                if got < 0:
                    if -got == errno.ENOSYS and not count:
                        # The C library has it, the kernel (or a seccomp filter) not.
                        self._use_recvfrom()
                        return self.receive()
                    if -got not in (errno.EAGAIN, errno.ECONNREFUSED, errno.EINTR):
                        self.receive_errors += 1
                    break
                count += got
                if got < asked:
                    break  # the socket is empty: no extra call to hear EAGAIN
        if not count:
            return Received([], [], received_ms)
        lengths = multi.lengths(count)
        codes, exporters = multi.exporters(count)
        self.datagrams += count
        return Received(
            received_ms=received_ms,
            nbytes=int(lengths.sum()),
            rows=multi.rows,
            lengths=lengths,
            exporter_codes=codes,
            exporters=exporters,
        )


def socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def kernel_drops(inodes: Iterable[int], proc: Path = Path("/proc/net")) -> dict[int, int]:
    """The kernel's receive-drop count of each UDP socket inode (absent ones are left out)."""
    wanted = set(inodes)
    found: dict[int, int] = {}
    for name in ("udp", "udp6"):
        try:
            lines = (proc / name).read_bytes().decode("ascii", "replace").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if len(fields) < 13:
                continue
            try:
                inode = int(fields[9])
                if inode in wanted:
                    found[inode] = int(fields[12])
            except ValueError:
                continue
    return found
