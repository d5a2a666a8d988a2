"""Queue administration (`lanalyze.mail.queueadmin`): one rule set for the CLI and the console.

Queue files are written in the server's own format into a real data directory; the CLI runs
through click's runner and the console through Starlette's TestClient, both over the same
files and index.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from lanalyze.cli import main
from lanalyze.mail.index import MessageIndex
from lanalyze.mail.queueadmin import QueueAdmin
from lanalyze.mail.queuefile import Envelope, Layout, footer
from tests.web.helpers import csrf_of, log_in, make_app


def put(layout: Layout, queue: str, queue_id: str, *, corrupt: bool = False) -> Path:
    """A queue file as cleanup writes it; ``corrupt``: its footer cut off (a disk error)."""
    message = f"From: a@remote.test\r\nSubject: {queue_id}\r\n\r\nbody\r\n".encode()
    envelope = Envelope(
        queue_id=queue_id,
        mail_from="a@remote.test",
        recipients=["bob@example.test"],
        local={"bob@example.test": ["bob@example.test"]},
        relay=[],
        received_at=time.time(),
        client_ip="192.0.2.1",
        helo="client.test",
        listener="mta",
        subject=queue_id,
        size=len(message),
    )
    data = message + footer(len(message), envelope.trailer())
    path = layout.q(queue) / queue_id
    path.write_bytes(data[:-5] if corrupt else data)
    with MessageIndex(layout.index) as index:
        index.record_accepted([envelope])
        status = {"active": "queued", "corrupt": "corrupt"}.get(queue, queue)
        index.set_status([(queue_id, status, 1, "", [])])
    return path


def status(layout: Layout, queue_id: str) -> tuple[str, str]:
    with MessageIndex(layout.index, readonly=True) as index:
        row = index.get(queue_id)
    assert row is not None
    return row["status"], row["last_error"]


@pytest.fixture
def layout(data_dir: Path) -> Layout:
    layout = Layout(data_dir)
    layout.create()
    return layout


def where(layout: Layout, queue_id: str) -> list[str]:
    return [
        q for q in ("active", "deferred", "hold", "corrupt") if (layout.q(q) / queue_id).exists()
    ]


def test_hold_release_requeue_delete_rules(layout: Layout) -> None:
    for queue, queue_id in [("active", "A1"), ("deferred", "D1"), ("hold", "H1"), ("hold", "H2")]:
        put(layout, queue, queue_id)
    admin = QueueAdmin(layout)

    report = admin.hold(["A1", "D1", "H1"])
    assert [(r.queue_id, r.outcome) for r in report.results] == [
        ("A1", "done"),
        ("D1", "done"),
        ("H1", "not_found"),  # already held: hold takes from active and deferred only
    ]
    assert report.results[2].detail == "in the hold queue"
    assert where(layout, "A1") == ["hold"] and where(layout, "D1") == ["hold"]
    assert status(layout, "A1") == ("hold", "held by operator")

    assert admin.release(["A1"]).done == ["A1"]
    assert where(layout, "A1") == ["active"] and status(layout, "A1")[0] == "queued"
    assert admin.release(["A1"]).results[0].outcome == "not_found"  # release: hold only

    assert admin.requeue(["D1", "H1"]).done == ["D1", "H1"]  # requeue: deferred or hold
    assert where(layout, "D1") == ["active"] and where(layout, "H1") == ["active"]

    report = admin.delete(["H2", "A1", "NOPE1"])
    assert report.done == ["H2", "A1"]
    assert [(r.queue_id, r.outcome, r.detail) for r in report.failed] == [
        ("NOPE1", "not_found", "not queued")
    ]
    assert where(layout, "H2") == [] and status(layout, "H2") == ("deleted", "deleted by operator")


@pytest.mark.parametrize("bad", ["../hold/H1", "H1/", "é1", "", "x" * 65, "H1.rw"])
def test_one_queue_id_rule(layout: Layout, bad: str) -> None:
    put(layout, "hold", "H1")
    (layout.q("hold") / "H1.rw").write_bytes(b"an operator's stray file")
    report = QueueAdmin(layout).delete([bad])
    assert [r.outcome for r in report.results] == ["invalid"]
    assert where(layout, "H1") == ["hold"]
    assert (layout.q("hold") / "H1.rw").exists()


def test_corrupt_file_is_moved_aside_never_deleted(layout: Layout) -> None:
    put(layout, "deferred", "BAD1", corrupt=True)
    put(layout, "hold", "BAD2", corrupt=True)
    admin = QueueAdmin(layout)

    report = admin.delete(["BAD1"])
    [result] = report.results
    assert result.outcome == "corrupt" and "moved to queue/corrupt/" in result.detail
    assert where(layout, "BAD1") == ["corrupt"]
    assert status(layout, "BAD1")[0] == "corrupt"

    [result] = admin.requeue(["BAD2"]).results  # not into active/ either
    assert result.outcome == "corrupt" and where(layout, "BAD2") == ["corrupt"]

    # Listed with the reason; deleted only when asked for explicitly.
    listed = {e.queue_id: e for e in admin.entries()}
    assert listed["BAD1"].queue == "corrupt" and listed["BAD1"].error
    [result] = admin.delete(["BAD1"]).results
    assert (result.outcome, result.detail) == ("not_found", "in the corrupt queue")
    assert admin.delete(["BAD1"], corrupt=True).done == ["BAD1"]
    assert where(layout, "BAD1") == []


def test_select_by_envelope_for_later_actions(layout: Layout) -> None:
    put(layout, "deferred", "D1")
    put(layout, "deferred", "D2", corrupt=True)
    put(layout, "hold", "H1")
    admin = QueueAdmin(layout)
    assert admin.select(["deferred"]) == ["D1"]  # unreadable files are never selected
    assert admin.select(["deferred", "hold"], lambda e: e.subject == "H1") == ["H1"]


def cli(data_dir: Path, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    config = tmp_path / "lanalyze.toml"
    config.write_text(f'[general]\ndata_dir = "{data_dir}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "mail", "queue", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_uses_the_same_rules(layout: Layout, data_dir: Path, tmp_path: Path) -> None:
    put(layout, "hold", "H1")
    put(layout, "deferred", "D1")
    put(layout, "deferred", "BAD1", corrupt=True)

    # A held message can be retried by id (the console always could).
    code, out, err = cli(data_dir, tmp_path, "retry", "H1")
    assert (code, out.strip(), err) == (0, "1 message(s) queued for retry", "")
    assert where(layout, "H1") == ["active"]

    # delete of a corrupt file moves it aside and says so (it used to be unlinked).
    code, out, err = cli(data_dir, tmp_path, "delete", "BAD1", "D1")
    assert code == 1
    assert "1 message(s) deleted" in out
    assert "BAD1: corrupt:" in err and "moved to queue/corrupt/" in err
    assert where(layout, "BAD1") == ["corrupt"] and where(layout, "D1") == []

    code, out, err = cli(data_dir, tmp_path, "hold", "H1")
    assert code == 0 and where(layout, "H1") == ["hold"]
    code, out, err = cli(data_dir, tmp_path, "release", "--all")
    assert code == 0 and "1 message(s) released" in out and where(layout, "H1") == ["active"]

    code, out, err = cli(data_dir, tmp_path, "retry", "é1")
    assert code == 1 and "é1: invalid" in err

    entries = json.loads(cli(data_dir, tmp_path, "--format", "json")[1])
    assert {e["queue_id"]: e["queue"] for e in entries} == {"H1": "active", "BAD1": "corrupt"}

    code, out, err = cli(data_dir, tmp_path, "delete", "--corrupt", "BAD1")
    assert code == 0 and where(layout, "BAD1") == []


def test_console_uses_the_same_rules(layout: Layout, data_dir: Path) -> None:
    put(layout, "deferred", "D1")
    put(layout, "deferred", "BAD1", corrupt=True)
    with TestClient(make_app(data_dir), follow_redirects=False) as client:
        log_in(client)
        headers = {"X-CSRF-Token": csrf_of(client, "/mail/queue")}
        held = client.post("/mail/queue/D1/hold", headers=headers)
        assert held.status_code == 303 and held.headers["location"].endswith("hold%3AD1%3Aok")
        assert where(layout, "D1") == ["hold"]
        page = client.get("/mail/queue")
        assert 'action="/mail/queue/D1/release"' in page.text
        assert client.post("/mail/queue/D1/release", headers=headers).status_code == 303
        assert where(layout, "D1") == ["active"]
        # The console used to move a corrupt deferred file into active/ on retry.
        retried = client.post("/mail/queue/BAD1/retry", headers=headers)
        assert retried.headers["location"].endswith("retry%3ABAD1%3Acorrupt")
        assert where(layout, "BAD1") == ["corrupt"]
        page = client.get("/mail/queue")
        assert "1 corrupt" in page.text and 'action="/mail/queue/BAD1/delete"' not in page.text
        refused = client.post("/mail/queue/BAD1/delete", headers=headers)
        assert refused.headers["location"].endswith("delete%3ABAD1%3Anot_found")
        assert where(layout, "BAD1") == ["corrupt"]
