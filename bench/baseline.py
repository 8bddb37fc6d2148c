"""Against the raw-sample baseline (part 4): one row per instance sample vs migmeter's sums.

The baseline is what a Kafka Connect JDBC sink or Telegraf's PostgreSQL output gives: every
instance of every snapshot flattened into one row (snapshot fields + instance fields +
metrics), in a hypertable with TimescaleDB's default time index, loaded with COPY (the
fastest way such a sink could write). Reports are then SQL over the raw rows.

Both stores get the same snapshots in one database: a small dense fleet (``gpus`` H100s,
7 x 1g each) scraped every 15 s for ``days`` days, streamed a day at a time (bounded
memory). Raw rows are COPYed; the same Snapshot objects go through migmeter's own fold and
sink (``BatchFold`` + ``Sink.write`` in batches, no Kafka, no JSON on either side).

Measured: ingest rate of each (instance-samples/s), storage bytes per instance-day
(``hypertable_size`` / days / instances), and query time (median of several runs, warm
cache) of (a) the monthly chargeback by namespace and (b) the hourly utilization trend over
a one-year range, on both stores; the two chargebacks' GPU-hours are compared line by line.

A year of raw samples of a 1,000-GPU fleet (14.7 billion rows) cannot be generated here, so:
- the 1,000-GPU monthly chargeback from the pre-aggregated tables is MEASURED on a month of
  daily rows synthesized in SQL by replicating the measured fleet's daily rows (copies with
  new GPU ids, shifted by whole multiples of the measured days to fill the month), which keeps
  the real number of rows per GPU-day;
- raw-sample query times at 1,000 GPUs, and the one-year trend at 1,000 GPUs on both sides,
  are EXTRAPOLATED linearly in the rows each query reads (the measured rows/s of that query).
  That is generous to the raw baseline: 1.25 billion rows a month (~300 GB) would not stay in
  memory as the measured few million do.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from bench.common import DENSE_MODEL, DenseFleet, fresh_database, load_average, median
from collector.snapshot import Snapshot
from warehouse import reports
from processor.fold import BatchFold
from processor.sink import USAGE_TABLES, Sink

__all__ = ["RAW_DDL", "RAW_CHARGEBACK", "RAW_TREND", "baseline"]

_START = datetime(2025, 1, 6, tzinfo=timezone.utc)  # a Monday in January: the month is 2025-01
_MONTH = date(2025, 1, 1)
_YEAR = (datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 1, tzinfo=timezone.utc))
_BATCH_SNAPSHOTS = 10_000  # migmeter side: the processor's default micro-batch
_PRICE = 2.5  # USD per GPU-hour, so the cost columns (and the price join) are exercised on both sides
_BIG_FLEET = 1000
_SYNTH_CLUSTER = "bench-1000"

RAW_DDL = """
CREATE TABLE raw_samples (
    ts               timestamptz      NOT NULL,
    interval_s       double precision NOT NULL,
    cluster          text             NOT NULL,
    host             text             NOT NULL,
    gpu_uuid         text             NOT NULL,
    gpu_index        integer          NOT NULL,
    gpu_model        text             NOT NULL,
    mig_enabled      boolean          NOT NULL,
    total_slices     smallint         NOT NULL,
    gi_id            integer          NOT NULL,
    profile          text             NOT NULL,
    slices           smallint         NOT NULL,
    namespace        text             NOT NULL,
    pod              text             NOT NULL,
    container        text             NOT NULL,
    gr_engine_active double precision,
    sm_active        double precision,
    tensor_active    double precision,
    dram_active      double precision,
    fb_used_mib      double precision,
    fb_free_mib      double precision
);
SELECT create_hypertable('raw_samples', 'ts', chunk_time_interval => INTERVAL '1 day');
"""
_RAW_COLUMNS = ("ts", "interval_s", "cluster", "host", "gpu_uuid", "gpu_index", "gpu_model", "mig_enabled",
                "total_slices", "gi_id", "profile", "slices", "namespace", "pod", "container", "gr_engine_active",
                "sm_active", "tensor_active", "dram_active", "fb_used_mib", "fb_free_mib")

# The monthly chargeback by namespace computed from raw rows, with the same lines and columns
# as sql/reports/chargeback.sql (tenant / unassigned / unallocated, priced per UTC day).
RAW_CHARGEBACK = """
WITH per_day AS (
    SELECT time_bucket('1 day', ts) AS day, cluster, gpu_model,
           CASE WHEN namespace = '' AND pod = '' THEN 'unassigned' ELSE 'tenant' END    AS line,
           CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE namespace END AS namespace,
           sum(slices::float8 / total_slices * interval_s)                              AS alloc_s,
           coalesce(sum(slices::float8 / total_slices * interval_s)
                    FILTER (WHERE gr_engine_active IS NOT NULL), 0)                      AS util_alloc_s,
           coalesce(sum(slices::float8 / total_slices * gr_engine_active * interval_s), 0) AS busy_s
    FROM raw_samples
    WHERE ts >= %(start)s AND ts < %(end)s
    GROUP BY 1, 2, 3, 4, 5
    UNION ALL
    SELECT day, cluster, gpu_model, 'unallocated', '(unallocated)', sum(dt * (1 - alloc)), 0, 0
    FROM (SELECT time_bucket('1 day', ts) AS day, cluster, gpu_model, gpu_uuid, ts,
                 max(interval_s) AS dt, sum(slices::float8 / total_slices) AS alloc
          FROM raw_samples
          WHERE ts >= %(start)s AND ts < %(end)s
          GROUP BY 1, 2, 3, 4, 5) s
    GROUP BY 1, 2, 3
)
SELECT line, namespace,
       sum(alloc_s) / 3600.0                                          AS alloc_gpu_hours,
       sum(busy_s) / 3600.0                                           AS used_gpu_hours,
       100.0 * sum(busy_s) / NULLIF(sum(util_alloc_s), 0)             AS alloc_util_pct,
       sum((alloc_s / 3600.0)::numeric * p.price_per_gpu_hour)        AS cost_alloc,
       sum((busy_s / 3600.0)::numeric * p.price_per_gpu_hour)         AS cost_used,
       p.currency
