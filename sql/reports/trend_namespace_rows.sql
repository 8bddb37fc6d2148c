-- The same trend as trend_namespace.sql, summed from the stored daily rows instead of the rollup of sql/034:
-- the reference the rollup is tested against (tests/integration/test_trend_rollup.py) and the
-- "before" of bench/trend_query.py. `report trend` does not use it.
-- Trend per namespace (and the unassigned / unallocated lines) per week or month, from the
-- chargeback's own daily lines (the reader view chargeback_namespace_daily, sql/012): the
-- same lines and prices as `migmeter report chargeback`, summed per period. %(unit)s is
-- 'week' (ISO, Monday) or 'month'.
-- Params: start, end (timestamptz), cluster (text or NULL), unit (text); by_model is ignored.
SELECT date_trunc(%(unit)s::text, bucket AT TIME ZONE 'UTC')::date           AS period,
       namespace                                                              AS grp,
       NULL::bigint                                                           AS gpu_days,
       NULL::double precision                                                 AS gpu_hours,
       sum(alloc_gpu_hours)                                                   AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                    AS used_gpu_hours,
       100.0 * sum(used_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0)     AS weighted_util_pct,
       NULL::double precision                                                 AS allocation_pct,
       NULL::double precision                                                 AS coverage_pct,
       sum(cost_alloc)                                                        AS cost,
       CASE WHEN count(DISTINCT currency) = 1 AND count(currency) = count(*) THEN min(currency) END AS currency
FROM chargeback_namespace_daily
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
GROUP BY 1, 2
ORDER BY 1, 2
