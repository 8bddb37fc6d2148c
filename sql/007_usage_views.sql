-- 007: ratio views over the usage tables, one per grain, for BI and reports.
-- Percentages are 0..100 (double precision, unrounded); NULL where the denominator is 0.
-- Hours = seconds / 3600. namespace/pod '' (unassigned) are shown as '(unassigned)'.
--
-- gpu_utilization_{1m,1h,1d}   grain (bucket, gpu_uuid):
--   gpu_hours (physical capacity), alloc_gpu_hours, busy_gpu_hours, unallocated_gpu_hours,
--   weighted_util_pct  = busy / allocated-with-known-util  (utilization of allocated capacity)
--   whole_util_pct     = busy / gpu seconds                (unallocated slices count as idle)
--   simple_util_pct    = naive mean of instance utilizations (misleading; for comparison)
--   allocation_pct     = allocated / gpu seconds
-- instance_utilization_{1m,1h,1d}  grain (bucket, gpu_uuid, gi_id, profile, namespace, pod):
--   hours, alloc_gpu_hours, busy_gpu_hours, util_pct (the instance's own utilization),
--   util_min_pct, util_max_pct, fb_used_max_mib.
-- tenant_gpu_hours_{1m,1h,1d}  grain (bucket, cluster, gpu_model, namespace, pod), summed over GPUs:
--   alloc_gpu_hours (what chargeback bills), busy_gpu_hours, weighted_util_pct, samples.

-- The three grains share one definition, instantiated per grain so they cannot drift apart.
DO $$
DECLARE
    grain text;
BEGIN
    FOREACH grain IN ARRAY ARRAY['1m', '1h', '1d'] LOOP
        EXECUTE format($sql$
CREATE VIEW gpu_utilization_%1$s AS
SELECT bucket, cluster, host, gpu_uuid, gpu_model, total_slices,
       seconds / 3600.0                                          AS gpu_hours,
       alloc_gpu_seconds / 3600.0                                AS alloc_gpu_hours,
       busy_gpu_seconds / 3600.0                                 AS busy_gpu_hours,
       (seconds - alloc_gpu_seconds) / 3600.0                    AS unallocated_gpu_hours,
       100.0 * busy_gpu_seconds / NULLIF(util_alloc_gpu_seconds, 0) AS weighted_util_pct,
       100.0 * busy_gpu_seconds / NULLIF(seconds, 0)             AS whole_util_pct,
       100.0 * simple_util_seconds / NULLIF(simple_seconds, 0)   AS simple_util_pct,
       100.0 * alloc_gpu_seconds / NULLIF(seconds, 0)            AS allocation_pct,
       100.0 * alloc_min                                         AS allocation_min_pct,
       100.0 * alloc_max                                         AS allocation_max_pct,
       100.0 * whole_util_min                                    AS whole_util_min_pct,
       100.0 * whole_util_max                                    AS whole_util_max_pct,
       snapshots, instance_samples
FROM gpu_usage_%1$s
$sql$, grain);
        EXECUTE format($sql$
CREATE VIEW instance_utilization_%1$s AS
SELECT bucket, cluster, gpu_uuid, gpu_model, gi_id, profile, slices, total_slices,
       CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE namespace END AS namespace,
       CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE pod END       AS pod,
       container,
       seconds / 3600.0                                AS hours,
       alloc_gpu_seconds / 3600.0                      AS alloc_gpu_hours,
       busy_gpu_seconds / 3600.0                       AS busy_gpu_hours,
       100.0 * busy_seconds / NULLIF(util_seconds, 0)  AS util_pct,
       100.0 * util_min                                AS util_min_pct,
       100.0 * util_max                                AS util_max_pct,
       fb_used_max_mib, samples
FROM instance_usage_%1$s
$sql$, grain);
        EXECUTE format($sql$
CREATE VIEW tenant_gpu_hours_%1$s AS
SELECT bucket, cluster, gpu_model,
       CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE namespace END AS namespace,
       CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE pod END       AS pod,
       sum(alloc_gpu_seconds) / 3600.0                                            AS alloc_gpu_hours,
       sum(busy_gpu_seconds) / 3600.0                                             AS busy_gpu_hours,
       100.0 * sum(busy_gpu_seconds) / NULLIF(sum(util_alloc_gpu_seconds), 0)     AS weighted_util_pct,
       sum(samples)                                                               AS samples
FROM tenant_usage_%1$s
GROUP BY bucket, cluster, gpu_model, namespace, pod
$sql$, grain);
        EXECUTE format('GRANT SELECT ON gpu_utilization_%1$s, instance_utilization_%1$s, tenant_gpu_hours_%1$s TO migmeter_reader', grain);
    END LOOP;
END
$$;
