"""Sender-check throughput: lanalyze's Authenticator vs authheaders' authenticate_message.

Both check the same DKIM-signed message (SPF, DKIM, DMARC, ARC) against the same real Knot DNS
server on loopback, serving the test zones of ``tests/mail/auth_world.py``. The peer is the
library most Python mail software uses for this (authheaders over pyspf, dkimpy and blocking
dnspython), run sequentially as it is synchronous; ours runs sequentially too, then with
``--concurrency`` checks in flight (what an SMTP server with many sessions does). Prints
messages checked per second of this process's CPU time (``time.process_time``: other
processes competing for the cores do not count against either side; the DNS server's work is
the same for both) and per wall-clock second, for the peer, ours, and the ratio; each figure
the median of ``--runs`` runs.

    PYTHONPATH=. .venv/bin/python bench/auth_bench.py --messages 200 --runs 5

The machine is shared and noisy: compare figures from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
from pathlib import Path

import authheaders
import authheaders.dmarc_lookup
import dkim
import dns.resolver
from tests.mail.auth_world import GOOD_IP, keys, message, zones
from tests.mail.dnsserver import knot_server

from lanalyze.mail.auth import AuthConfig, Authenticator


def signed_message() -> bytes:
    msg = message()
    return dkim.sign(msg, b"rsa", b"signed.test", keys()["rsa"].private) + msg


def cache_peer_psl() -> None:
    """authheaders re-reads the public suffix list on every lookup (4 per message here).

    The second peer figure caches it, so that the comparison is of the DNS and crypto work.
    """
    cached = functools.cache(authheaders.dmarc_lookup.get_org_domain)
    authheaders.dmarc_lookup.get_org_domain = cached
    authheaders.get_org_domain = cached


def peer_rate(msg: bytes, count: int) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        header = authheaders.authenticate_message(
            msg,
            "mx.local.example",
            spf=True,
            dkim=True,
            arc=True,
            dmarc=True,
            ip=GOOD_IP,
            mail_from="alice@signed.test",
            helo="mx.signed.test",
        )
        assert "dmarc=pass" in header, header
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


async def our_rate(
    auth: Authenticator, path: Path, count: int, concurrency: int
) -> tuple[float, float]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            verdict = await auth.check(
                path,
                mail_from="alice@signed.test",
                helo="mx.signed.test",
                client_ip=GOOD_IP,
                rcpt_to=["bob@local.example"],
                authenticated_user=None,
            )
            assert verdict.dmarc == "pass", verdict.header

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    msg = signed_message()
    with (
        tempfile.TemporaryDirectory() as tmp,
        knot_server(Path(tmp) / "knot", zones()) as dns_server,
    ):
        # The peer's libraries use dnspython's default resolver: point it at the same server.
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = dns_server.port
        dns.resolver.default_resolver = resolver
        path = Path(tmp) / "m.eml"
        path.write_bytes(msg)
        # No DNS cache, like the peer: both ask the server for every message.
        config = AuthConfig(resolver=dns_server.address, dns_cache_size=0)
        auth = Authenticator(config, "mx.local.example")
        asyncio.run(auth.start())
        cached = Authenticator(AuthConfig(resolver=dns_server.address), "mx.local.example")
        peer = [peer_rate(msg, max(args.messages // 20, 3)) for _ in range(args.runs)]
        cache_peer_psl()
        peer_cached, ours_seq, ours_conc, ours_cached = [], [], [], []
        for _ in range(args.runs):
            peer_cached.append(peer_rate(msg, args.messages))
            ours_seq.append(asyncio.run(our_rate(auth, path, args.messages, 1)))
            ours_conc.append(asyncio.run(our_rate(auth, path, args.messages, args.concurrency)))
            ours_cached.append(asyncio.run(our_rate(cached, path, args.messages, 1)))
    for index, unit in ((1, "per CPU second"), (0, "wall clock")):
        p0, p, s, c, k = (
            statistics.median(run[index] for run in runs)
            for runs in (peer, peer_cached, ours_seq, ours_conc, ours_cached)
        )
        print(f"messages checked {unit}:")
        print(f"  authheaders as shipped (blocking DNS): {p0:8.1f}")
        print(f"  authheaders, suffix list cached:       {p:8.1f}")
        print(f"  lanalyze, one at a time:               {s:8.1f}  ratio {s / p:.2f}")
        label = f"lanalyze, {args.concurrency} in flight:"
        print(f"  {label:38s} {c:8.1f}  ratio {c / p:.2f}")
        print(f"  lanalyze, DNS cache on (steady state): {k:8.1f}  ratio {k / p:.2f}")


if __name__ == "__main__":
    main()
