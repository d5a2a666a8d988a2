"""Enrichment at ingest (issue 16): country, AS, network, interface and application names.

Small ``.mmdb`` files are written with ``mmdb_writer`` and read by the real ``maxminddb``
reader; the flows go through the real collector (``lanalyze flows collect`` with a config
file, fed generated IPFIX), then reports group and filter by the new dimensions, from raw
flows and from the rollups, and the CLI prints them as CSV.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lanalyze.flows import catalogue
from lanalyze.flows.config import RollupConfig
from lanalyze.flows.enrich import Enricher
from lanalyze.flows.enrich.config import EnrichConfig, InterfaceRule, NetworkAttributes
from lanalyze.flows.enrich.geoip import GeoIP
from lanalyze.flows.enrich.networks import NetworkTable
from lanalyze.flows.enrich.ranges import AddressKeys, from_intervals
from lanalyze.flows.errors import FilterError
from lanalyze.flows.query import reports
from lanalyze.flows.query.compile import compile_filter
from lanalyze.flows.query.dimensions import parse_dimensions
from lanalyze.flows.store.rollup import RollupMaintainer
from tests.conftest import free_port, lanalyze_cmd
from tests.flows.test_collect import send, stored, wait_until


def mapped(text: str) -> bytes:
    address = ipaddress.ip_address(text)
    if address.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + address.packed
    return address.packed


def addresses(*texts: str) -> np.ndarray:
    return np.array([mapped(t) for t in texts], dtype="S16")


def write_mmdb(path: Path, networks: dict[str, dict[str, Any]], kind: str) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=kind)
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))


COUNTRIES = {
    "203.0.113.0/24": {"country": {"iso_code": "NL"}},
    "198.51.100.0/24": {"country": {"iso_code": "US"}},
    "2001:db8:1::/48": {"country": {"iso_code": "DE"}},
}
ASES = {
    "203.0.113.0/24": {
        "autonomous_system_number": 64500,
        "autonomous_system_organization": "Example Net",
    },
    "198.51.100.0/24": {
        "autonomous_system_number": 64501,
        "autonomous_system_organization": "OtherNet",
    },
}


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("mmdb")
    write_mmdb(base / "country.mmdb", COUNTRIES, "GeoLite2-Country")
    write_mmdb(base / "asn.mmdb", ASES, "GeoLite2-ASN")
    return base / "country.mmdb", base / "asn.mmdb"


# -- networks ----------------------------------------------------------------------------------


def test_networks_longest_prefix_wins_for_ipv4_and_ipv6() -> None:
    table = NetworkTable(
        {
            "0.0.0.0/0": NetworkAttributes(name="internet"),
            "10.0.0.0/8": NetworkAttributes(name="corp", role="inside"),
            "10.1.0.0/16": NetworkAttributes(name="office", role="inside"),
            "10.1.2.0/24": NetworkAttributes(name="lab", role="dmz"),
            "2001:db8::/32": NetworkAttributes(name="v6", role="inside"),
            "2001:db8:ff::/48": NetworkAttributes(name="v6-guest", role="guest"),
        }
    )
    probe = addresses(
        "10.1.2.3", "10.1.3.1", "10.1.255.255", "10.2.0.0", "10.255.255.255", "11.0.0.1",
        "0.0.0.0", "255.255.255.255", "2001:db8::1", "2001:db8:ff::9", "2001:db9::1", "::1",
    )  # fmt: skip
    assert table.names_of(probe).tolist() == [
        "lab", "office", "office", "corp", "corp", "internet",
        "internet", "internet", "v6", "v6-guest", "", "",
    ]  # fmt: skip
    assert table.roles_of(probe).tolist() == [
        "dmz", "inside", "inside", "inside", "inside", "",
        "", "", "inside", "guest", "", "",
    ]  # fmt: skip
    assert NetworkTable({}).roles_of(probe).tolist() == [""] * len(probe)
    # A handful of networks is answered through the /20 block table too (blocks holding
    # several networks, like 10.1.0.0/20 with the lab's /24, by the binary search).
    assert table.index.v4_block is not None


def test_ranges_split_ipv4_and_ipv6_and_agree_on_mixed_batches() -> None:
    # Disjoint ranges over the whole space: ::ffff:10.0.0.0/104 is IPv4 only, the first and
    # the last hold both kinds, the one valued 2 crosses the end of the IPv4-mapped space.
    ten = int.from_bytes(mapped("10.0.0.0"), "big")
    top = int.from_bytes(mapped("255.255.255.0"), "big")
    index = from_intervals(
        [
            (0, ten - 1, 0),
            (ten, ten + 2**24 - 1, 1),
            (ten + 2**24, top - 1, 0),
            (top, 0xFFFF_0001_0000_0000_0001, 2),
            (0xFFFF_0001_0000_0000_0002, 2**128 - 1, 0),
        ]
    )
    probe = addresses("10.1.1.1", "11.0.0.0", "255.255.255.9", "::1:0:0:0:0", "2001:db8::1")
    whole = index.lookup(AddressKeys.of(probe)).tolist()
    assert whole == [1, 0, 2, 2, 0]
    # One address at a time (all-IPv4 or all-IPv6 batches take other paths): the same.
    assert [index.lookup(AddressKeys.of(probe[i : i + 1]))[0] for i in range(5)] == whole


def test_range_index_block_table_agrees_with_a_binary_search() -> None:
    """Over BLOCK_TABLE_MIN ranges the IPv4 side answers most addresses from a /20 table:
    the same answers as the plain search, at range edges, inside and across blocks."""
    from lanalyze.flows.enrich.ranges import BLOCK_TABLE_MIN, RangeIndex

    rng = np.random.default_rng(5)
    bounds = np.unique(rng.integers(0, 2**32, max(3 * BLOCK_TABLE_MIN, 12288), dtype=np.uint64))
    starts, ends = bounds[0::2][: len(bounds) // 2], bounds[1::2][: len(bounds) // 2]
    values = np.arange(len(starts), dtype=np.int32)
    empty6 = (np.zeros(0, "S16"), np.zeros(0, "S16"), np.zeros(0, np.int32))
    big = RangeIndex((starts, ends, values), empty6)
    assert big.v4_block is not None
    keys = np.concatenate(
        (starts, ends, starts - 1, ends + 1, rng.integers(0, 2**32, 20_000, dtype=np.uint64))
    )
    keys = keys[keys < 2**32].astype(np.uint32)
    position = np.searchsorted(starts, keys, side="right") - 1
    inside = (position >= 0) & (keys <= ends[np.maximum(position, 0)])
    expected = np.where(inside, values[np.maximum(position, 0)], -1)
    mapped_keys = np.zeros((len(keys), 16), dtype=np.uint8)
    mapped_keys[:, 10:12] = 0xFF
    mapped_keys[:, 12:] = keys.astype(">u4").view(np.uint8).reshape(-1, 4)
    found = big.lookup(AddressKeys.of(mapped_keys.view("S16").reshape(-1)))
    assert (found == expected).all()


# -- GeoIP -------------------------------------------------------------------------------------


def countries(geo: GeoIP, *texts: str) -> list[str | None]:
    result = geo.lookup(AddressKeys.of(addresses(*texts)))
    names: list[str | None] = result.countries.column(result.country).to_pylist()
    return names


def test_geoip_answers_reloads_and_survives_a_missing_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    country = tmp_path / "country.mmdb"
    geo = GeoIP(country, None, reload_interval=1.0)
    with caplog.at_level(logging.WARNING):
        geo.refresh(now=0.0)
        answers = geo.lookup(AddressKeys.of(addresses("203.0.113.9")))
    assert answers.country[0] == -1  # missing file: empty, not a crash
    warnings = [r for r in caplog.records if r.getMessage() == "flows.enrich.database_unusable"]
    assert len(warnings) == 1 and str(country) in str(warnings[0].__dict__.get("file"))
    geo.refresh(now=1.5)  # still missing: no second warning
    assert len([r for r in caplog.records if "database_unusable" in r.getMessage()]) == 1

    write_mmdb(country, COUNTRIES, "GeoLite2-Country")
    geo.refresh(now=3.0)
    assert countries(geo, "203.0.113.9", "2001:db8:1::5") == ["NL", "DE"]
    write_mmdb(country, {"203.0.113.0/24": {"country": {"iso_code": "BE"}}}, "GeoLite2-Country")
    stamp = os.stat(country).st_mtime_ns + 10**9  # a new modification time, whatever the clock
    os.utime(country, ns=(stamp, stamp))
    geo.refresh(now=3.5)  # within reload_interval: not checked yet
    assert countries(geo, "203.0.113.9") == ["NL"]
    geo.refresh(now=5.0)
    assert countries(geo, "203.0.113.9") == ["BE"]
    assert geo.counters.reloads == 1


def test_geoip_ranges_match_the_reference_reader(databases: tuple[Path, Path]) -> None:
    """The vectorised ranges answer what maxminddb's own lookup answers, address by address,
    at the networks' edges and between them."""
    import maxminddb

    geo = GeoIP(*databases)
    geo.refresh(now=0.0)
    probe = [
        "203.0.112.255", "203.0.113.0", "203.0.113.255", "203.0.114.0", "198.51.100.77",
        "0.0.0.0", "255.255.255.255", "2001:db8:1::", "2001:db8:1:ffff:ffff:ffff:ffff:ffff",
        "2001:db8:2::", "2001:db8::1", "::", "::1", "ffff::1",
    ]  # fmt: skip
    result = geo.lookup(AddressKeys.of(addresses(*probe)))
    with (
        maxminddb.open_database(str(databases[0])) as country,
        maxminddb.open_database(str(databases[1])) as asn,
    ):
        for position, text in enumerate(probe):
            expected_country = (country.get(text) or {}).get("country", {}).get("iso_code")
            names = result.countries.column(result.country).to_pylist()
            assert names[position] == expected_country, text
            expected_as = (asn.get(text) or {}).get("autonomous_system_number", 0)
            assert result.asn[position] == expected_as, text


