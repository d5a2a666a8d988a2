"""The mail side from a real message index: a submission user's volume, a client's
rejections and DMARC failures, a burst forging one of our domains; export-packet loss from
the collector's counters."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from lanalyze import metrics
from lanalyze.alarms.config import AlarmsConfig, ExporterHealthConfig, MailWatchConfig
from lanalyze.alarms.engine import AlarmEngine
from lanalyze.alarms.watch import ExportLoss
from lanalyze.mail.index import MessageIndex
from lanalyze.mail.queuefile import Envelope, Layout

FORGED = {
    "dmarc": "fail",
    "spf": "fail",
    "dkim": "none",
    "flags": ["local_domain_claimed_from_outside"],
}


def envelope(
    n: int, *, user: str | None = None, client: str = "198.51.100.9", **kw: object
) -> Envelope:
    return Envelope(
        queue_id=f"Q{n:06d}",
        mail_from="x@bulk.test",
        recipients=[f"r{i}@remote.test" for i in range(3)],
        local={},
        relay=[f"r{i}@remote.test" for i in range(3)],
        client_ip=client,
        helo="bulk.test",
        listener="mta",
        received_at=time.time() - 60,
        user=user,
        **kw,  # type: ignore[arg-type]
    )


def test_mail_side_alarms(data_dir: Path) -> None:
    layout = Layout(data_dir)
    layout.create()
    now = time.time()
    with MessageIndex(layout.index) as index:
        rows = [envelope(i, user="alice") for i in range(30)]  # 90 recipients: over 50
        rows += [envelope(100 + i, user="bob") for i in range(5)]  # 15: under
        rows += [
            envelope(
                200 + i, client="203.0.113.7", header_from="Boss <ceo@local.example>", auth=FORGED
            )
            for i in range(12)
        ]
        index.record_accepted(rows)
        index.record_rejections(
            [
                (
                    now - 30,
                    "192.0.2.66",
                    "mta",
                    "h",
                    "a@b.test",
                    "x@local.example",
                    None,
                    550,
                    "unknown_user",
                    "",
                )
            ]
            * 40
            + [
                (
                    now - 30,
                    "192.0.2.67",
                    "mta",
                    "h",
                    "a@b.test",
                    "x@local.example",
                    None,
                    550,
                    "unknown_user",
                    "",
                )
            ]
            * 5
        )
    config = AlarmsConfig(
        interval=60,
        mail=MailWatchConfig(
            user_messages=1000,
            user_recipients=50,
            client_rejections=20,
            client_dmarc_failures=10,
            forged_domain=10,
        ),
    )
    engine = AlarmEngine(config, data_dir, channels=[])

    async def scenario() -> list[tuple[str, str]]:
        await engine.start()
        try:
            changes = await asyncio.to_thread(engine.round)
        finally:
            await engine.stop()
        return sorted((c.alarm["algorithm"], c.alarm["subject"]) for c in changes)

    assert asyncio.run(scenario()) == [
        ("mail_client_dmarc", "203.0.113.7"),
        ("mail_client_rejections", "192.0.2.66"),
        ("mail_forged_domain", "local.example"),
        ("mail_user_volume", "alice"),
    ]
    # Counted per algorithm on /metrics.
    text = metrics.render().decode()
    assert re.search(r'lanalyze_alarms_opened_total\{algorithm="mail_user_volume"\} [1-9]', text)
    assert re.search(r'lanalyze_alarm_findings_total\{algorithm="mail_forged_domain"\} [1-9]', text)
    assert 'lanalyze_alarms_open{algorithm="mail_client_dmarc"}' in text


def test_export_loss() -> None:
    loss = ExportLoss(ExporterHealthConfig(loss_percent=5, loss_window=60, loss_min_packets=100))
    row = {"exporter": "192.0.2.1", "observation_domain": 0, "packets": 1000, "sequence_gaps": 0}
    assert loss.observe(0, [row]) == []
    # 200 more received, 4 lost: 2 %.
    assert loss.observe(10_000, [row | {"packets": 1200, "sequence_gaps": 4}]) == []
    # Then 100 more received and 30 lost: 34 of 334 in the window, 10 %.
    [finding] = loss.observe(20_000, [row | {"packets": 1300, "sequence_gaps": 34}])
    assert finding.subject == "192.0.2.1" and round(finding.value) == 10
    # A collector restart (counters from zero) starts afresh, no alarm from the drop.
    assert loss.observe(30_000, [row | {"packets": 10, "sequence_gaps": 0}]) == []


def test_interface_utilisation(data_dir: Path) -> None:
    """Interfaces over their speed, from the flow reports. The speeds are written as the SNMP
    poller writes them (its own tests poll a real snmpd); the flows are stored segments."""
    import json

    from lanalyze.flows.store.paths import interfaces_path, make_flow_dir
    from lanalyze.flows.store.synthetic import random_flows, write_flows

    flows = make_flow_dir(data_dir)
    now_ms = int(time.time() * 1000)
    columns = random_flows(20_000, now_ms - 120_000, now_ms - 1000, exporters=1)
    write_flows(flows, columns, compression="lz4")
    exporter = "192.0.2.1"
    known = {
        exporter: {
            "2": {"name": "ge-0/0/2", "alias": None, "description": None, "speed_bps": 1000},
            "3": {"name": "ge-0/0/3", "alias": None, "description": None, "speed_bps": 10**15},
        }
    }
    interfaces_path(flows).write_text(json.dumps(known))
    engine = AlarmEngine(AlarmsConfig(interval=60), data_dir, channels=[])

    async def scenario() -> list[dict[str, object]]:
        await engine.start()
        try:
            changes = await asyncio.to_thread(engine.round)
        finally:
            await engine.stop()
        return [c.alarm for c in changes if c.alarm["algorithm"] == "interface_utilisation"]

    [alarm] = asyncio.run(scenario())
    assert alarm["subject"] == f"{exporter} if 2 (ge-0/0/2)"
    assert alarm["evidence"]["speed_bps"] == 1000 and alarm["value"] > 90
