"""Console benchmark: time until each page is interactive, in Debian's chromium.

Stores N flows (default 10 M) spread over the last D days (default 30) in the raw store
layout, builds the rollups with the rollup maintainer (one round), starts a real
``lanalyze serve`` (web only) on it, logs in with Playwright and loads every console page
several times. "Interactive" = from navigation start until our script has drawn the charts and
made the tables sortable (its ``lanalyze-interactive`` performance mark), measured in the
browser on the Navigation Timing clock. The target is 500 ms per page (issue 7).
Columns: the first load (cold caches), then median / min / max of the next loads, their ratio
to the target, and "all": the median time until the tables deferred to after the page
(answered from raw flows) are in place too.

``--mail-rate 1000`` (issue 19) measures the same pages while the same server takes mail:
its mail component on in its default configuration (one SMTP acceptor per core, the sender
checks on, delivery into a Maildir; only the port, the accepted domain, its mailbox and the
checks' DNS server are set), the checks asking a Knot DNS server on loopback that serves the
zones of ``bench/mail_world.py``, and a client process offering the message mix of the
checked-mail benchmark at that rate (20 connections, each message at its slot of a fixed
schedule, pipelined MAIL/RCPT/DATA; a message late for its slot is sent at once, so the
offered rate is the most the server takes when it cannot keep up). The mail load starts 15 s
before the first page and runs until the last; the rate printed is what was accepted (250
after the data) while the pages were measured. ``--mail-rate 0`` runs the same server with
its mail component idle: the peer of the same run. Needs knotd (Debian's knot).

    .venv/bin/python bench/console_bench.py [--flows 10000000] [--days 30] [--runs 5]
        [--no-warm] [--regenerate] [--mail-rate 1000]

The generated store is kept in bench/out/console-<flows>-<days>/ and reused by later runs
(``--regenerate`` when it is older than an hour: the last-hour page needs recent flows).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lanalyze.flows import catalogue  # noqa: E402
from lanalyze.flows.store.paths import flow_dir  # noqa: E402
from lanalyze.flows.store.writer import SegmentWriter  # noqa: E402
from lanalyze.web.auth import hash_password  # noqa: E402

HOUR_MS = 3_600_000
TARGET_MS = 500.0
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# console.js marks the moment charts are drawn and tables enhanced; its startTime counts from
# the start of the navigation (Navigation Timing), so no test-driver latency is included.
READY_MARK = "performance.getEntriesByName('lanalyze-interactive').length > 0"
READY_TIME = "performance.getEntriesByName('lanalyze-interactive')[0].startTime"
ALL_LOADED = "document.querySelectorAll('[aria-busy=\"true\"]').length === 0"
SERVICES = [(6, 443), (6, 80), (17, 53), (6, 22), (17, 123), (6, 25), (6, 993), (17, 443)]


def _mapped_v4(values: np.ndarray) -> np.ndarray:
    out = np.zeros((len(values), 16), dtype=np.uint8)
    out[:, 10] = 0xFF
    out[:, 11] = 0xFF
    out[:, 12:] = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out.view("S16").reshape(-1)


def generate(data_dir: Path, flows: int, days: int, now_ms: int) -> None:
    """``flows`` flows over ``days`` days, one segment per hour; 65,536 sources, 4 exporters."""
    rng = np.random.default_rng(1)
    hours = days * 24
    per_hour = flows // hours
    writer = SegmentWriter(flow_dir(data_dir), "bench", compression="zstd")
    base_client = int(ipaddress.IPv4Address("10.0.0.0"))
    base_server = int(ipaddress.IPv4Address("198.18.0.0"))
    exporters = _mapped_v4(
        np.array([int(ipaddress.IPv4Address(f"192.168.0.{i}")) for i in (1, 2, 3, 4)])
    )
    protos = np.array([s[0] for s in SERVICES], dtype=np.uint8)
    ports = np.array([s[1] for s in SERVICES], dtype=np.uint16)
    first_hour = (now_ms // HOUR_MS) - hours + 1
    for index in range(hours):
        hour = first_hour + index
        rows = per_hour + (flows - per_hour * hours if index == hours - 1 else 0)
        batch = catalogue.empty_batch(rows)
        start = hour * HOUR_MS
        end = min(start + HOUR_MS, now_ms)
        received = np.sort(rng.integers(start, max(end, start + 1), rows, dtype=np.int64))
        batch["time_received"][:] = received
        batch["time_end"][:] = received - 1000
        batch["time_start"][:] = received - 1000 - rng.integers(0, 60_000, rows)
        clients = _mapped_v4(base_client + (rng.zipf(1.3, rows) % 65536))
        servers = _mapped_v4(base_server + (rng.zipf(1.5, rows) % 4096))
        service = rng.zipf(1.6, rows) % len(SERVICES)
        outbound = rng.random(rows) < 0.5
        batch["src_addr"][:] = np.where(outbound, clients, servers)
        batch["dst_addr"][:] = np.where(outbound, servers, clients)
        ephemeral = rng.integers(32768, 61000, rows).astype(np.uint16)
        batch["src_port"][:] = np.where(outbound, ephemeral, ports[service])
        batch["dst_port"][:] = np.where(outbound, ports[service], ephemeral)
        batch["protocol"][:] = protos[service]
        batch["ip_version"][:] = 4
        batch["exporter"][:] = exporters[rng.integers(0, 4, rows)]
        batch["in_if"][:] = np.where(outbound, 1, 2) + rng.integers(0, 3, rows) * 10
        batch["out_if"][:] = np.where(outbound, 2, 1) + rng.integers(0, 3, rows) * 10
        batch["packets"][:] = rng.integers(1, 500, rows)
        batch["bytes"][:] = batch["packets"] * rng.integers(60, 1500, rows)
        batch["tcp_flags"][:] = np.where(protos[service] == 6, 0x1B, 0)
        writer.write(pa.Table.from_batches([catalogue.to_record_batch(batch)]))


def build_rollups(data_dir: Path) -> str:
    try:
        from lanalyze.flows.config import RollupConfig
        from lanalyze.flows.store.rollup import RollupMaintainer
    except ImportError as exc:
        return f"no rollups ({exc})"
    config = RollupConfig(raw_max_age=0)
    maintainer = RollupMaintainer(config, flow_dir(data_dir))
    started = time.perf_counter()
    done = maintainer.run_once()
    maintainer.release()
    return f"rollups built in {time.perf_counter() - started:.0f} s: {done}"


def serve(
    data_dir: Path,
    work: Path,
    password_hash: str,
    warm: bool = True,
    mail: tuple[int, str] | None = None,
    checks: bool = True,
) -> tuple[subprocess.Popen[str], str]:
    """``lanalyze serve`` on the store; with ``mail`` = (SMTP port, DNS server) its mail
    component too, in the default configuration but for those and the accepted domain."""
    from tests.conftest import free_port, lanalyze_cmd

    from bench.mail_world import RECIPIENT

    port = free_port()
    config = work / "lanalyze.toml"
    if mail is None:
        mail_section = "[mail]\nenabled = false\n"
    else:
        domain = RECIPIENT.split("@")[1]
        mail_section = (
            f'[mail]\nlisten = ["127.0.0.1:{mail[0]}"]\ndomains = ["{domain}"]\n'
            f'mailboxes = ["{RECIPIENT}"]\n[mail.auth]\nresolver = "{mail[1]}"\n'
        )
        if not checks:
            mail_section += "enabled = false\n"
    config.write_text(
        f'[general]\ndata_dir = "{data_dir}"\nhostname = "mx.bench.test"\n'
        f"[flows]\nenabled = false\n{mail_section}"
        f'[web]\nlisten = "127.0.0.1:{port}"\n{"" if warm else "warm_ranges = []"}\n'
        '[[web.users]]\nname = "bench"\n'
        f'password_hash = "{password_hash}"\n'
    )
    proc = subprocess.Popen(
        [*lanalyze_cmd(), "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("lanalyze serve did not start")


# -- the mail load (issue 19) -------------------------------------------------------------------

MAIL_SESSIONS = 20
MAIL_WARMUP = 15.0


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    """One SMTP reply (its last line); multi-line replies read whole."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return line


