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

Trust: answers come from the network and are treated as untrusted bytes by the libraries;
names come from the message (untrusted) and are validated before they are queried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

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


class Resolver:
    """dnspython's async resolver with our timeout and server; never raises for DNS trouble."""

    def __init__(self, address: str | None, timeout: float, cache_size: int = 0) -> None:
        self.address = address
        self.timeout = timeout
        self.cache_size = cache_size
        self._resolver: dns.asyncresolver.Resolver | None = None

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
            # dnspython's LRU cache keeps answers, NODATA and NXDOMAIN for their TTL.
            resolver.cache = dns.resolver.LRUCache(self.cache_size) if self.cache_size else None
            self._resolver = resolver
        return self._resolver

    async def query(self, name: str, rdtype: str) -> Answer:
        try:
            qname = dns.name.from_text(name or ".")
        except (dns.exception.DNSException, UnicodeError, ValueError):
            # A name that cannot be written in DNS cannot exist.
            return Answer("nxdomain")
        try:
            resolver = self._get()
            result = await resolver.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False, lifetime=self.timeout
            )
        except dns.resolver.NXDOMAIN:
            return Answer("nxdomain")
        except dns.resolver.NoAnswer:
            return Answer("nodata")
        except dns.resolver.NoResolverConfiguration as exc:
            return Answer("error", error=f"no resolver configured: {exc}")
        except dns.exception.Timeout:
            return Answer("error", error=f"timeout after {self.timeout:g}s")
        except dns.resolver.NoNameservers:
            return Answer("error", error="no server answered (SERVFAIL or REFUSED)")
        except dns.exception.DNSException as exc:
            return Answer("error", error=type(exc).__name__)
        if result.rrset is None:
            return Answer("nodata")
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
        return Answer("ok", tuple(records)) if records else Answer("nodata")


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
        answers = await asyncio.gather(*(resolver.query(name, rd) for name, rd in wanted))
        view.answers.update(zip(wanted, answers, strict=True))
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
        answers = await asyncio.gather(*(resolver.query(name, rd) for name, rd in wanted))
        view.answers.update(zip(wanted, answers, strict=True))
    raise LookupBudgetExceeded(f"more than {max_rounds} rounds of DNS lookups")
