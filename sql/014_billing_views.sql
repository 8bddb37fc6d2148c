-- 014: the v2 time model in the views (DESIGN.md "Time model"): unmetered time, capacity,
-- coverage, and unknown utilization kept unknown. Only columns appended and expressions
-- replaced (CREATE OR REPLACE keeps every existing column, name and type).
--
-- Capacity: a GPU exists from its first covered second to its last snapshot's ts; inside
--   that, time no snapshot covers is unmetered. capacity_gpu_hours = gpu_hours (metered) +
--   unmetered_gpu_hours; coverage_pct = metered / capacity. Rows written before migration 013
--   have unmetered NULL: coverage unknown there (NULL), capacity = metered.
-- Unknown utilization: allocated time without a utilization value (NVML on A100/A30 MIG, a
--   first GPM round) is out of the numerator AND the denominator of every utilization:
--   whole_util_pct = busy / (gpu seconds - allocated seconds of unknown utilization), NULL
--   when there was allocated time and none of it was measured (unknown, never 0 %).
--   unmeasured_gpu_hours = allocated GPU-hours without a utilization value.
-- Chargeback lines come from ONE view, chargeback_lines_daily: 'tenant', 'unassigned',
--   'unallocated' and 'unmetered' (namespace = pod = '(unmetered)': the GPUs' unmetered
--   hours, priced like any other GPU-hour of that model and day). Every chargeback view and
--   report reads it, so a line added there reaches all of them. Reconciliation:
--   tenants + unassigned + unallocated + unmetered = capacity (physical_gpu_hours).

DO $$
DECLARE
    grain text;
BEGIN
    FOREACH grain IN ARRAY ARRAY['1m', '1h', '1d'] LOOP
        EXECUTE format($sql$
CREATE OR REPLACE VIEW gpu_utilization_%1$s AS
SELECT bucket, cluster, host, gpu_uuid, gpu_model, total_slices,
       seconds / 3600.0                                          AS gpu_hours,
       alloc_gpu_seconds / 3600.0                                AS alloc_gpu_hours,
       busy_gpu_seconds / 3600.0                                 AS busy_gpu_hours,
       (seconds - alloc_gpu_seconds) / 3600.0                    AS unallocated_gpu_hours,
       100.0 * busy_gpu_seconds / NULLIF(util_alloc_gpu_seconds, 0) AS weighted_util_pct,
       CASE WHEN alloc_gpu_seconds > 0 AND util_alloc_gpu_seconds <= 0 THEN NULL
            ELSE 100.0 * busy_gpu_seconds / NULLIF(seconds - alloc_gpu_seconds + util_alloc_gpu_seconds, 0)
       END                                                       AS whole_util_pct,
       100.0 * simple_util_seconds / NULLIF(simple_seconds, 0)   AS simple_util_pct,
       100.0 * alloc_gpu_seconds / NULLIF(seconds, 0)            AS allocation_pct,
       100.0 * alloc_min                                         AS allocation_min_pct,
       100.0 * alloc_max                                         AS allocation_max_pct,
       100.0 * whole_util_min                                    AS whole_util_min_pct,
       100.0 * whole_util_max                                    AS whole_util_max_pct,
       snapshots, instance_samples,
       unmetered_seconds / 3600.0                                AS unmetered_gpu_hours,
       (seconds + coalesce(unmetered_seconds, 0)) / 3600.0       AS capacity_gpu_hours,
       100.0 * seconds / NULLIF(seconds + unmetered_seconds, 0)  AS coverage_pct,
       (alloc_gpu_seconds - util_alloc_gpu_seconds) / 3600.0     AS unmeasured_gpu_hours
FROM gpu_usage_%1$s
$sql$, grain);
    END LOOP;
    FOREACH grain IN ARRAY ARRAY['1h', '1d'] LOOP
        EXECUTE format($sql$
CREATE OR REPLACE VIEW gpu_usage_hours_%1$s AS
SELECT bucket, cluster, host, gpu_uuid, gpu_model, total_slices,
       seconds / 3600.0                 AS gpu_hours,
       alloc_gpu_seconds / 3600.0       AS alloc_gpu_hours,
       util_alloc_gpu_seconds / 3600.0  AS util_known_gpu_hours,
       busy_gpu_seconds / 3600.0        AS busy_gpu_hours,
       simple_util_seconds / 3600.0     AS simple_util_hours,
       simple_seconds / 3600.0          AS simple_hours,
       snapshots,
       unmetered_seconds / 3600.0       AS unmetered_gpu_hours,
       (seconds + coalesce(unmetered_seconds, 0)) / 3600.0 AS capacity_gpu_hours
FROM gpu_usage_%1$s
$sql$, grain);
    END LOOP;
