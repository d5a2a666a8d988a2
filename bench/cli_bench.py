"""Command-line report speed, fresh processes: ``nfdump -s srcip/bytes`` vs ``lanalyze flows top``.

    PYTHONPATH=src .venv/bin/python bench/cli_bench.py --flows 1M,10M,100M [--runs 5] [--work DIR]

The same flows are stored for nfcapd (NetFlow v5 over UDP) and as lanalyze raw segments plus
rollups, by ``bench/query_bench.py``'s builder (``--reuse`` keeps a previous run's stores).
Then, alternately and each as a new process, as a user types them:

- ``nfdump -R DIR -s srcip/bytes -n 10``
- ``lanalyze flows top --by srcip -n 10`` with ``lanalyze serve`` running on the data
  directory (answered over ``<data_dir>/lanalyze.sock``)
- the same with ``--no-server`` (the process imports and runs the query engine itself),
  without a configuration file (``HOME`` is an empty directory, as for a user who has none)
- and ``--no-server`` with a configuration file naming the data directory (the process
  validates it: pydantic and every section's model)

and prints the medians, the ratios ours/nfdump, and the load average before and after (the
machine is shared: compare ratios). Times are wall-clock from ``fork`` to exit, measured
here with ``time.perf_counter`` around ``subprocess.run`` (``hyperfine`` gives the same
shape; it is not needed), and the CPU time (user + system) of each process, which a busy
machine disturbs less than the wall clock.

The sources are compiled to bytecode first, as ``pip install`` does: with
``PYTHONDONTWRITEBYTECODE`` set, every fresh process would otherwise compile them again.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import query_bench  # noqa: E402


def lanalyze_cmd() -> list[str]:
    exe = shutil.which("lanalyze", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "lanalyze"]


CPU: dict[str, list[float]] = {}


def timed(args: list[str], name: str = "", env: dict[str, str] | None = None) -> float:
    """Wall-clock seconds of one fresh process; its CPU seconds go to ``CPU[name]``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    spent = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(name, []).append(cpu)
    return spent


def start_server(work: Path) -> subprocess.Popen[bytes]:
    data = work / "lanalyze"
    config = work / "serve.toml"
    config.write_text(
        f'[general]\ndata_dir = "{data}"\n[flows]\nenabled = false\n'
        "[mail]\nenabled = false\n[web]\nenabled = false\n"
    )
    (data / "lanalyze.sock").unlink(missing_ok=True)
    proc = subprocess.Popen(
        [*lanalyze_cmd(), "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not (data / "lanalyze.sock").exists():
        if proc.poll() is not None:
            sys.exit("lanalyze serve exited")
        time.sleep(0.05)
    return proc


def bench(work: Path, runs: int) -> None:
    import json

    meta = json.loads((work / "meta.json").read_text())
    since = meta["start_ms"] // 1000
    until = since + meta["flows"] // query_bench.RATE + 7200
    ours = [
        *lanalyze_cmd(),
        *("flows", "top", "--by", "srcip", "-n", "10"),
        *("--since", str(since), "--until", str(until)),
        *("--data", str(work / "lanalyze")),
    ]
    peer = ["nfdump", "-R", str(work / "nfcapd"), "-s", "srcip/bytes", "-n", "10"]
    home = work / "home"  # no ~/.config/lanalyze/lanalyze.toml: the built-in defaults
    home.mkdir(exist_ok=True)
    bare = {**os.environ, "HOME": str(home)}
    bare.pop("LANALYZE_CONFIG", None)
    configured = [*ours, "--config", str(work / "serve.toml"), "--no-server"]
    CPU.clear()
    load_before = os.getloadavg()
    server = start_server(work)
    try:
        timed(ours)  # the server's first query opens its DuckDB connection
        times: dict[str, list[float]] = {"nfdump": [], "served": [], "alone": [], "config": []}
        for _ in range(runs):
            times["nfdump"].append(timed(peer, "nfdump"))
            times["served"].append(timed(ours, "served", bare))
            times["alone"].append(timed([*ours, "--no-server"], "alone", bare))
            times["config"].append(timed(configured, "config", bare))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    load_after = os.getloadavg()
    median = {name: statistics.median(values) for name, values in times.items()}
    cpu = {name: statistics.median(values) for name, values in CPU.items()}
    print(
        f"{meta['flows']:,} flows, median of {runs} fresh processes, load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} cores)"
    )
    print(f"  nfdump -s srcip/bytes {median['nfdump']:.3f} s (CPU {cpu['nfdump']:.3f} s)")
    for name, label in (
        ("served", "with lanalyze serve"),
        ("alone", "--no-server, no configuration file"),
        ("config", "--no-server, --config FILE"),
    ):
        print(
            f"  lanalyze flows top ({label}) {median[name]:.3f} s (CPU {cpu[name]:.3f} s) | "
            f"ratio ours/nfdump {median[name] / median['nfdump']:.2f} "
            f"(CPU {cpu[name] / cpu['nfdump']:.2f})"
        )
    for name, values in times.items():
        print(f"  runs {name}: " + ", ".join(f"{value:.3f}" for value in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", default="1M,10M", help="comma-separated sizes: 1M,10M,100M")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lanalyze-cli-bench"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="reuse the stores of a previous run")
    args = parser.parse_args()
    if shutil.which("nfdump") is None or shutil.which("nfcapd") is None:
        sys.exit("nfdump and nfcapd are needed (Debian: nfdump)")
    # What an installed package has (pip compiles at install time).
    compileall.compile_dir(ROOT / "src", quiet=1)
    for size in args.flows.split(","):
        work = args.work / size
        if not (args.reuse and (work / "meta.json").exists()):
            query_bench.build(work, query_bench.parse_count(size))
        bench(work, args.runs)


if __name__ == "__main__":
    main()
