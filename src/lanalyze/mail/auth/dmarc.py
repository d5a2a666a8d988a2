"""DMARC (RFC 7489): policy discovery, identifier alignment, ``p``/``sp``/``pct``.

Hand-written rather than taken from authheaders' ``check_dmarc``, which raises on a message
without From:, ignores ``pct``, looks at only one DKIM result, reads the public suffix file
from disk on every call and does its own blocking DNS. Here:

* §6.6.1 author domain: several From: domains are each evaluated and the strictest policy
  among the failing ones applies; no From: domain at all is ``none`` (the caller flags it);
* §6.6.3 policy discovery: ``_dmarc.<from domain>``, else ``_dmarc.<organisational domain>``
  (public suffix list from the ``publicsuffixlist`` package, offline); several records count
  as none; a record without a valid ``p`` is treated as ``p=none`` when it has ``rua``;
* §3.1 alignment, relaxed (organisational domains equal) or strict (domains equal), of the
  SPF-authenticated domain (MAIL FROM, or HELO for null senders) and of every passing DKIM
  ``d=``;
* §6.6.4 ``pct``: a failing message outside the sample gets the next weaker policy.

What the policy lookup found is kept apart (``lookup`` of a verdict): a record, no record, a
From: domain that does not exist at all (NXDOMAIN: a made-up domain, not one that "publishes no
policy"), or a failed lookup (SERVFAIL, timeout: ``temperror``, never read as "no policy").

Trust: From: domains and DNS records are the peer's; parsing never raises.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from publicsuffixlist import PublicSuffixList

from lanalyze.mail.auth.dkim_verify import DkimResult
from lanalyze.mail.auth.dns import Resolver
from lanalyze.mail.auth.spf import SpfResult

POLICIES = ("none", "quarantine", "reject")
MAX_FROM_DOMAINS = 10
_VERSION = re.compile(rb"^\s*v\s*=\s*DMARC1\s*(;|$)")
_STRICTNESS = {name: rank for rank, name in enumerate(POLICIES)}

# What the policy lookup found, in verdicts (``lookup``) and in the stored details.
LOOKUP_RECORD = "record"  # a DMARC record applies
LOOKUP_NO_RECORD = "no_record"  # the domain exists and publishes none
LOOKUP_NO_DOMAIN = "no_domain"  # the From: domain itself is NXDOMAIN
LOOKUP_FAILED = "failed"  # DNS trouble or the check's deadline: nothing is known
NO_RECORD_REASON = "no DMARC record"
NO_DOMAIN_REASON = "the From: domain does not exist (NXDOMAIN)"


@functools.cache
def public_suffix_list() -> PublicSuffixList:
    return PublicSuffixList()


@functools.lru_cache(maxsize=4096)  # ~7 calls a message; a pure function of the name
def organisational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (the domain itself if it is a suffix)."""
    domain = domain.lower().rstrip(".")
    return public_suffix_list().privatesuffix(domain) or domain


def aligned(domain_a: str, domain_b: str, mode: str) -> bool:
    a, b = domain_a.lower().rstrip("."), domain_b.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organisational_domain(a) == organisational_domain(b)


@dataclass(frozen=True)
class DmarcRecord:
    policy: str  # p
    subdomain_policy: str  # sp (defaults to p)
    pct: int
    adkim: str
    aspf: str
    domain: str  # where the record was found

    @staticmethod
    def parse(text: bytes, domain: str) -> DmarcRecord | None:
        """§6.3/§6.4 tag list; None when it is not a usable DMARC record."""
        try:
            decoded = text.decode("ascii")
        except UnicodeDecodeError:
            return None
        tags: dict[str, str] = {}
        for part in decoded.split(";"):
            key, sep, value = part.partition("=")
            if not sep:
                if part.strip():
                    return None
                continue
            tags.setdefault(key.strip().lower(), value.strip())
        policy = tags.get("p", "").lower()
        if policy not in POLICIES:
            if "rua" not in tags:
                return None
            policy = "none"
        sp = tags.get("sp", policy).lower()
        if sp not in POLICIES:
            sp = policy
        pct_text = tags.get("pct", "100")
        pct = int(pct_text) if pct_text.isdigit() and int(pct_text) <= 100 else 100
        adkim = tags.get("adkim", "r").lower()
        aspf = tags.get("aspf", "r").lower()
        return DmarcRecord(
            policy,
            sp,
            pct,
            adkim if adkim in ("r", "s") else "r",
            aspf if aspf in ("r", "s") else "r",
            domain,
        )


