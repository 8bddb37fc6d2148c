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

Measured on ONE generated database, before and after issue #7's rewrite, in the same run:
- the report's main query, OLD text (``OLD_CHARGEBACK_SQL`` below: the query as it was before
  ``sql/012_chargeback_usage.sql``, reading the per-pod priced view ``chargeback_pod_daily``)
  and NEW text (``sql/reports/chargeback.sql``: aggregate per day and key, then price), by
  namespace and by pod. Old and new runs alternate (old, new, old, new...) so both see the
  same machine load; the first run of each is reported apart, the figure is the median of the
  ``--repeats`` warm-cache runs after it. Two measures each: wall time including fetching
  every row into Python (by pod that is ~220k rows, a cost of its own), and the server's
  EXPLAIN ANALYZE execution time (no fetch), median of ``--explain-repeats`` runs;
- that old and new return the same lines (keys and currency equal, numbers within 1e-6;
  measured: < 1e-9, float summation order only);
- the whole ``migmeter report chargeback`` (``warehouse.reports.chargeback``: main query,
  reconciliation, Python), by namespace and by pod, new path only;
- the BI view ``chargeback_namespace_monthly`` filtered on the month, 011's definition
  (``OLD_BI_NAMESPACE_MONTHLY_SQL``) vs 012's;
- the load average before and after the measurements (the machine is shared).
All at the server's default settings (``work_mem`` is recorded).

