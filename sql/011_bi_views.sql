-- 011: views for BI tools and `migmeter report`: chargeback, additive usage hours, layout
-- history (as-of), idle capacity. The reader role (migmeter_reader) gets SELECT on these
-- views (and EXECUTE on layout_at) and nothing else: a view runs with its owner's rights,
-- so BI logins never need the raw tables, sink_offsets or gpu_state.
--
-- Conventions: times are UTC; `bucket` is the start of the UTC day (or hour) as timestamptz,
-- and filtering on `bucket` lets TimescaleDB skip chunks, so reports filter on it; `day` /
-- `month` are the same instant as a date. Hours = seconds / 3600. Percentages are 0..100,
-- NULL where the denominator is 0. Money is numeric, in `currency`; NULL = no price set
-- for that GPU model on that day (`migmeter price set`).
--
-- Chargeback lines (`line`): 'tenant' (namespace/pod as reported), 'unassigned' (instances
-- nobody was assigned to; namespace = pod = '(unassigned)') and 'unallocated' (slices with
-- no instance at all; namespace = pod = '(unallocated)'). The three add up to the fleet's
-- physical GPU-hours: chargeback_reconciliation_* shows the sum and the difference.
-- Prices apply per UTC day (daily grain), so a price change in mid-month splits the month.

-- chargeback_pod_daily   grain (bucket, cluster, gpu_model, line, namespace, pod):
--   bucket, day, cluster, gpu_model, line, namespace, pod,
--   alloc_gpu_hours   allocated GPU-hours  Σ w·dt / 3600 (what is billed "by allocation"),
--   used_gpu_hours    used GPU-hours       Σ w·u·dt / 3600 (billed "by use"),
--   util_known_gpu_hours  allocated GPU-hours during which utilization was reported,
--   alloc_util_pct    used / util-known allocated (utilization of what was allocated),
--   price_per_gpu_hour, currency, cost_alloc = alloc_gpu_hours × price, cost_used = used × price.
CREATE VIEW chargeback_pod_daily AS
SELECT u.bucket,
       (u.bucket AT TIME ZONE 'UTC')::date                              AS day,
       u.cluster, u.gpu_model, u.line, u.namespace, u.pod,
       u.alloc_s / 3600.0                                               AS alloc_gpu_hours,
       u.busy_s / 3600.0                                                AS used_gpu_hours,
       u.util_alloc_s / 3600.0                                          AS util_known_gpu_hours,
       100.0 * u.busy_s / NULLIF(u.util_alloc_s, 0)                     AS alloc_util_pct,
       p.price_per_gpu_hour,
       p.currency,
       (u.alloc_s / 3600.0)::numeric * p.price_per_gpu_hour             AS cost_alloc,
       (u.busy_s / 3600.0)::numeric * p.price_per_gpu_hour              AS cost_used
FROM (
    SELECT bucket, cluster, gpu_model,
           CASE WHEN namespace = '' AND pod = '' THEN 'unassigned' ELSE 'tenant' END    AS line,
           CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE namespace END AS namespace,
           CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE pod END       AS pod,
           sum(alloc_gpu_seconds)      AS alloc_s,
           sum(util_alloc_gpu_seconds) AS util_alloc_s,
           sum(busy_gpu_seconds)       AS busy_s
    FROM tenant_usage_1d
    GROUP BY bucket, cluster, gpu_model, tenant_usage_1d.namespace, tenant_usage_1d.pod
    UNION ALL
    SELECT bucket, cluster, gpu_model, 'unallocated', '(unallocated)', '(unallocated)',
           sum(seconds - alloc_gpu_seconds), 0.0, 0.0
    FROM gpu_usage_1d
    GROUP BY bucket, cluster, gpu_model
) u
LEFT JOIN gpu_prices p
       ON p.gpu_model = u.gpu_model
      AND p.effective_from <= (u.bucket AT TIME ZONE 'UTC')::date
      AND (p.effective_to IS NULL OR (u.bucket AT TIME ZONE 'UTC')::date < p.effective_to);

