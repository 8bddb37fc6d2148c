"""The trend benchmark's two-year warehouse: its month copies must be what the trend reads."""

from __future__ import annotations

from datetime import date, datetime, timezone

import psycopg
import pytest

from bench.trend_query import extend_months
from tests.integration.feed import feed
from tests.processor.build import inst, mig


@pytest.mark.integration
def test_extend_months_copies_each_day_into_the_following_months(fresh_db: str) -> None:
    # One GPU-hour on Jan 10 and one on Jan 31 2025, copied into 3 more months: Jan 10 -> Feb 10,
    # Mar 10, Apr 10; Jan 31 -> Feb 28, Mar 31, Apr 30 (PostgreSQL clamps to the month's last day;
    # had Jan 28 had a row too, its Feb 28 copy would win and Jan 31's be dropped by the key).
    # Two GPUs, one hour each: one GPU metered on both days would exist (unmetered) on every day
    # between them, which the time model records as daily rows of their own.
    feed(fresh_db, [mig(datetime(2025, 1, d, 1, tzinfo=timezone.utc), [inst(1, "7g.40gb", 0.5, "t", "p")],
                        gpu=f"GPU-B{d}", interval_s=3600) for d in (10, 31)])
    counts = extend_months(fresh_db, 4)
    # 2 days x 4 months, no collision; the per-day rollups (one model, one namespace) follow the copies
    assert counts == {"tenant_usage_1d": 8, "gpu_usage_1d": 8, "gpu_usage_model_1d": 8, "tenant_usage_namespace_1d": 8}
    with psycopg.connect(fresh_db) as conn:
        days = [r[0] for r in conn.execute("SELECT (bucket AT TIME ZONE 'UTC')::date FROM gpu_usage_1d ORDER BY 1")]
    assert days == [date(2025, 1, 10), date(2025, 1, 31), date(2025, 2, 10), date(2025, 2, 28),
                    date(2025, 3, 10), date(2025, 3, 31), date(2025, 4, 10), date(2025, 4, 30)]
