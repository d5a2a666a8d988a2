"""The authentication verdict of a message in plain words, and the sender/recipient checks.

Input is the verdict the mail server stored with the message (``auth`` in the index: SPF,
DKIM, DMARC and ARC words, their details and the suspicious-sender flags) and the envelope
and header addresses. Output is a list of :class:`Finding` (good / bad / note and one
sentence each) and the list of warnings shown at the top of the message page. Every string
from the message (domains, addresses, reasons) stays data: templates escape it.

Trust: the verdict is our own index's JSON, but an older version (or a damaged row) may have
written another shape. Any part that is not what we write now reads as absent, a whole
verdict that is not an object as unreadable: never an exception, never a good sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lanalyze.mail.index import is_forged

FLAG_TEXT = {
    "from_envelope_mismatch": "The envelope sender and the From: line name different domains.",
    "local_domain_claimed_from_outside": "The From: line claims one of our own domains, but the "
    "message came from outside without logging in.",
    "multiple_from": "The message has more than one From: address.",
    "no_from": "The message has no From: line.",
    "no_from_domain": "The From: address has no domain.",
    "dkim_partial_body": "The DKIM signature covers only part of the body; text could have been "
    "appended.",
    "lookalike_domain": "The From: domain looks like one of our own or a well-known domain, "
    "but is a different one.",
    "display_name_spoof": "The display name on the From: line names a different sender (an "
    "address, a domain or a well-known name) than the address it comes from.",
    "well_known_domain_claimed": "The From: line claims a well-known domain, but nothing "
    "confirms that the message comes from it (no DMARC pass).",
}


@dataclass(frozen=True)
class Finding:
    check: str
    word: str
    tone: str  # "good", "bad", "note"
    text: str


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""


def explain(auth: object) -> list[Finding]:
    """Findings for the stored verdict ``auth`` (any JSON value the index holds)."""
    if not auth:
        return [
            Finding(
                "auth",
                "none",
                "note",
                "This message was not checked (authentication checks were off when it arrived).",
            )
        ]
    if not isinstance(auth, dict):
        return [
            Finding(
                "auth",
                "unreadable",
                "note",
                "The stored verdict cannot be read (written in another shape); the results of "
                "the checks are unknown.",
            )
        ]
    details = auth.get("details")
    if not isinstance(details, dict):
        details = {}
    findings = [_spf(_word(auth.get("spf")), details)]
    findings += _dkim(_word(auth.get("dkim")), details)
    findings.append(_dmarc(_word(auth.get("dmarc")), details))
    arc = _arc(_word(auth.get("arc")), details)
    if arc is not None:
        findings.append(arc)
    return findings


def _word(value: Any) -> str:
    """A stored result word; anything else (an older or damaged record) reads as none."""
    return value if isinstance(value, str) and value else "none"


def _part(details: dict[str, Any], name: str) -> dict[str, Any]:
    value = details.get(name)
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[Any]:
    """A stored list; anything else (a number, a string, an object) reads as empty."""
    return value if isinstance(value, list) else []


def _spf(word: str, details: dict[str, Any]) -> Finding:
    spf = _part(details, "spf")
    domain = spf.get("domain") or _domain(str(details.get("mail_from", ""))) or "the sender domain"
    ip = details.get("client_ip") or "the sending server"
    texts = {
        "pass": (
            "good",
            f"The sending server {ip} is allowed to send mail for {domain} (its SPF record "
            "lists it).",
        ),
        "fail": (
            "bad",
            f"The sending server {ip} is NOT allowed to send mail for {domain}: the domain's SPF "
            "record forbids it.",
        ),
        "softfail": (
            "bad",
            f"{domain} says the server {ip} is probably not one of its servers (SPF softfail).",
        ),
        "neutral": ("note", f"{domain} makes no statement about the server {ip} (SPF neutral)."),
        "none": ("note", f"{domain} publishes no SPF record, so the server cannot be checked."),
        "temperror": ("note", "The SPF check hit a temporary DNS error; it could not be decided."),
        "permerror": ("bad", f"The SPF record of {domain} is broken (permanent error)."),
    }
    tone, text = texts.get(word, ("note", f"SPF result: {word}."))
    return Finding("SPF", word, tone, text)


def _dkim(word: str, details: dict[str, Any]) -> list[Finding]:
    signatures = [s for s in _items(details.get("dkim")) if isinstance(s, dict)]
    if not signatures or word == "none":
        return [Finding("DKIM", "none", "note", "The message carries no DKIM signature.")]
    findings = []
    for signature in signatures:
        result = str(signature.get("result", "none"))
        domain = signature.get("domain") or "an unnamed domain"
        reason = signature.get("reason") or ""
        if result == "pass":
            text = (
                f"Signed by {domain}, and the signature is valid: the signed headers and body "
                "were not changed on the way."
            )
            tone = "good"
        elif result == "fail":
            text = (
                f"A signature claims to come from {domain} but does not verify: the message was "
                "changed after signing, or the signature is forged."
            )
            tone = "bad"
        elif result in ("temperror",):
            text = f"The signature of {domain} could not be checked (DNS trouble)."
            tone = "note"
        else:
            text = f"The signature of {domain} is unusable ({result})."
            tone = "bad" if result in ("permerror", "policy") else "note"
        if reason:
            text += f" Detail: {reason}."
        findings.append(Finding("DKIM", result, tone, text))
    return findings


def _dmarc(word: str, details: dict[str, Any]) -> Finding:
    dmarc = _part(details, "dmarc")
    domain = dmarc.get("from_domain") or ""
    named = domain or "the From: domain"
    policy = dmarc.get("policy") or ""
    reason = str(dmarc.get("reason") or "")
    # What the policy lookup found (mail/auth/dmarc.py LOOKUP_*); absent in older records.
    lookup = str(dmarc.get("lookup") or "")
    if word == "pass":
        return Finding(
            "DMARC",
            word,
            "good",
            f"The From: domain {named} is confirmed: a passing SPF or DKIM check belongs to the "
            "same domain, so the From: line is genuine.",
        )
    if word == "fail":
        asked = f" Its owner asks receivers to {_policy_words(policy)}." if policy else ""
        return Finding(
            "DMARC",
            word,
            "bad",
            f"Nothing vouches for the From: domain {named}: neither SPF nor DKIM passed for "
            f"it. The From: line is probably forged.{asked}",
        )
    if word == "none" and lookup == "no_domain":
        return Finding(
            "DMARC",
            word,
            "bad",
            f"The From: domain {named} does not exist (the DNS says NXDOMAIN): the sender "
            "address is made up.",
        )
    if word == "none" and not domain:
        detail = f" ({reason})" if reason else ""
        return Finding(
            "DMARC", word, "note", f"DMARC could not be applied: no From: domain{detail}."
        )
    if word == "none":
        return Finding(
            "DMARC",
            word,
            "note",
            f"{named} publishes no DMARC policy, so a forged From: line cannot be recognised.",
        )
    if word == "temperror" and (lookup == "failed" or (not lookup and not policy and domain)):
        detail = f" ({reason})" if reason else ""
        return Finding(
            "DMARC",
            word,
            "note",
            f"The DMARC policy of {named} could not be looked up: the DNS lookup failed"
            f"{detail}. This is a temporary failure, not a missing policy: whether the From: "
            "line is genuine is unknown.",
        )
    if word == "temperror" and (lookup == "record" or policy):
        detail = f": {reason}" if reason else ""
        return Finding(
            "DMARC",
            word,
            "note",
            f"{named} publishes a DMARC policy, but the check could not be decided because a "
            f"DNS lookup of SPF or DKIM failed{detail}.",
        )
    detail = f": {reason}" if reason else ""
    return Finding(
        "DMARC", word, "note", f"The DMARC check could not be completed ({word}){detail}."
    )


def _policy_words(policy: str) -> str:
    return {
        "reject": "reject such mail",
        "quarantine": "treat such mail as spam",
        "none": "only report such mail",
    }.get(policy, f"apply policy {policy!r}")


def _arc(word: str, details: dict[str, Any]) -> Finding | None:
    if word in ("none", ""):
        return None
    arc = _part(details, "arc")
    sealers = ", ".join(str(s) for s in _items(arc.get("sealers"))) or "intermediaries"
    if word == "pass":
        return Finding(
            "ARC",
            word,
            "good",
            f"The message was forwarded by {sealers}, who vouch for the checks they saw "
            "(ARC chain valid).",
        )
    return Finding("ARC", word, "bad", f"The forwarding record (ARC) is broken ({word}).")


@dataclass(frozen=True)
class MessageWarnings:
    """What the top of the message page warns about (named so as not to shadow the
    standard ``warnings`` module, and a record rather than a 4-tuple of look-alike bools)."""

    items: list[str]
    sender_mismatch: bool
    recipient_mismatch: bool
    forged: bool


def message_warnings(
    auth: object,
    envelope_from: str,
    header_from: list[str],
    recipients: list[str],
    header_to: list[str],
) -> MessageWarnings:
    """Warnings for the top of the page, whether the envelope and the header disagree on
    sender or recipients, and whether the message looks forged."""
    items: list[str] = []
    if not isinstance(auth, dict):  # not checked, or unreadable: explain() says which
        auth = {}
    # The same rule as the list's marks and the forged filter (mail.index owns it).
    forged = is_forged(auth)
    # An empty flag (a damaged or hand-edited verdict) would be an empty warning line.
    flags = [str(f) for f in _items(auth.get("flags")) if str(f)]
    if auth:
        if auth.get("dmarc") == "fail":
            items.append("DMARC failed: the From: line is not vouched for by its domain.")
        for flag in flags:
            items.append(FLAG_TEXT.get(flag, flag))
        if auth.get("spf") == "fail":
            items.append("SPF failed: the sending server may not send for the envelope domain.")
        if auth.get("dkim") == "fail":
            items.append("A DKIM signature does not verify.")
    from_domains = {_domain(a) for a in header_from if _domain(a)}
    envelope_domain = _domain(envelope_from)
    sender_mismatch = bool(envelope_domain and from_domains and envelope_domain not in from_domains)
    if sender_mismatch and not any("envelope sender" in item for item in items):
        items.append(
            f"The envelope sender ({envelope_from}) and the From: line "
            f"({', '.join(header_from)}) name different domains."
        )
    listed = {a.lower() for a in header_to}
    recipient_mismatch = bool(recipients) and not any(r.lower() in listed for r in recipients)
    if recipient_mismatch:
        items.append(
            "None of the envelope recipients appears in To: or Cc: (a Bcc, a mailing list, or a "
            "message addressed to someone else)."
        )
    return MessageWarnings(items, sender_mismatch, recipient_mismatch, forged)
