"""Long-horizon trend: GPU-hours, utilization, allocation, cost and coverage per week or month.

Why from the per-day rollups: a two-year range must answer in well under a second, so the
query reads one row per day, cluster and GPU model (``trend_gpu_model_daily``; with
``--by-namespace`` one per day, cluster, model and namespace, ``trend_namespace_daily``), the
rollups sql/034 keeps current from the daily rows, never the 1-minute, 1-hour or per-GPU
rows. ``source="rows"`` sums the stored daily rows instead (``gpu_usage_hours_1d``,
``chargeback_namespace_daily``): the reference the rollups are tested against, and the
"before" of ``bench/trend_query.py``; the numbers agree to ~1e-12 relative.
Rules:

1. Periods are UTC calendar months or ISO weeks (Monday); a week that starts before
   ``--from`` holds only its days inside the range (the notes say so).
2. Measures are ratios of summed hours per period (weighted utilization = used / allocated
   with a reading; allocation = allocated / GPU-hours), never averages of percentages.
   Coverage = metered GPU-hours / capacity (DESIGN.md "Time model": a GPU exists from its
   first covered second to its last snapshot; time inside that no snapshot covers is
   unmetered). Cost is the chargeback's: every line, each day at its own price (fleet and
   per-model rows: the GPUs' capacity × price, the (unmetered) line included; per-namespace
   rows: the namespace's allocated hours × price). A period with unpriced days or two currencies has no
   cost (``-``).
3. Forecast: an ordinary least-squares line through each group's allocated GPU-hours and cost
   per COMPLETE period (a period still running at ``now`` is left out of the fit), extended
   :data:`DEFAULT_FORECAST` periods past the range; rows of kind ``forecast`` carry only
   those two numbers. Fewer than :data:`MIN_FIT_PERIODS` complete periods: no forecast. It
   is a straight line, nothing more: it knows nothing of planned purchases, reconfigurations
   or seasonality, and the label says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import class_row

from migmeter.errors import ConfigError
from warehouse import reports
from warehouse.render import Column, Report

__all__ = ["UNITS", "SOURCES", "GROUPS", "DEFAULT_FORECAST", "MIN_FIT_PERIODS", "TrendRow", "least_squares", "forecast",
           "period_end", "trend"]

UNITS = ("week", "month")
SOURCES = ("rollup", "rows")
# --by-model / --by-namespace / neither -> (query, one series per GPU model?)
GROUPS: dict[str, tuple[str, bool]] = {
    "fleet": ("trend_fleet", False),
    "model": ("trend_fleet", True),
    "namespace": ("trend_namespace", False),
}
DEFAULT_FORECAST = 3
# Two points always fit a line exactly; three is the least that says anything about a trend.
MIN_FIT_PERIODS = 3
_MAX_MONTHS = 120


@dataclass(frozen=True, slots=True)
class TrendRow:
    """One row of ``sql/reports/trend_*.sql`` (``kind`` is set here: ``actual`` or ``forecast``)."""

    period: date
    grp: str
    gpu_days: int | None
    gpu_hours: float | None
    alloc_gpu_hours: float | None
    used_gpu_hours: float | None
    weighted_util_pct: float | None
    allocation_pct: float | None
    coverage_pct: float | None
    cost: Decimal | None
    currency: str | None
    kind: str = "actual"


def period_end(start: date, unit: str) -> date:
    if unit == "week":
        return start + timedelta(days=7)
    return reports.next_month(start)


def least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(intercept, slope) of the ordinary least-squares line through the points (xs[i], ys[i])."""
    n = len(ys)
    if n < 2 or len(xs) != n or len(set(xs)) < 2:
        raise ConfigError("a line needs at least two points at different x")
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def _ordinal(period: date, unit: str) -> int:
    """Periods as consecutive integers (a month or week without data leaves a gap, not a shift)."""
    return period.toordinal() // 7 if unit == "week" else period.year * 12 + period.month - 1


