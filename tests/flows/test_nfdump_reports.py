"""Reports against nfdump: the same traffic from a real exporter, the same top-N answers.

softflowd replays a capture (IPv4 and IPv6, TCP and UDP, 3000 flows) as IPFIX once to
``lanalyze flows collect`` and once to nfcapd. ``lanalyze flows top --by X`` then equals
``nfdump -s X/bytes`` for source and destination address, destination port and protocol:
same rows, same bytes, packets and flows, and the same top-10 order by bytes. Then the rollup
maintainer runs and the rollup answers equal the raw ones.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lanalyze.flows.config import RollupConfig
from lanalyze.flows.query import reports
from lanalyze.flows.store.rollup import RollupMaintainer
from tests.conftest import free_port, lanalyze_cmd, require_tool
from tests.flows.test_collect import Collector, start_collector, stored, wait_until
from tests.flows.test_softflowd import nfcapd_collect, replay, write_capture

__all__ = ["start_collector"]

# lanalyze dimension -> nfdump statistic
STATISTICS = {"srcip": "srcip", "dstip": "dstip", "dstport": "dstport", "proto": "proto"}
Rows = dict[str, tuple[int, int, int]]


def nfdump_rows(nfdump: str, directory: Path, statistic: str) -> tuple[Rows, list[int]]:
    out = subprocess.run(
        [nfdump, "-R", str(directory), "-s", f"{statistic}/bytes", "-n", "0", "-o", "csv"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    table = out.split("\n\n")[0]
    rows: Rows = {}
    order: list[int] = []
    for row in csv.DictReader(io.StringIO(table)):
        # nfdump names the protocol in "pr" and gives its number as the value.
        key = row["pr"] if statistic == "proto" else row["val"]
        rows[normal(key)] = (int(row["fl"]), int(row["pkt"]), int(row["byt"]))
        order.append(int(row["byt"]))
    return rows, order


def normal(value: object) -> str:
    text = str(value).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.lower()


def lanalyze_rows(data_dir: Path, by: str) -> tuple[Rows, list[int]]:
    result = subprocess.run(
        [
            *lanalyze_cmd(),
            *("flows", "top", "--by", by, "-n", "0", "--format", "json"),
            *("--since", "-1h", "--data", str(data_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows: Rows = {}
    order: list[int] = []
    for row in json.loads(result.stdout):
        rows[normal(row[by])] = (row["flows"], row["packets"], row["bytes"])
        order.append(row["bytes"])
    return rows, order


@pytest.fixture
def nfcapd_dir(tmp_path: Path) -> Path:
    """nfcapd's files of the softflowd replay of the test capture."""
    capture = tmp_path / "flows.pcap"
    write_capture(capture)
    directory, _ = nfcapd_collect(capture, 10, tmp_path)
    return directory


def test_top_reports_equal_nfdump(
    tmp_path: Path,
    data_dir: Path,
    nfcapd_dir: Path,
    start_collector: Callable[..., Collector],
) -> None:
    softflowd = require_tool("softflowd")
    nfdump = require_tool("nfdump")
    capture = tmp_path / "flows.pcap"
    port = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port}"])
    replay(softflowd, capture, port, 10, tmp_path)
    wait_until(lambda: stored(data_dir) == 3000, 30, "3000 flows stored")
    assert collector.stop() == 0

    for by, statistic in STATISTICS.items():
        expected, expected_order = nfdump_rows(nfdump, nfcapd_dir, statistic)
        got, got_order = lanalyze_rows(data_dir, by)
        assert sum(flows for flows, _, _ in expected.values()) == 3000
        assert got == expected, by
        assert got_order[:10] == expected_order[:10], by

    # The rollups answer the same (the open hour from its hour parts: nothing is newer).
    flow_dir = data_dir / "flows"
    maintainer = RollupMaintainer(RollupConfig(), flow_dir)
    try:
        assert maintainer.run_once()["rolled_files"] > 0
    finally:
        maintainer.release()
    now = int(time.time() * 1000)
    for by in STATISTICS:
        since = now - 3_600_000
        rolled = reports.top(flow_dir, by, since=since, until=now, limit=0)
        raw = reports.top(flow_dir, by, since=since, until=now, limit=0, use_rollups=False)
        assert "1h/" in rolled.plan or "1m/" in rolled.plan
        assert rolled.rows == raw.rows and rolled.total.flows == 3000
