"""Reports over raw Parquet segments, checked against sums computed independently with numpy."""

from __future__ import annotations

import csv as csv_module
import io
import ipaddress
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lanalyze.flows.config import QueryConfig
from lanalyze.flows.errors import DimensionError, FilterError, ReportError, TimeError
from lanalyze.flows.query import reports
from lanalyze.flows.query.timespec import auto_bucket, parse_time
from lanalyze.flows.store.synthetic import random_flows, write_flows
from tests.conftest import lanalyze_cmd

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000  # an hour boundary
SPAN = 2 * 3_600_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    data = tmp_path_factory.mktemp("flows")
    columns = random_flows(20_000, T0, T0 + SPAN, seed=7, sources=300, sampling=(1, 1, 10))
    write_flows(data, columns, segment_ms=600_000)
    return data, columns


def ip_text(value: bytes) -> str:
    value = bytes(value).ljust(16, b"\x00")  # numpy S16 items drop trailing NULs
    if value[:12] == b"\x00" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(value[12:]))
    return str(ipaddress.IPv6Address(value))


def expected_by(columns: dict[str, np.ndarray], keys: list[str], mask: np.ndarray | None = None):
    scale = columns["sampling_rate"].astype(np.uint64)
    sums: dict[tuple, list[int]] = {}
    rows = range(len(columns["bytes"])) if mask is None else np.flatnonzero(mask)
    for i in rows:
        key = tuple(
            ip_text(bytes(columns[k][i])) if columns[k].dtype.kind == "S" else int(columns[k][i])
            for k in keys
        )
        entry = sums.setdefault(key, [0, 0, 0])
        entry[0] += int(columns["bytes"][i] * scale[i])
        entry[1] += int(columns["packets"][i] * scale[i])
        entry[2] += 1
    return sums


def test_top_srcip_equals_independent_sums(store) -> None:
    data, columns = store
    report = reports.top(data, "srcip", since=T0, until=T0 + SPAN, limit=0, use_rollups=False)
    expected = expected_by(columns, ["src_addr"])
    got = {(r.values["srcip"],): [r.bytes, r.packets, r.flows] for r in report.rows}
    assert got == expected
    assert report.total.flows == 20_000
    assert report.rows == sorted(report.rows, key=lambda r: -r.bytes)
    assert abs(sum(r.share for r in report.rows) - 100) < 1e-6
    seconds = SPAN / 1000
    assert report.rows[0].bps == pytest.approx(report.rows[0].bytes * 8 / seconds)


def test_top_limit_order_and_filter(store) -> None:
    data, columns = store
    report = reports.top(
        data,
        "proto,dstport",
        since=T0,
        until=T0 + SPAN,
        order="packets",
        limit=3,
        filter="proto tcp and not dst port 22",
        use_rollups=False,
    )
    mask = (columns["protocol"] == 6) & (columns["dst_port"] != 22)
    expected = expected_by(columns, ["protocol", "dst_port"], mask)
    best = sorted(expected.items(), key=lambda kv: -kv[1][1])[:3]
    assert [(r.values["dstport"], r.packets) for r in report.rows] == [
        (k[1], v[1]) for k, v in best
    ]
    assert all(r.values["proto"] == "tcp" for r in report.rows)


def test_time_window_is_half_open_on_time_received(store) -> None:
    data, columns = store
    lo, hi = T0 + 1_234_567, T0 + 4_000_000
    report = reports.top(data, "proto", since=lo, until=hi, limit=0, use_rollups=False)
    times = columns["time_received"]
    assert report.total.flows == int(((times >= lo) & (times < hi)).sum())


def test_either_side_dimension_counts_both_ends(store) -> None:
    data, columns = store
    report = reports.top(data, "ip", since=T0, until=T0 + SPAN, limit=0, use_rollups=False)
    counts: Counter[str] = Counter()
    for side in ("src_addr", "dst_addr"):
        counts.update(ip_text(bytes(v)) for v in columns[side])
    assert {r.values["ip"]: r.flows for r in report.rows} == dict(counts)
    assert report.total.flows == 20_000