def forecast(rows: Sequence[TrendRow], unit: str, now: datetime, periods: int = DEFAULT_FORECAST) -> list[TrendRow]:
    """Rule 3 for the rows of ONE group, sorted by period."""
    complete = [r for r in rows if datetime.combine(period_end(r.period, unit), time(), tzinfo=timezone.utc) <= now]
    fit = [r for r in complete if r.alloc_gpu_hours is not None]
    if periods <= 0 or len(fit) < MIN_FIT_PERIODS:
        return []
    xs = [_ordinal(r.period, unit) for r in fit]
    a, b = least_squares(xs, [float(r.alloc_gpu_hours or 0.0) for r in fit])
    priced = [r for r in fit if r.cost is not None]
    currency = {r.currency for r in priced}
    cost_line = least_squares(xs, [float(r.cost or 0) for r in priced]) \
        if len(priced) == len(fit) and len(currency) == 1 else None
    out = []
    start = rows[-1].period
    for _ in range(periods):
        start = period_end(start, unit)
        x = _ordinal(start, unit)
        alloc = max(0.0, a + b * x)
        cost = None if cost_line is None else Decimal(str(round(max(0.0, cost_line[0] + cost_line[1] * x), 2)))
        out.append(TrendRow(start, fit[0].grp, None, None, alloc, None, None, None, None, cost,
                            next(iter(currency)) if cost is not None else None, "forecast"))
    return out


def _range(start_month: date, end_month: date) -> tuple[datetime, datetime]:
    start, _ = reports.month_range(start_month)
    _, end = reports.month_range(end_month)
    if end <= start:
        raise ConfigError("--to must be the same month as --from or later")
    if (end_month.year - start_month.year) * 12 + end_month.month - start_month.month >= _MAX_MONTHS:
        raise ConfigError(f"a trend over more than {_MAX_MONTHS // 12} years is a typo; check --from/--to")
    return start, end


def trend(
    conn: psycopg.Connection[Any],
    start_month: date,
    end_month: date,
    unit: str = "month",
    group: str = "fleet",
    cluster: str | None = None,
    forecast_periods: int = DEFAULT_FORECAST,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    source: str = "rollup",
) -> Report:
    """Actual rows per period and group, then each group's forecast rows (rules 1-3)."""
    if unit not in UNITS:
        raise ConfigError(f"--by {unit[:20]!r} is not one of {', '.join(UNITS)}")
    if group not in GROUPS:
        raise ConfigError(f"group {group[:20]!r} is not one of {', '.join(GROUPS)}")
    if source not in SOURCES:
        raise ConfigError(f"source {source[:20]!r} is not one of {', '.join(SOURCES)}")
    if not (0 <= forecast_periods <= 24):
        raise ConfigError("--forecast must be 0..24 periods")
    start, end = _range(start_month, end_month)
    name, by_model = GROUPS[group]
    with conn.cursor(row_factory=class_row(TrendRow)) as cur:
        cur.execute(reports.load_query(name if source == "rollup" else f"{name}_rows"),
                    {"start": start, "end": end, "cluster": cluster, "unit": unit, "by_model": by_model})
        actual = [r if r.currency is not None else replace(r, cost=None) for r in cur.fetchall()]
    by_group: dict[str, list[TrendRow]] = defaultdict(list)
    for r in actual:
        by_group[r.grp].append(r)
    rows: list[TrendRow] = []
    at = now()
    for g in sorted(by_group):
        rows += by_group[g]
        rows += forecast(by_group[g], unit, at, forecast_periods)
    columns = (Column("kind"), Column("period", "day"), Column(group if group != "fleet" else "scope"),
               Column("gpu_days", "int"), Column("gpu_hours", "hours"), Column("alloc_gpu_hours", "hours"),
               Column("used_gpu_hours", "hours"), Column("weighted_util_pct", "pct"), Column("allocation_pct", "pct"),
               Column("coverage_pct", "pct"), Column("cost", "money"), Column("currency"))
    notes = [f"forecast: least-squares line through each {group if group != 'fleet' else 'fleet'}'s allocated GPU-hours"
             f" and cost per complete {unit} (at least {MIN_FIT_PERIODS}); a straight line, blind to purchases,"
             " reconfigurations and seasons"]
    if unit == "week" and start.weekday() != 0:
        notes.append(f"the first week starts before {start:%Y-%m-%d} and holds only the days from then on")
    if any(r.kind == "actual" and r.cost is None for r in rows):
        notes.append("cost '-': some days of that period have no price, or more than one currency")
    scope = f"cluster {cluster}" if cluster else "all clusters"
    title = (f"Trend per {unit} {start:%Y-%m} .. {end - timedelta(days=1):%Y-%m}"
             f"{'' if group == 'fleet' else ' by ' + group}, {scope}")
    return Report(title, columns, tuple((r.kind, r.period, r.grp, r.gpu_days, r.gpu_hours, r.alloc_gpu_hours,
                                         r.used_gpu_hours, r.weighted_util_pct, r.allocation_pct, r.coverage_pct,
                                         r.cost, r.currency) for r in rows), tuple(notes))
