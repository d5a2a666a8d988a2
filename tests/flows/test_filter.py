"""The nfdump-style filter language: parsing, caret errors, SQL compilation and fuzzing."""

from __future__ import annotations

import re

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanalyze.flows.errors import FilterError
from lanalyze.flows.query.compile import compile_filter
from lanalyze.flows.query.filterlang import parse

V4 = b"\x00" * 10 + b"\xff\xff"


def v4(a: int, b: int, c: int, d: int) -> bytes:
    return V4 + bytes((a, b, c, d))


ROWS = [
    # src, dst, sport, dport, proto, flags, tos, bytes, packets, in_if, out_if, src_as, dst_as
    (v4(10, 0, 0, 1), v4(192, 0, 2, 1), 40000, 443, 6, 0x12, 0, 1500, 3, 1, 2, 65000, 15169),
    (v4(10, 0, 0, 2), v4(192, 0, 2, 2), 53000, 53, 17, 0, 0xB8, 90, 1, 2, 1, 0, 13335),
    (v4(172, 16, 5, 4), v4(10, 0, 0, 1), 22, 50000, 6, 0x18, 0, 2_000_000, 1500, 3, 4, 64512, 0),
    (
        bytes.fromhex("20010db8000000000000000000000001"),
        bytes.fromhex("20010db8000000000000000000000002"),
        5000,
        80,
        6,
        0x02,
        0,
        60,
        1,
        5,
        6,
        0,
        0,
    ),
    (v4(10, 0, 0, 3), v4(8, 8, 8, 8), 0, 0, 1, 0, 0, 84, 1, 1, 2, 0, 15169),
]
COLUMNS = [
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "tcp_flags",
    "tos",
    "bytes",
    "packets",
    "in_if",
    "out_if",
    "src_as",
    "dst_as",
]


@pytest.fixture(scope="module")
def flows() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE f (src_addr BLOB, dst_addr BLOB, src_port USMALLINT, dst_port USMALLINT, "
        "protocol UTINYINT, tcp_flags UTINYINT, tos UTINYINT, bytes UBIGINT, packets UBIGINT, "
        "in_if UINTEGER, out_if UINTEGER, src_as UINTEGER, dst_as UINTEGER, "
        "sampling_rate UINTEGER DEFAULT 1, flows UBIGINT DEFAULT 1, ip_version UTINYINT, "
        "exporter BLOB)"
    )
    for row in ROWS:
        version = 6 if not row[0].startswith(V4) else 4
        con.execute(
            f"INSERT INTO f ({', '.join(COLUMNS)}, ip_version) VALUES "
            f"({', '.join('?' * len(COLUMNS))}, ?)",
            [*row, version],
        )
    return con


def matching(con: duckdb.DuckDBPyConnection, text: str) -> list[int]:
    compiled = compile_filter(text)
    rows = con.execute(
        f"SELECT src_port FROM f WHERE {compiled.sql} ORDER BY src_port", list(compiled.params)
    ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize(
    ("text", "ports"),
    [
        ("", [0, 5000, 22, 40000, 53000]),
        ("any", [0, 22, 5000, 40000, 53000]),
        ("host 10.0.0.1", [22, 40000]),
        ("src host 10.0.0.1", [40000]),
        ("dst host 10.0.0.1", [22]),
        ("ip 192.0.2.2", [53000]),
        ("net 10.0.0.0/8", [0, 22, 40000, 53000]),
        ("src net 10/8", [0, 40000, 53000]),
        ("src net 172.16/12", [22]),
        ("net 192.0.2.0 255.255.255.0", [40000, 53000]),
        ("net 2001:db8::/32", [5000]),
        ("src host 2001:db8::1", [5000]),
        ("inet6", [5000]),
        ("inet", [0, 22, 40000, 53000]),
        ("port 443", [40000]),
        ("src port 22", [22]),
        ("dst port > 1023", [22]),
        ("port ge 50000", [22, 53000]),
        ("dst port <= 53", [0, 53000]),
        ("proto tcp", [22, 5000, 40000]),
        ("proto udp", [53000]),
        ("proto icmp", [0]),
        ("proto 17", [53000]),
        ("as 15169", [0, 40000]),
        ("src as 64512", [22]),
        ("dst as eq 13335", [53000]),
        ("if 3", [22]),
        ("in if 1", [0, 40000]),
        ("out if 6", [5000]),
        ("flags S", [5000, 40000]),
        ("flags AS", [40000]),
        ("flags AP", [22]),
        ("tos 184", [53000]),
        ("bytes > 1M", [22]),
        ("bytes >= 1500", [22, 40000]),
        ("packets < 2", [0, 5000, 53000]),
        ("packets = 1500", [22]),
        ("bytes > 1k and packets < 10", [40000]),
        ("proto tcp and not port 22", [5000, 40000]),
        ("proto tcp && !port 22", [5000, 40000]),
        ("port 53 or port 443", [40000, 53000]),
        ("port 53 || port 443", [40000, 53000]),
        ("(port 53 or port 443) and src net 10.0.0.0/31", [40000]),
        ("not (proto tcp or proto udp)", [0]),
        ("NOT PROTO TCP AND HOST 10.0.0.3", [0]),
    ],
)
def test_filter_matches(flows: duckdb.DuckDBPyConnection, text: str, ports: list[int]) -> None:
    assert matching(flows, text) == sorted(ports)


def test_sampling_scales_counter_filters(flows: duckdb.DuckDBPyConnection) -> None:
    compiled = compile_filter("bytes > 1M")
    assert "sampling_rate" in compiled.sql
    assert "@raw" in compiled.columns


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("host 10.0.0.300", 5, "address"),
        ("proto tcp and", 13, "primitive"),
        ("port 70000", 5, "out of range"),
        ("src foo 1", 4, "expected 'host'"),
        ("flags SAZ", 8, "unknown TCP flag"),
        ("(port 1", 7, "expected ')'"),
        ("port 1)", 6, "unexpected ')'"),
        ("bytes 5", 6, "comparison operator"),
        ("net 10.0.0.0/33", 4, "network"),
        ("frobnicate", 0, "unknown filter primitive"),
        ("port 1 port 2", 7, "expected 'and'"),
        ("host 1.2.3.4 $", 13, "unexpected character"),
        ("proto xyz", 6, "protocol"),
    ],
)
def test_errors_point_at_the_mistake(text: str, column: int, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse(text)
    error = info.value
    assert error.column == column
    assert message in error.message
    lines = str(error).splitlines()
    assert lines[1] == f"  {text}"
    assert lines[2] == "  " + " " * column + "^"


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(FilterError):
        parse("(" * 500 + "any" + ")" * 500)
    with pytest.raises(FilterError):
        parse("not " * 500 + "any")


# SQL text the compiler may produce: identifiers of our columns, keywords, operators, "?".
_SQL_TOKEN = re.compile(
    r"\s+|\?|\(|\)|>=|<=|<>|[<>=&*]|\b(?:AND|OR|NOT|BETWEEN|TRUE|src_addr|dst_addr|src_port|"
    r"dst_port|protocol|tos|tcp_flags|src_as|dst_as|in_if|out_if|ip_version|exporter|bytes|"
    r"packets|flows|sampling_rate)\b"
)

_WORDS = [
    "host", "src", "dst", "net", "port", "proto", "tcp", "udp", "icmp", "as", "if", "in", "out",
    "flags", "tos", "bytes", "packets", "and", "or", "not", "any", "inet6", "gt", "lt", "eq",
    "(", ")", "!", "&&", "||", ">", "<", "=", ">=", "10.0.0.1", "10/8", "2001:db8::/32",
    "255.0.0.0", "1M", "10k", "80", "65536", "SA", "X", "'; DROP TABLE f; --", "\"x\"",
]  # fmt: skip


def _check_sql_is_ours(text: str) -> None:
    try:
        compiled = compile_filter(text)
    except FilterError as exc:
        assert exc.column <= len(exc.text)
        return
    leftover = _SQL_TOKEN.sub("", compiled.sql)
    assert leftover == "", (text, compiled.sql)
    assert compiled.sql.count("?") == len(compiled.params)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=12).map(" ".join))
