-- The per-instance daily lines of a bucket range (a UTC month) for the FOCUS export, from
-- the reader view focus_usage_daily (sql/030_focus_views.sql): one row per day, GPU instance,
-- profile and tenant, plus each GPU's unallocated hours per day. warehouse/focus.py turns them
-- into FOCUS columns and checks them against the chargeback report's lines.
-- Params: start, end (timestamptz, [start, end)), cluster (text or NULL = all clusters).
SELECT bucket, cluster, gpu_uuid, gpu_model, gi_id, profile, slices, total_slices,
       line, namespace, pod, container, alloc_gpu_hours, used_gpu_hours,
       price_per_gpu_hour, currency
FROM focus_usage_daily
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
ORDER BY bucket, cluster, gpu_uuid, line, gi_id NULLS LAST, profile, namespace, pod
