"""ARC (RFC 8617) chain validation (§5.2), recorded as ``arc=pass|fail|none``.

dkimpy's ``ARC.verify`` does the validation (instance ordering, AMS of the newest set, every
ARC-Seal, the ``cv=`` chain rules); ours is the DNS (prefetched asynchronously, see
:mod:`lanalyze.mail.auth.dns`), running it in a worker thread, the 50-instance limit of §4.2.1
before any work, the key limits of :func:`~lanalyze.mail.auth.dkim_verify.key_refusal` (a
refused key fails the chain before any public-key operation; RSA is verified by OpenSSL, see
:mod:`~lanalyze.mail.auth.dkim_verify`), and turning its exceptions into a ``fail`` with a
reason.

The result is recorded, not enforced: a forwarder's seal tells who vouched for the original
authentication results, and what to trust is a local decision.

Trust: every ARC header field is the peer's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import dkim

from lanalyze.mail.auth.dkim_verify import MAX_RSA_KEY_BITS, key_refusal, signing_key_name
from lanalyze.mail.auth.dns import INLINE_LIMIT, Prefetched, Resolver, run_with_lookups
from lanalyze.mail.auth.message import (
    MAX_FOLDING_COST,
    Parsed,
    folding_cost,
    parse_message,
)
from lanalyze.mail.errors import LookupBudgetExceeded, LookupNeeded

MAX_INSTANCES = 50

_quiet = logging.getLogger("lanalyze.mail.auth.dkimpy")


@dataclass(frozen=True)
class ArcResult:
    result: str  # pass fail none
    instances: int = 0
    reason: str = ""
    sealers: list[str] = field(default_factory=list)  # d= of each ARC-Seal, newest first

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "instances": self.instances,
            "reason": self.reason,
            "sealers": self.sealers,
        }


def _verify(message: bytes, max_key_bits: int) -> Any:
    def run(view: Prefetched) -> ArcResult:
        trouble: list[str] = []
        refused: list[str] = []

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            answer = view.get(name, "TXT")
            if answer.status == "error":
                trouble.append(answer.error)
                raise dkim.DnsTimeoutError(answer.error)
            text = answer.records[0] if answer.records else None
            record = text if isinstance(text, bytes) else None
            refusal = key_refusal(record, max_key_bits)
            if refusal is not None:
                refused.append(refusal)
                raise dkim.KeyFormatError(refusal)
            return record

        try:
            verifier = dkim.ARC(message, logger=_quiet, minkey=1024)
            cv, sets, comment = verifier.verify(dnsfunc=dnsfunc)
        except dkim.DKIMException as exc:
            return ArcResult("fail", reason=str(exc)[:200])
        except LookupNeeded:
            raise
        except Exception as exc:
            # dkimpy indexes into headers it assumes exist and lets its crypto back ends'
            # errors escape; a crafted chain gets here, and it is the sealer's fault.
            return ArcResult("fail", reason=f"malformed ARC set: {type(exc).__name__}")
        sealers = [
            s.get("as-domain", b"").decode("ascii", "replace") for s in sets if isinstance(s, dict)
        ]
        word = cv.decode("ascii") if isinstance(cv, bytes) else "fail"
        reason = "" if comment == "success" else str(comment)[:200]
        if trouble:
            reason = f"key lookup: {trouble[0]}"
        if refused:
            return ArcResult("fail", len(sets), refused[0], sealers)
        return ArcResult(
            word if word in ("pass", "fail", "none") else "fail", len(sets), reason, sealers
        )

    return run


async def verify_arc(
    resolver: Resolver,
    message: bytes,
    *,
    max_key_bits: int = MAX_RSA_KEY_BITS,
    parsed: Parsed | None = None,
) -> ArcResult:
    """The ARC chain's result (``parsed``: the message's :func:`parse_message`, if done)."""
    _header, _body, fields = parsed if parsed is not None else parse_message(message)
    seals = sum(1 for name, _raw in fields if name == b"arc-seal")
    if seals == 0:
        return ArcResult("none")
    cost = folding_cost(fields)
    if cost > MAX_FOLDING_COST:
        return ArcResult("fail", seals, "header folded too often to verify safely")
    if seals > MAX_INSTANCES:
        return ArcResult("fail", seals, f"more than {MAX_INSTANCES} ARC sets")
    keys = [
        (key_name, "TXT")
        for name, raw in fields
        if name in (b"arc-seal", b"arc-message-signature")
        and (key_name := signing_key_name(raw)) is not None
    ]
    try:
        # Every key is fetched before dkimpy runs: each re-run would hash the body again
        # for every ARC set already verified.
        return await run_with_lookups(
            _verify(message, max_key_bits),
            resolver,
            max_rounds=2 * seals + 2,
            # Each ARC set hashes the body again: only a short chain on a small message
            # stays on the event loop.
            in_thread=len(message) > INLINE_LIMIT or seals > 2 or cost > INLINE_LIMIT * 16,
            prefetch=keys[: 2 * MAX_INSTANCES],
        )
    except LookupBudgetExceeded as exc:
        return ArcResult("fail", seals, str(exc))
