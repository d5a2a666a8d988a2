"""Mail with sender checks on (issue 19): lanalyze's defaults against Postfix's Debian stack.

Three servers take the same message mix (``bench/mail_world.py``: half rsa-sha256 2048,
a quarter ed25519-sha256, a quarter forged; ~4 KiB each) from ``smtp-source -d`` with 20
sessions (three smtp-source processes at once, 10 + 5 + 5 sessions, one message file each):

* ``postfix``: plain Postfix, no checks, delivering to ``discard`` (as in smtp_bench.py);
* ``postfix+milters``: the same Postfix with the classic Debian sender-check stack:
  ``postfix-policyd-spf-python`` (policy service, spawned by master(8)), ``opendkim``
  (verifying) and ``opendmarc`` (``RejectFailures``) as milters;
* ``lanalyze``: ``lanalyze serve`` in its DEFAULT configuration: only paths, ports, the
  accepted domain and its mailbox are set (so ``mail.acceptors`` = one per core, the sender
  checks on, the DNS cache on), delivering into a real Maildir.

All of them ask one Knot DNS server (``tests/mail/dnsserver.py``) serving the zones of
``bench/mail_world.py`` (SPF with an ``include:``, both DKIM keys, DMARC). So that every
program finds it through ``/etc/resolv.conf`` as it would in production (policyd-spf's
dnspython, opendmarc's libresolv, opendkim's libunbound, lanalyze's default resolver), the
benchmark re-runs itself in a private network and mount namespace (``unshare --net
--mount``: its own loopback, where Knot listens on port 53, and its own
``/etc/resolv.conf`` bind-mounted over the system's, which is not touched). Needs root.

Debian packages: postfix, opendkim, opendmarc, postfix-policyd-spf-python, knot
(listed in packaging/debian-bench-packages.txt; `make bench-deps` installs them).

Prints msg/s (median of ``--runs``) and CPU per message by process (``/proc/<pid>/stat``,
from before a run until the queue is empty again): for Postfix by daemon (smtpd, cleanup,
qmgr, ..., policyd-spf, opendkim, opendmarc, knot), for lanalyze by role (acceptor processes:
SMTP sessions, the checks and the group commit; delivery), and the checks' own CPU per
message by kind, measured in this process on the same messages and DNS (one check at a time,
``time.thread_time``; the DNS cache warm, as in the running server).
Last, lanalyze's CPU per message by stage: SMTP and commit, the checks (by kind and for the
mix), delivery (:func:`stages`).

    PYTHONPATH=.:src .venv/bin/python bench/smtp_checked_bench.py --messages 5000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.mail_world import ENVELOPE, MIX, RECIPIENT, SENDER, mix, zones
from bench.smtp_bench import Postfix, cpu_ticks, free_port, process_roles, wait_port

NETNS_MARK = "LANALYZE_BENCH_NETNS"
HELO = f"mx.{SENDER}"
# The virtualenv's command next to this interpreter (PYTHONPATH picks the sources).
LANALYZE = Path(sys.executable).parent / "lanalyze"
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def enter_namespace() -> None:
    """Re-run this script in a private network + mount namespace with our resolv.conf."""
    if os.environ.get(NETNS_MARK) != "1":
        if os.geteuid() != 0:
            sys.exit("needs root (unshare, Postfix)")
        env = dict(os.environ, **{NETNS_MARK: "1"})
        command = ["unshare", "--net", "--mount", "--", sys.executable, *sys.argv]
        os.execvpe("unshare", command, env)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    resolv = Path(tempfile.mkdtemp(prefix="bench-resolv-")) / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)


# -- the three servers ----------------------------------------------------------------------


class Daemon:
    """A milter daemon in the foreground, stopped at exit."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.command = command
        self.log_path = log

    def __enter__(self) -> Daemon:
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_tcp(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def milter_stack(base: Path) -> tuple[list[Daemon], str, str, list[int]]:
    """opendkim, opendmarc and policyd-spf configured for the bench: (daemons, main.cf lines,
    master.cf lines, milter ports)."""
    base.mkdir(parents=True)
    os.chmod(base, 0o755)
    ignore = base / "ignore-hosts"
    ignore.write_text("192.0.2.255\n")  # nobody: loopback clients are checked too
    unbound = base / "unbound.conf"
    # opendkim resolves through libunbound: send everything to the Knot server, no DNSSEC.
    unbound.write_text(
        'server:\n    do-not-query-localhost: no\n    module-config: "iterator"\n'
        'forward-zone:\n    name: "."\n    forward-addr: 127.0.0.1@53\n'
    )
    dkim_port, dmarc_port = free_port(), free_port()
    (base / "opendkim.conf").write_text(
        f"Mode v\nSocket inet:{dkim_port}@127.0.0.1\nSyslog no\nBackground no\n"
        f"AuthservID bench.localdomain\nInternalHosts {ignore}\n"
        f"Nameservers 127.0.0.1\nPidFile {base}/opendkim.pid\n"
    )
    (base / "opendmarc.conf").write_text(
        f"Socket inet:{dmarc_port}@127.0.0.1\nSyslog false\nAuthservID bench.localdomain\n"
        f"TrustedAuthservIDs bench.localdomain\nIgnoreHosts {ignore}\nRejectFailures true\n"
        "SPFSelfValidate false\nPublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat\n"
        f"PidFile {base}/opendmarc.pid\n"
    )
    spf_conf = base / "policyd-spf.conf"
    spf_conf.write_text(
        "debugLevel = 0\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n"
        "PermError_reject = False\nTempError_Defer = False\nskip_addresses = 192.0.2.255/32\n"
    )
    daemons = [
        Daemon(["opendkim", "-f", "-x", str(base / "opendkim.conf")], base / "opendkim.log"),
        Daemon(["opendmarc", "-f", "-c", str(base / "opendmarc.conf")], base / "opendmarc.log"),
    ]
    main_extra = (
        f"smtpd_milters = inet:127.0.0.1:{dkim_port}, inet:127.0.0.1:{dmarc_port}\n"
        "milter_default_action = tempfail\n"
        "smtpd_recipient_restrictions = check_policy_service unix:private/policyd-spf\n"
        "policyd-spf_time_limit = 3600\n"
    )
    master_extra = (
        f"policyd-spf unix - n n - 0 spawn user=nobody argv=/usr/bin/policyd-spf {spf_conf}\n"
    )
    return daemons, main_extra, master_extra, [dkim_port, dmarc_port]


class Lanalyze:
    """``lanalyze serve`` with its defaults: only paths, ports and the accepted mailbox."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()

    def __enter__(self) -> Lanalyze:
        self.base.mkdir(parents=True)
        config = self.base / "lanalyze.toml"
        config.write_text(
            f'[general]\ndata_dir = "{self.base}/data"\n'
            f'[mail]\nlisten = ["127.0.0.1:{self.port}"]\n'
            f'domains = ["bench.test"]\nmailboxes = ["{RECIPIENT}"]\n'
        )
        self.log = (self.base / "lanalyze.log").open("wb")
        self.proc = subprocess.Popen(
            [str(LANALYZE), "--config", str(config), "serve"], stdout=self.log, stderr=self.log
        )
        wait_port(self.port)
        deadline = time.monotonic() + 60
        expected = min(os.cpu_count() or 1, 8) - 1
        while time.monotonic() < deadline:
            roles = process_roles(self.proc.pid, self.port)
            if list(roles.values()).count("acceptor") >= expected:
                break
            time.sleep(0.1)
        return self

    def pids(self) -> dict[int, str]:
        return process_roles(self.proc.pid, self.port)

    def queue_empty(self) -> bool:
        active = self.base / "data" / "mail" / "queue" / "active"
        return not any(active.iterdir())

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


# -- measuring ------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    found = []
    for child in (int(p) for p in out.split()):
        found += [child, *children(child)]
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def reaped_ticks(pid: int) -> int:
    """cutime + cstime: the CPU of children this process has waited for (exited daemons)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[13]) + int(fields[14])


