"""A real console on a loopback port (uvicorn in a thread of its own) and a raw HTTP client.

The hostile-input tests send what a browser never would (non-ASCII header bytes, dozens of
concurrent logins, forwarded-for chains) over real HTTP, so uvicorn's parsing and our
middleware see exactly what an attacker's socket would give them.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from lanalyze.web.app import WebServer
from lanalyze.web.config import WebConfig, WebUser
from tests.web.helpers import ALICE_HASH


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    cookies: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Live:
    port: int
    server: WebServer
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: list[tuple[str, bytes | str]] | None = None,
        cookies: dict[str, str] | None = None,
        keep_cookies: bool = True,
        source: str = "127.0.0.1",
    ) -> Reply:
        # All of 127/8 is local on Linux: another source address is another client.
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=60, source_address=(source, 0)
        )
        try:
            conn.putrequest(method, path)
            jar = {**self.cookies, **(cookies or {})}
            if jar:
                conn.putheader("Cookie", "; ".join(f"{k}={v}" for k, v in jar.items()))
            for name, value in headers or []:
                conn.putheader(name, value)
            if body or method not in ("GET", "HEAD"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            data = response.read()
            got: dict[str, str] = {}
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    cookie_name, _, rest = value.partition("=")
                    got[cookie_name] = rest.split(";", 1)[0]
            if keep_cookies:
                for name, value in got.items():
                    if value in ("", '""'):
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = value
            headers_out = {k.lower(): v for k, v in response.getheaders()}
            return Reply(response.status, headers_out, got, data)
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post_form(self, path: str, fields: dict[str, str], **kwargs: Any) -> Reply:
        headers = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            *kwargs.pop("headers", []),
        ]
        return self.request(
            "POST", path, body=urlencode(fields).encode(), headers=headers, **kwargs
        )

    def login(
        self,
        user: str = "alice",
        password: str = "",
        *,
        headers: Any = None,
        keep: bool = True,
        source: str = "127.0.0.1",
    ) -> Reply:
        """One login attempt with its own double-submit token (no GET needed: any value works)."""
        token = "t" * 32
        return self.post_form(
            "/login",
            {"username": user, "password": password, "csrf": token, "next": "/"},
            cookies={"lanalyze_login": token},
            headers=headers or [],
            keep_cookies=keep,
            source=source,
        )

    def csrf(self, path: str = "/exporters") -> str:
        page = self.get(path)
        match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert match, page.text[:300]
        return match.group(1)


@contextmanager
def live_console(data_dir: Path, **overrides: Any) -> Iterator[Live]:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "users": [WebUser(name="alice", password_hash=ALICE_HASH)],
        "warm_ranges": [],
    }
    settings.update(overrides)
    server = WebServer(WebConfig(**settings), data_dir)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # reported to the test thread below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="live-console", daemon=True)
    thread.start()
    started.wait()
    if failure:
        raise failure[0]
    try:
        yield Live(server.address[1], server)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