FROM per_day d
LEFT JOIN gpu_prices p
       ON p.gpu_model = d.gpu_model
      AND p.effective_from <= (d.day AT TIME ZONE 'UTC')::date
      AND (p.effective_to IS NULL OR (d.day AT TIME ZONE 'UTC')::date < p.effective_to)
GROUP BY line, namespace, p.currency
ORDER BY CASE line WHEN 'tenant' THEN 0 WHEN 'unassigned' THEN 1 ELSE 2 END, sum(alloc_s) DESC, namespace
"""

# The hourly fleet utilization trend from raw rows, same columns as sql/reports/utilization.sql.
RAW_TREND = """
SELECT time_bucket('1 hour', ts)                                  AS bucket,
       count(DISTINCT gpu_uuid)                                   AS gpus,
       sum(dt) / 3600.0                                           AS gpu_hours,
       100.0 * sum(simple_u * dt) / NULLIF(sum(dt) FILTER (WHERE simple_u IS NOT NULL), 0) AS simple_util_pct,
       100.0 * sum(busy) / NULLIF(sum(util_alloc), 0)             AS weighted_util_pct,
       100.0 * sum(busy) / NULLIF(sum(dt), 0)                     AS whole_util_pct,
       100.0 * sum(alloc) / NULLIF(sum(dt), 0)                    AS allocation_pct
FROM (SELECT ts, gpu_uuid, max(interval_s) AS dt,
             sum(slices::float8 / total_slices * interval_s)                      AS alloc,
             coalesce(sum(slices::float8 / total_slices * gr_engine_active * interval_s), 0) AS busy,
             coalesce(sum(slices::float8 / total_slices * interval_s)
                      FILTER (WHERE gr_engine_active IS NOT NULL), 0)              AS util_alloc,
             avg(gr_engine_active)                                                AS simple_u
      FROM raw_samples
      WHERE ts >= %(start)s AND ts < %(end)s
      GROUP BY ts, gpu_uuid) s
