-- Utilization per bucket over the selected GPUs, plus a total row (bucket NULL): ratios of
-- summed hours, never averages of percentages. {usage} is gpu_usage_hours_1h or _1d,
-- chosen from a whitelist and quoted as an identifier by warehouse/reports.py.
-- Allocated hours without a utilization value are out of every utilization's numerator and
-- denominator (whole: gpu_hours - (alloc - util_known)); all unmeasured -> NULL, never 0 percent.
-- coverage_pct = metered / capacity over the rows whose coverage is known (written after
-- migration 013); capacity_gpu_hours = metered + unmetered.
-- Params: start, end (timestamptz), gpu, host, cluster (text or NULL = no filter).
SELECT bucket,
       count(DISTINCT gpu_uuid)                                          AS gpus,
       sum(gpu_hours)                                                    AS gpu_hours,
       100.0 * sum(simple_util_hours) / NULLIF(sum(simple_hours), 0)     AS simple_util_pct,
       100.0 * sum(busy_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0) AS weighted_util_pct,
       CASE WHEN sum(alloc_gpu_hours) > 0 AND sum(util_known_gpu_hours) <= 0 THEN NULL
            ELSE 100.0 * sum(busy_gpu_hours)
                 / NULLIF(sum(gpu_hours - alloc_gpu_hours + util_known_gpu_hours), 0)
       END                                                               AS whole_util_pct,
       100.0 * sum(alloc_gpu_hours) / NULLIF(sum(gpu_hours), 0)          AS allocation_pct,
       sum(capacity_gpu_hours)                                           AS capacity_gpu_hours,
       100.0 * sum(gpu_hours) FILTER (WHERE unmetered_gpu_hours IS NOT NULL)
             / NULLIF(sum(capacity_gpu_hours) FILTER (WHERE unmetered_gpu_hours IS NOT NULL), 0) AS coverage_pct
FROM {usage}
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(gpu)s::text IS NULL OR gpu_uuid = %(gpu)s::text)
  AND (%(host)s::text IS NULL OR host = %(host)s::text)
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
GROUP BY GROUPING SETS ((bucket), ())
ORDER BY bucket NULLS LAST
