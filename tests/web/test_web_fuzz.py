"""Hostile input to the console's parsers: message bytes, cookies, forms, query strings."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from lanalyze.web.mailexplain import Finding, MessageWarnings, explain, message_warnings
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


VERDICT_KEYS = ["spf", "dkim", "dmarc", "arc", "flags", "details", "header"]
DETAIL_KEYS = ["spf", "dkim", "dmarc", "arc", "mail_from", "client_ip"]
PART_KEYS = ["domain", "result", "reason", "sealers", "from_domain", "policy"]
WORDS = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy", ""]
# Any JSON value: what an older version (or a damaged row) may have stored in the index.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.sampled_from(WORDS)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(VERDICT_KEYS + DETAIL_KEYS + PART_KEYS) | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)
STORED_VERDICT = JSON | st.dictionaries(
    st.sampled_from(VERDICT_KEYS),
    st.sampled_from(WORDS)
    | st.dictionaries(
        st.sampled_from(DETAIL_KEYS),
        JSON | st.lists(st.dictionaries(st.sampled_from(PART_KEYS), JSON, max_size=4), max_size=3),
        max_size=6,
    )
    | JSON,
    max_size=7,
)
CHECKS = {"auth", "SPF", "DKIM", "DMARC", "ARC"}


@settings(max_examples=300, deadline=None)
@given(
    STORED_VERDICT,
    st.text(max_size=30),
    st.lists(st.text(max_size=30), max_size=3),
)
def test_explanations_take_any_stored_verdict(auth: object, sender: str, others: list[str]) -> None:
    # The stored verdict goes in exactly as the index returns it (any JSON): an older version
    # may have written another shape, and the page must still explain what it can.
    findings = explain(auth)
    assert isinstance(findings, list)
    assert findings
    for finding in findings:
        assert isinstance(finding, Finding)
        assert finding.check in CHECKS
        assert isinstance(finding.word, str)
        assert finding.word
        assert finding.tone in ("good", "bad", "note")
        assert isinstance(finding.text, str)
        assert finding.text
        # Nothing damaged ever reads as a good sign.
        assert finding.tone != "good" or finding.word == "pass"
    if isinstance(auth, dict) and auth:
        checks = [finding.check for finding in findings]
        assert checks[0] == "SPF"
        assert "DKIM" in checks
        assert "DMARC" in checks
    warned = message_warnings(auth, sender, others, others, others)
    assert isinstance(warned, MessageWarnings)
    assert all(isinstance(item, str) and item for item in warned.items)
    assert isinstance(warned.forged, bool)
    assert isinstance(warned.sender_mismatch, bool)
    assert isinstance(warned.recipient_mismatch, bool)
    if warned.forged:
        assert isinstance(auth, dict)


def test_a_stored_verdict_that_is_not_a_record_is_said_to_be_unreadable() -> None:
    for auth in (["pass"], "pass", 7, True):
        (finding,) = explain(auth)
        assert (finding.check, finding.tone) == ("auth", "note")
        assert "cannot be read" in finding.text
        assert message_warnings(auth, "a@b.example", [], [], []).items == []


def test_damaged_parts_of_a_verdict_are_read_as_absent() -> None:
    auth = {
        "spf": "fail",
        "dkim": "pass",
        "dmarc": "fail",
        "arc": "pass",
        "flags": "local_domain_claimed_from_outside",
        "details": {"dkim": 5, "arc": {"sealers": 3}, "spf": ["x"], "dmarc": None},
    }
    findings = explain(auth)
    assert [(f.check, f.word, f.tone) for f in findings] == [
        ("SPF", "fail", "bad"),
        ("DKIM", "none", "note"),
        ("DMARC", "fail", "bad"),
        ("ARC", "pass", "good"),
    ]
    assert "intermediaries" in findings[3].text
    warned = message_warnings(auth, "a@b.example", ["a@b.example"], [], [])
    assert warned.forged  # DMARC failed; the flags string is not a list of flags
    assert "DMARC failed" in warned.items[0]


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


def test_an_empty_stored_flag_makes_no_empty_warning() -> None:
    # Found by the fuzz test above: flags [""] in a stored verdict gave a warning line "".
    warned = message_warnings({"flags": [""]}, "a@example.org", [], [], [])
    assert all(item for item in warned.items)
