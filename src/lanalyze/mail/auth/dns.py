"""Asynchronous DNS for the sender checks, and the bridge that feeds synchronous libraries.

The lookups use dnspython's asyncio resolver with a per-query lifetime, against the
configured server (``mail.auth.resolver``) or the system's ``/etc/resolv.conf``.

pyspf and dkimpy do their own, blocking DNS. Rather than block a thread per lookup, they run
against :class:`Prefetched`, a read-only view of answers fetched so far: a name that is not
there yet raises :class:`LookupNeeded`; :func:`run_with_lookups` then fetches it
asynchronously and runs the (cheap, deterministic) library call again. A run that ends without
a miss is the answer. This keeps the libraries' logic (limits, CNAMEs, key parsing) while no
DNS wait ever blocks the event loop or a worker thread; the price is re-running the library
once per round of lookups, which is microseconds for SPF and a header parse for DKIM/ARC.

Answers are cached across messages (:class:`TtlCache`), each for its TTL (negative ones for
the zone's negative TTL, RFC 2308 §5), bounded in entries and in bytes; a name many sessions
ask for at once is queried once. A cached answer costs a dictionary look-up where dnspython's
resolver, even answering from its own cache, cost ~0.25 ms of Python per query: the checks of
one message make four or more. :func:`consulted` lets a caller see which answers, with their
expiry, one piece of work relied on (the authenticator's SPF result cache).

Trust: answers come from the network and are treated as untrusted bytes by the libraries;
names come from the message (untrusted) and are validated before they are queried.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from lanalyze.configbase import parse_listen
from lanalyze.mail.errors import LookupBudgetExceeded, LookupNeeded

Status = Literal["ok", "nxdomain", "nodata", "error"]

INLINE_LIMIT = 65_536
"""Messages up to this size are verified on the event loop: hashing them and one public-key
operation take well under a millisecond, less than handing them to a thread and back."""
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Answer:
    """One DNS answer, reduced to what the checks need.

    ``records`` holds, per type: TXT -> the record's strings joined (bytes); A/AAAA -> the
    address text; MX -> ``(preference, exchange)``; PTR -> the target without the final dot.
    """

    status: Status
    records: tuple[object, ...] = ()
    error: str = ""


def normalise_name(name: str | bytes) -> str:
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    return text.strip().rstrip(".").lower()


class Prefetched:
    """The answers fetched so far for one check; read by library code in a worker thread."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Answer] = {}
        self.missing: list[tuple[str, str]] = []

    def get(self, name: str | bytes, rdtype: str) -> Answer:
        key = (normalise_name(name), rdtype)
        answer = self.answers.get(key)
        if answer is None:
            # Remember the miss too: some library code swallows every exception (pyspf's
            # exp= handling), and the runner must still fetch what was asked for.
            self.missing.append(key)
            raise LookupNeeded(*key)
        return answer


_ENTRY_OVERHEAD = 256
"""Bytes charged per cached answer besides its records (key, tuple, dataclass, dict slot)."""


def answer_bytes(key: tuple[str, str], answer: Answer) -> int:
    """What one cached answer is charged: its name, its records and a fixed overhead."""
    size = _ENTRY_OVERHEAD + len(key[0])
    for record in answer.records:
        if isinstance(record, bytes | str):
            size += len(record) + 48
        elif isinstance(record, tuple):
            size += 96 + sum(len(part) for part in record if isinstance(part, str))
        else:
            size += 64
    return size