-- chargeback_namespace_daily  grain (bucket, cluster, line, namespace, currency): the pod
--   lines summed over pods and GPU models (a currency of NULL holds the unpriced hours).
CREATE VIEW chargeback_namespace_daily AS
SELECT bucket, day, cluster, line, namespace, currency,
       sum(alloc_gpu_hours)                                                AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                 AS used_gpu_hours,
       sum(util_known_gpu_hours)                                           AS util_known_gpu_hours,
       100.0 * sum(used_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0)  AS alloc_util_pct,
       sum(cost_alloc)                                                     AS cost_alloc,
       sum(cost_used)                                                      AS cost_used
FROM chargeback_pod_daily
GROUP BY bucket, day, cluster, line, namespace, currency;

-- chargeback_pod_monthly / chargeback_namespace_monthly  grain (month, cluster, line,
--   namespace[, pod], currency): the daily lines summed over the UTC calendar month
--   (each day at its own price). For BI; `migmeter report chargeback` sums the daily view
--   over the month's bucket range instead, which lets TimescaleDB skip other chunks.
CREATE VIEW chargeback_pod_monthly AS
SELECT date_trunc('month', day)::date AS month, cluster, line, namespace, pod, currency,
       sum(alloc_gpu_hours)                                                AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                 AS used_gpu_hours,
       sum(util_known_gpu_hours)                                           AS util_known_gpu_hours,
       100.0 * sum(used_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0)  AS alloc_util_pct,
       sum(cost_alloc)                                                     AS cost_alloc,
       sum(cost_used)                                                      AS cost_used
FROM chargeback_pod_daily
GROUP BY 1, cluster, line, namespace, pod, currency;

CREATE VIEW chargeback_namespace_monthly AS
SELECT month, cluster, line, namespace, currency,
       sum(alloc_gpu_hours)                                                AS alloc_gpu_hours,
       sum(used_gpu_hours)                                                 AS used_gpu_hours,
       sum(util_known_gpu_hours)                                           AS util_known_gpu_hours,
       100.0 * sum(used_gpu_hours) / NULLIF(sum(util_known_gpu_hours), 0)  AS alloc_util_pct,
       sum(cost_alloc)                                                     AS cost_alloc,
       sum(cost_used)                                                      AS cost_used
FROM chargeback_pod_monthly
GROUP BY month, cluster, line, namespace, currency;

-- chargeback_reconciliation_daily / _monthly  grain (bucket|month, cluster):
--   tenant_gpu_hours + unassigned_gpu_hours + unallocated_gpu_hours = physical_gpu_hours
--   (Σ seconds of every GPU); difference_gpu_hours is their difference (float rounding only).
CREATE VIEW chargeback_reconciliation_daily AS
SELECT c.bucket, c.day, c.cluster,
       sum(c.alloc_gpu_hours) FILTER (WHERE c.line = 'tenant')       AS tenant_gpu_hours,
       sum(c.alloc_gpu_hours) FILTER (WHERE c.line = 'unassigned')   AS unassigned_gpu_hours,
       sum(c.alloc_gpu_hours) FILTER (WHERE c.line = 'unallocated')  AS unallocated_gpu_hours,
       max(g.physical_gpu_hours)                                     AS physical_gpu_hours,
       coalesce(sum(c.alloc_gpu_hours), 0) - coalesce(max(g.physical_gpu_hours), 0) AS difference_gpu_hours
FROM chargeback_pod_daily c
JOIN (SELECT bucket, cluster, sum(seconds) / 3600.0 AS physical_gpu_hours
      FROM gpu_usage_1d GROUP BY bucket, cluster) g
  ON g.bucket = c.bucket AND g.cluster = c.cluster
GROUP BY c.bucket, c.day, c.cluster;

CREATE VIEW chargeback_reconciliation_monthly AS
SELECT date_trunc('month', day)::date AS month, cluster,
       sum(tenant_gpu_hours)      AS tenant_gpu_hours,
       sum(unassigned_gpu_hours)  AS unassigned_gpu_hours,
       sum(unallocated_gpu_hours) AS unallocated_gpu_hours,
       sum(physical_gpu_hours)    AS physical_gpu_hours,
       sum(difference_gpu_hours)  AS difference_gpu_hours