END
$$;

-- chargeback_lines_daily  grain (bucket, cluster, gpu_model, line, namespace, pod), unpriced:
--   bucket, day, cluster, gpu_model, line, namespace, pod, alloc_gpu_hours, used_gpu_hours,
--   util_known_gpu_hours, unmeasured_gpu_hours (= alloc - util_known on instance lines, 0 on
--   the unallocated and unmetered lines, whose use is not an instance's).
--   Each arm groups plain columns of one table (sql/012 says why); a `bucket` filter on the
--   view reaches every arm's scan.
CREATE VIEW chargeback_lines_daily AS
SELECT bucket, (bucket AT TIME ZONE 'UTC')::date AS day, cluster, gpu_model, line, namespace, pod,
       alloc_gpu_hours, used_gpu_hours, util_known_gpu_hours, unmeasured_gpu_hours
FROM (
    SELECT bucket, cluster, gpu_model, 'tenant' AS line, namespace, pod,
           sum(alloc_gpu_seconds) / 3600.0 AS alloc_gpu_hours, sum(busy_gpu_seconds) / 3600.0 AS used_gpu_hours,
           sum(util_alloc_gpu_seconds) / 3600.0 AS util_known_gpu_hours,
           sum(alloc_gpu_seconds - util_alloc_gpu_seconds) / 3600.0 AS unmeasured_gpu_hours
    FROM tenant_usage_1d
    WHERE NOT (namespace = '' AND pod = '')
    GROUP BY bucket, cluster, gpu_model, namespace, pod
    UNION ALL
    SELECT bucket, cluster, gpu_model, 'unassigned', '(unassigned)', '(unassigned)',
           sum(alloc_gpu_seconds) / 3600.0, sum(busy_gpu_seconds) / 3600.0, sum(util_alloc_gpu_seconds) / 3600.0,
           sum(alloc_gpu_seconds - util_alloc_gpu_seconds) / 3600.0
    FROM tenant_usage_1d
    WHERE namespace = '' AND pod = ''
    GROUP BY bucket, cluster, gpu_model
    UNION ALL
    SELECT bucket, cluster, gpu_model, 'unallocated', '(unallocated)', '(unallocated)',
           sum(seconds - alloc_gpu_seconds) / 3600.0, 0.0::double precision, 0.0::double precision,
           0.0::double precision
    FROM gpu_usage_1d
    WHERE seconds <> 0  -- a day inside an outage has only unmetered time
    GROUP BY bucket, cluster, gpu_model
    UNION ALL
    SELECT bucket, cluster, gpu_model, 'unmetered', '(unmetered)', '(unmetered)',
           sum(unmetered_seconds) / 3600.0, 0.0::double precision, 0.0::double precision, 0.0::double precision
    FROM gpu_usage_1d
    WHERE unmetered_seconds <> 0
    GROUP BY bucket, cluster, gpu_model
) u;

-- The chargeback views of 011/012 on top of the lines (same columns; unmeasured_gpu_hours appended).
CREATE OR REPLACE VIEW chargeback_pod_daily AS
SELECT u.bucket, u.day, u.cluster, u.gpu_model, u.line, u.namespace, u.pod,
       u.alloc_gpu_hours, u.used_gpu_hours, u.util_known_gpu_hours,
       100.0 * u.used_gpu_hours / NULLIF(u.util_known_gpu_hours, 0)     AS alloc_util_pct,
       p.price_per_gpu_hour,
       p.currency,
       u.alloc_gpu_hours::numeric * p.price_per_gpu_hour               AS cost_alloc,
       u.used_gpu_hours::numeric * p.price_per_gpu_hour                AS cost_used,
       u.unmeasured_gpu_hours
FROM chargeback_lines_daily u
LEFT JOIN gpu_prices p
       ON p.gpu_model = u.gpu_model
      AND p.effective_from <= u.day
      AND (p.effective_to IS NULL OR u.day < p.effective_to);

CREATE OR REPLACE VIEW chargeback_namespace_daily AS
SELECT u.bucket, u.day, u.cluster, u.line, u.namespace, p.currency,
       sum(u.alloc_gpu_hours)                                                  AS alloc_gpu_hours,
       sum(u.used_gpu_hours)                                                   AS used_gpu_hours,
       sum(u.util_known_gpu_hours)                                             AS util_known_gpu_hours,
       100.0 * sum(u.used_gpu_hours) / NULLIF(sum(u.util_known_gpu_hours), 0)  AS alloc_util_pct,
       sum(u.alloc_gpu_hours::numeric * p.price_per_gpu_hour)                  AS cost_alloc,
       sum(u.used_gpu_hours::numeric * p.price_per_gpu_hour)                   AS cost_used,
       sum(u.unmeasured_gpu_hours)                                             AS unmeasured_gpu_hours
FROM chargeback_lines_daily u
LEFT JOIN gpu_prices p
       ON p.gpu_model = u.gpu_model
      AND p.effective_from <= u.day
      AND (p.effective_to IS NULL OR u.day < p.effective_to)
GROUP BY u.bucket, u.day, u.cluster, u.line, u.namespace, p.currency;

CREATE OR REPLACE VIEW chargeback_pod_monthly AS
SELECT date_trunc('month', day)::date AS month, cluster, line, namespace, pod, currency,
       sum(alloc_gpu_hours)                                                AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                 AS used_gpu_hours,
       sum(util_known_gpu_hours)                                           AS util_known_gpu_hours,
       100.0 * sum(used_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0)  AS alloc_util_pct,
       sum(cost_alloc)                                                     AS cost_alloc,
       sum(cost_used)                                                      AS cost_used,
       sum(unmeasured_gpu_hours)                                           AS unmeasured_gpu_hours
FROM chargeback_pod_daily
GROUP BY 1, cluster, line, namespace, pod, currency;

CREATE OR REPLACE VIEW chargeback_namespace_monthly AS
SELECT date_trunc('month', day)::date AS month, cluster, line, namespace, currency,
       sum(alloc_gpu_hours)                                                AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                 AS used_gpu_hours,
       sum(util_known_gpu_hours)                                           AS util_known_gpu_hours,
       100.0 * sum(used_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0)  AS alloc_util_pct,
       sum(cost_alloc)                                                     AS cost_alloc,
       sum(cost_used)                                                      AS cost_used,
       sum(unmeasured_gpu_hours)                                           AS unmeasured_gpu_hours
FROM chargeback_namespace_daily
GROUP BY 1, cluster, line, namespace, currency;

-- Reconciliation: tenants + unassigned + unallocated + unmetered = physical_gpu_hours, which
-- is now the fleet's capacity (metered + unmetered GPU-hours); metered_gpu_hours appended.
CREATE OR REPLACE VIEW chargeback_reconciliation_daily AS
SELECT bucket, day, cluster,
       sum(alloc_gpu_hours) FILTER (WHERE line = 'tenant')       AS tenant_gpu_hours,
       sum(alloc_gpu_hours) FILTER (WHERE line = 'unassigned')   AS unassigned_gpu_hours,
       sum(alloc_gpu_hours) FILTER (WHERE line = 'unallocated')  AS unallocated_gpu_hours,
       max(capacity_h)                                           AS physical_gpu_hours,
       coalesce(sum(alloc_gpu_hours), 0) - coalesce(max(capacity_h), 0) AS difference_gpu_hours,
       coalesce(sum(alloc_gpu_hours) FILTER (WHERE line = 'unmetered'), 0) AS unmetered_gpu_hours,
       max(metered_h)                                            AS metered_gpu_hours
FROM (
    SELECT bucket, day, cluster, line, alloc_gpu_hours, NULL::double precision AS capacity_h,
           NULL::double precision AS metered_h
    FROM chargeback_lines_daily
    UNION ALL
    SELECT bucket, (bucket AT TIME ZONE 'UTC')::date, cluster, NULL, NULL,
           sum(seconds + coalesce(unmetered_seconds, 0)) / 3600.0, sum(seconds) / 3600.0
    FROM gpu_usage_1d
    GROUP BY bucket, cluster
) u
GROUP BY bucket, day, cluster
HAVING count(capacity_h) > 0;

CREATE OR REPLACE VIEW chargeback_reconciliation_monthly AS
SELECT date_trunc('month', day)::date AS month, cluster,
       sum(tenant_gpu_hours)      AS tenant_gpu_hours,
       sum(unassigned_gpu_hours)  AS unassigned_gpu_hours,
       sum(unallocated_gpu_hours) AS unallocated_gpu_hours,
       sum(physical_gpu_hours)    AS physical_gpu_hours,
       sum(difference_gpu_hours)  AS difference_gpu_hours,
       sum(unmetered_gpu_hours)   AS unmetered_gpu_hours,
       sum(metered_gpu_hours)     AS metered_gpu_hours
FROM chargeback_reconciliation_daily
GROUP BY 1, cluster;

GRANT SELECT ON chargeback_lines_daily TO migmeter_reader;