def test_fuzz_token_soup(text: str) -> None:
    _check_sql_is_ours(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_any_text(text: str) -> None:
    _check_sql_is_ours(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=10).map(" ".join))
def test_fuzz_compiled_sql_runs(text: str) -> None:
    try:
        compiled = compile_filter(text)
    except FilterError:
        return
    con = _shared_connection()
    con.execute(f"SELECT count(*) FROM f WHERE {compiled.sql}", list(compiled.params)).fetchall()


_CON: list[duckdb.DuckDBPyConnection] = []


def _shared_connection() -> duckdb.DuckDBPyConnection:
    if not _CON:
        con = duckdb.connect()
        con.execute(
            "CREATE TABLE f (src_addr BLOB, dst_addr BLOB, src_port USMALLINT, "
            "dst_port USMALLINT, protocol UTINYINT, tcp_flags UTINYINT, tos UTINYINT, "
            "bytes UBIGINT, packets UBIGINT, in_if UINTEGER, out_if UINTEGER, src_as UINTEGER, "
            "dst_as UINTEGER, sampling_rate UINTEGER, flows UBIGINT, ip_version UTINYINT, "
            "exporter BLOB)"
        )
        _CON.append(con)
    return _CON[0]


def test_every_protocol_name_shown_is_one_the_filter_takes() -> None:
    """Labels (apps.PROTOCOL_NAMES) and filters read one table: a shown name filters."""
    from lanalyze.flows.query.apps import PROTOCOL_NAMES

    for number, name in PROTOCOL_NAMES.items():
        assert compile_filter(f"proto {name}").params == compile_filter(f"proto {number}").params
    assert compile_filter("proto ipv6-icmp").params == compile_filter("proto 58").params


def test_icmp_type_and_code_imply_icmp() -> None:
    """nfdump's ``icmp-type N`` / ``icmp-code N``: ICMP or ICMPv6 flows of that type/code."""
    con = duckdb.connect()
    con.execute("CREATE TABLE f (protocol UTINYINT, icmp_type UTINYINT, icmp_code UTINYINT)")
    con.execute("INSERT INTO f VALUES (1, 8, 0), (58, 8, 0), (1, 3, 3), (6, 8, 0), (17, 3, 3)")

    def rows(text: str) -> list[tuple[int, int, int]]:
        compiled = compile_filter(text)
        sql = f"SELECT * FROM f WHERE {compiled.sql} ORDER BY ALL"
        return con.execute(sql, list(compiled.params)).fetchall()

    assert rows("icmp-type 8") == [(1, 8, 0), (58, 8, 0)]
    assert rows("icmp-type 3 and icmp-code 3") == [(1, 3, 3)]
    assert rows("icmp-code 0 and not proto icmp6") == [(1, 8, 0)]
    assert compile_filter("icmp-type 8").columns == {"protocol", "icmp_type"}
    with pytest.raises(FilterError, match="out of range"):
        parse("icmp-type 256")
