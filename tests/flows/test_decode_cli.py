"""``lanalyze flows decode``: NDJSON and table output, problems and exit status (no corpus)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from lanalyze.flows.decode_cli import decode
from tests.flows.test_decode_templates import data_message, template_message
from tests.flows.test_decode_v5 import v5_datagram, v5_record
from tests.flows.test_pcap import classic, ethernet, ipv4, udp


def capture(tmp_path: Path, name: str, payloads: list[bytes]) -> Path:
    path = tmp_path / name
    path.write_bytes(classic([ethernet(ipv4(udp(p))) for p in payloads]))
    return path


def test_ndjson_across_files_with_templates_first(tmp_path: Path) -> None:
    templates = capture(tmp_path, "templates.pcap", [template_message()])
    data = capture(
        tmp_path, "data.pcap", [data_message(2), v5_datagram([v5_record(0)]), b"\x00\x08junk"]
    )
    result = CliRunner().invoke(decode, [str(templates), str(data)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert len(records) == 3
    ipfix = [r for r in records if r["observation_domain"] == 1]
    assert [r["src_port"] for r in ipfix] == [5000, 5001]
    assert ipfix[0]["src_addr"] == "10.1.0.0" and ipfix[0]["exporter"] == "192.0.2.7"
    assert ipfix[0]["time_start"] == "2023-11-14T22:13:11.000Z"
    assert ipfix[0]["src_mac"] == "00:00:00:00:00:00" and ipfix[0]["extra"] == {}
    assert "data.pcap: exporter 192.0.2.7: unknown export version 8" in result.stderr
    assert "3 flows from 4 datagrams in 2 files; 1 decode errors" in result.stderr


def test_table_and_unreadable_file(tmp_path: Path) -> None:
    good = capture(tmp_path, "v5.pcap", [v5_datagram([v5_record(i) for i in range(3)])])
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(good.read_bytes()[:-10])
    result = CliRunner().invoke(decode, ["--format", "table", str(good), str(broken)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["time_start", "exporter", "src_addr"]
    assert len(lines) == 4 and "10.0.0.1" in lines[1]
    assert "broken.pcap: truncated at offset" in result.stderr
