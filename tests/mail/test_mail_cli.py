"""`lanalyze mail ls/show/queue/send/tls-selfsigned/hash-password` against a live server."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from lanalyze.cli import main
from tests.mail.conftest import run_server


def cli(config: Path, *args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config), "mail", *args], input=input)
    return result.exit_code, result.output


def write_config(tmp_path: Path, data_dir: Path) -> Path:
    config = tmp_path / "lanalyze.toml"
    config.write_text(f'[general]\ndata_dir = "{data_dir}"\nhostname = "mx.example.test"\n')
    return config


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met")


def test_send_ls_show_queue_retry_delete(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, data_dir)
    # bob's Maildir path is blocked by a plain file: his delivery fails and is deferred.
    (data_dir / "mail" / "maildirs").mkdir(parents=True)
    (data_dir / "mail" / "maildirs" / "bob@example.test").write_text("not a directory")
    with run_server(data_dir, trusted_networks=["127.0.0.0/8"]) as running:
        server = f"127.0.0.1:{running.port()}"
        code, out = cli(
            config,
            "send",
            "--server",
            server,
            "--from",
            "carol@remote.test",
            "--to",
            "alice@example.test",
            "--subject",
            "Quarterly report",
            "--header",
            "X-Test: 1",
        )
        assert code == 0, out
        assert "<- 220 mx.example.test ESMTP lanalyze" in out
        assert "-> mail from:<carol@remote.test>" in out.lower()
        assert "-> Subject: Quarterly report" in out
        assert "<- 250 2.0.0 Ok: queued as" in out
        code, out = cli(
            config,
            "send",
            "--server",
            server,
            "--from",
            "c@remote.test",
            "--to",
            "bob@example.test",
        )
        assert code == 0, out
        code, out = cli(
            config,
            "send",
            "--server",
            server,
            "--from",
            "c@remote.test",
            "--to",
            "someone@elsewhere.test",
        )
        assert code == 0, out  # trusted network: relay accepted, waits in hold
        running.wait_delivered(1)

        def statuses() -> dict[str, str]:
            code, out = cli(config, "ls", "--format", "json")
            assert code == 0, out
            return {row["recipients"][0]: row["status"] for row in json.loads(out)}

        wait_for(
            lambda: (
                statuses()
                == {
                    "alice@example.test": "delivered",
                    "bob@example.test": "deferred",
                    "someone@elsewhere.test": "hold",
                }
            )
        )
        code, out = cli(config, "ls")
        assert "Subject: Quarterly report" in out and "<carol@remote.test>" in out
        rows = json.loads(cli(config, "ls", "--format", "json")[1])
        alice = next(r for r in rows if r["recipients"] == ["alice@example.test"])
        code, out = cli(config, "show", alice["queue_id"])
        assert code == 0 and "Quarterly report" in out and "delivered" in out
        code, out = cli(config, "queue")
        assert code == 0
        assert "deferred" in out and "bob@example.test" in out
        assert "hold" in out and "someone@elsewhere.test" in out
        entries = json.loads(cli(config, "queue", "--format", "json")[1])
        bob = next(e for e in entries if e["queue"] == "deferred")
        assert bob["attempts"] >= 1 and "bob@example.test" in bob["last_error"]
        # Fix the mailbox and retry: the running server delivers it.
        (data_dir / "mail" / "maildirs" / "bob@example.test").unlink()
        code, out = cli(config, "queue", "retry", "--all")
        assert code == 0 and "queued for retry" in out
        running.wait_delivered(1, mailbox="bob@example.test")
        held = next(e for e in entries if e["queue"] == "hold")
        code, out = cli(config, "queue", "delete", held["queue_id"])
        assert code == 0 and "1 message(s) deleted" in out
        wait_for(lambda: statuses()["someone@elsewhere.test"] == "deleted")
        wait_for(lambda: "Mail queue is empty" in cli(config, "queue")[1])


def test_send_reports_refusal(tmp_path: Path, data_dir: Path) -> None:
    config = write_config(tmp_path, data_dir)
    with run_server(data_dir) as running:
        code, out = cli(
            config,
            "send",
            "--server",
            f"127.0.0.1:{running.port()}",
            "--from",
            "x@remote.test",
            "--to",
            "victim@elsewhere.test",
        )
    assert code == 1
    assert "<- 554 5.7.1 Relay access denied" in out


def test_tls_selfsigned_and_hash_password(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    code, out = cli(config, "tls-selfsigned", "--cert", str(cert), "--key", str(key))
    assert code == 0, out
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert key.stat().st_mode & 0o077 == 0
    code, out = cli(config, "hash-password", "--stdin", input="s3cret-pass\n")
    assert code == 0 and out.startswith("$argon2id$")
