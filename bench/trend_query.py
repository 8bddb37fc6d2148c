"""How long `migmeter report trend` takes over two years of a (by default) 1,000-GPU warehouse.

Data, built the way ``bench/chargeback_query.py`` builds its month: one simulated month of
``--hosts`` x ``--gpus-per-host`` GPUs folded and written by the processor's OWN code
(``generate``: daily rows only, hourly snapshots), then
1. ``--copies`` copies of every daily row under new GPU ids (``replicate``: a larger fleet with
   the same tenants), then
2. that month copied into the ``--months`` - 1 following months (buckets shifted by whole
   months; PostgreSQL maps Jan 29-31 onto a shorter month's last day, where the primary key
   keeps the first copy and drops the others),
so the trend reads ``gpus x ~30 x months`` daily GPU rows and the matching tenant rows, the
size of a real two-year warehouse, without simulating two years.

Measured, each as the first run and the median of ``--repeats`` warm-cache runs, wall time of
``warehouse.trend.trend`` (query, fetch, forecast): per month and per week over the whole
range, per GPU model per month, per namespace per month; each twice, alternately: ``old`` =
summed from the daily rows (``source="rows"``, what the trend read before sql/034), ``new`` =
from the per-day rollups (``source="rollup"``, what it reads now); and the load average (the
machine is shared). The rollups are filled by their triggers while the rows are copied. Run: ``python -m bench.trend_query [--hosts 125 --gpus-per-host 8 --months 24]``;
small here: ``--hosts 4 --gpus-per-host 8 --copies 4 --months 24`` (128 GPUs), or the fleet and
model trends of 1,024 GPUs with ``--copies 32 --fleet-only``. It creates and drops its own
database on the local stack (or ``$MIGMETER_DATABASE_URL``'s server).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from bench.chargeback_query import _COPY_COLUMNS, _scalar, _timed, _timed_pair, generate, replicate
from bench.common import fresh_database, load_average
from warehouse import reports, trend
from warehouse.retention import TREND_ROLLUPS as _ROLLUPS  # the per-day rollups the trend reads (sql/034)

__all__ = ["extend_months", "measure", "main"]

FIRST_MONTH = date(2025, 1, 1)


def _log(msg: str) -> None:
    print(f"[trend-bench] {msg}", file=sys.stderr, flush=True)


def extend_months(url: str, months: int, tables: tuple[str, ...] = tuple(_COPY_COLUMNS)) -> dict[str, int]:
    """Copy every daily row of the generated month (of ``tables``) into the ``months - 1`` following months."""
    with psycopg.connect(url) as conn:
        for table in tables:
            columns = _COPY_COLUMNS[table]
            conn.execute(sql.SQL(
                "INSERT INTO {t} (bucket, gpu_uuid, {c}) "
                "SELECT bucket + make_interval(months => k), gpu_uuid, {c} "
                "FROM {t}, generate_series(1, %(n)s::int) AS k "
                "WHERE bucket < '2025-02-01' ON CONFLICT DO NOTHING").format(t=sql.Identifier(table), c=sql.SQL(columns)),
                {"n": months - 1})
            _log(f"{table}: copied into {months - 1} more months")
        conn.commit()
        conn.autocommit = True
        counted = tuple(_COPY_COLUMNS) + _ROLLUPS
        for table in counted:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        return {t: _scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))) for t in counted}


def measure(url: str, months: int, repeats: int, fleet_only: bool = False) -> dict[str, Any]:
    last = date(FIRST_MONTH.year + (months - 1) // 12, (months - 1) % 12 + 1, 1)
    out: dict[str, Any] = {"range": f"{FIRST_MONTH:%Y-%m} .. {last:%Y-%m}", "load_before_queries": load_average()}
    with psycopg.connect(url) as conn:
        conn.read_only = True
        cases = [("fleet_by_month", "month", "fleet"), ("fleet_by_week", "week", "fleet"),
                 ("by_model_by_month", "month", "model"), ("by_namespace_by_month", "month", "namespace")]
        for name, unit, group in cases[:3] if fleet_only else cases:
            report = trend.trend(conn, FIRST_MONTH, last, unit=unit, group=group)
            out[name] = {"rows": len(report.rows), **_timed_pair(
                lambda u=unit, g=group: trend.trend(conn, FIRST_MONTH, last, unit=u, group=g, source="rows"),
                lambda u=unit, g=group: trend.trend(conn, FIRST_MONTH, last, unit=u, group=g), repeats)}
            _log(f"{name}: {out[name]}")
        # Where the time goes: the server's own execution time and its JIT compilation (PostgreSQL
        # compiles queries above jit_above_cost, which a two-year scan is), then the same with JIT off.
        start, end = reports.month_range(FIRST_MONTH)[0], reports.month_range(last)[1]
        params = {"start": start, "end": end, "cluster": None, "unit": "month", "by_model": False}
        for key, query in (("explain_fleet_by_month_rows", "trend_fleet_rows"), ("explain_fleet_by_month", "trend_fleet")):
            row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + reports.load_query(query),  # type: ignore[operator]
                               params).fetchone()
            plan = row[0][0] if row else {}
            out[key] = {"execution_ms": round(plan.get("Execution Time", 0.0), 1),
                        "jit_ms": round(plan.get("JIT", {}).get("Timing", {}).get("Total", 0.0), 1)}
        conn.execute("SET jit = off")
        out["fleet_by_month_jit_off"] = _timed(lambda: trend.trend(conn, FIRST_MONTH, last), repeats)
        conn.execute("RESET jit")
        _log(f"explain rows: {out['explain_fleet_by_month_rows']}, rollup: {out['explain_fleet_by_month']};"
             f" jit off: {out['fleet_by_month_jit_off']}")
    out["load_after_queries"] = load_average()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--copies", type=int, default=1, help="copies of the fleet under new GPU ids (default 1)")
    ap.add_argument("--hosts", type=int, default=125)
    ap.add_argument("--gpus-per-host", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fleet-only", action="store_true",
                    help="extend only the daily GPU rows over the months and skip the per-namespace trend (a"
                         " 1,000-GPU fleet trend without ~7M tenant rows)")
    args = ap.parse_args(argv)
    if args.copies < 1 or not (1 <= args.months <= 120):
        ap.error("--copies >= 1 and --months 1..120")
    result: dict[str, Any] = {"gpus": args.hosts * args.gpus_per_host * args.copies, "months": args.months,
                              "load_before": load_average()}
    with fresh_database() as url:
        t0 = time.perf_counter()
        result["generate"] = generate(url, args.hosts, args.gpus_per_host, 3600.0, False)
        if args.copies > 1:
            replicate(url, args.copies)
        tables = ("gpu_usage_1d",) if args.fleet_only else tuple(_COPY_COLUMNS)
        result["generate"]["rows"] = extend_months(url, args.months, tables)
        result["generate"]["total_s"] = round(time.perf_counter() - t0, 1)
        result["query"] = measure(url, args.months, args.repeats, args.fleet_only)
    result["load_after"] = load_average()
    print(json.dumps(result, indent=2, default=str))
    q = result["query"]
    rows = result["generate"]["rows"]
    print(f"\n{result['gpus']} GPUs x {args.months} months: {rows['gpu_usage_1d']:,} daily GPU rows, "
          f"{rows.get('tenant_usage_1d', 0):,} daily tenant rows; load {q['load_before_queries']} -> "
          f"{q['load_after_queries']}\n"
          + "\n".join(f"trend {k}: {q[k]['rows']} rows, median from daily rows {q[k]['old']['median_ms']} ms, from"
                      f" rollups {q[k]['new']['median_ms']} ms (first {q[k]['old']['first_ms']} / {q[k]['new']['first_ms']} ms)"
                      for k in ("fleet_by_month", "fleet_by_week", "by_model_by_month", "by_namespace_by_month")
                      if k in q), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
