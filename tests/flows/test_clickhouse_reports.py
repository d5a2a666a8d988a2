"""Every report answers the same on ClickHouse as on the embedded store, over the same flows.

The flows go into a Parquet store (rolled up by the maintainer) and into a two-shard
ClickHouse cluster (real servers on loopback, ``tests/clickhouse.py``); each report of the
suite runs on both backends and the answers must be equal: numbers exactly, rows in the same
order (ranks tie-broken by key in both dialects).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from lanalyze.flows.config import QueryConfig, RollupConfig
from lanalyze.flows.errors import ReportError
from lanalyze.flows.query import engine, reports
from lanalyze.flows.query.clickhouse import ClickHouse, ClickHouseBackend, bind
from lanalyze.flows.query.dimensions import dimension, known_names
from lanalyze.flows.query.reports.exporters import stored_exporters
from lanalyze.flows.query.sql import Statement
from lanalyze.flows.query.timespec import iso
from lanalyze.flows.store.rollup import RollupMaintainer
from lanalyze.flows.store.synthetic import random_flows, write_flows
from lanalyze.web import api_flows
from tests.clickhouse import ClickHouseCluster
from tests.conftest import lanalyze_cmd
from tests.flows import clickhouse_schema

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (24 * HOUR)  # a midnight, UTC
SPAN = 3 * 24 * HOUR

WINDOWS = [
    (T0, T0 + SPAN),  # whole days
    (T0 + 1_234_567, T0 + 26 * HOUR + 98_765),  # ragged: hours, minutes and raw edges
    (T0 + 90_000, T0 + 150_000),  # about a minute
]
TOPS = [
    ("srcip", None, "bytes"),
    ("dstip,proto", "proto tcp", "packets"),
    ("ip", None, "flows"),
    ("port", "dst port 443 or dst port 53", "bytes"),
    ("app", None, "bytes"),
    ("conversation", "src net 10.0.0.0/28", "bytes"),
    ("conversation-ports", "bytes > 20000", "flows"),
    ("srcnet/26", None, "bytes"),
    ("net/30/64", "not proto icmp", "packets"),
    ("exporter,inif", None, "bytes"),
    ("dscp", "flags S and not flags R", "flows"),
    ("tos", "src as 64512", "bytes"),
]


# Enrichment names (issue 16) on some flows, null (unknown) on the others: ClickHouse keeps
# them as '' (a rollup sort key cannot be nullable) and must answer as Parquet's nulls do.
NAMES: dict[str, list[str | None]] = {
    "src_country": ["NL", "DE", "US", None],
    "dst_country": ["US", "NL", None],
    "src_as_name": ["Example BV", "Lab Net", None],
    "dst_as_name": ["Google", "Cloudflare", None],
    "src_net_name": ["office", "lab", None],
    "src_net_role": ["inside", None],
    "dst_net_name": ["office", None, None],
    "dst_net_role": ["outside", None],
    "exporter_name": ["edge-1", None],
    "in_if_name": ["uplink", "lan", None],
    "out_if_name": ["uplink", None],
    "app_name": ["https", None, None, None],
}
ENRICHED_TOPS = [
    ("srccountry", None, "bytes"),  # src_geo rollup
    ("country", None, "flows"),  # either side: src_geo and dst_geo
    ("dstasname", "dst country NL", "bytes"),
    ("netname", "not net name office", "packets"),
    ("srcnetname,srcnetrole", "dst country US or src net name lab", "bytes"),
    ("dstcountry,dstas", "not dst net role outside", "flows"),
    ("appname", None, "bytes"),  # raw: app_name, protocol, service port
    ("ifname", "in if name uplink", "flows"),
    ("exportername,srccountry", None, "bytes"),
    ("srcip", "src country DE and not dst as name Google", "bytes"),
    ("srccountry", "proto tcp", "packets"),  # raw: no rollup has both
]


def with_names(columns: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = len(columns["time_received"])
    for name, choices in NAMES.items():
        columns[name] = np.array(choices, dtype=object)[rng.integers(0, len(choices), rows)]
    return columns


@dataclasses.dataclass
class Stores:
    data: Path
    duckdb: engine.Backend
    clickhouse: ClickHouseBackend


@pytest.fixture(scope="module")
def stores(
    clickhouse_cluster: ClickHouseCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stores]:
    data = tmp_path_factory.mktemp("parity")
    columns = with_names(
        random_flows(20_000, T0, T0 + SPAN, seed=7, sources=300, sampling=(1, 1, 10)), seed=8
    )
    write_flows(data, columns, segment_ms=30 * 60_000)
    maintainer = RollupMaintainer(RollupConfig(minute_max_age=0, raw_max_age=0), data)
    try:
        maintainer.run_once(now=(T0 + SPAN + 3 * 24 * HOUR) / 1000)
    finally:
        maintainer.release()
    db = f"reports_{id(data) % 100_000}"
    clickhouse_schema.create(clickhouse_cluster, db)
    clickhouse_schema.insert(clickhouse_cluster, db, columns)
    before = engine.backend()
    clickhouse = ClickHouseBackend(clickhouse_schema.store_config(clickhouse_cluster, db))
    yield Stores(data, before, clickhouse)
    engine.use(before)
    clickhouse.close()


def both(stores: Stores, report: Callable[[], Any]) -> tuple[Any, Any]:
    engine.use(stores.duckdb)
    try:
        embedded = report()
        engine.use(stores.clickhouse)
        clustered = report()
    finally:
        engine.use(stores.duckdb)
    return embedded, clustered


def test_top_reports_equal(stores: Stores) -> None:
    for by, flt, order in TOPS:
        for since, until in WINDOWS:
            for use_rollups in (True, False):

                def report(
                    by: str = by,
                    flt: str | None = flt,
                    order: str = order,
                    since: int = since,
                    until: int = until,
                    use_rollups: bool = use_rollups,
                ) -> Any:
                    found = reports.top(
                        stores.data,
                        by,
                        since=since,
                        until=until,
                        order=order,
                        limit=0 if by in ("srcnet/26", "app") else 25,
                        filter=flt,
                        use_rollups=use_rollups,
                    )
                    return found.rows, found.total, found.keys

                embedded, clustered = both(stores, report)
                assert clustered == embedded, (by, flt, since, until, use_rollups)
    # Non-trivial answers: the whole window has every source and a total of every flow.
    rows, total, _ = both(stores, lambda: report("srcip", None, "bytes", T0, T0 + SPAN))[1]
    assert total.flows == 20_000 and len(rows) == 25


def test_enrichment_dimensions_and_filters_equal(stores: Stores) -> None:
    """Names and nulls: a top by a name has one unknown ("") row on both backends, a filter
    on a name keeps or drops the unknown ones alike, from rollups and from raw flows."""
    for by, flt, order in ENRICHED_TOPS:
        for since, until in WINDOWS:
            for use_rollups in (True, False):

                def report(
                    by: str = by,
                    flt: str | None = flt,
                    order: str = order,
                    since: int = since,
                    until: int = until,
                    use_rollups: bool = use_rollups,
                ) -> Any:
                    found = reports.top(
                        stores.data,
                        by,
                        since=since,
                        until=until,
                        order=order,
                        limit=25 if by == "srcip" else 0,
                        filter=flt,
                        use_rollups=use_rollups,
                    )
                    return found.rows, found.total, found.keys

                embedded, clustered = both(stores, report)
                assert clustered == embedded, (by, flt, since, until, use_rollups)
    # Non-trivial: every country and the unknown one, as text, over the whole window.
    rows, _, keys = both(stores, lambda: report("srccountry", None, "bytes", T0, T0 + SPAN))[1]
    assert sorted(row.values["srccountry"] for row in rows) == ["", "DE", "NL", "US"]
    assert sorted(keys, key=str) == [("DE",), ("NL",), ("US",), (None,)]
    rows, _, _ = both(
        stores, lambda: report("srcnetname", "src net name lab", "bytes", T0, T0 + SPAN)
    )[1]
    assert [row.values["srcnetname"] for row in rows] == ["lab"]


def test_series_equal(stores: Stores) -> None:
    cases = [
        (T0, T0 + SPAN, "1h", None, None),
        (T0 + 1_234_567, T0 + 26 * HOUR, "5m", "srcip", None),
        (T0, T0 + 2 * HOUR, "30s", "proto", "dst port 443"),
        (T0, T0 + SPAN, "1d", "ip", None),
        (T0 + HOUR, T0 + 5 * HOUR, "10m", "srcnet/28", "bytes > 1000"),
        # The embedded store's 6 h and week rollups: ClickHouse sums them from 1h and 1d.
        (T0, T0 + SPAN, "6h", "country", None),
        (T0 + 1_234_567, T0 + SPAN - 98_765, "6h", "srccountry", "not src net name office"),
        (T0 - 7 * 24 * HOUR, T0 + SPAN + 7 * 24 * HOUR, "1w", "dstcountry", None),
        (T0, T0 + SPAN, "1w", "netrole", "dst country NL"),
        (T0 + 1_234_567, T0 + 26 * HOUR, "30m", "appname", "app name https"),
    ]
    for since, until, bucket, by, flt in cases:
        embedded, clustered = both(
            stores,
            lambda since=since, until=until, bucket=bucket, by=by, flt=flt: reports.series(
                stores.data, since=since, until=until, bucket=bucket, by=by, filter=flt
            ),
        )
        assert clustered.points == embedded.points, (since, until, bucket, by, flt)
        assert clustered.groups == embedded.groups
        assert embedded.points


def test_flow_list_equal(stores: Stores) -> None:
    for since, until, flt, limit in [
        (T0, T0 + SPAN, None, 50),
        (T0 + HOUR, T0 + 30 * HOUR, "proto udp and dst port 53", 200),
        (T0, T0 + SPAN, "src host 10.0.0.7", 1000),
        (T0 + 90_000, T0 + 150_000, None, 5),
    ]:
        embedded, clustered = both(
            stores,
            lambda since=since, until=until, flt=flt, limit=limit: reports.list_flows(
                stores.data, since=since, until=until, filter=flt, limit=limit
            ),
        )
        assert clustered == embedded, (since, until, flt, limit)
        assert embedded


def test_interfaces_equal(stores: Stores) -> None:
    for since, until in WINDOWS:
        for order in ("bytes", "flows"):
            embedded, clustered = both(
                stores,
                lambda since=since, until=until, order=order: reports.top_interfaces(
                    stores.data, since=since, until=until, order=order, limit=0
                ),
            )
            assert clustered == embedded and embedded, (since, until, order)
    embedded, clustered = both(
        stores,
        lambda: reports.interface_series(
            stores.data,
            exporter="192.0.2.1",
            interface=3,
            since=T0 + 1_234_567,
            until=T0 + 30 * HOUR,
            bucket="15m",
        ),
    )
    assert clustered == embedded and embedded.points


def test_status_counts_the_same_flows(stores: Stores) -> None:
    embedded, clustered = both(stores, lambda: reports.status(stores.data))
    raw = {s.table: s for s in clustered}["raw"]
    assert (raw.rows, raw.first, raw.last) == (
        embedded[0].rows,
        embedded[0].first,
        embedded[0].last,
    )
    assert raw.files >= 2 and raw.bytes > 0  # the parts of both shards
    assert [s.table for s in clustered if s.rows] == ["raw"] + [
        f"{res}/{table}"
        for res in ("1d", "1h", "1m")
        for table in (s.table.split("/", 1)[1] for s in embedded[1:] if s.table.startswith("1d/"))
    ]


def test_values_are_bound_not_written_into_the_text() -> None:
    # Bytes would render as b'..' (a syntax error on the server): they travel as hex text.
    sql, params = bind(
        Statement("SELECT x WHERE a = ? AND b % ? = ? AND c = ?", [b"\x00'", 5, "x'", 7])
    )
    assert sql == ("SELECT x WHERE a = unhex(%(p0)s) AND b %% %(p1)s = %(p2)s AND c = %(p3)s")
    assert params == {"p0": "0027", "p1": 5, "p2": "x'", "p3": 7}


def test_a_hostile_filter_value_is_a_value(stores: Stores) -> None:
    backend = stores.clickhouse
    # A string parameter with quotes and backslashes comes back as itself.
    text = "x' OR 1=1 --\\'"
    assert backend.execute(Statement("SELECT ?", [text])) == [(text.encode(),)]


def test_the_commands_answer_from_clickhouse_when_the_store_says_so(
    stores: Stores, tmp_path: Path, clickhouse_cluster: ClickHouseCluster
) -> None:
    """``[flows.store] backend = "clickhouse"`` is all a report command needs: its flow
    directory here is empty, so every row it prints came from the cluster."""
    store = stores.clickhouse.store
    config = tmp_path / "lanalyze.toml"
    servers = ", ".join(f'"{server}"' for server in store.servers)
    config.write_text(
        f'[flows.store]\nbackend = "clickhouse"\nservers = [{servers}]\n'
        f'cluster = "{store.cluster}"\ndatabase = "{store.database}"\n'
    )
    empty = tmp_path / "flows"
    (empty / "raw").mkdir(parents=True)
    window = ["--since", iso(T0), "--until", iso(T0 + SPAN)]
    command = ["flows", "top", "--by", "srcip", "-n", "5", "--format", "json"]
    result = subprocess.run(
        [*lanalyze_cmd(), "--config", str(config), *command, "--data", str(empty), *window],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = reports.top(stores.data, "srcip", since=T0, until=T0 + SPAN, limit=5)
    assert json.loads(result.stdout) == [
        {k: v for k, v in row.to_json().items() if k in ("srcip", "bytes", "packets", "flows")}
        for row in expected.rows
    ]


def test_stored_exporters_equal(stores: Stores) -> None:
    embedded, clustered = both(stores, lambda: stored_exporters(stores.data))
    assert clustered.rows == embedded.rows and len(embedded.rows) == 2


def test_the_raw_budget_stops_a_clickhouse_query(stores: Stores) -> None:
    engine.apply_config(QueryConfig(max_raw_bytes=64 * 1024))
    engine.use(stores.clickhouse)
    try:
        with pytest.raises(ReportError, match="would read more than"):
            reports.top(stores.data, "srcip", since=T0, until=T0 + SPAN, filter="bytes > 1000")
        engine.apply_config(QueryConfig())
        assert reports.top(
            stores.data, "srcip", since=T0, until=T0 + SPAN, filter="bytes > 1000"
        ).rows
    finally:
        engine.apply_config(QueryConfig())
        engine.use(stores.duckdb)


def test_the_api_answers_from_clickhouse_when_the_backend_is_chosen(
    stores: Stores, tmp_path: Path
) -> None:
    """The console's API needs nothing but the backend: its flow directory is empty here."""
    empty = tmp_path / "flows"
    (empty / "raw").mkdir(parents=True)
    app = Starlette(routes=api_flows.routes)
    app.state.flow_dir = empty
    since, until = T0 + 1_234_000, T0 + 30 * HOUR
    window = {"since": iso(since), "until": iso(until)}
    engine.use(stores.clickhouse)
    try:
        with TestClient(app) as client:
            top = client.get("/api/flows/top", params={"by": "dstip", "n": "5", **window})
            series = client.get(
                "/api/flows/series", params={"by": "proto", "bucket": "1h", **window}
            )
            listed = client.get("/api/flows/list", params={"n": "30", **window})
            ifaces = client.get("/api/flows/interfaces", params={"n": "0", **window})
    finally:
        engine.use(stores.duckdb)
        stores.clickhouse.close()
    for response in (top, series, listed, ifaces):
        assert response.status_code == 200, response.text
    expected_top = reports.top(stores.data, "dstip", since=since, until=until, limit=5).to_json()
    assert (
        top.json()["rows"] == expected_top["rows"] and top.json()["total"] == expected_top["total"]
    )
    expected_series = reports.series(
        stores.data, since=since, until=until, bucket="1h", by="proto"
    ).to_json()
    assert series.json()["points"] == expected_series["points"]
    expected_list = reports.list_flows(stores.data, since=since, until=until, limit=30)
    assert listed.json()["flows"] == [flow.to_json() for flow in expected_list]
    expected_ifaces = reports.top_interfaces(stores.data, since=since, until=until, limit=0)
    assert ifaces.json()["interfaces"] == [row.to_json() for row in expected_ifaces]


def test_every_dimension_has_clickhouse_keys() -> None:
    # DuckDB-only words (casts, shifts, least/greatest over strings) never reach the server.
    names = [*known_names(), "srcnet/24", "dstnet/48", "net/16", "srcnet/24/48"]
    dialect = ClickHouse("db")
    for name in names:
        for key in dialect.keys(dimension(name)):
            assert not re.search(r"::|>>|\bleast\(|\bgreatest\(|\bTRUE\b", key.sql), name
