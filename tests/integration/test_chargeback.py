"""Chargeback of a hand-built month, end to end through the processor's fold and sink.

November 2025, hourly snapshots (interval 3600 s, so one snapshot = one hour):
- GPU-A, an A100 (7 slices), on Nov 10 00:00-03:00 (4 h): 3g team-a/pod-a1 at 50 %,
  2g team-b/pod-b1 at 100 %, 1g unassigned at 0 %, 1 slice unallocated.
  Reconfigured: on Nov 20 00:00-01:00 (2 h) one 7g team-a/pod-a2 at 25 %.
- GPU-B, an A30 (4 slices) without MIG, on Nov 10 00:00-01:00 (2 h): team-b/pod-b2 at 80 %.
Prices: A100 2.00/GPU-hour from Nov 1, 3.00 from Nov 16 (the change falls between the two
A100 periods); A30 1.00 from Jan 1.
v2 time model: a snapshot at ts stands for the hour before it, so the snapshots are taken at
the END of each hour (01:00 stands for 00:00-01:00). GPU-A is silent from Nov 10 04:00 to
Nov 20 00:00 (longer than the 3 h gap limit): those 236 h are its unmetered line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

from warehouse import prices, reports
from tests.integration.feed import feed
from tests.processor.build import inst, mig, whole

pytestmark = pytest.mark.integration

A100, A30 = "A100-SXM4-40GB", "A30"
NOV10 = datetime(2025, 11, 10, tzinfo=timezone.utc)
NOV20 = datetime(2025, 11, 20, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
CLUSTER = "c1"


def _month() -> list:
    snaps = []
    for h in range(4):
        snaps.append(mig(NOV10 + (h + 1) * HOUR, [
            inst(1, "3g.20gb", 0.5, "team-a", "pod-a1"),
            inst(2, "2g.10gb", 1.0, "team-b", "pod-b1"),
            inst(3, "1g.5gb", 0.0),
        ], gpu="GPU-A", model=A100, interval_s=3600))
    for h in range(2):
        snaps.append(mig(NOV20 + (h + 1) * HOUR, [inst(0, "7g.40gb", 0.25, "team-a", "pod-a2")],
                         gpu="GPU-A", model=A100, interval_s=3600))
    for h in range(2):
        snaps.append(whole(NOV10 + (h + 1) * HOUR, 0.8, gpu="GPU-B", total=4, model=A30, interval_s=3600,
                           ns="team-b", pod="pod-b2"))
    return snaps


@pytest.fixture
def month_db(fresh_db: str) -> str:
    with psycopg.connect(fresh_db) as conn:
        prices.set_price(conn, prices.Price(A100, Decimal("2.00"), "USD", date(2025, 11, 1)))
        prices.set_price(conn, prices.Price(A100, Decimal("3.00"), "USD", date(2025, 11, 16)))
        prices.set_price(conn, prices.Price(A30, Decimal("1.00"), "USD", date(2025, 1, 1)))
    feed(fresh_db, _month())
    return fresh_db


# namespace -> (alloc GPU-h, used GPU-h, cost by allocation, cost by use), by hand:
#   team-a: 4h*3/7 @2 + 2h*7/7 @3 ; used 4h*3/7*0.5 + 2h*0.25
#   team-b: 4h*2/7 @2 + 2h*4/4 @1 ; used 4h*2/7*1.0 + 2h*0.8
#   unassigned: 4h*1/7 @2, used 0 ; unallocated: 4h*1/7 @2
#   unmetered: GPU-A's (Nov 10 04:00, Nov 20 00:00] = 20 h + 5 days (Nov 11-15) = 140 h @2 = 280,
#     plus Nov 16-19 = 96 h @3 = 288: 236 h, 568.
EXPECTED = {
    "(unmetered)": (236.0, 0.0, 568.0, 0.0),
    "team-a": (12 / 7 + 2, 6 / 7 + 0.5, 24 / 7 + 6, 12 / 7 + 1.5),
    "team-b": (8 / 7 + 2, 8 / 7 + 1.6, 16 / 7 + 2, 16 / 7 + 1.6),
    "(unassigned)": (4 / 7, 0.0, 8 / 7, 0.0),
    "(unallocated)": (4 / 7, 0.0, 8 / 7, 0.0),
}


def test_monthly_chargeback_equals_hand_computed_values(month_db: str) -> None:
    with psycopg.connect(month_db) as conn:
        report = reports.chargeback(conn, date(2025, 11, 1), by="namespace")
    got = {r["namespace"]: r for r in report.as_dicts()}
    assert set(got) == set(EXPECTED)
    for ns, (alloc, used, cost_alloc, cost_used) in EXPECTED.items():
        row = got[ns]
        assert row["alloc_gpu_hours"] == pytest.approx(alloc, abs=1e-9), ns
        assert row["used_gpu_hours"] == pytest.approx(used, abs=1e-9), ns
        assert float(row["cost_alloc"]) == pytest.approx(cost_alloc, abs=1e-6), ns
        assert float(row["cost_used"]) == pytest.approx(cost_used, abs=1e-6), ns
        assert row["currency"] == "USD"
    # utilization of what was allocated: used / allocated
    assert got["team-a"]["alloc_util_pct"] == pytest.approx(100 * (6 / 7 + 0.5) / (12 / 7 + 2))
    assert got["(unallocated)"]["line"] == "unallocated" and got["(unassigned)"]["line"] == "unassigned"
    # every instance reported a utilization: nothing unmeasured, on any line
    assert [r["unmeasured_gpu_hours"] for r in report.as_dicts()] == pytest.approx([0.0] * len(EXPECTED))


def test_price_change_splits_the_month(month_db: str) -> None:
    # A single monthly price would bill team-a's A100 hours all at 2.00 or all at 3.00.
    with psycopg.connect(month_db) as conn:
        rows = conn.execute(
            "SELECT day, price_per_gpu_hour, sum(cost_alloc) FROM chargeback_pod_daily "
            "WHERE namespace = 'team-a' GROUP BY 1, 2 ORDER BY 1").fetchall()
    assert [(d, p) for d, p, _ in rows] == [(date(2025, 11, 10), Decimal("2.000000")),
                                           (date(2025, 11, 20), Decimal("3.000000"))]
    assert float(rows[0][2]) == pytest.approx(24 / 7) and float(rows[1][2]) == pytest.approx(6.0)


_VIEW_LINES = {
    "pod": "SELECT line, namespace, pod, alloc_gpu_hours, used_gpu_hours, unmeasured_gpu_hours, alloc_util_pct, "
           "cost_alloc, cost_used, currency FROM chargeback_pod_monthly WHERE month = '2025-11-01'",
    "namespace": "SELECT line, namespace, alloc_gpu_hours, used_gpu_hours, unmeasured_gpu_hours, alloc_util_pct, "
                 "cost_alloc, cost_used, currency FROM chargeback_namespace_monthly WHERE month = '2025-11-01'",
}


def _by_key(rows, n_keys: int) -> dict:
    """(line, keys..., currency) -> the numbers as floats (None stays None)."""
    return {tuple(r[:1 + n_keys]) + (r[-1],): [None if v is None else float(v) for v in r[1 + n_keys:-1]]
            for r in rows}


def _assert_report_equals_views(conn: psycopg.Connection) -> None:
    for by, n_keys in (("pod", 2), ("namespace", 1)):
        report = _by_key(reports.chargeback(conn, date(2025, 11, 1), by=by).rows, n_keys)
        view = _by_key(conn.execute(_VIEW_LINES[by]).fetchall(), n_keys)
        assert report.keys() == view.keys(), by
        for key, numbers in report.items():
            assert numbers == pytest.approx(view[key], abs=1e-9, nan_ok=True), (by, key)


def test_report_and_bi_monthly_views_give_identical_lines(month_db: str) -> None:
    # Two paths to the same month: the report aggregates per day and key, then prices
    # (sql/reports/chargeback.sql); chargeback_pod_monthly sums 011's per-pod priced days and
    # chargeback_namespace_monthly 012's per-namespace priced days. They must not drift.
    with psycopg.connect(month_db) as conn:
        _assert_report_equals_views(conn)
        # Same with a model that has no price: its hours move to lines with a NULL currency.
        conn.execute("DELETE FROM prices WHERE gpu_model = %s", (A30,))
        _assert_report_equals_views(conn)
        unpriced = {r["pod"]: r for r in reports.chargeback(conn, date(2025, 11, 1), by="pod").as_dicts()
                    if r["currency"] is None}
        # GPU-B's 2 h (team-b/pod-b2), and its unallocated line (0 h: the whole GPU was in use)
        assert set(unpriced) == {"pod-b2", "(unallocated)"}
        assert unpriced["pod-b2"]["alloc_gpu_hours"] == pytest.approx(2.0) and unpriced["pod-b2"]["cost_alloc"] is None
        assert unpriced["(unallocated)"]["alloc_gpu_hours"] == pytest.approx(0.0)
        conn.rollback()


def test_daily_views_and_plot_data_agree_with_the_per_pod_days(month_db: str) -> None:
    # 012 computes chargeback_namespace_daily from the daily rows directly; 011's per-pod priced
    # days summed per namespace are the reference. The --plot data must add up to the report.
    with psycopg.connect(month_db) as conn:
        ns_daily = _by_key(conn.execute(
            "SELECT bucket, cluster, line, namespace, alloc_gpu_hours, used_gpu_hours, util_known_gpu_hours, "
            "cost_alloc, cost_used, currency FROM chargeback_namespace_daily").fetchall(), 3)
        pod_daily = _by_key(conn.execute(
            "SELECT bucket, cluster, line, namespace, sum(alloc_gpu_hours), sum(used_gpu_hours), "
            "sum(util_known_gpu_hours), sum(cost_alloc), sum(cost_used), currency FROM chargeback_pod_daily "
            "GROUP BY bucket, cluster, line, namespace, currency").fetchall(), 3)
        plot = reports.chargeback_daily(conn, date(2025, 11, 1)).rows
        report = reports.chargeback(conn, date(2025, 11, 1)).as_dicts()
    assert ns_daily.keys() == pod_daily.keys()
    # Nov 10: 4 lines + unmetered; Nov 11-19: unmetered; Nov 20: team-a and unallocated (0 h, the 7g fills GPU-A)
    assert len(ns_daily) == 16
    for key, numbers in ns_daily.items():
        assert numbers == pytest.approx(pod_daily[key], abs=1e-9), key
    per_namespace: dict[str, float] = {}
    for _, namespace, hours in plot:
        per_namespace[namespace] = per_namespace.get(namespace, 0.0) + hours
    assert per_namespace == pytest.approx({r["namespace"]: r["alloc_gpu_hours"] for r in report}, abs=1e-9)


def test_month_reconciles_to_physical_gpu_hours(month_db: str) -> None:
    start, end = reports.month_range(date(2025, 11, 1))
    with psycopg.connect(month_db) as conn:
        rec = reports.reconciliation(conn, start, end)
        view = conn.execute("SELECT physical_gpu_hours, difference_gpu_hours FROM chargeback_reconciliation_monthly "
                            "WHERE month = '2025-11-01' AND cluster = %s", (CLUSTER,)).fetchone()
    # capacity: 4 h + 236 h unmetered + 2 h of GPU-A, 2 h of GPU-B
    assert rec.physical_gpu_hours == pytest.approx(244.0) and rec.unmetered_gpu_hours == pytest.approx(236.0)
    assert rec.tenant_gpu_hours == pytest.approx(26 / 7 + 22 / 7)
    assert rec.ok and abs(rec.difference_gpu_hours) < 1e-9
    assert view[0] == pytest.approx(244.0) and abs(view[1]) < 1e-9


def test_by_pod_splits_namespaces(month_db: str) -> None:
    with psycopg.connect(month_db) as conn:
        report = reports.chargeback(conn, date(2025, 11, 1), by="pod")
    pods = {(r["namespace"], r["pod"]): r["alloc_gpu_hours"] for r in report.as_dicts()}
    assert pods[("team-a", "pod-a1")] == pytest.approx(12 / 7)
    assert pods[("team-a", "pod-a2")] == pytest.approx(2.0)
    assert pods[("team-b", "pod-b2")] == pytest.approx(2.0)
    assert len(pods) == 7  # four tenant pods, the unassigned, the unallocated and the unmetered line
    assert ("(unallocated)", "(unallocated)") in pods


def test_other_months_and_clusters_are_empty(month_db: str) -> None:
    with psycopg.connect(month_db) as conn:
        assert reports.chargeback(conn, date(2025, 10, 1)).rows == ()
        assert reports.chargeback(conn, date(2025, 11, 1), cluster="elsewhere").rows == ()
        assert reports.chargeback(conn, date(2025, 11, 1), cluster=CLUSTER).rows != ()


def test_as_of_layout_just_before_and_after_the_reconfiguration(month_db: str) -> None:
    with psycopg.connect(month_db) as conn:
        before = reports.layout_at(conn, "GPU-A", NOV20 + HOUR - timedelta(microseconds=1))
        after = reports.layout_at(conn, "GPU-A", NOV20 + HOUR)
        changes = reports.layout_changes(conn, "GPU-A", NOV10, NOV20 + 2 * HOUR)
        unknown = reports.layout_at(conn, "GPU-A", NOV10 + HOUR - timedelta(seconds=1))
    assert [(r["gi_id"], r["profile"], r["namespace"]) for r in before.as_dicts()] == [
        (1, "3g.20gb", "team-a"), (2, "2g.10gb", "team-b"), (3, "1g.5gb", "(unassigned)")]
    assert [(r["gi_id"], r["profile"], r["pod"]) for r in after.as_dicts()] == [(0, "7g.40gb", "pod-a2")]
    assert unknown.rows == ()  # before the first snapshot nothing is known
    events = [(r["ts"], r["event"], r["gi_id"]) for r in changes.as_dicts()]
    assert {e[1] for e in events} == {"destroyed", "created"}
    assert all(ts == NOV20 + HOUR for ts, _, _ in events)
    assert sorted(e[2] for e in events if e[1] == "destroyed") == [1, 2, 3]


def test_idle_capacity_ranks_the_most_idle_first(month_db: str) -> None:
    with psycopg.connect(month_db) as conn:
        report = reports.idle_capacity(conn, date(2025, 11, 1))
    rows = report.as_dicts()
    # team-a/pod-a1: 3 slices x 4 h at 50 % -> 6 idle slice-hours; pod-a2: 7 x 2 h at 25 % -> 10.5;
    # unassigned 1g: 1 x 4 h at 0 % -> 4; team-b/pod-b1 at 100 % -> 0; pod-b2: 4 x 2 h at 80 % -> 1.6
    top = [(r["pod"], round(r["idle_slice_hours"], 6)) for r in rows]
    assert top[:3] == [("pod-a2", 10.5), ("pod-a1", 6.0), ("(unassigned)", 4.0)]
    assert rows[0]["rank"] == 1 and float(rows[0]["idle_cost"]) == pytest.approx(10.5 / 7 * 3.0)


def test_report_cli_json_and_a_hostile_filter(month_db: str) -> None:
    env_url = ["--database-url", month_db]
    ok = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "chargeback", "--month", "2025-11",
                         "--format", "json", *env_url], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert '"namespace": "team-a"' in ok.stdout
    hostile = "c1' OR '1'='1"
    r = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "chargeback", "--month", "2025-11",
                        "--cluster", hostile, "--format", "csv", *env_url], capture_output=True, text=True, timeout=60)
    # passed as a parameter: a cluster literally named so has no rows; the injection did not run
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == ["line,namespace,alloc_gpu_hours,used_gpu_hours,unmeasured_gpu_hours,alloc_util_pct,"
                                             "cost_alloc,cost_used,currency"]
    bad = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "utilization", "--from", "2025-11-01",
                          "--to", "2025-12-01", "--by", "hour; DELETE FROM prices", *env_url],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    with psycopg.connect(month_db) as conn:
        assert conn.execute("SELECT count(*) FROM prices").fetchone()[0] == 3


def test_utilization_report_totals(month_db: str) -> None:
    with psycopg.connect(month_db) as conn:
        report = reports.utilization(conn, NOV10, NOV10 + timedelta(days=1), by="day")
        one = reports.utilization(conn, NOV10, NOV10 + timedelta(days=1), by="hour", gpu="GPU-B")
    rows = report.as_dicts()
    assert [r["bucket"] for r in rows] == [NOV10, "total"]
    day = rows[0]
    # GPU-A 4 h + GPU-B 2 h; busy = 4*(3/7*.5 + 2/7*1) + 2*.8; allocated 4*6/7 + 2
    assert day["gpus"] == 2 and day["gpu_hours"] == pytest.approx(6.0)
    busy = 4 * (1.5 / 7 + 2 / 7) + 1.6
    assert day["whole_util_pct"] == pytest.approx(100 * busy / 6.0)
    assert day["weighted_util_pct"] == pytest.approx(100 * busy / (4 * 6 / 7 + 2))
    assert day["allocation_pct"] == pytest.approx(100 * (4 * 6 / 7 + 2) / 6.0)
    # GPU-A is silent from 04:00: 20 h unmetered on Nov 10 -> capacity 26 h, coverage 6 / 26
    assert day["capacity_gpu_hours"] == pytest.approx(26.0)
    assert day["coverage_pct"] == pytest.approx(100 * 6 / 26)
    assert [r["whole_util_pct"] for r in one.as_dicts()] == pytest.approx([80.0, 80.0, 80.0])


def test_report_cli_plots_and_layout(month_db: str, tmp_path) -> None:
    url = ["--database-url", month_db]
    cb = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "chargeback", "--month", "2025-11", "--by",
                         "pod", "--plot", str(tmp_path / "cb.png"), *url], capture_output=True, text=True, timeout=120)
    assert cb.returncode == 0, cb.stderr
    assert "pod-a2" in cb.stdout and "-> reconciles" in cb.stdout
    ut = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "utilization", "--from", "2025-11-10",
                         "--to", "2025-11-21", "--host", "h1", "--by", "hour", "--plot", str(tmp_path / "u.png"), *url],
                        capture_output=True, text=True, timeout=120)
    assert ut.returncode == 0, ut.stderr
    assert "total" in ut.stdout
    for name in ("cb.png", "u.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    la = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "layout", "--gpu", "GPU-A", "--from",
                         "2025-11-10T01:00Z", "--to", "2025-11-21", "--format", "json", *url],
                        capture_output=True, text=True, timeout=120)
    assert la.returncode == 0, la.stderr
    before, changes = json.loads(la.stdout)
    assert [r["profile"] for r in before["rows"]] == ["3g.20gb", "2g.10gb", "1g.5gb"]
    assert {r["event"] for r in changes["rows"]} == {"created", "destroyed"}
