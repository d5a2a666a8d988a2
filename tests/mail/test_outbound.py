"""Outbound delivery end to end (issue 13): lanalyze sends to real peers on loopback.

A real DNS server (Knot, tests/mail/dnsserver.py) serves MX and A records for the test
domains, pointing at 127.0.0.2, 127.0.0.3, ... where the peers listen on one port (the
sender's ``mail.outbound.port``): a second lanalyze (where delivery must land intact), and the
small failure peers of tests/mail/smtppeer.py (4xx, 5xx to one recipient of two, a drop in
DATA, slow, TLS required, no 8BITMIME); one address has nobody listening (down). No mock of
SMTP or DNS. The bouncer is a recording stand-in (o2's Bouncer is wired by the lead): it is
the protocol's other side, and what matters here is what delivery reports to it.
"""

from __future__ import annotations

import email
import email.policy
import http.server
import os
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lanalyze.mail.bounce import RecipientResult
from lanalyze.mail.queuefile import Envelope, Layout, read_envelope
from lanalyze.mail.tls import write_selfsigned
from tests.conftest import free_port
from tests.mail.conftest import PASSWORD, RunningServer, password_hash, run_server
from tests.mail.dnsserver import KnotServer, knot_server
from tests.mail.smtppeer import Peer

ZONE = """\
far.test. MX 10 mx.far.test.
mx.far.test. A 127.0.0.2
multi.test. MX 10 mx.down.test.
multi.test. MX 20 mx.far.test.
amx.test. A 127.0.0.2
temp.test. MX 10 mx.temp.test.
mx.temp.test. A 127.0.0.3
reject.test. MX 10 mx.reject.test.
mx.reject.test. A 127.0.0.4
drop.test. MX 10 mx.drop.test.
mx.drop.test. A 127.0.0.5
mx.down.test. A 127.0.0.6
down.test. MX 10 mx.down.test.
slow.test. MX 10 mx.slow.test.
mx.slow.test. A 127.0.0.7
tls.test. MX 10 mx.tls.test.
mx.tls.test. A 127.0.0.8
plain.test. MX 10 mx.plain.test.
mx.plain.test. A 127.0.0.9
nullmx.test. MX 0 .
noaddr.test. MX 10 ghost.test.
mx.relay.test. A 127.0.0.11
sts.test. MX 10 mx.plain.test.
sts.test. MX 20 mx.tls.test.
_mta-sts.sts.test. TXT "v=STSv1; id=20260101"
mta-sts.sts.test. A 127.0.0.10
"""

POLICY = b"version: STSv1\nmode: enforce\nmx: mx.plain.test\nmx: *.tls.test\nmax_age: 86400\n"


