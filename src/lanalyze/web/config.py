"""Settings of the web console, JSON API and /metrics (section ``[web]``).

Users are listed here with argon2 password hashes (``lanalyze web hash-password`` prints one);
the session signing key lives in a file so it survives restarts without being in the config.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from lanalyze.configbase import Section, is_loopback, listen_list

RangeName = Literal["5m", "15m", "1h", "6h", "24h", "7d", "30d"]
DEFAULT_WARM_RANGES: tuple[RangeName, ...] = ("24h", "7d", "30d")


class WebUser(Section):
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._@-]+$",
        description="Login name of a console user.",
    )
    password_hash: str = Field(
        pattern=r"^\$argon2(id|i|d)\$",
        description="argon2 hash of the user's password (`lanalyze web hash-password`).",
    )


class WebConfig(Section):
    enabled: bool = Field(default=True, description="Run the HTTP listener in `lanalyze serve`.")
    listen: str | list[str] = Field(
        default="127.0.0.1:8080",
        description="Address, or list of addresses, of the console, the API and /metrics.",
    )
    allow_plain_http: bool = Field(
        default=False,
        description="Serve plain HTTP on a non-loopback `listen` address without `tls_cert`/"
        "`tls_key` (e.g. behind a TLS proxy on a trusted network); otherwise that is refused.",
    )
    users: list[WebUser] = Field(
        default_factory=list,
        description="Console users; with none, every page answers with a hint to add one.",
    )
    session_secret_file: Path | None = Field(
        default=None,
        description="File with the key that signs session cookies (created with mode 0600 if "
        "absent); default `<data_dir>/web/session.key`.",
    )
    session_lifetime: int = Field(
        default=12 * 3600,
        ge=60,
        le=90 * 86400,
        description="Seconds a login stays valid.",
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate chain; with `tls_key`, the listener is HTTPS."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of `tls_cert`.")
    login_attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Login attempts allowed per client address, and per user name from one "
        "address, within `login_window` before further attempts get 429 (counted before the "
        "password is checked; a success takes its attempt back).",
    )
    login_global_attempts: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Failed login attempts allowed from all clients together within "
        "`login_window` (addresses that logged in successfully within `session_lifetime` are "
        "exempt); caps the password-checking work of a guesser using many addresses.",
    )
    login_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Password checks (argon2, 64 MiB each) run at the same time; further logins "
        "wait for a slot.",
    )
    login_window: int = Field(
        default=300, ge=1, le=86400, description="Seconds over which failed logins are counted."
    )
    metrics_networks: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Client networks that may read /metrics without logging in (others must "
        "log in); an empty list requires a login from everywhere.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="Reverse proxies whose X-Forwarded-For names the client (for the login "
        "limits and `metrics_networks`); from any other peer the header is ignored. [] trusts "
        "none.",
    )

    warm_ranges: list[RangeName] = Field(
        default_factory=lambda: list(DEFAULT_WARM_RANGES),
        description="Dashboard ranges answered in the background (checked every 30 s), so a first "
        "visit finds them ready; [] turns this off.",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | list[str]) -> str | list[str]:
        # Kept in the form given (a string stays a string in `config dump`); `addresses` lists.
        if not listen_list(value):
            raise ValueError("give at least one address (or set web.enabled = false)")
        return value

    @field_validator("metrics_networks", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for text in value:
            ipaddress.ip_network(text, strict=False)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        names = [user.name for user in self.users]
        if len(names) != len(set(names)):
            raise ValueError("user names must be unique")
        open_addresses = [a for a in self.addresses if not is_loopback(a)]
        if self.enabled and open_addresses and not self.tls and not self.allow_plain_http:
            # Passwords, session cookies and API tokens would cross the network in clear text.
            raise ValueError(
                f"web.listen {', '.join(open_addresses)} is reachable from the network but "
                "web.tls_cert and web.tls_key are not set, so passwords, session cookies and API "
                "tokens would travel in clear text: set web.tls_cert and web.tls_key, or listen "
                "on loopback (e.g. behind a TLS reverse proxy), or set "
                "web.allow_plain_http = true to serve plain HTTP anyway"
            )
        return self

    @property
    def addresses(self) -> list[str]:
        """Every address of ``listen``, whether it was given as one string or a list."""
        return listen_list(self.listen)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
