-- Right-sizing input per tenant workload (namespace, pod, GPU model, profile) over a bucket
-- range: the distribution of its 1-minute utilization rows (percentiles of the minutes, not
-- an average of averages), its memory high-water mark, hours, and its cost by allocation.
-- Reads the reader views instance_utilization_1m (007) and focus_usage_daily (030); both are
-- filtered on `bucket`, so TimescaleDB skips other chunks. Unassigned instances are left out
-- (nobody to advise). util_pct is NULL on minutes without a utilization reading (ignored by
-- the percentiles, counted apart).
-- Params: start, end (timestamptz), cluster (text or NULL).
WITH minutes AS (
    SELECT namespace, pod, gpu_model, profile,
           max(slices)                                              AS slices,
           max(total_slices)                                        AS total_slices,
           count(DISTINCT gpu_uuid)                                 AS gpus,
           sum(hours)                                               AS instance_hours,
           count(util_pct)                                          AS util_minutes,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY util_pct)    AS p50_util_pct,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY util_pct)   AS p95_util_pct,
           max(util_pct)                                            AS max_util_pct,
           max(fb_used_max_mib)                                     AS peak_fb_mib
    FROM instance_utilization_1m
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
      AND NOT (namespace = '(unassigned)' AND pod = '(unassigned)')
    GROUP BY namespace, pod, gpu_model, profile
), costs AS (
    SELECT namespace, pod, gpu_model, profile,
           sum(cost_alloc) AS cost, min(currency) AS currency, count(DISTINCT currency) AS currencies
    FROM focus_usage_daily
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
      AND line = 'tenant'
    GROUP BY namespace, pod, gpu_model, profile
)
SELECT m.namespace, m.pod, m.gpu_model, m.profile, m.slices, m.total_slices, m.gpus, m.instance_hours,
       m.util_minutes, m.p50_util_pct, m.p95_util_pct, m.max_util_pct, m.peak_fb_mib,
       c.cost, CASE WHEN c.currencies = 1 THEN c.currency END AS currency
FROM minutes m
LEFT JOIN costs c USING (namespace, pod, gpu_model, profile)
ORDER BY c.cost DESC NULLS LAST, m.namespace, m.pod, m.gpu_model, m.profile
