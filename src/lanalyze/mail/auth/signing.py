"""Outbound DKIM signing (RFC 6376 §5, RFC 8463) of mail from authenticated submission users.

dkimpy signs; ours is choosing the keys (``mail.auth.signing`` entries for the From domain,
else for its nearest parent domain, whose signature still aligns under relaxed DMARC), reading
the message and the key files in a worker thread, and relaxed/relaxed canonicalisation, which
survives the re-folding some relays do. A key that cannot be used is logged and skipped: the
message goes out with the signatures that could be made rather than not at all.

Trust: the message is an authenticated user's; key files are the operator's.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import dkim
from prometheus_client import Counter

from lanalyze.log import get_logger
from lanalyze.mail.auth.config import AuthConfig, SigningKey
from lanalyze.mail.auth.message import (
    MAX_FOLDING_COST,
    folding_cost,
    header_fields,
    split_message,
)
from lanalyze.metrics import REGISTRY

log = get_logger("lanalyze.mail.auth.signing")
_quiet = logging.getLogger("lanalyze.mail.auth.dkimpy")

SIGNATURES = Counter(
    "lanalyze_mail_dkim_signatures",
    "DKIM signatures made for outbound mail, by signing domain and outcome (ok, error).",
    ["domain", "outcome"],
    registry=REGISTRY,
)

ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


def keys_for(config: AuthConfig, from_domain: str) -> list[SigningKey]:
    domain = from_domain.strip().rstrip(".").lower()
    while domain:
        keys = [k for k in config.signing if k.domain == domain]
        if keys:
            return keys
        _, dot, domain = domain.partition(".")
        if not dot or "." not in domain:
            break
    return []


def _sign_sync(message_or_path: bytes | Path, keys: list[SigningKey]) -> bytes:
    message = (
        message_or_path if isinstance(message_or_path, bytes) else message_or_path.read_bytes()
    )
    header, _ = split_message(message)
    if folding_cost(header_fields(header)) > MAX_FOLDING_COST:
        log.error("mail.dkim.sign_skipped", extra={"reason": "header folded too often"})
        return b""
    headers = []
    for key in keys:
        try:
            private = key.key_file.expanduser().read_bytes()
            signer = dkim.DKIM(message, logger=_quiet, linesep=b"\r\n")
            header = signer.sign(
                key.selector.encode(),
                key.domain.encode(),
                private,
                signature_algorithm=ALGORITHMS[key.algorithm],
                canonicalize=(b"relaxed", b"relaxed"),
            )
        except (OSError, dkim.DKIMException) as exc:
            SIGNATURES.labels(key.domain, "error").inc()
            log.error(
                "mail.dkim.sign_failed",
                extra={"domain": key.domain, "selector": key.selector, "error": str(exc)},
            )
            continue
        SIGNATURES.labels(key.domain, "ok").inc()
        headers.append(header if header.endswith(b"\r\n") else header + b"\r\n")
    return b"".join(headers)


async def sign(message: bytes | Path, *, config: AuthConfig, from_domain: str) -> bytes:
    """DKIM-Signature field(s) to prepend, CRLF-terminated; b"" when no key fits.

    ``message`` is the message's bytes (the SMTP server's case) or a file read whole."""
    keys = keys_for(config, from_domain)
    if not keys:
        return b""
    return await asyncio.to_thread(_sign_sync, message, keys)
