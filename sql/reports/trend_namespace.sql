-- Trend per namespace (and the unassigned / unallocated / unmetered lines) per week or month,
-- from the per-day (cluster, GPU model, namespace) rollup (reader view trend_namespace_daily,
-- sql/034): the chargeback's lines (chargeback_lines_daily, sql/014) summed per namespace and
-- GPU model, each day at its model's price (gpu_prices), then per period. %(unit)s is 'week'
-- (ISO, Monday) or 'month'.
-- Params: start, end (timestamptz), cluster (text or NULL), unit (text); by_model is ignored.
SELECT date_trunc(%(unit)s::text, u.bucket AT TIME ZONE 'UTC')::date        AS period,
       u.namespace                                                          AS grp,
       NULL::bigint                                                         AS gpu_days,
       NULL::double precision                                               AS gpu_hours,
       sum(u.alloc_gpu_hours)                                               AS alloc_gpu_hours,
       sum(u.used_gpu_hours)                                                AS used_gpu_hours,
       100.0 * sum(u.used_gpu_hours) / NULLIF(sum(u.util_known_gpu_hours), 0) AS weighted_util_pct,
       NULL::double precision                                               AS allocation_pct,
       NULL::double precision                                               AS coverage_pct,
       sum(u.alloc_gpu_hours::numeric * p.price_per_gpu_hour)               AS cost,
       CASE WHEN count(DISTINCT p.currency) = 1 AND count(p.currency) = count(*) THEN min(p.currency) END AS currency
FROM trend_namespace_daily u
LEFT JOIN gpu_prices p
       ON p.gpu_model = u.gpu_model
      AND p.effective_from <= u.day
      AND (p.effective_to IS NULL OR u.day < p.effective_to)
WHERE u.bucket >= %(start)s AND u.bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR u.cluster = %(cluster)s::text)
GROUP BY 1, 2
ORDER BY 1, 2
