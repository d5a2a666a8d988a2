"""Rollup maintainer and query planner: rollup answers equal raw answers, always."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from lanalyze.flows.config import RollupConfig
from lanalyze.flows.query import reports
from lanalyze.flows.store.layout import (
    COMPACT_TAG,
    list_raw_files,
    list_raw_hours,
    read_manifest,
)
from lanalyze.flows.store.paths import raw_dir
from lanalyze.flows.store.rollup import RollupMaintainer
from lanalyze.flows.store.synthetic import random_flows, write_flows

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (24 * HOUR)  # midnight UTC
SPAN = 28 * HOUR

CASES = [
    ("srcip", None),
    ("dstip", "proto tcp"),
    ("ip", None),
    ("app", "not proto icmp"),
    ("proto", None),
    ("dstport", "proto udp"),
    ("exporter,inif,outif", None),
    ("srcas,dstas,tos,flags", "in if 2"),
    ("srcnet/28", None),
]
WINDOWS = [
    (T0, T0 + SPAN),  # whole days and hours
    (T0 + 1_234_567, T0 + 26 * HOUR + 98_765),  # ragged edges: minutes and raw too
    (T0 + 25 * HOUR, T0 + 27 * HOUR),  # hours only
    (T0 + 90_000, T0 + 150_000),  # less than a few minutes
]


def same(data: Path, by: str, flt: str | None, since: int, until: int) -> str:
    rolled = reports.top(data, by, since=since, until=until, limit=0, filter=flt)
    raw = reports.top(data, by, since=since, until=until, limit=0, filter=flt, use_rollups=False)
    assert rolled.rows == raw.rows, (by, flt, since, until, rolled.plan)
    assert rolled.total == raw.total
    return rolled.plan


@pytest.fixture
def store(tmp_path: Path) -> Path:
    columns = random_flows(20_000, T0, T0 + SPAN, seed=3, sources=500, sampling=(1, 1, 100))
    write_flows(tmp_path, columns, segment_ms=30 * 60_000)
    return tmp_path


_MADE: list[RollupMaintainer] = []


def maintainer(data: Path, **settings: object) -> RollupMaintainer:
    made = RollupMaintainer(RollupConfig(**settings), data)  # type: ignore[arg-type]
    _MADE.append(made)
    return made


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    while _MADE:
        _MADE.pop().release()


def test_rollups_equal_raw_over_many_windows(store: Path) -> None:
    m = maintainer(store, minute_max_age=0, raw_max_age=0)
    # Mid-way: hours closed up to T0+20h, so some hours are compacted, some not.
    m.run_once(now=(T0 + 12 * HOUR) / 1000)
    for by, flt in CASES[:3]:
        for since, until in WINDOWS[:2]:
            same(store, by, flt, since, until)
    done = m.run_once(now=(T0 + 60 * HOUR) / 1000)
    assert done["days"] > 0
    plans = [same(store, by, flt, s, u) for by, flt in CASES for s, u in WINDOWS]
    assert "1d/src_addr" in plans[0] and "raw" not in plans[0]
    # An address top-N filtered by protocol comes from the address+protocol rollup.
    assert "1d/dst_addr_proto" in plans[4] and "raw" not in plans[4]
    assert any("1m/" in p and "raw" in p for p in plans)
    assert any("6h/" in p for p in plans)
    for since, until in WINDOWS[1:3]:
        a = reports.series(store, since=since, until=until, bucket="1h", by="proto", top_n=2)
        b = reports.series(
            store, since=since, until=until, bucket="1h", by="proto", top_n=2, use_rollups=False
        )
        assert a.points == b.points
        assert "raw" not in a.plan
        c = reports.series(store, since=since, until=until, bucket="5m", by="ip")
        d = reports.series(store, since=since, until=until, bucket="5m", by="ip", use_rollups=False)
        assert c.points == d.points
    # Interfaces: in/out bytes, packets and flows from the iface rollup equal the raw sums,
    # ranked by each counter.
    for order in ("bytes", "packets", "flows"):
        iface = reports.top_interfaces(store, since=T0, until=T0 + SPAN, order=order)
        raw = reports.top_interfaces(
            store, since=T0, until=T0 + SPAN, order=order, use_rollups=False
        )
        assert iface == raw, order
        assert all(row.in_packets > 0 or row.out_packets > 0 for row in iface)
    # With a filter the summary rollup answers (it has the interfaces and the protocol).
    tcp = reports.top_interfaces(
        store, since=T0, until=T0 + SPAN, order="flows", filter="proto tcp"
    )
    assert tcp == reports.top_interfaces(
        store, since=T0, until=T0 + SPAN, order="flows", filter="proto tcp", use_rollups=False
    )


def test_compaction_never_double_counts_and_deletes_after_grace(store: Path) -> None:
    before = reports.top(store, "srcip", since=T0, until=T0 + SPAN, limit=0, use_rollups=False)
    m = maintainer(store)
    now = (T0 + 60 * HOUR) / 1000
    m.run_once(now=now)
    hour = list_raw_hours(store)[0]
    names = list_raw_files(store, hour)
    assert len(names) == 1 and COMPACT_TAG in names[0]
    # The replaced segments are still on disk during the grace period, and ignored.
    assert len(os.listdir(raw_dir(store) / hour)) == 3
    after = reports.top(store, "srcip", since=T0, until=T0 + SPAN, limit=0, use_rollups=False)
    assert after.rows == before.rows
    # A reader holding the manifest from before compaction counts the same.
    assert read_manifest(store).covers(hour, names[0], store)
    m.run_once(now=now + 1000)
    assert len(os.listdir(raw_dir(store) / hour)) == 1
    assert same(store, "srcip", None, T0, T0 + SPAN)


def test_late_segment_counts_at_once_and_rebuilds_the_day(store: Path) -> None:
    m = maintainer(store)
    now = (T0 + 60 * HOUR) / 1000
    m.run_once(now=now)
    assert read_manifest(store).parts["1d"]["src_addr"]
    late = random_flows(500, T0 + 3 * HOUR, T0 + 4 * HOUR, seed=99, sources=20)
    write_flows(store, late, segment_ms=HOUR, writer="late")
    # Not rolled up yet: the planner reads the late segment raw, beside the day part.
    plan = same(store, "srcip", None, T0, T0 + SPAN)
    assert "1d/src_addr" in plan and "raw:1 files" in plan
    first_day = time.strftime("%Y%m%d", time.gmtime(T0 / 1000))
    old_part = read_manifest(store).parts["1d"]["src_addr"][first_day]
    m.run_once(now=now + 10)
    # Rolled up, the hour compacted again and the day rebuilt in the same round.
    assert read_manifest(store).parts["1d"]["src_addr"][first_day] != old_part
    assert "raw" not in same(store, "srcip", None, T0, T0 + SPAN)
    m.run_once(now=now + 1000)
    plan = same(store, "srcip", None, T0, T0 + SPAN)
    assert "raw" not in plan and "1d/src_addr:1" in plan


def test_retention_by_age_and_size(store: Path) -> None:
    m = maintainer(store, raw_max_age=1, minute_max_age=0.5)
    now = (T0 + SPAN) / 1000 + 3600
    m.run_once(now=now)
    hours = list_raw_hours(store)
    assert hours and min(hours) >= time.strftime("%Y%m%d%H", time.gmtime(now - 86400 - 3600))
    manifest = read_manifest(store)
    assert manifest.expired_before["raw"] >= (now - 86400) * 1000 - HOUR
    # Old hours are still answered from the hour rollups.
    report = reports.top(store, "proto", since=T0, until=T0 + 10 * HOUR)
    assert report.total.flows > 0 and "raw" not in report.plan
    status = {t.table: t for t in reports.status(store)}
    m.release()
    small = maintainer(store, hour_max_bytes=status["1h/src_addr"].bytes // 2)
    small.run_once(now=now + 1)
    smaller = {t.table: t for t in reports.status(store)}
    assert smaller["1h/src_addr"].files < status["1h/src_addr"].files


def test_one_maintainer_per_directory(store: Path) -> None:
    first = maintainer(store)
    second = maintainer(store)
    assert first._acquire()
    assert second.run_once(now=(T0 + SPAN) / 1000)["rolled_files"] == 0
    first.release()
    assert second.run_once(now=(T0 + SPAN) / 1000)["rolled_files"] > 0
    second.release()


def test_orphan_parts_from_a_crash_are_removed(store: Path) -> None:
    m = maintainer(store)
    m.run_once(now=(T0 + 2 * HOUR) / 1000)
    m.release()
    orphan = store / "rollup" / "1h" / "src_addr" / "2023111400" / "crashed.parquet"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"partial")
    maintainer(store).run_once(now=(T0 + 2 * HOUR) / 1000)
    assert not orphan.exists()


def test_component_tails_new_segments(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    write_flows(tmp_path, random_flows(1000, now - 120_000, now - 60_000, seed=5))

    async def scenario() -> None:
        m = maintainer(tmp_path, interval=0.05)
        await m.start()
        try:
            for _ in range(200):
                if read_manifest(tmp_path).covered:
                    break
                await asyncio.sleep(0.05)
            write_flows(tmp_path, random_flows(10, now - 30_000, now - 20_000, seed=6), writer="b")
            for _ in range(200):
                if sum(len(v) for v in read_manifest(tmp_path).covered.values()) >= 3:
                    break
                await asyncio.sleep(0.05)
        finally:
            await m.stop()

    asyncio.run(scenario())
    assert sum(len(v) for v in read_manifest(tmp_path).covered.values()) >= 3
    report = reports.top(tmp_path, "srcip", since=now - 3_600_000, until=now, limit=0)
    assert report.total.flows == 1010
    # The open hour is answered whole from its hour parts: nothing newer than "now" exists.
    assert "1h/src_addr" in report.plan or "1m/src_addr" in report.plan
    assert (
        report.rows
        == reports.top(
            tmp_path, "srcip", since=now - 3_600_000, until=now, limit=0, use_rollups=False
        ).rows
    )


def test_week_parts_answer_long_windows_and_equal_raw(tmp_path: Path) -> None:
    week = 7 * 24 * HOUR
    start = T0 - T0 % week + 2 * 24 * HOUR + 5 * HOUR  # mid-week: a partial first week
    end = start + 17 * 24 * HOUR
    columns = random_flows(12_000, start, end, seed=11, sources=300, sampling=(1, 10))
    write_flows(tmp_path, columns, segment_ms=HOUR)  # the store contract: one hour each
    m = maintainer(tmp_path, raw_max_age=0, minute_max_age=0)
    m.run_once(now=end / 1000 + 2 * 86400)
    assert read_manifest(tmp_path).parts["1w"]["src_addr"]
    windows = [(start, end), (start + 3_600_123, end - 86_400_000 - 7)]
    plans = [same(tmp_path, by, flt, s, u) for by, flt in CASES[:4] for s, u in windows]
    assert "1w/src_addr" in plans[0]
    # A late segment in a built week: the week part is dropped, raw counts at once, and the
    # week is rebuilt (same answers) once its day is.
    late = random_flows(50, start + 8 * 24 * HOUR, start + 8 * 24 * HOUR + 60_000, seed=12)
    write_flows(tmp_path, late, writer="late")
    same(tmp_path, "srcip", None, start, end)
    m.run_once(now=end / 1000 + 2 * 86400 + 10)
    m.run_once(now=end / 1000 + 2 * 86400 + 400)
    assert "1w/src_addr" in same(tmp_path, "srcip", None, start, end)
    series = reports.series(tmp_path, since=start, until=end, bucket="7d", by="proto")
    assert (
        series.points
        == reports.series(
            tmp_path, since=start, until=end, bucket="7d", by="proto", use_rollups=False
        ).points
    )


def test_a_window_reaching_far_back_plans_as_cheaply_as_30_days(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``since=-10000d`` plans in the same number of steps as ``-30d`` (counted, not timed:
    the planner used to walk the window hour by hour) and gives the same answer."""
    from lanalyze.flows.query import planner
    from lanalyze.flows.store import layout

    maintainer(store, minute_max_age=0, raw_max_age=0).run_once(now=(T0 + 60 * HOUR) / 1000)
    steps = [0]
    for name in dir(planner):
        helper = getattr(planner, name)
        if callable(helper) and getattr(helper, "__module__", None) == layout.__name__:

            def counting(*args: object, _helper=helper, **kwargs: object) -> object:  # type: ignore[no-untyped-def]
                steps[0] += 1
                return _helper(*args, **kwargs)

            monkeypatch.setattr(planner, name, counting)
    until = T0 + SPAN + 5 * 60_000
    answers = []
    counts = []
    for days in (30, 10_000):
        since = until - days * 24 * HOUR
        steps[0] = 0
        planner.plan(store, since, until, frozenset({"src_addr"}))
        counts.append(steps[0])
        top = reports.top(store, "srcip", since=since, until=until, limit=0)
        series = reports.series(store, since=since, until=until, bucket="1d", by="proto")
        answers.append((top.rows, top.total, [(p.time, p.group, p.bytes) for p in series.points]))
    assert counts[0] == counts[1]
    rows, total, points = answers[1]
    # The same flows and sums; bits/s are over the window asked for, so they differ.
    assert [(r.values, r.bytes, r.flows) for r in rows] == [
        (r.values, r.bytes, r.flows) for r in answers[0][0]
    ]
    assert total == answers[0][1] and total.flows == 20_000
    assert points == answers[0][2]
