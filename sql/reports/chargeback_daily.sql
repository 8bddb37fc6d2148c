-- Allocated GPU-hours per UTC day and namespace (incl. unassigned/unallocated): the
-- trend behind `migmeter report chargeback --plot`. No prices needed: the daily rows are
-- summed directly, each table on its own with the `bucket` filter inside the scan.
-- Params: start, end (timestamptz), cluster (text or NULL).
SELECT day, namespace, sum(alloc_gpu_hours) AS alloc_gpu_hours
FROM (
    SELECT day,
           CASE WHEN unassigned THEN '(unassigned)' ELSE namespace END AS namespace,
           alloc_gpu_hours
    FROM (SELECT day, namespace, namespace = '' AND pod = '' AS unassigned, sum(alloc_gpu_hours) AS alloc_gpu_hours
          FROM tenant_usage_hours_1d
          WHERE bucket >= %(start)s AND bucket < %(end)s
            AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
          GROUP BY day, namespace, unassigned) t
    UNION ALL
    SELECT (bucket AT TIME ZONE 'UTC')::date, '(unallocated)', sum(gpu_hours - alloc_gpu_hours)
    FROM gpu_usage_hours_1d
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
    GROUP BY 1
) u
GROUP BY day, namespace
ORDER BY day, namespace
