"""Profile prices everywhere: FOCUS export, HTML statement and reader views bill what
``report chargeback --pricing profile`` bills, and every output adds up to the default total.

Fleet (November 2025, hourly snapshots through the processor's fold and sink), all
'NVIDIA H100 80GB HBM3' (7 compute slices, 8 memory slices of 10 GB) at 7.00 USD/GPU-hour
(1.00 per compute slice-hour) from Nov 1:
- GPU-H, Nov 10 01:00-04:00 (4 snapshots = 4 h): GI 9 1g.20gb team-a/pod-a, GI 1 3g.40gb
  team-b/pod-b, 3 compute slices unallocated. Its cost: 4 h x 7.00 = 28.00.
- GPU-W, Nov 12: snapshots at 01:00, 02:00, 06:00, 07:00, GI 0 7g.80gb team-c/pod-c. The 4 h gap
  02:00-06:00 exceeds the gap limit (3 x 3600 s), so 06:00 covers only 05:00-06:00: metered
  4 h (28.00), unmetered 02:00-05:00 = 3 h (21.00).
Pricing: share rule 'memory' for the H100 and a profile price 3.20 USD per 3g.40gb instance-hour.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.integration.feed import feed_priced
from tests.processor.build import inst, mig
from warehouse import focus, profile_pricing, reports, statement

pytestmark = pytest.mark.integration

H100 = "NVIDIA H100 80GB HBM3"
NOV = date(2025, 11, 1)
CENT = Decimal("0.01")
# Default (gpu) pricing: 28.00 (GPU-H) + 28.00 (GPU-W metered) + 21.00 (unmetered) = 77.00.
TOTAL = Decimal("77.00")


def _at(day: int, hour: int) -> datetime:
    return datetime(2025, 11, day, hour, tzinfo=timezone.utc)


@pytest.fixture
def fleet_db(fresh_db: str) -> str:
    snaps = [mig(_at(10, h), [inst(9, "1g.20gb", 0.5, "team-a", "pod-a"), inst(1, "3g.40gb", 1.0, "team-b", "pod-b")],
                 gpu="GPU-H", model=H100, interval_s=3600) for h in range(1, 5)]
    snaps += [mig(_at(12, h), [inst(0, "7g.80gb", 1.0, "team-c", "pod-c")], gpu="GPU-W", model=H100, interval_s=3600)
              for h in (1, 2, 6, 7)]
    feed_priced(fresh_db, snaps, [(H100, "7.00", NOV)])
    with psycopg.connect(fresh_db) as conn:
        assert profile_pricing.set_share_rule(conn, H100, "memory", NOV) > 0
        profile_pricing.set_profile_price(conn, H100, "3g.40gb", Decimal("3.20"), "USD", NOV)
    return fresh_db


# Profile pricing by hand:
#   team-a 1g.20gb, memory 2/8: 4 instance-hours x 1/4 x 7.00 = 7.00 (quantity 1 GPU-hour at 7.00)
#   team-b 3g.40gb, profile price: 4 instance-hours x 3.20 = 12.80
#   team-c 7g.80gb (whole GPU, share 1): 4 h x 7.00 = 28.00
#   not covered: GPUs' metered cost 56.00 - 7.00 - 12.80 - 28.00 = 8.20 (3 free slices x 4 h = 12.00
#     at GPU price, minus the 3.80 the two instances pay over their 4 compute slices' 16.00)
#   unmetered: 3 h x 7.00 = 21.00, carried at the GPU price
PROFILE_LINES = {"team-a": Decimal("7.00"), "team-b": Decimal("12.80"), "team-c": Decimal("28.00"),
                 "(not covered)": Decimal("8.20"), "(unmetered)": Decimal("21.00")}


def test_profile_chargeback_carries_unmetered_and_equals_the_default_total(fleet_db: str) -> None:
    with psycopg.connect(fleet_db) as conn:
        default = reports.chargeback(conn, NOV).as_dicts()
        profile = profile_pricing.chargeback(conn, NOV)
    assert sum(Decimal(r["cost_alloc"]) for r in default).quantize(CENT) == TOTAL
    got = {r["namespace"]: r["cost"].quantize(CENT) for r in profile.as_dicts()}
    assert got == PROFILE_LINES
    assert sum(got.values()) == TOTAL  # 7.00 + 12.80 + 28.00 + 8.20 + 21.00
    assert profile.notes[0] == "reconciliation: lines 77.00 USD = GPUs' cost (GPU-hours x GPU-hour price) 77.00 USD"


def test_focus_under_profile_pricing_bills_the_same_lines_and_total(fleet_db: str) -> None:
    with psycopg.connect(fleet_db) as conn:
        gpu = focus.export(conn, NOV)
        prof = focus.export(conn, NOV, pricing="profile")
    # Σ BilledCost = the chargeback total to the cent under both pricings.
    assert gpu.billed_total()["USD"].quantize(CENT) == TOTAL == prof.billed_total()["USD"].quantize(CENT)
    rows = {(r["x_Line"], r["x_Namespace"]): r for r in prof.rows}
    a, b, c = rows[("tenant", "team-a")], rows[("tenant", "team-b")], rows[("tenant", "team-c")]
    # team-a: memory share -> 4/7 GPU-hours x (1/4) / (1/7) = 1 GPU-hour at 7.00; consumed stays 4/7 GPU-hours
    assert (a["PricingQuantity"], a["PricingUnit"], a["ListUnitPrice"], a["BilledCost"]) == \
        (Decimal("1.000000000"), "GPU-Hours", Decimal("7.000000"), Decimal("7.000000000000000"))
    assert a["SkuPriceId"] == f"gpu-hour/{H100}/memory-share" and a["ConsumedQuantity"] == Decimal("0.571428571")
    # team-b: the profile price: 4 instance-hours x 3.20 = 12.80, its own SKU
    assert (b["PricingQuantity"], b["PricingUnit"], b["ListUnitPrice"]) == \
        (Decimal("4.000000000"), "Instance-Hours", Decimal("3.200000"))
    assert b["BilledCost"] == Decimal("12.8") and b["SkuId"] == b["SkuPriceId"] == f"instance-hour/{H100}/3g.40gb"
    assert b["ConsumedQuantity"] == Decimal("1.714285714") and b["ConsumedUnit"] == "GPU-Hours"  # 12/7 GPU-hours
    # team-c: whole GPU, the default pricing's row to the digit
    assert c["BilledCost"] == Decimal("28") and c["SkuPriceId"] == f"gpu-hour/{H100}"
    # unallocated at the GPU price: 12/7 GPU-hours x 7.00 = 11.999999998 (9-place quantity)
    assert rows[("unallocated", None)]["BilledCost"] == Decimal("1.714285714") * 7
    # not covered: 8.20 of the profile chargeback minus the 12.00 unallocated rows = -3.80 (to the cent)
    nc = rows[("not covered", None)]
    assert nc["BilledCost"].quantize(CENT) == Decimal("-3.80") and nc["ChargeCategory"] == "Adjustment"
    assert rows[("unmetered", None)]["BilledCost"].quantize(CENT) == Decimal("21.00")
    # the not-covered row follows the spec's null rules for a non-usage charge (consumedquantity.md:
    # null unless Usage; pricingquantity.md / skuid.md / listunitprice.md: MAY be null when not Usage)
    assert nc["ConsumedQuantity"] is None and nc["ConsumedUnit"] is None and nc["PricingQuantity"] is None
    assert nc["ChargeClass"] is None and nc["ChargeFrequency"] == "Usage-Based"
    assert nc["EffectiveCost"] == nc["ListCost"] == nc["ContractedCost"] == nc["BilledCost"]
    for r in prof.rows:  # listunitprice.md: ListUnitPrice x PricingQuantity MUST equal ListCost
        if r["ListUnitPrice"] is not None:
            assert r["ListUnitPrice"] * r["PricingQuantity"] == r["ListCost"]
    assert any("Σ BilledCost 77.00 USD = chargeback total 77.00 USD" in n for n in prof.notes)


def test_reader_views_bill_the_profile_chargeback(fleet_db: str) -> None:
    with psycopg.connect(fleet_db, autocommit=True) as conn:
        conn.execute("SET ROLE migmeter_reader")
        got = {ns: cost.quantize(CENT) for ns, cost in conn.execute(
            "SELECT namespace, sum(cost) FROM chargeback_profile_namespace_monthly WHERE month = %s"
            " GROUP BY namespace", (NOV,))}
        daily = {ns: (rule, q, unit) for ns, rule, q, unit in conn.execute(
            "SELECT namespace, pricing_rule, quantity, unit FROM chargeback_profile_lines_daily"
            " WHERE bucket >= '2025-11-01' AND bucket < '2025-12-01' AND line = 'tenant'")}
        report = {r["namespace"]: r["cost"].quantize(CENT) for r in profile_pricing.chargeback(conn, NOV).as_dicts()}
    assert got == PROFILE_LINES == report
    assert daily == {"team-a": ("memory", Decimal("1.000000000"), "GPU-Hours"),
                     "team-b": ("profile", Decimal("4.000000000"), "Instance-Hours"),
                     "team-c": ("compute", Decimal("4.000000000"), "GPU-Hours")}


def test_a_rule_without_recorded_memory_shares_bills_compute_everywhere(fleet_db: str) -> None:
    # A share rule written before its memory shares were recorded: the reports and the views
    # both fall back to compute (team-a 4 h x 1/7 x 7.00 = 4.00) and the report says so.
    with psycopg.connect(fleet_db) as conn:
        conn.execute("DELETE FROM profile_memory_share_records")
        report = profile_pricing.chargeback(conn, NOV)
        view = conn.execute("SELECT sum(cost) FROM chargeback_profile_namespace_monthly WHERE namespace = 'team-a'"
                            ).fetchone()
        conn.rollback()
    assert {r["namespace"]: r["cost"] for r in report.as_dicts()}["team-a"].quantize(CENT) == Decimal("4.00")
    assert view is not None and view[0].quantize(CENT) == Decimal("4.00")
    assert any("memory share of 1g.20gb" in n for n in report.notes)


def test_statement_and_cli_under_profile_pricing(fleet_db: str, tmp_path: Path) -> None:
    with psycopg.connect(fleet_db) as conn:
        doc = statement.statement(conn, NOV, pricing="profile", now=datetime(2025, 12, 1, tzinfo=timezone.utc))
    assert "Total billed by allocation: <strong>77.00 USD</strong>" in doc
    assert "<td>(not covered)</td>" in doc and "<td>3g.40gb</td>" in doc and "<td>share rule: memory</td>" in doc
    assert "profile&#x27;s instance-hour price" in doc and "<script" not in doc
    base = [sys.executable, "-m", "migmeter.cli", "report"]
    url = ["--month", "2025-11", "--database-url", fleet_db]
    out = subprocess.run(base + ["focus", "--pricing", "profile"] + url, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert sum(Decimal(r["BilledCost"]) for r in rows).quantize(CENT) == TOTAL
    assert {r["ChargeCategory"] for r in rows} == {"Usage", "Adjustment"}
    html_path = tmp_path / "st.html"
    st = subprocess.run(base + ["chargeback", "--format", "html", "--pricing", "profile", "--output", str(html_path)]
                        + url, capture_output=True, text=True, timeout=120)
    assert st.returncode == 0, st.stderr
    assert "<strong>77.00 USD</strong>" in html_path.read_text(encoding="utf-8")
    bad = subprocess.run(base + ["focus", "--pricing", "slices"] + url, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--pricing" in bad.stderr
    js = subprocess.run(base + ["chargeback", "--pricing", "profile", "--format", "json"] + url,
                        capture_output=True, text=True, timeout=120)
    assert js.returncode == 0 and {r["namespace"] for r in json.loads(js.stdout)["rows"]} == set(PROFILE_LINES)
