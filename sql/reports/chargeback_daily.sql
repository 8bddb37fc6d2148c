-- Allocated GPU-hours per UTC day and namespace (incl. unassigned/unallocated): the
-- trend behind `migmeter report chargeback --plot`.
-- Params: start, end (timestamptz), cluster (text or NULL).
SELECT day, namespace, sum(alloc_gpu_hours) AS alloc_gpu_hours
FROM chargeback_pod_daily
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
GROUP BY day, namespace
ORDER BY day, namespace
