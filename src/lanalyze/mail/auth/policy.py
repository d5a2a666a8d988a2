"""What happens to a message given its check results, and who may send as which address.

Pure functions over results and configuration (sans-IO): :func:`decide` picks the strictest
action any configured rule asks for; :func:`sender_allowed` is the submission-side binding of
authenticated users to the addresses they own, modelled on maddy's ``authorize_sender``.

Trust: results are ours; addresses are the (authenticated) client's and are normalised here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from lanalyze.mail.auth.arc import ArcResult
from lanalyze.mail.auth.config import AuthConfig
from lanalyze.mail.auth.dkim_verify import DkimResult
from lanalyze.mail.auth.dmarc import DmarcResult
from lanalyze.mail.auth.flags import LOCAL_CLAIM_FLAG
from lanalyze.mail.auth.spf import SpfResult

Verdict = Literal["accept", "quarantine", "reject"]
_RANK = {"accept": 0, "tag": 0, "quarantine": 1, "reject": 2}

MALFORMED_FROM_FLAGS = ("no_from", "multiple_from")


@dataclass(frozen=True)
class Decision:
    action: Verdict
    reason: str


def _dmarc_rule(config: AuthConfig, dmarc: DmarcResult) -> tuple[str, str] | None:
    if dmarc.result != "fail" or dmarc.disposition == "none":
        return None
    setting = (
        config.on_dmarc_reject if dmarc.disposition == "reject" else config.on_dmarc_quarantine
    )
    action = dmarc.disposition if setting == "honour" else setting
    text = f"DMARC policy {dmarc.policy} for {dmarc.from_domain}: {dmarc.reason}"
    if dmarc.disposition != dmarc.policy:
        text += f" (outside pct sample: {dmarc.disposition})"
    return action, text


def decide(
    config: AuthConfig,
    *,
    spf: SpfResult | None,
    dkim: Sequence[DkimResult],
    dmarc: DmarcResult,
    flags: Sequence[str],
    arc: ArcResult | None = None,
) -> Decision:
    """The strictest action any rule asks for, with the reasons that asked for it."""
    candidates: list[tuple[str, str]] = []
    rule = _dmarc_rule(config, dmarc)
    sealer = arc.sealers[0] if arc and arc.result == "pass" and arc.sealers else ""
    if rule and sealer.lower() in config.arc_trusted_sealers:
        candidates.append(("tag", f"{rule[1]}; overridden by trusted ARC sealer {sealer}"))
    elif rule:
        candidates.append(rule)
    if spf is not None and spf.result == "fail":
        candidates.append((config.on_spf_fail, f"SPF fail for {spf.domain}"))
    failed = [d.domain for d in dkim if d.result == "fail"]
    if failed:
        candidates.append((config.on_dkim_fail, f"DKIM fail for {', '.join(failed)}"))
    malformed = [f for f in flags if f in MALFORMED_FROM_FLAGS]
    if malformed:
        candidates.append((config.on_malformed_from, f"From: {', '.join(malformed)}"))
    if LOCAL_CLAIM_FLAG in flags:
        candidates.append((config.on_local_domain_claimed, "claims a local domain from outside"))
    worst = max((_RANK[action] for action, _ in candidates), default=0)
    if worst == 0:
        if dmarc.result == "pass":
            return Decision("accept", f"DMARC pass for {dmarc.from_domain}")
        notes = [text for _, text in candidates]
        return Decision("accept", "; ".join(notes) if notes else f"DMARC {dmarc.result}")
    action: Verdict = "reject" if worst == 2 else "quarantine"
    reasons = [text for act, text in candidates if _RANK[act] == worst]
    return Decision(action, "; ".join(reasons))


def _normalise_address(address: str) -> str:
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    return f"{local.lower()}@{domain.rstrip('.').lower()}"


def sender_allowed(user: str, address: str, owned: Mapping[str, list[str]]) -> bool:
    """May authenticated ``user`` use ``address`` as envelope or header From?

    Allowed: the user's own login when it is an address, an exact address listed for the user,
    or any address at a domain listed as ``@domain``. Addresses compare case-insensitively; the
    null sender and addresses without a domain are never allowed.
    """
    wanted = _normalise_address(address)
    local, at, domain = wanted.rpartition("@")
    if not at or not local or not domain:
        return False
    entries = owned.get(user, [])
    if "@" in user and _normalise_address(user) == wanted:
        return True
    for entry in entries:
        entry_norm = _normalise_address(entry)
        if entry_norm.startswith("@"):
            if entry_norm[1:] == domain:
                return True
        elif entry_norm == wanted:
            return True
    return False
