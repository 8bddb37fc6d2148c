-- The same trend as trend_fleet.sql, summed from the stored daily rows instead of the rollup of sql/034:
-- the reference the rollup is tested against (tests/integration/test_trend_rollup.py) and the
-- "before" of bench/trend_query.py. `report trend` does not use it.
-- Fleet (or per GPU model) trend per week or month over a bucket range, from the daily GPU
-- rows (gpu_usage_hours_1d). Coverage is metered / capacity and the cost is the capacity's
-- (what the chargeback bills in all, its (unmetered) line included): aggregate per day and GPU model first, join the day's price to
-- that small set, then sum per period: one series ('all') or one per GPU model (by_model).
-- %(unit)s is 'week' (ISO, Monday) or 'month', checked by warehouse/trend.py.
-- Params: start, end (timestamptz), cluster (text or NULL), unit (text), by_model (boolean).
WITH daily AS (
    SELECT bucket, gpu_model, CASE WHEN %(by_model)s THEN gpu_model ELSE 'all' END AS grp,
           count(*)                  AS gpu_days,
           sum(gpu_hours)            AS gpu_hours,
           sum(capacity_gpu_hours)   AS capacity_gpu_hours,
           sum(alloc_gpu_hours)      AS alloc_gpu_hours,
           sum(busy_gpu_hours)       AS used_gpu_hours,
           sum(util_known_gpu_hours) AS util_known_gpu_hours
    FROM gpu_usage_hours_1d
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
    GROUP BY bucket, gpu_model
)
SELECT date_trunc(%(unit)s::text, d.bucket AT TIME ZONE 'UTC')::date          AS period,
       d.grp,
       sum(d.gpu_days)                                                         AS gpu_days,
       sum(d.gpu_hours)                                                        AS gpu_hours,
       sum(d.alloc_gpu_hours)                                                  AS alloc_gpu_hours,
       sum(d.used_gpu_hours)                                                   AS used_gpu_hours,
       100.0 * sum(d.used_gpu_hours) / NULLIF(sum(d.util_known_gpu_hours), 0)  AS weighted_util_pct,
       100.0 * sum(d.alloc_gpu_hours) / NULLIF(sum(d.gpu_hours), 0)            AS allocation_pct,
       100.0 * sum(d.gpu_hours) / NULLIF(sum(d.capacity_gpu_hours), 0)         AS coverage_pct,
       sum(d.capacity_gpu_hours::numeric * p.price_per_gpu_hour)               AS cost,
       CASE WHEN count(DISTINCT p.currency) = 1 AND count(p.currency) = count(*) THEN min(p.currency) END AS currency
FROM daily d
LEFT JOIN gpu_prices p
       ON p.gpu_model = d.gpu_model
      AND p.effective_from <= (d.bucket AT TIME ZONE 'UTC')::date
      AND (p.effective_to IS NULL OR (d.bucket AT TIME ZONE 'UTC')::date < p.effective_to)
GROUP BY 1, 2
ORDER BY 1, 2