class PolicyServer:
    """The MTA-STS policy host: HTTPS on 127.0.0.10:443 (RFC 8461 §3.3 fixes the port)."""

    def __init__(self, cert: Path, key: Path) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = self.path == "/.well-known/mta-sts.txt"
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(POLICY) if found else 0))
                self.end_headers()
                if found:
                    self.wfile.write(POLICY)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.10", 443), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RecordingBouncer:
    """The Bouncer protocol's other side, recording what delivery reports."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, RecipientResult]] = []
        self.lock = threading.Lock()

    def report(
        self, envelope: Envelope, message: bytes, results: Sequence[RecipientResult]
    ) -> list[str]:
        with self.lock:
            self.reports.extend((envelope.queue_id, r) for r in results)
        return []

    def by_recipient(self) -> dict[str, list[RecipientResult]]:
        with self.lock:
            found: dict[str, list[RecipientResult]] = {}
            for _, result in self.reports:
                found.setdefault(result.recipient, []).append(result)
            return found


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met")


def _port_free_everywhere(port: int, hosts: list[str]) -> bool:
    for host in hosts:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


PEER_HOSTS = [f"127.0.0.{n}" for n in range(2, 10)]


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tls_pair: tuple[Path, Path]
) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("outbound")
    # Certificates: the relay host's and the policy host's, trusted through mail.outbound.ca_file
    # with the failure peer's (issued to mx.example.test, so it never verifies for mx.tls.test).
    certs = {}
    for name in ("mx.relay.test", "mta-sts.sts.test"):
        certs[name] = (base / f"{name}.crt", base / f"{name}.key")
        write_selfsigned(*certs[name], name, days=2)
    bundle = base / "ca.pem"
    bundle.write_bytes(b"".join(p[0].read_bytes() for p in [*certs.values(), tls_pair]))
    port = free_port()
    while not _port_free_everywhere(port, PEER_HOSTS):
        port = free_port()
    peers = {
        "temp": Peer("127.0.0.3", port, mode="tempfail"),
        "reject": Peer("127.0.0.4", port, mode="reject_bad", chunking=True),
        "drop": Peer("127.0.0.5", port, mode="drop_data"),
        "slow": Peer("127.0.0.7", port, mode="slow", delay=60.0),
        "tls": Peer("127.0.0.8", port, mode="tls_required", tls_pair=tls_pair),
        "plain": Peer("127.0.0.9", port, eightbit=False),
    }
    for peer in peers.values():
        peer.start()
    policy_host = None
    if os.geteuid() == 0:
        try:
            policy_host = PolicyServer(*certs["mta-sts.sts.test"])
        except OSError:  # 127.0.0.10:443 taken (another run of this module at the same time)
            policy_host = None
    relay_cert, relay_key = certs["mx.relay.test"]
    with (
        knot_server(base / "knot", {"test": ZONE}) as dns,
        run_server(
            base / "far",
            hostname="mx.far.test",
            listen=[f"127.0.0.2:{port}"],
            domains=["far.test", "multi.test", "amx.test"],
            mailboxes=["alice@far.test", "bob@far.test", "carol@multi.test", "dave@amx.test"],
            aliases={},
        ) as far,
        run_server(
            base / "relay",
            hostname="mx.relay.test",
            listen=["127.0.0.11:0"],
            submission_listen=[f"127.0.0.11:{port}"],
            tls_cert=str(relay_cert),
            tls_key=str(relay_key),
            domains=["relay.test"],
            mailboxes=["rcv@relay.test"],
            aliases={},
            users=[
                {
                    "name": "smtpuser",
                    "password_hash": password_hash(),
                    "addresses": ["@example.test"],
                }
            ],
        ) as relay,
    ):
        try:
            yield {
                "port": port,
                "dns": dns,
                "far": far,
                "relay": relay,
                "peers": peers,
                "ca": bundle,
                "policy_host": policy_host,
            }
        finally:
            for peer in peers.values():
                peer.stop()
            if policy_host is not None:
                policy_host.stop()


def sender(  # type: ignore[no-untyped-def]
    data_dir: Path,
    world: dict[str, Any],
    bouncer: RecordingBouncer,
    outbound: dict[str, Any] | None = None,
    **queue: Any,
):
    dns: KnotServer = world["dns"]
    return run_server(
        data_dir,
        bouncer=bouncer,
        trusted_networks=["127.0.0.0/8"],
        auth={"enabled": False, "resolver": dns.address, "dns_timeout": 5.0},
        outbound={
            "enabled": True,
            "port": world["port"],
            # Generous for a loaded machine; the slow peer waits a minute before each reply.
            "connect_timeout": 10.0,
            "command_timeout": 4.0,
            "data_timeout": 10.0,
            "ca_file": str(world["ca"]),
            **(outbound or {}),
        },
        queue={"retry_min": 0.3, "retry_max": 0.6, "scan_interval": 0.3, **queue},
    )


def success_action(server: RunningServer, kind: str = "mta") -> str:
    """What a delivery to this lanalyze is reported as: "delivered" where it offers DSN,
    "relayed" where it does not (RFC 3461 §4.1; DSN in our server comes with issue 13 too)."""
    host, port = server.server.addresses[kind][0]
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.ehlo()
        return "delivered" if client.has_extn("dsn") else "relayed"


def send(server: RunningServer, recipients: list[str], message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.port(), timeout=30) as client:
        client.sendmail("sender@example.test", recipients, message)


def queue_envelopes(server: RunningServer) -> list[Envelope]:
    layout: Layout = server.server.layout
    found = []
    for name in ("active", "deferred", "hold"):
        for path in layout.q(name).iterdir():
            found.append(read_envelope(path)[0])
    return found


MESSAGE = (
    b"From: sender@example.test\r\nTo: alice@far.test\r\nSubject: outbound\r\n"
    b"Message-ID: <1@example.test>\r\n\r\nHello.\r\n.leading dot line\r\n..two dots\r\nBye.\r\n"
)


def test_delivery_lands_intact_at_a_real_mta(world: dict[str, Any], tmp_path: Path) -> None:
    """MX (two recipients, one transaction), MX whose first host is down (the next is
    tried), and a domain without MX but with an A record (RFC 5321 §5.1)."""
    bouncer = RecordingBouncer()
    far: RunningServer = world["far"]
    recipients = ["alice@far.test", "bob@far.test", "carol@multi.test", "dave@amx.test"]
    with sender(tmp_path / "s", world, bouncer) as server:
        send(server, recipients, MESSAGE)
        for mailbox in recipients:
            (copy,) = far.wait_delivered(1, mailbox=mailbox, timeout=60)
            # Byte for byte after our Received: field (the Maildir stores LF line ends).
            assert copy.endswith(MESSAGE.replace(b"\r\n", b"\n")), copy
            assert b"by mx.example.test (lanalyze)" in copy
            assert b"Return-Path: <sender@example.test>" in copy
        wait_for(lambda: not queue_envelopes(server))
        wait_for(lambda: len(bouncer.reports) == 4)
        # Slow start: a destination starts at initial_per_destination (2) connections and
        # gets one more per transaction that delivered.
        outbound = server.server.queue.outbound  # type: ignore[union-attr]
        far_state = outbound.destinations[f"far.test:{world['port']}:mx"]
        assert far_state.limit == 3
        # The connection waits idle for a next job (IDLE_SECONDS), then closes.
        wait_for(lambda: far_state.active == 0)
    results = bouncer.by_recipient()
    action = success_action(far)
    assert {r: [x.action for x in v] for r, v in results.items()} == {
        r: [action] for r in recipients
    }
    assert results["alice@far.test"][0].remote_mta == "mx.far.test"
    assert results["alice@far.test"][0].diagnostic.startswith("smtp; 250")


def test_per_recipient_results(world: dict[str, Any], tmp_path: Path) -> None:
    """One message to every kind of failing destination: each recipient gets its own result,
    the delivered ones leave the queue file, the deferred ones stay with their last reply."""
    bouncer = RecordingBouncer()
    peers = world["peers"]
    recipients = [
        "ok@reject.test",
        "bad@reject.test",
        "t@temp.test",
        "d@drop.test",
        "x@down.test",
        "s@slow.test",
        "n@nullmx.test",
        "g@noaddr.test",
    ]
    before = len(peers["reject"].received)
    with sender(tmp_path / "s", world, bouncer) as server:
        send(server, recipients, MESSAGE)

        def settled() -> bool:
            envelopes = queue_envelopes(server)
            return len(envelopes) == 1 and envelopes[0].attempts >= 1

        wait_for(settled)
        (envelope,) = queue_envelopes(server)
        # ... and is halved, at least to 1, when none of its hosts can be reached.
        outbound = server.server.queue.outbound  # type: ignore[union-attr]
        assert outbound.destinations[f"down.test:{world['port']}:mx"].limit == 1
    received = peers["reject"].received[before:]
    assert [r.recipients for r in received] == [["ok@reject.test"]]  # by BDAT (CHUNKING)
    assert received[0].data.replace(b"\r\n", b"\n").endswith(MESSAGE.replace(b"\r\n", b"\n"))
    assert sorted(envelope.relay) == sorted(
        ["t@temp.test", "d@drop.test", "x@down.test", "s@slow.test", "g@noaddr.test"]
    )
    state = envelope.rcpt
    assert state["ok@reject.test"]["state"] == "delivered"
    assert state["bad@reject.test"]["state"] == "bounced"
    assert state["bad@reject.test"]["reply"].startswith("550 5.1.1")
    assert state["t@temp.test"]["state"] == "deferred"
    assert state["t@temp.test"]["reply"].startswith("451 4.3.0")
    assert state["t@temp.test"]["host"] == "mx.temp.test[127.0.0.3]"
    assert state["n@nullmx.test"]["state"] == "bounced"
    assert state["n@nullmx.test"]["status"] == "5.1.10"
    assert state["g@noaddr.test"]["status"] == "4.4.4"
    for recipient in ("d@drop.test", "x@down.test", "s@slow.test"):
        assert state[recipient]["state"] == "deferred", recipient
    assert peers["drop"].received == [] and peers["slow"].received == []
    actions = {r: [x.action for x in v] for r, v in bouncer.by_recipient().items()}
    assert actions["bad@reject.test"] == ["failed"]
    assert actions["n@nullmx.test"] == ["failed"]
    assert actions["ok@reject.test"] == ["relayed"]  # the peer offers no DSN
    assert "t@temp.test" not in actions


def test_starttls_and_8bit_downgrade(world: dict[str, Any], tmp_path: Path) -> None:
    bouncer = RecordingBouncer()
    peers = world["peers"]
    eight = b"From: sender@example.test\r\nSubject: cafe\r\n\r\nCaf\xc3\xa9 cr\xc3\xa8me.\r\n"
    with sender(tmp_path / "s", world, bouncer) as server:
        send(server, ["u@tls.test"], MESSAGE)
        send(server, ["p@plain.test"], eight)
        wait_for(lambda: peers["tls"].received and peers["plain"].received)
        wait_for(lambda: not queue_envelopes(server))
    (tls,) = peers["tls"].received
    assert tls.tls and tls.data.endswith(MESSAGE)
    (plain,) = peers["plain"].received
    assert plain.data.isascii()  # quoted-printable: the server has no 8BITMIME
    assert "BODY=8BITMIME" not in plain.mail_line
    parsed = email.message_from_bytes(plain.data, policy=email.policy.compat32)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_payload(decode=True) == b"Caf\xc3\xa9 cr\xc3\xa8me.\r\n"


def test_lifetime_delay_warning_then_bounce(world: dict[str, Any], tmp_path: Path) -> None:
    """A recipient that keeps failing: one delay notice, then a bounce when the lifetime is
    over, and the message leaves the queue (nothing retried for ever)."""
    bouncer = RecordingBouncer()
    with sender(tmp_path / "s", world, bouncer, max_lifetime=2.0, delay_warning=0.5) as server:
        send(server, ["t@temp.test"], MESSAGE)
        wait_for(lambda: any(r.action == "failed" for _, r in bouncer.reports))
        wait_for(lambda: not queue_envelopes(server))
    actions = [r.action for _, r in bouncer.reports]
    assert actions == ["delayed", "failed"]
    failed = bouncer.reports[-1][1]
    assert failed.status == "4.4.7" and "451 4.3.0" in failed.diagnostic


def test_relay_from_outside_stays_refused(world: dict[str, Any], tmp_path: Path) -> None:
    dns: KnotServer = world["dns"]
    with (
        run_server(
            tmp_path / "s",
            auth={"enabled": False, "resolver": dns.address},
            outbound={"enabled": True, "port": world["port"]},
        ) as server,
        smtplib.SMTP("127.0.0.1", server.port(), timeout=30) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.sendmail("a@remote.test", ["alice@far.test"], MESSAGE)
    assert refused.value.recipients["alice@far.test"][0] == 554


def test_relay_host_with_tls_and_auth(world: dict[str, Any], tmp_path: Path) -> None:
    """Everything through ``[host]:port`` (no MX lookup), verified TLS, AUTH PLAIN: the relay
    (a second lanalyze's submission port, which demands both) delivers to its mailbox."""
    bouncer = RecordingBouncer()
    relay: RunningServer = world["relay"]
    outbound = {
        "relay_host": f"[mx.relay.test]:{world['port']}",
        "relay_user": "smtpuser",
        "relay_password": PASSWORD,
    }
    with sender(tmp_path / "s", world, bouncer, outbound) as server:
        send(server, ["rcv@relay.test"], MESSAGE)
        (copy,) = relay.wait_delivered(1, mailbox="rcv@relay.test", timeout=60)
        wait_for(lambda: not queue_envelopes(server))
    assert copy.endswith(MESSAGE.replace(b"\r\n", b"\n"))
    assert b"with ESMTPSA" in copy  # TLS and AUTH (RFC 3848)
    assert [r.action for _, r in bouncer.reports] == [success_action(relay)]


def test_mta_sts_enforce_never_sends_in_clear(world: dict[str, Any], tmp_path: Path) -> None:
    """sts.test's policy is enforce; its MX hosts offer no STARTTLS (mx.plain.test) and a
    certificate for another name (mx.tls.test): deferred, and neither peer gets the mail."""
    if world["policy_host"] is None:
        pytest.skip("the policy host needs 127.0.0.10:443 (root, and free)")
    bouncer = RecordingBouncer()
    peers = world["peers"]
    before = (len(peers["plain"].received), len(peers["tls"].received))
    with sender(tmp_path / "s", world, bouncer) as server:
        send(server, ["x@sts.test"], MESSAGE)

        def deferred() -> bool:
            envelopes = queue_envelopes(server)
            return len(envelopes) == 1 and envelopes[0].attempts >= 1

        wait_for(deferred)
        (envelope,) = queue_envelopes(server)
    assert (len(peers["plain"].received), len(peers["tls"].received)) == before
    state = envelope.rcpt["x@sts.test"]
    assert state["state"] == "deferred"
    assert "STARTTLS" in state["reply"] or "TLS" in state["reply"]
    assert bouncer.reports == []


def test_local_failure_that_persists_is_bounced(tmp_path: Path) -> None:
    """A local delivery that keeps failing (bob's Maildir is blocked) follows the same
    lifetime: one delay notice, then a bounce, and the message leaves the queue."""
    data_dir = tmp_path / "s"
    (data_dir / "mail" / "maildirs").mkdir(parents=True)
    (data_dir / "mail" / "maildirs" / "bob@example.test").write_text("not a directory")
    bouncer = RecordingBouncer()
    with run_server(
        data_dir,
        bouncer=bouncer,
        queue={"retry_min": 0.2, "retry_max": 0.3, "max_lifetime": 1.5, "delay_warning": 0.4},
    ) as server:
        send(server, ["bob@example.test", "alice@example.test"], MESSAGE)
        server.wait_delivered(1)
        wait_for(lambda: any(r.action == "failed" for _, r in bouncer.reports))
        wait_for(lambda: not queue_envelopes(server))
    assert [(r.recipient, r.action) for _, r in bouncer.reports] == [
        ("bob@example.test", "delayed"),
        ("bob@example.test", "failed"),
    ]
    assert bouncer.reports[-1][1].status == "4.4.7"


def test_many_recipients_are_split_into_transactions(world: dict[str, Any], tmp_path: Path) -> None:
    """At most 50 recipients per transaction (Postfix's smtp_destination_recipient_limit):
    servers refuse more with 452, which would delay the rest by a retry."""
    bouncer = RecordingBouncer()
    peer = world["peers"]["reject"]
    before = len(peer.received)
    recipients = [f"r{n}@reject.test" for n in range(60)]
    with sender(tmp_path / "s", world, bouncer) as server:
        send(server, recipients, MESSAGE)
        wait_for(lambda: not queue_envelopes(server) and len(bouncer.reports) == 60)
    sizes = sorted(len(r.recipients) for r in peer.received[before:])
    assert sizes == [10, 50]


def test_local_transport_delivers_the_domain_here(tmp_path: Path) -> None:
    """`mail.outbound.transports = { "other.test" = "local" }`: the domain is delivered to
    its mailboxes here, as a domain of `mail.domains` (from anyone, unknown addresses
    refused), even with a relay host set, and never goes out."""
    with run_server(
        tmp_path / "s",
        mailboxes=["alice@example.test", "carol@other.test"],
        outbound={
            "transports": {"other.test": "local", "far.test": "[127.0.0.1]:9"},
            "relay_host": "[127.0.0.1]:9",
        },
    ) as server:
        with smtplib.SMTP("127.0.0.1", server.port(), timeout=30) as client:
            client.ehlo()
            client.mail("someone@outside.test")  # not a trusted network: no relay for it
            assert client.rcpt("carol@other.test")[0] == 250
            assert client.rcpt("nobody@other.test")[0] == 550
            assert client.rcpt("x@far.test")[0] == 554  # a host transport is still relay
            client.rset()
        with smtplib.SMTP("127.0.0.1", server.port(), timeout=30) as client:
            client.sendmail("someone@outside.test", ["carol@other.test"], MESSAGE)
        [data] = server.wait_delivered(1, "carol@other.test", timeout=30)
        assert data.endswith(b"Bye.\n")
        wait_for(lambda: not queue_envelopes(server))  # released after the Maildir rename