Run: ``python -m bench.chargeback_query [--gpus-per-host 8 --hosts 125 --repeats 5]``; it
creates and drops its own database on the local stack (or ``$MIGMETER_DATABASE_URL``'s server).
``--copies 4`` measures on four copies of the month's daily rows (~1.15M tenant rows, same
tenants); ``--database-url URL`` measures a month already generated there (nothing dropped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from bench.common import coarsen, fresh_database, load_average, median
from collector.sources.simulate import DEFAULT_MODELS, SimulatedFleet
from warehouse import prices, reports
from processor.fold import BatchFold
from processor.layout import GpuState
from processor.sink import Sink

__all__ = ["OLD_CHARGEBACK_SQL", "OLD_BI_NAMESPACE_MONTHLY_SQL", "generate", "measure", "main"]

MONTH = date(2025, 1, 1)
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
DAYS = 31
TOPIC = "bench.chargeback"
PRICES = {"A100-SXM4-80GB": "2.50", "H100-80GB-HBM3": "4.00", "A30": "1.00"}
# Old and new lines must agree to this many GPU-hours / currency units: only the order of
# float additions differs (~1e-12 relative on a fleet-month).
_SAME_LINES_TOLERANCE = 1e-6

# ---------------------------------------------------------------------------------------------
# OLD QUERY, kept only to measure before/after in one run (issue #7). This is
# sql/reports/chargeback.sql as it was before sql/012_chargeback_usage.sql: it sums the
# per-pod, per-day, already-priced rows of the view chargeback_pod_daily (011), which groups
# every daily tenant row at pod grain and joins a price to each of those groups.
# Do not use it for reports. (unmeasured_gpu_hours added with sql/014, so its lines have the
# report's columns and the comparison below stays column for column.)
OLD_CHARGEBACK_SQL = """
SELECT line,
       {keys},
       sum(alloc_gpu_hours)                                                AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                 AS used_gpu_hours,
       sum(unmeasured_gpu_hours)                                           AS unmeasured_gpu_hours,
       100.0 * sum(used_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0)  AS alloc_util_pct,
       sum(cost_alloc)                                                     AS cost_alloc,
       sum(cost_used)                                                      AS cost_used,
       currency
FROM chargeback_pod_daily
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
GROUP BY line, {keys}, currency
ORDER BY CASE line WHEN 'tenant' THEN 0 WHEN 'unassigned' THEN 1 ELSE 2 END,
         sum(alloc_gpu_hours) DESC, {keys}, currency
"""
# OLD BI VIEW, same purpose: chargeback_namespace_monthly as 011 defined it (summing
# chargeback_pod_monthly, itself a sum of chargeback_pod_daily), filtered on one month.
OLD_BI_NAMESPACE_MONTHLY_SQL = """
SELECT month, cluster, line, namespace, currency,
       sum(alloc_gpu_hours)                                                AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                 AS used_gpu_hours,
       sum(util_known_gpu_hours)                                           AS util_known_gpu_hours,
       100.0 * sum(used_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0)  AS alloc_util_pct,
       sum(cost_alloc)                                                     AS cost_alloc,
       sum(cost_used)                                                      AS cost_used
FROM chargeback_pod_monthly
WHERE month = %(month)s
GROUP BY month, cluster, line, namespace, currency
"""
# ---------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[chargeback-bench] {msg}", file=sys.stderr, flush=True)


def generate(url: str, hosts: int, gpus_per_host: int, interval_s: float, with_hourly: bool) -> dict[str, Any]:
    """Fold and write one simulated month, a day per transaction; returns counts and timings."""
    fleet = SimulatedFleet(seed=5, hosts=hosts, gpus_per_host=gpus_per_host, cluster="bench-month",
                           start=START, interval_s=interval_s)
    rounds_per_day = int(86400 // interval_s)
    # Chargeback reads only the daily tables: write those (and the hourly ones if asked), from
    # the batch's partials coarsened to hours first (exact: the sink rolls them up by the same roles).
    sink = Sink(url, "bench", grains=("1h", "1d") if with_hourly else ("1d",))
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
                    fold.add(TOPIC, 0, offset, snap.key, None, snap)
                    offset += 1
            batch = fold.finish()
            batch.aggregates = coarsen(batch.aggregates, 3600)
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


# The daily tables' columns after (bucket, gpu_uuid), in order: a copy keeps them as they are.
_COPY_COLUMNS = {
    "tenant_usage_1d": "namespace, pod, cluster, gpu_model, seconds, alloc_gpu_seconds, util_alloc_gpu_seconds, "
                       "busy_gpu_seconds, samples",
    "gpu_usage_1d": "cluster, host, gpu_model, total_slices, seconds, mig_seconds, alloc_gpu_seconds, "
                    "util_alloc_gpu_seconds, busy_gpu_seconds, simple_util_seconds, simple_seconds, instance_samples, "
                    "snapshots, alloc_min, alloc_max, whole_util_min, whole_util_max",
}


def replicate(url: str, copies: int) -> dict[str, int]:
    """Scale the generated month up: ``copies - 1`` more copies of every daily row under new GPU
    ids (same cluster, tenants and days), as if the fleet were ``copies`` times larger with the
    same tenants. The report's lines stay the same, with ``copies`` times the hours; what grows
    is the number of rows it reads (e.g. ``--copies 4``: ~1.15M daily tenant rows, the size at
    which the old query's sorts spilled to disk for tens of seconds)."""
    with psycopg.connect(url) as conn:
        for table, columns in _COPY_COLUMNS.items():
            conn.execute(sql.SQL("INSERT INTO {t} (bucket, gpu_uuid, {c}) SELECT bucket, gpu_uuid || '-copy' || k, {c} "
                                 "FROM {t}, generate_series(1, %(n)s::int) AS k").format(
                t=sql.Identifier(table), c=sql.SQL(columns)), {"n": copies - 1})
        conn.commit()
        conn.autocommit = True
        for table in _COPY_COLUMNS:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        return {t: _scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))) for t in _COPY_COLUMNS}


def _scalar(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed, params: dict[str, Any] | None = None) -> Any:
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


def _timed_pair(old: Any, new: Any, repeats: int) -> dict[str, dict[str, float]]:
    """Old and new alternately (one first run each, then ``repeats`` pairs): load that comes
    and goes on the shared machine hits both alike, so their ratio is fair."""
    firsts: dict[str, float] = {}
    runs: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(repeats + 1):
        for name, fn in (("old", old), ("new", new)):
            t0 = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t0
            if i == 0:
                firsts[name] = elapsed
            else:
                runs[name].append(elapsed)
    return {name: {"first_ms": round(firsts[name] * 1000, 1), "median_ms": round(median(r) * 1000, 1),
                   "max_ms": round(max(r) * 1000, 1)} for name, r in runs.items()}


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _walk(child)


