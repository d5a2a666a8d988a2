"""The sender-check component: runs SPF, DKIM, ARC and DMARC on a spooled message.

The I/O shell around the checks: takes the message's bytes (or reads a file in a worker
thread, for the CLI and tests), runs SPF, DKIM
and ARC concurrently under one deadline (``mail.auth.check_timeout``; what does not finish
is ``temperror``), then DMARC on their results, derives the flags, renders the
Authentication-Results field (RFC 8601), lets :mod:`lanalyze.mail.auth.policy` decide, and
counts everything on ``/metrics``. A bug of ours in one check is logged and reported as that
check's ``temperror``; it never fails the SMTP session.

SPF results are kept (:class:`SpfCache`) until the earliest TTL of the DNS answers the
evaluation used: by (client IP, identity, domain) when none of those records holds a macro
(RFC 7208 §7: only macros make the result depend on the local part or the HELO name), else
by the whole (client IP, sender, HELO). Results on DNS trouble are never kept.

Trust: envelope, HELO and message are the peer's; the client IP and the authenticated user
come from the SMTP server.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from prometheus_client import Counter

from lanalyze.log import RateLimiter, get_logger
from lanalyze.mail.auth.arc import ArcResult, verify_arc
from lanalyze.mail.auth.config import AuthConfig
from lanalyze.mail.auth.dkim_verify import DkimResult, verify_dkim
from lanalyze.mail.auth.dmarc import (
    LOOKUP_FAILED,
    DmarcResult,
    check_dmarc,
    discover_policies,
    organisational_domain,
    public_suffix_list,
)
from lanalyze.mail.auth.dns import Answer, Resolver, TtlCache, consulted
from lanalyze.mail.auth.flags import FLAG_VERSION, LOCAL_CLAIM_FLAG, MISMATCH_FLAG
from lanalyze.mail.auth.lookalike import imitation_flags
from lanalyze.mail.auth.message import (
    FromInfo,
    domain_of,
    from_info,
    header_fields,
    split_message,
)
from lanalyze.mail.auth.policy import decide
from lanalyze.mail.auth.results import ResInfo, our_results_ranges, render
from lanalyze.mail.auth.signing import sign
from lanalyze.mail.auth.spf import SpfResult, check_spf, spf_identity
from lanalyze.metrics import REGISTRY

log = get_logger("lanalyze.mail.auth")
_bug_log_limit = RateLimiter(interval=60.0, burst=3)
T = TypeVar("T")

RESULTS = Counter(
    "lanalyze_mail_auth_results",
    "Sender-check results, by method (spf, dkim, dmarc, arc, auth) and result word.",
    ["method", "result"],
    registry=REGISTRY,
)
ACTIONS = Counter(
    "lanalyze_mail_auth_actions",
    "Policy decisions on inbound messages: accept, quarantine, reject.",
    ["action"],
    registry=REGISTRY,
)
FLAGS = Counter(
    "lanalyze_mail_auth_flags",
    "Suspicious-sender flags raised, by flag.",
    ["flag"],
    registry=REGISTRY,
)
INTERNAL_ERRORS = Counter(
    "lanalyze_mail_auth_internal_errors",
    "Checks that failed because of a bug of ours (reported as temperror).",
    ["method"],
    registry=REGISTRY,
)

_DKIM_ORDER = ("pass", "policy", "fail", "temperror", "permerror", "neutral", "none")
SPF_CACHED = Counter(
    "lanalyze_mail_auth_spf_cached",
    "SPF results answered from the SPF result cache (no evaluation, no DNS).",
    registry=REGISTRY,
)

SpfKey = tuple[str, ...]


def _uses_macros(answers: list[tuple[Answer, float]]) -> bool:
    return any(
        b"%" in record if isinstance(record, bytes) else "%" in str(record)
        for answer, _ in answers
        for record in answer.records
    )


class SpfCache:
    """SPF (result, explanation) for the lifetime of the answers they were computed from."""

    ENTRY_BYTES = 256

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.cache: TtlCache[SpfKey, tuple[str, str]] = TtlCache(max_entries, max_bytes)

    @staticmethod
    def keys(client_ip: str, mail_from: str, helo: str) -> tuple[SpfKey, SpfKey]:
        """The key for any sender of the domain (records without macros), and the exact one."""
        identity, sender, domain = spf_identity(mail_from, helo)
        by_domain = (client_ip, identity, domain)
        return by_domain, (*by_domain, sender, helo)

    def get(self, client_ip: str, mail_from: str, helo: str, now: float) -> tuple[str, str] | None:
        for key in self.keys(client_ip, mail_from, helo):
            hit = self.cache.get(key, now)
            if hit is not None:
                return hit[0]
        return None

    def put(
        self,
        *,
        client_ip: str,
        mail_from: str,
        helo: str,
        result: SpfResult,
        answers: list[tuple[Answer, float]],
        now: float,
    ) -> None:
        if result.result == "temperror" or not answers:
            return
        if any(answer.status == "error" for answer, _ in answers):
            return
        expires = min(expiry for _, expiry in answers)
        if expires <= now:
            return
        by_domain, exact = self.keys(client_ip, mail_from, helo)
        key = exact if _uses_macros(answers) else by_domain
        size = self.ENTRY_BYTES + sum(map(len, key)) + len(result.explanation)
        self.cache.put(key, (result.result, result.explanation), expires, size)


@dataclass
class AuthVerdict:
    header: bytes
    action: Literal["accept", "reject", "quarantine"]
    reason: str
    spf: str
    dkim: str
    dmarc: str
    arc: str
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # Byte ranges [start, end) of incoming Authentication-Results fields claiming our
    # authserv-id, for a caller that removes them without re-reading the message.
    strip_headers: list[tuple[int, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "spf": self.spf,
            "dkim": self.dkim,
            "dmarc": self.dmarc,
            "arc": self.arc,
            "flags": list(self.flags),
            "flag_version": FLAG_VERSION,
            "header": self.header.decode("utf-8", "replace"),
            "details": self.details,
            "strip_headers": [list(r) for r in self.strip_headers],
        }


async def _bytes_of(message: bytes | Path) -> bytes:
    """The message itself; a path is read whole (a file given by the CLI or a test: the mail
    server hands over the queued bytes, see ``Spool.message``)."""
    if isinstance(message, bytes):
        return message
    return await asyncio.to_thread(message.read_bytes)


def _mentions(text: str, domain: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(domain)}(?![\w-])", text, re.IGNORECASE) is not None


def _is_within(domain: str, parent: str) -> bool:
    return domain == parent or domain.endswith("." + parent)


class Authenticator:
    """SPF, DKIM, DMARC and ARC verdicts for inbound mail (component shape)."""

    name = "mail.auth"

    def __init__(
        self,
        config: AuthConfig,
        authserv_id: str,
        *,
        local_domains: Iterable[str] = (),
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.authserv_id = authserv_id
        self.local_domains = sorted(
            {d.strip().rstrip(".").lower() for d in [*config.local_domains, *local_domains]} - {""}
        )
        self.rng = rng
        self.resolver = Resolver(
            config.resolver, config.dns_timeout, config.dns_cache_size, config.dns_cache_memory
        )
        self.spf_cache = SpfCache(config.dns_cache_size, config.dns_cache_memory)
        self._warmup: asyncio.Future[None] | None = None
        self._warm_lock = threading.Lock()
        self._warm_done = False

    async def start(self) -> None:
        # Loading the public suffix list takes a moment (seconds on a busy machine): do it in
        # the background so that neither the service's start nor the event loop waits for it;
        # the first check waits for it instead.
        self._warmup = asyncio.ensure_future(asyncio.to_thread(self._warm))

    def _warm(self) -> None:
        with self._warm_lock:
            if self._warm_done:
                return
            public_suffix_list()
            try:
                self.resolver.prepare()
            except Exception as exc:  # no resolv.conf: every lookup will say so (temperror)
                log.warning("mail.auth.resolver_unavailable", extra={"error": str(exc)})
            self._warm_done = True

    async def _ready(self) -> None:
        if not self._warm_done:
            await asyncio.to_thread(self._warm)

    async def stop(self) -> None:
        warmup, self._warmup = self._warmup, None
        if warmup is not None and warmup.get_loop() is asyncio.get_running_loop():
            await warmup

    async def sign(
        self, message: bytes | Path, *, from_domain: str, user: str | None = None
    ) -> bytes:
        """DKIM-Signature field(s) for submission mail (see :func:`signing.sign`)."""
        return await sign(message, config=self.config, from_domain=from_domain)

    async def _guarded(self, method: str, work: Awaitable[T], fallback: T) -> T:
        try:
            return await work
        except Exception:
            INTERNAL_ERRORS.labels(method).inc()
            if _bug_log_limit.allow(method) is not None:
                log.exception("mail.auth.internal_error", extra={"method": method})
            return fallback

    async def check(
        self,
        message_or_path: bytes | Path,
        *,
        mail_from: str,
        helo: str,
        client_ip: str,
        rcpt_to: list[str],
        authenticated_user: str | None,
    ) -> AuthVerdict:
        if authenticated_user is not None:
            message = await _bytes_of(message_or_path)
            verdict = self._finish(
                [ResInfo("auth", "pass", properties=[("smtp.auth", authenticated_user)])],
                action="accept",
                reason=f"authenticated submission by {authenticated_user}",
                words=("none", "none", "none", "none"),
                flags=[],
                details={"authenticated_user": authenticated_user},
            )
            verdict.strip_headers = our_results_ranges(message, self.authserv_id)
            return verdict
        if not self.config.enabled:
            return self._finish(
                [],
                action="accept",
                reason="sender checks disabled",
                words=("none",) * 4,
                flags=[],
                details={},
            )
        message = await _bytes_of(message_or_path)
        return await self.check_bytes(
            message, mail_from=mail_from, helo=helo, client_ip=client_ip, rcpt_to=rcpt_to
        )

    async def check_bytes(
        self, message: bytes, *, mail_from: str, helo: str, client_ip: str, rcpt_to: list[str]
    ) -> AuthVerdict:
        """The checks on an in-memory message from an unauthenticated client."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.check_timeout
        await self._ready()
        mail_from = mail_from.strip().strip("<>").strip()
        # One parse of the header for every check. Large header blocks are parsed off the
        # event loop; most are a few kilobytes.
        header, body = split_message(message)
        small = len(header) < 65536
        fields = header_fields(header) if small else await asyncio.to_thread(header_fields, header)
        parsed = (header, body, fields)
        sender = (
            from_info(header, fields)
            if small
            else await asyncio.to_thread(from_info, header, fields)
        )
        timeout_spf = SpfResult("temperror", "mailfrom", "", mail_from, "check timed out")
        # What needs no lookup is answered here, without a task: an SPF result still in its
        # cache, ARC on a message without ARC sets (most mail).
        try:
            spf_now = self._spf_cached(client_ip=client_ip, mail_from=mail_from, helo=helo)
        except Exception:  # a bug: _spf meets it again under the guard, which reports it
            spf_now = None
        spf_task = (
            None
            if spf_now is not None
            else asyncio.ensure_future(
                self._guarded(
                    "spf",
                    self._spf(client_ip=client_ip, mail_from=mail_from, helo=helo),
                    SpfResult("temperror", "mailfrom", "", mail_from, "internal error"),
                )
            )
        )
        dkim_task = asyncio.ensure_future(
            self._guarded(
                "dkim",
                verify_dkim(
                    self.resolver,
                    message,
                    max_signatures=self.config.max_signatures,
                    length_tag=self.config.length_tag,
                    max_key_bits=self.config.max_rsa_key_bits,
                    parsed=parsed,
                ),
                [DkimResult("temperror", reason="internal error")],
            )
        )
        arc_now = None if any(name == b"arc-seal" for name, _ in fields) else ArcResult("none")
        arc_task = (
            None
            if arc_now is not None
            else asyncio.ensure_future(
                self._guarded(
                    "arc",
                    verify_arc(
                        self.resolver,
                        message,
                        max_key_bits=self.config.max_rsa_key_bits,
                        parsed=parsed,
                    ),
                    ArcResult("fail"),
                )
            )
        )
        policy_task = asyncio.ensure_future(
            self._guarded("dmarc", discover_policies(self.resolver, sender.domains), {})
        )
        tasks = [t for t in (spf_task, dkim_task, arc_task, policy_task) if t is not None]
        _done, pending = await asyncio.wait(tasks, timeout=max(deadline - loop.time(), 0))
        for task in pending:
            task.cancel()
        if spf_now is not None:
            spf = spf_now
        else:
            assert spf_task is not None
            spf = spf_task.result() if spf_task not in pending else timeout_spf
        dkim: list[DkimResult] = (
            dkim_task.result()
            if dkim_task not in pending
            else [DkimResult("temperror", reason="check timed out")]
        )
        if arc_now is not None:
            arc = arc_now
        else:
            assert arc_task is not None
            arc = (
                arc_task.result() if arc_task not in pending else ArcResult("fail", 0, "timed out")
            )
        policies = policy_task.result() if policy_task not in pending else None
        evaluation = self._guarded(
            "dmarc",
            check_dmarc(self.resolver, sender.domains, spf, dkim, rng=self.rng, policies=policies),
            DmarcResult("temperror", reason="internal error"),
        )
        if policies is not None and all(d in policies for d in sender.domains):
            # Every policy is known: the evaluation looks nothing up and cannot overrun the
            # deadline, so it runs here, without a task under a timeout.
            dmarc = await evaluation
        else:
            try:
                dmarc = await asyncio.wait_for(
                    evaluation, timeout=max(deadline - loop.time(), 0.001)
                )
            except TimeoutError:
                # The policy lookup did not finish: nothing is known, which is not "no policy".
                dmarc = DmarcResult(
                    "temperror",
                    sender.domains[0] if sender.domains else "",
                    reason="no answer within mail.auth.check_timeout",
                    lookup=LOOKUP_FAILED if sender.domains else "",
                )
        flags = self._flags(sender, mail_from, dmarc, dkim)
        decision = decide(self.config, spf=spf, dkim=dkim, dmarc=dmarc, flags=flags, arc=arc)
        infos = [self._spf_info(spf, helo), *self._dkim_infos(dkim)]
        infos += [self._dmarc_info(dmarc, sender), self._arc_info(arc)]
        dkim_word = min((d.result for d in dkim), key=_DKIM_ORDER.index, default="none")
        details = {
            "spf": {
                "result": spf.result,
                "identity": spf.identity,
                "domain": spf.domain,
                "explanation": spf.explanation,
            },
            "dkim": [d.as_dict() for d in dkim],
            "dmarc": dmarc.as_dict(),
            "arc": arc.as_dict(),
            "from": [address for _, address in sender.addresses],
            "client_ip": client_ip,
            "helo": helo,
            "mail_from": mail_from,
        }
        verdict = self._finish(
            infos,
            action=decision.action,
            reason=decision.reason,
            words=(spf.result, dkim_word, dmarc.result, arc.result),
            flags=flags,
            details=details,
        )
        verdict.strip_headers = our_results_ranges(message, self.authserv_id, parsed[2])
        return verdict

    def _spf_cached(self, *, client_ip: str, mail_from: str, helo: str) -> SpfResult | None:
        """The SPF result from the SPF result cache, or None."""
        helo = helo.strip()
        cached = self.spf_cache.get(client_ip, mail_from, helo, time.monotonic())
        if cached is None:
            return None
        SPF_CACHED.inc()
        identity, sender, domain = spf_identity(mail_from, helo)
        return SpfResult(cached[0], identity, domain, sender, cached[1])

    async def _spf(self, *, client_ip: str, mail_from: str, helo: str) -> SpfResult:
        """:func:`check_spf`, answered from the SPF result cache while its answers live."""
        cached = self._spf_cached(client_ip=client_ip, mail_from=mail_from, helo=helo)
        if cached is not None:
            return cached
        helo = helo.strip()
        with consulted() as answers:
            result = await check_spf(
                self.resolver, client_ip=client_ip, mail_from=mail_from, helo=helo
            )
        self.spf_cache.put(
            client_ip=client_ip,
            mail_from=mail_from,
            helo=helo,
            result=result,
            answers=answers,
            now=time.monotonic(),
        )
        return result

    def _flags(
        self, sender: FromInfo, mail_from: str, dmarc: DmarcResult, dkim: list[DkimResult]
    ) -> list[str]:
        flags = []
        if sender.fields == 0:
            flags.append("no_from")
        elif sender.fields > 1 or len(sender.addresses) > 1:
            flags.append("multiple_from")
        elif not sender.domains:
            flags.append("no_from_domain")
        envelope_domain = domain_of(mail_from) if mail_from else None
        if envelope_domain and sender.domains:
            envelope_org = organisational_domain(envelope_domain)
            if any(organisational_domain(d) != envelope_org for d in sender.domains):
                flags.append(MISMATCH_FLAG)
        if self.local_domains:
            claims_from = dmarc.result != "pass" and any(
                _is_within(d, local) for d in sender.domains for local in self.local_domains
            )
            claims_name = any(
                _mentions(name, local) and not any(_is_within(d, local) for d in sender.domains)
                for name in sender.display_names
                for local in self.local_domains
            )
            if claims_from or claims_name:
                flags.append(LOCAL_CLAIM_FLAG)
        if any(not d.body_covered for d in dkim):
            flags.append("dkim_partial_body")
        names = sender.display_names
        flags += imitation_flags(sender.domains, names, dmarc.result, self.local_domains)
        return flags

    @staticmethod
    def _spf_info(spf: SpfResult, helo: str) -> ResInfo:
        note = spf.explanation if spf.result != "pass" else ""
        if spf.identity == "helo":
            return ResInfo("spf", spf.result, note, [("smtp.helo", helo or spf.domain)])
        return ResInfo("spf", spf.result, note, [("smtp.mailfrom", spf.sender)])

    @staticmethod
    def _dkim_infos(results: list[DkimResult]) -> list[ResInfo]:
        if not results:
            return [ResInfo("dkim", "none")]
        infos = []
        for d in results:
            props = [("header.d", d.domain), ("header.s", d.selector), ("header.a", d.algorithm)]
            infos.append(ResInfo("dkim", d.result, d.reason, [p for p in props if p[1]]))
        return infos

    @staticmethod
    def _dmarc_info(dmarc: DmarcResult, sender: FromInfo) -> ResInfo:
        if not dmarc.from_domain:
            return ResInfo("dmarc", dmarc.result, dmarc.reason)
        note = ""
        if dmarc.policy:
            note = f"p={dmarc.policy} dis={dmarc.disposition}"
        if dmarc.result in ("fail", "temperror", "none") and dmarc.reason:
            # For none the reason tells "no record" from "the From: domain does not exist".
            note = f"{note}: {dmarc.reason}" if note else dmarc.reason
        return ResInfo("dmarc", dmarc.result, note, [("header.from", dmarc.from_domain)])

    @staticmethod
    def _arc_info(arc: ArcResult) -> ResInfo:
        note = arc.reason or (f"{arc.instances} sets" if arc.instances else "")
        return ResInfo("arc", arc.result, note)

    def _finish(
        self,
        infos: list[ResInfo],
        *,
        action: Literal["accept", "reject", "quarantine"],
        reason: str,
        words: tuple[str, ...],
        flags: list[str],
        details: dict[str, Any],
    ) -> AuthVerdict:
        spf, dkim, dmarc, arc = words
        for info in infos:
            RESULTS.labels(info.method, info.result).inc()
        ACTIONS.labels(action).inc()
        for flag in flags:
            FLAGS.labels(flag).inc()
        verdict = AuthVerdict(
            render(self.authserv_id, infos), action, reason, spf, dkim, dmarc, arc, flags, details
        )
        log.info(
            "mail.auth.verdict",
            extra={
                "action": action,
                "spf": spf,
                "dkim": dkim,
                "dmarc": dmarc,
                "arc": arc,
                "flags": ",".join(flags),
                "client_ip": details.get("client_ip", ""),
                "reason": reason,
            },
        )
        return verdict
