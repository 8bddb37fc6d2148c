"""How long the monthly chargeback takes on a simulated month of a 1,000-GPU fleet.

Data: the simulated fleet (``SimulatedFleet``: 125 hosts x 8 GPUs, A100/H100/A30 round-robin,
MIG layouts, tenants arriving and leaving, re-partitionings) for all of January 2025,
folded and written by the processor's OWN code (``BatchFold`` + ``Sink.write``, one batch
per simulated day, no Kafka), so the rows per GPU-day are what the pipeline really writes.
Two shortcuts keep generation to a few minutes on a 2-core machine, neither touching what
the measured queries read:
- snapshots every hour (``--interval``, default 3600 s) instead of every 15-60 s: daily rows
  are one per (GPU, tenant, day) whatever the scrape interval, tenants that come and go
  within an hour are missed (slightly fewer rows than a real fleet);
- the 1-minute partials (and, unless ``--with-hourly``, the hourly ones) are not written:
  chargeback reads only the daily tables.

Measured (warm cache, median of ``--repeats`` runs, plus the first run): ``migmeter report
chargeback`` by namespace and by pod (``processor.reports.chargeback``, which includes the
reconciliation query), the reconciliation alone, the BI view ``chargeback_namespace_monthly``
filtered on one month, and the EXPLAIN ANALYZE execution time of the report's main query.

Run: ``python -m bench.chargeback_query [--gpus-per-host 8 --hosts 125 --repeats 5]``; it
creates and drops its own database on the local stack (or ``$MIGMETER_DATABASE_URL``'s server).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from bench.common import fresh_database, load_average, median
from collector.sources.simulate import DEFAULT_MODELS, SimulatedFleet
from processor import prices, reports
from processor.aggregate import Aggregates
from processor.fold import BatchFold
from processor.layout import GpuState
from processor.sink import Sink

__all__ = ["generate", "measure", "main"]

MONTH = date(2025, 1, 1)
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
DAYS = 31
TOPIC = "bench.chargeback"
PRICES = {"A100-SXM4-80GB": "2.50", "H100-80GB-HBM3": "4.00", "A30": "1.00"}


def _log(msg: str) -> None:
    print(f"[chargeback-bench] {msg}", file=sys.stderr, flush=True)


def generate(url: str, hosts: int, gpus_per_host: int, interval_s: float, with_hourly: bool) -> dict[str, Any]:
    """Fold and write one simulated month, a day per transaction; returns counts and timings."""
    fleet = SimulatedFleet(seed=5, hosts=hosts, gpus_per_host=gpus_per_host, cluster="bench-month",
                           start=START, interval_s=interval_s)
    rounds_per_day = int(86400 // interval_s)
    sink = Sink(url, "bench")
    states: dict[str, GpuState | None] = {}
    next_offset: int | None = None
    snapshots, fold_s, write_s = 0, 0.0, 0.0
    try:
        for day in range(DAYS):
            t0 = time.perf_counter()
            fold = BatchFold(states=states, stored_offsets={(TOPIC, 0): next_offset})
            offset = next_offset or 0
            for round_ in fleet.rounds(rounds_per_day):
                for snap in round_:
                    fold.add(TOPIC, 0, offset, None, None, snap)
                    offset += 1
            batch = fold.finish()
            batch.aggregates["1m"] = Aggregates.empty()
            if not with_hourly:
                batch.aggregates["1h"] = Aggregates.empty()
            t1 = time.perf_counter()
            sink.write(batch)
            t2 = time.perf_counter()
            states.update(batch.states)
            snapshots += offset - (next_offset or 0)
            next_offset = offset
            fold_s += t1 - t0
            write_s += t2 - t1
            _log(f"day {day + 1}/{DAYS}: {snapshots:,} snapshots, fold {fold_s:.0f} s, write {write_s:.0f} s")
    finally:
        sink.close()
    with psycopg.connect(url) as conn:
        for model, price in PRICES.items():
            prices.set_price(conn, prices.Price(model, Decimal(price), "USD", MONTH))
        # A mid-month price change, so the month is split across two prices as in real life.
        prices.set_price(conn, prices.Price("H100-80GB-HBM3", Decimal("3.50"), "USD", date(2025, 1, 16)))
        conn.commit()
        conn.autocommit = True
        for t in ("tenant_usage_1d", "gpu_usage_1d", "instance_usage_1d"):
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(t)))
        counts = {t: _scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
                  for t in ("tenant_usage_1d", "gpu_usage_1d", "instance_usage_1d", "gpus")}
    return {"snapshots": snapshots, "fold_s": round(fold_s, 1), "write_s": round(write_s, 1), "rows": counts}


def _scalar(conn: psycopg.Connection[Any], query: sql.Composed, params: dict[str, Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _timed(fn: Any, repeats: int) -> dict[str, float]:
    first_t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - first_t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"first_ms": round(first * 1000, 1), "median_ms": round(median(runs) * 1000, 1),
            "max_ms": round(max(runs) * 1000, 1)}


def measure(url: str, repeats: int) -> dict[str, Any]:
    start, end = reports.month_range(MONTH)
    out: dict[str, Any] = {}
    with psycopg.connect(url) as conn:
        conn.read_only = True
        cb = reports.chargeback(conn, MONTH, by="namespace")
        rec = reports.reconciliation(conn, start, end)
        out["lines_by_namespace"] = len(cb.rows)
        out["lines_by_pod"] = len(reports.chargeback(conn, MONTH, by="pod").rows)
        out["physical_gpu_hours"] = round(rec.physical_gpu_hours, 3)
        out["reconciles"] = rec.ok
        out["difference_gpu_hours"] = rec.difference_gpu_hours
        out["report_by_namespace"] = _timed(lambda: reports.chargeback(conn, MONTH, by="namespace"), repeats)
        out["report_by_pod"] = _timed(lambda: reports.chargeback(conn, MONTH, by="pod"), repeats)
        out["reconciliation"] = _timed(lambda: reports.reconciliation(conn, start, end), repeats)
        out["bi_view_namespace_monthly"] = _timed(lambda: conn.execute(
            "SELECT * FROM chargeback_namespace_monthly WHERE month = %s", (MONTH,)).fetchall(), repeats)
        query = sql.SQL(reports.load_query("chargeback")).format(keys=sql.Identifier("namespace"))
        plan = _scalar(conn, sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query,
                       {"start": start, "end": end, "cluster": None})
        out["explain_execution_ms"] = round(plan[0]["Execution Time"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=125)
    ap.add_argument("--gpus-per-host", type=int, default=8)
    ap.add_argument("--interval", type=float, default=3600.0, help="simulated scrape interval, s (default 3600)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--with-hourly", action="store_true", help="also write the hourly rows (slower)")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"gpus": args.hosts * args.gpus_per_host, "month": f"{MONTH:%Y-%m}",
                              "models": list(DEFAULT_MODELS), "interval_s": args.interval,
                              "load_before": load_average()}
    with fresh_database() as url:
        t0 = time.perf_counter()
        result["generate"] = generate(url, args.hosts, args.gpus_per_host, args.interval, args.with_hourly)
        result["generate"]["total_s"] = round(time.perf_counter() - t0, 1)
        result["query"] = measure(url, args.repeats)
    result["load_after"] = load_average()
    print(json.dumps(result, indent=2, default=str))
    q = result["query"]
    print(f"\n{result['gpus']} GPUs, {result['month']}: {result['generate']['rows']['tenant_usage_1d']:,} daily tenant "
          f"rows; `migmeter report chargeback --by namespace` median {q['report_by_namespace']['median_ms']} ms "
          f"(first {q['report_by_namespace']['first_ms']} ms), by pod {q['report_by_pod']['median_ms']} ms; "
          f"main query execution {q['explain_execution_ms']} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
