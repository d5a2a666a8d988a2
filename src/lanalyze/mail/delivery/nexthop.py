"""Next hop: where mail for a recipient domain goes (RFC 5321 §5.1, RFC 7505).

:func:`route` picks the destination of a domain from the configuration: the relay host
(smarthost) for everything, else a per-domain transport override (Postfix's
``transport_maps``), else the domain's MX records. A destination is what connections are
shared and limited by. :meth:`NextHop.hosts` turns it into the ordered list of (host name,
address) pairs to try:

- MX records in preference order, a random order among equal preferences (§5.1);
- no MX record at all (NODATA): the domain itself as the only host, "implicit MX" (§5.1);
- a null MX (one record, exchange ``.``, RFC 7505 §3) or a domain that does not exist:
  :class:`PermanentRoute`, a permanent failure the recipient is bounced for at once;
- each host's A and AAAA addresses, IPv4 and IPv6 both tried;
- a DNS error (timeout, SERVFAIL): :class:`TemporaryRoute`, the message is deferred.

``[host]:port`` (brackets) is that host, no MX lookup; ``host:port`` without brackets looks
up the host's MX too (as Postfix does). DNS goes through the one resolver layer
(:mod:`lanalyze.mail.auth.dns`), so ``mail.auth.resolver`` applies here too.

Trust: recipient domains come from clients (validated by the SMTP core as addresses); DNS
answers come from the network: at most ``MAX_MX`` hosts and ``MAX_ADDRESSES`` addresses are
used, and only syntactically valid IP addresses.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from lanalyze.mail.auth.dns import Resolver
from lanalyze.mail.config import LOCAL_TRANSPORT, OutboundConfig, split_hostport
from lanalyze.mail.errors import PermanentRoute, TemporaryRoute

MAX_MX = 10  # hosts tried per destination and attempt (Postfix: smtp_mx_address_limit-ish)
MAX_ADDRESSES = 20  # addresses tried per attempt in total


@dataclass(frozen=True)
class Destination:
    """What connections are shared and limited by: a domain's MX set or one fixed host."""

    name: str  # the domain (MX lookup) or host name
    port: int
    mx: bool  # look up MX records of ``name`` (False: ``[host]``, connect to it directly)
    relay: bool = False  # the relay host: TLS required, AUTH if configured

    @property
    def key(self) -> str:
        return f"{self.name}:{self.port}" + (":mx" if self.mx else "")


def route(domain: str, config: OutboundConfig) -> Destination:
    """The destination of mail for ``domain`` (lower case, no trailing dot)."""
    if config.relay_host is not None:
        host, port = split_hostport(config.relay_host, 25)
        return Destination(host, port, mx=not config.relay_host.startswith("["), relay=True)
    override = config.transports.get(domain)
    if override is not None and override.strip().lower() != LOCAL_TRANSPORT:
        # (`local` domains never reach the outbound side: users.Directory makes them local.)
        host, port = split_hostport(override, config.port)
        return Destination(host, port, mx=not override.startswith("["))
    return Destination(domain, config.port, mx=True)


def _ordered_mx(records: tuple[object, ...]) -> list[str]:
    """Exchanges by preference, shuffled among equal preferences (RFC 5321 §5.1)."""
    by_pref: dict[int, list[str]] = {}
    for record in records:
        if isinstance(record, tuple) and len(record) == 2:
            pref, exchange = record
            by_pref.setdefault(int(pref), []).append(str(exchange).lower().rstrip("."))
    hosts: list[str] = []
    for pref in sorted(by_pref):
        group = by_pref[pref]
        random.shuffle(group)
        hosts.extend(group)
    return hosts


class NextHop:
    """MX and address lookups for destinations, through the shared resolver (its cache)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def hosts(self, destination: Destination) -> list[tuple[str, str]]:
        """(host name, IP address) pairs to try in order; raises :class:`RouteError`."""
        try:  # an address literal ([192.0.2.1]:25 as relay host or transport): no lookup
            literal = str(ipaddress.ip_address(destination.name.strip("[]")))
        except ValueError:
            pass
        else:
            return [(literal, literal)]
        names = [destination.name]
        had_mx = False
        if destination.mx:
            answer = await self.resolver.query(destination.name, "MX")
            if answer.status == "nxdomain":
                raise PermanentRoute("5.1.2", f"domain {destination.name} does not exist")
            if answer.status == "error":
                raise TemporaryRoute("4.4.3", f"MX lookup of {destination.name}: {answer.error}")
            if answer.status == "ok":
                exchanges = [r for r in answer.records if isinstance(r, tuple) and len(r) == 2]
                if any(str(r[1]) in (".", "") for r in exchanges):
                    # RFC 7505 §3: a null MX means the domain accepts no mail at all.
                    raise PermanentRoute("5.1.10", f"{destination.name} accepts no mail (null MX)")
                names = _ordered_mx(answer.records)[:MAX_MX]
                had_mx = bool(names)
        found: list[tuple[str, str]] = []
        errors: list[str] = []
        for name in names:
            for rdtype in ("A", "AAAA"):
                answer = await self.resolver.query(name, rdtype)
                if answer.status == "error":
                    errors.append(f"{rdtype} of {name}: {answer.error}")
                for record in answer.records:
                    try:
                        address = str(ipaddress.ip_address(str(record)))
                    except ValueError:
                        continue
                    found.append((name, address))
            if len(found) >= MAX_ADDRESSES:
                break
        if not found:
            if errors:
                raise TemporaryRoute("4.4.3", "; ".join(errors[:3]))
            # MX hosts without addresses: a DNS misconfiguration the domain may fix (Postfix
            # defers too); a domain without MX whose own name has no address cannot get mail.
            if had_mx:
                raise TemporaryRoute("4.4.4", f"no address for the MX hosts of {destination.name}")
            raise PermanentRoute("5.1.2", f"no address for {destination.name}")
        return found[:MAX_ADDRESSES]
