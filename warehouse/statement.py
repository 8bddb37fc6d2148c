"""The monthly statement: one self-contained HTML file a finance reader can open or print.

Why HTML and not a PDF library: every browser opens and prints it, it needs no dependency,
and it can be checked in a real browser (``tests/integration/test_statement.py`` renders it
in headless Chromium). Self-contained means no script, no external stylesheet, font or
image: the plots are inline SVG drawn here, so the file renders the same offline and years
later. Every number comes from the reports ``migmeter report`` prints (the chargeback and
its reconciliation, its daily plot data, idle capacity, right-sizing), so the statement can
never disagree with them; every text from the warehouse (tenant names) is HTML-escaped.

Sections: the period and the price list used; the bill by namespace with its total; the
reconciliation (and any warning of the chargeback report); allocated GPU-hours per day (stacked
bars) and cost per namespace (bars); the top idle allocations; the right-sizing savings.
``pricing="profile"`` bills as ``report chargeback --pricing profile`` (its lines, its
``(not covered)`` line and its notes) and lists the profile prices and share rules in force.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import psycopg

from migmeter.errors import ConfigError
from warehouse import profile_pricing, reports, rightsize
from warehouse.render import Column, Report, format_cell

__all__ = ["MAX_SERIES", "TOP", "statement", "render_html", "svg_stacked_bars", "svg_bars"]

# Colours repeat after this many namespaces; the rest of the tenants are summed as "(other)".
MAX_SERIES = 10
# Lines of the idle and right-sizing tables: a statement is read, not searched.
TOP = 10
_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
            "#bab0ac", "#8c8c8c")
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:60em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;font-size:.9em}th,td{padding:.25em .5em;border-bottom:1px solid #eee}
th{text-align:left;background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:bold;border-top:2px solid #888}.note{color:#555;font-size:.85em}
.warn{color:#a33}svg{max-width:100%;height:auto}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table,svg{break-inside:avoid}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any, kind: str) -> str:
    numeric = kind in ("int", "hours", "pct", "money", "number")
    return f'<td class="n">{_e(format_cell(value, kind))}</td>' if numeric else f"<td>{_e(format_cell(value, kind))}</td>"


def _table(report: Report, names: Sequence[str], total: Sequence[Any] | None = None) -> str:
    cols = [c for n in names for c in report.columns if c.name == n]
    idx = [report.columns.index(c) for c in cols]
    head = "".join(f"<th>{_e(c.name.replace('_', ' '))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(r[i], c.kind) for i, c in zip(idx, cols)) + "</tr>" for r in report.rows)
    if not report.rows:
        body = f'<tr><td colspan="{len(cols)}">none</td></tr>'
    foot = ""
    if total is not None:
        foot = '<tr class="total">' + "".join(_cell(v, c.kind) for v, c in zip(total, cols)) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}{foot}</tbody></table>"


def svg_stacked_bars(days: Sequence[date], series: Mapping[str, Sequence[float]], title: str,
                     width: int = 900, height: int = 300) -> str:
    """Stacked bars, one per day, one colour per series, with a legend; inline SVG, no script."""
    left, bottom, top, legend_w = 60, 30, 30, 180
    plot_w, plot_h = width - left - legend_w, height - bottom - top
    totals = [sum(s[i] for s in series.values()) for i in range(len(days))]
    peak = max(totals, default=0.0) or 1.0
    bar_w = plot_w / max(1, len(days))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_e(title)}"><title>{_e(title)}</title>',
             f'<text x="{left}" y="18" font-size="13">{_e(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
             f'<text x="{left - 6}" y="{top + 4}" font-size="10" text-anchor="end">{peak:,.1f}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>']
    for i, d in enumerate(days):
        y: float = top + plot_h
        for k, (name, values) in enumerate(series.items()):
            h = plot_h * values[i] / peak
            if h > 0:
                y -= h
                parts.append(f'<rect x="{left + i * bar_w + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                             f'height="{h:.1f}" fill="{_PALETTE[k % len(_PALETTE)]}"><title>{_e(name)} {d:%m-%d}: '
                             f'{values[i]:,.3f}</title></rect>')
        if len(days) <= 31 and (i % max(1, len(days) // 10) == 0):
            parts.append(f'<text x="{left + (i + .5) * bar_w:.1f}" y="{height - 12}" font-size="10" '
                         f'text-anchor="middle">{d:%d}</text>')
    for k, name in enumerate(series):
        y = top + 16 * k
        parts.append(f'<rect x="{width - legend_w + 10}" y="{y}" width="10" height="10" '
                     f'fill="{_PALETTE[k % len(_PALETTE)]}"/><text x="{width - legend_w + 26}" y="{y + 9}" '
                     f'font-size="11">{_e(name[:26])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(labels: Sequence[str], values: Sequence[float], title: str, width: int = 900) -> str:
    """Horizontal bars (e.g. cost per namespace); inline SVG, no script."""
    row, left, top = 22, 200, 28
    height = top + row * max(1, len(labels)) + 10
    peak = max(values, default=0.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_e(title)}"><title>{_e(title)}</title>',
             f'<text x="0" y="18" font-size="13">{_e(title)}</text>']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = top + i * row
        w = (width - left - 90) * max(v, 0.0) / peak
        parts.append(f'<text x="{left - 6}" y="{y + 14}" font-size="11" text-anchor="end">{_e(label[:32])}</text>'
                     f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{_PALETTE[0]}"/>'
                     f'<text x="{left + w + 4:.1f}" y="{y + 14}" font-size="11">{v:,.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _daily_series(daily: Report) -> tuple[list[date], dict[str, list[float]]]:
    totals: dict[str, float] = defaultdict(float)
    for ns, h in zip(daily.column("namespace"), daily.column("alloc_gpu_hours")):
        totals[ns] += float(h or 0)
    keep = {n for n, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:MAX_SERIES]}
    days = sorted(set(daily.column("day")))
    pos = {d: i for i, d in enumerate(days)}
    series: dict[str, list[float]] = {}
    for d, ns, h in zip(daily.column("day"), daily.column("namespace"), daily.column("alloc_gpu_hours")):
        name = ns if ns in keep else "(other)"
        series.setdefault(name, [0.0] * len(days))[pos[d]] += float(h or 0)
    return days, dict(sorted(series.items(), key=lambda kv: -sum(kv[1])))


def _prices_used(conn: psycopg.Connection[Any], month: date) -> Report:
    start, end = reports.month_range(month)
    rows = conn.execute(
        "SELECT gpu_model, price_per_gpu_hour, currency, effective_from, effective_to FROM gpu_prices"
        " WHERE effective_from < %(end)s AND (effective_to IS NULL OR effective_to > %(start)s)"
        " ORDER BY gpu_model, effective_from", {"start": start.date(), "end": end.date()}).fetchall()
    return Report("", (Column("gpu_model"), Column("price_per_gpu_hour", "number"), Column("currency"),
                       Column("effective_from", "day"), Column("effective_to", "day")), tuple(rows))


# The bill's columns in print order: the default chargeback's, or the profile-priced one's.
_BILL_COLUMNS = ("line", "namespace", "instance_hours", "alloc_gpu_hours", "used_gpu_hours", "alloc_util_pct",
                 "profile_priced_hours", "cost_alloc", "cost", "cost_used", "currency")
_PRICING_TEXT = {
    "gpu": "A MIG instance costs its share of its GPU's hourly price (compute slices / total); unassigned instances and"
           " unallocated slices are lines of their own.",
    "profile": "A MIG instance costs its profile's instance-hour price where one is set, else its share of its GPU's"
               " hourly price by the model's share rule (compute, memory or the larger); what that leaves of the"
               " GPUs' cost is the (not covered) line.",
}


def _total_cell(name: str, kind: str, currency: str) -> Any:
    if name in ("line", "currency"):
        return "total" if name == "line" else currency
    return {"money": Decimal(0), "hours": 0.0, "pct": None}.get(kind, "")


def _bill_totals(bill: Report, names: Sequence[str], cost_key: str) -> dict[str, list[Any]]:
    """One total row per currency over the bill's additive columns (hours, money)."""
    kinds = {c.name: c.kind for c in bill.columns}
    totals: dict[str, list[Any]] = {}
    for r in bill.as_dicts():
        if r["currency"] is None or r[cost_key] is None:
            continue
        t = totals.setdefault(r["currency"], [_total_cell(n, kinds[n], r["currency"]) for n in names])
        for i, n in enumerate(names):
            if kinds[n] in ("hours", "money"):
                t[i] += r[n] or 0
    return totals


