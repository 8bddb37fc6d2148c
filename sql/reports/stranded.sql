-- Unallocated slice-hours per GPU and hour over a bucket range, with the GPU instances present
-- in that hour (their profiles, compute slices and placement starts from layout_history, NULL
-- where unknown, largest first) and the day's GPU-hour price:
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
    SELECT u.bucket, u.gpu_uuid,
           array_agg(u.profile ORDER BY u.slices DESC, u.gi_id) AS profiles,
           array_agg(u.slices ORDER BY u.slices DESC, u.gi_id)  AS slices,
           array_agg(pl.start ORDER BY u.slices DESC, u.gi_id)  AS starts
    FROM instance_utilization_1h u
    -- Where the instance sat during the hour: its layout intervals touching the hour (a snapshot
    -- at the hour's end still stands for it) must all report one placement_start, else NULL.
    LEFT JOIN LATERAL (
        SELECT CASE WHEN count(*) > 0 AND count(*) = count(h.placement_start)
                     AND min(h.placement_start) = max(h.placement_start)
                    THEN min(h.placement_start) END AS start
        FROM layout_history h
        WHERE h.gpu_uuid = u.gpu_uuid AND h.gi_id = u.gi_id
          AND h.valid_from <= u.bucket + interval '1 hour'
          AND (h.valid_to IS NULL OR h.valid_to > u.bucket)
    ) pl ON true
    WHERE u.bucket >= %(start)s AND u.bucket < %(end)s
      AND (%(cluster)s::text IS NULL OR u.cluster = %(cluster)s::text)
      AND u.gi_id >= 0
    GROUP BY u.bucket, u.gpu_uuid
)
SELECT f.bucket, f.cluster, f.gpu_uuid, f.gpu_model, f.total_slices, f.unallocated_slice_hours,
       coalesce(l.profiles, ARRAY[]::text[]) AS profiles, coalesce(l.slices, ARRAY[]::smallint[]) AS slices,
       coalesce(l.starts, ARRAY[]::smallint[]) AS starts,
       p.price_per_gpu_hour, p.currency
FROM free f
LEFT JOIN layout l USING (bucket, gpu_uuid)
LEFT JOIN gpu_prices p
       ON p.gpu_model = f.gpu_model
      AND p.effective_from <= (f.bucket AT TIME ZONE 'UTC')::date
      AND (p.effective_to IS NULL OR (f.bucket AT TIME ZONE 'UTC')::date < p.effective_to)
ORDER BY f.cluster, f.gpu_model, f.gpu_uuid, f.bucket
