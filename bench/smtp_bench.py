"""SMTP acceptance benchmark: lanalyze vs a private Postfix, both driven by smtp-source.

Measures messages per second accepted durably (each on disk, fsynced, before its 250) under
``smtp-source -s 20 -m N -l 4096``, with a new connection per message and with ``-d``
(connection reused), then memory with 1,000 idle connections open. Postfix runs as a
private instance (its own config and queue directory under a temporary directory, listening
on a loopback port, delivering to ``discard``); nothing system-wide is touched. lanalyze
runs ``lanalyze serve`` with only the mail component (``mail.acceptors = 2``: one SMTP process
per core), delivering into a real Maildir.

Also prints lanalyze's CPU time per message (utime + stime from ``/proc/<pid>/stat`` of each
of its processes, from before an smtp-source run until delivery has emptied
``queue/active/``), by process: ``main`` (SMTP sessions, queue manager), ``acceptor`` (the
extra SMTP process), ``delivery`` (the Maildir worker). CPU time is steadier than messages
per second on a shared machine. ``--no-postfix`` measures lanalyze alone (no root needed).

On ext4 without a journal (this machine) every file creation scans the block group's inodes
deleted in the last 30 seconds: wait half a minute after anything deleted many files (a
previous run's clean-up) before measuring.

Usage: .venv/bin/python bench/smtp_bench.py [--messages 10000] [--runs 3]
Needs root for Postfix (it drops privileges to the ``postfix`` user).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANALYZE = ROOT / ".venv" / "bin" / "lanalyze"

MASTER_CF = """\
{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

QUEUE_DIRS = [
    "incoming",
    "active",
    "deferred",
    "defer",
    "bounce",
    "corrupt",
    "maildrop",
    "hold",
    "flush",
    "saved",
    "trace",
    "private",
    "public",
]

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/spool
data_directory = {base}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydomain = localdomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
default_transport = discard
local_transport = discard
relay_transport = discard
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = /dev/stdout
syslog_name = postfix-bench
alias_maps =
alias_database =
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 1100
smtpd_peername_lookup = no
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                if conn.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


class Postfix:
    def __init__(self, base: Path, main_extra: str = "", master_extra: str = "") -> None:
        self.base = base
        self.etc = base / "etc"
        self.port = free_port()
        # Extra main.cf / master.cf lines (smtp_checked_bench.py adds the sender-check milters).
        self.main_extra = main_extra
        self.master_extra = master_extra

    def __enter__(self) -> Postfix:
        self.etc.mkdir(parents=True)
        spool = self.base / "spool"
        (self.base / "data").mkdir()
        (self.etc / "main.cf").write_text(MAIN_CF.format(base=self.base) + self.main_extra)
        (self.etc / "master.cf").write_text(
            MASTER_CF.format(port=f"127.0.0.1:{self.port}") + self.master_extra
        )
        shutil.chown(self.base / "data", "postfix")
        os.chmod(self.base, 0o755)
        # `postfix -c DIR start` insists that DIR be listed in the system main.cf's
        # alternate_config_directories; running master(8) directly needs no system change.
        for name in QUEUE_DIRS:
            (spool / name).mkdir(parents=True, exist_ok=True)
            shutil.chown(spool / name, "postfix")
            os.chmod(spool / name, 0o700)
        for name, mode in (("public", 0o710), ("maildrop", 0o730)):
            shutil.chown(spool / name, "postfix", "postdrop")
            os.chmod(spool / name, mode)
        (spool / "pid").mkdir(exist_ok=True)
        self.log = (self.base / "maillog").open("wb")
        self.proc = subprocess.Popen(
            ["/usr/lib/postfix/sbin/master", "-c", str(self.etc), "-d"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)
        return self

    def master_pid(self) -> int:
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Lanalyze:
    def __init__(self, base: Path, acceptors: int) -> None:
        self.base = base
        self.acceptors = acceptors
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Lanalyze:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "lanalyze.toml"
        config.write_text(
            f"""
[general]
data_dir = "{self.base}/data"
hostname = "mx.bench.test"
log_level = "warning"
[flows]
enabled = false
[web]
enabled = false
[mail]
listen = ["127.0.0.1:{self.port}"]
domains = ["bench.test"]
mailboxes = ["sink@bench.test"]
max_connections_per_client = 2000
max_connections = 2000
acceptors = {self.acceptors}
[mail.queue]
scan_interval = 0.5
[mail.auth]
enabled = false
"""
        )
        self.proc = subprocess.Popen([str(LANALYZE), "--config", str(config), "serve"])
        wait_port(self.port)
        # The extra acceptors bind a moment later: wait, so every run uses all of them and
        # the CPU accounting knows which process is which.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            roles = process_roles(self.proc.pid, self.port)
            if list(roles.values()).count("acceptor") >= self.acceptors - 1:
                break
            time.sleep(0.1)
        return self

    def cpu_run(self, messages: int, reuse: bool) -> tuple[float, dict[str, float]]:
        """smtp-source rate, and CPU ms per message of each lanalyze process role, counted
        from before the run until delivery has emptied the queue."""
        assert self.proc is not None
        roles = process_roles(self.proc.pid, self.port)
        before = {pid: cpu_ticks(pid) for pid in roles}
        rate = smtp_source(self.port, messages, reuse)
        wait_drained(self.base / "data" / "mail" / "queue" / "active")
        per_role: dict[str, float] = {}
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        for pid, role in roles.items():
            used = (cpu_ticks(pid) - before[pid]) * tick_ms / messages
            per_role[role] = per_role.get(role, 0.0) + used
        per_role["total"] = sum(per_role.values())
        return rate, per_role

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads, in clock ticks)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1].endswith(f":{port:04X}") and cols[3] == "0A":
            inodes.add(cols[9])
    return inodes


