"""Hostile input to the console over real HTTP on loopback (issue 12, web side).

Oversized bodies behind a CSRF header, non-ASCII tokens, paths the filter language cannot
say, concurrent password guessing, stolen session cookies after logout, forwarded-for chains.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lanalyze.metrics import REGISTRY
from lanalyze.web.auth import Revocations, Session, Users
from tests.web.helpers import PASSWORD
from tests.web.live import Live, Reply, live_console


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


def test_concurrent_guesses_cannot_pass_the_limit(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Instrumentation, not a mock: the real argon2 check runs, we only watch how many at once.
    active = peak = 0
    lock = threading.Lock()
    real_verify = Users.verify

    def watched(self: Users, name: str, password: str) -> Any:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            return real_verify(self, name, password)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(Users, "verify", watched)
    with live_console(data_dir, login_attempts=5, login_concurrency=2) as live:
        start = threading.Barrier(40)

        def guess(index: int) -> int:
            start.wait()
            return live.login(password=f"guess {index}", keep=False).status

        with ThreadPoolExecutor(max_workers=40) as pool:
            statuses = list(pool.map(guess, range(40)))
        assert statuses.count(401) == 5, statuses
        assert statuses.count(429) == 35, statuses
        assert peak <= 2
        # The right password from the same address waits too; from another address it works.
        assert live.login(password=PASSWORD, keep=False).status == 429
        assert live.login(password=PASSWORD, source="127.0.0.2").status == 303


def test_global_cap_spares_addresses_that_logged_in(data_dir: Path) -> None:
    before = REGISTRY.get_sample_value("lanalyze_web_logins_limited_total", {"limit": "global"})
    with live_console(data_dir, login_attempts=5, login_global_attempts=4) as live:
        assert live.login(password=PASSWORD, source="127.0.0.9", keep=False).status == 303
        for n in range(2, 6):  # a guesser spread over four addresses
            assert live.login(f"user{n}", "x", source=f"127.0.0.{n}", keep=False).status == 401
        limited = live.login("user6", "x", source="127.0.0.6", keep=False)
        assert limited.status == 429
        assert int(limited.headers["retry-after"]) > 0
        assert live.login(password=PASSWORD, source="127.0.0.7", keep=False).status == 429
        # The administrator's known address is not locked out by the flood.
        assert live.login(password=PASSWORD, source="127.0.0.9", keep=False).status == 303
        after = REGISTRY.get_sample_value("lanalyze_web_logins_limited_total", {"limit": "global"})
        assert (after or 0) - (before or 0) == 2
        assert "lanalyze_web_logins_limited_total" in live.get("/metrics").text


def _logout(live: Live) -> Reply:
    return live.post_form("/logout", {"csrf": live.csrf()})


def test_logout_ends_a_copied_cookie_in_every_process_and_after_restart(data_dir: Path) -> None:
    with live_console(data_dir) as first, live_console(data_dir) as second:
        assert first.login(password=PASSWORD).status == 303
        stolen = dict(first.cookies)
        assert second.get("/exporters", cookies=stolen).status == 200
        assert _logout(first).status == 303
        # The copy is refused by the process that logged out and by the other one.
        assert first.get("/exporters", cookies=stolen).status == 303
        assert second.get("/exporters", cookies=stolen).status == 303
        # Another login of the same user is untouched.
        assert second.login(password=PASSWORD).status == 303
        kept = dict(second.cookies)
        assert first.get("/exporters", cookies=kept).status == 200
    revoked = data_dir / "web" / "sessions-revoked.json"
    assert revoked.stat().st_mode & 0o777 == 0o600
    with live_console(data_dir) as restarted:
        assert restarted.get("/exporters", cookies=stolen).status == 303
        assert restarted.get("/exporters", cookies=kept).status == 200


def test_revocation_list_is_bounded_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "web" / "sessions-revoked.json"
    revocations = Revocations(path, lifetime=3600)
    revocations.MAX_ENTRIES = 3
    now = 1_000_000.0
    sessions = [Session("alice", "c", f"s{n}", now - 10) for n in range(5)]
    for session in sessions[:3]:
        revocations.revoke(session, now=now)
    assert [revocations.revoked(s) for s in sessions] == [True, True, True, False, False]
    revocations.revoke(sessions[3], now=now)  # one over: everything issued so far ends
    assert path.stat().st_size < 100
    assert all(Revocations(path, 3600).revoked(s) for s in sessions)
    later = Session("alice", "c", "s9", now + 10)
    assert not revocations.revoked(later)
    # Entries whose cookie has expired anyway are dropped.
    expired = Revocations(tmp_path / "other.json", lifetime=60)
    expired.revoke(Session("alice", "c", "old", now), now=now)
    expired.revoke(Session("alice", "c", "new", now + 100), now=now + 100)
    assert set(json.loads((tmp_path / "other.json").read_text())["sessions"]) == {"new"}
    # A file that does not parse is not trusted to be complete: the next write ends all.
    path.write_text("{not json")
    revocations.revoke(later, now=now + 20)
    assert Revocations(path, 3600).revoked(Session("alice", "c", "x", now + 15))


def test_forwarded_for_is_honoured_only_from_trusted_proxies(data_dir: Path) -> None:
    remote = [("X-Forwarded-For", "198.51.100.1, 192.0.2.5")]
    with live_console(data_dir, trusted_proxies=["127.0.0.2/32"]) as live:
        # Through the proxy, a remote client sees no counters without a login...
        assert live.get("/metrics", headers=remote, source="127.0.0.2").status == 401
        # ...while the header from any other peer is the client's own word: ignored.
        assert live.get("/metrics", headers=remote, source="127.0.0.1").status == 200
        assert live.get("/metrics", source="127.0.0.2").status == 200  # the proxy itself
        # Login limits key on the forwarded client: one guesser behind the proxy does not
        # lock out the other clients of the same proxy.
        for _ in range(5):
            assert live.login("bob", "x", headers=remote, source="127.0.0.2").status == 401
        assert live.login("bob", "x", headers=remote, source="127.0.0.2").status == 429
        other = [("X-Forwarded-For", "192.0.2.6")]
        assert live.login(password=PASSWORD, headers=other, source="127.0.0.2").status == 303
    # A chain of trusted proxies is walked past; a malformed entry stops at the last proxy.
    with live_console(data_dir, trusted_proxies=["127.0.0.2/32"]) as fresh:
        chained = [("X-Forwarded-For", "192.0.2.5, 127.0.0.2")]
        assert fresh.get("/metrics", headers=chained, source="127.0.0.2").status == 401
        garbage = [("X-Forwarded-For", "192.0.2.5, not-an-address")]
        assert fresh.get("/metrics", headers=garbage, source="127.0.0.2").status == 200
