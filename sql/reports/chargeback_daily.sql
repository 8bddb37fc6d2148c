-- Allocated GPU-hours per UTC day and namespace (incl. the unassigned, unallocated and
-- unmetered lines): the trend behind `migmeter report chargeback --plot`. No prices needed;
-- the lines come from chargeback_lines_daily (sql/014), as in the chargeback report.
-- Params: start, end (timestamptz), cluster (text or NULL).
SELECT day, namespace, sum(alloc_gpu_hours) AS alloc_gpu_hours
FROM chargeback_lines_daily
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
GROUP BY day, namespace
ORDER BY day, namespace
