"""Retention: drop old chunks of the usage hypertables, per granularity (``migmeter db retention``).

TimescaleDB's Apache build has ``drop_chunks`` but no retention policies, so migmeter runs
it (from cron, a Kubernetes CronJob, or by hand). Defaults follow the issue: 1-minute rows
for 30 days, hourly rows for two years, daily rows forever; layout events forever (the
as-of layout history needs them). Every chargeback and trend view reads the 1h/1d grains,
so dropping 1-minute chunks never changes a report.

``drop_chunks`` drops whole chunks whose time range ends on or before the cutoff
(now - keep): a chunk that still holds a row newer than the cutoff is kept, so nothing
younger than the limit is ever dropped. Running it twice drops nothing the second time
(idempotent). It needs the hypertables' owner (the login that ran the migrations).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg

from migmeter import cli_support, settings
from migmeter.errors import ConfigError, MigmeterError
from processor.grains import GRAINS, usage_tables

__all__ = [
    "HYPERTABLES",
    "TREND_ROLLUPS",
    "DEFAULT_KEEP",
    "Chunk",
    "parse_keep",
    "plan",
    "apply",
    "configure_cli",
    "run_cli",
]

# granularity -> the hypertables holding it; a whitelist, so no table name ever comes from input.
# The trend's per-day rollups (sql/034) have the 1d tables' 365-day chunks: dropped with them, same days.
TREND_ROLLUPS = ("gpu_usage_model_1d", "tenant_usage_namespace_1d")
HYPERTABLES: dict[str, tuple[str, ...]] = {
    **{g: usage_tables(g) for g in GRAINS},
    "1d": (*usage_tables("1d"), *TREND_ROLLUPS),
    "events": ("layout_events",),
}
# None = keep forever. 1m rows are for drill-down and debugging; 1h rows carry two years of
# trends; 1d rows are the chargeback record and are small (one row per GPU/tenant per day).
DEFAULT_KEEP: dict[str, timedelta | None] = {
    "1m": timedelta(days=30),
    "1h": timedelta(days=730),
    "1d": None,
    "events": None,
}
_KEEP_RE = re.compile(r"^(\d{1,6})([hdwy])$")
_UNIT_DAYS = {"d": 1, "w": 7, "y": 365}
# Longest finite retention: far past any real need, and now - keep stays a valid datetime.
_MAX_KEEP = timedelta(days=1000 * 365)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk that is (or would be) dropped."""

    hypertable: str
    chunk: str
    range_start: datetime
    range_end: datetime


def parse_keep(text: str) -> timedelta | None:
    """``30d``, ``12h``, ``8w``, ``2y`` (365 days), or ``forever`` (None)."""
    raw = text.strip().lower()
    if raw in ("forever", "none", "inf"):
        return None
    m = _KEEP_RE.match(raw)
    if not m:
        raise ConfigError(f"retention {text[:20]!r} is not like 30d, 12h, 8w, 2y or 'forever'")
    n, unit = int(m.group(1)), m.group(2)
    keep = timedelta(hours=n) if unit == "h" else timedelta(days=n * _UNIT_DAYS[unit])
    if keep <= timedelta(0):
        raise ConfigError("retention must be longer than zero (use 'forever' to keep everything)")
    if keep > _MAX_KEEP:
        # now - keep would fall before year 1 (OverflowError, a traceback) for e.g. 999999y.
        raise ConfigError(f"retention {text[:20]!r} is longer than 1000 years; use 'forever' to keep everything")
    return keep


def _cutoffs(keep: Mapping[str, timedelta | None], now: datetime) -> dict[str, datetime]:
    unknown = set(keep) - set(HYPERTABLES)
    if unknown:
        raise ConfigError(f"unknown granularity {sorted(unknown)}; known: {', '.join(HYPERTABLES)}")
    if now.tzinfo is None:
        raise ConfigError("now must be timezone-aware")
    return {g: now - k for g, k in keep.items() if k is not None}


def plan(conn: psycopg.Connection[object], keep: Mapping[str, timedelta | None], now: datetime | None = None) -> list[Chunk]:
    """The chunks a retention run would drop: those ending on or before now - keep."""
    now = now or datetime.now(timezone.utc)
    out: list[Chunk] = []
    for gran, cutoff in _cutoffs(keep, now).items():
        for table in HYPERTABLES[gran]:
            rows = conn.execute(
                """
                SELECT hypertable_name, chunk_schema || '.' || chunk_name, range_start, range_end
                FROM timescaledb_information.chunks
                WHERE hypertable_schema = current_schema() AND hypertable_name = %s AND range_end <= %s
                ORDER BY range_start
                """,
                (table, cutoff),
            ).fetchall()
            out.extend(Chunk(*r) for r in rows)  # type: ignore[misc]
    return out


def apply(
    conn: psycopg.Connection[object],
    keep: Mapping[str, timedelta | None],
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[Chunk]:
    """Drop (or with ``dry_run`` only list) old chunks; returns what was dropped, in one transaction."""
    now = now or datetime.now(timezone.utc)
    chunks = plan(conn, keep, now)
    if dry_run or not chunks:
        return chunks
    dropped: set[str] = set()
    for gran, cutoff in _cutoffs(keep, now).items():
        for table in HYPERTABLES[gran]:
            rows = conn.execute(
                "SELECT drop_chunks(%s::regclass, older_than => %s::timestamptz)", (table, cutoff)
            ).fetchall()
            dropped.update(str(r[0]) for r in rows)  # type: ignore[index]
    conn.commit()
    return [c for c in chunks if c.chunk in dropped]


# ----------------------------------------------------------------------------- CLI (`migmeter db retention`)


def configure_cli(parser: argparse.ArgumentParser) -> None:
    cli_support.add_database_url(parser, "the hypertables' owner")
    for gran, label in (("1m", "1-minute"), ("1h", "hourly"), ("1d", "daily"), ("events", "layout-event")):
        default = DEFAULT_KEEP[gran]
        shown = "forever" if default is None else f"{default.days}d"
        parser.add_argument(f"--keep-{gran}", default=shown, metavar="AGE",
                            help=f"keep {label} rows this long: 30d, 12h, 8w, 2y or forever (default {shown})")
    parser.add_argument("--dry-run", action="store_true", help="list what would be dropped, drop nothing")


def run_cli(args: argparse.Namespace) -> int:
    keep = {g: parse_keep(getattr(args, f"keep_{g}")) for g in HYPERTABLES}
    url = settings.database_url(args.database_url)
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            chunks = apply(conn, keep, dry_run=args.dry_run)
    except psycopg.errors.InsufficientPrivilege:
        raise MigmeterError("drop_chunks needs the hypertables' owner; use the login that ran `migmeter db migrate`") from None
    except psycopg.OperationalError as exc:
        raise MigmeterError(f"cannot reach {settings.redact_url(url)}: {settings.database_error(exc, url)}") from None
    except psycopg.Error as exc:  # e.g. a schema not migrated
        raise MigmeterError(f"retention failed on {settings.redact_url(url)}: "
                            f"{settings.database_error(exc, url)}") from None
    verb = "would drop" if args.dry_run else "dropped"
    for c in chunks:
        start, end = c.range_start.astimezone(timezone.utc), c.range_end.astimezone(timezone.utc)
        print(f"{verb} {c.chunk} of {c.hypertable} [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC")
    policy = ", ".join(f"{g} {getattr(args, f'keep_{g}')}" for g in HYPERTABLES)
    print(f"{verb} {len(chunks)} chunk(s) (keep {policy})")
    return 0
