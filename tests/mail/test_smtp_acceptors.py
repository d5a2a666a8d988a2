"""mail.acceptors = 2: a second SMTP process shares the port; all its mail gets delivered,
and it dies with the main process."""

from __future__ import annotations

import os
import smtplib
import time
from pathlib import Path

from lanalyze.configbase import per_core
from lanalyze.mail import acceptors
from lanalyze.mail.config import MailConfig
from lanalyze.metrics import REGISTRY
from tests.mail.conftest import run_server


def test_two_acceptors_share_the_port_and_deliver_everything(data_dir: Path) -> None:
    accepted = {"listener": "mta"}
    before = REGISTRY.get_sample_value("lanalyze_smtp_messages_accepted_total", accepted) or 0
    recorded = "lanalyze_mail_rejections_recorded_total"
    rejected_before = REGISTRY.get_sample_value(recorded, accepted) or 0
    with run_server(data_dir, acceptors=2) as running:
        [child] = running.server._acceptors
        assert child.is_alive()
        for number in range(30):  # new connections: the kernel spreads them over both
            with smtplib.SMTP("127.0.0.1", running.port(), timeout=10) as client:
                refused = client.sendmail(
                    "x@remote.test",
                    ["alice@example.test", "nobody@example.test"],
                    b"Subject: %d\r\n\r\nx\r\n" % number,
                )
                assert refused["nobody@example.test"][0] == 550
        messages = running.wait_delivered(30, timeout=20)
        assert len(messages) == 30
    deadline = time.monotonic() + 10
    while child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not child.is_alive()
    # The acceptor's counts reach the main process's /metrics (its final snapshot included).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = REGISTRY.get_sample_value("lanalyze_smtp_messages_accepted_total", accepted)
        rejected_after = REGISTRY.get_sample_value(recorded, accepted)
        if after == before + 30 and rejected_after == rejected_before + 30:
            break
        time.sleep(0.1)
    assert after == before + 30
    # Rejections recorded by either process are counted too: the acceptor's snapshot (the
    # same function in every process) carries the rejection counters to the main process.
    assert rejected_after == rejected_before + 30
    shipped = {(key, labels) for key, labels, _value in acceptors.snapshot()}
    assert ("rejections_recorded", ("mta",)) in shipped
    assert not any(os.scandir(data_dir / "mail" / "queue" / "active"))


def _niceness_after_start(niceness: int) -> int:
    acceptors.start_delivery_worker(os.getppid(), niceness)
    return os.nice(0)


def test_delivery_worker_yields_the_cpu_to_the_acceptors() -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    base = os.nice(0)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_niceness_after_start, 10).result(timeout=60) == min(19, base + 10)


def test_no_import_cycle_through_the_smtp_server() -> None:
    """Issue 11: acceptors.py -> server.py -> rejections.py -> serve.py was a cycle. Modules the
    server imports must not import it (or serve.py) back, not even lazily or for typing."""
    import ast
    from pathlib import Path

    import lanalyze

    root = Path(lanalyze.__file__).parent
    for module in ("mail/acceptors.py", "mail/rejections.py", "mail/smtp/protocol.py"):
        tree = ast.parse((root / module).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert not imported & {"lanalyze.mail.server", "lanalyze.serve"}, module


def test_default_is_one_acceptor_per_core(data_dir: Path) -> None:
    """Issue 19: the default (0) uses the machine, like flows.workers, instead of one process
    that leaves the other cores idle."""
    assert MailConfig().acceptors == 0
    assert MailConfig().acceptor_count == per_core(0) == max(1, min(os.cpu_count() or 1, 8))
    assert MailConfig(acceptors=3).acceptor_count == 3
    with run_server(data_dir, acceptors=0) as running:
        assert len(running.server._acceptors) == per_core(0) - 1
        with smtplib.SMTP("127.0.0.1", running.port(), timeout=10) as client:
            client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: 1\r\n\r\nx\r\n")
        assert len(running.wait_delivered(1, timeout=20)) == 1


def test_acceptors_ship_the_sender_check_counters() -> None:
    """Issue 19: with an acceptor per core, most verdicts are made outside the main process;
    their counters reach its /metrics like the SMTP ones."""
    from lanalyze.mail.auth import authenticator

    authenticator.RESULTS.labels("spf", "pass")
    authenticator.ACTIONS.labels("accept")
    shipped = {(key, labels) for key, labels, _value in acceptors.snapshot()}
    assert ("auth_results", ("spf", "pass")) in shipped
    assert ("auth_actions", ("accept",)) in shipped
    assert ("auth_spf_cached", ()) in shipped