def postfix_roles(master: int, milters: list[Daemon]) -> dict[int, str]:
    roles = {master: "master"}
    for pid in children(master):
        name = comm(pid)
        roles[pid] = "policyd-spf" if "policyd" in name or name == "python3" else name
    for daemon in milters:
        roles[daemon.proc.pid] = Path(daemon.command[0]).name
    return roles


def smtp_source_mix(port: int, files: dict[str, Path], messages: int) -> float:
    """All three smtp-source processes at once; messages per second until the last ends."""
    total_sessions = sum(MIX.values())
    procs = []
    started = time.perf_counter()
    for kind, sessions in MIX.items():
        count = messages * sessions // total_sessions
        procs.append(
            subprocess.Popen(
                [
                    "smtp-source",
                    "-d",
                    "-s",
                    str(sessions),
                    "-m",
                    str(count),
                    "-F",
                    str(files[kind]),
                    "-M",
                    HELO,
                    "-f",
                    ENVELOPE[kind],
                    "-t",
                    RECIPIENT,
                    f"127.0.0.1:{port}",
                ]
            )
        )
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"smtp-source failed ({proc.args})")
    return messages / (time.perf_counter() - started)


def measure(
    port: int,
    files: dict[str, Path],
    messages: int,
    roles: Callable[[], dict[int, str]],
    reaper: int | None,
    drained: Callable[[], bool],
) -> tuple[float, dict[str, float]]:
    """Rate, and CPU ms per message by role: processes alive before and after the run (those
    started during it, like Postfix's smtpd, count whole), plus what exited and was reaped."""
    before = {pid: cpu_ticks(pid) for pid in roles()}
    reaped = reaped_ticks(reaper) if reaper else 0
    rate = smtp_source_mix(port, files, messages)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not drained():
        time.sleep(0.05)
    per_role: dict[str, float] = {}
    for pid, role in roles().items():
        used = (cpu_ticks(pid) - before.get(pid, 0)) * TICK_MS / messages
        per_role[role] = per_role.get(role, 0.0) + used
    if reaper:
        per_role["exited daemons"] = (reaped_ticks(reaper) - reaped) * TICK_MS / messages
    per_role["total"] = sum(per_role.values())
    return rate, per_role


