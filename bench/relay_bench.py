"""End-to-end relay benchmark (issue 13): lanalyze vs Postfix as the relay in the middle.

``smtp-source -s 20 -m N -l 4096`` submits N messages for ``sink@remote.bench`` (from a
trusted network) to the relay under test, which sends them on to Postfix's ``smtp-sink`` on
another loopback port; the clock runs from the start of smtp-source until smtp-sink has
counted all N messages (``-c``: its ``mesg=`` counter). Both relays are configured alike:
no TLS, a fixed next hop (lanalyze: ``mail.outbound.transports``; Postfix: ``relayhost``),
no sender checks; lanalyze runs ``lanalyze serve`` with only the mail component and its
defaults otherwise (acceptors, queue scan interval, outbound limits), Postfix a private
instance (bench/smtp_bench.py's, as root).

Prints each run's end-to-end rate, the medians, the ratio, and the relay's CPU time per
message (utime + stime of all its processes, children included for Postfix's daemons that
exit, from /proc, over the run).

Usage: PYTHONPATH=.:src .venv/bin/python bench/relay_bench.py [--messages 5000] [--runs 3]
Needs root (Postfix drops privileges to ``postfix``; smtp-sink ``-u postfix``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.smtp_bench import Postfix, cpu_ticks, free_port, wait_port

RECIPIENT = "sink@remote.bench"
SMTP_SERVICE = "smtp unix - - n - - smtp\n"


class Sink:
    """Postfix's smtp-sink with running counters; :attr:`count` is the messages received."""

    def __init__(self) -> None:
        self.port = free_port()
        self.count = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sink:
        self._proc = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "postfix", f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port)
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        pending = b""
        while True:
            chunk = self._proc.stdout.read1(65536)
            if not chunk:
                return
            pending = (pending + chunk)[-200:]
            found = re.findall(rb"mesg=(\d+)", pending)
            if found:
                self.count = int(found[-1])

    def wait(self, target: int, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sink got {self.count} of {target}")
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            self._proc.wait(timeout=10)


class LanalyzeRelay:
    def __init__(self, base: Path, sink_port: int) -> None:
        self.base = base
        self.port = free_port()
        self.sink_port = sink_port
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LanalyzeRelay:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "lanalyze.toml"
        config.write_text(f"""
[general]
data_dir = "{self.base}/data"
hostname = "relay.bench.test"
log_level = "warning"
[flows]
enabled = false
[web]
enabled = false
[mail]
listen = ["127.0.0.1:{self.port}"]
domains = ["bench.test"]
mailboxes = ["postmaster@bench.test"]
trusted_networks = ["127.0.0.0/8"]
max_connections_per_client = 2000
[mail.outbound]
transports = {{ "remote.bench" = "[127.0.0.1]:{self.sink_port}" }}
tls = "none"
[mail.auth]
enabled = false
""")
        # This interpreter, so PYTHONPATH picks the sources under test.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanalyze", "--config", str(config), "serve"]
        )
        wait_port(self.port)
        time.sleep(2)  # the extra acceptors bind a moment later
        return self

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid, *children(self.proc.pid)]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
            found.extend(children(int(entry.name)))
    return found


def cpu_with_children(pid: int) -> int:
    """utime + stime + cutime + cstime: Postfix's smtpd/cleanup/smtp processes come and go."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(f) for f in fields[11:15])


def run(
    port: int, sink: Sink, messages: int, pids: list[int], master: int | None
) -> tuple[float, float]:
    """End-to-end messages per second, and CPU ms per message of the relay."""

    def cpu() -> int:
        total = sum(cpu_ticks(p) for p in pids)
        if master is not None:
            total += cpu_with_children(master) - cpu_ticks(master)
            total += sum(cpu_ticks(p) for p in children(master))
        return total

    start_count = sink.count
    before = cpu()
    start = time.monotonic()
    subprocess.run(
        [
            "smtp-source",
            "-s",
            "20",
            "-m",
            str(messages),
            "-l",
            "4096",
            "-d",
            "-f",
            "bench@bench.test",
            "-t",
            RECIPIENT,
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    accepted = time.monotonic() - start
    sink.wait(start_count + messages)
    elapsed = time.monotonic() - start
    used_ms = (cpu() - before) * 1000 / os.sysconf("SC_CLK_TCK")
    # How long the sink waited after the last message was accepted: the relay's outbound
    # lag behind its own acceptance.
    print(f"  accepted all in {accepted:.2f} s, the sink had them {elapsed - accepted:.2f} s later")
    return messages / elapsed, used_ms / messages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"postfix": [], "lanalyze": []}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)
        with Sink() as sink:
            extra = (
                "default_transport = smtp\nrelay_transport = smtp\n"
                f"relayhost = [127.0.0.1]:{sink.port}\nsmtp_tls_security_level = none\n"
            )
            # Both relays run throughout and the runs alternate, so that both see the same
            # load on a shared machine.
            with (
                Postfix(base / "postfix", main_extra=extra, master_extra=SMTP_SERVICE) as postfix,
                LanalyzeRelay(base / "lanalyze", sink.port) as relay,
            ):
                for _ in range(args.runs):
                    rate, cpu = run(postfix.port, sink, args.messages, [], postfix.master_pid())
                    results["postfix"].append((rate, cpu))
                    print(f"postfix  {rate:8.0f} msg/s  {cpu:6.2f} ms CPU/msg", flush=True)
                    rate, cpu = run(relay.port, sink, args.messages, relay.pids(), None)
                    results["lanalyze"].append((rate, cpu))
                    print(f"lanalyze {rate:8.0f} msg/s  {cpu:6.2f} ms CPU/msg", flush=True)
    medians = {
        k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v))
        for k, v in results.items()
    }
    print(f"\n{'relay':9} {'msg/s':>8} {'CPU ms/msg':>11}")
    for name, (rate, cpu) in medians.items():
        print(f"{name:9} {rate:8.0f} {cpu:11.2f}")
    print(f"ratio lanalyze/postfix: {medians['lanalyze'][0] / medians['postfix'][0]:.2f}x")


if __name__ == "__main__":
    main()
