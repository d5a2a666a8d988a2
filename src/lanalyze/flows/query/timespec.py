"""Report time windows: ISO 8601 instants and relative forms (``-1h``, ``-30d``, ``now``).

Times without a zone are UTC. Relative forms count back from "now" in s, m, h, d or w.
Input is the user's: a time before 1970 (flows carry UNIX times; ``0001-01-01`` and
``-999999999d`` parse) or after year 9999 is refused here with a :class:`TimeError`, so the
planner and the ISO rendering only ever see times a flow could have.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from lanalyze.flows.errors import TimeError

_RELATIVE = re.compile(r"^-?(\d{1,9})\s*([smhdw])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_BUCKETS_MS = (
    10_000,
    60_000,
    300_000,
    900_000,
    3_600_000,
    86_400_000,  # no 6h: beyond ~8 days whole days, which the per-day rollups answer
)


MIN_MS = 0
"""1970-01-01T00:00Z: no flow is older (time_received is unsigned UNIX milliseconds)."""
MAX_MS = 253_402_300_800_000 - 1
"""The last millisecond of year 9999, the last an ISO 8601 date can name."""


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_time(text: str, now: int | None = None) -> int:
    """UTC milliseconds of ``text``: ISO 8601, epoch seconds, ``now`` or ``-1h``."""
    moment = _parse(text, now_ms() if now is None else now)
    if not MIN_MS <= moment <= MAX_MS:
        raise TimeError(
            f"time {text!r} is outside 1970-01-01 .. 9999-12-31 (flows carry UNIX times)"
        )
    return moment


def _parse(text: str, now: int) -> int:
    value = text.strip()
    if value.lower() == "now":
        return now
    match = _RELATIVE.match(value)
    if match:
        return now - int(match.group(1)) * _UNIT_MS[match.group(2)]
    if value.isdigit() and len(value) >= 9:
        return int(value) * 1000
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TimeError(
            f"cannot read time {text!r}: use ISO 8601 (2024-05-01T12:00Z) or -1h, -30d, now"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return int(moment.timestamp() * 1000)
    except (OverflowError, ValueError, OSError):  # year 1 with a zone east of UTC
        return MIN_MS - 1


def parse_duration(text: str) -> int:
    """Milliseconds of ``5m``, ``1h``, ``30s``."""
    match = _RELATIVE.match(text.strip())
    if not match or text.strip().startswith("-"):
        raise TimeError(f"cannot read duration {text!r}: use for example 10s, 5m, 1h, 1d")
    value = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if value <= 0:
        raise TimeError("a duration must be positive")
    return value


def window(since: str | None, until: str | None, default: str = "-1h") -> tuple[int, int]:
    now = now_ms()
    start = parse_time(since or default, now)
    end = parse_time(until, now) if until else now
    if end <= start:
        raise TimeError("--until must be after --since")
    return start, end


def auto_bucket(start: int, end: int, points: int = 200) -> int:
    """The smallest standard bucket that gives at most ``points`` buckets over the range."""
    for bucket in _BUCKETS_MS:
        if (end - start) / bucket <= points:
            return bucket
    return _BUCKETS_MS[-1]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
