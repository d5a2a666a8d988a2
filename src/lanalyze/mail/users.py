"""Local domains, mailboxes, aliases and submission users; who may send what where.

The relay decision follows Postfix's ``smtpd_relay_restrictions = permit_mynetworks,
permit_sasl_authenticated, reject_unauth_destination`` (RFC 5321 §3.6.2, RFC 2505 §2): mail
to a domain that is not ours is accepted only from trusted networks or authenticated users,
and addresses using routing syntax (``user%other@local``, ``other!user@local``, source
routes ``@a:user@b``, quoted local parts, IP literals) are refused to everyone else, so none
of the classic open-relay tricks works. On submission an authenticated user may only use the
envelope sender addresses configured as theirs (header From is checked by the server at the
end of DATA with :meth:`Directory.may_send_as`).

Passwords are argon2 hashes (argon2-cffi); verification is CPU-heavy and runs in a thread.
Trust: addresses come from peers; the configuration is the operator's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from lanalyze.log import RateLimiter, get_logger
from lanalyze.mail.auth.policy import sender_allowed
from lanalyze.mail.config import MailConfig
from lanalyze.mail.errors import InvalidSRS
from lanalyze.mail.metrics import SRS as SRS_COUNTER
from lanalyze.mail.smtp.address import Path
from lanalyze.mail.smtp.protocol import Reply, SMTPSession
from lanalyze.mail.srs import is_srs

if TYPE_CHECKING:
    from lanalyze.mail.srs import SRS

log = get_logger(__name__)
_srs_log = RateLimiter(interval=60.0, burst=5)

R_RELAY_DENIED = Reply(554, "5.7.1 Relay access denied", "relay_denied")
R_UNKNOWN_USER = Reply(550, "5.1.1 Recipient address rejected: User unknown", "unknown_user")
R_BAD_SRS = Reply(550, "5.1.1 Recipient address rejected: invalid SRS address", "unknown_user")
R_NOT_YOURS = Reply(553, "5.7.1 Sender address rejected: not owned by user", "sender_not_allowed")

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one accepted recipient goes: local mailboxes, addresses on other domains it is
    forwarded to (an alias's remote targets, the original sender of an SRS address), or
    relay (the recipient itself is on another domain)."""

    recipient: str
    mailboxes: tuple[str, ...] = ()
    relay: bool = False
    forward: tuple[str, ...] = ()


class Directory:
    """The configured domains, mailboxes, aliases and users, with the policy decisions."""

    def __init__(self, config: MailConfig, srs: SRS | None = None) -> None:
        self.srs = srs  # None: SRS off (mail.srs.enabled = false), aliases still forward
        self.domains = {d.lower().rstrip(".") for d in config.domains}
        # `mail.outbound.transports` entries of `local`: delivered here like `domains` (but
        # not candidates for the postmaster's or the SRS domain).
        self.local_transport = config.outbound.local_domains - self.domains
        self.mailboxes = {m.lower() for m in config.mailboxes}
        self.aliases = {k.lower(): [v.lower() for v in vs] for k, vs in config.aliases.items()}
        self.users = {u.name: u for u in config.users}
        self.networks = [ipaddress.ip_network(n, strict=False) for n in config.trusted_networks]
        self._trusted: dict[str, bool] = {}

    # ---------------------------------------------------------------- lookups

    def is_local_domain(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return domain in self.domains or domain in self.local_transport

    @property
    def postmaster(self) -> str:
        """What a bare ``postmaster`` means here (RFC 5321 §4.5.1): one fixed local address."""
        return f"postmaster@{min(self.domains)}" if self.domains else "postmaster"

    def trusted(self, client_ip: str) -> bool:
        # Asked for every RCPT: parsing the address each time was a measurable share of it.
        known = self._trusted.get(client_ip)
        if known is not None:
            return known
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        answer = any(address in network for network in self.networks)
        if len(self._trusted) >= 4096:  # bounded: a botnet's addresses must not grow it
            self._trusted.clear()
        self._trusted[client_ip] = answer
        return answer

    def resolve(self, path: Path) -> Destination | None:
        """Mailboxes an address delivers to (aliases expanded one level), None if unknown."""
        address = path.address.lower()
        if not path.domain and address == "postmaster" and self.domains:
            address = self.postmaster
        if address in self.mailboxes:
            return Destination(address, (address,))
        if address in self.aliases:
            targets = self.aliases[address]
            mailboxes = tuple(t for t in targets if t in self.mailboxes)
            forward = tuple(t for t in targets if not self.is_local_domain(t.rpartition("@")[2]))
            return Destination(address, mailboxes, forward=forward) if targets else None
        if self.srs is not None and path.domain == self.srs.domain and is_srs(path.local):
            try:
                return Destination(address, forward=(self.srs.reverse(path.address),))
            except InvalidSRS:
                return None
        return None

    def forward_sender(self, mail_from: str) -> str:
        """The envelope sender for a message forwarded to another domain: SRS-rewritten,
        unless it is empty (a bounce), one of ours, or SRS is off."""
        if self.srs is None or not mail_from:
            return mail_from
        if self.is_local_domain(mail_from.rpartition("@")[2]):
            return mail_from
        return self.srs.forward(mail_from)

    def verify_password(self, user: str, password: str) -> bool:
        """argon2 verification: slow on purpose, so callers run it in a thread."""
        entry = self.users.get(user)
        if entry is None:
            _hasher.hash("dummy")  # same cost whether or not the user exists
            return False
        try:
            return _hasher.verify(entry.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def may_send_as(self, user: str, address: str) -> bool:
        entry = self.users.get(user)
        if entry is None:
            return False
        return sender_allowed(user, address, {user: list(entry.addresses)})

    # ---------------------------------------------------------------- Policy protocol

    def check_sender(self, session: SMTPSession, path: Path) -> Reply | None:
        if session.user is not None and (
            not path.address or not self.may_send_as(session.user, path.address)
        ):
            return R_NOT_YOURS
        return None

    def check_recipient(self, session: SMTPSession, path: Path) -> Reply | None:
        privileged = session.user is not None or self.trusted(session.client_ip)
        local = (not path.domain and path.local.lower() == "postmaster") or (
            self.is_local_domain(path.domain) and not path.ip_literal
        )
        if not local:
            return None if privileged else R_RELAY_DENIED
        if path.relay_tricks and not privileged:
            return R_RELAY_DENIED
        if self.resolve(path) is None:
            if self.srs is not None and path.domain == self.srs.domain and is_srs(path.local):
                SRS_COUNTER.labels("invalid").inc()
                suppressed = _srs_log.allow(session.client_ip)
                if suppressed is not None:
                    log.warning(
                        "mail.srs.invalid",
                        extra={
                            "client": session.client_ip,
                            "recipient": path.address[:200],
                            "suppressed": suppressed,
                        },
                    )
                return R_BAD_SRS
            return R_UNKNOWN_USER
        return None

    def destination(self, path: Path) -> Destination:
        """For an accepted recipient: its mailboxes, or relay."""
        found = (
            self.resolve(path) if (not path.domain or self.is_local_domain(path.domain)) else None
        )
        if found is None:
            return Destination(path.address, (), relay=True)
        if found.forward and not found.mailboxes and is_srs(path.local):
            SRS_COUNTER.labels("reversed").inc()
        return found
