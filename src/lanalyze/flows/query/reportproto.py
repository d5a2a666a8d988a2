"""The report socket's protocol: one JSON request line, one JSON answer line (sans-IO core).

``lanalyze flows top|series|list|interfaces|status`` asks a running ``lanalyze serve`` over
``<data_dir>/lanalyze.sock`` (a Unix stream socket, like ``postqueue`` asks the running
master), so a report costs a small process and the server's warm query engine instead of
importing DuckDB, pyarrow and numpy every time. The shells are :mod:`.reportserver` and
:mod:`.reportclient`; this module only turns bytes into values and back.

A request names the report command and its parsed command-line parameters, and carries the
client's configuration file (name and text) so the server can tell whether it would answer
exactly as the client would in-process. The answer is what the command prints (stdout,
stderr, exit status), or ``fallback`` (this server cannot answer that one identically: the
client runs the report itself), or ``error`` naming whose fault it is: ``client`` (the
request was malformed, too big, or came from another user) or ``server`` (a bug of ours).

Trust: the peer is a process of the same user (the server checks ``SO_PEERCRED`` before it
reads a byte, the client checks the server's the same way), but the bytes are still parsed as
untrusted: a line is bounded in bytes before it is parsed, every field is type-checked, and
unknown commands, parameters and versions are refused rather than guessed at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from lanalyze.flows.errors import Fault, ProtocolError

VERSION = 1
SOCKET_NAME = "lanalyze.sock"
COMMANDS = frozenset({"top", "series", "list", "interfaces", "status"})
Scalar = str | int | bool | None


class LineBuffer:
    """Bytes in, one complete line out; a line longer than ``limit`` bytes is refused.

    ``fault`` is who is to blame for an overlong line: the peer that sends it.
    """

    def __init__(self, limit: int, fault: Fault) -> None:
        self.limit = limit
        self.fault: Fault = fault
        self._buffer = bytearray()

    def feed(self, data: bytes) -> bytes | None:
        """The line (without its newline) once it is complete, else ``None``."""
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > self.limit:
                raise ProtocolError(self.fault, f"message longer than {self.limit} bytes")
            return None
        if end > self.limit:
            raise ProtocolError(self.fault, f"message longer than {self.limit} bytes")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def end_of_input(self) -> None:
        """The peer closed before a whole line: always the sender's fault."""
        raise ProtocolError(self.fault, "connection closed before the end of the message")


@dataclass(frozen=True)
class Request:
    command: str
    params: dict[str, Scalar]
    config_source: str | None = None  # the file's name, for messages; None: built-in defaults
    config_text: str | None = None


@dataclass(frozen=True)
class Answer:
    status: Literal["ok", "fallback", "error"]
    stdout: str = ""
    stderr: str = ""
    exit: int = 0
    reason: str = ""  # fallback and error: why
    fault: Fault | None = None  # error: whose


def encode_request(request: Request) -> bytes:
    body = {
        "v": VERSION,
        "command": request.command,
        "params": request.params,
        "config": {"source": request.config_source, "text": request.config_text},
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _object(line: bytes, fault: Fault) -> dict[str, object]:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        raise ProtocolError(fault, "not a JSON line") from None
    if not isinstance(value, dict):
        raise ProtocolError(fault, "not a JSON object")
    if value.get("v") != VERSION:
        raise ProtocolError(fault, f"protocol version {value.get('v')!r}, expected {VERSION}")
    return value


def _optional_str(value: object, what: str, fault: Fault) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ProtocolError(fault, f"{what} must be a string")
    return value


def decode_request(line: bytes) -> Request:
    body = _object(line, "client")
    command = body.get("command")
    if not isinstance(command, str) or command not in COMMANDS:
        raise ProtocolError("client", f"unknown command {command!r}")
    params = body.get("params")
    if not isinstance(params, dict) or not all(
        isinstance(key, str) and (value is None or isinstance(value, str | int | bool))
        for key, value in params.items()
    ):
        raise ProtocolError("client", "params must map names to strings, integers or booleans")
    config = body.get("config")
    if not isinstance(config, dict):
        raise ProtocolError("client", "config must be an object")
    return Request(
        command=command,
        params=params,
        config_source=_optional_str(config.get("source"), "config.source", "client"),
        config_text=_optional_str(config.get("text"), "config.text", "client"),
    )


def encode_answer(answer: Answer) -> bytes:
    body: dict[str, object] = {"v": VERSION, "status": answer.status}
    if answer.status == "ok":
        body |= {"stdout": answer.stdout, "stderr": answer.stderr, "exit": answer.exit}
    else:
        body["reason"] = answer.reason
    if answer.status == "error":
        body["fault"] = answer.fault
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode_answer(line: bytes) -> Answer:
    body = _object(line, "server")
    status = body.get("status")
    reason = _optional_str(body.get("reason"), "reason", "server") or ""
    if status == "ok":
        stdout, stderr, code = body.get("stdout"), body.get("stderr"), body.get("exit")
        if not isinstance(stdout, str) or not isinstance(stderr, str):
            raise ProtocolError("server", "stdout and stderr must be strings")
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
            raise ProtocolError("server", "exit must be an integer 0-255")
        return Answer("ok", stdout=stdout, stderr=stderr, exit=code)
    if status == "fallback":
        return Answer("fallback", reason=reason)
    if status == "error":
        fault = body.get("fault")
        if fault not in ("client", "server"):
            raise ProtocolError("server", f"unknown fault {fault!r}")
        return Answer("error", reason=reason, fault="client" if fault == "client" else "server")
    raise ProtocolError("server", f"unknown status {status!r}")
