"""Right-sizing on a hand-built month through the processor's fold and sink.

One H100 ('NVIDIA H100 80GB HBM3', 7 slices) on Nov 10 2025, 120 snapshots a minute apart from
00:01 (2 h, every minute its own 1-minute row), GPU price 7.00 USD/GPU-hour (1.00 a slice-hour):
- GI 1 3g.40gb team-a/pod-a: 10 % for the first 100 minutes, 25 % for the last 20; 8000 MiB used.
- GI 2 1g.10gb team-b/pod-b: 100 % all the time; 9000 MiB used.
- GI 3 2g.20gb team-c/pod-c: no utilization reading (NVML on MIG without GPM), no memory.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

from warehouse import rightsize
from tests.integration.feed import feed_priced
from tests.processor.build import inst, mig

pytestmark = pytest.mark.integration

H100 = "NVIDIA H100 80GB HBM3"
NOV = date(2025, 11, 1)
T0 = datetime(2025, 11, 10, tzinfo=timezone.utc)


@pytest.fixture
def fleet_db(fresh_db: str) -> str:
    return feed_priced(fresh_db, [mig(T0 + timedelta(minutes=m), [
        inst(1, "3g.40gb", 0.10 if m <= 100 else 0.25, "team-a", "pod-a", fb_used=8000.0),
        inst(2, "1g.10gb", 1.0, "team-b", "pod-b", fb_used=9000.0),
        inst(3, "2g.20gb", None, "team-c", "pod-c"),
    ], gpu="GPU-R", model=H100, interval_s=60) for m in range(1, 121)], [(H100, "7.00", NOV)])


def test_recommendations_percentiles_and_savings(fleet_db: str) -> None:
    with psycopg.connect(fleet_db) as conn:
        report = rightsize.rightsize(conn, NOV)
    rows = {r["namespace"]: r for r in report.as_dicts()}
    assert set(rows) == {"team-a", "team-b", "team-c"}
    a, b, c = rows["team-a"], rows["team-b"], rows["team-c"]
    # team-a: 120 minute values, 100 x 10 % and 20 x 25 %: p50 = 10 %; p95 at position 0.95 x 119 = 113.05
    # of the sorted values (0-based) = 25 %; max 25 %. Needs 0.25 x 3 = 0.75 slices, x 1.2 = 0.9 -> 1 slice;
    # memory 8000 x 1.2 = 9600 MiB <= 1g.10gb's 10 x 1024 = 10240 -> 1g.10gb with headroom.
    assert (a["util_minutes"], a["p50_util_pct"], a["p95_util_pct"], a["max_util_pct"]) == (120, pytest.approx(10.0),
                                                                                              pytest.approx(25.0),
                                                                                              pytest.approx(25.0))
    assert a["peak_fb_mib"] == 8000.0 and a["instance_hours"] == pytest.approx(2.0)
    assert (a["recommended"], a["headroom_ok"]) == ("1g.10gb", True)
    # cost 2 h x 3/7 x 7.00 = 6.00; saving 6.00 x (3 - 1)/3 = 4.00 a month
    assert a["cost"] == pytest.approx(Decimal("6.00")) and a["saving_per_month"] == Decimal("4.000000")
    # team-b: saturated 1g (p95 100 %): 1 x 1.2 = 1.2 slices -> 2g.20gb; 9000 x 1.2 = 10800 MiB fits 20 GB.
    # saving 2.00 x (1 - 2)/1 = -2.00 (it needs more, not less)
    assert (b["recommended"], b["headroom_ok"], b["saving_per_month"]) == ("2g.20gb", True, Decimal("-2.000000"))
    assert b["reason"].startswith("larger (saturated)")
    # team-c: no utilization minute at all
    assert c["recommended"] is None and c["util_minutes"] == 0 and c["reason"].startswith("too little data: 0 minutes")
    assert report.notes[0] == "possible saving 4.00 USD per month (workloads that would fit a smaller profile)"


def test_cli_table_and_headroom_flag(fleet_db: str) -> None:
    r = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "rightsize", "--month", "2025-11",
                        "--headroom", "0.5", "--format", "csv", "--database-url", fleet_db],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    by_ns = {line.split(",")[0]: line for line in r.stdout.splitlines()[1:]}
    # 50 % headroom: team-a 0.75 x 1.5 = 1.125 slices -> 2g.20gb (memory 12000 MiB fits 20 GB)
    assert ",2g.20gb,True," in by_ns["team-a"]
    bad = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "rightsize", "--month", "2025-11",
                          "--headroom", "3", "--database-url", fleet_db], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "headroom" in bad.stderr