def postfix_drained(spool: Path) -> Callable[[], bool]:
    def empty() -> bool:
        return not any(
            files for name in ("incoming", "active") for _, _, files in os.walk(spool / name)
        )

    return empty


# -- the checks' own CPU, by kind -------------------------------------------------------------


def check_costs(resolver: str, rounds: int) -> dict[str, dict[str, float]]:
    """ms of CPU per check, by message kind and stage, one at a time on a warm cache."""
    from lanalyze.mail.auth import AuthConfig, Authenticator
    from lanalyze.mail.auth.arc import verify_arc
    from lanalyze.mail.auth.dkim_verify import verify_dkim
    from lanalyze.mail.auth.dmarc import check_dmarc, discover_policies
    from lanalyze.mail.auth.message import from_info, split_message

    messages = mix().messages
    auth = Authenticator(AuthConfig(resolver=resolver), "mx.bench.test")

    async def run() -> dict[str, dict[str, float]]:
        await auth.start()
        out: dict[str, dict[str, float]] = {}
        for kind, message in messages.items():
            mail_from = ENVELOPE[kind]
            domains = from_info(split_message(message)[0]).domains

            async def spf(mail_from: str = mail_from) -> object:
                return await auth._spf(client_ip="127.0.0.1", mail_from=mail_from, helo=HELO)

            async def dkim(message: bytes = message) -> object:
                return await verify_dkim(auth.resolver, message)

            async def arc(message: bytes = message) -> object:
                return await verify_arc(auth.resolver, message)

            async def dmarc(
                mail_from: str = mail_from, message: bytes = message, domains: list[str] = domains
            ) -> float:
                """Seconds of CPU of the DMARC evaluation alone (its inputs made first)."""
                spf_result = await auth._spf(client_ip="127.0.0.1", mail_from=mail_from, helo=HELO)
                dkim_results = await verify_dkim(auth.resolver, message)
                policies = await discover_policies(auth.resolver, domains)
                started = time.thread_time()
                await check_dmarc(
                    auth.resolver, domains, spf_result, dkim_results, policies=policies
                )
                return time.thread_time() - started

            async def whole(message: bytes = message, mail_from: str = mail_from) -> object:
                return await auth.check_bytes(
                    message,
                    mail_from=mail_from,
                    helo=HELO,
                    client_ip="127.0.0.1",
                    rcpt_to=[RECIPIENT],
                )

            stages: dict[str, float] = {}
            for name, work in (("spf", spf), ("dkim", dkim), ("arc", arc), ("all", whole)):
                await work()  # type: ignore[operator]  # warm the caches
                started = time.thread_time()
                for _ in range(rounds):
                    await work()  # type: ignore[operator]
                stages[name] = (time.thread_time() - started) * 1000 / rounds
            await dmarc()
            stages["dmarc"] = sum([await dmarc() for _ in range(rounds)]) * 1000 / rounds
            out[kind] = stages
        await auth.stop()
        return out

    return asyncio.run(run())


