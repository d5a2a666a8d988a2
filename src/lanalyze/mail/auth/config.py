"""Settings of the sender checks and DKIM signing (section ``[mail.auth]``).

Trust: operator input, validated completely (see :mod:`lanalyze.config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from lanalyze.configbase import ListenAddress, Section

Action = Literal["reject", "quarantine", "tag"]
"""What to do with a message: 550 5.7.1 before the 250, the Junk folder, or only the header."""

DmarcAction = Literal["honour", "reject", "quarantine", "tag"]
"""An action, or ``honour``: do what the domain's published policy asks."""


class SigningKey(Section):
    domain: str = Field(
        min_length=1, max_length=253, description="Header From domain whose mail this key signs."
    )
    selector: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="DKIM selector: the key is published at `<selector>._domainkey.<domain>`.",
    )
    key_file: Path = Field(
        description="Private key file written by `lanalyze mail dkim keygen` (PEM for RSA, "
        "base64 seed for Ed25519)."
    )
    algorithm: Literal["rsa", "ed25519"] = Field(
        default="rsa", description="`rsa` signs rsa-sha256, `ed25519` signs ed25519-sha256."
    )

    @field_validator("domain")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().rstrip(".").lower()


class AuthConfig(Section):
    enabled: bool = Field(
        default=True, description="Check SPF, DKIM, DMARC and ARC on every inbound message."
    )
    resolver: ListenAddress | None = Field(
        default=None,
        description="DNS server for the checks as HOST:PORT; unset uses /etc/resolv.conf.",
    )
    dns_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds one DNS query may take (all retries)."
    )
    dns_cache_size: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="DNS answers (negative ones too) kept across messages for their TTL; "
        "0 disables the cache.",
    )
    dns_cache_memory: int = Field(
        default=8 * 1024 * 1024,
        ge=65536,
        le=1024 * 1024 * 1024,
        description="Bytes the DNS answer cache and the SPF result cache may hold each "
        "(records and names, estimated); the least recently used go first.",
    )
    check_timeout: float = Field(
        default=20.0,
        gt=0,
        le=300,
        description="Seconds all checks of one message may take; what is left is temperror.",
    )
    local_domains: list[str] = Field(
        default_factory=list,
        description="Our own domains, in addition to the mail server's local domains; mail "
        "from outside claiming them is flagged.",
    )
    max_signatures: int = Field(
        default=5,
        ge=1,
        le=50,
        description="DKIM signatures verified per message; further ones are ignored.",
    )
    max_rsa_key_bits: int = Field(
        default=4096,
        ge=1024,
        le=8192,
        description="Largest RSA key (bits) a DKIM or ARC signature is verified with; larger "
        "keys, and exponents other than 65537 or 3, are refused (permerror) before any RSA "
        "work (RFC 8301 §3.2).",
    )
    length_tag: Literal["policy", "pass"] = Field(
        default="policy",
        description="Result of a valid DKIM signature whose `l=` leaves body content unsigned: "
        "`policy` (not counted for DMARC) or `pass` (flagged only).",
    )
    on_dmarc_reject: DmarcAction = Field(
        default="honour",
        description="A DMARC failure whose domain publishes p=reject: `honour` rejects "
        "(after `pct` sampling), or force `reject`, `quarantine`, `tag`.",
    )
    on_dmarc_quarantine: DmarcAction = Field(
        default="honour",
        description="A DMARC failure whose domain publishes p=quarantine: `honour` "
        "quarantines (after `pct`), or force `reject`, `quarantine`, `tag`.",
    )
    on_spf_fail: Action = Field(
        default="tag", description="SPF fail (hard `-all`) whatever DMARC says."
    )
    on_dkim_fail: Action = Field(
        default="tag", description="A DKIM signature that does not verify, whatever DMARC says."
    )
    on_malformed_from: Action = Field(
        default="tag",
        description="No From: field, several From: fields or addresses (RFC 7489 §6.6.1).",
    )
    on_local_domain_claimed: Action = Field(
        default="tag",
        description="Unauthenticated mail whose From: or display name claims a local domain "
        "and does not pass DMARC.",
    )
    arc_trusted_sealers: list[str] = Field(
        default_factory=list,
        description="Forwarders (ARC-Seal d= domains, e.g. mailing lists) whose valid ARC "
        "chain overrides a DMARC failure (RFC 8617 §7.2.1).",
    )
    signing: list[SigningKey] = Field(
        default_factory=list,
        description="DKIM keys that sign mail from authenticated submission users.",
    )

    @field_validator("local_domains", "arc_trusted_sealers")
    @classmethod
    def _lower_domains(cls, value: list[str]) -> list[str]:
        return [domain.strip().rstrip(".").lower() for domain in value if domain.strip()]
