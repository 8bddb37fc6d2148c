"""FOCUS 1.2 export of a hand-built month, checked column by column against the spec's text.

Spec: repository FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec, folder specification/columns/;
each rule below cites the file it comes from (read from the stored public text, not memory).

November 2025, hourly snapshots (interval 3600 s; each GPU's snapshots are one contiguous
run starting at 01:00, so every covered hour lies inside its UTC day):
- GPU-A, A100 (7 slices), Nov 10 01:00-04:00 (4 h): GI 1 3g.20gb team-a/pod-a1 at 50 %,
  GI 2 2g.10gb team-b/pod-b1 at 100 %, GI 3 1g.5gb unassigned at 0 %, 1 slice unallocated.
- GPU-B, A30 (4 slices) without MIG, Nov 11 01:00-02:00 (2 h): team-b/pod-b2 at 80 %.
- GPU-C, A100, Nov 20 01:00-02:00 (2 h): GI 0 7g.40gb team-a/pod-a2 at 25 % (whole GPU).
Prices: A100 2.00 USD/GPU-hour from Nov 1, 3.00 from Nov 16; A30 1.00 from Jan 1.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from warehouse import focus, reports
from tests.integration.feed import feed_priced
from tests.processor.build import inst, mig, whole

pytestmark = pytest.mark.integration

A100, A30 = "A100-SXM4-40GB", "A30"
NOV = date(2025, 11, 1)
HOUR = timedelta(hours=1)


def _at(day: int, hour: int) -> datetime:
    return datetime(2025, 11, day, hour, tzinfo=timezone.utc)


def _fleet() -> list:
    snaps = []
    for h in range(1, 5):
        snaps.append(mig(_at(10, h), [
            inst(1, "3g.20gb", 0.5, "team-a", "pod-a1"),
            inst(2, "2g.10gb", 1.0, "team-b", "pod-b1"),
            inst(3, "1g.5gb", 0.0),
        ], gpu="GPU-A", model=A100, interval_s=3600))
    for h in range(1, 3):
        snaps.append(whole(_at(11, h), 0.8, gpu="GPU-B", total=4, model=A30, interval_s=3600, ns="team-b", pod="pod-b2"))
        snaps.append(mig(_at(20, h), [inst(0, "7g.40gb", 0.25, "team-a", "pod-a2")], gpu="GPU-C", model=A100,
                         interval_s=3600))
    return snaps


PRICES = ((A100, "2.00", date(2025, 11, 1)), (A100, "3.00", date(2025, 11, 16)), (A30, "1.00", date(2025, 1, 1)))


@pytest.fixture
def month_db(fresh_db: str) -> str:
    return feed_priced(fresh_db, _fleet(), PRICES)


def _q(x: float) -> Decimal:
    return Decimal(repr(x)).quantize(Decimal("1e-9"))


# (ChargePeriodStart day, ResourceId, x_Line, x_Namespace, x_Pod, PricingQuantity, unit price), by hand:
#   GPU-A Nov 10 @2.00: GI1 4 h x 3/7 = 12/7, GI2 4 h x 2/7 = 8/7, GI3 4 h x 1/7 = 4/7 (unassigned),
#                       1 free slice 4 h x 1/7 = 4/7 (unallocated);
#   GPU-B Nov 11 @1.00: whole GPU 2 h x 4/4 = 2; GPU-C Nov 20 @3.00: 7g 2 h x 7/7 = 2.
#   GPU-B and GPU-C have 0 unallocated hours: those two daily lines bill nothing and are left out.
EXPECTED_ROWS = {
    (10, "migmeter://c1/GPU-A/gi/1", "tenant", "team-a", "pod-a1", _q(12 / 7), Decimal("2")),
    (10, "migmeter://c1/GPU-A/gi/2", "tenant", "team-b", "pod-b1", _q(8 / 7), Decimal("2")),
    (10, "migmeter://c1/GPU-A/gi/3", "unassigned", None, None, _q(4 / 7), Decimal("2")),
    (10, "migmeter://c1/GPU-A", "unallocated", None, None, _q(4 / 7), Decimal("2")),
    (11, "migmeter://c1/GPU-B", "tenant", "team-b", "pod-b2", Decimal("2"), Decimal("1")),
    (20, "migmeter://c1/GPU-C/gi/0", "tenant", "team-a", "pod-a2", Decimal("2"), Decimal("3")),
}
# Σ BilledCost = (12 + 8 + 4 + 4)/7 h x 2.00 + 2 h x 1.00 + 2 h x 3.00 = 8 + 2 + 6 = 16.00 USD
EXPECTED_TOTAL = Decimal("16.00")

# Every column FOCUS 1.2 makes mandatory, with the spec file that says so.
MANDATORY = {
    "BilledCost": "billedcost.md", "BillingAccountId": "billingaccountid.md",
    "BillingAccountName": "billingaccountname.md", "BillingCurrency": "billingcurrency.md",
    "BillingPeriodEnd": "billingperiodend.md", "BillingPeriodStart": "billingperiodstart.md",
    "ChargeCategory": "chargecategory.md", "ChargeClass": "chargeclass.md", "ChargeDescription": "chargedescription.md",
    "ChargePeriodEnd": "chargeperiodend.md", "ChargePeriodStart": "chargeperiodstart.md",
    "ContractedCost": "contractedcost.md", "EffectiveCost": "effectivecost.md", "InvoiceIssuerName": "invoiceissuer.md",
    "ListCost": "listcost.md", "PricingQuantity": "pricingquantity.md", "PricingUnit": "pricingunit.md",
    "ProviderName": "provider.md", "PublisherName": "publisher.md", "ServiceCategory": "servicecategory.md",
    "ServiceName": "servicename.md",
}
# Conditional columns whose condition holds here (we measure usage, bill per resource, keep a
# price list per GPU model, have tags and one sub-account per cluster) and the recommended one.
CONDITIONAL = {
    "ConsumedQuantity": "consumedquantity.md", "ConsumedUnit": "consumedunit.md", "ResourceId": "resourceid.md",
    "ResourceName": "resourcename.md", "ResourceType": "resourcetype.md", "SkuId": "skuid.md",
    "SkuPriceId": "skupriceid.md", "SkuMeter": "skumeter.md", "ListUnitPrice": "listunitprice.md",
    "ContractedUnitPrice": "contractedunitprice.md", "Tags": "tags.md", "SubAccountId": "subaccountid.md",
    "SubAccountName": "subaccountname.md", "ChargeFrequency": "chargefrequency.md",
}
DECIMAL = ["BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "PricingQuantity", "ConsumedQuantity",
           "ListUnitPrice", "ContractedUnitPrice"]
DATETIME = ["BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"]
NOT_NULL = ["BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart",
            "ChargeCategory", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost", "EffectiveCost",
            "InvoiceIssuerName", "ListCost", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
            "ChargeFrequency"]
# servicecategory.md, "Allowed values"
SERVICE_CATEGORIES = {"AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
                      "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
                      "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
                      "Storage", "Web", "Other"}
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def _csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def _export(url: str) -> focus.FocusDataset:
    with psycopg.connect(url) as conn:
        return focus.export(conn, NOV)


def test_rows_are_the_hand_computed_charges_and_add_up_to_the_chargeback_total(month_db: str) -> None:
    dataset = _export(month_db)
    got = {(r["ChargePeriodStart"].day, r["ResourceId"], r["x_Line"], r["x_Namespace"], r["x_Pod"],
            r["PricingQuantity"], r["ListUnitPrice"]) for r in dataset.rows}
    assert got == EXPECTED_ROWS
    assert len(dataset.rows) == len(EXPECTED_ROWS)  # one row per day, instance and tenant: no duplicates
    with psycopg.connect(month_db) as conn:
        cb = reports.chargeback(conn, NOV).as_dicts()
    cb_total = sum(Decimal(r["cost_alloc"]) for r in cb)
    assert dataset.billed_total()["USD"].quantize(Decimal("0.01")) == EXPECTED_TOTAL == cb_total.quantize(Decimal("0.01"))
    # per line, the hours equal the chargeback's lines (tenant 12/7+8/7+2+2, unassigned 4/7, unallocated 4/7)
    for line, hours in (("tenant", 20 / 7 + 4), ("unassigned", 4 / 7), ("unallocated", 4 / 7)):
        assert float(sum(r["PricingQuantity"] for r in dataset.rows if r["x_Line"] == line)) == pytest.approx(hours)
    assert any("2 daily lines with no hours" in n for n in dataset.notes)
    assert any("Σ BilledCost 16.00 USD = chargeback total 16.00 USD" in n for n in dataset.notes)


def test_csv_has_every_mandatory_and_applicable_conditional_column(month_db: str) -> None:
    header, rows = _csv_rows(focus.csv_text(_export(month_db)))
    for column, spec_file in {**MANDATORY, **CONDITIONAL}.items():
        assert column in header, f"{column} must be present ({spec_file})"
    # Custom columns are prefixed x_ and come after every FOCUS column (column naming and ordering).
    custom = [i for i, name in enumerate(header) if name.startswith("x_")]
    assert custom and min(custom) > max(i for i, name in enumerate(header) if not name.startswith("x_"))
    assert len(rows) == 6


def test_csv_types_null_rules_and_allowed_values(month_db: str) -> None:
    _, rows = _csv_rows(focus.csv_text(_export(month_db)))
    for r in rows:
        for col in NOT_NULL:  # billedcost.md ... "MUST NOT be null"
            assert r[col] != "", col
        for col in DECIMAL:  # "of type Decimal", Numeric Format: plain digits, no exponent
            assert re.fullmatch(r"-?\d+(\.\d+)?", r[col]), (col, r[col])
        for col in DATETIME:  # Date/Time Format: ISO 8601 UTC with Z
            assert _DATETIME_RE.match(r[col]), (col, r[col])
        assert r["ChargeCategory"] == "Usage"  # chargecategory.md allowed values
        assert r["ChargeClass"] == ""  # chargeclass.md: null unless a correction of an invoiced period
        assert r["ChargeFrequency"] == "Usage-Based"  # chargefrequency.md allowed values
        assert r["ServiceCategory"] in SERVICE_CATEGORIES  # servicecategory.md allowed values
        assert re.fullmatch(r"[A-Z]{3}", r["BillingCurrency"])  # billingcurrency.md: Currency Format
        # consumedquantity.md: Usage and not a correction -> not null, a positive decimal
        assert Decimal(r["ConsumedQuantity"]) > 0 and r["ConsumedUnit"] == "GPU-Hours"  # consumedunit.md
        # pricingquantity.md / pricingunit.md / skuid.md / skupriceid.md: Usage, not a correction -> not null
        assert r["PricingQuantity"] and r["PricingUnit"] and r["SkuId"] and r["SkuPriceId"]
        assert r["SkuMeter"]  # skumeter.md: SHOULD NOT be null when SkuId is not null
        # listcost.md / contractedcost.md: ListUnitPrice x PricingQuantity MUST produce ListCost
        assert Decimal(r["ListUnitPrice"]) * Decimal(r["PricingQuantity"]) == Decimal(r["ListCost"])
        assert Decimal(r["ContractedUnitPrice"]) * Decimal(r["PricingQuantity"]) == Decimal(r["ContractedCost"])
        # no commitment discounts or amortization: EffectiveCost = BilledCost (effectivecost.md)
        assert r["EffectiveCost"] == r["BilledCost"] == r["ListCost"]
        # billingperiodstart/end.md: the UTC month, start inclusive, end exclusive; the charge inside it
        assert (r["BillingPeriodStart"], r["BillingPeriodEnd"]) == ("2025-11-01T00:00:00Z", "2025-12-01T00:00:00Z")
        assert r["BillingPeriodStart"] <= r["ChargePeriodStart"] < r["ChargePeriodEnd"] <= r["BillingPeriodEnd"]
        # tags.md: Key-Value Format (a JSON object); provider-defined keys carry a prefix
        tags = json.loads(r["Tags"])
        assert isinstance(tags, dict) and all(k.startswith("migmeter/") for k in tags)
        assert tags["migmeter/line"] == r["x_Line"] and tags["migmeter/cluster"] == "c1"
        assert r["ResourceId"].startswith("migmeter://c1/")  # resourceid.md: unique within the provider
    tenant = next(r for r in rows if r["x_Pod"] == "pod-a1")
    assert json.loads(tenant["Tags"]) == {"migmeter/cluster": "c1", "migmeter/line": "tenant",
                                          "migmeter/namespace": "team-a", "migmeter/pod": "pod-a1"}
    assert tenant["ResourceType"] == "MIG GPU instance" and tenant["x_Profile"] == "3g.20gb"


def test_export_refuses_usage_without_a_price_and_names_the_model(month_db: str) -> None:
    # billedcost.md: BilledCost MUST NOT be null, so an unpriced day cannot be exported.
    with psycopg.connect(month_db) as conn:
        conn.execute("DELETE FROM prices WHERE gpu_model = %s", (A30,))
        with pytest.raises(focus.FocusExportError, match=r"'A30' on 2025-11-11\.\.2025-11-11"):
            focus.export(conn, NOV)
        conn.rollback()


def test_reader_role_exports_and_the_cli_writes_csv_and_refuses_bad_input(month_db: str, tmp_path: Path) -> None:
    with psycopg.connect(month_db, autocommit=True) as conn:
        conn.execute("SET ROLE migmeter_reader")
        assert focus.export(conn, NOV).billed_total()["USD"].quantize(Decimal("0.01")) == EXPECTED_TOTAL
    cmd = [sys.executable, "-m", "migmeter.cli", "report", "focus", "--month", "2025-11", "--database-url", month_db]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    _, rows = _csv_rows(ok.stdout)
    assert sum(Decimal(r["BilledCost"]) for r in rows).quantize(Decimal("0.01")) == EXPECTED_TOTAL
    assert "FOCUS 1.2: 6 rows" in ok.stderr
    usage = subprocess.run(cmd + ["--format", "parquet"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "--output" in usage.stderr
    bad = subprocess.run(cmd[:6] + ["2025-13"] + cmd[7:], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr


def test_parquet_has_typed_columns_and_the_same_rows(month_db: str, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")  # the `parquet` extra; part of the `test` extra
    dataset = _export(month_db)
    path = focus.write_parquet(dataset, tmp_path / "nov.parquet")
    table = pq.read_table(path)
    assert table.num_rows == 6
    assert str(table.schema.field("BilledCost").type).startswith("decimal128(38, ")
    assert str(table.schema.field("ChargePeriodStart").type) == "timestamp[ms, tz=UTC]"
    assert table.schema.metadata[b"FocusVersion"] == b"1.2"
    billed = table.column("BilledCost").to_pylist()
    assert sum(billed).quantize(Decimal("0.01")) == EXPECTED_TOTAL
    assert sorted(billed) == sorted(r["BilledCost"] for r in dataset.rows)  # no digit lost
    assert table.column("ChargeClass").null_count == 6