@dataclass(frozen=True)
class NoRecord:
    """No DMARC record applies; ``domain_exists`` is False when the From: domain is NXDOMAIN."""

    domain_exists: bool = True


@dataclass(frozen=True)
class DomainVerdict:
    from_domain: str
    result: str  # pass fail none temperror permerror
    policy: str = ""  # the published policy that applies (p or sp)
    disposition: str = "none"  # what the policy asks for after pct sampling
    record_domain: str = ""
    pct: int = 100
    sampled_out: bool = False
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""
    lookup: str = LOOKUP_RECORD  # what the policy lookup found (LOOKUP_*)


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass fail none temperror permerror
    from_domain: str = ""  # header.from (the domain whose policy applies)
    policy: str = ""
    disposition: str = "none"
    reason: str = ""
    domains: list[DomainVerdict] = field(default_factory=list)
    lookup: str = ""  # LOOKUP_* of from_domain; "" when no policy was looked up

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "from_domain": self.from_domain,
            "policy": self.policy,
            "disposition": self.disposition,
            "reason": self.reason,
            "domains": [vars(d) for d in self.domains],
            "lookup": self.lookup,
        }


async def _discover(resolver: Resolver, from_domain: str) -> DmarcRecord | NoRecord | str:
    """The applicable record, :class:`NoRecord`, or an error text (temperror)."""
    candidates = [from_domain]
    org = organisational_domain(from_domain)
    if org != from_domain:
        candidates.append(org)
    own_status = ""
    for domain in candidates:
        answer = await resolver.query(f"_dmarc.{domain}", "TXT")
        if answer.status == "error":
            return f"_dmarc.{domain}: {answer.error}"
        own_status = own_status or answer.status
        texts = [t for t in answer.records if isinstance(t, bytes)]
        records = [t for t in texts if _VERSION.match(t)]
        if len(records) == 1:
            parsed = DmarcRecord.parse(records[0], domain)
            if parsed is not None:
                return parsed
    if own_status != "nxdomain":
        return NoRecord()  # _dmarc.<from domain> exists, so the domain does too
    # NXDOMAIN is for the name, whatever the type: one query tells whether the From: domain
    # exists at all. A failure here leaves "no record", which the lookups above established.
    existence = await resolver.query(from_domain, "A")
    return NoRecord(domain_exists=existence.status != "nxdomain")


def _weaker(policy: str) -> str:
    return POLICIES[max(_STRICTNESS[policy] - 1, 0)]


Policies = dict[str, DmarcRecord | NoRecord | str]
"""From domain -> its applicable record, :class:`NoRecord`, or an error text (temperror)."""


async def discover_policies(resolver: Resolver, from_domains: Sequence[str]) -> Policies:
    """§6.6.3 for every From: domain, concurrently; needs nothing from SPF or DKIM, so the
    caller can run it alongside them."""
    if len(from_domains) > MAX_FROM_DOMAINS:
        return {}
    if len(from_domains) == 1:  # the usual case: no task and turn of the event loop
        return {from_domains[0]: await _discover(resolver, from_domains[0])}
    found = await asyncio.gather(*(_discover(resolver, d) for d in from_domains))
    return dict(zip(from_domains, found, strict=True))


