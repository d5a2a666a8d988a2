"""Settings of the mail server (section ``[mail]``).

Trust: the operator's file, validated completely (addresses, networks, limits).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, model_validator

from lanalyze.configbase import ListenAddresses, Section, per_core
from lanalyze.mail.auth.config import AuthConfig
from lanalyze.mail.index import IndexConfig


def _check_network(value: str) -> str:
    ipaddress.ip_network(value, strict=False)
    return value


def _check_address(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not domain or (not local and not value.startswith("@")):
        raise ValueError(f"expected local@domain (or @domain), got {value!r}")
    return value.lower()


def _check_optional_address(value: str) -> str:
    return _check_address(value) if value else value


Network = Annotated[str, AfterValidator(_check_network)]
MailAddress = Annotated[str, AfterValidator(_check_address)]


class SubmissionUser(Section):
    name: str = Field(min_length=1, description="Login name for AUTH PLAIN/LOGIN.")
    password_hash: str = Field(
        min_length=1,
        description="argon2 hash of the password (`lanalyze mail hash-password` makes one).",
    )
    addresses: list[MailAddress] = Field(
        default_factory=list,
        description="Envelope and header From addresses this user may send as; "
        "`@domain` allows every address of the domain.",
    )


class QueueConfig(Section):
    max_active: int = Field(
        default=64, ge=1, le=10_000, description="Messages being delivered at once."
    )
    retry_min: float = Field(
        default=300.0, gt=0, description="First retry delay after a failed delivery, seconds."
    )
    retry_max: float = Field(
        default=3600.0, gt=0, description="Longest retry delay (doubling backoff), seconds."
    )
    scan_interval: float = Field(
        default=5.0,
        gt=0,
        description="How often the queue directories are rescanned for work "
        "(e.g. after `lanalyze mail queue retry`), seconds.",
    )
    max_lifetime: float = Field(
        default=432_000.0,
        gt=0,
        description="Seconds a message may stay queued (local or outbound) before its "
        "undelivered recipients are bounced (5 days, as Postfix).",
    )
    delay_warning: float = Field(
        default=14_400.0,
        ge=0,
        description="Seconds after which a still deferred message's sender is told once "
        "(a delay DSN, if the recipient's NOTIFY asks for it); 0: never.",
    )
    delivery_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness of the delivery process: while clients wait on SMTP replies the "
        "acceptors get the CPU first, and delivery catches up in the idle time (0: equal).",
    )


class BounceConfig(Section):
    delay_warning: bool = Field(
        default=True,
        description="Send a delay warning (one per message) to senders who gave no NOTIFY "
        "for a recipient (RFC 3461's default NOTIFY=FAILURE,DELAY); false: only to those who "
        "asked with NOTIFY=DELAY.",
    )
    return_limit: int = Field(
        default=51_200,
        ge=1024,
        le=100 * 1024 * 1024,
        description="Largest original message returned whole in a failure report (unless the "
        "sender asked RET=HDRS), bytes; a larger one is returned as its header only, cut to "
        "this size too.",
    )
    postmaster: Annotated[str, AfterValidator(_check_optional_address)] = Field(
        default="",
        description="Where double bounces go (a failed message whose sender was empty); "
        "empty: the postmaster local delivery uses for a bare `postmaster` "
        "(postmaster@ the alphabetically first of `mail.domains`).",
    )


class SrsConfig(Section):
    enabled: bool = Field(
        default=True,
        description="Rewrite the envelope sender of mail an alias forwards to another domain "
        "with SRS (as postsrsd), so SPF passes at the next hop, and send bounces to SRS "
        "addresses back to the original sender.",
    )
    domain: str = Field(
        default="",
        description="Domain of the SRS addresses; must be one of `mail.domains` (bounces "
        "come back to it). Empty: the alphabetically first of `mail.domains`.",
    )
    max_age_days: int = Field(
        default=21,
        ge=1,
        le=1000,
        description="Days an SRS address stays valid for a bounce coming back (its timestamp).",
    )


def _check_hostport(value: str) -> str:
    """``[host]:port`` (no MX lookup, Postfix style), ``host:port`` or ``host``."""
    host, _ = split_hostport(value)
    if not host:
        raise ValueError(f"expected [host]:port, host:port or host, got {value!r}")
    return value


def split_hostport(value: str, default_port: int = 25) -> tuple[str, int]:
    """``[host]:587`` -> (``host``, 587); the brackets say "this host, no MX lookup"."""
    text = value.strip()
    port = default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
        elif rest:
            raise ValueError(f"unexpected {rest!r} after ] in {value!r}")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host = text
        else:
            port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {value!r}")
    return host.lower().rstrip("."), port


HostPort = Annotated[str, AfterValidator(_check_hostport)]
LOCAL_TRANSPORT = "local"  # a `transports` value: local delivery, not a host


class OutboundConfig(Section):
    enabled: bool = Field(
        default=True,
        description="Send mail for non-local recipients (MX lookup or `relay_host`); false: "
        "it waits in `queue/hold/`.",
    )
    relay_host: HostPort | None = Field(
        default=None,
        description="Send everything through this host (smarthost), e.g. `[smtp.example.net]:587`"
        " (brackets: no MX lookup). TLS with a verified certificate is required.",
    )
    relay_user: str | None = Field(
        default=None, description="AUTH PLAIN login at `relay_host` (after TLS)."
    )
    relay_password: SecretStr | None = Field(
        default=None, description="Password of `relay_user`. A secret: never logged."
    )
    transports: dict[str, HostPort] = Field(
        default_factory=dict,
        description="Per recipient domain, a fixed next hop (`[host]:port`, `host:port`) instead"
        " of the MX lookup, or `local` (delivered here, as a domain of `mail.domains`), like "
        "Postfix's transport_maps.",
    )

    @property
    def local_domains(self) -> set[str]:
        """The domains whose transport is ``local``."""
        return {
            domain.lower().rstrip(".")
            for domain, target in self.transports.items()
            if target.strip().lower() == LOCAL_TRANSPORT
        }

    port: int = Field(default=25, ge=1, le=65535, description="SMTP port of MX hosts.")
    tls: Literal["opportunistic", "required", "none"] = Field(
        default="opportunistic",
        description="STARTTLS towards MX hosts: when offered (unverified certificate), "
        "always with a verified certificate, or never.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificates to verify servers with (unset: the system's).",
    )
    mta_sts: bool = Field(
        default=True,
        description="Honour MTA-STS (RFC 8461) policies of recipient domains in enforce mode.",
    )
    connect_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to connect and get the greeting."
    )
    command_timeout: float = Field(
        default=300.0, gt=0, description="Seconds to wait for each reply (RFC 5321 §4.5.3.2)."
    )
    data_timeout: float = Field(
        default=600.0, gt=0, description="Seconds to wait for the reply after the message data."
    )
    max_connections: int = Field(
        default=100, ge=1, le=10_000, description="Outbound SMTP connections open at once."
    )
    max_per_destination: int = Field(
        default=20, ge=1, le=1000, description="Connections to one destination at most."
    )
    initial_per_destination: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Connections to a destination at first (slow start): one more after "
        "each success, halved after a failure, between 1 and `max_per_destination`.",
    )
    messages_per_connection: int = Field(
        default=100, ge=1, description="Messages sent over one connection before it is closed."
    )
    max_memory: int = Field(
        default=67_108_864,
        ge=1_048_576,
        description="Bytes of messages held in memory for outbound delivery at once; "
        "further messages wait on disk.",
    )


class MailConfig(Section):
    enabled: bool = Field(default=True, description="Run the SMTP server in `lanalyze serve`.")
    listen: ListenAddresses = Field(
        default_factory=lambda: ["127.0.0.1:2525"],
        description="Addresses of the MTA listener (port 25 in production).",
    )
    submission_listen: ListenAddresses = Field(
        default_factory=list,
        description="Submission listeners (port 587 style): AUTH after STARTTLS is required "
        "before MAIL. Needs `mail.tls_cert`.",
    )
    smtps_listen: ListenAddresses = Field(
        default_factory=list,
        description="Implicit-TLS submission listeners (port 465 style). Needs `mail.tls_cert`.",
    )
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain for STARTTLS and implicit TLS "
        "(`lanalyze mail tls-selfsigned` makes a test pair).",
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of `mail.tls_cert`.")
    domains: list[str] = Field(
        default_factory=lambda: ["localhost"],
        description="Local domains: mail to them is delivered here; mail to other domains "
        "is relayed only for authenticated users and trusted networks.",
    )
    mailboxes: list[MailAddress] = Field(
        default_factory=lambda: ["postmaster@localhost"],
        description="Local mailboxes (`user@local-domain`), each a Maildir under "
        "`<data_dir>/mail/maildirs/`.",
    )
    aliases: dict[str, list[MailAddress]] = Field(
        default_factory=dict,
        description="Alias address -> the addresses it delivers to: local mailboxes, or "
        "addresses on other domains (forwarding, with the sender rewritten by SRS).",
    )
    users: list[SubmissionUser] = Field(
        default_factory=list, description="Submission users (AUTH PLAIN/LOGIN over TLS)."
    )
    trusted_networks: list[Network] = Field(
        default_factory=list,
        description="Client networks allowed to relay to non-local domains without AUTH "
        "(CIDR). Empty: nobody unauthenticated relays.",
    )
    max_message_size: int = Field(
        default=10_240_000, ge=1024, description="Largest message accepted, bytes (SIZE)."
    )
    max_recipients: int = Field(
        default=1000, ge=1, description="Recipients per message; more get 452 4.5.3."
    )
    max_connections: int = Field(
        default=2000, ge=1, description="Open SMTP connections in total; more get 421."
    )
    max_connections_per_client: int = Field(
        default=50, ge=1, description="Open SMTP connections per client IP address."
    )
    hard_error_limit: int = Field(
        default=20, ge=1, description="Error replies in one session before it is closed (421)."
    )
    command_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds to wait for a complete command line (RFC 5321 §4.5.3.2.7).",
    )
    data_timeout: float = Field(
        default=180.0,
        gt=0,
        description="Seconds to wait for each block of message data (RFC 5321 §4.5.3.2.6).",
    )
    write_buffer: int = Field(
        default=65_536,
        ge=4096,
        le=16 * 1024 * 1024,
        description="Bytes of replies a client may leave unread; beyond, its input is not "
        "read until it reads (flow control), and `mail.write_timeout` runs.",
    )
    write_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a client whose unread replies reached `mail.write_buffer` has "
        "to read them before the connection is dropped; our own replies do not extend it.",
    )
    auth_failures_per_client: int = Field(
        default=10,
        ge=1,
        description="Failed AUTH attempts per client IP address within "
        "`mail.auth_failure_window`; more are answered 454 4.7.0 without checking the password.",
    )
    auth_failures_total: int = Field(
        default=200,
        ge=1,
        description="Failed AUTH attempts from all clients within `mail.auth_failure_window`; "
        "more are answered 454 4.7.0 for everyone until the window slides.",
    )
    auth_failure_window: float = Field(
        default=600.0,
        gt=0,
        description="Sliding window of the AUTH failure limits, seconds.",
    )
    spool_memory: int = Field(
        default=262_144,
        ge=4096,
        description="Bytes of a message held in memory before it streams to its queue file.",
    )
    sync: Literal["syncfs", "fsync"] = Field(
        default="syncfs",
        description="How accepted messages and Maildir deliveries are made durable: one "
        "syncfs(2) per group-commit batch, or an fsync per file.",
    )
    acceptors: int = Field(
        default=0,
        ge=0,
        le=64,
        description="SMTP processes sharing the listeners (SO_REUSEPORT); more than one "
        "spreads sessions over cores (0: one per CPU core, at most 8).",
    )
    queue: QueueConfig = Field(default_factory=QueueConfig, description="Queue manager.")
    srs: SrsConfig = Field(
        default_factory=SrsConfig, description="Sender Rewriting Scheme for forwarded mail."
    )
    bounce: BounceConfig = Field(
        default_factory=BounceConfig,
        description="Delivery status notifications (RFC 3464): bounces, delay warnings.",
    )
    outbound: OutboundConfig = Field(
        default_factory=OutboundConfig, description="Outbound delivery (SMTP client)."
    )
    index: IndexConfig = Field(
        default_factory=IndexConfig, description="Message index: rejections kept, retention."
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig,
        description="Sender checks (SPF, DKIM, DMARC, ARC), their policy and DKIM signing.",
    )

    @property
    def acceptor_count(self) -> int:
        """SMTP processes to run: ``acceptors``, or one per core for 0 (like ``flows.workers``)."""
        return per_core(self.acceptors)

    @property
    def local_domains(self) -> set[str]:
        return {d.lower().rstrip(".") for d in self.domains}

    @property
    def srs_domain(self) -> str:
        """``mail.srs.domain``, or the alphabetically first local domain."""
        domains = self.local_domains
        return self.srs.domain.lower().rstrip(".") or (min(domains) if domains else "")

    @model_validator(mode="after")
    def _aliases_and_srs(self) -> MailConfig:
        """An alias target in a local domain must be a mailbox (a typo is not forwarded
        anywhere); targets on other domains are forwarded. The SRS domain must be ours."""
        mailboxes = {m.lower() for m in self.mailboxes}
        domains = self.local_domains
        for alias, targets in self.aliases.items():
            for target in targets:
                if target.startswith("@"):
                    raise ValueError(f"mail.aliases[{alias!r}]: {target!r} is not an address")
                if target.rpartition("@")[2] in domains and target not in mailboxes:
                    raise ValueError(
                        f"mail.aliases[{alias!r}]: {target!r} is in a local domain but is "
                        "not one of mail.mailboxes"
                    )
        if self.srs.domain and self.srs_domain not in domains:
            raise ValueError("mail.srs.domain must be one of mail.domains")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> MailConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("mail.tls_cert and mail.tls_key go together")
        if (self.submission_listen or self.smtps_listen) and self.tls_cert is None:
            raise ValueError("submission and smtps listeners need mail.tls_cert and mail.tls_key")
        return self
