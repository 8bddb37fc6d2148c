-- 030: the per-instance daily lines behind the FOCUS export (`migmeter report focus`), for
-- the reader role. The chargeback views (011/012) stop at tenant grain; a FinOps tool wants
-- one charge per day, GPU instance and tenant, with the resource it was for.
--
-- focus_usage_daily  grain (bucket, gpu_uuid, gi_id, profile, line, namespace, pod):
--   bucket (UTC day start, filter on it: TimescaleDB skips chunks), day, cluster, gpu_uuid,
--   gpu_model, gi_id (-1 = a GPU without MIG; NULL on 'unallocated' rows), profile, slices,
--   total_slices (compute slices), line ('tenant' | 'unassigned' | 'unallocated', as in the
--   chargeback views of 011), namespace, pod ('(unassigned)' / '(unallocated)' as there),
--   container, alloc_gpu_hours (Σ w·dt / 3600; on 'unallocated' rows the GPU's hours not
--   allocated to any instance), used_gpu_hours (Σ w·u·dt / 3600), price_per_gpu_hour and
--   currency of that UTC day (NULL = no price), cost_alloc, cost_used.
-- Per day, cluster and line these rows add up to chargeback_pod_daily's: instance_usage_1d
-- holds the same samples as tenant_usage_1d, one level finer (the instance), so the export
-- bills exactly what the chargeback report bills (checked by tests/integration/test_focus.py).
CREATE VIEW focus_usage_daily AS
SELECT u.bucket,
       (u.bucket AT TIME ZONE 'UTC')::date                       AS day,
       u.cluster, u.gpu_uuid, u.gpu_model, u.gi_id, u.profile, u.slices, u.total_slices,
       u.line, u.namespace, u.pod, u.container,
       u.alloc_s / 3600.0                                        AS alloc_gpu_hours,
       u.busy_s / 3600.0                                         AS used_gpu_hours,
       p.price_per_gpu_hour,
       p.currency,
       (u.alloc_s / 3600.0)::numeric * p.price_per_gpu_hour      AS cost_alloc,
       (u.busy_s / 3600.0)::numeric * p.price_per_gpu_hour       AS cost_used
FROM (
    SELECT bucket, cluster, gpu_uuid, gpu_model, gi_id, profile, slices, total_slices,
           CASE WHEN namespace = '' AND pod = '' THEN 'unassigned' ELSE 'tenant' END    AS line,
           CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE namespace END AS namespace,
           CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE pod END       AS pod,
           container,
           alloc_gpu_seconds AS alloc_s,
           busy_gpu_seconds  AS busy_s
    FROM instance_usage_1d
    UNION ALL
    SELECT bucket, cluster, gpu_uuid, gpu_model, NULL::integer, NULL::text, NULL::smallint, total_slices,
           'unallocated', '(unallocated)', '(unallocated)', '',
           seconds - alloc_gpu_seconds, 0.0::double precision
    FROM gpu_usage_1d
) u
LEFT JOIN gpu_prices p
       ON p.gpu_model = u.gpu_model
      AND p.effective_from <= (u.bucket AT TIME ZONE 'UTC')::date
      AND (p.effective_to IS NULL OR (u.bucket AT TIME ZONE 'UTC')::date < p.effective_to);

GRANT SELECT ON focus_usage_daily TO migmeter_reader;
