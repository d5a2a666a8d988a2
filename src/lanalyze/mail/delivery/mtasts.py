"""MTA-STS (RFC 8461): a recipient domain's demand for verified TLS to its MX hosts.

:meth:`MtaSts.policy` looks up the ``_mta-sts.<domain>`` TXT record (§3.1); when it
announces a policy whose ``id`` differs from the cached one, the policy is fetched from
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (§3.3: certificate verified for that
name against ``mail.outbound.ca_file`` or the system's CAs, no redirects, status 200 only,
at most ``MAX_POLICY`` bytes) and cached for its ``max_age`` (bounded: ``MAX_CACHED``
domains, least recently used out first). A failed lookup or fetch falls back to a cached
policy that has not expired (§5.1), else to none. In ``enforce`` mode the outbound shell only
uses MX hosts the policy names (§4.1) and only with TLS verified for the host name (§4.2);
``testing`` and ``none`` change nothing here (no TLSRPT reporting).

Trust: the TXT record and the policy are the domain's (or an attacker's: a policy can only
make delivery stricter); the policy text is parsed line by line with bounds, unknown keys
ignored (§3.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from lanalyze.log import RateLimiter, get_logger
from lanalyze.mail.auth.dns import Resolver
from lanalyze.mail.delivery.smtp import tls_context

log = get_logger(__name__)
_fetch_log = RateLimiter(interval=60.0, burst=3)

MAX_POLICY = 65_536  # RFC 8461 §3.3: senders may limit the policy body to 64 KiB
MAX_CACHED = 1000
MAX_AGE = 31_557_600  # §3.2: max_age at most one year
HTTPS_PORT = 443


@dataclass(frozen=True)
class Policy:
    id: str
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: int
    expires: float

    def matches(self, host: str) -> bool:
        """§4.1: ``mx.example.com`` exactly, or ``*.example.com`` for one leftmost label."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_txt(record: bytes) -> str | None:
    """The ``id`` of a ``v=STSv1; id=...`` record (§3.1), or None if it is not one."""
    text = record.decode("ascii", "replace")
    fields = dict(part.strip().partition("=")[::2] for part in text.split(";") if part.strip())
    if fields.get("v") != "STSv1" or not fields.get("id"):
        return None
    return fields["id"]


def parse_policy(text: str, policy_id: str, now: float) -> Policy | None:
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    mode = fields.get("mode", "")
    if fields.get("version") != "STSv1" or mode not in ("enforce", "testing", "none"):
        return None
    try:
        max_age = min(int(fields.get("max_age", "")), MAX_AGE)
    except ValueError:
        return None
    if mode != "none" and not mx:
        return None
    return Policy(policy_id, mode, tuple(mx[:100]), max_age, now + max_age)


class MtaSts:
    def __init__(self, resolver: Resolver, ca_file: Path | None, timeout: float) -> None:
        self.resolver = resolver
        self.ca_file = ca_file
        self.timeout = timeout
        self._cache: OrderedDict[str, Policy] = OrderedDict()

    def _cached(self, domain: str, now: float) -> Policy | None:
        policy = self._cache.get(domain)
        if policy is None:
            return None
        if policy.expires <= now:
            del self._cache[domain]
            return None
        self._cache.move_to_end(domain)
        return policy

    async def policy(self, domain: str) -> Policy | None:
        now = time.time()
        cached = self._cached(domain, now)
        answer = await self.resolver.query(f"_mta-sts.{domain}", "TXT")
        ids = [i for i in (parse_txt(r) for r in answer.records if isinstance(r, bytes)) if i]
        if answer.status != "ok" or len(ids) != 1:
            return cached  # §5.1: no (single) record: a cached policy still applies
        if cached is not None and cached.id == ids[0]:
            return cached
        try:
            text = await asyncio.wait_for(self._fetch(domain), self.timeout)
        except (OSError, TimeoutError, ssl.SSLError, ValueError, UnicodeError) as exc:
            if _fetch_log.allow(domain):
                log.warning(
                    "mail.outbound.mta_sts_fetch_failed",
                    extra={"domain": domain, "error": str(exc)},
                )
            return cached
        policy = parse_policy(text, ids[0], now)
        if policy is None:
            return cached
        self._cache[domain] = policy
        self._cache.move_to_end(domain)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return policy

    async def _fetch(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            answer = await self.resolver.query(host, rdtype)
            for record in answer.records:
                with contextlib.suppress(ValueError):
                    addresses.append(str(ipaddress.ip_address(str(record))))
        if not addresses:
            raise ValueError(f"no address for {host}")
        context = tls_context(True, self.ca_file)
        reader, writer = await asyncio.open_connection(
            addresses[0], HTTPS_PORT, ssl=context, server_hostname=host
        )
        try:
            writer.write(
                f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\n"
                "Connection: close\r\nUser-Agent: lanalyze\r\n\r\n".encode("ascii")
            )
            await writer.drain()
            raw = await reader.read(MAX_POLICY + 8192)
            while len(raw) <= MAX_POLICY + 8192:
                more = await reader.read(MAX_POLICY + 8192 - len(raw) + 1)
                if not more:
                    break
                raw += more
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        head, sep, body = raw.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("no HTTP header end")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split()
        if len(status) < 2 or status[1] != "200":
            raise ValueError(f"policy fetch answered {lines[0][:80]!r}")  # §3.3: no redirects
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = _dechunk(body)
        elif "content-length" in headers:
            body = body[: int(headers["content-length"])]
        if len(body) > MAX_POLICY:
            raise ValueError("policy larger than 64 KiB")
        return body.decode("utf-8")


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            raise ValueError("bad chunked encoding")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
        if len(out) > MAX_POLICY:
            raise ValueError("policy larger than 64 KiB")
    return bytes(out)
