"""The exporter in the filter language (nfdump's ``router ip``) and as a report dimension."""

from __future__ import annotations

import duckdb
import pytest

from lanalyze.flows.errors import FilterError
from lanalyze.flows.query.compile import compile_filter
from lanalyze.flows.query.dimensions import dimension

V4 = b"\x00" * 10 + b"\xff\xff"


def v4(a: int, b: int, c: int, d: int) -> bytes:
    return V4 + bytes((a, b, c, d))


# Two routers numbering their interfaces alike, and one IPv6 exporter.
ROWS = [
    # exporter, in_if, out_if, id
    (v4(127, 0, 0, 2), 1, 2, 1),
    (v4(127, 0, 0, 2), 2, 1, 2),
    (v4(127, 0, 0, 3), 1, 2, 3),
    (v4(127, 0, 0, 3), 3, 1, 4),
    (bytes.fromhex("20010db8000000000000000000000009"), 1, 2, 5),
]


@pytest.fixture(scope="module")
def flows() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE f (exporter BLOB, in_if UINTEGER, out_if UINTEGER, id INTEGER)")
    con.executemany("INSERT INTO f VALUES (?, ?, ?, ?)", ROWS)
    return con


def matching(con: duckdb.DuckDBPyConnection, text: str) -> list[int]:
    compiled = compile_filter(text)
    assert compiled.columns >= {"exporter"}
    rows = con.execute(
        f"SELECT id FROM f WHERE {compiled.sql} ORDER BY id", list(compiled.params)
    ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("router ip 127.0.0.2", [1, 2]),
        ("ROUTER IP 127.0.0.3", [3, 4]),
        ("exporter 127.0.0.3", [3, 4]),
        ("exporter ip 127.0.0.2", [1, 2]),
        ("router ip 2001:db8::9", [5]),
        ("router net 127.0.0.3/32", [3, 4]),
        ("router net 127.0.0.0/30", [1, 2, 3, 4]),
        ("router net 127.0.0.0 255.0.0.0", [1, 2, 3, 4]),
        ("exporter net 2001:db8::/32", [5]),
        ("router ip 127.0.0.2 and if 1", [1, 2]),
        ("router ip 127.0.0.3 and in if 1", [3]),
        ("in if 1 and not router ip 127.0.0.3", [1, 5]),
        ("router ip 127.0.0.2 or router ip 127.0.0.3", [1, 2, 3, 4]),
    ],
)
def test_router_terms_match(flows: duckdb.DuckDBPyConnection, text: str, ids: list[int]) -> None:
    assert matching(flows, text) == ids


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("router 127.0.0.2", 7, "expected 'ip' or 'net' after 'router'"),
        ("router ip 127.0.0.300", 10, "address"),
        ("exporter net 10.0.0.0/40", 13, "network"),
        ("router ip", 9, "address"),
    ],
)
def test_router_errors_point_at_the_mistake(text: str, column: int, message: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(text)
    assert info.value.column == column
    assert message in info.value.message


def test_exporter_values_travel_as_parameters() -> None:
    compiled = compile_filter("router ip 127.0.0.2 and router net 10.0.0.0/8")
    assert "127" not in compiled.sql and "10." not in compiled.sql
    assert compiled.params == (v4(127, 0, 0, 2), v4(10, 0, 0, 0), v4(10, 255, 255, 255))


def test_router_is_the_exporter_dimension() -> None:
    # nfdump's statistic is `-s router`; lanalyze's column is `exporter`: both group alike.
    assert dimension("router").bases == dimension("exporter").bases == (("exporter",),)
    assert dimension("router").render((v4(127, 0, 0, 2),)) == "127.0.0.2"
