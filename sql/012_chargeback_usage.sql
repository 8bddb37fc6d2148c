-- 012: aggregate first, price after (issue #7: the monthly chargeback of a 1,000-GPU fleet in
-- <= 1 s). The chargeback views of 011 group EVERY daily tenant row at pod grain (bucket,
-- cluster, gpu_model, line, namespace, pod) and join a price to each of those ~300k groups a
-- month; the namespace and monthly views then group that result again, so a report by
-- namespace paid for a report by pod before summing its few dozen lines.
--
-- tenant_usage_hours_1d  grain (bucket, gpu_uuid, namespace, pod): tenant_usage_1d in hours,
--   as stored, NOT summed and NOT priced, beside gpu_usage_hours_1d (011, whose
--   gpu_hours - alloc_gpu_hours is the unallocated line). Reports group these rows directly at
--   the key they need per (day, GPU model), join the price of each day to that small set,
--   then sum (sql/reports/chargeback.sql).
--   bucket, day, cluster, gpu_uuid, gpu_model, namespace, pod (AS STORED: namespace = pod = ''
--   is an instance nobody was assigned to, the chargeback's '(unassigned)' line),
--   alloc_gpu_hours (Σ w·dt), util_known_gpu_hours (allocated hours with a utilization
--   reading), busy_gpu_hours (Σ w·u·dt: the chargeback's used_gpu_hours).
--   Why raw keys and no `line` column: the planner estimates the groups of a GROUP BY on plain
--   columns from their statistics, but a CASE over namespace and pod as ~one group per row,
--   and then sorts ~300k rows (on disk at the default work_mem) instead of hashing a few
--   hundred groups. Queries therefore group the unassigned rows in an arm of their own.
--   One table per view on purpose, too: TimescaleDB estimates a hypertable inside a UNION ALL
--   at ~1 row, with the same effect. A filter on `bucket` reaches the scan, so TimescaleDB
--   skips chunks outside the period.
CREATE VIEW tenant_usage_hours_1d AS
SELECT bucket,
       (bucket AT TIME ZONE 'UTC')::date   AS day,
       cluster, gpu_uuid, gpu_model, namespace, pod,
       alloc_gpu_seconds / 3600.0          AS alloc_gpu_hours,
       util_alloc_gpu_seconds / 3600.0     AS util_known_gpu_hours,
       busy_gpu_seconds / 3600.0           AS busy_gpu_hours
FROM tenant_usage_1d;

-- The namespace views of 011, same columns, types and lines, computed the cheap way: the
-- daily rows summed per (day, cluster, GPU model, line, namespace) (a few rows per namespace
-- a day, not one per pod), each day priced, then summed per currency. Only the order of
-- float additions differs from 011 (~1e-12 relative).
CREATE OR REPLACE VIEW chargeback_namespace_daily AS
SELECT u.bucket, u.day, u.cluster, u.line, u.namespace, p.currency,
       sum(u.alloc_h)                                          AS alloc_gpu_hours,
       sum(u.used_h)                                           AS used_gpu_hours,
       sum(u.util_h)                                           AS util_known_gpu_hours,
       100.0 * sum(u.used_h) / NULLIF(sum(u.util_h), 0)        AS alloc_util_pct,
       sum(u.alloc_h::numeric * p.price_per_gpu_hour)          AS cost_alloc,
       sum(u.used_h::numeric * p.price_per_gpu_hour)           AS cost_used
FROM (
    SELECT bucket, day, cluster, gpu_model, 'tenant' AS line, namespace,
           sum(alloc_gpu_hours) AS alloc_h, sum(busy_gpu_hours) AS used_h, sum(util_known_gpu_hours) AS util_h
    FROM tenant_usage_hours_1d
    WHERE NOT (namespace = '' AND pod = '')
    GROUP BY bucket, day, cluster, gpu_model, namespace
    UNION ALL
    SELECT bucket, day, cluster, gpu_model, 'unassigned', '(unassigned)',
           sum(alloc_gpu_hours), sum(busy_gpu_hours), sum(util_known_gpu_hours)
    FROM tenant_usage_hours_1d
    WHERE namespace = '' AND pod = ''
    GROUP BY bucket, day, cluster, gpu_model
    UNION ALL
    SELECT bucket, (bucket AT TIME ZONE 'UTC')::date, cluster, gpu_model, 'unallocated', '(unallocated)',
           sum(seconds - alloc_gpu_seconds) / 3600.0, 0.0::double precision, 0.0::double precision
    FROM gpu_usage_1d
    GROUP BY bucket, cluster, gpu_model
) u
LEFT JOIN gpu_prices p
       ON p.gpu_model = u.gpu_model
      AND p.effective_from <= u.day
      AND (p.effective_to IS NULL OR u.day < p.effective_to)
GROUP BY u.bucket, u.day, u.cluster, u.line, u.namespace, p.currency;

CREATE OR REPLACE VIEW chargeback_namespace_monthly AS
SELECT date_trunc('month', day)::date AS month, cluster, line, namespace, currency,
       sum(alloc_gpu_hours)                                                AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                 AS used_gpu_hours,
       sum(util_known_gpu_hours)                                           AS util_known_gpu_hours,
       100.0 * sum(used_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0)  AS alloc_util_pct,
       sum(cost_alloc)                                                     AS cost_alloc,
       sum(cost_used)                                                      AS cost_used
FROM chargeback_namespace_daily
GROUP BY 1, cluster, line, namespace, currency;

-- The reconciliation needs no prices and no pods: each table summed per (day, cluster) on its
-- own, then side by side. A day appears when its GPUs reported (as in 011).
CREATE OR REPLACE VIEW chargeback_reconciliation_daily AS
SELECT bucket, day, cluster,
       sum(tenant_h)                                                                AS tenant_gpu_hours,
       sum(unassigned_h)                                                            AS unassigned_gpu_hours,
       sum(unallocated_h)                                                           AS unallocated_gpu_hours,
       max(physical_h)                                                              AS physical_gpu_hours,
       coalesce(sum(tenant_h), 0) + coalesce(sum(unassigned_h), 0) + coalesce(sum(unallocated_h), 0)
           - coalesce(max(physical_h), 0)                                           AS difference_gpu_hours
FROM (
    SELECT bucket, day, cluster,
           sum(alloc_gpu_hours) FILTER (WHERE NOT (namespace = '' AND pod = '')) AS tenant_h,
           sum(alloc_gpu_hours) FILTER (WHERE namespace = '' AND pod = '')       AS unassigned_h,
           NULL::double precision AS unallocated_h,
           NULL::double precision AS physical_h
    FROM tenant_usage_hours_1d
    GROUP BY bucket, day, cluster
    UNION ALL
    SELECT bucket, (bucket AT TIME ZONE 'UTC')::date, cluster, NULL, NULL,
           sum(seconds - alloc_gpu_seconds) / 3600.0, sum(seconds) / 3600.0
    FROM gpu_usage_1d
    GROUP BY bucket, cluster
) u
GROUP BY bucket, day, cluster
HAVING count(physical_h) > 0;

GRANT SELECT ON tenant_usage_hours_1d TO migmeter_reader;
