-- Unallocated slice-hours per GPU and hour over a bucket range, with the GPU instances present
-- in that hour (their profiles and compute slices, largest first) and the day's GPU-hour price:
-- the input of the stranded-capacity split (warehouse/stranded.py). Reader views only
-- (gpu_usage_hours_1h and instance_utilization_1h of 007/011, gpu_prices of 010), each
-- filtered on `bucket` so TimescaleDB skips other chunks. GPUs without MIG (gi_id -1) have no
-- unallocated slices and are left out by the first filter.
-- Params: start, end (timestamptz), cluster (text or NULL).
WITH free AS (
    SELECT bucket, cluster, gpu_uuid, gpu_model, total_slices,
           (gpu_hours - alloc_gpu_hours) * total_slices AS unallocated_slice_hours
    FROM gpu_usage_hours_1h
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
      AND gpu_hours - alloc_gpu_hours > 1e-9
), layout AS (
    SELECT bucket, gpu_uuid,
           array_agg(profile ORDER BY slices DESC, gi_id) AS profiles,
           array_agg(slices ORDER BY slices DESC, gi_id)  AS slices
    FROM instance_utilization_1h
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
      AND gi_id >= 0
    GROUP BY bucket, gpu_uuid
)
SELECT f.bucket, f.cluster, f.gpu_uuid, f.gpu_model, f.total_slices, f.unallocated_slice_hours,
       coalesce(l.profiles, ARRAY[]::text[]) AS profiles, coalesce(l.slices, ARRAY[]::smallint[]) AS slices,
       p.price_per_gpu_hour, p.currency
FROM free f
LEFT JOIN layout l USING (bucket, gpu_uuid)
LEFT JOIN gpu_prices p
       ON p.gpu_model = f.gpu_model
      AND p.effective_from <= (f.bucket AT TIME ZONE 'UTC')::date
      AND (p.effective_to IS NULL OR (f.bucket AT TIME ZONE 'UTC')::date < p.effective_to)
ORDER BY f.cluster, f.gpu_model, f.gpu_uuid, f.bucket
