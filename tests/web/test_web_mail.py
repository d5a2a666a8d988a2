"""Mail pages over test mail in the server's own index and queue format."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from lanalyze.web.mailexplain import explain, message_warnings
from lanalyze.web.security import MESSAGE_CSP
from tests.web import sample_mail
from tests.web.helpers import csrf_of, log_in, make_app


@pytest.fixture
def client(data_dir: Path) -> TestClient:
    sample_mail.seed(data_dir)
    client = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(client)
    client.data_dir = data_dir  # type: ignore[attr-defined]
    return client


def test_list_and_search(client: TestClient) -> None:
    page = client.get("/mail")
    for subject in (sample_mail.FORGED_SUBJECT, sample_mail.GENUINE_SUBJECT):
        assert subject.replace("'", "&#39;") in page.text
    forged = client.get("/mail?verdict=forged")
    assert sample_mail.FORGED_ID in forged.text and sample_mail.GENUINE_ID not in forged.text
    by_sender = client.get("/mail?sender=carol")
    assert sample_mail.DEFERRED_ID in by_sender.text and sample_mail.FORGED_ID not in by_sender.text
    by_subject = client.get("/mail", params={"subject": "minutes"})
    assert (
        sample_mail.GENUINE_ID in by_subject.text and sample_mail.DEFERRED_ID not in by_subject.text
    )
    # LIKE wildcards typed by the user are literal characters.
    assert "No message matches." in client.get("/mail?subject=%25").text
    assert 'id="mailcounts-data"' in page.text


def test_forged_message_is_marked(client: TestClient) -> None:
    page = client.get(f"/mail/message/{sample_mail.FORGED_ID}")
    assert page.status_code == 200
    assert "Warning: this message is probably forged." in page.text
    assert 'class="mono mismatch"' in page.text  # envelope sender marked
    assert "The From: line is probably forged" in page.text
    assert "invoice.pdf" in page.text
    assert page.headers["content-security-policy"] == MESSAGE_CSP
    frame = re.search(r'<iframe class="mailhtml" sandbox=""[^>]*srcdoc="([^"]*)"', page.text)
    assert frame, "HTML part must be in a sandboxed srcdoc iframe"
    srcdoc = frame.group(1)
    assert "&lt;script&gt;" in srcdoc and "<script" not in srcdoc
    assert "default-src &#39;none&#39;" in srcdoc


def test_genuine_message_has_no_warning(client: TestClient) -> None:
    page = client.get(f"/mail/message/{sample_mail.GENUINE_ID}")
    assert page.status_code == 200
    assert 'role="alert"' not in page.text
    assert "so the From: line is genuine" in page.text


def test_raw_source_download(client: TestClient) -> None:
    raw = client.get(f"/mail/message/{sample_mail.FORGED_ID}/raw")
    assert raw.status_code == 200
    assert raw.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in raw.headers["content-security-policy"]
    assert b"Subject: Your account is suspended" in raw.content
    assert client.get("/mail/message/../../etc/passwd").status_code == 404
    assert client.get("/mail/message/NOPE").status_code == 404


def test_queue_retry_and_delete_need_csrf(client: TestClient) -> None:
    queue = client.get("/mail/queue")
    assert sample_mail.DEFERRED_ID in queue.text and "deferred" in queue.text
    path = f"/mail/queue/{sample_mail.DEFERRED_ID}/retry"
    assert client.post(path).status_code == 403
    token = csrf_of(client, "/mail/queue")
    done = client.post(path, data={"csrf": token})
    assert done.status_code == 303
    data_dir: Path = client.data_dir  # type: ignore[attr-defined]
    assert (data_dir / "mail" / "queue" / "active" / sample_mail.DEFERRED_ID).exists()
    deleted = client.post(
        f"/mail/queue/{sample_mail.DEFERRED_ID}/delete", headers={"X-CSRF-Token": token}
    )
    assert deleted.status_code == 303 and deleted.headers["location"].endswith("%3Aok")
    assert not (data_dir / "mail" / "queue" / "active" / sample_mail.DEFERRED_ID).exists()
    listed = client.get("/mail?sender=carol").text
    assert "deleted" in listed


def test_rejections_page_search_and_counts(client: TestClient) -> None:
    page = client.get("/mail/rejected")
    assert page.status_code == 200
    assert sample_mail.REJECTED_RECIPIENT in page.text and "victim@far.example" in page.text
    assert "Unknown user" in page.text and "Policy reject (DMARC)" in page.text
    clients = re.search(r'<table class="data" id="clients".*?</table>', page.text, re.S)
    assert clients and clients.group(0).index(sample_mail.REJECTED_CLIENT) < clients.group(0).index(
        "203.0.113.66"
    )  # two rejections before one
    assert 'id="reasons"' in page.text and "reason=relay_denied" in page.text
    # Auto-refresh, as on the flow pages: the content region says how often; paging keeps it.
    assert 'id="content" data-refresh=""' in page.text
    refreshing = client.get("/mail/rejected", params={"refresh": "30"}).text
    assert 'data-refresh="30"' in refreshing
    assert 'data-refresh="30"' in client.get("/mail?refresh=30").text
    assert 'data-refresh=""' in client.get("/mail?refresh=1").text  # not a choice: off
    assert 'href="/mail/rejected"' in client.get("/mail").text  # linked from the mail pages
    by_recipient = client.get("/mail/rejected", params={"recipient": "nobody"}).text
    assert "victim@far.example" not in by_recipient and "1 rejection " in by_recipient
    by_client = client.get("/mail/rejected", params={"client": "spam.example"}).text
    assert "2 rejections" in by_client and "bulk.example" not in by_client
    by_reason = client.get("/mail/rejected", params={"reason": "relay_denied"}).text
    assert "1 rejection " in by_reason and "victim@far.example" in by_reason
    assert "No rejection matches." in client.get("/mail/rejected?sender=%25").text
    # The counts chart: 3 accepted, 3 rejected, 1 forged in the last hour.
    data = re.search(
        r'<script type="application/json" id="mailcounts-data">(.*?)</script>',
        client.get("/mail?range=1h").text,
        re.S,
    )
    assert data
    series = {
        s["name"]: sum(s["values"]) for s in json.loads(html.unescape(data.group(1)))["series"]
    }
    assert series == {"accepted": 3, "rejected": 3, "forged": 1}


def test_custom_time_range(client: TestClient) -> None:
    from datetime import UTC, datetime

    def utc(seconds_ago: float) -> str:
        return datetime.fromtimestamp(time.time() - seconds_ago, UTC).strftime("%Y-%m-%dT%H:%M")

    # The seeded messages arrived 10, 20 and 30 minutes ago; rejections 5, 3 and 2 ago.
    window = {"range": "custom", "from": utc(25 * 60), "to": utc(15 * 60)}
    page = client.get("/mail", params=window).text
    assert "1 message " in page and sample_mail.FORGED_ID in page and " UTC</span>" in page
    rejected = client.get("/mail/rejected", params={**window, "to": utc(4 * 60)}).text
    assert "1 rejection " in rejected and sample_mail.REJECTED_RECIPIENT in rejected
    backwards = client.get("/mail", params={"range": "custom", "from": utc(0), "to": utc(3600)})
    assert "needs a start before its end" in backwards.text


def test_json_api_shares_the_index_read_api(client: TestClient) -> None:
    messages = client.get("/api/mail/messages", params={"verdict": "forged"}).json()
    assert messages["total"] == 1 and messages["rows"][0]["queue_id"] == sample_mail.FORGED_ID
    rejections = client.get("/api/mail/rejections", params={"client": "198.51.100"}).json()
    assert rejections["total"] == 2 and rejections["rows"][0]["reason"] == "relay_denied"
    counts = client.get("/api/mail/counts", params={"since": "-1h", "bucket": "3600"}).json()
    assert {s["name"]: sum(s["values"]) for s in counts["series"]} == {
        "accepted": 3,
        "rejected": 3,
        "forged": 1,
    }
    assert client.get("/api/mail/messages?verdict=x").status_code == 400
    assert client.get("/api/mail/rejections?since=yesterday").status_code == 400
    assert client.get("/api/mail/counts?since=-30d&bucket=60").status_code == 400
    assert "/api/mail/rejections" in client.get("/api/openapi.json").json()["paths"]
    anonymous = TestClient(make_app(client.data_dir))  # type: ignore[attr-defined]
    assert anonymous.get("/api/mail/messages").status_code == 401


def test_rejections_paging(data_dir: Path) -> None:
    from lanalyze.mail.index import MessageIndex
    from lanalyze.mail.queuefile import Layout

    layout = Layout(data_dir)
    layout.create()
    now = time.time()
    with MessageIndex(layout.index) as index:
        index.record_rejections(
            [
                (
                    now - n,
                    "192.0.2.9",
                    "mta",
                    "h",
                    f"s{n}@x.example",
                    "r@y",
                    None,
                    550,
                    "unknown_user",
                    "5.1.1 Recipient address rejected: User unknown",
                )
                for n in range(120)
            ]
        )
    client = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(client)
    first = client.get("/mail/rejected").text
    assert "Page 1 of 3" in first and "s0@x.example" in first and "s50@x.example" not in first
    last = client.get("/mail/rejected?page=3").text
    assert "s119@x.example" in last and 'rel="prev"' in last


def test_explanations_in_plain_words() -> None:
    assert explain(None)[0].tone == "note"
    words = {f.check: f for f in explain({"spf": "fail", "dkim": "none", "dmarc": "none"})}
    assert words["SPF"].tone == "bad" and "NOT allowed" in words["SPF"].text
    assert words["DMARC"].tone == "note"
    warned = message_warnings(
        {"dmarc": "pass", "flags": []},
        "bounce@lists.example",
        ["alice@example.org"],
        ["bob@test.example"],
        ["team@test.example"],
    )
    assert warned.sender_mismatch and warned.recipient_mismatch and not warned.forged
    assert any("different domains" in item for item in warned.items)
    forged = message_warnings(
        {"dmarc": "none", "flags": ["local_domain_claimed_from_outside"]}, "a@x.example", [], [], []
    )
    assert forged.forged


def test_paging(data_dir: Path) -> None:
    import time

    from lanalyze.mail.index import MessageIndex
    from lanalyze.mail.queuefile import Envelope, Layout

    layout = Layout(data_dir)
    layout.create()
    now = time.time()
    index = MessageIndex(layout.index)
    try:
        index.record_accepted(
            Envelope(
                queue_id=f"PAGE{number:04d}",
                mail_from=f"sender{number}@example.org",
                recipients=["bob@test.example"],
                local={},
                relay=[],
                received_at=now - number,
                client_ip="192.0.2.1",
                helo="h",
                listener="mta",
                subject=f"message {number}",
            )
            for number in range(120)
        )
    finally:
        index.close()
    client = TestClient(make_app(data_dir))
    log_in(client)
    first = client.get("/mail")
    assert "Page 1 of 3" in first.text and "PAGE0000" in first.text and "PAGE0050" not in first.text
    second = client.get("/mail?page=2")
    assert "Page 2 of 3" in second.text and "PAGE0050" in second.text
    assert 'rel="prev"' in second.text and 'rel="next"' in second.text
    beyond = client.get("/mail?page=99")
    assert "Page 3 of 3" in beyond.text and "PAGE0119" in beyond.text


def test_pages_read_the_api_parameters_leniently(client: TestClient) -> None:
    """The pages take the API's models: what they cannot use falls back to its default."""
    for query in ("verdict=bogus", "page=abc", "page=0", "verdict=bogus&page=-3"):
        page = client.get(f"/mail?{query}")
        assert page.status_code == 200, query
        assert sample_mail.FORGED_ID in page.text and sample_mail.GENUINE_ID in page.text
    # Search text is cut at 200 characters and stripped, as in the API.
    long = client.get("/mail", params={"sender": "  carol" + "x" * 300}).text
    assert "carol" + "x" * 193 + '"' in long and "x" * 194 not in long
    assert "No message matches." in long
    rejected = client.get("/mail/rejected", params={"page": "x", "client": " spam.example "})
    assert rejected.status_code == 200 and "No rejection matches." not in rejected.text


