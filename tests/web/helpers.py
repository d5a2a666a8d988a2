"""Shared bits of the web tests: a configured app, a logged-in client."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.testclient import TestClient

from lanalyze.web.app import build_app
from lanalyze.web.auth import hash_password
from lanalyze.web.config import WebConfig, WebUser

PASSWORD = "correct horse battery"
ALICE_HASH = hash_password(PASSWORD)
SECRET = b"0123456789abcdef0123456789abcdef"


def make_app(data_dir: Path, **overrides: Any) -> Starlette:
    settings: dict[str, Any] = {"users": [WebUser(name="alice", password_hash=ALICE_HASH)]}
    settings.update(overrides)
    return build_app(WebConfig(**settings), data_dir, secret=SECRET)


def login_token(client: TestClient) -> str:
    page = client.get("/login")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def log_in(client: TestClient, user: str = "alice", password: str = PASSWORD) -> Any:
    token = login_token(client)
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf": token, "next": "/"},
        follow_redirects=False,
    )


def csrf_of(client: TestClient, path: str = "/exporters") -> str:
    page = client.get(path)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)