def _explain(conn: psycopg.Connection[Any], query: sql.Composed, params: dict[str, Any],
             repeats: int) -> dict[str, Any]:
    """Server-side execution time (EXPLAIN ANALYZE: no rows sent to the client), median of
    ``repeats``, and whether any sort or hash aggregate of the plan spilled to disk."""
    times, spills = [], set()
    for _ in range(repeats):
        plan = _scalar(conn, sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query, params)[0]
        times.append(plan["Execution Time"])
        for node in _walk(plan["Plan"]):
            if node.get("Sort Space Type") == "Disk" or node.get("Disk Usage", 0) or node.get("HashAgg Batches", 1) > 1:
                spills.add(node["Node Type"])
    return {"execution_ms": round(median(times), 1), "spills_to_disk": sorted(spills)}


def _lines(rows: list[tuple[Any, ...]], n_keys: int) -> dict[tuple[Any, ...], tuple[float, ...]]:
    """(line, keys..., currency) -> (alloc, used, util %, cost_alloc, cost_used) as floats (NULL = NaN)."""
    return {tuple(r[:1 + n_keys]) + (r[-1],): tuple(float("nan") if v is None else float(v) for v in r[1 + n_keys:-1])
            for r in rows}


def _compare(old_rows: list[tuple[Any, ...]], new_rows: list[tuple[Any, ...]], n_keys: int) -> dict[str, Any]:
    old, new = _lines(old_rows, n_keys), _lines(new_rows, n_keys)
    diff = max((abs(a - b) for k in old.keys() & new.keys() for a, b in zip(old[k], new[k])
                if not (a != a and b != b)), default=0.0)  # NaN == NaN (an unpriced line) counts as equal
    return {"same_keys": old.keys() == new.keys(), "lines": len(new), "max_abs_diff": diff,
            "same_lines": old.keys() == new.keys() and diff <= _SAME_LINES_TOLERANCE}


