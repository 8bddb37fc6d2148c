"""Per-profile prices and share rules, on a hand-built month through the processor's fold and sink.

One H100 ('NVIDIA H100 80GB HBM3', 7 compute slices, 8 memory slices of 10 GB), Nov 10 2025
01:00-04:00 (4 hourly snapshots = 4 h): GI 9 1g.20gb team-a/pod-a, GI 1 3g.40gb team-b/pod-b,
3 compute slices unallocated. GPU price 7.00 USD per GPU-hour from Nov 1 (1.00 per compute
slice-hour), so the GPU costs 4 h x 7.00 = 28.00.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import Decimal

import psycopg
import pytest

from warehouse import profile_pricing, reports
from tests.integration.feed import feed_priced
from tests.processor.build import inst, mig

pytestmark = pytest.mark.integration

H100 = "NVIDIA H100 80GB HBM3"
NOV = date(2025, 11, 1)


@pytest.fixture
def h100_db(fresh_db: str) -> str:
    return feed_priced(fresh_db, [mig(datetime(2025, 11, 10, h, tzinfo=timezone.utc), [
        inst(9, "1g.20gb", 0.5, "team-a", "pod-a"),
        inst(1, "3g.40gb", 1.0, "team-b", "pod-b"),
    ], gpu="GPU-H", model=H100, interval_s=3600) for h in range(1, 5)], [(H100, "7.00", NOV)])


def _costs(conn: psycopg.Connection) -> dict[str, Decimal]:
    report = profile_pricing.chargeback(conn, NOV)
    return {r["namespace"]: r["cost"] for r in report.as_dicts()}


def test_compute_rule_by_default_equals_the_gpu_priced_chargeback(h100_db: str) -> None:
    # team-a 4 h x 1/7 x 7.00 = 4.00; team-b 4 h x 3/7 x 7.00 = 12.00; not covered 28 - 16 = 12.00
    # = the default chargeback's unallocated line (3 free slices x 4 h x 1.00).
    with psycopg.connect(h100_db) as conn:
        got = _costs(conn)
        cb = {r["namespace"]: float(r["cost_alloc"]) for r in reports.chargeback(conn, NOV).as_dicts()}
    assert got == {"team-a": Decimal("4.000000"), "team-b": Decimal("12.000000"), "(not covered)": Decimal("12.000000")}
    assert cb == pytest.approx({"team-a": 4.0, "team-b": 12.0, "(unallocated)": 12.0})


def test_memory_rule_then_a_profile_price_wins_and_the_rest_is_not_covered(h100_db: str) -> None:
    with psycopg.connect(h100_db) as conn:
        profile_pricing.set_share_rule(conn, H100, "memory", NOV)
        # memory: 1g.20gb = 2/8 -> 4 h x 0.25 x 7.00 = 7.00; 3g.40gb = 4/8 -> 4 h x 0.5 x 7.00 = 14.00;
        # not covered 28 - 21 = 7.00
        assert _costs(conn) == {"team-a": Decimal("7.000000"), "team-b": Decimal("14.000000"),
                                "(not covered)": Decimal("7.000000")}
        profile_pricing.set_profile_price(conn, H100, "3g.40gb", Decimal("3.20"), "USD", NOV)
        # the profile price wins for team-b: 4 instance-hours x 3.20 = 12.80; not covered 28 - 7 - 12.80 = 8.20
        report = profile_pricing.chargeback(conn, NOV)
        rows = {r["namespace"]: r for r in report.as_dicts()}
        assert {ns: r["cost"] for ns, r in rows.items()} == {
            "team-a": Decimal("7.000000"), "team-b": Decimal("12.800000"), "(not covered)": Decimal("8.200000")}
        assert rows["team-b"]["instance_hours"] == pytest.approx(4.0)
        assert rows["team-b"]["profile_priced_hours"] == pytest.approx(4.0)
        assert rows["team-a"]["alloc_gpu_hours"] == pytest.approx(4 / 7)
        assert report.notes[0] == "reconciliation: lines 28.00 USD = GPUs' cost (GPU-hours x GPU-hour price) 28.00 USD"
        conn.rollback()


def test_a_profile_the_model_does_not_offer_is_refused(h100_db: str) -> None:
    with psycopg.connect(h100_db) as conn, pytest.raises(Exception, match="does not offer profile '5g.50gb'"):
        profile_pricing.set_profile_price(conn, H100, "5g.50gb", Decimal("1"), "USD", NOV)


def test_cli_sets_profile_prices_and_rules_and_the_reader_reports(h100_db: str) -> None:
    base = [sys.executable, "-m", "migmeter.cli"]
    url = ["--database-url", h100_db]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(base + list(args) + url, capture_output=True, text=True, timeout=120)

    assert run("price", "rule", H100, "max", "--from", "2025-11-01").returncode == 0
    ok = run("price", "set", H100, "0.90", "--profile", "1g.20gb", "--from", "2025-11-01")
    assert ok.returncode == 0 and "per instance-hour" in ok.stdout
    bad = run("price", "set", H100, "0.90", "--profile", "9g.1gb", "--from", "2025-11-01")
    assert bad.returncode == 2 and "does not offer" in bad.stderr
    assert run("price", "rule", H100, "median", "--from", "2025-11-01").returncode == 2
    report = run("report", "chargeback", "--month", "2025-11", "--pricing", "profile", "--format", "json")
    assert report.returncode == 0, report.stderr
    got = {r["namespace"]: r["cost"] for r in json.loads(report.stdout)["rows"]}
    # team-a: profile price 4 h x 0.90 = 3.60; team-b: max(3/7, 4/8) = 1/2 -> 4 h x 0.5 x 7.00 = 14.00;
    # not covered 28 - 3.60 - 14.00 = 10.40
    assert got == {"team-a": 3.6, "team-b": 14.0, "(not covered)": 10.4}
    with psycopg.connect(h100_db, autocommit=True) as conn:
        conn.execute("SET ROLE migmeter_reader")
        assert _costs(conn)["(not covered)"] == Decimal("10.400000")