def test_lenient_parameters_keep_what_is_good() -> None:
    from lanalyze.web.api_mail import MessageParams

    asked = MessageParams.lenient({"verdict": "bogus", "page": "2", "sender": " a ", "x": "y"})
    assert (asked.verdict, asked.page, asked.sender) == ("any", 2, "a")


def test_list_marks_what_the_message_page_warns_about(data_dir: Path) -> None:
    """A From: claiming paypal.com with DMARC only "none" is marked in the list, found by
    the forged filter and the API, as its message page warns (not just "DMARC none")."""
    from lanalyze.mail.index import MessageIndex
    from lanalyze.mail.queuefile import Envelope, Layout

    layout = Layout(data_dir)
    layout.create()
    auth = {
        "action": "accept",
        "spf": "pass",
        "dkim": "none",
        "dmarc": "none",
        "arc": "none",
        "flags": ["from_envelope_mismatch", "well_known_domain_claimed", "display_name_spoof"],
        "flag_version": 2,
        "header": "",
        "details": {},
    }
    with MessageIndex(layout.index) as index:
        index.record_accepted(
            [
                Envelope(
                    queue_id="PAYPAL0001",
                    mail_from="x@bulk.example",
                    recipients=["bob@test.example"],
                    local=["bob@test.example"],
                    relay=[],
                    client_ip="203.0.113.66",
                    helo="bulk.example",
                    listener="mta",
                    received_at=time.time() - 60,
                    header_from='"PayPal" <service@paypal.com>',
                    subject="Account check",
                    auth=auth,
                )
            ]
        )
    client = TestClient(make_app(data_dir), follow_redirects=False)
    log_in(client)
    for page in (client.get("/mail"), client.get("/mail?verdict=forged")):
        row = page.text.split("Account check", 1)[1].split("</tr>", 1)[0]
        assert '<span class="badge forged">forged</span>' in row
        assert 'data-mark="well_known"' in row and "unverified well-known sender" in row
        assert 'data-mark="mismatch"' in row and "envelope/From differ" in row
        assert 'data-mark="display_name"' in row
    rows = client.get("/api/mail/messages", params={"verdict": "forged"}).json()["rows"]
    assert rows[0]["marks"] == ["well_known", "display_name", "mismatch"] and rows[0]["forged"]
    message = client.get("/mail/message/PAYPAL0001").text
    assert "Warning: this message is probably forged." in message
    assert "claims a well-known domain" in message
