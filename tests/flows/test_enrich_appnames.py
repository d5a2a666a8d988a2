"""Application names from the exporter's option table (issue 16): IE 95 applicationId with IE
96 applicationName in options data, learned per exporter and used for ``appname`` before the
port table.

No exporter that sends an NBAR option table runs here (NBAR is Cisco IOS/IOS-XE only, and
softflowd, fprobe and pmacct export no application ids), so the export packets are generated:
an IPFIX options template with applicationId as its scope (RFC 6759 §5; what IOS-XE's
``option application-table`` sends over IPFIX) and the NetFlow v9 form Cisco uses (scope
System, applicationId and a NUL-padded fixed-length applicationName as ordinary fields).
"""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

from lanalyze.flows.decode import FlowDecoder
from lanalyze.flows.decode.applications import MAX_NAME, ApplicationNames
from lanalyze.flows.decode.state import DecoderCounters
from lanalyze.flows.enrich import Enricher
from lanalyze.flows.enrich.config import EnrichConfig
from tests.conftest import free_port, lanalyze_cmd
from tests.flows.test_collect import send, stored, wait_until
from tests.flows.test_decode_templates import (
    flow_set,
    ip4,
    ipfix_message,
    ipfix_options_template,
    packet,
    template_record,
    v9_options_template,
    v9_packet,
)

NBAR = 13
OPTIONS_ID = 260
FLOWS_ID = 261
# Addresses, ports, protocol, bytes, packets, applicationId (4 bytes: engine, selector).
FLOW_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (95, 4)]


def app(selector: int, engine: int = NBAR) -> int:
    return engine << 24 | selector


def flow(app_id: int, nbytes: int = 100, dport: int = 443) -> bytes:
    return (
        ip4("10.1.0.5")
        + ip4("203.0.113.9")
        + struct.pack(">HHBQQI", 50000, dport, 6, nbytes, 1, app_id)
    )


def ipfix_names(names: dict[int, bytes]) -> bytes:
    """An IPFIX options data set: applicationId (scope), applicationName (variable length)."""
    body = b"".join(struct.pack(">IB", app_id, len(name)) + name for app_id, name in names.items())
    return flow_set(OPTIONS_ID, body)


def ipfix_table(names: dict[int, bytes]) -> bytes:
    return ipfix_message(
        [
            flow_set(3, ipfix_options_template(OPTIONS_ID, [(95, 4)], [(96, 65535)])),
            ipfix_names(names),
        ]
    )


def ipfix_flows(*records: bytes, sequence: int = 0) -> bytes:
    return ipfix_message(
        [
            flow_set(2, template_record(FLOWS_ID, FLOW_FIELDS)),
            flow_set(FLOWS_ID, b"".join(records)),
        ],
        sequence=sequence,
    )


def names_of(decoder: FlowDecoder, enricher: Enricher, *datagrams: tuple[bytes, str]) -> list:
    batch = decoder.decode([packet(data, exporter) for data, exporter in datagrams])
    return enricher.enrich(batch.columns)["app_name"].to_pylist()


def test_ipfix_option_table_names_the_exporters_own_ids() -> None:
    decoder = FlowDecoder()
    enricher = Enricher(
        EnrichConfig(applications={"13:7": "configured"}), {}, None, decoder.application_names
    )
    decoder.decode(
        [
            packet(ipfix_table({app(453): b"webex-meeting", app(7): b"announced"}), "192.0.2.1"),
            packet(ipfix_table({app(453): "zoom-café".encode()}), "192.0.2.2"),
        ]
    )
    assert decoder.counters.application_names_learned == 3
    got = names_of(
        decoder,
        enricher,
        (ipfix_flows(flow(app(453)), flow(app(7)), flow(app(99))), "192.0.2.1"),
        (ipfix_flows(flow(app(453)), flow(app(22, engine=3), dport=8080)), "192.0.2.2"),
        (ipfix_flows(flow(app(453))), "192.0.2.3"),
    )
    # Each exporter's own table; the configuration wins; unknown ids keep "engine:selector";
    # engine 3 (IANA L4) is a port; an exporter that announced nothing gets no names.
    assert got == ["webex-meeting", "configured", "13:99", "zoom-café", "ssh", "13:453"]


def test_a_changed_announcement_renames_later_flows() -> None:
    decoder = FlowDecoder()
    enricher = Enricher(EnrichConfig(), {}, None, decoder.application_names)
    decoder.decode([packet(ipfix_table({app(1): b"old-name"}), "192.0.2.1")])
    assert names_of(decoder, enricher, (ipfix_flows(flow(app(1))), "192.0.2.1")) == ["old-name"]
    decoder.decode([packet(ipfix_table({app(1): b"new-name"}), "192.0.2.1")])
    assert names_of(decoder, enricher, (ipfix_flows(flow(app(1))), "192.0.2.1")) == ["new-name"]


