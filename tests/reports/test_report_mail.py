"""Scheduled reports end to end: sent by `lanalyze reports run` (through the mail queue and
through a relay host), received by a lanalyze mailbox (a real MailServer on loopback,
Maildir) and parsed with Python's `email`; missed runs sent once on start; the preview."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from lanalyze import metrics
from lanalyze.config import parse_config
from lanalyze.datadir import make_private_dirs
from lanalyze.flows.store.paths import flow_dir
from lanalyze.flows.store.synthetic import random_flows, write_flows
from lanalyze.instance import DataDirLock
from lanalyze.mail.tls import write_selfsigned
from lanalyze.mailer import Mailer
from lanalyze.reports.scheduler import ReportScheduler, load_state, save_state, state_path
from tests.conftest import lanalyze_cmd, modes
from tests.mail.conftest import PASSWORD, RunningServer, base_config, password_hash, run_server
from tests.reports.test_png import decode

DAY = datetime(2025, 11, 10, tzinfo=UTC)
AT = "2025-11-11T07:00:00Z"
SENDER = "alice@example.test"
SINCE, UNTIL = "2025-11-10T00:00:00Z", "2025-11-11T00:00:00Z"

REPORTS: list[dict[str, Any]] = [
    {
        "name": "daily",
        "kind": "top",
        "by": "srcip",
        "limit": 5,
        "recipients": ["alice@example.test"],
    },
    {
        "name": "traffic",
        "kind": "series",
        "by": "dstport",
        "limit": 3,
        "filter": "proto tcp",
        "recipients": ["alice@example.test"],
    },
    {"name": "links", "kind": "interfaces", "recipients": ["alice@example.test"]},
    {"name": "mailsum", "kind": "mail", "period": "today", "recipients": ["bob@example.test"]},
    {"name": "missed", "kind": "top", "by": "dstport", "recipients": ["bob@example.test"]},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reports") / "data"
    flows = flow_dir(root)
    make_private_dirs(flows)
    start = int(DAY.timestamp() * 1000)
    write_flows(
        flows, random_flows(3000, start + 3_600_000, start + 20 * 3_600_000), segment_ms=3_600_000
    )
    return root


@pytest.fixture(scope="module")
def server(data: Path) -> Iterator[RunningServer]:
    # A submission listener with STARTTLS and AUTH: the relay host of test_relay_host.
    cert, key = data.parent / "cert.pem", data.parent / "key.pem"
    write_selfsigned(cert, key, "localhost", days=2)
    with run_server(
        data,
        tls_cert=str(cert),
        tls_key=str(key),
        submission_listen=["127.0.0.1:0"],
        users=[{"name": "alice", "password_hash": password_hash(), "addresses": [SENDER]}],
    ) as running:
        yield running


def write_config(data: Path, name: str, **extra: Any) -> Path:
    mail = base_config()
    settings: dict[str, Any] = {
        "general": {"data_dir": str(data), "hostname": "mx.example.test"},
        "mail": mail,
        "reports": REPORTS,
        **extra,
    }
    path = data.parent / name
    path.write_text(tomli_w.dumps(settings))
    return path


def lanalyze(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lanalyze_cmd(), "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def check_mime(message: EmailMessage) -> tuple[str, dict[str, bytes]]:
    """Valid structure: the HTML, every cid: it references present as an inline PNG; returns
    the HTML and the CSV attachments by file name."""
    assert message.get_content_type() == "multipart/mixed"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.defects == []
    body = message.get_body(("html",))
    assert body is not None
    html = body.get_content()
    assert "http://" not in html and "https://" not in html  # no remote content
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    images = {
        str(p["Content-ID"]).strip("<>"): p
        for p in related.iter_parts()
        if p.get_content_type() == "image/png"
    }
    cids = re.findall(r'src="cid:([^"]+)"', html)
    assert cids and set(cids) == set(images)
    for part in images.values():
        assert part.get_content_disposition() == "inline"
        assert decode(part.get_content()).shape == (240, 640, 3)
    plain = message.get_body(("plain",))
    assert plain is not None and plain.get_content().strip()
    attachments = {
        str(p.get_filename()): p.get_payload(decode=True)
        for p in message.iter_attachments()
        if p.get_content_type() == "text/csv"
    }
    return html, attachments


def test_reports_mailed_through_the_queue(server: RunningServer, data: Path) -> None:
    config = write_config(data, "queue.toml")
    for name in ("daily", "traffic"):
        result = lanalyze(config, "reports", "run", name, "--at", AT)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("queued as ")
        assert "delivered when one starts" in result.stderr  # no serve holds the data dir
    # As beside a running `lanalyze serve` (it holds the data directory's lock): queued for it.
    lock = DataDirLock(data)
    lock.acquire()
    try:
        result = lanalyze(config, "reports", "run", "links", "--at", AT)
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("queued as ") and result.stderr == ""
    messages = {str(m["Subject"]): m for m in map(parse, server.wait_delivered(3))}
    assert set(messages) == {
        f"lanalyze report {name}: 2025-11-10" for name in ("daily", "traffic", "links")
    }
    expected = {
        "daily-top.csv": ["flows", "top", "--by", "srcip", "-n", "5"],
        "traffic-series.csv": [
            "flows",
            "series",
            "--by",
            "dstport",
            "-n",
            "3",
            "--filter",
            "proto tcp",
        ],
        "links-interfaces.csv": ["flows", "interfaces"],
    }
    for name, message in zip(("daily", "traffic", "links"), messages.values(), strict=True):
        assert message["From"] == "lanalyze@mx.example.test"
        html, attachments = check_mime(message)
        (filename,) = attachments
        assert filename.startswith(name)
        command = expected[filename]
        cli = lanalyze(
            config, *command, "--since", SINCE, "--until", UNTIL, "--format", "csv", "--no-server"
        )
        assert cli.returncode == 0, cli.stderr
        csv = attachments[filename]
        assert isinstance(csv, bytes)
        assert csv == cli.stdout.encode()
        assert len(cli.stdout.splitlines()) > 3
        first = cli.stdout.splitlines()[1].split(",")[0]
        assert first in html


def test_relay_host_with_starttls_and_auth(server: RunningServer, data: Path) -> None:
    # Mail disabled here: the report goes to the relay host, the lanalyze server's submission
    # listener (STARTTLS with a certificate verified against ca_file, then AUTH).
    relay = f"localhost:{server.port('submission')}"
    config = write_config(
        data,
        "relay.toml",
        mailer={
            "relay_host": relay,
            "relay_tls": "starttls",
            "ca_file": str(data.parent / "cert.pem"),
            "relay_user": "alice",
            "relay_password": PASSWORD,
            "sender": SENDER,
        },
    )
    text = config.read_text().replace("[mail]\n", "[mail]\nenabled = false\n", 1)
    config.write_text(text)
    before = len(server.messages("bob@example.test"))
    result = lanalyze(config, "reports", "run", "daily", "--at", AT, "--to", "bob@example.test")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sent through {relay}"
    assert PASSWORD not in result.stdout + result.stderr
    message = parse(server.wait_delivered(before + 1, "bob@example.test")[-1])
    assert message["From"] == SENDER
    assert message["To"] == "bob@example.test"
    check_mime(message)


def test_preview(server: RunningServer, data: Path) -> None:
    config = write_config(data, "preview.toml")
    result = lanalyze(config, "reports", "preview", "daily", "--at", AT)
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    assert "10.0.0." in page  # the top sources
    mail = lanalyze(config, "reports", "preview", "mailsum")
    assert mail.returncode == 0, mail.stderr
    assert "Messages per hour" in mail.stdout and "Rejections per reason" in mail.stdout
    missing = lanalyze(config, "reports", "preview", "nosuch")
    assert missing.returncode == 2 and "daily" in missing.stderr


def test_ls(data: Path) -> None:
    config = write_config(data, "ls.toml")
    result = lanalyze(config, "reports", "ls")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == ["name", "kind", "period", "schedule", "next", "last"]
    assert [line.split()[0] for line in lines[1:]] == [r["name"] for r in REPORTS]


def sent(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lanalyze_reports_total", {"report": name, "outcome": "sent"}
    )
    return value or 0.0


def test_missed_run_sent_once_on_start(server: RunningServer, data: Path) -> None:
    config = parse_config(write_config(data, "missed.toml").read_text())
    only = config.model_copy(update={"reports": [r for r in config.reports if r.name == "missed"]})
    mailer = Mailer(only, lambda: server.server.pickup)

    def start_and_stop() -> None:
        async def go() -> None:
            scheduler = ReportScheduler(only, mailer)
            await scheduler.start()
            await scheduler.caught_up.wait()
            await scheduler.stop()

        asyncio.run(go())

    state_path(data).unlink(missing_ok=True)
    # First start: nothing is owed yet; the start time is remembered.
    start_and_stop()
    assert sent("missed") == 0
    assert "missed" in load_state(data)
    # Down for three days: one mail (not three) on start, for the latest missed run.
    now = datetime.now(UTC)
    save_state(data, {"missed": now - timedelta(days=3)})
    before = len(server.messages("bob@example.test"))
    start_and_stop()
    assert sent("missed") == 1
    latest = load_state(data)["missed"]
    assert (latest.hour, latest.minute) == (7, 0) and now - timedelta(days=1) < latest <= now
    assert modes(data / "reports") == {".": 0o700, "state.json": 0o600}
    # Started again: the run was recorded, nothing more is sent.
    start_and_stop()
    assert sent("missed") == 1
    message = parse(server.wait_delivered(before + 1, "bob@example.test")[-1])
    assert str(message["Subject"]).startswith("lanalyze report missed: ")
    check_mime(message)
    assert b'lanalyze_reports_total{outcome="sent",report="missed"} 1.0' in metrics.render()


def test_runs_when_due(server: RunningServer, data: Path) -> None:
    """Two days of a daily schedule on a clock the test moves (the scheduler's sleeps advance
    it): a run at each 07:00, each once, each for the day before."""
    config = parse_config(write_config(data, "due.toml").read_text())
    report = next(r for r in config.reports if r.name == "missed")
    due = report.model_copy(update={"name": "due"})
    only = config.model_copy(update={"reports": [due]})
    start = datetime(2026, 1, 1, 6, 59, 30, tzinfo=UTC)
    clock = [start]
    done = asyncio.Event()

    async def sleep(seconds: float) -> None:
        clock[0] += timedelta(seconds=seconds)
        if clock[0] > datetime(2026, 1, 2, 7, 5, tzinfo=UTC):
            done.set()
        await asyncio.sleep(0)

    save_state(data, {"due": start})

    async def go() -> None:
        scheduler = ReportScheduler(
            only, Mailer(only, lambda: server.server.pickup), clock=lambda: clock[0], sleep=sleep
        )
        await scheduler.start()
        await done.wait()
        await scheduler.stop()

    asyncio.run(go())
    assert sent("due") == 2
    assert load_state(data)["due"] == datetime(2026, 1, 2, 7, 0, tzinfo=UTC)

    # Only this report's mails: the module's server is shared, and another test's mail to bob
    # may still be on its way (counting "messages before" raced with it).
    def due_subjects() -> list[str]:
        subjects = (str(parse(raw)["Subject"]) for raw in server.messages("bob@example.test"))
        return sorted(s for s in subjects if s.startswith("lanalyze report due:"))

    deadline = time.monotonic() + 10
    while len(due_subjects()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert due_subjects() == [
        "lanalyze report due: 2025-12-31",
        "lanalyze report due: 2026-01-01",
    ]


def test_a_failed_run_is_counted_and_reported(server: RunningServer, data: Path) -> None:
    config = write_config(data, "bad.toml")
    text = config.read_text().replace('filter = "proto tcp"', 'filter = "proto nosuch"')
    config.write_text(text)
    result = lanalyze(config, "reports", "run", "traffic", "--at", AT)
    assert result.returncode == 1
    assert "lanalyze reports run traffic:" in result.stderr and "nosuch" in result.stderr
    # In the scheduler: counted, and the next run comes as scheduled (state advanced).
    bad = parse_config(text)
    only = bad.model_copy(update={"reports": [r for r in bad.reports if r.name == "traffic"]})
    moment = datetime(2026, 2, 1, 7, 0, tzinfo=UTC)
    save_state(data, {"traffic": moment - timedelta(days=1)})

    async def go() -> None:
        scheduler = ReportScheduler(
            only, Mailer(only, lambda: server.server.pickup), clock=lambda: moment
        )
        await scheduler.start()
        await scheduler.caught_up.wait()
        await scheduler.stop()

    asyncio.run(go())
    failed = metrics.REGISTRY.get_sample_value(
        "lanalyze_reports_total", {"report": "traffic", "outcome": "failed"}
    )
    assert failed == 1
    assert load_state(data)["traffic"] == moment
