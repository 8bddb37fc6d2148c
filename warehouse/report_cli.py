"""``migmeter report``: chargeback, utilization, layout and idle-capacity reports, and the FinOps
outputs (FOCUS export, profile pricing, right-sizing, stranded capacity, trend, HTML statement).

Only parses arguments and calls :mod:`warehouse.reports` (and the FinOps modules: focus,
profile_pricing, rightsize, stranded, trend, statement); ``--by`` and ``--format`` are
argparse choices (a hostile value is refused before any SQL exists), filters are passed to
the database as parameters. The reports read only the BI views, so a read-only login
(``migmeter_reader``) can run them: ``--database-url`` or ``MIGMETER_DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from collector.snapshot import TS_MAX, TS_MIN
from migmeter import cli_support, settings
from migmeter.errors import ConfigError, MigmeterError
from warehouse import focus, plot, profile_pricing, reports, rightsize, statement, stranded, trend
from warehouse.render import FORMATS, Report, render

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report", metavar="REPORT", required=True)
    cli_support.quiet_loggers(parser, "matplotlib")  # an INFO line per categorical axis of a plot

    def common(p: argparse.ArgumentParser, formats: tuple[str, ...] = FORMATS) -> None:
        p.add_argument("--format", choices=formats, default="table", help=f"{', '.join(formats)} (default table)")
        cli_support.add_database_url(p)
        p.add_argument("--cluster", help="only this cluster (the collectors' --cluster); default all")

    cb = sub.add_parser("chargeback", help="allocated/used GPU-hours and cost per tenant for one month (UTC)")
    cb.add_argument("--month", required=True, help="YYYY-MM")
    cb.add_argument("--by", choices=sorted(reports.CHARGEBACK_BY), default="namespace", help="namespace (default) or pod")
    cb.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw allocated GPU-hours per day and tenant")
    pricing_help = ("gpu (default): slices/total of the GPU-hour price; profile: profile prices, then the model's"
                    " share rule, with a (not covered) line (`migmeter price set --profile`, `price rule`)")
    cb.add_argument("--pricing", choices=profile_pricing.PRICINGS, default="gpu", help=pricing_help)
    cb.add_argument("--output", type=Path, metavar="FILE", help="with --format html: write the statement here"
                                                                " (default statement-YYYY-MM.html)")
    common(cb, FORMATS + ("html",))

    ut = sub.add_parser("utilization", help="simple, weighted, whole-GPU utilization and allocation over time")
    ut.add_argument("--from", dest="start", required=True, help=f"start: {cli_support.TIME_FORMS}")
    ut.add_argument("--to", dest="end", required=True, help="end, exclusive (same forms)")
    target = ut.add_mutually_exclusive_group()
    target.add_argument("--gpu", help="one GPU by UUID")
    target.add_argument("--host", help="the GPUs of one host")
    ut.add_argument("--by", choices=sorted(reports.UTILIZATION_BY), default="hour", help="hour (default) or day")
    ut.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the four measures over time")
    common(ut)

    la = sub.add_parser("layout", help="MIG layout of a GPU at a time (as-of), or its changes over a period")
    la.add_argument("--gpu", required=True, help="GPU UUID")
    when = la.add_mutually_exclusive_group()
    when.add_argument("--at", help=f"instant ({cli_support.TIME_FORMS}); default now")
    when.add_argument("--from", dest="start", help="with --to: list the layout at --from and the changes until --to")
    la.add_argument("--to", dest="end", help="end of the period, exclusive")
    common(la)

    fo = sub.add_parser("focus", help="FinOps FOCUS 1.2 dataset of one month: a charge per day, GPU instance and tenant")
    fo.add_argument("--month", required=True, help="YYYY-MM")
    fo.add_argument("--format", choices=("csv", "parquet"), default="csv",
                    help="csv (default, to stdout or --output) or parquet (needs --output and migmeter[parquet])")
    fo.add_argument("--output", type=Path, metavar="FILE", help="write here instead of stdout")
    fo.add_argument("--pricing", choices=profile_pricing.PRICINGS, default="gpu", help=pricing_help)
    defaults = focus.FocusIdentity()
    fo.add_argument("--provider-name", default=defaults.provider_name,
                    help=f"ProviderName/PublisherName/InvoiceIssuerName (default {defaults.provider_name!r})")
    fo.add_argument("--billing-account-id", default=defaults.billing_account_id,
                    help=f"BillingAccountId (default {defaults.billing_account_id!r})")
    fo.add_argument("--billing-account-name", default=defaults.billing_account_name,
                    help=f"BillingAccountName (default {defaults.billing_account_name!r})")
    cli_support.add_database_url(fo)
    fo.add_argument("--cluster", help="only this cluster (the collectors' --cluster); default all")

    rs = sub.add_parser("rightsize", help="per workload: utilization p50/p95/max, peak memory, smallest profile that fits")
    rs.add_argument("--month", required=True, help="YYYY-MM")
    rs.add_argument("--headroom", type=float, default=rightsize.DEFAULT_HEADROOM,
                    help=f"margin above p95 compute and peak memory (default {rightsize.DEFAULT_HEADROOM})")
    common(rs)

    st = sub.add_parser("stranded", help="unallocated MIG slices: hostable by the most requested profile vs stranded")
    st.add_argument("--month", required=True, help="YYYY-MM")
    common(st)

    tr = sub.add_parser("trend", help="GPU-hours, utilization, allocation, cost and coverage per week or month,"
                                      " with a least-squares forecast")
    tr.add_argument("--from", dest="start", required=True, help="first month, YYYY-MM")
    tr.add_argument("--to", dest="end", required=True, help="last month, YYYY-MM (included)")
    tr.add_argument("--by", choices=trend.UNITS, default="month", help="month (default) or week")
    grp = tr.add_mutually_exclusive_group()
    grp.add_argument("--by-model", action="store_true", help="one series per GPU model")
    grp.add_argument("--by-namespace", action="store_true", help="one series per namespace (chargeback lines)")
    tr.add_argument("--forecast", type=int, default=trend.DEFAULT_FORECAST, help="periods to forecast (default 3, 0 = none)")
    tr.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw allocated GPU-hours per period")
    common(tr)

    idle = sub.add_parser("idle", help="allocated-but-unused slice-hours per tenant and GPU, most idle first")
    idle.add_argument("--month", required=True, help="YYYY-MM")
    idle.add_argument("--top", type=int, default=20, help="how many lines (default 20)")
    common(idle)


def _emit(report: Report, fmt: str) -> None:
    sys.stdout.write(render(report, fmt))


def run(args: argparse.Namespace) -> int:
    when = _when(args)  # before connecting: a bad value is a usage error, whatever the database
    if getattr(args, "plot", None):
        plot.check_target(args.plot)
    url = settings.database_url(args.database_url)
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.read_only = True
            return _dispatch(conn, args, when)
    except psycopg.OperationalError as exc:
        raise MigmeterError(f"cannot query {settings.redact_url(url)}: {settings.database_error(exc, url)}") from None
    except psycopg.Error as exc:  # e.g. a schema not migrated, a role without SELECT on the views
        raise MigmeterError(f"the report failed on {settings.redact_url(url)}: "
                            f"{settings.database_error(exc, url)}") from None


def _when(args: argparse.Namespace) -> dict[str, Any]:
    """The report's month or times, parsed: ``month``, ``start``/``end`` or ``at`` (None = not given);
    empty for a report that parses its own."""
    if args.report in ("chargeback", "idle", "focus", "rightsize", "stranded"):
        return {"month": reports.parse_month(args.month)}
    if args.report == "trend":
        return {"start": reports.parse_month(args.start), "end": reports.parse_month(args.end)}
    if args.report not in ("utilization", "layout"):
        return {}
    given = {k: getattr(args, k, None) for k in ("start", "end", "at")}
    if args.report == "layout" and (given["start"] is None) != (given["end"] is None):
        raise ConfigError("--from and --to go together")
    flags = {"start": "--from", "end": "--to", "at": "--at"}
    return {k: None if v is None else cli_support.parse_time(v, flags[k], (TS_MIN, TS_MAX)) for k, v in given.items()}


def _dispatch(conn: psycopg.Connection[object], args: argparse.Namespace, when: dict[str, Any]) -> int:
    run = _REPORTS.get(args.report)
    if run is None:
        raise ConfigError(f"unknown report {args.report!r}")
    return run(conn, args, when)


def _chargeback_report(conn: psycopg.Connection[object], args: argparse.Namespace, when: dict[str, Any]) -> int:
    month = when["month"]
    if args.format == "html":
        if args.by != "namespace":
            raise ConfigError("--format html is the statement by namespace (no --by pod)")
        out = args.output or Path(f"statement-{month:%Y-%m}.html")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(statement.statement(conn, month, cluster=args.cluster, pricing=args.pricing),
                       encoding="utf-8")
        print(f"statement written to {out}", file=sys.stderr)
        return 0
    if args.pricing == "profile":
        if args.by != "namespace":
            raise ConfigError("--pricing profile reports by namespace only")
        _emit(profile_pricing.chargeback(conn, month, cluster=args.cluster), args.format)
        return 0
    report = reports.chargeback(conn, month, by=args.by, cluster=args.cluster)
    _emit(report, args.format)
    if args.plot:
        daily = reports.chargeback_daily(conn, month, cluster=args.cluster)
        out = plot.plot_chargeback(
            daily.column("day"), daily.column("namespace"), daily.column("alloc_gpu_hours"), args.plot,
            f"Allocated GPU-hours per day, {month:%Y-%m}",
        )
        print(f"plot written to {out}", file=sys.stderr)
    return 0


def _utilization_report(conn: psycopg.Connection[object], args: argparse.Namespace, when: dict[str, Any]) -> int:
    start, end = when["start"], when["end"]
    report = reports.utilization(conn, start, end, by=args.by, gpu=args.gpu, host=args.host, cluster=args.cluster)
    _emit(report, args.format)
    if args.plot:
        rows = [r for r in report.as_dicts() if r["bucket"] != "total"]
        out = plot.plot_utilization(
            [r["bucket"] for r in rows],
            {
                name: [r[f"{key}_pct"] for r in rows]
                for name, key in (("simple mean", "simple_util"), ("weighted (allocated)", "weighted_util"),
                                  ("whole GPU", "whole_util"), ("allocation", "allocation"))
            },
            args.plot,
            report.title,
        )
        print(f"plot written to {out}", file=sys.stderr)
    return 0


def _layout_report(conn: psycopg.Connection[object], args: argparse.Namespace, when: dict[str, Any]) -> int:
    if when["start"] is not None:
        start, end = when["start"], when["end"]
        before = reports.layout_at(conn, args.gpu, start)
        changes = reports.layout_changes(conn, args.gpu, start, end)
        if args.format == "json":  # one JSON document, not two concatenated
            sys.stdout.write("[" + render(before, "json") + "," + render(changes, "json") + "]\n")
        else:
            _emit(before, args.format)
            sys.stdout.write("\n")
            _emit(changes, args.format)
        return 0
    at = datetime.now(timezone.utc) if when["at"] is None else when["at"]
    _emit(reports.layout_at(conn, args.gpu, at), args.format)
    return 0


def _rightsize_report(conn: psycopg.Connection[object], args: argparse.Namespace, when: dict[str, Any]) -> int:
    month = when["month"]
    _emit(rightsize.rightsize(conn, month, cluster=args.cluster, headroom=args.headroom), args.format)
    return 0


def _stranded_report(conn: psycopg.Connection[object], args: argparse.Namespace, when: dict[str, Any]) -> int:
    _emit(stranded.stranded(conn, when["month"], cluster=args.cluster), args.format)
    return 0


def _trend_report(conn: psycopg.Connection[object], args: argparse.Namespace, when: dict[str, Any]) -> int:
    group = "model" if args.by_model else "namespace" if args.by_namespace else "fleet"
    report = trend.trend(conn, when["start"], when["end"], unit=args.by,
                         group=group, cluster=args.cluster, forecast_periods=args.forecast)
    _emit(report, args.format)
    if args.plot:
        out = plot.plot_trend([(r[0], r[1], r[2], r[5]) for r in report.rows], args.plot, report.title)
        print(f"plot written to {out}", file=sys.stderr)
    return 0


def _idle_report(conn: psycopg.Connection[object], args: argparse.Namespace, when: dict[str, Any]) -> int:
    _emit(reports.idle_capacity(conn, when["month"], cluster=args.cluster, top=args.top), args.format)
    return 0


# report name -> the function that prints it; `when` holds the parsed --month or --from/--to/--at.
_REPORTS: dict[str, Callable[[psycopg.Connection[object], argparse.Namespace, dict[str, Any]], int]] = {
    "chargeback": _chargeback_report,
    "utilization": _utilization_report,
    "layout": _layout_report,
    "focus": lambda conn, args, when: _focus(conn, args, when["month"]),  # takes the month only
    "rightsize": _rightsize_report,
    "stranded": _stranded_report,
    "trend": _trend_report,
    "idle": _idle_report,
}


def _focus(conn: psycopg.Connection[object], args: argparse.Namespace, month: date) -> int:
    if args.format == "parquet" and args.output is None:
        raise ConfigError("--format parquet needs --output FILE.parquet")
    identity = focus.FocusIdentity(
        provider_name=args.provider_name, publisher_name=args.provider_name, invoice_issuer_name=args.provider_name,
        billing_account_id=args.billing_account_id, billing_account_name=args.billing_account_name,
    )
    dataset = focus.export(conn, month, identity, cluster=args.cluster, pricing=args.pricing)
    if args.format == "parquet":
        focus.write_parquet(dataset, args.output)
    elif args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(focus.csv_text(dataset))
    else:
        focus.write_csv(dataset, sys.stdout)
    where = f" to {args.output}" if args.output else ""
    print(f"FOCUS {focus.FOCUS_VERSION}: {len(dataset.rows)} rows{where}", file=sys.stderr)
    for note in dataset.notes:
        print(note, file=sys.stderr)
    return 0