def render_html(month: date, cluster: str | None, generated: datetime, bill: Report, daily: Report, idle: Report,
                sizing: Report, price_list: Report, pricing: str = "gpu",
                profile_prices: Report | None = None) -> str:
    """The statement from the reports' contents (pure, so tests can feed it hostile names)."""
    start, end = reports.month_range(month)
    scope = f"cluster {cluster}" if cluster else "all clusters"
    names = [c.name for c in bill.columns]
    cost_key = "cost_alloc" if "cost_alloc" in names else "cost"
    bill_cols = tuple(n for n in _BILL_COLUMNS if n in names)
    totals = _bill_totals(bill, bill_cols, cost_key)
    bill_table = _table(bill, bill_cols, next(iter(totals.values())) if len(totals) == 1 else None)
    days, series = _daily_series(daily)
    cost_by_ns = [(r["namespace"], float(r[cost_key])) for r in bill.as_dicts() if r[cost_key] is not None]
    saving = [c.name for c in sizing.columns].index("saving_per_month")
    savers = Report("", sizing.columns, tuple(r for r in sizing.rows if r[saving] is not None and r[saving] > 0)[:TOP])
    notes = "".join(f'<p class="{"warn" if n.startswith("warning") or "NOT" in n else "note"}">{_e(n)}</p>'
                    for n in bill.notes)
    total_line = "; ".join(f"{v[bill_cols.index(cost_key)]:,.2f} {c}" for c, v in sorted(totals.items())) \
        or "nothing priced"
    profile_section = "" if profile_prices is None else (
        "<h3>Profile prices and share rules</h3>" + _table(profile_prices, ("gpu_model", "what", "price_per_hour",
                                                                             "currency", "effective_from", "effective_to"))
        + '<p class="note">Profile prices are per hour of one instance; a share rule says how instances without one'
          ' share the GPU-hour price.</p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>GPU statement {month:%Y-%m}</title><style>{_CSS}</style></head>
<body>
<h1>GPU chargeback statement, {month:%B %Y}</h1>
<p>Period {start:%Y-%m-%d} 00:00 to {end:%Y-%m-%d} 00:00 UTC (end excluded), {_e(scope)}.
Total billed by allocation: <strong>{_e(total_line)}</strong>. Generated {generated:%Y-%m-%d %H:%M} UTC by migmeter.</p>
<h2>Bill by namespace</h2>
<p class="note">Allocated GPU-hours = Σ share of the GPU × time; used = allocated × utilization.
{_e(_PRICING_TEXT[pricing])}</p>
{bill_table}
<h2>Reconciliation</h2>
{notes}
<h2>Allocated GPU-hours per day</h2>
{svg_stacked_bars(days, series, f"Allocated GPU-hours per day, {month:%Y-%m}")}
<h2>Cost by namespace</h2>
{svg_bars([n for n, _ in cost_by_ns], [v for _, v in cost_by_ns], "Cost by allocation")}
<h2>Top idle allocations</h2>
<p class="note">Allocated but unused slice-hours (utilization reported, not busy), most idle first.</p>
{_table(idle, ("rank", "namespace", "pod", "gpu_model", "allocated_slice_hours", "idle_slice_hours", "idle_pct",
               "idle_cost", "currency"))}
<h2>Right-sizing savings</h2>
<p class="note">{_e(sizing.notes[0] if sizing.notes else "")}</p>
{_table(savers, ("namespace", "pod", "gpu_model", "profile", "p95_util_pct", "peak_fb_mib", "recommended",
                 "saving_per_month", "currency"))}
<h2>Prices used</h2>
{_table(price_list, ("gpu_model", "price_per_gpu_hour", "currency", "effective_from", "effective_to"))}
<p class="note">Prices are per whole GPU-hour, applied per UTC day; effective to = first day of the next price.</p>
{profile_section}
</body></html>
"""


def _profile_prices_used(conn: psycopg.Connection[Any], month: date) -> Report:
    start, end = reports.month_range(month)
    rows = conn.execute(
        "SELECT gpu_model, profile, price_per_instance_hour, currency, effective_from, effective_to"
        " FROM gpu_profile_prices WHERE effective_from < %(end)s AND (effective_to IS NULL OR effective_to > %(start)s)"
        " UNION ALL SELECT gpu_model, 'share rule: ' || rule, NULL, NULL, effective_from, effective_to"
        " FROM gpu_share_rules WHERE effective_from < %(end)s AND (effective_to IS NULL OR effective_to > %(start)s)"
        " ORDER BY 1, 2, 5", {"start": start.date(), "end": end.date()}).fetchall()
    return Report("", (Column("gpu_model"), Column("what"), Column("price_per_hour", "number"), Column("currency"),
                       Column("effective_from", "day"), Column("effective_to", "day")), tuple(rows))


def statement(conn: psycopg.Connection[Any], month: date, cluster: str | None = None,
              now: datetime | None = None, pricing: str = "gpu") -> str:
    """The month's statement as one HTML document, billed by ``pricing`` (gpu or profile)."""
    if pricing not in profile_pricing.PRICINGS:
        raise ConfigError(f"pricing {pricing[:20]!r} is not one of {', '.join(profile_pricing.PRICINGS)}")
    bill = reports.chargeback(conn, month, by="namespace", cluster=cluster) if pricing == "gpu" \
        else profile_pricing.chargeback(conn, month, cluster=cluster)
    daily = reports.chargeback_daily(conn, month, cluster=cluster)
    idle = reports.idle_capacity(conn, month, cluster=cluster, top=TOP)
    sizing = rightsize.rightsize(conn, month, cluster=cluster)
    generated = now or datetime.now(timezone.utc)
    return render_html(month, cluster, generated, bill, daily, idle, sizing, _prices_used(conn, month), pricing,
                       _profile_prices_used(conn, month) if pricing == "profile" else None)

