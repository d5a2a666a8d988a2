"""Profile the SMTP acceptor's per-message Python cost: the mail server in-process on uvloop
(``mail.acceptors = 1``, so every session is in this process), driven by Postfix's
``smtp-source -s 20 -m N -l 4096 [-d]``, under cProfile; prints the functions by own time
and the CPU per message of the event loop's thread (the SMTP sessions: steadier than the
whole process, whose file system work depends on what was deleted lately) and of the
process (delivery runs in its own process and is not counted).

Usage: .venv/bin/python bench/smtp_profile.py [--messages 5000] [--reuse] [--no-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import tempfile
import time
from pathlib import Path

import uvloop

from lanalyze.config import GeneralConfig
from lanalyze.mail.config import MailConfig
from lanalyze.mail.server import MailServer


async def run(args: argparse.Namespace, base: Path) -> None:
    config = MailConfig.model_validate(
        {
            "listen": ["127.0.0.1:0"],
            "domains": ["bench.test"],
            "mailboxes": ["sink@bench.test"],
            "max_connections": 2000,
            "max_connections_per_client": 2000,
            "acceptors": 1,
            "auth": {"enabled": False},
        }
    )
    general = GeneralConfig(data_dir=base, hostname="mx.bench.test", log_level="warning")
    server = MailServer(config, general)
    await server.start()
    if args.gc_freeze:
        gc.freeze()
    gc_before = [stats["collections"] for stats in gc.get_stats()]
    port = server.addresses["mta"][0][1]
    command = ["smtp-source", "-s", "20", "-m", str(args.messages), "-l", "4096"]
    if args.reuse:
        command.append("-d")
    command += ["-f", "bench@client.test", "-t", "sink@bench.test", f"127.0.0.1:{port}"]
    profiler = None if args.no_profile else cProfile.Profile()
    cpu, loop_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    proc = await asyncio.create_subprocess_exec(*command)
    await proc.wait()
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    loop_cpu = time.thread_time() - loop_cpu
    gc_runs = [stats["collections"] - n for stats, n in zip(gc.get_stats(), gc_before, strict=True)]
    print(
        f"{args.messages / wall:.0f} msg/s, CPU ms per message: event loop thread "
        f"{loop_cpu * 1000 / args.messages:.3f}, whole process {cpu * 1000 / args.messages:.3f}"
        f" (delivery is another process); garbage collections by generation {gc_runs}"
    )
    await server.stop()
    if profiler is not None:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--reuse", action="store_true", help="smtp-source -d")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after start")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smtp-profile-") as tmp:
        uvloop.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