class TtlCache(Generic[K, V]):
    """Values by key until they expire; least recently used go first when either bound
    (entries, bytes as charged by the caller) is reached. The DNS answers here, the SPF
    results in the authenticator."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[K, tuple[V, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> tuple[V, float] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires, size = entry
        if expires <= now:
            del self._entries[key]
            self.bytes -= size
            return None
        self._entries.move_to_end(key)
        return value, expires

    def put(self, key: K, value: V, expires: float, size: int) -> None:
        if self.max_entries <= 0 or size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[2]
        while self._entries and (
            len(self._entries) >= self.max_entries or self.bytes + size > self.max_bytes
        ):
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
        self._entries[key] = (value, expires, size)
        self.bytes += size


_consulted: contextvars.ContextVar[list[tuple[Answer, float]] | None] = contextvars.ContextVar(
    "lanalyze_dns_consulted", default=None
)


@contextmanager
def consulted() -> Iterator[list[tuple[Answer, float]]]:
    """Collect (answer, monotonic expiry) of every query made in this context (and in tasks
    it starts) while the block runs; an answer that was not cached expires at once."""
    found: list[tuple[Answer, float]] = []
    token = _consulted.set(found)
    try:
        yield found
    finally:
        _consulted.reset(token)


def _negative_ttl(exc: dns.resolver.NXDOMAIN, qname: dns.name.Name) -> float:
    """The negative TTL of an NXDOMAIN answer (RFC 2308 §5: the SOA's), 0 if it has none."""
    try:
        return float(exc.response(qname).resolve_chaining().minimum_ttl)  # type: ignore[no-untyped-call]
    except Exception:  # no response kept, no SOA: do not cache it
        return 0.0


class Resolver:
    """dnspython's async resolver with our timeout and server, behind our answer cache;
    never raises for DNS trouble."""

    def __init__(
        self,
        address: str | None,
        timeout: float,
        cache_size: int = 0,
        cache_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.cache_size = cache_size
        self.cache: TtlCache[tuple[str, str], Answer] = TtlCache(cache_size, cache_bytes)
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._inflight: dict[tuple[str, str], asyncio.Future[tuple[Answer, float] | None]] = {}

    def prepare(self) -> None:
        """Build the resolver now (reads /etc/resolv.conf: call it from a worker thread)."""
        self._get()

    def _get(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self.address is None:
                resolver = dns.asyncresolver.Resolver(configure=True)
            else:
                host, port = parse_listen(self.address)
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = ["127.0.0.1" if host == "localhost" else host]
                resolver.port = port
            resolver.lifetime = self.timeout
            resolver.timeout = min(self.timeout, 2.0)
            # Caching is ours (TtlCache): dnspython's would keep every answer twice.
            resolver.cache = None
            self._resolver = resolver
        return self._resolver

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (name, rdtype)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        cached = self.cache.get(key, now)
        if cached is None:
            pending = self._inflight.get(key)
            if pending is not None and pending.get_loop() is loop:
                # Another session asked for the same name a moment ago: share its answer
                # (None if that session gave up, timed out by its own deadline).
                cached = await asyncio.shield(pending)
            if cached is None:
                cached = await self._fetch_shared(key, loop)
        found = _consulted.get()
        if found is not None:
            found.append(cached)
        return cached[0]

    async def _fetch_shared(
        self, key: tuple[str, str], loop: asyncio.AbstractEventLoop
    ) -> tuple[Answer, float]:
        future: asyncio.Future[tuple[Answer, float] | None] = loop.create_future()
        self._inflight[key] = future
        try:
            answer, ttl = await self._fetch(*key)
            cached = (answer, time.monotonic() + ttl)
            if ttl > 0 and answer.status != "error":  # DNS trouble is never kept
                self.cache.put(key, answer, cached[1], answer_bytes(key, answer))
            future.set_result(cached)
            return cached
        finally:
            if not future.done():
                future.set_result(None)  # cancelled: whoever waits asks for itself
            if self._inflight.get(key) is future:
                del self._inflight[key]

    async def _fetch(self, name: str, rdtype: str) -> tuple[Answer, float]:
        """One query to the server: the answer and how many seconds it may be kept."""
        try:
            qname = dns.name.from_text(name or ".")
        except (dns.exception.DNSException, UnicodeError, ValueError):
            # A name that cannot be written in DNS cannot exist.
            return Answer("nxdomain"), 0.0
        try:
            resolver = self._get()
            result = await resolver.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False, lifetime=self.timeout
            )
        except dns.resolver.NXDOMAIN as exc:
            return Answer("nxdomain"), _negative_ttl(exc, qname)
        except dns.resolver.NoAnswer:
            return Answer("nodata"), 0.0
        except dns.resolver.NoResolverConfiguration as exc:
            return Answer("error", error=f"no resolver configured: {exc}"), 0.0
        except dns.exception.Timeout:
            return Answer("error", error=f"timeout after {self.timeout:g}s"), 0.0
        except dns.resolver.NoNameservers:
            return Answer("error", error="no server answered (SERVFAIL or REFUSED)"), 0.0
        except dns.exception.DNSException as exc:
            return Answer("error", error=type(exc).__name__), 0.0
        # The answer's TTL (the negative TTL for NODATA), as dnspython computed it.
        ttl = max(result.expiration - time.time(), 0.0)
        if result.rrset is None:
            return Answer("nodata"), ttl
        records: list[object] = []
        for rdata in result.rrset:
            if rdtype == "TXT":
                records.append(b"".join(rdata.strings))
            elif rdtype in ("A", "AAAA"):
                records.append(rdata.address)
            elif rdtype == "MX":
                records.append((rdata.preference, rdata.exchange.to_text(omit_final_dot=True)))
            elif rdtype == "PTR":
                records.append(rdata.target.to_text(omit_final_dot=True))
        return (Answer("ok", tuple(records)) if records else Answer("nodata")), ttl


async def query_all(resolver: Resolver, wanted: list[tuple[str, str]]) -> list[Answer]:
    """The answers to ``wanted``, concurrently. One name (a signature's key, the usual case)
    is awaited directly: an answer from the cache then comes back without a task and a turn
    of the event loop (~0.1 ms of a check)."""
    if len(wanted) == 1:
        return [await resolver.query(*wanted[0])]
    return list(await asyncio.gather(*(resolver.query(name, rd) for name, rd in wanted)))


async def run_with_lookups(
    fn: Callable[[Prefetched], T],
    resolver: Resolver,
    *,
    max_rounds: int,
    in_thread: bool,
    view: Prefetched | None = None,
    prefetch: list[tuple[str, str]] | None = None,
) -> T:
    """Run ``fn`` until it completes without asking for an answer we do not have yet.

    ``prefetch`` names the lookups known to be needed (keys named in signature fields), all
    fetched concurrently before the first run, so that a run rarely repeats expensive work.
    """
    view = view if view is not None else Prefetched()
    if prefetch:
        wanted = list(dict.fromkeys((normalise_name(n), rd) for n, rd in prefetch))
        view.answers.update(zip(wanted, await query_all(resolver, wanted), strict=True))
    for _ in range(max_rounds):
        view.missing.clear()
        try:
            result = await asyncio.to_thread(fn, view) if in_thread else fn(view)
        except LookupNeeded:
            pass
        else:
            # A miss that fn swallowed still has to be fetched and fn run again.
            if not any(key not in view.answers for key in view.missing):
                return result
        wanted = list(dict.fromkeys(k for k in view.missing if k not in view.answers))
        view.answers.update(zip(wanted, await query_all(resolver, wanted), strict=True))
    raise LookupBudgetExceeded(f"more than {max_rounds} rounds of DNS lookups")
