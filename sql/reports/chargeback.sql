-- Chargeback for a bucket range (a UTC month): one line per tenant key and currency, plus
-- the unassigned and unallocated lines. {keys} is `namespace` or `namespace, pod`, chosen
-- from a whitelist and quoted as identifiers by processor/reports.py.
-- Reads the daily view so each day is priced at that day's price; filtering on `bucket`
-- lets TimescaleDB skip chunks outside the month.
-- Params: start, end (timestamptz, [start, end)), cluster (text or NULL = all clusters).
SELECT line,
       {keys},
       sum(alloc_gpu_hours)                                                AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                 AS used_gpu_hours,
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
