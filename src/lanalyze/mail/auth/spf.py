"""SPF (RFC 7208) for the MAIL FROM identity, and for the HELO identity of null senders.

pyspf does the evaluation: record selection (§4.5), mechanisms and macros (§5, §7), the
limits of 10 DNS-querying terms and 2 void lookups (§4.6.4) and all seven results (§2.6).
What is ours: its DNS goes through :mod:`lanalyze.mail.auth.dns` (asynchronous, with our
timeout and server) instead of its blocking module-level lookup. pyspf has no per-query hook
for that, so its module-level ``DNSLookup`` is replaced once by a dispatcher that answers from
the check's :class:`~lanalyze.mail.auth.dns.Prefetched` view (held in a context variable) and
falls back to pyspf's own lookup for any other caller in the process. One correction to pyspf:
the ``ptr`` mechanism and the ``%{p}`` macro skip a PTR name whose address lookup fails
(§5.5), where pyspf let the DNS error end the whole check as ``temperror``.

Checked against the RFC 7208 test suite (tests/mail/test_spf_rfc7208_suite.py).

Trust: the client IP is ours (from the socket); MAIL FROM and HELO are the peer's and may be
anything; DNS answers are untrusted and parsed by pyspf.
"""

from __future__ import annotations

import contextvars
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import spf as pyspf

from lanalyze.mail.auth.dns import Prefetched, Resolver, run_with_lookups
from lanalyze.mail.errors import LookupBudgetExceeded, LookupNeeded

# RFC 7208 §4.6.4 allows 10 lookup terms, each MX up to 10 names, plus void lookups and CNAME
# hops: 150 rounds covers any evaluation pyspf lets through.
MAX_ROUNDS = 150

_current_view: contextvars.ContextVar[Prefetched | None] = contextvars.ContextVar(
    "lanalyze_spf_view", default=None
)
_original_lookup: Callable[..., Any] = pyspf.DNSLookup


def _dispatch_lookup(name: str, qtype: str, *args: Any, **kwargs: Any) -> list[Any]:
    view = _current_view.get()
    if view is None:
        return list(_original_lookup(name, qtype, *args, **kwargs))
    answer = view.get(name, qtype)
    if answer.status == "error":
        raise pyspf.TempError(f"DNS {answer.error} for {name}/{qtype}")
    key = (str(name).rstrip(".").lower(), qtype)
    if qtype in ("TXT", "SPF"):
        # pyspf wants a TXT record as its list of strings; ours are joined already.
        return [(key, (value,)) for value in answer.records]
    return [(key, value) for value in answer.records]


pyspf.DNSLookup = _dispatch_lookup


class _Query(pyspf.query):  # type: ignore[misc]  # pyspf has no type information
    def validated_ptrs(self) -> list[str]:
        """§5.5: the PTR names of the client whose addresses include it, at most 10 looked up.

        "If a DNS error occurs while doing the PTR RR lookup, then this mechanism fails to
        match. [...] If a DNS error occurs while doing an A RR lookup, then that domain name is
        skipped and the search continues." pyspf raised TempError for both, so one broken
        reverse name of a client (a CNAME loop, a dead server) made the check ``temperror``.
        """
        try:
            names = self.dns_ptr(self.i)[: pyspf.MAX_PTR]
        except pyspf.TempError:
            return []
        validated = []
        for name in names:
            try:
                addresses = self.dns_a(name, self.A)
            except pyspf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                validated.append(name)
        return validated


@dataclass(frozen=True)
class SpfResult:
    result: str  # pass fail softfail neutral none temperror permerror
    identity: str  # "mailfrom" or "helo"
    domain: str  # the domain checked
    sender: str  # the address whose domain was checked (postmaster@helo for null senders)
    explanation: str = ""


def _evaluate(ip: str, sender: str, helo: str) -> Callable[[Prefetched], tuple[str, str, str]]:
    def run(view: Prefetched) -> tuple[str, str, str]:
        token = _current_view.set(view)
        try:
            query = _Query(i=ip, s=sender, h=helo, strict=True, timeout=30)
            result, _code, explanation = query.check()
            return str(result), str(explanation), str(query.ident)
        except LookupNeeded:
            raise
        except (AssertionError, ValueError, TypeError, IndexError, UnicodeError) as exc:
            # pyspf's own consistency checks on hostile records: the record is at fault.
            return "permerror", f"unusable SPF data: {type(exc).__name__}", "mailfrom"
        finally:
            _current_view.reset(token)

    return run


def client_ip_text(client_ip: str) -> str | None:
    """The address SPF compares, IPv4-mapped IPv6 unwrapped; None if it is not an IP."""
    try:
        address = ipaddress.ip_address(client_ip.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()


def spf_identity(mail_from: str, helo: str) -> tuple[str, str, str]:
    """(identity, sender, domain) SPF checks: MAIL FROM, or HELO for a null sender."""
    mail_from = mail_from.strip().strip("<>")
    helo = helo.strip()
    if mail_from:
        identity, sender = "mailfrom", mail_from
        if "@" not in sender:
            # §4.3: a sender without local part is treated as postmaster@domain.
            sender = f"postmaster@{sender}"
    else:
        identity, sender = "helo", f"postmaster@{helo}"
    return identity, sender, _domain_of(sender)


async def check_spf(resolver: Resolver, *, client_ip: str, mail_from: str, helo: str) -> SpfResult:
    """SPF for MAIL FROM, or for HELO when MAIL FROM is null (RFC 7208 §2.3, §2.4)."""
    helo = helo.strip()
    identity, sender, domain = spf_identity(mail_from, helo)
    ip = client_ip_text(client_ip)
    if ip is None:
        return SpfResult("none", identity, domain, sender, "client address is not an IP")
    if not domain or (not helo and identity == "helo"):
        return SpfResult("none", identity, domain, sender, "no domain to check")
    try:
        result, explanation, _ident = await run_with_lookups(
            _evaluate(ip, sender if identity == "mailfrom" else "", helo or domain),
            resolver,
            max_rounds=MAX_ROUNDS,
            in_thread=False,
            # The first thing pyspf asks for (RFC 7208 §4.4); saves one evaluation round.
            prefetch=[(domain, "TXT")],
        )
    except LookupBudgetExceeded as exc:
        return SpfResult("permerror", identity, domain, sender, str(exc))
    if result == "ambiguous":  # only in pyspf's harsh mode, which we do not use
        result = "permerror"
    return SpfResult(result, identity, domain, sender, explanation)