GROUP BY GROUPING SETS ((time_bucket('1 hour', ts)), ())
ORDER BY 1 NULLS LAST
"""


def _raw_rows(snaps: list[Snapshot]) -> Any:
    for s in snaps:
        head = (s.ts, s.interval_s, s.cluster, s.host, s.gpu_uuid, s.gpu_index, s.gpu_model, s.mig_enabled,
                s.total_slices)
        for i in s.instances:
            m, t = i.metrics, i.tenant
            yield (*head, i.gi_id, i.profile, i.slices, t.namespace, t.pod, t.container, m.gr_engine_active,
                   m.sm_active, m.tensor_active, m.dram_active, m.fb_used_mib, m.fb_free_mib)


def _timed(fn: Any, repeats: int) -> tuple[float, list[float], Any]:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up run."""
    result = fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - t0)
    return median(runs), runs, result


def _size(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute("SELECT hypertable_size(%s::regclass)", (table,)).fetchone()
    return int(row[0] or 0) if row else 0


def _relation_size(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()
    return int(row[0] or 0) if row else 0


def _count(conn: psycopg.Connection[Any], table: str, where: str = "") -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} " + where).format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _synthesize_big_month(conn: psycopg.Connection[Any], gpus: int, days: int) -> int:
    """Fill January with daily rows of a 1,000-GPU fleet (cluster 'bench-1000') by replicating
    the measured fleet's daily rows: copies with new GPU ids, shifted by multiples of ``days``."""
    copies = -(-_BIG_FLEET // gpus)
    lo = -(-(_START - datetime(2025, 1, 1, tzinfo=timezone.utc)).days // days)
    hi = -(-(datetime(2025, 2, 1, tzinfo=timezone.utc) - _START).days // days)
    params = {"copies": copies - 1, "lo": -lo, "hi": hi - 1, "days": days, "cluster": _SYNTH_CLUSTER,
              "m0": datetime(2025, 1, 1, tzinfo=timezone.utc), "m1": datetime(2025, 2, 1, tzinfo=timezone.utc)}
    n = 0
    for table, extra in (("tenant_usage_1d", "namespace, pod, %(cluster)s, gpu_model, seconds, alloc_gpu_seconds, "
                                             "util_alloc_gpu_seconds, busy_gpu_seconds, samples"),
                         ("gpu_usage_1d", "%(cluster)s, host, gpu_model, total_slices, seconds, mig_seconds, "
                                          "alloc_gpu_seconds, util_alloc_gpu_seconds, busy_gpu_seconds, "
                                          "simple_util_seconds, simple_seconds, instance_samples, snapshots, "
                                          "alloc_min, alloc_max, whole_util_min, whole_util_max")):
        q = (f"INSERT INTO {table} SELECT bucket + make_interval(days => j * %(days)s::int), gpu_uuid || '-c' || k, "
             f"{extra} FROM {table}, generate_series(0, %(copies)s::int) k, generate_series(%(lo)s::int, %(hi)s::int) j "
             f"WHERE cluster <> %(cluster)s AND bucket + make_interval(days => j * %(days)s::int) >= %(m0)s "
             f"AND bucket + make_interval(days => j * %(days)s::int) < %(m1)s")
        cur = conn.execute(q, params)
        n += cur.rowcount
    conn.commit()
    conn.execute("ANALYZE tenant_usage_1d")
    conn.execute("ANALYZE gpu_usage_1d")
    conn.commit()
    return n


def baseline(gpus: int = 8, days: int = 7, repeats: int = 5) -> dict[str, Any]:
    hosts = max(1, gpus // 8)
    fleet = DenseFleet(seed=13, hosts=hosts, gpus_per_host=8, models=(DENSE_MODEL,), cluster="bench",
                       start=_START)
    n_gpus = hosts * 8
    rounds_per_day = int(86400 // fleet.interval_s)
    raw_s = agg_s = 0.0
    samples = snapshots = 0
    out: dict[str, Any] = {"gpus": n_gpus, "days": days, "interval_s": fleet.interval_s}
    with fresh_database() as url, psycopg.connect(url) as conn:
        conn.execute(RAW_DDL)
        conn.execute("INSERT INTO prices (gpu_model, price_per_gpu_hour, effective_from) VALUES (%s, %s, %s)",
                     (DENSE_MODEL, _PRICE, date(2024, 1, 1)))
        conn.commit()
        sink = Sink(url, "bench-baseline")
        states: dict[str, Any] = {}
        offset = 0
        copy_stmt = sql.SQL("COPY raw_samples ({}) FROM STDIN").format(sql.SQL(", ").join(map(sql.Identifier,
                                                                                              _RAW_COLUMNS)))
        try:
            for _ in range(days):
                day = [s for r in fleet.rounds(rounds_per_day) for s in r]
                snapshots += len(day)
                samples += sum(len(s.instances) for s in day)
                # Raw baseline: COPY one row per instance sample.
                t0 = time.perf_counter()
                with conn.cursor() as cur, cur.copy(copy_stmt) as cp:
                    for row in _raw_rows(day):
                        cp.write_row(row)
                conn.commit()
                raw_s += time.perf_counter() - t0
                # migmeter: the processor's fold + exactly-once sink, in micro-batches.
                t0 = time.perf_counter()
                for i in range(0, len(day), _BATCH_SNAPSHOTS):
                    fold = BatchFold(states, {("bench", 0): offset or None})
                    for s in day[i:i + _BATCH_SNAPSHOTS]:
                        fold.add("bench", 0, offset, s.key, None, s)
                        offset += 1
                    batch = fold.finish()
                    sink.write(batch)
                    states.update(batch.states)
                agg_s += time.perf_counter() - t0
        finally:
            sink.close()
        conn.execute("ANALYZE")
        conn.commit()
        instance_days = samples / rounds_per_day  # instances x days
        out["snapshots"] = snapshots
        out["instance_samples"] = samples
        out["ingest"] = {"raw_instance_samples_per_s": samples / raw_s,
                         "migmeter_instance_samples_per_s": samples / agg_s,
                         "load": load_average()}
        # Storage.
        raw_bytes = _size(conn, "raw_samples")
        grain_bytes = {g: sum(_size(conn, spec.name) for gg, spec, _ in USAGE_TABLES if gg == g)
                       for g in ("1m", "1h", "1d")}
        other = _size(conn, "layout_events") + sum(_relation_size(conn, t)
                                                   for t in ("instance_intervals", "gpu_state", "gpus"))
        all_bytes = sum(grain_bytes.values()) + other
        out["storage"] = {
            "raw_rows": _count(conn, "raw_samples"),
            "raw_bytes_per_instance_day": raw_bytes / instance_days,
            "migmeter_all_grains_bytes_per_instance_day": all_bytes / instance_days,
            "migmeter_1h_1d_bytes_per_instance_day": (grain_bytes["1h"] + grain_bytes["1d"]) / instance_days,
            "migmeter_1d_bytes_per_instance_day": grain_bytes["1d"] / instance_days,
            "grain_bytes": grain_bytes,
            "other_bytes": other,
            "raw_vs_all_grains": raw_bytes / all_bytes if all_bytes else float("nan"),
            "raw_vs_1h_1d": raw_bytes / (grain_bytes["1h"] + grain_bytes["1d"]),
        }
        # Queries, same database, warm cache, median of repeats.
        start, end = reports.month_range(_MONTH)
        params = {"start": start, "end": end, "cluster": None}
        cb_sql = sql.SQL(reports.load_query("chargeback")).format(keys=sql.Identifier("namespace"))
        t_raw_cb, runs_raw_cb, raw_cb = _timed(lambda: conn.execute(RAW_CHARGEBACK, params).fetchall(), repeats)
        t_agg_cb, runs_agg_cb, agg_cb = _timed(lambda: conn.execute(cb_sql, params).fetchall(), repeats)
        t_agg_rep, _, _ = _timed(lambda: reports.chargeback(conn, _MONTH), repeats)
        raw_hours = {(r[0], r[1]): float(r[2]) for r in raw_cb}
        agg_hours = {(r[0], r[1]): float(r[2]) for r in agg_cb}
        diff = max((abs(raw_hours.get(k, 0.0) - agg_hours.get(k, 0.0)) for k in set(raw_hours) | set(agg_hours)),
                   default=float("nan"))
        trend_params = {"start": _YEAR[0], "end": _YEAR[1]}
        t_raw_tr, runs_raw_tr, _ = _timed(lambda: conn.execute(RAW_TREND, trend_params).fetchall(), repeats)
        t_agg_tr, runs_agg_tr, _ = _timed(lambda: reports.utilization(conn, _YEAR[0], _YEAR[1], by="hour"), repeats)
        conn.rollback()
        raw_rows = out["storage"]["raw_rows"]
        tenant_1d = _count(conn, "tenant_usage_1d")
        gpu_1h = _count(conn, "gpu_usage_1h")
        out["queries"] = {
            "chargeback_month_s": {"raw": t_raw_cb, "migmeter": t_agg_cb, "migmeter_full_report": t_agg_rep,
                                   "ratio": t_raw_cb / t_agg_cb, "runs_raw": runs_raw_cb, "runs_migmeter": runs_agg_cb},
            "chargeback_lines": len(agg_cb),
            "chargeback_max_abs_diff_gpu_hours": diff,
            "trend_year_hourly_s": {"raw": t_raw_tr, "migmeter": t_agg_tr, "ratio": t_raw_tr / t_agg_tr,
                                    "runs_raw": runs_raw_tr, "runs_migmeter": runs_agg_tr},
            "rows_read": {"raw": raw_rows, "tenant_usage_1d": tenant_1d, "gpu_usage_1h": gpu_1h},
            "load": load_average(),
        }
        # The 1,000-GPU month from the pre-aggregated tables: measured on synthesized daily rows.
        synth = _synthesize_big_month(conn, n_gpus, days)
        big_params = {"start": start, "end": end, "cluster": _SYNTH_CLUSTER}
        t_big, runs_big, big_rows = _timed(lambda: conn.execute(cb_sql, big_params).fetchall(), repeats)
        t_big_rep, _, _ = _timed(lambda: reports.chargeback(conn, _MONTH, cluster=_SYNTH_CLUSTER), repeats)
        conn.rollback()
        # Profile (EXPLAIN ANALYZE): at the default work_mem (4 MB) the ~1M daily rows are
        # grouped by an external merge sort on disk; with memory for a hash aggregate the same
        # query is ~3x faster. Measured both ways: the setting is the operator's to choose.
        conn.execute("SET work_mem = '64MB'")
        t_big_wm, runs_big_wm, _ = _timed(lambda: conn.execute(cb_sql, big_params).fetchall(), repeats)
        conn.rollback()
        conn.execute("RESET work_mem")
        work_mem = conn.execute("SHOW work_mem").fetchone()
        conn.rollback()
        big_raw_rows = _BIG_FLEET * 7 * rounds_per_day * 31
        raw_rows_per_s_cb = raw_rows / t_raw_cb
        raw_rows_per_s_tr = raw_rows / t_raw_tr
        big_gpu_1h_rows = _BIG_FLEET * 365 * 24
        out["fleet_1000"] = {
            "synthesized_daily_rows": synth,
            "chargeback_month_s_measured": t_big,
            "chargeback_full_report_s_measured": t_big_rep,
            "runs": runs_big,
            "default_work_mem": work_mem[0] if work_mem else None,
            "chargeback_month_s_work_mem_64mb": t_big_wm,
            "runs_work_mem_64mb": runs_big_wm,
            "lines": len(big_rows),
            "raw_chargeback_month_s_extrapolated": big_raw_rows / raw_rows_per_s_cb,
            "raw_rows_month": big_raw_rows,
            "ratio_extrapolated": (big_raw_rows / raw_rows_per_s_cb) / t_big,
            "trend_year_raw_s_extrapolated": _BIG_FLEET * 7 * rounds_per_day * 365 / raw_rows_per_s_tr,
            "trend_year_migmeter_s_extrapolated": big_gpu_1h_rows / (gpu_1h / t_agg_tr),
            "load": load_average(),
        }
        tr = out["fleet_1000"]
        tr["trend_ratio_extrapolated"] = tr["trend_year_raw_s_extrapolated"] / tr["trend_year_migmeter_s_extrapolated"]
    return out


def main() -> None:  # pragma: no cover - manual: python -m bench.baseline
    import json

    print(json.dumps(baseline(8, 1, 2), indent=1, default=str))


if __name__ == "__main__":
    main()
