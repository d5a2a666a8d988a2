"""Reverse DNS names of the addresses a report shows, looked up at display time only.

A report is answered first; then the addresses it shows are looked up as PTR records
(``d.c.b.a.in-addr.arpa``, RFC 1035 §3.5; nibbles under ``ip6.arpa``, RFC 3596 §2.5) through
the one DNS layer of the project, :class:`lanalyze.mail.auth.dns.Resolver`: dnspython's async
resolver with a per-lookup lifetime, answers cached for their TTL (no-name answers for the
zone's negative TTL, RFC 2308 §5), bounded in entries and in bytes, one query per name in
flight. Names are never stored with flows: they change, and the reverse zone is the address
owner's to write.

The lookups run on one event loop in a daemon thread of the process, whoever asks (the
CLI, the report socket's worker threads, the console): a caller waits at most its budget
(``flows.query.names.budget`` for the console and API, ``cli_budget`` for the commands),
and an address not resolved by then is shown as the address. Its lookup goes on, so the
next view (the console's auto-refresh, the next command answered by ``lanalyze serve``)
finds it in the cache. Lookups in flight are bounded (``concurrency``) and so are those
waiting for a slot (``max_pending``): a report of 100,000 addresses queues no more.

Trust: a PTR answer is written by whoever controls the address's reverse zone -- for a
public address, anyone, including the sender of the traffic. A name is shown as text beside
its address, never used to look anything up, never verified against the forward zone (so it
is a claim, not an identity), and autoescaped by the console; dnspython writes unusual bytes
in it as ``\\DDD``. Lookups that fail are counted and logged (rate-limited, naming the
resolver), and the address is shown as it is.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import ipaddress
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from lanalyze.log import RateLimiter, get_logger
from lanalyze.metrics import REGISTRY

if TYPE_CHECKING:
    from lanalyze.flows.config import NamesConfig
    from lanalyze.mail.auth.dns import Resolver, TtlCache

log = get_logger("lanalyze.flows.names")
_failure_log = RateLimiter(interval=60, burst=3)

LOOKUPS = Counter(
    "lanalyze_flows_names_lookups_total",
    "Reverse DNS (PTR) lookups sent for addresses shown in reports, by result (name, "
    "no_name, failed).",
    ["result"],
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    "lanalyze_flows_names_cache_hits_total",
    "Addresses shown in reports whose name (or lack of one) came from the cache.",
    registry=REGISTRY,
)
TIMEOUTS = Counter(
    "lanalyze_flows_names_timeouts_total",
    "Addresses shown without a name because the view's budget ran out first (the lookup "
    "goes on for the next view).",
    registry=REGISTRY,
)
SKIPPED = Counter(
    "lanalyze_flows_names_skipped_total",
    "Addresses not looked up because flows.query.names.max_pending lookups were waiting.",
    registry=REGISTRY,
)

FAILED_TTL = 30.0
"""Seconds a failed lookup (timeout, SERVFAIL) is not tried again: the resolver's cache keeps
no errors, and a page refreshing every 30 s should not ask a broken server again each time."""


def ptr_name(text: str) -> str | None:
    """The PTR query name of an address as reports print it (None: not an address)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).reverse_pointer


