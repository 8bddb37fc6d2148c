"""Report plumbing without a database: rendering, parsing, whitelists, query files, plots."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from migmeter.cli import build_parser
from migmeter.errors import ConfigError
from warehouse import plot, reports
from warehouse.render import Column, Report, render

REPORT = Report(
    "Chargeback",
    (Column("namespace"), Column("alloc_gpu_hours", "hours"), Column("alloc_util_pct", "pct"),
     Column("cost_alloc", "money"), Column("day", "day")),
    (("ml-train", 123.4567891, 72.5, Decimal("370.3703673"), date(2025, 11, 1)),
     ("=cmd|' /C calc'!A0", 1.0, None, None, date(2025, 11, 2))),
    ("reconciliation: ok",),
)


def test_table_is_aligned_and_numbers_right_aligned() -> None:
    lines = render(REPORT, "table").splitlines()
    header, rule, first, second = lines[2], lines[3], lines[4], lines[5]
    assert header.split() == ["namespace", "alloc_gpu_hours", "alloc_util_pct", "cost_alloc", "day"]
    # every row is as wide as the rule: columns line up
    assert len(first) == len(second) == len(rule)
    assert "123.457" in first and "72.5%" in first and "370.37" in first
    # numbers end where their column's rule ends (right-aligned)
    rule_ends = [i + 1 for i, ch in enumerate(rule) if ch == "-" and (i + 1 == len(rule) or rule[i + 1] == " ")]
    assert first.index("123.457") + len("123.457") == rule_ends[1]
    assert second.split()[-3:-1] == ["-", "-"]  # NULL shown as '-'
    assert lines[-1] == "reconciliation: ok"


def test_table_escapes_control_characters_and_cuts_long_cells() -> None:
    r = Report("", (Column("pod"),), (("evil\n\x1b[31mred",), ("x" * 500,)))
    out = render(r, "table")
    assert "\x1b" not in out and "\\n" in out
    assert max(len(line) for line in out.splitlines()) <= 60


def test_csv_keeps_full_precision_and_defuses_formulas() -> None:
    rows = list(csv.reader(io.StringIO(render(REPORT, "csv"))))
    assert rows[0] == ["namespace", "alloc_gpu_hours", "alloc_util_pct", "cost_alloc", "day"]
    assert rows[1] == ["ml-train", "123.4567891", "72.5", "370.3703673", "2025-11-01"]
    assert rows[2][0].startswith("'=")  # a spreadsheet would run it as a formula otherwise
    assert rows[2][2] == "" and rows[2][3] == ""


def test_json_is_one_document_with_numbers() -> None:
    doc = json.loads(render(REPORT, "json"))
    assert doc["rows"][0] == {"namespace": "ml-train", "alloc_gpu_hours": 123.4567891, "alloc_util_pct": 72.5,
                              "cost_alloc": 370.3703673, "day": "2025-11-01"}
    assert doc["rows"][1]["cost_alloc"] is None
    assert doc["notes"] == ["reconciliation: ok"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ConfigError):
        render(REPORT, "html")


def test_empty_report_says_so() -> None:
    assert "(no rows)" in render(Report("t", (Column("a"),), ()), "table")


@pytest.mark.parametrize(("text", "expected"), [("2025-11", date(2025, 11, 1)), ("2026-01", date(2026, 1, 1))])
def test_parse_month(text: str, expected: date) -> None:
    assert reports.parse_month(text) == expected


@pytest.mark.parametrize("bad", ["2025-13", "2025-1", "nov", "2025-11-01", "2025-11'; drop table prices;--"])
def test_bad_month_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        reports.parse_month(bad)


def test_month_range_crosses_the_year() -> None:
    start, end = reports.month_range(date(2025, 12, 1))
    assert start == datetime(2025, 12, 1, tzinfo=timezone.utc)
    assert end == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_months_overlapping_lists_each_month_a_period_touches() -> None:
    # 2025-12-30 12:00 .. 2026-02-01 00:00 (exclusive): December, January; February starts at the end.
    start, end = datetime(2025, 12, 30, 12, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc)
    assert reports.months_overlapping(start, end) == [date(2025, 12, 1), date(2026, 1, 1)]
    # One second into February adds it.
    assert reports.months_overlapping(start, end.replace(second=1))[-1] == date(2026, 2, 1)
    assert reports.next_month(date(2025, 12, 1)) == date(2026, 1, 1)


@pytest.mark.parametrize("name", ["../010_prices", "chargeback;drop", "Chargeback", "", "nope"])
def test_only_plain_existing_query_names_load(name: str) -> None:
    with pytest.raises(ConfigError):
        reports.load_query(name)


def test_every_report_query_file_loads_and_uses_parameters_only() -> None:
    names = sorted(p.stem for p in reports.REPORTS_DIR.glob("*.sql"))
    assert {"chargeback", "utilization", "layout_at", "layout_changes", "reconciliation"} <= set(names)
    for name in names:
        text = reports.load_query(name)
        assert "%(" in text  # every query is parameterised


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "chargeback", "--month", "2025-11", "--by", "namespace; DROP TABLE prices"],
        ["report", "chargeback", "--month", "2025-11", "--by", "gpu_uuid"],
        ["report", "utilization", "--from", "2025-11-01", "--to", "2025-11-02", "--by", "minute"],
        ["report", "chargeback", "--month", "2025-11", "--format", "xml"],  # html is the statement (issue 14),
    ],
)
def test_hostile_choices_are_refused_by_the_parser(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_library_refuses_an_unlisted_by_before_touching_the_database() -> None:
    with pytest.raises(ConfigError):
        reports.chargeback(None, date(2025, 11, 1), by="namespace, (SELECT 1)")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        reports.utilization(None, datetime(2025, 1, 1, tzinfo=timezone.utc),  # type: ignore[arg-type]
                            datetime(2025, 1, 2, tzinfo=timezone.utc), by="1m")


def test_reconciliation_verdict() -> None:
    good = reports.Reconciliation(10.0, 2.0, 3.0, 15.0)
    assert good.ok and "reconciles" in good.describe()
    bad = reports.Reconciliation(10.0, 2.0, 3.0, 15.01)
    assert not bad.ok and "DOES NOT RECONCILE" in bad.describe()


def test_plots_are_written(tmp_path: Path) -> None:
    days = [date(2025, 11, 1), date(2025, 11, 1), date(2025, 11, 2)]
    out = plot.plot_chargeback(days, ["a", "(unallocated)", "a"], [5.0, 1.0, 6.0], tmp_path / "sub" / "cb.png", "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ts = [datetime(2025, 11, 1, h, tzinfo=timezone.utc) for h in range(3)]
    out = plot.plot_utilization(ts, {"weighted": [50.0, None, 70.0]}, tmp_path / "u.png", "t")
    assert out.stat().st_size > 1000