def process_roles(main: int, port: int) -> dict[int, str]:
    """main / acceptor (holds the listening socket) / delivery (the other worker)."""
    listening = listening_inodes(port)
    roles = {main: "main"}
    for pid in lanalyze_pids(main)[1:]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        if b"resource_tracker" in cmdline:
            roles[pid] = "tracker"
            continue
        holds = False
        for fd in fds:
            with_link = ""
            with contextlib.suppress(OSError):
                with_link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if with_link.startswith("socket:[") and with_link[8:-1] in listening:
                holds = True
                break
        roles[pid] = "acceptor" if holds else "delivery"
    return roles


def wait_drained(queue: Path, timeout: float = 60.0) -> None:
    """Until delivery has emptied queue/active/ (its CPU belongs to the same messages)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(queue.iterdir()):
            return
        time.sleep(0.05)


def smtp_source(port: int, messages: int, reuse: bool) -> float:
    args = ["smtp-source", "-s", "20", "-m", str(messages), "-l", "4096"]
    if reuse:
        args.append("-d")
    args += ["-f", "bench@client.test", "-t", "sink@bench.test", f"127.0.0.1:{port}"]
    started = time.perf_counter()
    subprocess.run(args, check=True)
    return messages / (time.perf_counter() - started)


def pss_kib(pids: list[int]) -> int:
    """Proportional set size: shared pages split among the processes sharing them, so a
    many-process server (Postfix) is not charged its shared libraries once per process."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def postfix_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return [master, *(int(p) for p in out.split())]


def lanalyze_pids(main: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout
    return [main, *(int(p) for p in out.split())]


def idle_memory(port: int, pids: Callable[[], list[int]], count: int) -> tuple[int, int]:
    """PSS (KiB) of all processes before and with ``count`` idle connections open (each
    greeted, so each is being served)."""
    before = pss_kib(pids())
    conns = []
    try:
        for _ in range(count):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conns.append(conn)
        for conn in conns:
            conn.recv(200)
        time.sleep(1.0)
        return before, pss_kib(pids())
    finally:
        for conn in conns:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument(
        "--acceptors", type=int, default=2, help="mail.acceptors (one per core here)"
    )
    parser.add_argument(
        "--no-postfix", action="store_true", help="lanalyze only (CPU profiling; no ratio)"
    )
    args = parser.parse_args()
    for tool in ("smtp-source", "postfix"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            sys.exit(f"{tool} is not installed")
    results: dict[tuple[str, bool], list[float]] = {}
    cpu: dict[bool, list[dict[str, float]]] = {}
    memory: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="smtp-bench-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)  # Postfix's daemons run as the postfix user
        with (
            (
                contextlib.nullcontext(None) if args.no_postfix else Postfix(base / "postfix")
            ) as postfix,
            Lanalyze(base / "lanalyze", args.acceptors) as ours,
        ):
            # Memory first, on fresh servers, so the heaps of the throughput runs do not hide it.
            if postfix is not None:
                memory["postfix"] = idle_memory(
                    postfix.port, lambda: postfix_pids(postfix.master_pid()), args.idle
                )
            assert ours.proc is not None
            main_pid = ours.proc.pid
            memory["lanalyze"] = idle_memory(ours.port, lambda: lanalyze_pids(main_pid), args.idle)
            for _ in range(args.runs):
                for reuse in (False, True):
                    mode = "-d" if reuse else "new conn"
                    if postfix is not None:
                        rate = smtp_source(postfix.port, args.messages, reuse)
                        results.setdefault(("postfix", reuse), []).append(rate)
                        print(f"{'postfix':9} {mode:8} {rate:8.0f} msg/s")
                    rate, used = ours.cpu_run(args.messages, reuse)
                    results.setdefault(("lanalyze", reuse), []).append(rate)
                    cpu.setdefault(reuse, []).append(used)
                    shares = " ".join(f"{k} {v:.3f}" for k, v in sorted(used.items()))
                    print(f"{'lanalyze':9} {mode:8} {rate:8.0f} msg/s  CPU ms/msg: {shares}")
    print()
    print(f"smtp-source -s 20 -m {args.messages} -l 4096, median of {args.runs} runs (msg/s):")
    print(f"{'mode':22} {'postfix':>9} {'lanalyze':>9} {'ratio':>6}")
    for reuse, label in ((False, "new connection (no -d)"), (True, "reused (-d)")):
        mine = statistics.median(results[("lanalyze", reuse)])
        if args.no_postfix:
            print(f"{label:22} {'-':>9} {mine:9.0f} {'-':>6}")
        else:
            theirs = statistics.median(results[("postfix", reuse)])
            print(f"{label:22} {theirs:9.0f} {mine:9.0f} {mine / theirs:6.2f}")
    print()
    print("lanalyze CPU time per message, all its processes (ms, median of runs; from before")
    print("each smtp-source run until delivery has emptied the queue):")
    for reuse, label in ((False, "new connection (no -d)"), (True, "reused (-d)")):
        roles = sorted({role for used in cpu[reuse] for role in used})
        shares = "  ".join(
            f"{role} {statistics.median(u.get(role, 0.0) for u in cpu[reuse]):.3f}"
            for role in roles
        )
        print(f"{label:22} {shares}")
    print()
    print(f"memory with {args.idle} idle connections (PSS of all processes, MiB):")
    for name, (before, during) in memory.items():
        print(f"{name:9} before {before / 1024:7.1f}  with idle {during / 1024:7.1f}")


if __name__ == "__main__":
    main()
