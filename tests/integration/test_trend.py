"""Long-horizon trend on hand-built months through the processor's fold and sink.

One A100 ('A100-SXM4-40GB', 7 slices) per month holding one 3g.20gb instance (team-a, 50 % busy)
on the 10th of Jan, Feb, Mar and Apr 2025 for 1, 2, 3 and 6 hours (hourly snapshots from 01:00),
price 2.00 USD/GPU-hour. A GPU exists from its first covered second to its last snapshot, so
each month's GPU lives exactly its k metered hours (one GPU for all four months would also
exist, unmetered, on every day between). Per month with k hours: GPU-hours k, capacity k,
allocated 3k/7, used 3k/14, weighted utilization 50 %, allocation 3/7 = 42.857 %, coverage
100 %, cost (every line: the GPU's capacity) 2k.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from warehouse import trend
from tests.integration.feed import feed_priced
from tests.processor.build import inst, mig

pytestmark = pytest.mark.integration

A100 = "A100-SXM4-40GB"
HOURS = {1: 1, 2: 2, 3: 3, 4: 6}


@pytest.fixture
def months_db(fresh_db: str) -> str:
    snaps = [mig(datetime(2025, m, 10, h, tzinfo=timezone.utc), [inst(1, "3g.20gb", 0.5, "team-a", "a")],
                 gpu=f"GPU-T{m}", model=A100, interval_s=3600) for m, k in HOURS.items() for h in range(1, k + 1)]
    return feed_priced(fresh_db, snaps, [(A100, "2.00", date(2025, 1, 1))])


def _trend(url: str, now: datetime, **kw) -> list[dict]:
    with psycopg.connect(url) as conn:
        return trend.trend(conn, date(2025, 1, 1), date(2025, 4, 1), now=lambda: now, **kw).as_dicts()


def test_monthly_rows_are_ratios_of_summed_hours(months_db: str) -> None:
    rows = _trend(months_db, datetime(2025, 6, 1, tzinfo=timezone.utc), forecast_periods=0)
    assert [r["period"] for r in rows] == [date(2025, m, 1) for m in (1, 2, 3, 4)]
    for r, k in zip(rows, HOURS.values()):
        assert (r["kind"], r["scope"], r["gpu_days"]) == ("actual", "all", 1)
        assert r["gpu_hours"] == pytest.approx(k) and r["alloc_gpu_hours"] == pytest.approx(3 * k / 7)
        assert r["used_gpu_hours"] == pytest.approx(3 * k / 14) and r["weighted_util_pct"] == pytest.approx(50.0)
        assert r["allocation_pct"] == pytest.approx(300 / 7) and r["coverage_pct"] == pytest.approx(100.0)
        assert r["cost"] == pytest.approx(Decimal(2 * k)) and r["currency"] == "USD"


def test_forecast_fits_complete_periods_only(months_db: str) -> None:
    # now = Jun 1: Jan..Apr complete. Allocated hours in units of 3/7: 1, 2, 3, 6 at x = 0..3:
    # mean x 1.5, mean y 3, Sxy = 8, Sxx = 5 -> slope 1.6, intercept 0.6; May (x=4) 7.0, Jun 8.6, Jul 10.2.
    # Cost = 2 x GPU-hours = 2, 4, 6, 12 -> May 14.00, Jun 17.20, Jul 20.40.
    rows = [r for r in _trend(months_db, datetime(2025, 6, 1, tzinfo=timezone.utc)) if r["kind"] == "forecast"]
    assert [r["period"] for r in rows] == [date(2025, 5, 1), date(2025, 6, 1), date(2025, 7, 1)]
    assert [r["alloc_gpu_hours"] for r in rows] == pytest.approx([7.0 * 3 / 7, 8.6 * 3 / 7, 10.2 * 3 / 7])
    assert [r["cost"] for r in rows] == [Decimal("14.00"), Decimal("17.20"), Decimal("20.40")]
    assert all(r["used_gpu_hours"] is None and r["weighted_util_pct"] is None for r in rows)
    # now = Apr 15: April is still running and left out: Jan..Mar lie on y = 1 + x -> May (x=4) = 5 x 3/7, cost 10.
    early = [r for r in _trend(months_db, datetime(2025, 4, 15, tzinfo=timezone.utc)) if r["kind"] == "forecast"]
    assert early[0]["alloc_gpu_hours"] == pytest.approx(15 / 7) and early[0]["cost"] == Decimal("10.00")
    # fewer than 3 complete periods: no forecast at all
    assert not [r for r in _trend(months_db, datetime(2025, 3, 1, tzinfo=timezone.utc)) if r["kind"] == "forecast"]


def test_by_namespace_uses_the_chargeback_lines_and_by_week(months_db: str) -> None:
    now = datetime(2025, 6, 1, tzinfo=timezone.utc)
    rows = _trend(months_db, now, group="namespace", forecast_periods=0)
    march = {r["namespace"]: r for r in rows if r["period"] == date(2025, 3, 1)}
    # 3 h: team-a 3 x 3/7 = 9/7 allocated, cost 18/7; the 4 free slices are the unallocated line 12/7, cost 24/7
    assert set(march) == {"team-a", "(unallocated)"}
    assert march["team-a"]["alloc_gpu_hours"] == pytest.approx(9 / 7)
    assert float(march["team-a"]["cost"]) == pytest.approx(18 / 7)
    assert float(march["(unallocated)"]["cost"]) == pytest.approx(24 / 7)
    assert march["team-a"]["weighted_util_pct"] == pytest.approx(50.0) and march["team-a"]["allocation_pct"] is None
    weeks = _trend(months_db, now, unit="week", group="model", forecast_periods=0)
    # Jan 10 2025 is a Friday: its ISO week starts Monday Jan 6
    assert weeks[0]["period"] == date(2025, 1, 6) and weeks[0]["model"] == A100 and len(weeks) == 4


def test_cli_with_plot_and_bad_input(months_db: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # the `plot` extra, part of the `test` extra
    cmd = [sys.executable, "-m", "migmeter.cli", "report", "trend", "--from", "2025-01", "--to", "2025-04",
           "--database-url", months_db]
    r = subprocess.run(cmd + ["--plot", str(tmp_path / "trend.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Trend per month 2025-01 .. 2025-04" in r.stdout and "forecast" in r.stdout
    assert (tmp_path / "trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(cmd[:7] + ["2024-12"] + cmd[8:], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--to" in bad.stderr


def test_coverage_and_cost_follow_capacity(fresh_db: str) -> None:
    # One A100 metered 00:00-01:00 and 04:00-05:00 on Jan 10 (hourly snapshots at 01:00 and 05:00;
    # the 4 h silence exceeds the 3 x 3600 s gap limit, so 05:00 covers 04:00-05:00 only).
    # Life 00:00-05:00 = capacity 5 h, metered 2 h, unmetered 3 h -> coverage 40 %;
    # cost = capacity x 2.00 = 10.00 (the chargeback bills the unmetered line too).
    snaps = [mig(datetime(2025, 1, 10, h, tzinfo=timezone.utc), [inst(1, "3g.20gb", 0.5, "team-a", "a")],
                 gpu="GPU-G", model=A100, interval_s=3600) for h in (1, 5)]
    url = feed_priced(fresh_db, snaps, [(A100, "2.00", date(2025, 1, 1))])
    with psycopg.connect(url) as conn:
        (jan,) = [r for r in trend.trend(conn, date(2025, 1, 1), date(2025, 1, 1), forecast_periods=0).as_dicts()
                  if r["kind"] == "actual"]
    assert jan["gpu_hours"] == pytest.approx(2.0) and jan["coverage_pct"] == pytest.approx(40.0)
    assert jan["cost"] == pytest.approx(Decimal("10.00"))
