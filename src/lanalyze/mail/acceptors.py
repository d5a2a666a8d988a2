"""Extra SMTP acceptor processes (``mail.acceptors > 1``) sharing the listeners.

Each acceptor is a :class:`~lanalyze.mail.server.MailServer` in the ``acceptor`` role: SMTP
sessions, the authentication checks and cleanup's group commit into ``queue/active/`` (the
same durability rule: the 250 follows the flush), but no queue manager and no delivery: each
committed queue id goes to the main process over the counters' pipe (:func:`tell_queued`), and
the main process's queue scan (``mail.queue.scan_interval``) still finds any it missed. The
kernel spreads connections over the processes (``SO_REUSEPORT``), so sessions use every core
instead of one event loop's thread. Acceptors (and the delivery worker) are spawned children
of the main process with ``PR_SET_PDEATHSIG``, so a ``kill -9`` of ``lanalyze serve`` leaves
no listener or worker behind.

Each acceptor sends a snapshot of its mail counters over a pipe every second; the main
process adds the differences to its own counters, so ``/metrics`` shows the sum of all
processes. Connection limits and the AUTH failure limits apply per process.

This module is the process machinery only: it imports neither :mod:`lanalyze.mail.server`
nor :mod:`lanalyze.serve` (the acceptor's entry point, which builds a ``MailServer``, lives in
the server module and is passed in), so the server imports it without a cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from lanalyze.service import run_loop

PR_SET_PDEATHSIG = 1


def _listen_exact(addresses: list[tuple[str, int]]) -> list[str]:
    return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in addresses]


SNAPSHOT_INTERVAL = 1.0


def _families() -> dict[str, Any]:
    from lanalyze.mail import metrics, rejections
    from lanalyze.mail.auth import authenticator, signing

    return {
        "connections": metrics.CONNECTIONS,
        "open": metrics.OPEN_CONNECTIONS,
        "commands": metrics.COMMANDS,
        "rejections": metrics.REJECTIONS,
        "write_stalls": metrics.WRITE_STALLS,
        "auth_throttled": metrics.AUTH_THROTTLED,
        "messages": metrics.MESSAGES,
        "bytes": metrics.BYTES,
        "batches": metrics.COMMIT_BATCHES,
        "rejections_recorded": rejections.RECORDED,
        "rejections_dropped": rejections.DROPPED,
        "rejections_pruned": rejections.PRUNED,
        # The sender checks run in every acceptor (one per core by default): without these,
        # /metrics showed only the main process's share of the verdicts.
        "auth_results": authenticator.RESULTS,
        "auth_actions": authenticator.ACTIONS,
        "auth_flags": authenticator.FLAGS,
        "auth_internal_errors": authenticator.INTERNAL_ERRORS,
        "auth_spf_cached": authenticator.SPF_CACHED,
        "dkim_signatures": signing.SIGNATURES,
    }


def snapshot() -> list[tuple[str, tuple[str, ...], float]]:
    """(family, label values, value) of every mail counter and gauge in this process."""
    out = []
    for key, family in _families().items():
        names = tuple(family._labelnames)
        for metric in family.collect():
            for sample in metric.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = tuple(sample.labels[name] for name in names)
                out.append((key, labels, float(sample.value)))
    return out


Queued = Callable[[list[tuple[str, bool]]], None]
"""Told of queue files an acceptor committed: (queue id, relay only) pairs."""

# Acceptor side: the pipe to the main process, and the lock that keeps the reporting thread's
# snapshots and the event loop's queue ids from interleaving on it.
_pipe: list[Any] = []
_pipe_lock = threading.Lock()


def _report(connection: Any) -> None:
    """Acceptor side: ship snapshots until the pipe breaks."""
    while True:
        time.sleep(SNAPSHOT_INTERVAL)
        samples = snapshot()  # outside the lock: the event loop's tell_queued waits on it
        try:
            with _pipe_lock:
                connection.send(samples)
        except (OSError, EOFError):
            return


def tell_queued(items: list[tuple[str, bool]]) -> None:
    """Acceptor side: the main process's queue manager takes these queue files now (without
    this it found them at its next scan of ``active/``, up to ``mail.queue.scan_interval``
    later). ``relay only``: no recipient of a local domain, so no local delivery to wait for.
    A lost notice (the pipe broke) costs only that delay: the scan still finds the file."""
    if not _pipe:
        return
    with contextlib.suppress(OSError, EOFError), _pipe_lock:
        _pipe[0].send(("queued", items))


def _merge(connection: Any, on_queued: Queued | None = None) -> None:
    """Main-process side: add each acceptor's increments to our own counters; pass queued
    files on to ``on_queued``."""
    families = _families()
    last: dict[tuple[str, tuple[str, ...]], float] = {}
    while True:
        try:
            samples = connection.recv()
        except (OSError, EOFError):
            return
        if isinstance(samples, tuple):  # ("queued", [(queue id, relay only), ...])
            if on_queued is not None:
                on_queued(samples[1])
            continue
        for key, labels, value in samples:
            delta = value - last.get((key, labels), 0.0)
            last[(key, labels)] = value
            if delta:
                family = families[key]
                (family.labels(*labels) if labels else family).inc(delta)


def spawn_acceptors(
    target: Callable[[dict[str, Any], dict[str, Any], Any, int], None],
    config: dict[str, Any],
    general: dict[str, Any],
    addresses: dict[str, list[tuple[str, int]]],
    count: int,
    *,
    on_queued: Queued | None = None,
) -> list[Any]:
    """Start ``count`` processes running ``target(config, general, metrics pipe, parent pid)``
    (a module-level function: spawned processes import it by name) on the listeners the main
    process bound (``addresses`` by kind), and merge their counters into ours; the files they
    queue are passed to ``on_queued`` (in a reader thread) as they commit them."""
    config = dict(config)
    # Port 0 means "whatever the main process got": bind exactly those ports.
    config["listen"] = _listen_exact(addresses.get("mta", []))
    config["submission_listen"] = _listen_exact(addresses.get("submission", []))
    config["smtps_listen"] = _listen_exact(addresses.get("smtps", []))
    context = multiprocessing.get_context("spawn")
    processes = []
    for number in range(count):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=target,
            args=(config, general, sender, os.getpid()),
            name=f"mail-acceptor-{number}",
        )
        process.start()
        sender.close()
        threading.Thread(
            target=_merge,
            args=(receiver, on_queued),
            name=f"mail-acceptor-{number}-metrics",
            daemon=True,
        ).start()
        processes.append(process)
    return processes


def stop_acceptors(processes: list[Any]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=15)
        if process.is_alive():
            process.kill()
            process.join()


def die_with_parent(parent_pid: int) -> None:
    """In a child process: be sent SIGTERM when the process that started us dies (even by
    SIGKILL), so no worker or acceptor outlives ``lanalyze serve``. A parent that died while
    we were starting (before prctl) is caught by the ``getppid`` check."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(0)


def start_delivery_worker(parent_pid: int, niceness: int) -> None:
    """In the delivery process: die with the main process, and yield the CPU to the SMTP
    acceptors (``mail.queue.delivery_nice``): a client waits on every reply, a queued message
    waits for nobody, so in a burst acceptance goes first and delivery drains the queue after."""
    die_with_parent(parent_pid)
    if niceness:
        os.nice(niceness)


def acceptor_started(parent: int, metrics_pipe: Any) -> None:
    """First thing in an acceptor process: die with the parent, report counters every second."""
    die_with_parent(parent)
    _pipe[:] = [metrics_pipe]
    threading.Thread(target=_report, args=(metrics_pipe,), daemon=True).start()


def acceptor_finished(metrics_pipe: Any) -> None:
    """Last thing in an acceptor process: ship the last second's counts."""
    with contextlib.suppress(OSError, EOFError), _pipe_lock:
        metrics_pipe.send(snapshot())


def serve_until_signal(server: Any) -> None:
    """Run ``server`` (a component) on a new event loop until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        gc.collect()
        gc.freeze()  # as serve.run: full collections then skip the startup heap
        try:
            await stop.wait()
        finally:
            await server.stop()

    run_loop(main())
