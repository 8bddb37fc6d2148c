"""Chargeback, utilization, layout and idle-capacity reports: SQL files in ``sql/reports``.

Why queries live in ``.sql`` files loaded by name: analysts read and reuse them in BI tools
unchanged, and reviewers see the SQL a report runs. Every query reads only the views the
reader role may select (``sql/011_bi_views.sql``, ``sql/012_chargeback_usage.sql``), so a BI
login can run ``migmeter report`` too. User input never becomes SQL text: values are parameters, and the only choices that
change the SQL (``--by``, the grain) pick a file or an identifier from a fixed whitelist.

Every query filters on ``bucket`` ranges (not on derived dates) so TimescaleDB skips chunks
outside the period; a month is ``[first day 00:00 UTC, first day of next month)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from collector.snapshot import TS_MAX, TS_MIN
from migmeter import settings
from migmeter.errors import ConfigError
from warehouse.render import Column, Report

__all__ = [
    "REPORTS_DIR",
    "CHARGEBACK_BY",
    "UTILIZATION_BY",
    "RECONCILE_TOLERANCE_GPU_HOURS",
    "CHARGEBACK_LINES",
    "Reconciliation",
    "load_query",
    "parse_month",
    "next_month",
    "months_overlapping",
    "month_range",
    "chargeback",
    "chargeback_daily",
    "reconciliation",
    "utilization",
    "layout_at",
    "layout_changes",
    "idle_capacity",
]

REPORTS_DIR = settings.SQL_DIR / "reports"
# --by value -> the tenant key columns. Anything else is refused before any SQL is built.
CHARGEBACK_BY: dict[str, tuple[str, ...]] = {"namespace": ("namespace",), "pod": ("namespace", "pod")}
# --by value -> the view holding that grain's additive hours.
UTILIZATION_BY: dict[str, str] = {"hour": "gpu_usage_hours_1h", "day": "gpu_usage_hours_1d"}
# The lines are sums of double-precision seconds added in different orders, so they agree
# with the physical total to ~1e-12 relative; a microhour is far below any billing unit and
# far above float noise for a fleet-month, so a larger gap means a real pipeline bug.
RECONCILE_TOLERANCE_GPU_HOURS = 1e-6
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# A report over more than this many years is a typo (and would scan every chunk).
_MAX_RANGE = timedelta(days=3660)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Chargeback lines vs. the fleet's capacity over a period:
    tenants + unassigned + unallocated + unmetered = physical (capacity: metered + unmetered)."""

    tenant_gpu_hours: float
    unassigned_gpu_hours: float
    unallocated_gpu_hours: float
    physical_gpu_hours: float
    unmetered_gpu_hours: float = 0.0

    @property
    def lines_gpu_hours(self) -> float:
        return self.tenant_gpu_hours + self.unassigned_gpu_hours + self.unallocated_gpu_hours + self.unmetered_gpu_hours

    @property
    def coverage_pct(self) -> float | None:
        """Metered share of the capacity (None without capacity)."""
        if self.physical_gpu_hours <= 0:
            return None
        return 100.0 * (self.physical_gpu_hours - self.unmetered_gpu_hours) / self.physical_gpu_hours

    @property
    def difference_gpu_hours(self) -> float:
        return self.lines_gpu_hours - self.physical_gpu_hours

    @property
    def ok(self) -> bool:
        return abs(self.difference_gpu_hours) <= RECONCILE_TOLERANCE_GPU_HOURS

    def describe(self) -> str:
        verdict = "reconciles" if self.ok else "DOES NOT RECONCILE"
        return (
            f"reconciliation: tenants {self.tenant_gpu_hours:,.6f} + unassigned {self.unassigned_gpu_hours:,.6f}"
            f" + unallocated {self.unallocated_gpu_hours:,.6f} + unmetered {self.unmetered_gpu_hours:,.6f}"
            f" = {self.lines_gpu_hours:,.6f} GPU-hours; capacity {self.physical_gpu_hours:,.6f} GPU-hours"
            f" (coverage {_pct(self.coverage_pct)}); difference {self.difference_gpu_hours:.2e}"
            f" -> {verdict}"
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def load_query(name: str, directory: Path = REPORTS_DIR) -> str:
    """The text of ``sql/reports/<name>.sql``; only plain lower-case names are accepted."""
    if not _NAME_RE.match(name):
        raise ConfigError(f"report query name {name[:40]!r} is not a plain name")
    path = directory / f"{name}.sql"
    if not path.is_file():
        raise ConfigError(f"no report query {name!r} in {directory}")
    return path.read_text()


def parse_month(text: str) -> date:
    """``YYYY-MM`` -> the first day of that month, for a month a snapshot can fall in (its end,
    the next month's first day, must exist too: 9999-12 has none in Python's calendar)."""
    m = re.fullmatch(r"\s*(\d{4})-(\d{2})\s*", text)
    if not m or not (1 <= int(m.group(2)) <= 12):
        raise ConfigError(f"month {text[:20]!r} is not YYYY-MM (e.g. 2026-11)")
    year = int(m.group(1))
    if not TS_MIN.year <= year < TS_MAX.year:
        raise ConfigError(f"month {text.strip()!r} is outside {TS_MIN.year}-01..{TS_MAX.year - 1}-12, "
                          "the times snapshots can carry")
    return date(year, int(m.group(2)), 1)


def next_month(month: date) -> date:
    """The first day of the month after ``month``'s (December -> January of the next year)."""
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def months_overlapping(start: datetime, end: datetime) -> list[date]:
    """First days of the UTC months that [start, end) touches, in order."""
    out, month = [], start.astimezone(timezone.utc).date().replace(day=1)
    while datetime.combine(month, time(), tzinfo=timezone.utc) < end:
        out.append(month)
        month = next_month(month)
    return out


def month_range(month: date) -> tuple[datetime, datetime]:
    """[first instant of the month, first instant of the next month), UTC."""
    start = datetime.combine(month.replace(day=1), time(), tzinfo=timezone.utc)
    return start, datetime.combine(next_month(month), time(), tzinfo=timezone.utc)


def _check_range(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ConfigError("report times must be timezone-aware")
    if end <= start:
        raise ConfigError(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    if end - start > _MAX_RANGE:
        raise ConfigError("report period is longer than 10 years; check --from/--to")


def _fetch(conn: psycopg.Connection[Any], query: str | sql.Composable, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    # Report SQL is loaded from our own files; psycopg types the query as a literal string.
    return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


_MONEY_COLUMNS = (Column("cost_alloc", "money"), Column("cost_used", "money"), Column("currency"))
_USAGE_COLUMNS = (
    Column("alloc_gpu_hours", "hours"),
    Column("used_gpu_hours", "hours"),
    Column("unmeasured_gpu_hours", "hours"),
    Column("alloc_util_pct", "pct"),
)
# The chargeback's lines (sql/014 chargeback_lines_daily), in report order.
CHARGEBACK_LINES = ("tenant", "unassigned", "unallocated", "unmetered")


def chargeback(
    conn: psycopg.Connection[Any], month: date, by: str = "namespace", cluster: str | None = None
) -> Report:
    """One line per tenant (namespace, or namespace+pod) plus unassigned, unallocated and unmetered.

    Notes carry the reconciliation of the month and, when some usage has no price, which
    GPU-hours are not costed.
    """
    if by not in CHARGEBACK_BY:
        raise ConfigError(f"--by {by[:30]!r} is not one of: {', '.join(CHARGEBACK_BY)}")
    start, end = month_range(month)
    params = {"start": start, "end": end, "cluster": cluster}
    key_names = CHARGEBACK_BY[by]
    query = sql.SQL(load_query("chargeback")).format(keys=sql.SQL(", ").join(map(sql.Identifier, key_names)))
    rows = _fetch(conn, query, params)
    keys = (Column("line"),) + tuple(Column(k) for k in key_names)
    columns = keys + _USAGE_COLUMNS + _MONEY_COLUMNS
    # Reconcile the lines this report prints (not a second pass over the views) against the
    # physical GPU-hours: cheaper, and it checks exactly what the reader sees.
    lines: dict[str, float] = dict.fromkeys(CHARGEBACK_LINES, 0.0)
    for r in rows:
        lines[r[0]] += float(r[len(keys)] or 0)
    physical = _fetch(conn, load_query("physical_gpu_hours"), params)[0][0]
    rec = Reconciliation(lines["tenant"], lines["unassigned"], lines["unallocated"], float(physical),
                         lines["unmetered"])
    notes = [rec.describe()]
    unpriced = sum(float(r[len(keys)] or 0) for r in rows if r[-1] is None)
    if unpriced > 0:
        notes.append(
            f"warning: {unpriced:,.3f} GPU-hours are on GPU models with no price for those days"
            " (cost shown as '-'); see `migmeter price list`"
        )
    if len({r[-1] for r in rows if r[-1] is not None}) > 1:
        notes.append("note: more than one currency: costs are per line's currency, never summed across")
    where = f" cluster {cluster}" if cluster else " all clusters"
    title = f"Chargeback {month:%Y-%m} (UTC) by {by},{where}"
    return Report(title, columns, tuple(rows), tuple(notes))


def chargeback_daily(conn: psycopg.Connection[Any], month: date, cluster: str | None = None) -> Report:
    """Allocated GPU-hours per day and namespace for the month: the data behind the chargeback plot."""
    start, end = month_range(month)
    rows = _fetch(conn, load_query("chargeback_daily"), {"start": start, "end": end, "cluster": cluster})
    columns = (Column("day", "day"), Column("namespace"), Column("alloc_gpu_hours", "hours"))
    return Report(f"Allocated GPU-hours per day {month:%Y-%m}", columns, tuple(rows))


def reconciliation(
    conn: psycopg.Connection[Any], start: datetime, end: datetime, cluster: str | None = None
) -> Reconciliation:
    """Sum of the chargeback lines vs. the fleet's physical GPU-hours over [start, end)."""
    _check_range(start, end)
    row = _fetch(conn, load_query("reconciliation"), {"start": start, "end": end, "cluster": cluster})[0]
    return Reconciliation(*(float(v) for v in row))


def utilization(
    conn: psycopg.Connection[Any],
    start: datetime,
    end: datetime,
    by: str = "hour",
    gpu: str | None = None,
    host: str | None = None,
    cluster: str | None = None,
) -> Report:
    """Fleet (or one GPU's, or one host's) utilization per hour or day, and a total row.

    All four measures are ratios of summed hours over the selected GPUs, so the total row is
    the true figure for the whole period, not an average of per-bucket percentages.
    """
    if by not in UTILIZATION_BY:
        raise ConfigError(f"--by {by[:30]!r} is not one of: {', '.join(UTILIZATION_BY)}")
    _check_range(start, end)
    query = sql.SQL(load_query("utilization")).format(usage=sql.Identifier(UTILIZATION_BY[by]))
    rows = _fetch(conn, query, {"start": start, "end": end, "gpu": gpu, "host": host, "cluster": cluster})
    rows = [("total",) + tuple(r[1:]) if r[0] is None else tuple(r) for r in rows]
    columns = (
        Column("bucket", "ts"),
        Column("gpus", "int"),
        Column("gpu_hours", "hours"),
        Column("simple_util_pct", "pct"),
        Column("weighted_util_pct", "pct"),
        Column("whole_util_pct", "pct"),
        Column("allocation_pct", "pct"),
        Column("capacity_gpu_hours", "hours"),
        Column("coverage_pct", "pct"),
    )
    scope = f"GPU {gpu}" if gpu else f"host {host}" if host else f"cluster {cluster}" if cluster else "all GPUs"
    title = f"Utilization per {by}, {scope}, {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC"
    notes = (
        "simple = naive mean of instance utilizations (misleading); weighted = utilization of the "
        "allocated slices; whole = of the whole GPUs (unallocated slices idle); allocation = share of slices allocated; "
        "time without a utilization value is left out of every utilization (all unmeasured = '-'); "
        "coverage = metered / capacity (capacity = metered + unmetered GPU-hours)",
    )
    if len(rows) <= 1:
        rows = []
    return Report(title, columns, tuple(rows), notes)


def layout_at(conn: psycopg.Connection[Any], gpu: str, at: datetime) -> Report:
    """The MIG layout of one GPU at instant ``at`` (as-of), one row per GPU instance."""
    rows = _fetch(conn, load_query("layout_at"), {"gpu": gpu, "at": at})
    columns = (
        Column("gi_id", "int"),
        Column("profile"),
        Column("slices", "int"),
        Column("total_slices", "int"),
        Column("namespace"),
        Column("pod"),
        Column("container"),
        Column("valid_from", "ts"),
        Column("valid_to", "ts"),
    )
    return Report(f"Layout of {gpu} at {at:%Y-%m-%d %H:%M:%S} UTC", columns, tuple(rows))


def layout_changes(conn: psycopg.Connection[Any], gpu: str, start: datetime, end: datetime) -> Report:
    """Layout change events of one GPU in [start, end)."""
    _check_range(start, end)
    rows = _fetch(conn, load_query("layout_changes"), {"gpu": gpu, "start": start, "end": end})
    columns = (
        Column("ts", "ts"),
        Column("event"),
        Column("gi_id", "int"),
        Column("profile_before"),
        Column("profile_after"),
        Column("tenant_before"),
        Column("tenant_after"),
    )
    return Report(f"Layout changes of {gpu}, {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC", columns, tuple(rows))


def idle_capacity(
    conn: psycopg.Connection[Any], month: date, cluster: str | None = None, top: int = 20
) -> Report:
    """The ``top`` (tenant, GPU) pairs with the most allocated-but-unused slice-hours in the month."""
    if not (1 <= top <= 10_000):
        raise ConfigError(f"--top {top} outside 1..10000")
    start, end = month_range(month)
    rows = _fetch(conn, load_query("idle_capacity"), {"start": start, "end": end, "cluster": cluster, "top": top})
    columns = (
        Column("rank", "int"),
        Column("namespace"),
        Column("pod"),
        Column("gpu_uuid"),
        Column("gpu_model"),
        Column("allocated_slice_hours", "hours"),
        Column("idle_slice_hours", "hours"),
        Column("idle_pct", "pct"),
        Column("idle_cost", "money"),
        Column("currency"),
    )
    return Report(f"Idle allocated capacity {month:%Y-%m} (UTC), top {top}", columns, tuple(rows))