async def _mail_session(
    port: int,
    rate: float,
    index: int,
    started: float,
    messages: dict[str, bytes],
    counts: Any,
    stop: Any,
) -> None:
    from bench.mail_world import ENVELOPE, MIX, RECIPIENT, SENDER

    # Sessions take the kinds in the proportions of the checked-mail benchmark (10/5/5).
    kinds = [kind for kind, share in MIX.items() for _ in range(share)]
    kind = kinds[index % len(kinds)]
    envelope = f"MAIL FROM:<{ENVELOPE[kind]}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
    body = messages[kind] + b".\r\n"
    sent = 0
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await _read_reply(reader)
            writer.write(f"EHLO mx.{SENDER}\r\n".encode())
            await _read_reply(reader)
            while not stop.is_set():
                # Message number ``sent * sessions + index`` of one fixed schedule at ``rate``.
                due = started + (sent * MAIL_SESSIONS + index) / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent += 1
                writer.write(envelope)
                replies = [await _read_reply(reader) for _ in range(3)]
                if not replies[2].startswith(b"354"):
                    with counts.get_lock():
                        counts[1] += 1
                    writer.write(b"RSET\r\n")
                    await _read_reply(reader)
                    continue
                writer.write(body)
                reply = await _read_reply(reader)
                with counts.get_lock():
                    counts[0 if reply.startswith(b"250") else 1] += 1
            writer.write(b"QUIT\r\n")
            writer.close()
        except (ConnectionError, OSError):
            with counts.get_lock():
                counts[1] += 1
            await asyncio.sleep(0.1)