def stages(runs: list[dict[str, float]], costs: dict[str, dict[str, float]]) -> dict[str, float]:
    """CPU per message by stage: the checks (whole check per kind, weighted by the mix), the
    rest of the SMTP processes' CPU (sessions, cleanup, group commit, the main process's
    queue manager), and delivery. The checks are measured in this process on the same
    messages (the SMTP processes do not say how their CPU divides), so the SMTP share is
    derived: those processes' median CPU less the checks."""
    total = sum(MIX.values())
    checks = sum(costs[kind]["all"] * share / total for kind, share in MIX.items())
    by_kind = {f"checks {kind}": costs[kind]["all"] for kind in MIX}
    smtp = statistics.median(r.get("main", 0.0) + r.get("acceptor", 0.0) for r in runs)
    delivery = statistics.median(r.get("delivery", 0.0) for r in runs)
    return {
        "SMTP + commit": smtp - checks,
        "checks (mix)": checks,
        **by_kind,
        "delivery": delivery,
        "total": smtp + delivery,
    }


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="smtp-checked-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--check-rounds", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs)")
    args = parser.parse_args()
    for tool in ("smtp-source", "opendkim", "opendmarc", "policyd-spf", "knotd"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            sys.exit(f"{tool} is not installed")
    enter_namespace()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.mail.dnsserver import KnotServer

    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[dict[str, float]]] = {}
    with workdir(args.keep) as base:
        print(f"working directory {base}")
        os.chmod(base, 0o755)
        files = mix().write(base)
        for path in files.values():
            os.chmod(path, 0o644)
        knot = KnotServer(base / "knot", zones())
        knot.port = 53
        knot.start()
        try:
            daemons, main_extra, master_extra, milter_ports = milter_stack(base / "milters")
            with (
                Postfix(base / "postfix") as plain,
                daemons[0],
                daemons[1],
                Postfix(base / "checked", main_extra, master_extra) as checked,
                Lanalyze(base / "lanalyze") as ours,
            ):
                for port in milter_ports:
                    wait_tcp(port)
                knot_pid = knot.process.pid if knot.process else 0
                for run in range(args.runs):
                    for name in ("postfix", "postfix+milters", "lanalyze"):
                        if name == "lanalyze":
                            rate, used = measure(
                                ours.port,
                                files,
                                args.messages,
                                lambda: {**ours.pids(), knot_pid: "knot"},
                                None,
                                ours.queue_empty,
                            )
                        else:
                            server = plain if name == "postfix" else checked
                            milters = daemons if name != "postfix" else []
                            rate, used = measure(
                                server.port,
                                files,
                                args.messages,
                                lambda server=server, milters=milters: {
                                    **postfix_roles(server.master_pid(), milters),
                                    knot_pid: "knot",
                                },
                                server.master_pid(),
                                postfix_drained(server.base / "spool"),
                            )
                        rates.setdefault(name, []).append(rate)
                        cpu.setdefault(name, []).append(used)
                        shares = " ".join(f"{k} {v:.3f}" for k, v in sorted(used.items()) if v)
                        print(f"run {run + 1} {name:16} {rate:7.0f} msg/s  CPU ms/msg: {shares}")
            costs = check_costs(knot.address, args.check_rounds)
        finally:
            knot.stop()
    print()
    print(
        f"mix of {args.messages} messages ({', '.join(f'{k} {v}/20' for k, v in MIX.items())}),"
        f" smtp-source -d, 20 sessions; median of {args.runs} runs:"
    )
    ours_rate = statistics.median(rates["lanalyze"])
    for name in ("postfix", "postfix+milters", "lanalyze"):
        rate = statistics.median(rates[name])
        print(f"  {name:16} {rate:7.0f} msg/s   lanalyze / this: {ours_rate / rate:5.2f}x")
    print()
    print("CPU per message by process (ms, median of runs):")
    for name in ("postfix", "postfix+milters", "lanalyze"):
        roles = sorted({role for used in cpu[name] for role in used})
        shares = "  ".join(
            f"{role} {statistics.median(u.get(role, 0.0) for u in cpu[name]):.3f}" for role in roles
        )
        print(f"  {name:16} {shares}")
    print()
    print("lanalyze's checks, CPU per message by kind (ms, one at a time, warm caches):")
    for kind, by_kind in costs.items():
        print("  " + f"{kind:8} " + "  ".join(f"{k} {v:.3f}" for k, v in by_kind.items()))
    print()
    print("lanalyze by stage (ms per message, medians; see stages()):")
    print("  " + "  ".join(f"{k} {v:.3f}" for k, v in stages(cpu["lanalyze"], costs).items()))


if __name__ == "__main__":
    main()
