"""DKIM verification (RFC 6376 §6) of every signature on a message, up to a limit.

dkimpy does the verification: tag parsing, rsa-sha256 and ed25519-sha256 (RFC 8463), simple
and relaxed canonicalisation, key records. What is ours:

* its DNS comes from :mod:`lanalyze.mail.auth.dns` (asynchronous, prefetched) through its
  ``dnsfunc`` parameter, and the hashing runs in a worker thread, off the event loop;
* results are the RFC 8601 §2.7.1 words, which dkimpy's True/False does not give: a missing
  key or malformed signature is ``permerror``, DNS trouble ``temperror``, a bad hash ``fail``;
* ``l=`` (§3.5, §8.2): dkimpy verifies only the first ``l`` octets of the body. A valid
  signature that leaves body content unsigned is reported as ``policy`` (configurable), so
  that content appended by anyone cannot ride on the signer's reputation (DMARC only counts
  ``pass``).

Trust: message and DNS answers are the peer's; dkimpy's exceptions are caught per signature.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from lanalyze.mail.auth.dns import (
    INLINE_LIMIT,
    LookupBudgetExceeded,
    LookupNeeded,
    Prefetched,
    Resolver,
    run_with_lookups,
)
from lanalyze.mail.auth.message import (
    MAX_FOLDING_COST,
    field_value,
    folding_cost,
    header_fields,
    split_message,
)

_quiet = logging.getLogger("lanalyze.mail.auth.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
# dkimpy logs every bad signature at error level; they are results here, not our errors.
_quiet.setLevel(logging.CRITICAL)

MAX_ROUNDS = 4


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass fail policy neutral temperror permerror
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    identity: str = ""  # i=
    body_length: int | None = None  # l=, when present
    body_covered: bool = True  # False when l= leaves body content unsigned
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "domain": self.domain,
            "selector": self.selector,
            "algorithm": self.algorithm,
            "identity": self.identity,
            "body_length": self.body_length,
            "body_covered": self.body_covered,
            "reason": self.reason,
        }


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


def _tags(raw_field: bytes) -> dict[bytes, bytes]:
    value = field_value(raw_field).encode("utf-8", "replace")
    try:
        return dict(parse_tag_value(re.sub(rb"\s+", b" ", value)))
    except InvalidTagValueList:
        return {}


def signing_key_name(raw_field: bytes) -> str | None:
    """``<s>._domainkey.<d>`` named by a signature field (DKIM-Signature, ARC-*), if any."""
    tags = _tags(raw_field)
    selector, domain = tags.get(b"s"), tags.get(b"d")
    if not selector or not domain:
        return None
    return f"{_text(selector)}._domainkey.{_text(domain)}"


def _verify_one(message: bytes, index: int, tags: dict[bytes, bytes], length_tag: str) -> Any:
    """The verification of signature ``index``, as a function of the DNS answers so far."""

    def run(view: Prefetched) -> DkimResult:
        base = DkimResult(
            "none",
            domain=_text(tags.get(b"d")).lower(),
            selector=_text(tags.get(b"s")),
            algorithm=_text(tags.get(b"a")),
            identity=_text(tags.get(b"i")),
        )

        def outcome(word: str, **changes: Any) -> DkimResult:
            return dataclasses.replace(base, result=word, **changes)

        trouble: list[str] = []
        key_text: list[bytes | None] = []

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            answer = view.get(name, "TXT")
            if answer.status == "error":
                trouble.append(answer.error)
                raise dkim.DnsTimeoutError(answer.error)
            text = answer.records[0] if answer.records else None
            key_text.append(text if isinstance(text, bytes) else None)
            return key_text[-1]

        try:
            verifier = dkim.DKIM(message, logger=_quiet, minkey=1024)
            ok = verifier.verify(idx=index, dnsfunc=dnsfunc)
        except dkim.ValidationError as exc:
            text = str(exc)
            return outcome(
                "fail", reason="body hash mismatch" if "body hash" in text else text[:200]
            )
        except dkim.DKIMException as exc:
            return outcome("permerror", reason=str(exc)[:200])
        except LookupNeeded:
            raise
        except Exception as exc:
            # dkimpy lets errors of its crypto back ends escape on hostile input (an RSA
            # signature checked with an Ed25519 key raises nacl's ValueError): the signer's
            # data is at fault, not us.
            return outcome("permerror", reason=f"unusable signature or key: {type(exc).__name__}")
        if trouble:
            return outcome("temperror", reason=f"key lookup: {trouble[0]}")
        if not ok:
            if not key_text or key_text[-1] is None:
                return outcome("permerror", reason="no key for signature")
            try:
                dkim.evaluate_pk(b"key", key_text[-1])
            except dkim.DKIMException as exc:
                return outcome("permerror", reason=f"bad key: {exc}"[:200])
            return outcome("fail", reason="signature did not verify")
        if b"l" not in tags:
            return outcome("pass")
        length = int(tags[b"l"])
        try:
            policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError:
            return outcome("permerror", reason="invalid c=")
        body_len = len(policy.canonicalize_body(verifier.body))
        if length >= body_len:
            return outcome("pass", body_length=length)
        reason = f"l={length} signs {length} of {body_len} body octets"
        return outcome(
            "policy" if length_tag == "policy" else "pass",
            body_length=length,
            body_covered=False,
            reason=reason,
        )

    return run


async def verify_dkim(
    resolver: Resolver, message: bytes, *, max_signatures: int = 5, length_tag: str = "policy"
) -> list[DkimResult]:
    """One result per DKIM-Signature field (top to bottom), at most ``max_signatures``."""
    header, _ = split_message(message)
    fields = header_fields(header)
    signatures = [raw for name, raw in fields if name == b"dkim-signature"]
    if not signatures:
        return []
    cost = folding_cost(fields)
    if cost > MAX_FOLDING_COST:
        return [DkimResult("permerror", reason="header folded too often to verify safely")]
    in_thread = len(message) > INLINE_LIMIT or cost > INLINE_LIMIT * 16
    results = []
    for index, raw in enumerate(signatures[:max_signatures]):
        tags = _tags(raw)
        if b"l" in tags and not tags[b"l"].isdigit():
            results.append(DkimResult("permerror", reason="invalid l= tag"))
            continue
        key = signing_key_name(raw)
        try:
            result = await run_with_lookups(
                _verify_one(message, index, tags, length_tag),
                resolver,
                max_rounds=MAX_ROUNDS,
                in_thread=in_thread,
                prefetch=[(key, "TXT")] if key else None,
            )
        except LookupBudgetExceeded as exc:
            result = DkimResult("permerror", reason=str(exc))
        results.append(result)
    return results