def test_v9_nbar_option_table_with_padded_names() -> None:
    decoder = FlowDecoder()
    enricher = Enricher(EnrichConfig(), {}, None, decoder.application_names)
    # Cisco's form: scope System (type 1), then applicationId and a 24-byte applicationName.
    options = v9_options_template(300, [(1, 4)], [(95, 4), (96, 24)])
    record = struct.pack(">II", 0, app(83)) + b"bittorrent".ljust(24, b"\0")
    table = v9_packet([flow_set(1, options, pad=2), flow_set(300, record)])
    flows = v9_packet(
        [
            flow_set(0, template_record(FLOWS_ID, FLOW_FIELDS, ipfix=False)),
            flow_set(FLOWS_ID, flow(app(83)) + flow(0, dport=53)),
        ],
        sequence=1,
    )
    decoder.decode([packet(table, "192.0.2.9")])
    got = names_of(decoder, enricher, (flows, "192.0.2.9"))
    assert got == ["bittorrent", None]  # no IE 95: the port table names it when shown


def test_bad_names_are_counted_and_dropped_and_the_table_is_bounded() -> None:
    decoder = FlowDecoder()
    bad = {app(1): b"\xff\xfe", app(2): b"tab\there", app(3): b"x" * (MAX_NAME + 1), app(4): b""}
    batch = decoder.decode([packet(ipfix_table({**bad, app(5): b"fine"}), "192.0.2.1")])
    assert decoder.counters.application_names_refused == 4
    assert decoder.counters.application_names_learned == 1
    assert any(
        p.exporter == "192.0.2.1" and "application name" in p.reason for p in batch.problems
    ), batch.problems
    table = ApplicationNames(DecoderCounters(), limit=3)
    for selector in range(5):
        table.learn(ip4("192.0.2.1"), app(selector), b"name-%d" % selector)
    assert len(table) == 3
    assert table.counters.application_names_evicted == 2
    assert table.get(ip4("192.0.2.1"), app(0)) is None
    assert table.get(ip4("192.0.2.1"), app(4)) == "name-4"


def test_collector_names_flows_from_the_option_table(tmp_path: Path) -> None:
    """Through a real collector: the worker hands its decoder's names to its enricher."""
    data = tmp_path / "data"
    port = free_port(socket.SOCK_DGRAM)
    config = tmp_path / "lanalyze.toml"
    config.write_text(
        f'[general]\ndata_dir = "{data}"\n[flows]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\n'
        "[flows.rollup]\nenabled = false\n"
    )
    log_path = tmp_path / "collect.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*lanalyze_cmd(), "--config", str(config), "flows", "collect"], stdout=log, stderr=log
        )
        try:
            wait_until(lambda: "flows.ready" in log_path.read_text(), 120, "ready")
            table = ipfix_table({app(453): b"webex-meeting"})
            send(port, [table, ipfix_flows(flow(app(453)), flow(app(9)), sequence=0)])
            wait_until(lambda: stored(data) == 2, 120, "2 flows stored")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    names = []
    for path in sorted((data / "flows").rglob("*.parquet")):
        names += pq.read_table(path, columns=["app_name"]).column("app_name").to_pylist()
    assert sorted(names) == ["13:9", "webex-meeting"]


def test_exporter_addresses_ending_in_zero_bytes_find_their_names() -> None:
    decoder = FlowDecoder()
    enricher = Enricher(EnrichConfig(), {}, None, decoder.application_names)
    for exporter in ("2001:db8::100", "192.0.2.0"):
        decoder.decode([packet(ipfix_table({app(1): exporter.encode()}), exporter)])
    got = names_of(
        decoder,
        enricher,
        (ipfix_flows(flow(app(1))), "2001:db8::100"),
        (ipfix_flows(flow(app(1))), "192.0.2.0"),
    )
    assert got == ["2001:db8::100", "192.0.2.0"]


def test_names_are_kept_with_the_saved_decoder_state() -> None:
    """A restarted worker names flows from the saved table until the exporter sends its
    next one (NBAR resends it only every few minutes)."""
    decoder = FlowDecoder()
    decoder.decode([packet(ipfix_table({app(453): b"webex-meeting"}), "192.0.2.1")])
    saved = decoder.save_templates()
    restarted = FlowDecoder()
    restarted.load_templates(saved)
    assert restarted.counters.application_names_learned == 0  # restored, not learned
    assert restarted.save_templates() == saved
    enricher = Enricher(EnrichConfig(), {}, None, restarted.application_names)
    got = names_of(restarted, enricher, (ipfix_flows(flow(app(453))), "192.0.2.1"))
    assert got == ["webex-meeting"]
