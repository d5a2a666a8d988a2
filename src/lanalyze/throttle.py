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

GLOBAL_KEY = "*"


class LoginLimiter:
    """Login attempts per key in a sliding window; bounded keys.

    An attempt is counted *before* its password is verified (:meth:`acquire` checks and
    records under one lock), so concurrent guesses cannot all pass a check made before any of
    them failed. A success takes its attempt back (:meth:`succeeded`). Keys are chosen by the
    login page: the (address, user) pair and the address get ``attempts`` each, and
    :data:`GLOBAL_KEY` (every client not known to this console) gets ``global_attempts``, which
    caps the argon2 work a distributed guesser can cause. No key is a user name alone, so
    guessing from elsewhere never locks a user out of their own address; and addresses that
    logged in within ``trust_for`` seconds are exempt from the global cap, so a flood from
    many addresses does not lock the administrator out either.
    """

    def __init__(
        self,
        attempts: int,
        window: float,
        max_keys: int = 10_000,
        *,
        global_attempts: int | None = None,
        trust_for: float = 0.0,
    ) -> None:
        self.attempts = attempts
        self.window = window
        self.max_keys = max_keys
        self.global_attempts = global_attempts if global_attempts is not None else attempts
        self.trust_for = trust_for
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._known: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def _limit(self, key: str) -> int:
        return self.global_attempts if key == GLOBAL_KEY else self.attempts

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

    def _wait(self, keys: Iterable[str], now: float) -> tuple[float, str | None]:
        wait, blocking = 0.0, None
        for key in keys:
            failures = self._recent(key, now)
            if failures is not None and len(failures) >= self._limit(key):
                key_wait = failures[0] + self.window - now
                if key_wait > wait:
                    wait, blocking = key_wait, key
        return wait, blocking

    def _record(self, keys: Iterable[str], now: float) -> None:
        for key in keys:
            failures = self._failures.get(key)
            if failures is None:
                if len(self._failures) >= self.max_keys:
                    self._failures.popitem(last=False)
                failures = self._failures[key] = deque(maxlen=self._limit(key))
            failures.append(now)
            self._failures.move_to_end(key)

    def retry_after(self, keys: Iterable[str], now: float | None = None) -> int:
        """Seconds until any of ``keys`` may try again (0: allowed now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            wait, _ = self._wait(keys, now)
        return int(wait) + 1 if wait > 0 else 0

    def acquire(self, keys: list[str], now: float | None = None) -> tuple[int, str | None]:
        """Count an attempt on every key if none is over its limit.

        Returns ``(0, None)`` when counted, else the seconds to wait and the key that is full.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            wait, blocking = self._wait(keys, now)
            if wait > 0:
                return int(wait) + 1, blocking
            self._record(keys, now)
        return 0, None

    def succeeded(self, keys: list[str], now: float) -> None:
        """Take back the attempt :meth:`acquire` counted at ``now``: it was not a failure."""
        with self._lock:
            for key in keys:
                failures = self._failures.get(key)
                if failures is not None and now in failures:
                    failures.remove(now)

    def failed(self, keys: Iterable[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._record(keys, now)

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def trust(self, address: str, now: float | None = None) -> None:
        """``address`` just logged in: exempt it from the global cap for ``trust_for`` s."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._known[address] = now + self.trust_for
            self._known.move_to_end(address)
            while len(self._known) > self.max_keys:
                self._known.popitem(last=False)

    def trusted(self, address: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            until = self._known.get(address)
            if until is not None and until <= now:
                del self._known[address]
                until = None
        return until is not None

    def keys(self, address: str, user: str) -> list[str]:
        """The keys a login attempt by ``user`` from ``address`` counts against."""
        keys = [f"pair:{address}|{user}", f"addr:{address}"]
        if not self.trusted(address):
            keys.append(GLOBAL_KEY)
        return keys


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
        if self.all.retry_after((GLOBAL_KEY,), now):
            return "global"
        return None

    def failed(self, client: str, now: float | None = None) -> None:
        self.clients.failed((client,), now)
        self.all.failed((GLOBAL_KEY,), now)
