"""API tokens: `lanalyze web token create|list|revoke`, sent as `Authorization: Bearer`.

The console runs on a real loopback port (tests/web/live.py) and the CLI is the real command,
so a token created or revoked by one process is seen by the running server without a restart.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from lanalyze.cli import main
from lanalyze.metrics import REGISTRY
from lanalyze.web.config import WebUser
from lanalyze.web.tokens import MAX_TOKEN_LENGTH, TokenStore, token_path
from tests.web.helpers import ALICE_HASH, log_in, make_app
from tests.web.live import live_console


@pytest.fixture
def config_file(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "lanalyze.toml"
    path.write_text(
        f'[general]\ndata_dir = "{data_dir}"\n'
        f'[[web.users]]\nname = "alice"\npassword_hash = "{ALICE_HASH}"\n'
    )
    return path


def _cli(config_file: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--config", str(config_file), "web", "token", *args])
    return result.exit_code, result.stdout, result.stderr


def _create(config_file: Path, user: str = "alice", *extra: str) -> str:
    code, out, err = _cli(config_file, "create", "--user", user, *extra)
    assert code == 0, out + err
    return out.strip()


def _bearer(token: str) -> list[tuple[str, bytes | str]]:
    return [("Authorization", f"Bearer {token}")]


def _counter(result: str) -> float:
    value = REGISTRY.get_sample_value("lanalyze_web_token_requests_total", {"result": result})
    return value or 0.0


def test_create_stores_only_a_hash_privately(config_file: Path, data_dir: Path) -> None:
    token = _create(config_file, "alice", "--name", "backup script")
    assert token.startswith("lzt_") and len(token) >= 50
    path = token_path(data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert token not in text and token.split("_", 2)[2] not in text
    (entry,) = json.loads(text)["tokens"]
    assert entry["user"] == "alice" and entry["name"] == "backup script"
    code, out, _ = _cli(config_file, "list")
    assert code == 0 and entry["id"] in out and "backup script" in out and token not in out
    code, out, _ = _cli(config_file, "list", "--format", "json")
    assert [row["id"] for row in json.loads(out)] == [entry["id"]]


def test_create_needs_a_configured_user(config_file: Path) -> None:
    code, out, err = _cli(config_file, "create", "--user", "mallory")
    assert code != 0
    assert "no user 'mallory'" in out + err


def test_token_acts_as_its_user_and_revocation_needs_no_restart(
    config_file: Path, data_dir: Path
) -> None:
    with live_console(data_dir) as live:
        # Created after the server started: seen at once.
        token = _create(config_file)
        ok_before, invalid_before = _counter("ok"), _counter("invalid")
        answer = live.get("/api/flows/status", headers=_bearer(token))
        assert answer.status == 200, answer.text
        assert live.get("/exporters", headers=_bearer(token)).status == 200
        assert _counter("ok") == ok_before + 2

        token_id = token[4:16]
        code, out, _ = _cli(config_file, "revoke", token_id)
        assert code == 0 and f"revoked {token_id}" in out
        refused = live.get("/api/flows/status", headers=_bearer(token))
        assert refused.status == 401
        assert json.loads(refused.body) == {"error": "invalid or revoked API token"}
        assert "invalid_token" in refused.headers["www-authenticate"]
        assert _counter("invalid") == invalid_before + 1
        code, _, err = _cli(config_file, "revoke", token_id)
        assert code != 0 and "no such token" in err


def test_api_without_credentials_says_how_and_openapi_stays_open(data_dir: Path) -> None:
    with live_console(data_dir) as live:
        answer = live.get("/api/flows/top")
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        document = live.get("/api/openapi.json")
        assert document.status == 200
        described = json.loads(document.body)
        assert "/api/flows/top" in described["paths"]
        assert described["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"
        assert {"apiToken": []} in described["security"]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # right id, wrong secret
        lambda t: t[:4] + "0" * 12 + t[16:],  # unknown id
        lambda t: t + "x" * MAX_TOKEN_LENGTH,  # too long to hash
        lambda t: "lzt_",
        lambda t: "é" + t,  # non-ASCII (a latin-1 decoded header)
    ],
)
def test_wrong_tokens_are_refused(data_dir: Path, mangle: object) -> None:
    token, _ = TokenStore(token_path(data_dir)).create("alice")
    client = TestClient(make_app(data_dir), follow_redirects=False)
    assert client.get("/api/flows/status", headers={"Authorization": f"Bearer {token}"}).is_success
    bad = mangle(token)  # type: ignore[operator]
    header = f"Bearer {bad}".encode()  # bytes: the UTF-8 of é arrives as two latin-1 chars
    answer = client.get("/api/flows/status", headers={"Authorization": header})
    assert answer.status_code == 401


def test_a_token_whose_user_left_the_config_is_refused(data_dir: Path) -> None:
    token, _ = TokenStore(token_path(data_dir)).create("bob")
    client = TestClient(make_app(data_dir), follow_redirects=False)
    answer = client.get("/api/flows/status", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    bob = WebUser(name="bob", password_hash=ALICE_HASH)
    with_bob = TestClient(make_app(data_dir, users=[bob]), follow_redirects=False)
    assert with_bob.get(
        "/api/flows/status", headers={"Authorization": f"Bearer {token}"}
    ).is_success


def test_a_bad_token_is_not_rescued_by_a_session_cookie(data_dir: Path) -> None:
    client = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(client)
    assert client.get("/api/flows/status").status_code == 200
    answer = client.get("/api/flows/status", headers={"Authorization": "Bearer lzt_nope"})
    assert answer.status_code == 401


def test_bearer_requests_need_no_csrf_and_logout_ends_no_session(data_dir: Path) -> None:
    token, _ = TokenStore(token_path(data_dir)).create("alice")
    browser = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(browser)
    script = TestClient(make_app(data_dir), follow_redirects=False)
    headers = {"Authorization": f"Bearer {token}"}
    # A queue action without a CSRF token: refused with a cookie session, done with a token.
    assert browser.post("/mail/queue/ABC123/hold").status_code == 403
    assert script.post("/mail/queue/ABC123/hold", headers=headers).status_code == 303
    # A token has no session to end: /logout must not end every cookie session instead.
    assert script.post("/logout", headers=headers).status_code == 303
    assert browser.get("/exporters").status_code == 200
    too_big = script.post("/mail/queue/ABC123/hold", headers=headers, content=b"x" * 70_000)
    assert too_big.status_code == 413


def test_an_unreadable_token_file_fails_closed(data_dir: Path) -> None:
    store = TokenStore(token_path(data_dir))
    token, _ = store.create("alice")
    assert store.authenticate(token) is not None
    token_path(data_dir).write_text("{not json")
    assert store.authenticate(token) is None
    with pytest.raises(ValueError, match="unreadable"):
        store.create("alice")
