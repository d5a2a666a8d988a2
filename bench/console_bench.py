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

    .venv/bin/python bench/console_bench.py [--flows 10000000] [--days 30] [--runs 5]
        [--no-warm] [--regenerate]

The generated store is kept in bench/out/console-<flows>-<days>/ and reused by later runs
(``--regenerate`` when it is older than an hour: the last-hour page needs recent flows).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

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
    data_dir: Path, work: Path, password_hash: str, warm: bool = True
) -> tuple[subprocess.Popen[str], str]:
    from tests.conftest import free_port, lanalyze_cmd

    port = free_port()
    config = work / "lanalyze.toml"
    config.write_text(
        f'[general]\ndata_dir = "{data_dir}"\n[flows]\nenabled = false\n[mail]\nenabled = false\n'
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
    with tempfile.TemporaryDirectory() as work:
        proc, base = serve(
            data_dir, Path(work), hash_password("bench-password"), warm=not args.no_warm
        )
        if not args.no_warm:
            time.sleep(30)  # the first warming round, as on a server that runs for a while
        try:
            results = measure(base, args.runs, pages)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
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
