-- Chargeback for a bucket range (a UTC month): one line per tenant key and currency, plus
-- the unassigned, unallocated and unmetered lines. {keys} is `namespace` or `namespace, pod`,
-- chosen from a whitelist and quoted as identifiers by warehouse/reports.py.
-- The lines come from chargeback_lines_daily (sql/014), the one place that lists them, so
-- every chargeback view and report shows the same lines. Aggregate first, price after: the
-- period's daily lines are summed per (day, GPU model, line, key) (the `bucket` and cluster
-- filters reach every arm's scan, so TimescaleDB skips other chunks); only that small set is
-- joined to the price in force on its day (a price change mid-month splits the month, each
-- day at its own price; no price = NULL currency and cost), then summed per line, key and
-- currency. unmeasured_gpu_hours: allocated hours without a utilization value.
-- Params: start, end (timestamptz, [start, end)), cluster (text or NULL = all clusters).
WITH daily AS (
    SELECT bucket, gpu_model, line, {keys},
           sum(alloc_gpu_hours)      AS alloc_gpu_hours,
           sum(used_gpu_hours)       AS used_gpu_hours,
           sum(util_known_gpu_hours) AS util_known_gpu_hours,
           sum(unmeasured_gpu_hours) AS unmeasured_gpu_hours
    FROM chargeback_lines_daily
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
    GROUP BY bucket, gpu_model, line, {keys}
)
SELECT d.line,
       {keys},
       sum(d.alloc_gpu_hours)                                                    AS alloc_gpu_hours,
       sum(d.used_gpu_hours)                                                     AS used_gpu_hours,
       sum(d.unmeasured_gpu_hours)                                               AS unmeasured_gpu_hours,
       100.0 * sum(d.used_gpu_hours) / NULLIF(sum(d.util_known_gpu_hours), 0)    AS alloc_util_pct,
       sum(d.alloc_gpu_hours::numeric * p.price_per_gpu_hour)                    AS cost_alloc,
       sum(d.used_gpu_hours::numeric * p.price_per_gpu_hour)                     AS cost_used,
       p.currency
FROM daily d
LEFT JOIN gpu_prices p
       ON p.gpu_model = d.gpu_model
      AND p.effective_from <= (d.bucket AT TIME ZONE 'UTC')::date
      AND (p.effective_to IS NULL OR (d.bucket AT TIME ZONE 'UTC')::date < p.effective_to)
GROUP BY d.line, {keys}, p.currency
ORDER BY CASE d.line WHEN 'tenant' THEN 0 WHEN 'unassigned' THEN 1 WHEN 'unallocated' THEN 2 ELSE 3 END,
         sum(d.alloc_gpu_hours) DESC, {keys}, p.currency