def test_derived_dimensions(store) -> None:
    data, columns = store
    since, until = T0, T0 + SPAN
    nets = reports.top(data, "srcnet/30", since=since, until=until, limit=0, use_rollups=False)
    assert all(str(r.values["srcnet/30"]).endswith("/30") for r in nets.rows)
    assert sum(r.flows for r in nets.rows) == 20_000
    octets = columns["src_addr"].view(np.uint8).reshape(-1, 16)
    assert len(nets.rows) == len({(int(o[14]), int(o[15]) // 4) for o in octets})
    app = reports.top(data, "app", since=since, until=until, limit=0, use_rollups=False)
    names = {r.values["app"] for r in app.rows}
    assert "tcp/443 https" in names
    conv = reports.top(data, "conversation", since=since, until=until, limit=1, use_rollups=False)
    assert " <-> " in str(conv.rows[0].values["conversation"])
    flags = reports.top(data, "flags", since=since, until=until, limit=0, use_rollups=False)
    assert "...A..S." in {r.values["flags"] for r in flags.rows}
    multi = reports.top(
        data, "exporter,inif,outif,srcas,dstas,dscp,tos", since=since, until=until, limit=2
    )
    assert set(multi.rows[0].values) == {
        "exporter",
        "inif",
        "outif",
        "srcas",
        "dstas",
        "dscp",
        "tos",
    }
    ports = reports.top(
        data, "conversation-ports", since=since, until=until, limit=2, use_rollups=False
    )
    assert ":" in str(ports.rows[0].values["conversation-ports"])


def test_series_adds_up_to_the_total(store) -> None:
    data, _ = store
    result = reports.series(
        data, since=T0, until=T0 + SPAN, bucket="10m", by="dstport", top_n=3, use_rollups=False
    )
    assert result.bucket_ms == 600_000
    assert result.groups[-1] == "other" and len(result.groups) == 4
    assert sum(p.flows for p in result.points) == 20_000
    first = [p for p in result.points if p.time == result.points[0].time]
    assert {p.group for p in first} == set(result.groups)
    plain = reports.series(data, since=T0, until=T0 + SPAN, use_rollups=False)
    assert sum(p.flows for p in plain.points) == 20_000
    assert plain.bucket_ms == auto_bucket(T0, T0 + SPAN)


def test_list_newest_first_with_filter(store) -> None:
    data, columns = store
    flows = reports.list_flows(data, since=T0, until=T0 + SPAN, filter="proto udp", limit=25)
    assert len(flows) == 25
    times = [f.time_received for f in flows]
    assert times == sorted(times, reverse=True)
    udp_times = np.sort(columns["time_received"][columns["protocol"] == 17])[::-1][:25]
    assert times == [int(t) for t in udp_times]


def test_interfaces(store) -> None:
    data, columns = store
    rows = reports.top_interfaces(data, since=T0, until=T0 + SPAN, limit=0)
    scaled = columns["bytes"] * columns["sampling_rate"]
    assert sum(r.in_bytes for r in rows) == int(scaled.sum())
    assert sum(r.out_bytes for r in rows) == int(scaled.sum())
    # Every in/out sum per (exporter, ifIndex) equals one computed from the raw columns.
    by_in = expected_by(columns, ["exporter", "in_if"])
    by_out = expected_by(columns, ["exporter", "out_if"])
    got = {
        (r.exporter, r.interface): [
            r.in_bytes, r.in_packets, r.in_flows,
            r.out_bytes, r.out_packets, r.out_flows,
        ]
        for r in rows
    }  # fmt: skip
    expected = {
        key: by_in.get(key, [0, 0, 0]) + by_out.get(key, [0, 0, 0]) for key in {*by_in, *by_out}
    }
    assert got == expected
    # Each order ranks by in + out of its counter; the rows stay the same.
    for order, field in (("bytes", "bytes"), ("packets", "packets"), ("flows", "flows")):
        ranked = reports.top_interfaces(data, since=T0, until=T0 + SPAN, limit=0, order=order)
        totals = [getattr(r, f"in_{field}") + getattr(r, f"out_{field}") for r in ranked]
        assert totals == sorted(totals, reverse=True), order
        assert sorted(map(str, ranked)) == sorted(map(str, rows))
        top3 = reports.top_interfaces(data, since=T0, until=T0 + SPAN, limit=3, order=order)
        assert top3 == ranked[:3]
    with pytest.raises(ReportError):
        reports.top_interfaces(data, since=T0, until=T0 + SPAN, order="bits")
    one = reports.interface_series(
        data, exporter="192.0.2.1", interface=1, since=T0, until=T0 + SPAN, bucket="1h"
    )
    assert len(one.points) == 2


def test_status(store) -> None:
    data, _ = store
    raw = reports.status(data)[0]
    assert raw.table == "raw" and raw.rows == 20_000 and raw.bytes > 0
    assert raw.first is not None and raw.to_json()["first"].startswith("2023-11-14")


def test_bad_requests_are_value_errors(store) -> None:
    data, _ = store
    with pytest.raises(DimensionError):
        reports.top(data, "nosuch", since=T0, until=T0 + 1)
    with pytest.raises(FilterError):
        reports.top(data, "srcip", since=T0, until=T0 + 1, filter="port")
    with pytest.raises(ReportError):
        reports.top(data, "srcip", since=T0, until=T0 + 1, order="bits")
    with pytest.raises(TimeError):
        reports.top(data, "srcip", since=T0, until=T0)
    with pytest.raises(DimensionError):
        reports.top(data, "ip,port", since=T0, until=T0 + 1)


def test_time_parsing() -> None:
    now = 1_700_000_000_000
    assert parse_time("-1h", now) == now - 3_600_000
    assert parse_time("-30d", now) == now - 30 * 86_400_000
    assert parse_time("now", now) == now
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    assert parse_time("2023-11-14 22:13:20") == 1_700_000_000_000
    with pytest.raises(TimeError):
        parse_time("yesterday")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lanalyze_cmd(), "flows", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_top_json_and_table(store) -> None:
    data, columns = store
    window = ["--since", "2023-11-14T22:00:00Z", "--until", "2023-11-15T00:00:00Z"]
    assert parse_time(window[1]) == T0
    result = run_cli(
        "top", "--by", "srcip", "-n", "0", "--format", "json", "--data", str(data), *window
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert set(rows[0]) == {"srcip", "bytes", "packets", "flows"}
    assert {(r["srcip"],): [r["bytes"], r["packets"], r["flows"]] for r in rows} == expected_by(
        columns, ["src_addr"]
    )
    table = run_cli("top", "--by", "app", "--data", str(data), *window)
    assert table.returncode == 0, table.stderr
    assert "tcp/443 https" in table.stdout and "share" in table.stdout
    csv = run_cli("top", "--by", "dstport", "--format", "csv", "--data", str(data), *window)
    assert csv.stdout.splitlines()[0] == "dstport,bytes,packets,flows,bps,pps,share"
    for command in (
        ["series", "--by", "proto"],
        ["list", "-n", "3"],
        ["interfaces", "--exporter", "192.0.2.1", "--if", "1"],
        ["interfaces", "--order", "flows", "-n", "3"],
    ):
        out = run_cli(*command, "--format", "json", "--data", str(data), *window)
        assert out.returncode == 0, (command, out.stderr)
        json.loads(out.stdout)
    csv = run_cli(
        "interfaces", "--order", "packets", "--format", "csv", "--data", str(data), *window
    )
    header, *lines = csv.stdout.splitlines()
    assert header.split(",")[-4:] == ["in_packets", "out_packets", "in_flows", "out_flows"]
    ranked = reports.top_interfaces(data, since=T0, until=T0 + SPAN, order="packets")
    assert [line.split(",")[-4:] for line in lines] == [
        [str(r.to_json()[k]) for k in ("in_packets", "out_packets", "in_flows", "out_flows")]
        for r in ranked
    ]
    status = run_cli("status", "--data", str(data))
    assert status.returncode == 0 and "raw" in status.stdout


def test_cli_filter_error_shows_caret(store) -> None:
    data, _ = store
    result = run_cli(
        "top", "--by", "srcip", "--filter", "proto tcp and port x", "--data", str(data)
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[1] == "  proto tcp and port x"
    assert lines[2] == "  " + " " * 19 + "^"


def test_a_huge_raw_scan_is_refused(store) -> None:
    data, _ = store
    reports.apply_config(QueryConfig(max_raw_bytes=1000))
    try:
        with pytest.raises(ReportError, match="GiB of raw flows"):
            reports.top(data, "srcip", since=T0, until=T0 + SPAN, use_rollups=False)
    finally:
        reports.apply_config(QueryConfig())


def test_drill_down_reports_share_one_filtered_scan(store, monkeypatch) -> None:
    """A page's reports over the same filtered raw flows read the files once; same answers."""
    from lanalyze.flows.query import filtered

    data, _ = store
    host = "host 10.0.0.7 or port 53"

    def page() -> list[object]:
        window = {"since": T0 + 123_456, "until": T0 + SPAN - 7}
        return [
            reports.top(data, "dstip", limit=0, filter=host, use_rollups=False, **window).rows,
            reports.top(data, "app", limit=0, filter=host, use_rollups=False, **window).rows,
            reports.series(data, bucket="5m", by="proto", filter=host, **window).points,
            reports.list_flows(data, filter=host, limit=30, **window),
            # A column the shared scan does not keep: this report reads the files.
            reports.top(data, "src_vlan", limit=0, filter=host, use_rollups=False, **window).rows,
        ]

    filtered.clear()
    monkeypatch.setattr(filtered, "MAX_ROWS", 0)  # every scan too big to keep: files read
    from_files = page()
    assert not filtered._entries
    monkeypatch.setattr(filtered, "MAX_ROWS", 2_000_000)
    first = page()
    assert filtered._entries
    reads: list[list[str]] = []
    original = filtered.flows

    def counting(connection, files, flt):  # type: ignore[no-untyped-def]
        reads.append([f for f in files if (f, flt.sql, flt.params) not in filtered._entries])
        return original(connection, files, flt)

    monkeypatch.setattr(filtered, "flows", counting)
    again = page()
    assert from_files == first == again
    assert reads and not any(reads)  # the second visit read no file


@pytest.mark.parametrize(
    "section",
    ["[flows.query]\nmax_raw_bytes = 1000\n", "[flows.rollup]\nquery_max_raw_bytes = 1000\n"],
)
def test_query_section_reaches_the_console_without_a_maintainer(store, section: str) -> None:
    """``lanalyze serve`` applies [flows.query] for its console and API: it used to reach
    them only through a rollup maintainer's start() in the same process."""
    from lanalyze.config import parse_config
    from lanalyze.serve import build_components

    data, _ = store
    config = parse_config(f"[flows]\nenabled = false\n[mail]\nenabled = false\n{section}")
    try:
        assert [c.name for c in build_components(config)] == ["web", "report-socket"]
        with pytest.raises(ReportError, match="GiB of raw flows"):
            reports.top(data, "srcip", since=T0, until=T0 + SPAN, use_rollups=False)
    finally:
        reports.apply_config(QueryConfig())


def test_times_before_1970_or_after_9999_are_refused(store) -> None:
    now = 1_700_000_000_000
    for text in ("0001-01-01", "0001-01-01T00:00+05:00", "1969-12-31T23:59Z", "-999999999d"):
        with pytest.raises(TimeError, match="1970"):
            parse_time(text, now)
    with pytest.raises(TimeError, match="9999"):
        parse_time("99999999999999999", now)
    assert parse_time("1970-01-01T00:00Z", now) == 0
    data, _ = store
    result = run_cli("top", "--by", "srcip", "--since", "0001-01-01", "--data", str(data))
    assert result.returncode == 2 and "1970" in result.stderr


def test_every_report_runs_through_the_backend_with_named_columns(store) -> None:
    """One interface for a second backend: every report's SQL goes through ``engine.use``'s
    backend, and its columns are named (``d0_srcip``, ``bucket``), not numbered."""
    import re

    from lanalyze.flows.query import engine

    data, _ = store
    seen: list[str] = []

    class Recording(engine.DuckDBBackend):
        def execute(self, statement):  # type: ignore[no-untyped-def]
            seen.append(statement.sql)
            return super().execute(statement)

    original = engine.backend()
    engine.use(Recording())
    try:
        window = {"since": T0, "until": T0 + SPAN}
        top = reports.top(data, "srcip", limit=3, use_rollups=False, **window)
        reports.series(data, by="app", bucket="10m", use_rollups=False, **window)
        reports.list_flows(data, limit=3, **window)
        reports.top_interfaces(data, **window)
        reports.interface_series(data, exporter="192.0.2.1", interface=1, **window)
        reports.status(data)
    finally:
        engine.use(original)
    assert len(seen) >= 6 and top.rows
    assert not [sql for sql in seen if re.search(r"\b[ck]\d+\b", sql)]
    assert any("AS d0_srcip" in sql for sql in seen)
    assert any("AS bucket" in sql for sql in seen)
    assert any("AS in_bytes" in sql for sql in seen)


def test_cli_list_names_protocols_and_csv_rates_are_short(store) -> None:
    data, _ = store
    window = ["--since", "2023-11-14T22:00:00Z", "--until", "2023-11-15T00:00:00Z"]
    table = run_cli("list", "-n", "50", "--data", str(data), *window)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    position = header.index("protocol")
    shown = {line[position:].split()[0] for line in lines}
    assert shown <= {"tcp", "udp", "icmp", "ipv6-icmp", "gre", "esp", "sctp"} and shown
    listed = run_cli("list", "-n", "5", "--format", "csv", "--data", str(data), *window)
    rows = list(csv_module.DictReader(io.StringIO(listed.stdout)))
    assert rows and all(not r["protocol"].isdigit() for r in rows)
    assert json.loads(
        run_cli("list", "-n", "1", "--format", "json", "--data", str(data), *window).stdout
    )[0]["protocol"] in (1, 6, 17, 47, 50, 58, 132)
    for command in (["top", "--by", "srcip"], ["series"], ["interfaces"]):
        out = run_cli(*command, "--format", "csv", "--data", str(data), *window)
        assert out.returncode == 0, (command, out.stderr)
        for row in csv_module.DictReader(io.StringIO(out.stdout)):
            rates = [k for k in row if k.endswith(("bps", "pps", "fps", "share", "_pct"))]
            assert rates, (command, row)
            for name in rates:
                # At most 3 decimals and no exponent (rates are averages).
                assert re.fullmatch(r"-?\d+(\.\d{1,3})?", row[name] or "0"), (command, row)


def test_csv_numbers() -> None:
    from lanalyze.flows.query.render import csv_number

    assert csv_number(1234.5678901234567) == "1234.568"
    assert csv_number(7.0) == "7" and csv_number(0.0001) == "0" and csv_number(-0.0001) == "0"
    assert csv_number(1e20) == "100000000000000000000"


def test_list_is_newest_first_across_overlapping_files(tmp_path: Path) -> None:
    """A file named by an early first flow (a compacted file, another writer's batch) may
    hold the newest flows: the list still shows the newest first."""
    from lanalyze.flows.store.synthetic import to_table
    from lanalyze.flows.store.writer import SegmentWriter

    start = T0 - 3_600_000  # a whole hour before T0
    columns = random_flows(40, start, start + 1000, seed=7)
    writer = SegmentWriter(tmp_path, "ovl")
    # Twelve small segments, one second apart, named by their first flow ...
    for n in range(12):
        part = {k: v[n * 3 : n * 3 + 3].copy() for k, v in columns.items()}
        part["time_received"][:] = start + 10_000 + n * 1000 + np.arange(3)
        writer.write(to_table(part))
    # ... and one whose first flow is the oldest of all but which holds the newest ones.
    late = {k: v[36:40].copy() for k, v in columns.items()}
    late["time_received"][:] = [start + 1, start + 50_000, start + 50_001, start + 50_002]
    writer.write(to_table(late))
    flows = reports.list_flows(tmp_path, since=start, until=T0, limit=3)
    assert [f.time_received for f in flows] == [start + 50_002, start + 50_001, start + 50_000]
    every = reports.list_flows(tmp_path, since=start, until=T0, limit=100)
    times = [f.time_received for f in every]
    assert times == sorted(times, reverse=True) and len(times) == 40


def test_flows_received_in_the_same_millisecond_list_in_a_defined_order(tmp_path: Path) -> None:
    # Stored in descending source order, in two files; the list breaks the tie by the
    # columns after the receive time (addresses as bytes), as the ClickHouse backend does.
    columns = random_flows(12, T0, T0 + 1000, seed=5)
    for name in ("time_received", "time_start", "time_end"):
        columns[name][:] = T0 + 500
    columns["exporter"][:] = columns["exporter"][0]
    columns["src_addr"][:] = [
        b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 0, 12 - i]) for i in range(12)
    ]
    write_flows(tmp_path, {k: v[:6] for k, v in columns.items()}, writer="a")
    write_flows(tmp_path, {k: v[6:] for k, v in columns.items()}, writer="b")
    listed = reports.list_flows(tmp_path, since=T0, until=T0 + 1000, limit=5)
    assert [r.src_addr for r in listed] == [f"10.0.0.{i}" for i in range(1, 6)]
