"""Retention drops whole chunks older than each granularity's limit, and nothing newer."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from warehouse import retention
from tests.integration.feed import feed
from tests.processor.build import inst, mig

pytestmark = pytest.mark.integration

OLD = datetime(2025, 9, 1, tzinfo=timezone.utc)
RECENT = datetime(2025, 10, 15, tzinfo=timezone.utc)
NOW = datetime(2025, 10, 20, tzinfo=timezone.utc)
KEEP = {"1m": timedelta(days=30), "1h": timedelta(days=730), "1d": None, "events": None}


def _snaps(t0: datetime, n: int, gpu: str) -> list:
    return [mig(t0 + timedelta(minutes=i), [inst(1, "3g.20gb", 0.5, "team-a", "p")], gpu=gpu, interval_s=60)
            for i in range(n)]


def _count(conn: psycopg.Connection, table: str, where: str = "true") -> int:
    q = psycopg.sql.SQL("SELECT count(*) FROM {} WHERE " + where).format(psycopg.sql.Identifier(table))
    return conn.execute(q).fetchone()[0]


@pytest.fixture
def two_periods(fresh_db: str) -> str:
    # Per GPU, snapshots only move forward (the processor refuses a jump back), so the old and
    # the recent period are two GPUs.
    feed(fresh_db, _snaps(OLD, 5, "GPU-old") + _snaps(RECENT, 5, "GPU-new"))
    return fresh_db


def test_drops_only_chunks_older_than_the_limit(two_periods: str) -> None:
    cutoff = NOW - KEEP["1m"]
    with psycopg.connect(two_periods) as conn:
        before = {t: _count(conn, t) for tables in retention.HYPERTABLES.values() for t in tables}
        assert before["gpu_usage_1m"] == 10
        dry = retention.apply(conn, KEEP, now=NOW, dry_run=True)
        assert _count(conn, "gpu_usage_1m") == 10  # a dry run drops nothing
        dropped = retention.apply(conn, KEEP, now=NOW)
        assert [c.chunk for c in dropped] == [c.chunk for c in dry]
        assert {c.hypertable for c in dropped} == set(retention.HYPERTABLES["1m"])
        assert all(c.range_end <= cutoff for c in dropped)
        # the old minute rows are gone, the recent ones untouched
        for t in retention.HYPERTABLES["1m"]:
            assert _count(conn, t, f"bucket < '{cutoff.isoformat()}'") == 0
            assert _count(conn, t) == before[t] - 5
        # hourly and daily rows of the old period are still there (2 years / forever)
        for t in retention.HYPERTABLES["1h"] + retention.HYPERTABLES["1d"]:
            assert _count(conn, t) == before[t]
        # idempotent: a second run finds nothing more
        assert retention.apply(conn, KEEP, now=NOW) == []


def test_chunk_reaching_past_the_limit_is_kept(two_periods: str) -> None:
    # 1h chunks span 30 days: with a 40-day limit the old rows' chunk may end after the
    # cutoff; then it must be kept, since it could hold rows newer than the limit.
    keep = dict(KEEP, **{"1h": timedelta(days=40)})
    cutoff = NOW - keep["1h"]
    with psycopg.connect(two_periods) as conn:
        chunks = conn.execute(
            "SELECT range_end FROM timescaledb_information.chunks WHERE hypertable_name = 'gpu_usage_1h' "
            "ORDER BY range_start").fetchall()
        dropped = [c for c in retention.apply(conn, keep, now=NOW) if c.hypertable == "gpu_usage_1h"]
        expected = [end for (end,) in chunks if end <= cutoff]
        assert [c.range_end for c in dropped] == expected
        assert _count(conn, "gpu_usage_1h", f"bucket >= '{cutoff.isoformat()}'") >= 1


def test_cli_prints_what_it_would_drop(two_periods: str) -> None:
    # The CLI measures age from the wall clock: 2025-09 is older than 30 days by now.
    r = subprocess.run([sys.executable, "-m", "migmeter.cli", "db", "retention", "--dry-run",
                        "--database-url", two_periods], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "would drop" in r.stdout and "gpu_usage_1m" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "migmeter.cli", "db", "retention", "--keep-1m", "30 days; DROP",
                          "--database-url", two_periods], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2

