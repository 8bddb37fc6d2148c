"""The trend read from the per-day rollups (sql/034) is the trend summed from the stored daily rows.

A small fleet through the processor's fold and sink, written in two batches so every daily row
is inserted and then updated by the additive merge (the path the rollup triggers must follow):
- GPU-A, A100 (7 slices), cluster c1, Jan 10 2025, hourly 01:00-04:00: GI 1 3g.20gb team-a at
  50 %, GI 2 2g.10gb unassigned at 0 %, 2 slices unallocated; GPU-D the same on Feb 3.
- GPU-B, A30 (4 slices, no MIG), cluster c1 then c2 on Jan 10 (its second batch reports c2:
  the day's row moves to c2, so must its share of the rollup), team-b at 80 %.
- GPU-C, A100, cluster c2, Jan 20: snapshots at 01:00, 02:00, 07:00, 08:00, GI 0 7g.40gb team-a:
  the 02:00-07:00 gap exceeds 3 x 3600 s, so 06:00-07:00 is covered and 02:00-06:00 unmetered.
Prices: A100 2.00 USD/GPU-hour, A30 1.00, both from 2025-01-01.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest

from tests.integration.feed import feed, feed_priced
from tests.processor.build import inst, mig, whole
from warehouse import retention, trend
from warehouse.render import render

pytestmark = pytest.mark.integration

A100, A30 = "A100-SXM4-40GB", "A30"
JAN, FEB = date(2025, 1, 1), date(2025, 2, 1)
NOW = datetime(2025, 3, 15, tzinfo=timezone.utc)


def _ts(month: int, day: int, hour: int) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=timezone.utc)


def _gpu_a(month: int, day: int, hours: range, gpu: str = "GPU-A") -> list:
    return [mig(_ts(month, day, h), [inst(1, "3g.20gb", 0.5, "team-a", "a1"), inst(2, "2g.10gb", 0.0)],
                gpu=gpu, model=A100, interval_s=3600) for h in hours]


def _gpu_b(hours: range, cluster: str) -> list:
    return [whole(_ts(1, 10, h), 0.8, gpu="GPU-B", total=4, model=A30, interval_s=3600, ns="team-b", pod="b1",
                  cluster=cluster) for h in hours]


@pytest.fixture
def two_batches(fresh_db: str) -> str:
    first = _gpu_a(1, 10, range(1, 3)) + _gpu_b(range(1, 3), "c1") + [
        mig(_ts(1, 20, h), [inst(0, "7g.40gb", 0.25, "team-a", "a2")], gpu="GPU-C", model=A100, interval_s=3600,
            cluster="c2") for h in (1, 2)]
    feed_priced(fresh_db, first, [(A100, "2.00", JAN), (A30, "1.00", JAN)])
    second = _gpu_a(1, 10, range(3, 5)) + _gpu_b(range(3, 5), "c2") + _gpu_a(2, 3, range(1, 5), "GPU-D") + [
        mig(_ts(1, 20, h), [inst(0, "7g.40gb", 0.25, "team-a", "a2")], gpu="GPU-C", model=A100, interval_s=3600,
            cluster="c2") for h in (7, 8)]
    feed(fresh_db, second)
    return fresh_db


CASES = [(unit, group, cluster) for unit, group in (("month", "fleet"), ("week", "fleet"), ("month", "model"),
                                                     ("month", "namespace"), ("week", "namespace"))
         for cluster in (None, "c1", "c2")]


def _both(conn: psycopg.Connection, unit: str, group: str, cluster: str | None) -> tuple:
    kw = dict(unit=unit, group=group, cluster=cluster, now=lambda: NOW)
    return (trend.trend(conn, JAN, FEB, source="rollup", **kw), trend.trend(conn, JAN, FEB, source="rows", **kw))


def _same(rollup, rows) -> None:  # type: ignore[no-untyped-def]
    assert render(rollup, "table") == render(rows, "table")  # every printed digit
    assert len(rollup.rows) == len(rows.rows)
    for a, b in zip(rollup.rows, rows.rows):
        assert a[:4] == b[:4] and a[-1] == b[-1]  # kind, period, group, gpu_days, currency
        for x, y in zip(a[4:-1], b[4:-1]):  # hours, percentages, cost: float sums in another order
            assert (x is None) == (y is None) and (x is None or float(x) == pytest.approx(float(y), rel=1e-9, abs=1e-9))


def test_rollup_trend_equals_the_daily_rows_trend(two_batches: str) -> None:
    with psycopg.connect(two_batches, autocommit=True) as conn:
        conn.execute("SET ROLE migmeter_reader")  # the rollups' views are the reader's
        for unit, group, cluster in CASES:
            _same(*_both(conn, unit, group, cluster))
        fleet = {r["period"]: r for r in trend.trend(conn, JAN, FEB, now=lambda: NOW).as_dicts()}
        by_ns = {(r["period"], r["namespace"]): r for r in
                 trend.trend(conn, JAN, FEB, group="namespace", now=lambda: NOW).as_dicts()}
    # By hand, January: 3 GPU-days; GPU-A 4 h + GPU-B 4 h + GPU-C 4 h metered (00-02, 06-08) = 12 GPU-hours;
    # capacity adds GPU-C's 4 unmetered hours (02:00-06:00) -> coverage 12/16 = 75 %.
    # Allocated: GPU-A 4 h x 5/7 + GPU-B 4 h + GPU-C 4 h = 20/7 + 8 = 10.857 GPU-hours.
    # Cost = capacity x price: GPU-A 4 x 2 + GPU-B 4 x 1 + GPU-C 8 x 2 = 28.00 USD.
    jan = fleet[JAN]
    assert (jan["gpu_days"], jan["gpu_hours"], jan["alloc_gpu_hours"]) == (3, pytest.approx(12.0),
                                                                          pytest.approx(20 / 7 + 8))
    assert jan["coverage_pct"] == pytest.approx(75.0) and float(jan["cost"]) == pytest.approx(28.0)
    # February: GPU-D 4 h, cost 4 x 2 = 8.00; (unallocated) 4 h x 2/7 = 8/7 GPU-hours.
    assert fleet[FEB]["gpu_days"] == 1 and float(fleet[FEB]["cost"]) == pytest.approx(8.0)
    assert by_ns[(FEB, "(unallocated)")]["alloc_gpu_hours"] == pytest.approx(8 / 7)
    # January per namespace: team-a = GPU-A 3/7 x 4 h + GPU-C 4 h = 12/7 + 4; (unmetered) 4 h at 2.00 = 8.00
    assert by_ns[(JAN, "team-a")]["alloc_gpu_hours"] == pytest.approx(12 / 7 + 4)
    assert float(by_ns[(JAN, "(unmetered)")]["cost"]) == pytest.approx(8.0)


def test_gpu_moved_between_clusters_moves_its_day_in_the_rollup(two_batches: str) -> None:
    with psycopg.connect(two_batches) as conn:
        # GPU-B's Jan 10 row was written as c1, then merged with a batch reporting c2: its whole day is c2's
        c1 = {r["period"]: r for r in trend.trend(conn, JAN, JAN, cluster="c1", now=lambda: NOW).as_dicts()}
        c2 = {r["period"]: r for r in trend.trend(conn, JAN, JAN, cluster="c2", now=lambda: NOW).as_dicts()}
        stored = conn.execute("SELECT cluster, gpu_days FROM gpu_usage_model_1d WHERE gpu_model = %s", (A30,)).fetchall()
    assert c1[JAN]["gpu_days"] == 1 and c2[JAN]["gpu_days"] == 2  # GPU-A in c1; GPU-B and GPU-C in c2
    assert sorted(stored) == [("c1", 0), ("c2", 1)]  # the emptied c1 row stays at 0 and is not shown


def test_deleted_daily_rows_leave_the_rollup(two_batches: str) -> None:
    with psycopg.connect(two_batches) as conn:
        conn.execute("DELETE FROM gpu_usage_1d WHERE gpu_uuid = 'GPU-C'")
        conn.execute("DELETE FROM tenant_usage_1d WHERE gpu_uuid = 'GPU-C'")
        for unit, group, cluster in CASES:
            _same(*_both(conn, unit, group, cluster))
        jan = trend.trend(conn, JAN, JAN, now=lambda: NOW).as_dicts()[0]
        conn.rollback()
    assert jan["gpu_days"] == 2 and float(jan["cost"]) == pytest.approx(12.0)  # GPU-A 8.00 + GPU-B 4.00


def _two_years(db: str) -> None:
    snaps = _gpu_a(1, 10, range(1, 5)) + [
        mig(datetime(2026, 1, 5, h, tzinfo=timezone.utc), [inst(0, "7g.40gb", 0.5, "team-e", "e1")], gpu="GPU-E",
            model=A100, interval_s=3600) for h in range(1, 3)]
    feed_priced(db, snaps, [(A100, "2.00", JAN)])


def test_retention_drops_the_rollups_with_the_daily_rows(fresh_db: str) -> None:
    _two_years(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        # keep the daily rows 365 days back from "now" = the end of the chunk holding January 2025 plus
        # 365 days: that chunk goes, in the daily tables and in their rollups alike; January 2026 stays.
        first_end = conn.execute("SELECT min(range_end) FROM timescaledb_information.chunks"
                                 " WHERE hypertable_name = 'gpu_usage_1d'").fetchone()
        assert first_end is not None
        dropped = retention.apply(conn, {"1d": timedelta(days=365)}, now=first_end[0] + timedelta(days=365))
        assert {c.hypertable for c in dropped} == set(retention.HYPERTABLES["1d"])
        left = conn.execute("SELECT min(bucket) FROM gpu_usage_model_1d").fetchone()
        assert left is not None and left[0].year == 2026
        for group in ("fleet", "namespace"):
            kw = dict(group=group, now=lambda: NOW)
            _same(trend.trend(conn, JAN, date(2026, 1, 1), **kw),
                  trend.trend(conn, JAN, date(2026, 1, 1), source="rows", **kw))


def test_one_statement_across_chunks(fresh_db: str) -> None:
    # One batch writes Jan 2025 and Jan 2026 days: two 365-day chunks of gpu_usage_1d, one statement.
    _two_years(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        chunks = conn.execute("SELECT count(*) FROM timescaledb_information.chunks"
                              " WHERE hypertable_name = 'gpu_usage_1d'").fetchone()
        assert chunks is not None and chunks[0] == 2
        for group in ("fleet", "namespace"):
            kw = dict(group=group, now=lambda: NOW)
            _same(trend.trend(conn, JAN, date(2026, 1, 1), **kw),
                  trend.trend(conn, JAN, date(2026, 1, 1), source="rows", **kw))
        jan26 = trend.trend(conn, date(2026, 1, 1), date(2026, 1, 1), now=lambda: NOW).as_dicts()[0]
    # GPU-E: 2 h of a whole 7g instance at 2.00 -> 2 GPU-hours allocated, 4.00 USD
    assert (jan26["gpu_days"], jan26["alloc_gpu_hours"], float(jan26["cost"])) == (1, pytest.approx(2.0), 4.0)
