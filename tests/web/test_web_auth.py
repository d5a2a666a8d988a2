"""Login, sessions, CSRF, rate limiting and security headers, without a browser."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from lanalyze.throttle import LoginLimiter
from lanalyze.web.auth import load_or_create_secret
from lanalyze.web.config import WebUser
from lanalyze.web.security import CSP
from tests.web.helpers import PASSWORD, csrf_of, log_in, login_token, make_app

TEMPLATES = Path(__file__).resolve().parents[2] / "src" / "lanalyze" / "web" / "templates"


@pytest.fixture
def client(data_dir: Path) -> TestClient:
    return TestClient(make_app(data_dir), follow_redirects=False)


def test_pages_redirect_to_login_and_api_says_401(client: TestClient) -> None:
    page = client.get("/flows/host/10.0.0.1?range=1h")
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fflows%2Fhost%2F10.0.0.1%3Frange%3D1h"
    api = client.get("/api/flows/top")
    assert api.status_code == 401
    assert api.json() == {"error": "login required"}


def test_login_sets_a_hardened_session_cookie(client: TestClient) -> None:
    response = log_in(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "lanalyze_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert client.get("/exporters").status_code == 200


def test_over_tls_cookies_are_secure_and_host_prefixed(data_dir: Path, tmp_path: Path) -> None:
    app = make_app(data_dir, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    client = TestClient(app, base_url="https://testserver", follow_redirects=False)
    page = client.get("/login")
    assert "__Host-lanalyze_login=" in page.headers["set-cookie"]
    assert "Secure" in page.headers["set-cookie"]
    response = log_in(client)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-lanalyze_session=")
    assert "Secure" in cookie and "HttpOnly" in cookie
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_wrong_password_and_unknown_user_are_refused_alike(client: TestClient) -> None:
    wrong = log_in(client, password="nope")
    unknown = log_in(client, user="mallory", password=PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong user name or password." in wrong.text
    assert "Wrong user name or password." in unknown.text
    assert client.get("/exporters").status_code == 303


def test_login_without_the_form_token_is_refused(client: TestClient) -> None:
    login_token(client)
    response = client.post(
        "/login", data={"username": "alice", "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 403


def test_login_redirects_only_to_local_paths(client: TestClient) -> None:
    token = login_token(client)
    response = client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "csrf": token, "next": "//evil.example/"},
    )
    assert response.headers["location"] == "/"


def test_state_changing_requests_need_the_csrf_token(client: TestClient) -> None:
    log_in(client)
    token = csrf_of(client)
    assert client.post("/logout").status_code == 403
    assert client.post("/logout", data={"csrf": "forged"}).status_code == 403
    assert client.post("/logout", headers={"X-CSRF-Token": "forged"}).status_code == 403
    cross = client.post("/logout", data={"csrf": token}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    ok = client.post("/logout", data={"csrf": token}, headers={"Origin": "http://testserver"})
    assert ok.status_code == 303
    assert ok.headers["location"] == "/login"


def test_oversized_form_is_refused_before_parsing(client: TestClient) -> None:
    log_in(client)
    response = client.post("/logout", data={"csrf": "x", "pad": "a" * 100_000})
    assert response.status_code == 413


def test_logins_are_rate_limited_per_address_and_user(data_dir: Path) -> None:
    client = TestClient(make_app(data_dir, login_attempts=3), follow_redirects=False)
    for _ in range(3):
        assert log_in(client, password="guess").status_code == 401
    limited = log_in(client)  # even the right password waits now
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    # Another user name from the same address is limited too (per-address key)...
    assert log_in(client, user="bob", password="x").status_code == 429
    # ...but guessing from one address does not lock alice out of another (issue 12.4: no
    # key is the user name alone).
    other = TestClient(client.app, follow_redirects=False, client=("192.0.2.7", 4000))
    assert log_in(other).status_code == 303


def test_limiter_window_slides() -> None:
    limiter = LoginLimiter(attempts=2, window=10)
    limiter.failed(["k"], now=0)
    limiter.failed(["k"], now=1)
    assert limiter.retry_after(["k"], now=2) == 9
    assert limiter.retry_after(["k"], now=10.5) == 0
    limiter.failed(["k"], now=10.5)
    assert limiter.retry_after(["k"], now=10.6) > 0


def test_limiter_memory_is_bounded() -> None:
    limiter = LoginLimiter(attempts=1, window=60, max_keys=100)
    for index in range(1000):
        limiter.failed([f"addr:{index}"], now=0)
    assert limiter.retry_after(["addr:999"], now=1) > 0
    assert limiter.retry_after(["addr:0"], now=1) == 0
    assert len(limiter._failures) == 100


def test_tampered_or_stale_sessions_are_refused(data_dir: Path) -> None:
    client = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(client)
    value = client.cookies["lanalyze_session"]
    assert client.get("/exporters").status_code == 200
    client.cookies.clear()
    tampered = value[:-2] + ("xx" if not value.endswith("xx") else "yy")
    client.cookies.set("lanalyze_session", tampered)
    assert client.get("/exporters").status_code == 303
    # A password change in the config ends existing sessions.
    changed = make_app(data_dir, users=[WebUser(name="alice", password_hash=_other_hash())])
    other = TestClient(changed, follow_redirects=False, cookies={"lanalyze_session": value})
    assert other.get("/exporters").status_code == 303


def _other_hash() -> str:
    from lanalyze.web.auth import hash_password

    return hash_password("another password")


def test_every_response_carries_a_strict_csp(client: TestClient) -> None:
    for path in ("/login", "/", "/static/console.css", "/nope"):
        response = client.get(path)
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP.split("style-src")[0]
    assert "default-src 'self'" in CSP


def test_templates_have_no_inline_script_or_handlers() -> None:
    import re

    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag or 'type="application/json"' in tag, (template.name, tag)
        assert not re.search(r"\son[a-z]+=", text), template.name
        assert "style=" not in text, template.name


def test_metrics_open_to_loopback_only(data_dir: Path) -> None:
    app = make_app(data_dir)
    local = TestClient(app, client=("127.0.0.1", 5000))
    assert local.get("/metrics").status_code == 200
    remote = TestClient(app, client=("192.0.2.1", 5000), follow_redirects=False)
    assert remote.get("/metrics").status_code == 401
    log_in(remote)
    assert remote.get("/metrics").status_code == 200
    closed = TestClient(make_app(data_dir, metrics_networks=[]), client=("127.0.0.1", 5000))
    assert closed.get("/metrics").status_code == 401


def test_session_secret_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "web" / "session.key"
    first = load_or_create_secret(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(path) == first
    assert len(first) >= 32
