"""Failed-attempt throttles: the console's login limit and SMTP AUTH's.

:class:`LoginLimiter` counts failures per key (a client address, a user name) in a sliding
window; :class:`ClientThrottle` applies one per client address and one over all clients.
Both are bounded in memory: at most ``max_keys`` keys, each holding at most ``attempts``
timestamps; the oldest key is forgotten first, so a flood of spoofed or rotating addresses
cannot grow them (the global count still sees it).

Trust: keys come from peers (addresses, user names); they are only dictionary keys here.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable


class LoginLimiter:
    """Failed logins per key (client address, user name) in a sliding window; bounded keys."""

    def __init__(self, attempts: int, window: float, max_keys: int = 10_000) -> None:
        self.attempts = attempts
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and now - failures[0] >= self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def retry_after(self, keys: Iterable[str], now: float | None = None) -> int:
        """Seconds until any of ``keys`` may try again (0: allowed now)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        with self._lock:
            for key in keys:
                failures = self._recent(key, now)
                if failures is not None and len(failures) >= self.attempts:
                    wait = max(wait, failures[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, keys: Iterable[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in keys:
                failures = self._failures.get(key)
                if failures is None:
                    if len(self._failures) >= self.max_keys:
                        self._failures.popitem(last=False)
                    failures = self._failures[key] = deque(maxlen=self.attempts)
                failures.append(now)
                self._failures.move_to_end(key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class ClientThrottle:
    """Failures per client address and over all clients, each in a sliding window.

    :meth:`blocked` names the limit reached (``"client"`` or ``"global"``) before any work is
    spent on an attempt; :meth:`failed` counts a failure against both. The global limit
    answers attackers spread over many addresses, at the price of refusing everyone while
    it lasts (the window is the longest that can be).
    """

    def __init__(
        self, per_client: int, total: int, window: float, max_clients: int = 10_000
    ) -> None:
        self.clients = LoginLimiter(per_client, window, max_keys=max_clients)
        self.all = LoginLimiter(total, window, max_keys=1)

    def blocked(self, client: str, now: float | None = None) -> str | None:
        if self.clients.retry_after((client,), now):
            return "client"
        if self.all.retry_after(("*",), now):
            return "global"
        return None

    def failed(self, client: str, now: float | None = None) -> None:
        self.clients.failed((client,), now)
        self.all.failed(("*",), now)
