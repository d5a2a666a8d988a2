"""Sender authentication: SPF, DKIM, DMARC and ARC checks, DKIM signing, sender binding.

The SMTP server calls :class:`Authenticator` (``check``) at the end of DATA, prepends the
verdict's Authentication-Results field after :func:`strip_our_results`, signs submission mail
with :func:`sign` and binds authenticated users to their addresses with
:func:`sender_allowed`. Layout and trust boundaries: docs/ARCHITECTURE.md.

The names are imported on first use: the configuration model (``config``) is loaded by every
command, the DNS and DKIM libraries only by those that check or sign mail.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lanalyze.mail.auth.config import AuthConfig, SigningKey

if TYPE_CHECKING:
    from lanalyze.mail.auth.authenticator import Authenticator, AuthVerdict
    from lanalyze.mail.auth.policy import sender_allowed
    from lanalyze.mail.auth.results import strip_our_results
    from lanalyze.mail.auth.signing import sign

_LAZY = {
    "Authenticator": "lanalyze.mail.auth.authenticator",
    "AuthVerdict": "lanalyze.mail.auth.authenticator",
    "sender_allowed": "lanalyze.mail.auth.policy",
    "strip_our_results": "lanalyze.mail.auth.results",
    "sign": "lanalyze.mail.auth.signing",
}

__all__ = [
    "AuthConfig",
    "AuthVerdict",
    "Authenticator",
    "SigningKey",
    "sender_allowed",
    "sign",
    "strip_our_results",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
