"""mail.acceptors = 2: a second SMTP process shares the port; all its mail gets delivered,
and it dies with the main process."""

from __future__ import annotations

import os
import smtplib
import time
from pathlib import Path

from lanalyze.configbase import per_core
from lanalyze.mail import acceptors, cleanup
from lanalyze.mail.config import MailConfig
from lanalyze.metrics import REGISTRY
from tests.conftest import free_port
from tests.mail.conftest import run_server
from tests.mail.smtppeer import Peer


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


def test_acceptors_hand_their_mail_over_at_once_and_relay_skips_local_delivery(
    data_dir: Path,
) -> None:
    """The queue scan is an hour away: what an acceptor commits reaches the main process's
    queue manager over the pipe (else its mail would wait for the scan), and mail with no
    local recipient goes straight to the outbound side, never through local delivery. The
    receiver is the suite's small SMTP peer (a sink; real receivers are test_outbound's)."""
    far = Peer("127.0.0.1", free_port())
    far.start()
    # "relay": local delivery's outcome for a message it passes on to the outbound side
    hop = {"agent": "local", "result": "relay"}
    hops_before = REGISTRY.get_sample_value("lanalyze_mail_deliveries_total", hop) or 0
    try:
        with run_server(
            data_dir,
            acceptors=2,
            trusted_networks=["127.0.0.0/8"],
            queue={"retry_min": 0.2, "scan_interval": 3600},
            outbound={"transports": {"far.test": f"[127.0.0.1]:{far.port}"}, "tls": "none"},
        ) as running:
            # New connections until the acceptor (another queue id tag than this process's)
            # took 10 relayed messages and one local one: the kernel spreads them over both
            # processes once the acceptor listens.
            relayed = by_acceptor = local = 0
            local_by_acceptor = False
            while by_acceptor < 10 or not local_by_acceptor:
                assert relayed < 400, "the acceptor took no connection"
                to_local = by_acceptor >= 10
                queue_id = send_one(running.port(), to_local)
                mine = queue_id[-9:-5] == cleanup._PREFIX
                if to_local:
                    local += 1
                    local_by_acceptor = not mine
                else:
                    relayed += 1
                    by_acceptor += not mine
            running.wait_delivered(local, timeout=60)
            deadline = time.monotonic() + 60
            while len(far.received) < relayed and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(far.received) == relayed
    finally:
        far.stop()
    hops = REGISTRY.get_sample_value("lanalyze_mail_deliveries_total", hop) or 0
    assert hops == hops_before
    assert not any(os.scandir(data_dir / "mail" / "queue" / "active"))


def send_one(port: int, to_local: bool) -> str:
    """One message on a new connection; the queue id of the 250."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("x@example.test")
        client.rcpt("alice@example.test" if to_local else "bob@far.test")
        code, text = client.data(b"Subject: x\r\n\r\nx\r\n")
    assert code == 250
    return text.decode().rsplit(" ", 1)[-1]
