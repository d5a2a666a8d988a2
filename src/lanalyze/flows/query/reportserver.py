"""The report socket of ``lanalyze serve``: runs the report commands for their process.

``<data_dir>/lanalyze.sock`` (Unix stream socket, mode 0600 in the 0700 data directory): a
report command connects, sends one request line and reads one answer line
(:mod:`.reportproto`). The server runs the very click command the client would have run
(:mod:`.cli`, with ``--no-server``), in a worker thread with this process's already imported and
warmed query engine, and sends back what it printed; the client prints those bytes. So both
paths print the same output by construction, and the command-line answer costs a small
Python process instead of importing DuckDB, pyarrow and numpy.

It answers only what it would answer exactly as the client would: the client's configuration
(sent as text) must validate, name this data directory and carry the same ``[flows.query]``
section; the flow directory asked for must be this one; and a usage error, an internal error
or an oversized output are left to the client (``fallback``), which then prints them itself.

Trust: only processes of our own user get an answer (``SO_PEERCRED`` is checked before a byte
is read; the data directory is private anyway). Their bytes are still bounded and
type-checked (``flows.query.socket_max_request``, 10 s to send the request,
``flows.query.socket_clients`` connections at once); a bad request is counted, logged
rate-limited naming the peer's pid and uid, and answered with an error that says it is the
client's fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import click
from prometheus_client import Counter, Gauge

from lanalyze.flows.config import QueryConfig
from lanalyze.flows.errors import ProtocolError
from lanalyze.flows.query import cli as report_cli
from lanalyze.flows.query.reportclient import peer_credentials
from lanalyze.flows.query.reportproto import (
    SOCKET_NAME,
    Answer,
    LineBuffer,
    Request,
    decode_request,
    encode_answer,
)
from lanalyze.flows.store.paths import flow_dir
from lanalyze.log import RateLimiter, get_logger
from lanalyze.metrics import REGISTRY

log = get_logger(__name__)
_log_limit = RateLimiter(interval=60, burst=5)

REQUEST_TIMEOUT = 10.0  # seconds to send the one request line
COMMANDS: dict[str, click.Command] = {
    "top": report_cli.top,
    "series": report_cli.series,
    "list": report_cli.list_command,
    "interfaces": report_cli.interfaces,
    "status": report_cli.status,
}

REQUESTS = Counter(
    "lanalyze_report_socket_requests_total",
    "Report-socket requests by command and outcome (ok: answered; config_differs, "
    "other_data_dir, usage_error, too_large, internal_error: left to the client to run).",
    ["command", "outcome"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "lanalyze_report_socket_errors_total",
    "Report-socket protocol errors by whose fault (client: malformed, oversized or slow "
    "request, other user; server: ours).",
    ["fault"],
    registry=REGISTRY,
)
REFUSED = Counter(
    "lanalyze_report_socket_refused_total",
    "Report-socket connections refused before reading, by reason (uid: another user; busy: "
    "flows.query.socket_clients reached).",
    ["reason"],
    registry=REGISTRY,
)
ACTIVE = Gauge(
    "lanalyze_report_socket_connections",
    "Report-socket connections being served.",
    registry=REGISTRY,
)


class _App:
    """What the report commands read from the root context: the (client's) configuration."""

    def __init__(self, config: Any) -> None:
        self.config = config


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class ReportSocket:
    """The component: inert until :meth:`start`; ``config`` is this process's ``[flows.query]``."""

    name = "report-socket"

    def __init__(self, config: QueryConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.path = data_dir / SOCKET_NAME
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._active = 0

    async def start(self) -> None:
        from lanalyze.datadir import make_private_dirs

        make_private_dirs(self.data_dir)
        # Bind under a temporary name, make it 0600, then rename: the socket is never
        # reachable with the umask's mode. The data directory lock (instance.py) makes this
        # process the only server here, so an existing socket is a leftover and is replaced.
        temporary = self.data_dir / f".{SOCKET_NAME}.{os.getpid()}.tmp"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            sock.bind(str(temporary))
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            # The socket only saves the report commands their start-up; without it they
            # still work (a data directory path too long for a Unix socket, say).
            sock.close()
            with contextlib.suppress(OSError):
                temporary.unlink()
            log.warning(
                "reports.socket_unavailable", extra={"path": str(self.path), "error": str(exc)}
            )
            return
        info = os.stat(self.path)
        self._inode = (info.st_dev, info.st_ino)
        self._server = await asyncio.start_unix_server(self._handle, sock=sock)
        log.info("reports.socket_listening", extra={"path": str(self.path)})

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        pid, uid = peer_credentials(sock)
        try:
            if uid != os.geteuid():
                REFUSED.labels("uid").inc()
                self._log_bad(pid, uid, "client", f"uid {uid} is not the server's user")
                writer.write(
                    encode_answer(
                        Answer("error", reason="refused: not the server's user", fault="client")
                    )
                )
                return
            if self._active >= self.config.socket_clients:
                REFUSED.labels("busy").inc()
                writer.write(encode_answer(Answer("fallback", reason="busy")))
                return
            self._active += 1
            ACTIVE.inc()
            try:
                writer.write(encode_answer(await self._serve(reader, pid, uid)))
            finally:
                self._active -= 1
                ACTIVE.dec()
        finally:
            with contextlib.suppress(OSError):
                await writer.drain()
                writer.close()
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, pid: int, uid: int) -> Answer:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await _read_line(
                    reader, LineBuffer(self.config.socket_max_request, "client")
                )
            request = decode_request(line)
        except TimeoutError:
            return self._error(pid, uid, ProtocolError("client", "request not sent in time"))
        except ProtocolError as exc:
            return self._error(pid, uid, exc)
        except OSError:
            return Answer("fallback", reason="connection lost")
        answer = await asyncio.to_thread(self.run, request)
        return answer

    def _error(self, pid: int, uid: int, exc: ProtocolError) -> Answer:
        ERRORS.labels(exc.fault).inc()
        self._log_bad(pid, uid, exc.fault, str(exc))
        return Answer("error", reason=str(exc), fault=exc.fault)

    def _log_bad(self, pid: int, uid: int, fault: str, reason: str) -> None:
        suppressed = _log_limit.allow(uid)
        if suppressed is not None:
            log.warning(
                "reports.socket_bad_request",
                extra={
                    "peer_pid": pid,
                    "peer_uid": uid,
                    "fault": fault,
                    "reason": reason,
                    "suppressed": suppressed,
                },
            )

    def run(self, request: Request) -> Answer:
        """Run one request's command as the client would (in a worker thread)."""
        outcome, answer = self._run(request)
        REQUESTS.labels(request.command, outcome).inc()
        return answer

    def _run(self, request: Request) -> tuple[str, Answer]:
        from lanalyze.config import Config, parse_config
        from lanalyze.errors import ConfigError

        try:
            if request.config_text is None:
                config = Config()
            else:
                config = parse_config(request.config_text, request.config_source or "<config>")
        except ConfigError:
            return "config_differs", Answer("fallback", reason="configuration error")
        if config.flows.deprecated_keys() or config.flows.query != self.config:
            # Warnings to print, or other query settings: only the client answers as it would.
            return "config_differs", Answer("fallback", reason="other [flows.query]")
        command = COMMANDS[request.command]
        ctx = click.Context(command, info_name=request.command, obj=_App(config))
        try:
            params = self._params(command, ctx, request.params)
        except ProtocolError as exc:
            ERRORS.labels(exc.fault).inc()
            return "usage_error", Answer("error", reason=str(exc), fault=exc.fault)
        data = params["data"]
        asked = (
            report_cli.flow_dir_of(data) if data is not None else flow_dir(config.general.data_path)
        )
        if not _same_dir(asked, flow_dir(self.data_dir)):
            return "other_data_dir", Answer("fallback", reason="not this server's data directory")
        sink: list[tuple[bool, str]] = []
        token = report_cli.captured.set(sink)
        try:
            with ctx:
                ctx.invoke(command.callback, **params)  # type: ignore[arg-type]
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.ClickException:
            return "usage_error", Answer("fallback", reason="usage error")
        except Exception:
            # Ours; the client runs the command itself and shows the same failure.
            log.exception("reports.socket_internal_error", extra={"command": request.command})
            ERRORS.labels("server").inc()
            return "internal_error", Answer("fallback", reason="internal error")
        finally:
            report_cli.captured.reset(token)
        if sum(len(text) for _, text in sink) > self.config.socket_max_answer:
            return "too_large", Answer("fallback", reason="answer too large")
        stdout = "".join(text for err, text in sink if not err)
        stderr = "".join(text for err, text in sink if err)
        return "ok", Answer("ok", stdout=stdout, stderr=stderr, exit=code)

    @staticmethod
    def _params(command: click.Command, ctx: click.Context, sent: dict[str, Any]) -> dict[str, Any]:
        """The client's parsed parameters, typed again by the command's own parameters."""
        expected = {
            str(param.name): param
            for param in command.params
            if param.expose_value and param.name != "no_server"
        }
        if set(sent) != set(expected):
            wrong = sorted(set(sent) ^ set(expected))
            raise ProtocolError("client", f"parameters do not match the command: {wrong}")
        params: dict[str, Any] = {"no_server": True}
        for name, param in expected.items():
            value = sent[name]
            try:
                params[name] = None if value is None else param.type_cast_value(ctx, value)
            except click.BadParameter as exc:
                raise ProtocolError("client", f"{name}: {exc.message}") from None
        if params["data"] is not None and not Path(params["data"]).is_absolute():
            raise ProtocolError("client", "data must be an absolute path")
        return params


async def _read_line(reader: asyncio.StreamReader, buffer: LineBuffer) -> bytes:
    while True:
        data = await reader.read(65536)
        if not data:
            buffer.end_of_input()
        line = buffer.feed(data)
        if line is not None:
            return line
