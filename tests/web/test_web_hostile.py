"""Hostile input to the console over real HTTP on loopback (issue 12, web side).

Oversized bodies behind a CSRF header, non-ASCII tokens, paths the filter language cannot
say, concurrent password guessing, stolen session cookies after logout, forwarded-for chains.
"""

from __future__ import annotations

from pathlib import Path

from tests.web.helpers import PASSWORD
from tests.web.live import live_console


def test_zone_scoped_host_path_is_a_404_not_a_500(data_dir: Path) -> None:
    with live_console(data_dir) as live:
        assert live.login(password=PASSWORD).status == 303
        reply = live.get("/flows/host/fe80::1%25eth0")
        assert reply.status == 404, reply.text
        assert live.get("/flows/conversation/fe80::1%25eth0/10.0.0.1").status == 404
        assert live.get("/flows/host/fe80::1").status == 200


def test_non_ascii_csrf_header_is_refused_not_a_crash(data_dir: Path) -> None:
    with live_console(data_dir) as live:
        # Without a session: the login form's double-submit check.
        reply = live.request(
            "POST",
            "/login",
            headers=[("X-CSRF-Token", "\xe9t\xe9".encode("latin-1"))],
            cookies={"lanalyze_login": "t" * 32},
        )
        assert reply.status == 403, reply.text
        # With one: the session's token.
        assert live.login(password=PASSWORD).status == 303
        reply = live.request("POST", "/logout", headers=[("X-CSRF-Token", b"\xff\xfe")])
        assert reply.status == 403
        form = live.post_form("/logout", {"csrf": "caf\u00e9"})
        assert form.status == 403


def test_body_limit_holds_when_the_token_is_in_a_header(data_dir: Path) -> None:
    with live_console(data_dir) as live:
        token = "t" * 32
        reply = live.request(
            "POST",
            "/login",
            body=b"username=alice&password=x&pad=" + b"a" * 100_000,
            headers=[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-CSRF-Token", token),
            ],
            cookies={"lanalyze_login": token},
        )
        assert reply.status == 413, reply.text
        # The same request under the limit reaches the login handler.
        small = live.request(
            "POST",
            "/login",
            body=b"username=alice&password=x",
            headers=[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-CSRF-Token", token),
            ],
            cookies={"lanalyze_login": token},
        )
        assert small.status == 401
