"""Turn a report (named, typed columns + rows) into an aligned table, CSV or JSON.

Why typed columns: the same row is read by a person (GPU-hours to 3 decimals, utilization as
a percentage, money to 2 decimals, right-aligned) and by a script (CSV/JSON keep the full
precision the database returned). Formatting is a pure function of the
report, so it is tested without a database.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Literal

from migmeter.errors import ConfigError

__all__ = ["FORMATS", "Kind", "Column", "Report", "render", "render_table", "render_csv", "render_json",
           "format_cell"]

FORMATS = ("table", "csv", "json")

# text | int | hours (GPU-hours) | pct (0..100, as the views return it) | money (2 decimals)
# | number (as stored, e.g. a price) | ts (UTC) | day
Kind = Literal["text", "int", "hours", "pct", "money", "number", "ts", "day"]
_NUMERIC: frozenset[str] = frozenset({"int", "hours", "pct", "money", "number"})
# Table cells longer than this are cut with an ellipsis: a hostile pod name must not wreck
# the layout of a finance report (CSV/JSON keep the full value).
MAX_CELL_WIDTH = 60


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind = "text"


@dataclass(frozen=True, slots=True)
class Report:
    """What a report query returned, with a title and notes (reconciliation, warnings) for people."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Any, ...], ...]
    notes: tuple[str, ...] = field(default=())

    def column(self, name: str) -> list[Any]:
        """All values of one column, by name (tests and plots read reports this way)."""
        i = [c.name for c in self.columns].index(name)
        return [r[i] for r in self.rows]

    def as_dicts(self) -> list[dict[str, Any]]:
        names = [c.name for c in self.columns]
        return [dict(zip(names, r)) for r in self.rows]


def render(report: Report, fmt: str) -> str:
    """Dispatch on a whitelisted format name."""
    if fmt == "table":
        return render_table(report)
    if fmt == "csv":
        return render_csv(report)
    if fmt == "json":
        return render_json(report)
    raise ConfigError(f"unknown format {fmt[:20]!r}; choose one of {', '.join(FORMATS)}")


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "hours":
        return f"{float(value):,.3f}"
    if kind == "pct":
        return f"{float(value):.1f}%"
    if kind == "money":
        return f"{float(value):,.2f}"
    if kind == "number":
        return format(value.normalize(), "f") if isinstance(value, Decimal) else str(value)
    if kind == "int":
        return f"{int(value):,}"
    if isinstance(value, datetime):
        return _utc(value).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    text = _printable(str(value))
    return text if len(text) <= MAX_CELL_WIDTH else text[: MAX_CELL_WIDTH - 1] + "…"


def format_cell(value: Any, kind: str) -> str:
    """One value as the table shows it (``-`` for NULL), for other renderers (the HTML statement)."""
    return _cell(value, kind)


def _printable(text: str) -> str:
    # Control characters (a tenant label with a newline or an ANSI escape) would break the
    # table or the terminal; show them escaped.
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def render_table(report: Report) -> str:
    """An aligned, human-readable table: numbers right-aligned, a rule under the header."""
    header = [c.name for c in report.columns]
    cells = [[_cell(v, c.kind) for v, c in zip(row, report.columns)] for row in report.rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        parts = []
        for v, w, c in zip(values, widths, report.columns):
            parts.append(v.rjust(w) if c.kind in _NUMERIC else v.ljust(w))
        return "  ".join(parts).rstrip()

    out = [report.title, ""] if report.title else []
    out.append(line(header))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    if not report.rows:
        out.append("(no rows)")
    if report.notes:
        out.append("")
        out.extend(report.notes)
    return "\n".join(out) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, datetime):
        return _utc(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def render_csv(report: Report) -> str:
    """RFC 4180 CSV with a header row; full precision, no notes (scripts read the rows)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.name for c in report.columns])
    for row in report.rows:
        writer.writerow(["" if v is None else _csv_value(v) for v in row])
    return buf.getvalue()


def _csv_value(value: Any) -> str:
    plain = _plain(value)
    text = str(plain)
    # A cell starting with = + - @ is a formula to spreadsheet programs (CSV injection);
    # prefix text cells (never numbers) with a quote so finance can open the file safely.
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def render_json(report: Report) -> str:
    """``{"title", "columns", "rows": [{col: value}], "notes"}``; numbers are JSON numbers."""
    doc = {
        "title": report.title,
        "columns": [{"name": c.name, "kind": c.kind} for c in report.columns],
        "rows": [{c.name: _plain(v) for c, v in zip(report.columns, row)} for row in report.rows],
        "notes": list(report.notes),
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"