def evaluate_domain(
    from_domain: str,
    record: DmarcRecord | NoRecord | str | None,
    spf: SpfResult | None,
    dkim: Sequence[DkimResult],
    rng: Callable[[], float],
) -> DomainVerdict:
    if isinstance(record, str):
        return DomainVerdict(from_domain, "temperror", reason=record, lookup=LOOKUP_FAILED)
    if record is None or (isinstance(record, NoRecord) and record.domain_exists):
        return DomainVerdict(from_domain, "none", reason=NO_RECORD_REASON, lookup=LOOKUP_NO_RECORD)
    if isinstance(record, NoRecord):
        return DomainVerdict(from_domain, "none", reason=NO_DOMAIN_REASON, lookup=LOOKUP_NO_DOMAIN)
    policy = record.subdomain_policy if record.domain != from_domain else record.policy
    spf_aligned = bool(
        spf and spf.result == "pass" and aligned(spf.domain, from_domain, record.aspf)
    )
    dkim_aligned = any(
        d.result == "pass" and aligned(d.domain, from_domain, record.adkim) for d in dkim
    )
    verdict = DomainVerdict(
        from_domain,
        "pass",
        policy=policy,
        record_domain=record.domain,
        pct=record.pct,
        spf_aligned=spf_aligned,
        dkim_aligned=dkim_aligned,
    )
    if spf_aligned or dkim_aligned:
        return verdict
    transient = [f"SPF {spf.result}"] if spf and spf.result == "temperror" else []
    transient += [f"DKIM {d.domain} temperror" for d in dkim if d.result == "temperror"]
    if transient:
        # An aligned pass might have been hidden by DNS trouble: never enforce on a guess.
        return dataclasses.replace(verdict, result="temperror", reason=", ".join(transient))
    disposition, sampled_out = policy, False
    if policy != "none" and record.pct < 100 and rng() * 100 >= record.pct:
        disposition, sampled_out = _weaker(policy), True
    reasons = [f"SPF {spf.result if spf else 'none'}"]
    if spf and spf.result == "pass":
        reasons[0] += f" for {spf.domain} (not aligned)"
    passing = [d.domain for d in dkim if d.result == "pass"]
    reasons.append(f"DKIM pass only for {', '.join(passing)}" if passing else "no aligned DKIM")
    return dataclasses.replace(
        verdict,
        result="fail",
        disposition=disposition,
        sampled_out=sampled_out,
        reason=", ".join(reasons),
    )


async def check_dmarc(
    resolver: Resolver,
    from_domains: Sequence[str],
    spf: SpfResult | None,
    dkim: Sequence[DkimResult],
    *,
    rng: Callable[[], float] = random.random,
    policies: Policies | None = None,
) -> DmarcResult:
    """DMARC over every From: domain; the strictest failing policy decides (§6.6.1).

    ``policies`` are the records already discovered (:func:`discover_policies`); missing
    ones are looked up here.
    """
    if not from_domains:
        return DmarcResult("none", reason="no From: domain to evaluate")
    if len(from_domains) > MAX_FROM_DOMAINS:
        # Each domain costs DNS queries; a From: listing hundreds is an attack, not mail.
        return DmarcResult("permerror", reason=f"more than {MAX_FROM_DOMAINS} From: domains")
    policies = dict(policies or {})
    missing = [d for d in from_domains if d not in policies]
    if missing:
        policies.update(await discover_policies(resolver, missing))
    verdicts = [evaluate_domain(d, policies[d], spf, dkim, rng) for d in from_domains]
    failing = [v for v in verdicts if v.result == "fail"]
    if failing:
        worst = max(failing, key=lambda v: _STRICTNESS[v.disposition])
        return DmarcResult(
            "fail",
            worst.from_domain,
            worst.policy,
            worst.disposition,
            worst.reason,
            verdicts,
            worst.lookup,
        )
    for word in ("temperror", "pass"):
        chosen = [v for v in verdicts if v.result == word]
        if chosen:
            v = chosen[0]
            return DmarcResult(word, v.from_domain, v.policy, "none", v.reason, verdicts, v.lookup)
    # A made-up From: domain is named before one that merely publishes no policy.
    v = min(verdicts, key=lambda v: v.lookup != LOOKUP_NO_DOMAIN)
    return DmarcResult("none", v.from_domain, reason=v.reason, domains=verdicts, lookup=v.lookup)