FROM chargeback_reconciliation_daily
GROUP BY 1, cluster;

-- gpu_usage_hours_1h / gpu_usage_hours_1d  grain (bucket, gpu_uuid): the ADDITIVE sums
--   behind gpu_utilization_* (007), in hours, so a BI tool can aggregate over GPUs, hosts
--   or time correctly (sum the hours, then divide; never average percentages):
--   bucket, cluster, host, gpu_uuid, gpu_model, total_slices,
--   gpu_hours (physical), alloc_gpu_hours, util_known_gpu_hours, busy_gpu_hours,
--   simple_util_hours / simple_hours (the naive mean's numerator and denominator).
--   weighted % = busy / util_known; whole-GPU % = busy / gpu_hours;
--   simple % = simple_util_hours / simple_hours; allocation % = alloc / gpu_hours.
DO $$
DECLARE
    grain text;
BEGIN
    FOREACH grain IN ARRAY ARRAY['1h', '1d'] LOOP
        EXECUTE format($sql$
CREATE VIEW gpu_usage_hours_%1$s AS
SELECT bucket, cluster, host, gpu_uuid, gpu_model, total_slices,
       seconds / 3600.0                 AS gpu_hours,
       alloc_gpu_seconds / 3600.0       AS alloc_gpu_hours,
       util_alloc_gpu_seconds / 3600.0  AS util_known_gpu_hours,
       busy_gpu_seconds / 3600.0        AS busy_gpu_hours,
       simple_util_seconds / 3600.0     AS simple_util_hours,
       simple_seconds / 3600.0          AS simple_hours,
       snapshots
FROM gpu_usage_%1$s
$sql$, grain);
        EXECUTE format('GRANT SELECT ON gpu_usage_hours_%1$s TO migmeter_reader', grain);
    END LOOP;
END
$$;

-- layout_history  grain (gpu_uuid, gi_id, valid_from): instance_intervals for readers, with
--   the GPU's host and model; valid_to NULL = still in place. gi_id -1 = a GPU without MIG.
-- layout_at(gpu_uuid, at)  the layout of one GPU at instant `at`: the intervals with
--   valid_from <= at < valid_to (or still open). A change at ts T is visible from T on.
CREATE VIEW layout_history AS
SELECT i.gpu_uuid, i.cluster, g.host, g.gpu_model, i.gi_id, i.profile, i.slices, i.total_slices,
       CASE WHEN i.namespace = '' AND i.pod = '' THEN '(unassigned)' ELSE i.namespace END AS namespace,
       CASE WHEN i.namespace = '' AND i.pod = '' THEN '(unassigned)' ELSE i.pod END       AS pod,
       i.container, i.valid_from, i.valid_to
FROM instance_intervals i
LEFT JOIN gpus g ON g.gpu_uuid = i.gpu_uuid;

CREATE FUNCTION layout_at(p_gpu_uuid text, p_at timestamptz)
RETURNS SETOF layout_history
LANGUAGE sql STABLE
AS $$
    SELECT * FROM layout_history
    WHERE gpu_uuid = p_gpu_uuid
      AND valid_from <= p_at
      AND (valid_to IS NULL OR p_at < valid_to)
    ORDER BY gi_id
$$;

-- layout_changes  grain: one row per layout event (layout_events), with the profile and
--   tenant before/after pulled out of the JSON for BI: ts, gpu_uuid, cluster, host, event,
--   gi_id, profile_before, profile_after, slices_before, slices_after, tenant_before,
--   tenant_after ('namespace/pod'), before, after (the full JSON).
CREATE VIEW layout_changes AS
SELECT e.ts, e.gpu_uuid, e.cluster, g.host, e.event, e.gi_id,
       e.before ->> 'profile'                  AS profile_before,
       e.after ->> 'profile'                   AS profile_after,
       (e.before ->> 'slices')::int            AS slices_before,
       (e.after ->> 'slices')::int             AS slices_after,
       NULLIF(concat_ws('/', NULLIF(e.before ->> 'namespace', ''), NULLIF(e.before ->> 'pod', '')), '') AS tenant_before,
       NULLIF(concat_ws('/', NULLIF(e.after ->> 'namespace', ''), NULLIF(e.after ->> 'pod', '')), '')   AS tenant_after,
       e.before, e.after
FROM layout_events e
LEFT JOIN gpus g ON g.gpu_uuid = e.gpu_uuid;

-- idle_capacity_daily  grain (bucket, cluster, gpu_uuid, namespace, pod): slices that were
--   allocated to a tenant (or left unassigned) but not used, ranked per day and cluster:
--   allocated_slice_hours = Σ slices·dt / 3600, measured_slice_hours (util reported),
--   used_slice_hours = Σ slices·u·dt / 3600, idle_slice_hours = measured - used,
--   idle_pct = idle / measured, idle_gpu_hours = idle_slice_hours / total_slices,
--   idle_cost = idle_gpu_hours × the day's price, idle_rank (1 = most idle slice-hours).
CREATE VIEW idle_capacity_daily AS
SELECT s.*,
       100.0 * s.idle_slice_hours / NULLIF(s.measured_slice_hours, 0)                  AS idle_pct,
       (s.idle_gpu_hours)::numeric * p.price_per_gpu_hour                              AS idle_cost,
       p.currency,
       rank() OVER (PARTITION BY s.bucket, s.cluster ORDER BY s.idle_slice_hours DESC) AS idle_rank
FROM (
    SELECT bucket, (bucket AT TIME ZONE 'UTC')::date AS day, cluster, gpu_uuid, gpu_model,
           CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE namespace END AS namespace,
           CASE WHEN namespace = '' AND pod = '' THEN '(unassigned)' ELSE pod END       AS pod,
           sum(seconds * slices) / 3600.0                                   AS allocated_slice_hours,
           sum(util_seconds * slices) / 3600.0                              AS measured_slice_hours,
           sum(busy_seconds * slices) / 3600.0                              AS used_slice_hours,
           sum((util_seconds - busy_seconds) * slices) / 3600.0             AS idle_slice_hours,
           sum((util_seconds - busy_seconds) * slices / total_slices) / 3600.0 AS idle_gpu_hours
    FROM instance_usage_1d
    GROUP BY bucket, cluster, gpu_uuid, gpu_model, instance_usage_1d.namespace, instance_usage_1d.pod
) s
LEFT JOIN gpu_prices p
       ON p.gpu_model = s.gpu_model
      AND p.effective_from <= s.day
      AND (p.effective_to IS NULL OR s.day < p.effective_to);

-- idle_capacity_monthly  grain (month, cluster, gpu_uuid, namespace, pod): the same summed
--   over the UTC month, ranked per month and cluster.
CREATE VIEW idle_capacity_monthly AS
SELECT m.*,
       100.0 * m.idle_slice_hours / NULLIF(m.measured_slice_hours, 0)                 AS idle_pct,
       rank() OVER (PARTITION BY m.month, m.cluster ORDER BY m.idle_slice_hours DESC) AS idle_rank
FROM (
    SELECT date_trunc('month', day)::date AS month, cluster, gpu_uuid, gpu_model, namespace, pod,
           sum(allocated_slice_hours) AS allocated_slice_hours,
           sum(measured_slice_hours)  AS measured_slice_hours,
           sum(used_slice_hours)      AS used_slice_hours,
           sum(idle_slice_hours)      AS idle_slice_hours,
           sum(idle_gpu_hours)        AS idle_gpu_hours,
           sum(idle_cost)             AS idle_cost,
           min(currency)              AS currency
    FROM idle_capacity_daily
    GROUP BY 1, cluster, gpu_uuid, gpu_model, namespace, pod
) m;

GRANT SELECT ON chargeback_pod_daily, chargeback_namespace_daily,
                chargeback_pod_monthly, chargeback_namespace_monthly,
                chargeback_reconciliation_daily, chargeback_reconciliation_monthly,
                layout_history, layout_changes,
                idle_capacity_daily, idle_capacity_monthly
      TO migmeter_reader;
REVOKE ALL ON FUNCTION layout_at(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION layout_at(text, timestamptz) TO migmeter_reader;
