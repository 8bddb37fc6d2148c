"""FOCUS rows without a database: chargeback lines the per-instance view does not break down,
and the refusal to export numbers that disagree with the chargeback report."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from warehouse import focus

NOV = date(2025, 11, 1)
IDENTITY = focus.FocusIdentity()


def _cb(line: str, ns: str, alloc: float, cost: str | None, currency: str | None = "USD") -> dict:
    return {"line": line, "namespace": ns, "alloc_gpu_hours": alloc, "used_gpu_hours": 0.0,
            "alloc_util_pct": None, "cost_alloc": None if cost is None else Decimal(cost), "cost_used": Decimal(0),
            "currency": currency}


def test_a_line_kind_without_breakdown_is_carried_as_a_month_row() -> None:
    # An `unmetered` line (issue 11's time model) of 10 h costing 20.50: one row for the month,
    # unit price 20.50 / 10 = 2.05, and ListUnitPrice x PricingQuantity = ListCost exactly.
    lines = [_cb("tenant", "team-a", 4.0, "8.00"), _cb("unmetered", "(unmetered)", 10.0, "20.50")]
    rows = focus.carried_rows(lines, NOV, IDENTITY)
    assert len(rows) == 1
    row = rows[0]
    assert row["x_Line"] == "unmetered" and row["ResourceId"] is None  # resourceid.md: MAY be null
    assert row["PricingQuantity"] == Decimal("10") and row["ListUnitPrice"] == Decimal("2.05")
    assert row["BilledCost"] == row["ListUnitPrice"] * row["PricingQuantity"] == Decimal("20.5")
    assert row["ChargePeriodStart"] == datetime(2025, 11, 1, tzinfo=timezone.utc)
    assert row["ChargePeriodEnd"] == datetime(2025, 12, 1, tzinfo=timezone.utc)
    assert list(row) == [c.name for c in focus.COLUMNS]


def test_an_unpriced_carried_line_is_refused() -> None:
    with pytest.raises(focus.FocusExportError, match="unmetered"):
        focus.carried_rows([_cb("unmetered", "(unmetered)", 3.0, None, None)], NOV, IDENTITY)


def _daily(line: str, hours: float, price: str = "2.00") -> focus.DailyLine:
    return focus.DailyLine(datetime(2025, 11, 10, tzinfo=timezone.utc), "c1", "GPU-A", "A100", 1, "3g.20gb", 3, 7,
                           line, "team-a", "pod-a1", "", hours, hours / 2, Decimal(price), "USD")


def test_rows_that_disagree_with_the_chargeback_are_refused() -> None:
    # 3 h at 2.00 = 6.00 in FOCUS, but the chargeback says 3.5 h: the export must not be written.
    rows, empty = focus.build_rows([_daily("tenant", 3.0)], NOV, IDENTITY)
    assert empty == 0 and rows[0]["BilledCost"] == Decimal("6.000000000000000")
    with pytest.raises(focus.FocusExportError, match="GPU-hours of line 'tenant'"):
        focus._reconcile(rows, [_cb("tenant", "team-a", 3.5, "7.00")])
    # Same hours but a chargeback total one cent off: refused too.
    with pytest.raises(focus.FocusExportError, match="differs from the chargeback total"):
        focus._reconcile(rows, [_cb("tenant", "team-a", 3.0, "6.01")])
    assert focus._reconcile(rows, [_cb("tenant", "team-a", 3.0, "6.00")]) == [
        "Σ BilledCost 6.00 USD = chargeback total 6.00 USD"]


def test_zero_hour_lines_are_left_out_and_counted() -> None:
    # consumedquantity.md: a Usage row needs a positive ConsumedQuantity; 0 h bills nothing.
    rows, empty = focus.build_rows([_daily("unallocated", 0.0), _daily("tenant", 1e-13)], NOV, IDENTITY)
    assert rows == [] and empty == 2


def test_csv_guards_formula_cells_but_keeps_tag_values() -> None:
    # A pod named like a spreadsheet formula: the x_Pod cell gets a leading quote (CSV injection),
    # while Tags keep the value unaltered inside the JSON (tags.md: providers MUST NOT alter tag values).
    evil = focus.DailyLine(datetime(2025, 11, 10, tzinfo=timezone.utc), "c1", "GPU-A", "A100", 1, "3g.20gb", 3, 7,
                           "tenant", "team-a", "=HYPERLINK(\"x\")", "", 1.0, 0.5, Decimal("2.00"), "USD")
    rows, _ = focus.build_rows([evil], NOV, IDENTITY)
    text = focus.csv_text(focus.FocusDataset(NOV, tuple(rows), ()))
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["x_Pod"] == "'=HYPERLINK(\"x\")"
    assert json.loads(row["Tags"])["migmeter/pod"] == "=HYPERLINK(\"x\")"
    assert Decimal(row["BilledCost"]) == Decimal(2)  # 1 h x 2.00
