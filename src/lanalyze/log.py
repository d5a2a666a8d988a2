"""Structured logging: one line per event, ``key=value`` pairs or one JSON object.

Events are named (``smtp.command_rejected``) and carry fields; :class:`RateLimiter` keeps a
flood of bad input from one peer from flooding the log while still counting what it hid.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, Literal

# color_message: uvicorn's ANSI-coloured copy of the message, noise in a log file.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def _kv_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n\t'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_kv_value(record.getMessage())}",
        ]
        parts += [f"{k}={_kv_value(v)}" for k, v in _fields(record).items()]
        if record.exc_info:
            parts.append(f"exc={_kv_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        data: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


def setup_logging(fmt: Literal["kv", "json"] = "kv", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs and per-request noise from the HTTP server are not events of ours.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    """Loggers are used as ``log.info("event.name", extra={"peer": ...})``."""
    return logging.getLogger(name)


class RateLimiter:
    """Allows ``burst`` events per ``interval`` seconds for each key (usually the peer).

    ``allow(key)`` returns how many events were suppressed since the last allowed one (>= 0)
    when the caller may log, or ``None`` when it must stay quiet. The number of keys is bounded
    so a spoofed-source flood cannot grow memory.
    """

    def __init__(self, interval: float = 10.0, burst: int = 5, max_keys: int = 4096) -> None:
        self.interval = interval
        self.burst = burst
        self.max_keys = max_keys
        self._state: dict[object, list[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: object, now: float | None = None) -> int | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            state = self._state.get(key)
            if state is None or now - state[0] >= self.interval:
                suppressed = int(state[2]) if state is not None else 0
                if len(self._state) >= self.max_keys and state is None:
                    self._state.pop(next(iter(self._state)))
                self._state[key] = [now, 1.0, 0.0]
                return suppressed
            if state[1] < self.burst:
                state[1] += 1
                return 0
            state[2] += 1
            return None