def test_geoip_refuses_a_database_over_its_memory(
    databases: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    geo = GeoIP(databases[0], None, max_bytes=64)
    with caplog.at_level(logging.WARNING):
        geo.refresh(now=0.0)
    assert geo.country is not None and geo.country.loaded is None
    assert "database_memory" in caplog.text or any(
        "database_memory" in str(r.__dict__.get("reason")) for r in caplog.records
    )


def batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    columns = catalogue.empty_batch(len(rows))
    for index, row in enumerate(rows):
        for name, value in row.items():
            columns[name][index] = mapped(value) if isinstance(value, str) else value
    return columns


def test_enricher_exporter_as_wins_and_names_only_its_own(databases: tuple[Path, Path]) -> None:
    rows = [
        {
            "src_addr": "10.1.0.5",
            "dst_addr": "203.0.113.9",
            "protocol": 6,
            "src_port": 50000,
            "dst_port": 443,
        },
        {"src_addr": "10.1.0.5", "dst_addr": "198.51.100.7", "dst_as": 65010, "protocol": 17},
        {"src_addr": "2001:db8:1::5", "dst_addr": "203.0.113.9", "protocol": 1},
    ]
    for as_source, expected_as, expected_name in (
        ("exporter", [64500, 65010, 64500], ["Example Net", None, "Example Net"]),
        ("geoip", [64500, 64501, 64500], ["Example Net", "OtherNet", "Example Net"]),
    ):
        config = EnrichConfig(
            geoip_country=databases[0], geoip_asn=databases[1], as_source=as_source
        )
        enricher = Enricher(config, {"10.1.0.0/16": NetworkAttributes(name="office")})
        columns = batch(rows)
        labels = enricher.enrich(columns)
        assert columns["dst_as"].tolist() == expected_as
        assert labels["dst_as_name"].to_pylist() == expected_name
        assert labels["src_country"].to_pylist() == [None, None, "DE"]
        assert labels["dst_country"].to_pylist() == ["NL", "US", "NL"]
        assert labels["src_net_name"].to_pylist() == ["office", "office", None]
        assert "app_name" not in labels  # no IE 95: the port table names it when shown
        record = catalogue.to_record_batch(columns, None, labels)
        assert record.schema == catalogue.batch_schema()
        stored = catalogue.as_stored(pa.Table.from_batches([record]))
        assert stored.schema == catalogue.arrow_schema()
        assert stored.column("dst_as_name").to_pylist() == expected_name


def test_enricher_classifies_interfaces_and_names_applications(tmp_path: Path) -> None:
    from lanalyze.flows.store.paths import interfaces_path

    flow_dir = tmp_path / "flows"
    flow_dir.mkdir()
    interfaces_path(flow_dir).write_text(
        '{"192.0.2.1": {"5": {"name": "xe-0/0/1"}, "7": {"name": "ge-1/0/0"}}}'
    )
    config = EnrichConfig(
        exporters=[{"match": ["192.0.2.0/24"], "name": "edge1"}],  # type: ignore[list-item]
        interfaces=[
            InterfaceRule(if_name="^xe-", boundary="external", provider="transit-a"),
            InterfaceRule(exporter=["192.0.2.1"], if_index=[9], name="core", boundary="internal"),
        ],
        applications={"13:453": "webex"},
    )
    enricher = Enricher(config, {}, flow_dir)
    webex = 13 << 24 | 453
    columns = batch(
        [
            {"exporter": "192.0.2.1", "in_if": 5, "out_if": 9, "app_id": webex},
            {
                "exporter": "192.0.2.1",
                "in_if": 7,
                "out_if": 5,
                "app_id": 3 << 24 | 22,
                "protocol": 6,
            },
            {"exporter": "198.51.100.1", "in_if": 5, "out_if": 9, "app_id": 13 << 24 | 1},
        ]
    )
    labels = enricher.enrich(columns)
    assert labels["exporter_name"].to_pylist() == ["edge1", "edge1", None]
    assert labels["in_if_name"].to_pylist() == ["xe-0/0/1", "ge-1/0/0", None]
    assert labels["out_if_name"].to_pylist() == ["core", "xe-0/0/1", None]
    assert labels["in_if_boundary"].to_pylist() == ["external", None, None]
    assert labels["out_if_boundary"].to_pylist() == ["internal", "external", None]
    assert labels["in_if_provider"].to_pylist() == ["transit-a", None, None]
    assert labels["app_name"].to_pylist() == ["webex", "ssh", "13:1"]


def test_interface_pairs_agree_with_a_sort() -> None:
    """The flag table (small ifIndex values) and the sort (large ones) find the same pairs."""
    from lanalyze.flows.enrich import _interface_pairs

    rng = np.random.default_rng(7)
    for top in (5, 2**31):
        code = rng.integers(0, 3, 500).astype(np.intp)
        in_if = rng.integers(0, 5, 500).astype(np.uint32) * (top // 5)
        out_if = rng.integers(0, 5, 500).astype(np.uint32)
        pairs, inverse = _interface_pairs(code, in_if, out_if)
        expected = [
            (int(c), int(i))
            for c, i in zip(
                np.concatenate((code, code)), np.concatenate((in_if, out_if)), strict=True
            )
        ]
        assert [pairs[i] for i in inverse.tolist()] == expected
        assert pairs == sorted(set(expected))


def test_name_registry_keeps_one_dictionary_and_starts_again_when_full() -> None:
    from lanalyze.flows.enrich.names import NameRegistry

    registry = NameRegistry(limit=4)
    first = registry.column(["eth0", None, "eth1"], np.array([0, 1, 2, 0]))
    second = registry.column(["eth1", "eth0"], np.array([1, 0]))
    assert first.to_pylist() == ["eth0", None, "eth1", "eth0"]
    assert second.to_pylist() == ["eth0", "eth1"]
    assert second.dictionary.equals(first.dictionary)  # the same dictionary: written once
    third = registry.column(["eth2", "eth3", "eth4"], np.array([2, -1]))
    assert third.to_pylist() == ["eth4", None]
    assert len(registry) == 3  # full: started again, bounded


def test_filters_and_dimensions_of_the_names() -> None:
    assert compile_filter("src country nl").params == ("NL",)
    flt = compile_filter('dst as name "Example Net" and not net name office')
    assert flt.params == ("Example Net", "office", "office")
    assert flt.columns == {"dst_as_name", "src_net_name", "dst_net_name"}
    assert compile_filter("in if boundary External").params == ("external",)
    for bad in ("src country NLD", "if boundary left", "net name", 'app name "x'):
        with pytest.raises(FilterError):
            compile_filter(bad)
    names = (
        "srccountry dstcountry country srcas dstas as srcasname dstasname srcnetname dstnetname "
        "netname srcnetrole dstnetrole inifname outifname inifboundary outifboundary appname"
    )
    for name in names.split():
        assert parse_dimensions(name)[0].needs


def test_reports_name_the_names_of_a_store_without_them(tmp_path: Path) -> None:
    """Enrichment not configured: segments omit the name columns, and a report or a filter
    naming them answers "unknown" (null) instead of DuckDB's "column not found", on the raw
    path and on the console's shared filtered flows."""
    import duckdb

    from lanalyze.flows.query import filtered
    from lanalyze.flows.store.writer import SegmentWriter

    now = int(time.time() * 1000)
    columns = batch([{"src_addr": "10.1.0.5", "dst_addr": "203.0.113.9", "bytes": 100}] * 3)
    columns["time_received"][:] = now
    writer = SegmentWriter(tmp_path / "flows", "w0")
    (path,) = writer.write([catalogue.to_record_batch(columns)])
    assert "src_country" not in pq.read_schema(path).names
    assert _top(tmp_path, "srccountry", rollups=False) == {"": 300}
    assert _top(tmp_path, "srcip", "src country NL", rollups=False) == {}
    assert _top(tmp_path, "srcip", "not net name office", rollups=False) == {"10.1.0.5": 300}
    shared = filtered.flows(duckdb.connect(), [str(path)], compile_filter("src country NL"))
    assert shared is not None and shared.num_rows == 0


# -- through the real collector ----------------------------------------------------------------

TEMPLATE_V4 = 300
TEMPLATE_V6 = 301
FIELDS = [(7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (10, 4), (14, 4), (16, 4), (17, 4), (95, 4)]
WEBEX = 13 << 24 | 453


def _template(template_id: int, address_ie: tuple[int, int, int]) -> bytes:
    ie_src, ie_dst, length = address_ie
    fields = [(ie_src, length), (ie_dst, length), *FIELDS]
    body = struct.pack(">HH", template_id, len(fields)) + b"".join(
        struct.pack(">HH", e, n) for e, n in fields
    )
    return struct.pack(">HH", 2, 4 + len(body)) + body


def _record(src: str, dst: str, sport: int, dport: int, proto: int, nbytes: int, **k: int) -> bytes:
    return (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + struct.pack(
            ">HHBQQIIIII",
            sport,
            dport,
            proto,
            nbytes,
            1,
            k.get("in_if", 0),
            k.get("out_if", 0),
            k.get("src_as", 0),
            k.get("dst_as", 0),
            k.get("app_id", 0),
        )
    )


def _data_set(template_id: int, records: list[bytes]) -> bytes:
    return struct.pack(">HH", template_id, 4 + sum(map(len, records))) + b"".join(records)


def _message(sets: list[bytes], sequence: int) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body), int(time.time()), sequence, 1) + body


RECORDS_V4 = [
    _record("10.1.0.5", "203.0.113.9", 50000, 443, 6, 1000, in_if=3, out_if=5),
    _record("10.2.0.7", "198.51.100.20", 5353, 53, 17, 200, in_if=3, out_if=5, dst_as=65010),
    _record("203.0.113.77", "10.1.9.9", 443, 50001, 6, 3000, in_if=5, out_if=3, app_id=WEBEX),
]
RECORDS_V6 = [_record("2001:db8:1::5", "2001:db8:ff::1", 40000, 22, 6, 700, in_if=5, out_if=3)]
ROUNDS = 5


@pytest.fixture(scope="module")
def collected(
    tmp_path_factory: pytest.TempPathFactory, databases: tuple[Path, Path]
) -> Iterator[tuple[Path, Path]]:
    """(config file, data directory) after ROUNDS copies of the records went through a
    collector with every kind of enrichment configured."""
    base = tmp_path_factory.mktemp("enrich")
    data = base / "data"
    port = free_port(socket.SOCK_DGRAM)
    config = base / "lanalyze.toml"
    config.write_text(
        f"""
[general]
data_dir = "{data}"
[flows]
listen = ["127.0.0.1:{port}"]
workers = 1
[flows.rollup]
enabled = false
[flows.enrich]
geoip_country = "{databases[0]}"
geoip_asn = "{databases[1]}"
applications = {{ "13:453" = "webex" }}
[[flows.enrich.exporters]]
match = ["127.0.0.0/8"]
name = "edge1"
[[flows.enrich.interfaces]]
if_index = [5]
name = "uplink"
boundary = "external"
provider = "transit-a"
[[flows.enrich.interfaces]]
if_index = [3]
name = "lan"
boundary = "internal"
[flows.networks]
"10.0.0.0/8" = {{ name = "corp", role = "inside" }}
"10.1.0.0/16" = {{ name = "office", role = "inside" }}
"2001:db8:ff::/48" = {{ name = "guest", role = "guest" }}
"""
    )
    log = (base / "collect.log").open("w")
    proc = subprocess.Popen(
        [*lanalyze_cmd(), "--config", str(config), "flows", "collect"], stdout=log, stderr=log
    )
    try:
        wait_until(lambda: "flows.ready" in (base / "collect.log").read_text(), what="ready")
        templates = [_template(TEMPLATE_V4, (8, 12, 4)), _template(TEMPLATE_V6, (27, 28, 16))]
        datagrams = []
        for number in range(ROUNDS):
            sets = [_data_set(TEMPLATE_V4, RECORDS_V4), _data_set(TEMPLATE_V6, RECORDS_V6)]
            datagrams.append(_message((templates if number == 0 else []) + sets, number * 4))
        send(port, datagrams)
        total = ROUNDS * (len(RECORDS_V4) + len(RECORDS_V6))
        wait_until(lambda: stored(data) == total, what=f"{total} flows stored")
        yield config, data
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _top(data: Path, by: str, flt: str | None = None, rollups: bool = True) -> dict[Any, int]:
    report = reports.top(
        data / "flows", by, since=0, until=int(time.time() * 1000) + 60_000, limit=0,
        filter=flt, use_rollups=rollups,
    )  # fmt: skip
    return {
        (
            next(iter(row.values.values())) if len(row.values) == 1 else tuple(row.values.values())
        ): row.bytes
        for row in report.rows
    }


def test_collector_stores_the_names(collected: tuple[Path, Path]) -> None:
    _config, data = collected
    n = ROUNDS
    assert _top(data, "dstcountry") == {"NL": 1000 * n, "US": 200 * n, "": 3700 * n}
    assert _top(data, "country") == {"NL": 4000 * n, "US": 200 * n, "DE": 700 * n, "": 4900 * n}
    # The exporter's AS (65010) wins over the database's; the name only beside its own.
    assert _top(data, "dstas,dstasname") == {
        (64500, "Example Net"): 1000 * n,
        (65010, ""): 200 * n,
        (0, ""): 3700 * n,
    }
    assert _top(data, "srcnetname,srcnetrole") == {
        ("office", "inside"): 1000 * n,
        ("corp", "inside"): 200 * n,
        ("", ""): 3700 * n,
    }
    assert _top(data, "netname", "net name office") == {"office": 4000 * n, "": 4000 * n}
    assert _top(data, "appname") == {
        "https": 1000 * n,
        "domain": 200 * n,
        "webex": 3000 * n,
        "ssh": 700 * n,
    }
    assert _top(data, "inifboundary,outifname") == {
        ("internal", "uplink"): 1200 * n,
        ("external", "lan"): 3700 * n,
    }
    assert _top(data, "exportername") == {"edge1": 4900 * n}
    assert _top(data, "srcip", "src country NL and dst net role inside") == {
        "203.0.113.77": 3000 * n
    }
    assert _top(data, "dstip", 'dst as name "Example Net"') == {"203.0.113.9": 1000 * n}
    assert _top(data, "dstip", "dst as 65010") == {"198.51.100.20": 200 * n}
    assert _top(data, "srcip", "not net name office and not net role guest") == {
        "10.2.0.7": 200 * n
    }


def test_rollups_keep_country_as_and_network_names(collected: tuple[Path, Path]) -> None:
    _config, data = collected
    maintainer = RollupMaintainer(RollupConfig(), data / "flows")
    try:
        maintainer.run_once(now=time.time() + 10)
    finally:
        maintainer.release()
    for by, flt in (
        ("srccountry", None),
        ("country", None),
        ("dstas,dstasname", None),
        ("srcnetname,srcnetrole", "src country NL"),
        ("netname", None),
    ):
        report = reports.top(
            data / "flows", by, since=0, until=int(time.time() * 1000) + 60_000, limit=0,
            filter=flt,
        )  # fmt: skip
        assert "geo" in report.plan, (by, report.plan)
        assert _top(data, by, flt) == _top(data, by, flt, rollups=False), by


def test_cli_csv_by_country(collected: tuple[Path, Path]) -> None:
    config, _data = collected
    result = subprocess.run(
        [*lanalyze_cmd(), "--config", str(config), "flows", "top", "--by", "dstcountry,dstasname",
         "--format", "csv", "--since", "-1d", "--no-server", "--filter", "dst country NL"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("NL,Example Net,"), result.stdout


def test_import_enriches_like_the_collector(tmp_path: Path) -> None:
    """``flows import`` (store_packets) runs the same enricher as the workers."""
    from lanalyze.flows.config import FlowsConfig
    from lanalyze.flows.decode import Packet
    from lanalyze.flows.importer import store_packets

    config = FlowsConfig.model_validate(
        {"networks": {"10.1.0.0/16": {"name": "office", "role": "inside"}}}
    )
    datagram = _message([_template(TEMPLATE_V4, (8, 12, 4)), _data_set(TEMPLATE_V4, RECORDS_V4)], 0)
    result = store_packets([Packet(datagram, "192.0.2.1", 1_700_000_000_000)], tmp_path, config)
    assert result.flows == 3
    assert stored(tmp_path, "list(src_net_role order by src_addr)") == ["inside", None, None]
    assert stored(tmp_path, "count(app_name)") == 1  # only the flow with an application id