class ReverseNames:
    """PTR lookups for report addresses; thread-safe, blocking each caller at most its budget.

    Inert until the first lookup, which starts the event loop thread; :meth:`close` stops it.
    """

    def __init__(self, config: NamesConfig) -> None:
        self.config = config
        self._resolver: Resolver | None = None
        self._failed: TtlCache[str, bool] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._pending: dict[str, asyncio.Task[str | None]] = {}
        self._slots: asyncio.Semaphore | None = None

    # --- the loop thread ------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                from lanalyze.mail.auth.dns import Resolver, TtlCache

                config = self.config
                self._resolver = Resolver(
                    config.resolver, config.timeout, config.cache_size, config.cache_memory
                )
                self._resolver.prepare()  # reads /etc/resolv.conf: here, not on the loop
                self._failed = TtlCache(config.cache_size, config.cache_memory // 8)
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="lanalyze-names", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        """Stop the loop thread (lookups in flight are dropped); a later lookup starts anew."""
        with self._start_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def cancel_all() -> None:
            tasks = list(self._pending.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._pending.clear()

        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
        self._slots = None

    # --- the lookups ----------------------------------------------------------------------

    def lookup(self, addresses: Iterable[str], budget: float) -> dict[str, str]:
        """Names of those ``addresses`` (as reports print them) known within ``budget`` s.

        Blocking: call it from a thread, not from an event loop (see :meth:`lookup_async`).
        Addresses without a name (none published, lookup failed or still running) are absent.
        """
        wanted = _wanted(addresses)
        if not wanted:
            return {}
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self._lookup(wanted, budget), loop)
        try:
            # The coroutine itself ends at the budget; the margin covers a busy loop only.
            return future.result(timeout=budget + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            TIMEOUTS.inc(len(wanted))
            return {}

    async def lookup_async(self, addresses: Iterable[str], budget: float) -> dict[str, str]:
        """:meth:`lookup` for a caller on another event loop (the console's)."""
        wanted = _wanted(addresses)
        if not wanted:
            return {}
        loop = await asyncio.to_thread(self._ensure_loop)
        future = asyncio.run_coroutine_threadsafe(self._lookup(wanted, budget), loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), budget + 1.0)
        except TimeoutError:
            TIMEOUTS.inc(len(wanted))
            return {}

    async def _lookup(self, wanted: dict[str, str], budget: float) -> dict[str, str]:
        assert self._resolver is not None and self._failed is not None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.concurrency)
        now = time.monotonic()
        found: dict[str, str] = {}
        waiting: dict[str, asyncio.Task[str | None]] = {}
        for text, qname in wanted.items():
            cached = self._resolver.cache.get((qname, "PTR"), now)
            if cached is not None or self._failed.get(qname, now) is not None:
                CACHE_HITS.inc()
                answer = cached[0] if cached is not None else None
                if answer is not None and answer.status == "ok" and answer.records:
                    found[text] = str(answer.records[0])
                continue
            task = self._pending.get(qname)
            if task is None:
                if len(self._pending) >= self.config.max_pending:
                    SKIPPED.inc()
                    continue
                task = asyncio.get_running_loop().create_task(self._one(qname), name=qname)
                self._pending[qname] = task
                task.add_done_callback(self._forget)
            waiting[text] = task
        if waiting:
            # asyncio.wait cancels nothing: the budget ends this view's wait, not the lookups.
            await asyncio.wait(set(waiting.values()), timeout=budget)
        for text, task in waiting.items():
            if not task.done():
                TIMEOUTS.inc()
            elif not task.cancelled() and task.result() is not None:
                found[text] = str(task.result())
        return found

    def _forget(self, task: asyncio.Task[str | None]) -> None:
        self._pending.pop(task.get_name(), None)

    async def _one(self, qname: str) -> str | None:
        assert self._resolver is not None and self._failed is not None and self._slots
        async with self._slots:
            answer = await self._resolver.query(qname, "PTR")
        if answer.status == "ok" and answer.records:
            LOOKUPS.labels("name").inc()
            return str(answer.records[0])
        if answer.status == "error":
            LOOKUPS.labels("failed").inc()
            self._failed.put(qname, True, time.monotonic() + FAILED_TTL, 64 + len(qname))
            resolver = self.config.resolver or "/etc/resolv.conf"
            suppressed = _failure_log.allow(resolver)
            if suppressed is not None:
                log.warning(
                    "flows.names.lookup_failed",
                    extra={
                        "resolver": resolver,
                        "query": qname,
                        "error": answer.error,
                        "suppressed": suppressed,
                    },
                )
            return None
        LOOKUPS.labels("no_name").inc()
        return None


def address_columns(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """The columns whose every value is an address as reports print it (a series' group
    may also be ``other``)."""
    found = []
    for column in columns:
        values = [row.get(column) for row in rows if row.get(column) != "other"]
        if not values or not all(isinstance(v, str) for v in values):
            continue
        try:
            for value in values:
                ipaddress.ip_address(str(value))
        except ValueError:
            continue
        found.append(column)
    return found


def add_names(
    rows: list[dict[str, Any]], columns: Sequence[str], budget: float, *, in_place: bool = False
) -> list[str]:
    """Look up the names of the address columns' values, waiting at most ``budget`` seconds.

    The one way a report's rows get names, for the CLI's ``--resolve`` and the API's
    ``resolve``: rows keep the address and get ``COLUMN_name`` beside it (None when
    unresolved); ``in_place`` (a text table) puts the name in place of the address instead.
    Returns the columns to show, each address column followed by its name column.
    """
    wanted = address_columns(rows, columns)
    if not wanted:
        return list(columns)
    found = shared().lookup((row[c] for row in rows for c in wanted), budget)
    if in_place:
        for row in rows:
            for column in wanted:
                row[column] = found.get(row[column], row[column])
        return list(columns)
    shown = []
    for column in columns:
        shown.append(column)
        if column in wanted:
            shown.append(f"{column}_name")
            for row in rows:
                row[f"{column}_name"] = found.get(row[column])
    return shown


def _wanted(addresses: Iterable[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for text in addresses:
        if text not in wanted:
            qname = ptr_name(text)
            if qname is not None:
                wanted[text] = qname.rstrip(".").lower()
    return wanted


_shared: dict[str, ReverseNames] = {}
_shared_lock = threading.Lock()


def configure(config: NamesConfig) -> None:
    """The ``[flows.query.names]`` section this process resolves with (applied with
    ``[flows.query]``, :func:`lanalyze.flows.query.engine.apply_config`); a changed section
    replaces the resolver (and its cache)."""
    with _shared_lock:
        old = _shared.get("names")
        if old is not None and old.config == config:
            return
        _shared["names"] = ReverseNames(config)
    if old is not None:
        old.close()


def reset() -> None:
    """Back to the section's defaults (the next :func:`shared` builds them)."""
    _close_shared()


@atexit.register
def _close_shared() -> None:
    # Lookups still running when a command ends are cancelled, not left to be destroyed
    # (asyncio would log each one as an error).
    with _shared_lock:
        names = _shared.pop("names", None)
    if names is not None:
        names.close()


def shared() -> ReverseNames:
    """This process's resolver (the section's defaults until :func:`configure`)."""
    with _shared_lock:
        names = _shared.get("names")
        if names is None:
            from lanalyze.flows.config import NamesConfig

            names = _shared["names"] = ReverseNames(NamesConfig())
        return names
