"""Mass mailer end to end: `lanalyze serve` with flows, mail and alarms; an inside host forges
one of our domains into lanalyze's SMTP server, then its flows show it opening TCP/25 to 300
outside hosts: one alarm whose detail holds both (the targets, and the forged messages with
their verdicts). DNS is a real Knot server on loopback."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
from pathlib import Path

from lanalyze.mail.index import MessageIndex
from tests.alarms.helpers import TEST_ALARMS, Flow, alarm_list, of, send_flows
from tests.conftest import free_port, lanalyze_cmd
from tests.flows.test_collect import wait_until
from tests.mail.dnsserver import knot_server, txt

DOMAIN = "example.test"
HOST = "127.0.0.5"
"""The inside host (127/8 is inside in this test): all of 127/8 is local, so the SMTP client
can use it as its source address and the flows can name it."""


def test_mass_mailer_alarm_shows_flows_and_mail(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    udp, smtp = free_port(socket.SOCK_DGRAM), free_port()
    records = [
        f"@ TXT {txt('v=spf1 ip4:192.0.2.1 -all')}",
        f"_dmarc TXT {txt('v=DMARC1; p=none')}",
    ]
    with knot_server(tmp_path / "knot", {DOMAIN: "\n".join(records)}) as dns:
        config = tmp_path / "lanalyze.toml"
        config.write_text(
            f'[general]\ndata_dir = "{data}"\nhostname = "mx.{DOMAIN}"\n'
            f'[flows]\nlisten = ["127.0.0.1:{udp}"]\nworkers = 1\nflush_interval = 0.2\n'
            "[flows.rollup]\nenabled = false\n"
            "[web]\nenabled = false\n"
            f'[mail]\nlisten = ["127.0.0.1:{smtp}"]\ndomains = ["{DOMAIN}"]\n'
            f'mailboxes = ["postmaster@{DOMAIN}"]\n'
            f'[mail.auth]\nenabled = true\nresolver = "{dns.address}"\ndns_timeout = 2.0\n'
            + TEST_ALARMS.replace("[alarms]\n", '[alarms]\ninside = ["127.0.0.0/8"]\n', 1)
        )
        log_path = tmp_path / "serve.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [*lanalyze_cmd(), "--config", str(config), "serve"], stdout=log, stderr=log
            )
            try:

                def started() -> bool:
                    assert proc.poll() is None, log_path.read_text()
                    return "event=serve.started" in log_path.read_text()

                wait_until(started, 60, "serve started")
                message = (
                    f"From: Postmaster <postmaster@{DOMAIN}>\r\nTo: postmaster@{DOMAIN}\r\n"
                    f"Subject: your invoice\r\nMessage-ID: <klez.1@{DOMAIN}>\r\n\r\nhi\r\n"
                )
                with smtplib.SMTP(
                    "127.0.0.1", smtp, timeout=10, source_address=(HOST, 0)
                ) as client:
                    client.sendmail(f"postmaster@{DOMAIN}", [f"postmaster@{DOMAIN}"], message)

                def indexed() -> bool:
                    index = MessageIndex.open_readonly(data / "mail" / "index.sqlite")
                    if index is None:
                        return False
                    with index:
                        return index.from_client(HOST, 0)["total"] == 1

                wait_until(indexed, 20, "message indexed")
                flows = [
                    Flow(HOST, f"198.51.{100 + i // 250}.{i % 250 + 1}", 40000 + i, 25, 6, 0x1B, 12)
                    for i in range(300)
                ]
                send_flows(udp, flows)
                [alarm] = wait_until(
                    lambda: of(alarm_list(data), "mass_mailer"), 20, "mass mailer alarm"
                )
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0, log_path.read_text()
    assert alarm["subject"] == HOST and alarm["value"] == 300
    assert len(alarm["evidence"]["targets"]) == 10
    mail = alarm["evidence"]["mail"]
    assert mail["total"] == 1 and mail["forged"] == 1
    [shown] = mail["messages"]
    assert (
        shown["header_from"] == f"Postmaster <postmaster@{DOMAIN}>"
        and shown["subject"] == "your invoice"
    )
    assert shown["verdicts"]["spf"] == "fail" and shown["verdicts"]["dmarc"] == "fail"
    assert shown["forged"] and "local_claim" in " ".join(shown["marks"])
    # The alarm stayed one alarm, and closed nothing (close_after is an hour).
    assert len(of(alarm_list(data), "mass_mailer")) == 1