def mail_load(port: int, rate: float, counts: Any, stop: Any) -> None:
    """Offer the checked-mail mix at ``rate`` msg/s until ``stop`` is set (own process)."""
    from bench.mail_world import mix

    messages = {
        kind: message.replace(b"\r\n.", b"\r\n..") for kind, message in mix().messages.items()
    }

    async def run() -> None:
        started = time.monotonic()
        sessions = [
            asyncio.create_task(_mail_session(port, rate, i, started, messages, counts, stop))
            for i in range(MAIL_SESSIONS)
        ]
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await asyncio.wait(sessions, timeout=10)

    asyncio.run(run())


class MailLoad:
    """The load process and its counters: messages accepted, messages refused or failed."""

    def __init__(self, port: int, rate: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.counts = context.Array("q", 2)
        self.stop = context.Event()
        self.process = context.Process(
            target=mail_load, args=(port, rate, self.counts, self.stop), daemon=True
        )

    def start(self) -> None:
        self.process.start()

    def snapshot(self) -> tuple[float, int, int]:
        with self.counts.get_lock():
            return time.monotonic(), int(self.counts[0]), int(self.counts[1])

    def close(self) -> None:
        self.stop.set()
        self.process.join(timeout=20)
        if self.process.is_alive():
            self.process.kill()


def request_lag(base: str, requests: int = 100) -> str:
    """How long a trivial request (``/healthz``) takes: the wait for the console's event
    loop, which the page requests' every turn pays too."""
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        with urllib.request.urlopen(base + "/healthz", timeout=30) as response:
            response.read()
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
    times.sort()
    return (
        f"GET /healthz: median {statistics.median(times):.1f} ms, "
        f"p90 {times[requests * 9 // 10]:.1f} ms, max {times[-1]:.1f} ms"
    )


PAGES = [
    ("dashboard, last hour", "/?range=1h", "#traffic svg path"),
    ("dashboard, 24 hours", "/?range=24h", "#traffic svg path"),
    ("dashboard, 7 days", "/?range=7d", "#traffic svg path"),
    ("dashboard, 30 days", "/?range=30d", "#traffic svg path"),
    ("dashboard, 30 days, filter", "/?range=30d&filter=proto+tcp", "#traffic svg path"),
    ("host, 24 hours", "/flows/host/10.0.0.1?range=24h", "#traffic svg path"),
    ("application, 24 hours", "/flows/app/tcp/443?range=24h", "#traffic svg path"),
    ("interface, 24 hours", "/flows/interface/192.168.0.1/1?range=24h", "#utilisation svg path"),
    ("exporters", "/exporters", "h1"),
]


def measure(
    base: str, runs: int, pages: list[tuple[str, str, str]]
) -> list[tuple[str, float, float, float, float, float, str]]:
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        # Playwright's polling evaluates strings, which our own CSP forbids (no eval): the
        # measuring browser bypasses it; the pages and their scripts are unchanged.
        page = browser.new_page(
            base_url=base, viewport={"width": 1400, "height": 1000}, bypass_csp=True
        )
        page.set_default_timeout(60_000)
        page.goto("/login")
        page.get_by_label("User name").fill("bench")
        page.get_by_label("Password").fill("bench-password")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_selector("h1")
        for label, url, ready in pages:
            times = []
            complete: list[float] = []
            first = 0.0
            server = ""
            for run in range(runs + 1):
                page.goto(url, wait_until="commit")
                page.wait_for_selector(ready, state="attached")
                page.wait_for_function(READY_MARK)
                elapsed = page.evaluate(READY_TIME)
                # Deferred tables (raw flows only) load after that; let them finish so their
                # queries do not overlap the next measurement, and note when they were there.
                page.wait_for_function(ALL_LOADED)
                complete.append(float(page.evaluate("performance.now()")))
                if run:  # the first load also warms the OS page cache: reported apart
                    times.append(float(elapsed))
                else:
                    first = float(elapsed)
                answered = page.locator("text=/Answered in/")
                if answered.count():
                    server = answered.first.inner_text()
            results.append(
                (
                    label,
                    first,
                    statistics.median(times),
                    min(times),
                    max(times),
                    statistics.median(complete[1:]),
                    server,
                )
            )
        browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--no-warm", action="store_true", help="Measure with web.warm_ranges = [] (all cold)."
    )
    parser.add_argument(
        "--regenerate",
        action="store_true",
        help="Generate the flows anew (a store older than an hour has none in the last hour).",
    )
    parser.add_argument(
        "--mail-rate",
        type=float,
        default=None,
        help="Run the server's mail component too and offer it this many msg/s while the "
        "pages are measured (0: mail component on, no load).",
    )
    parser.add_argument(
        "--no-checks",
        action="store_true",
        help="With --mail-rate: mail.auth.enabled = false (the checks cost most of a "
        "message's CPU; without them the server gets closer to the offered rate).",
    )
    args = parser.parse_args()
    data_dir = ROOT / "bench" / "out" / f"console-{args.flows}-{args.days}"
    marker = data_dir / "generated.json"
    now_ms = time.time_ns() // 1_000_000
    pages = PAGES
    stale = marker.exists() and now_ms - json.loads(marker.read_text())["now_ms"] > HOUR_MS * 5 // 6
    if stale and not args.regenerate:
        print("the stored flows end over 50 minutes ago: last-hour page left out (--regenerate)")
        pages = [page for page in PAGES if page[1] != "/?range=1h"]
    if args.regenerate or not marker.exists():
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        started = time.perf_counter()
        generate(data_dir, args.flows, args.days, now_ms)
        print(
            f"generated {args.flows:,} flows over {args.days} days in "
            f"{time.perf_counter() - started:.0f} s"
        )
        print(build_rollups(data_dir))
        marker.write_text(json.dumps({"now_ms": now_ms}))
    else:
        print(f"reusing {data_dir} (generated {json.loads(marker.read_text())['now_ms']})")
        print(build_rollups(data_dir))  # catch up with the hours since
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as stack:
        mail: tuple[int, str] | None = None
        load: MailLoad | None = None
        if args.mail_rate is not None:
            from tests.conftest import free_port
            from tests.mail.dnsserver import KnotServer

            from bench.mail_world import zones

            (Path(work) / "knot").mkdir()
            knot = KnotServer(Path(work) / "knot", zones())
            knot.start()
            stack.callback(knot.stop)
            mail = (free_port(), knot.address)
            # Each run starts with an empty mailbox and queue (the flows stay).
            shutil.rmtree(data_dir / "mail", ignore_errors=True)
            stack.callback(shutil.rmtree, data_dir / "mail", True)
        proc, base = serve(
            data_dir,
            Path(work),
            hash_password("bench-password"),
            not args.no_warm,
            mail,
            checks=not args.no_checks,
        )
        stack.callback(proc.wait, 30)
        stack.callback(proc.send_signal, signal.SIGTERM)
        if mail is not None and args.mail_rate:
            load = MailLoad(mail[0], args.mail_rate)
            load.start()
            stack.callback(load.close)
            time.sleep(MAIL_WARMUP)
        if not args.no_warm:
            time.sleep(30)  # the first warming round, as on a server that runs for a while
        before = load.snapshot() if load else None
        load_before = os.getloadavg()[0]
        print(request_lag(base))
        results = measure(base, args.runs, pages)
        load_after = os.getloadavg()[0]
        if load is not None and before is not None:
            after = load.snapshot()
            seconds = after[0] - before[0]
            print(
                f"mail: offered {args.mail_rate:.0f} msg/s, accepted "
                f"{(after[1] - before[1]) / seconds:.0f} msg/s over the {seconds:.0f} s of "
                f"the measurements ({after[2] - before[2]} refused or failed)"
            )
        print(
            f"load average (1 min) before / after the pages: {load_before:.1f} / {load_after:.1f}"
        )
    print(
        f"\n{'page':32} {'target ms':>9} {'first':>6} {'median':>6} {'min':>6} {'max':>6} "
        f"{'ratio':>6} {'all':>6}  server (last load)"
    )
    for label, first, median, low, high, complete, server in results:
        print(
            f"{label:32} {TARGET_MS:9.0f} {first:6.0f} {median:6.0f} {low:6.0f} {high:6.0f} "
            f"{median / TARGET_MS:6.2f} {complete:6.0f}  {server}"
        )


if __name__ == "__main__":
    main()
