-- Chargeback for a bucket range (a UTC month): one line per tenant key and currency, plus
-- the unassigned and unallocated lines. {keys} is `namespace` or `namespace, pod`, chosen
-- from a whitelist and quoted as identifiers by processor/reports.py.
-- Aggregate first, price after: the period's daily rows are summed per (day, GPU model, line,
-- key), in three arms (tenants, unassigned instances, unallocated slices) that each group
-- plain columns of one table, so the planner's group estimates hold and it hashes instead of
-- sorting (sql/012_chargeback_usage.sql says why); the `bucket` and cluster filters sit in
-- every arm, so TimescaleDB skips other chunks. Only that small set is joined to the price in
-- force on its day (a price change mid-month splits the month, each day at its own price; no
-- price = NULL currency and cost), and the priced days are summed per line, key and currency.
-- Same lines as the BI views chargeback_pod_monthly / chargeback_namespace_monthly (checked
-- by tests/integration/test_chargeback.py).
-- Params: start, end (timestamptz, [start, end)), cluster (text or NULL = all clusters).
WITH daily AS (
    SELECT bucket, gpu_model, 'tenant' AS line, {keys},
           sum(alloc_gpu_hours)      AS alloc_gpu_hours,
           sum(busy_gpu_hours)       AS used_gpu_hours,
           sum(util_known_gpu_hours) AS util_known_gpu_hours
    FROM tenant_usage_hours_1d
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
      AND NOT (namespace = '' AND pod = '')
    GROUP BY bucket, gpu_model, {keys}
    UNION ALL
    -- Instances nobody was assigned to (stored as namespace = pod = '').
    SELECT bucket, gpu_model, 'unassigned', {keys},
           sum(alloc_gpu_hours), sum(busy_gpu_hours), sum(util_known_gpu_hours)
    FROM (SELECT bucket, cluster, gpu_model, alloc_gpu_hours, busy_gpu_hours, util_known_gpu_hours,
                 '(unassigned)' AS namespace, '(unassigned)' AS pod
          FROM tenant_usage_hours_1d
          WHERE namespace = '' AND pod = '') t
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
    GROUP BY bucket, gpu_model, {keys}
    UNION ALL
    -- Slices without an instance: the GPU's hours not allocated to anyone.
    SELECT bucket, gpu_model, 'unallocated', {keys},
           sum(gpu_hours - alloc_gpu_hours), 0.0::double precision, 0.0::double precision
    FROM (SELECT bucket, cluster, gpu_model, gpu_hours, alloc_gpu_hours,
                 '(unallocated)' AS namespace, '(unallocated)' AS pod
          FROM gpu_usage_hours_1d) g
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
    GROUP BY bucket, gpu_model, {keys}
)
SELECT d.line,
       {keys},
       sum(d.alloc_gpu_hours)                                                    AS alloc_gpu_hours,
       sum(d.used_gpu_hours)                                                     AS used_gpu_hours,
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
ORDER BY CASE d.line WHEN 'tenant' THEN 0 WHEN 'unassigned' THEN 1 ELSE 2 END,
         sum(d.alloc_gpu_hours) DESC, {keys}, p.currency
