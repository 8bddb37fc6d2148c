-- tenants + unassigned + unallocated + unmetered vs. the fleet's capacity over a bucket range.
-- Params: start, end (timestamptz), cluster (text or NULL).
SELECT coalesce(sum(tenant_gpu_hours), 0)      AS tenant_gpu_hours,
       coalesce(sum(unassigned_gpu_hours), 0)  AS unassigned_gpu_hours,
       coalesce(sum(unallocated_gpu_hours), 0) AS unallocated_gpu_hours,
       coalesce(sum(physical_gpu_hours), 0)    AS physical_gpu_hours,
       coalesce(sum(unmetered_gpu_hours), 0)   AS unmetered_gpu_hours
FROM chargeback_reconciliation_daily
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
