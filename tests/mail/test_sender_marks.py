"""Sender marks: the warnings of the message page as words on every index row, the same in
the list, ``mail ls``/``mail show``, the API and the forged filter; old rows brought up."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from lanalyze.cli import main
from lanalyze.mail.auth.lookalike import (
    display_name_claim,
    header_imitation_flags,
    lookalike_of,
    skeleton,
)
from lanalyze.mail.index import MessageIndex, MessageQuery, is_forged, sender_marks
from lanalyze.mail.queuefile import Envelope, Layout


def test_lookalikes_and_display_names() -> None:
    protected = ["paypal.com", "example.test"]
    for domain in ("paypa1.com", "paypall.com", "paypal-secure.com", "раураl.com", "examp1e.test"):
        assert lookalike_of(domain, protected), domain
    for domain in ("paypal.com", "www.paypal.com", "paypal.de", "example.org", "apply.com"):
        assert lookalike_of(domain, protected) is None, domain
    assert skeleton("xn--80aa0cbo65f.com") == skeleton("paypal.com")
    assert display_name_claim("PayPal", ["evil.test"]) == "paypal"
    assert display_name_claim("it@paypal.com", ["evil.test"]) == "it@paypal.com"
    assert display_name_claim("Alice Smith", ["example.org"]) is None
    assert display_name_claim("Amazon Web Services", ["amazonaws.com"]) is None
    assert display_name_claim("PayPal", ["paypal.com"]) is None


def test_marks_follow_the_stored_flags() -> None:
    mismatch = {"dmarc": "none", "flags": ["from_envelope_mismatch"]}
    assert sender_marks(mismatch) == ["mismatch"] and not is_forged(mismatch)
    # With DMARC confirming the From: domain a different bounce domain is normal.
    assert sender_marks({"dmarc": "pass", "flags": ["from_envelope_mismatch"]}) == []
    paypal = {"dmarc": "none", "flags": ["from_envelope_mismatch", "well_known_domain_claimed"]}
    assert sender_marks(paypal) == ["well_known", "mismatch"] and is_forged(paypal)
    assert sender_marks({"dmarc": "fail", "flags": "garbage"}) == ["dmarc_fail"]
    assert sender_marks(None) == []


def _envelope(queue_id: str, header_from: str, auth: dict | None, at: float) -> Envelope:
    return Envelope(
        queue_id=queue_id,
        mail_from="x@bulk.test",
        recipients=["bob@local.example"],
        local=["bob@local.example"],
        relay=[],
        client_ip="203.0.113.66",
        helo="bulk.test",
        listener="mta",
        received_at=at,
        header_from=header_from,
        subject=f"subject {queue_id}",
        auth=auth,
    )


def _seed(data_dir: Path) -> Layout:
    layout = Layout(data_dir)
    layout.create()
    now = time.time()
    paypal = {
        "action": "accept",
        "spf": "pass",
        "dkim": "none",
        "dmarc": "none",
        "arc": "none",
        "flags": ["from_envelope_mismatch", "well_known_domain_claimed"],
        "flag_version": 2,
    }
    honest = {"dmarc": "pass", "spf": "pass", "dkim": "pass", "flags": [], "flag_version": 2}
    # Stored by an older version: no flag_version, only the flags it knew.
    old = {"dmarc": "none", "spf": "pass", "dkim": "none", "flags": ["from_envelope_mismatch"]}
    with MessageIndex(layout.index) as index:
        index.record_accepted(
            [
                _envelope("PAYPAL1", "PayPal <service@paypal.com>", paypal, now - 30),
                _envelope("HONEST2", "Alice <alice@example.org>", honest, now - 20),
                _envelope("OLDROW3", '"service@paypa1.com" <x@bulk.test>', old, now - 10),
            ]
        )
    return layout


def test_forged_filter_counts_and_old_rows(data_dir: Path) -> None:
    layout = _seed(data_dir)
    with MessageIndex(layout.index) as index:
        forged = index.search(MessageQuery(verdict="forged")).rows
        assert [r["queue_id"] for r in forged] == ["PAYPAL1"]
        assert forged[0]["marks"] == ["well_known", "mismatch"] and forged[0]["forged"]
        old = index.get("OLDROW3")
        assert old is not None and old["marks"] == ["mismatch"]

        # The server brings older verdicts up to date, a chunk at a time.
        def compute(header_from: str, dmarc: str) -> list[str]:
            return header_imitation_flags(header_from, dmarc, ["local.example"])

        assert index.add_flags(compute, chunk=1) == 1
        assert index.add_flags(compute, chunk=1) == 0
        old = index.get("OLDROW3")
        assert old is not None and old["auth"]["flag_version"] == 2
        assert old["marks"] == ["display_name", "mismatch"]
        ids = {r["queue_id"] for r in index.search(MessageQuery(verdict="forged")).rows}
        assert ids == {"PAYPAL1", "OLDROW3"}
        now = time.time()
        series = index.counts(now - 3600, now + 1, 3600)
        assert sum(series["forged"]) == 2 and sum(series["accepted"]) == 3


def test_cli_shows_the_marks_and_plain_values(data_dir: Path, tmp_path: Path) -> None:
    _seed(data_dir)
    runner = CliRunner()
    config = tmp_path / "lanalyze.toml"
    config.write_text(f'[general]\ndata_dir = "{data_dir}"\n')
    base = ["--config", str(config), "mail"]
    listed = runner.invoke(main, [*base, "ls"])
    assert listed.exit_code == 0, listed.output
    paypal = listed.output.split("PAYPAL1", 1)[1].split("\n")[1]
    assert "dmarc=none" in paypal
    assert "FORGED: unverified well-known sender, envelope/From differ" in paypal
    only = runner.invoke(main, [*base, "ls", "--verdict", "forged", "--format", "json"])
    assert [r["queue_id"] for r in json.loads(only.output)] == ["PAYPAL1"]
    shown = runner.invoke(main, [*base, "show", "PAYPAL1"])
    assert shown.exit_code == 0, shown.output
    assert "recipients    bob@local.example\n" in shown.output
    assert "['" not in shown.output and "None" not in shown.output
    assert "FORGED: unverified well-known sender" in shown.output