def measure(url: str, repeats: int, explain_repeats: int = 3) -> dict[str, Any]:
    """Old vs new chargeback query on the same database, then the full report and the BI view."""
    start, end = reports.month_range(MONTH)
    params = {"start": start, "end": end, "cluster": None}
    out: dict[str, Any] = {}
    with psycopg.connect(url) as conn:
        conn.read_only = True
        out["work_mem"] = _scalar(conn, sql.SQL("SHOW work_mem"))
        out["load_before_queries"] = load_average()
        for by, key_names in reports.CHARGEBACK_BY.items():
            keys = sql.SQL(", ").join(map(sql.Identifier, key_names))
            old_q = sql.SQL(OLD_CHARGEBACK_SQL).format(keys=keys)
            new_q = sql.SQL(reports.load_query("chargeback")).format(keys=keys)
            part: dict[str, Any] = {}
            part["compare"] = _compare(conn.execute(old_q, params).fetchall(),
                                       conn.execute(new_q, params).fetchall(), len(key_names))
            part["query_with_fetch"] = _timed_pair(lambda: conn.execute(old_q, params).fetchall(),
                                                   lambda: conn.execute(new_q, params).fetchall(), repeats)
            part["explain"] = {name: _explain(conn, q, params, explain_repeats)
                               for name, q in (("old", old_q), ("new", new_q))}
            fetch, explain = part["query_with_fetch"], part["explain"]
            part["ratio_with_fetch"] = round(fetch["old"]["median_ms"] / fetch["new"]["median_ms"], 2)
            part["ratio_execution"] = round(explain["old"]["execution_ms"] / explain["new"]["execution_ms"], 2)
            out[f"by_{by}"] = part
        rec = reports.reconciliation(conn, start, end)
        out["physical_gpu_hours"] = round(rec.physical_gpu_hours, 3)
        out["reconciles"] = rec.ok
        out["difference_gpu_hours"] = rec.difference_gpu_hours
        out["report_by_namespace"] = _timed(lambda: reports.chargeback(conn, MONTH, by="namespace"), repeats)
        out["report_by_pod"] = _timed(lambda: reports.chargeback(conn, MONTH, by="pod"), repeats)
        out["reconciliation"] = _timed(lambda: reports.reconciliation(conn, start, end), repeats)
        out["bi_view_namespace_monthly"] = _timed_pair(
            lambda: conn.execute(OLD_BI_NAMESPACE_MONTHLY_SQL, {"month": MONTH}).fetchall(),
            lambda: conn.execute("SELECT * FROM chargeback_namespace_monthly WHERE month = %(month)s",
                                 {"month": MONTH}).fetchall(), repeats)
        out["load_after_queries"] = load_average()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=125)
    ap.add_argument("--gpus-per-host", type=int, default=8)
    ap.add_argument("--interval", type=float, default=3600.0, help="simulated scrape interval, s (default 3600)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--explain-repeats", type=int, default=3)
    ap.add_argument("--database-url", help="measure an already generated month in this database (no generation, "
                    "nothing dropped); default: generate one in a new database")
    ap.add_argument("--with-hourly", action="store_true", help="also write the hourly rows (slower)")
    ap.add_argument("--copies", type=int, default=1,
                    help="measure on this many copies of the month's daily rows under new GPU ids (default 1)")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"gpus": args.hosts * args.gpus_per_host, "month": f"{MONTH:%Y-%m}",
                              "models": list(DEFAULT_MODELS), "interval_s": args.interval,
                              "load_before": load_average()}
    if args.copies < 1:
        ap.error("--copies must be >= 1")
    if args.database_url:
        with psycopg.connect(args.database_url) as conn:
            result["generate"] = {"rows": {"tenant_usage_1d": _scalar(conn, sql.SQL("SELECT count(*) FROM tenant_usage_1d"))}}
        result["query"] = measure(args.database_url, args.repeats, args.explain_repeats)
    else:
        with fresh_database() as url:
            t0 = time.perf_counter()
            result["generate"] = generate(url, args.hosts, args.gpus_per_host, args.interval, args.with_hourly)
            result["generate"]["total_s"] = round(time.perf_counter() - t0, 1)
            if args.copies > 1:
                result["gpus"] *= args.copies
                result["generate"]["rows"] = replicate(url, args.copies)
            result["query"] = measure(url, args.repeats, args.explain_repeats)
    result["load_after"] = load_average()
    print(json.dumps(result, indent=2, default=str))
    print(_summary(result), file=sys.stderr)
    return 0


def _summary(result: dict[str, Any]) -> str:
    q = result["query"]
    lines = [f"\n{result['gpus']} GPUs, {result['month']}: {result['generate']['rows']['tenant_usage_1d']:,} daily "
             f"tenant rows; work_mem {q['work_mem']}; load average {q['load_before_queries']} before, "
             f"{q['load_after_queries']} after the queries"]
    for by in reports.CHARGEBACK_BY:
        p = q[f"by_{by}"]
        f, e = p["query_with_fetch"], p["explain"]
        lines.append(
            f"chargeback by {by} ({p['compare']['lines']:,} lines, old = new: {p['compare']['same_lines']}): "
            f"with fetch old {f['old']['median_ms']} ms -> new {f['new']['median_ms']} ms ({p['ratio_with_fetch']}x); "
            f"server execution old {e['old']['execution_ms']} ms -> new {e['new']['execution_ms']} ms "
            f"({p['ratio_execution']}x); spills to disk: old {e['old']['spills_to_disk'] or 'none'}, "
            f"new {e['new']['spills_to_disk'] or 'none'}")
    bi = q["bi_view_namespace_monthly"]
    lines.append(f"whole `migmeter report chargeback` (new): by namespace {q['report_by_namespace']['median_ms']} ms, "
                 f"by pod {q['report_by_pod']['median_ms']} ms; BI chargeback_namespace_monthly "
                 f"old {bi['old']['median_ms']} ms -> new {bi['new']['median_ms']} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
