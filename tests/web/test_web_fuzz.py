"""Hostile input to the console's parsers: message bytes, cookies, forms, query strings."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from lanalyze.web.mailexplain import explain, message_warnings
from lanalyze.web.mailstore import parse_message
from tests.web.helpers import make_app

HEADERISH = st.lists(
    st.sampled_from(
        [
            b"From: ",
            b"To: ",
            b"Subject: =?utf-8?b?",
            b"Content-Type: multipart/mixed; boundary=",
            b"Content-Transfer-Encoding: base64",
            b"Content-Disposition: attachment; filename*=",
            b"\r\n",
            b"\r\n\r\n",
            b"--",
            b"<",
            b">",
            b"\x00",
            b"\xff",
            b"=?",
            b"?=",
            b"text/html",
            b'"',
        ]
    )
    | st.binary(max_size=40),
    max_size=40,
).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(HEADERISH)
def test_any_message_bytes_parse_without_error(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert isinstance(parsed.headers, list)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["spf", "dkim", "dmarc", "arc", "flags", "details", "header"]),
        st.none() | st.text(max_size=10) | st.lists(st.text(max_size=10), max_size=3),
        max_size=7,
    ),
    st.text(max_size=30),
    st.lists(st.text(max_size=30), max_size=3),
)
def test_explanations_take_any_stored_verdict(auth: dict, sender: str, others: list[str]) -> None:  # type: ignore[type-arg]
    if isinstance(auth.get("details"), (str, list)):
        auth["details"] = {}
    if isinstance(auth.get("flags"), str):
        auth["flags"] = [auth["flags"]]
    explain(auth)
    message_warnings(auth, sender, others, others, others)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cookie=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
    body=st.binary(max_size=200),
    query=st.text(max_size=60),
)
def test_guard_never_fails_on_hostile_requests(
    tmp_path: Path, cookie: str, body: bytes, query: str
) -> None:
    client = _client(tmp_path)
    headers = {"cookie": cookie}
    page = client.get("/", params={"filter": query, "range": query}, headers=headers)
    assert page.status_code in (303, 400)
    post = client.post(
        "/logout",
        content=body,
        headers={**headers, "content-type": "application/x-www-form-urlencoded"},
    )
    assert post.status_code in (303, 403, 413)


_CLIENTS: dict[Path, TestClient] = {}


def _client(tmp_path: Path) -> TestClient:
    if tmp_path not in _CLIENTS:
        _CLIENTS[tmp_path] = TestClient(make_app(tmp_path), follow_redirects=False)
    return _CLIENTS[tmp_path]
