-- 032: profile prices and share rules for the reader role's BI tools (issue 14, gap 1): the
-- same charges as `report chargeback --pricing profile` and `report focus --pricing profile`
-- (rules in warehouse/profile_pricing.py), so a dashboard cannot bill differently.
--
-- profile_memory_shares  grain (gpu_model, profile): memory slices of a MIG profile on a GPU
--   model and the model's memory slices (8, or 4 on 4-slice GPUs), recorded from the profile
--   table (collector/data/mig_profiles.csv) by `migmeter price rule MODEL ...` for every
--   profile the table lists for MODEL. The warehouse bills the memory and max rules by these
--   rows (Python and SQL alike): a later release's profile table does not change past bills.
--   A profile without a row is billed by compute share (the reports say so).
--
-- chargeback_profile_lines_daily  grain: the rows of focus_usage_daily (030), one per UTC day,
--   GPU instance, profile and tenant, plus each GPU's unallocated hours per day, priced:
--   pricing_rule  'profile' (a profile price in force that day wins), 'compute', 'memory',
--                 'max' (the model's share rule; no rule = compute; memory/max without a
--                 memory-share row = compute), 'gpu' on unallocated rows (the GPU-hour price);
--   instance_hours  allocated GPU-hours / (slices / total) (NULL on unallocated rows);
--   quantity, unit  Instance-Hours under a profile price, else GPU-hours at the rule's share
--                   (= alloc_gpu_hours under compute), 9 decimals;
--   unit_price, currency, cost = quantity x unit_price (NULL = no GPU price that day);
--   gpu_cost = alloc_gpu_hours (9 decimals) x the GPU-hour price: what the line's GPU time costs.
--   A profile price in another currency than its GPU's price that day is not applied here (the
--   rule prices the line); the reports refuse such a price with an error instead of mixing them.
--
-- chargeback_profile_namespace_monthly  grain (month, cluster, line, namespace, currency): the
--   profile-priced bill: 'tenant' and 'unassigned' lines, '(not covered)' = the GPUs' cost
--   (gpu_cost of every line, unallocated included) minus the instance charges (negative =
--   over-recovered), and 'unmetered' at GPU prices (chargeback_namespace_monthly's line), so
--   the month's lines add up to the default chargeback's total.

CREATE TABLE profile_memory_share_records (
    gpu_model            text     NOT NULL CHECK (length(gpu_model) BETWEEN 1 AND 256),
    profile              text     NOT NULL CHECK (length(profile) BETWEEN 1 AND 64),
    memory_slices        smallint NOT NULL,
    memory_slices_total  smallint NOT NULL CHECK (memory_slices_total IN (4, 8)),
    PRIMARY KEY (gpu_model, profile),
    CHECK (memory_slices BETWEEN 1 AND memory_slices_total)
);
-- Readers see views only (like gpu_prices over prices): the table is written by `price rule`.
CREATE VIEW profile_memory_shares AS
SELECT gpu_model, profile, memory_slices, memory_slices_total FROM profile_memory_share_records;

CREATE VIEW chargeback_profile_lines_daily AS
SELECT f.bucket, f.day, f.cluster, f.gpu_uuid, f.gpu_model, f.gi_id, f.profile, f.slices, f.total_slices,
       f.line, f.namespace, f.pod, f.alloc_gpu_hours,
       CASE WHEN k.rule <> 'gpu' THEN f.alloc_gpu_hours * f.total_slices / f.slices END  AS instance_hours,
       k.rule                                                                             AS pricing_rule,
       q.quantity,
       CASE WHEN k.rule = 'profile' THEN 'Instance-Hours' ELSE 'GPU-Hours' END           AS unit,
       q.unit_price,
       f.currency,
       q.quantity * q.unit_price                                                          AS cost,
       round(f.alloc_gpu_hours::numeric, 9) * f.price_per_gpu_hour                        AS gpu_cost
FROM focus_usage_daily f
LEFT JOIN gpu_profile_prices pp
       ON f.line <> 'unallocated'
      AND pp.gpu_model = f.gpu_model AND pp.profile = f.profile
      AND pp.currency = f.currency
      AND pp.effective_from <= f.day AND (pp.effective_to IS NULL OR f.day < pp.effective_to)
LEFT JOIN gpu_share_rules sr
       ON sr.gpu_model = f.gpu_model
      AND sr.effective_from <= f.day AND (sr.effective_to IS NULL OR f.day < sr.effective_to)
LEFT JOIN profile_memory_shares ms
       ON ms.gpu_model = f.gpu_model AND ms.profile = f.profile
CROSS JOIN LATERAL (
    SELECT CASE WHEN f.line = 'unallocated' OR coalesce(f.slices, 0) = 0 THEN 'gpu'
                WHEN pp.price_per_instance_hour IS NOT NULL THEN 'profile'
                WHEN sr.rule IN ('memory', 'max') AND ms.memory_slices IS NOT NULL
                     AND f.slices < f.total_slices THEN sr.rule
                ELSE 'compute' END AS rule
) k
CROSS JOIN LATERAL (
    SELECT CASE k.rule
             WHEN 'profile' THEN round((f.alloc_gpu_hours * f.total_slices / f.slices)::numeric, 9)
             WHEN 'memory'  THEN round(f.alloc_gpu_hours::numeric * ms.memory_slices * f.total_slices
                                       / (ms.memory_slices_total * f.slices), 9)
             WHEN 'max'     THEN round(f.alloc_gpu_hours::numeric
                                       * greatest(ms.memory_slices * f.total_slices,
                                                  f.slices * ms.memory_slices_total)
                                       / (ms.memory_slices_total * f.slices), 9)
             ELSE round(f.alloc_gpu_hours::numeric, 9) END                                AS quantity,
           CASE WHEN k.rule = 'profile' THEN pp.price_per_instance_hour
                ELSE f.price_per_gpu_hour END                                            AS unit_price
) q;

CREATE VIEW chargeback_profile_namespace_monthly AS
WITH lines AS (
    SELECT date_trunc('month', day)::date AS month, cluster, line, namespace, currency,
           instance_hours, alloc_gpu_hours, pricing_rule, cost, gpu_cost
    FROM chargeback_profile_lines_daily
)
SELECT month, cluster, line, namespace, currency,
       sum(instance_hours)                                                  AS instance_hours,
       sum(alloc_gpu_hours)                                                 AS alloc_gpu_hours,
       coalesce(sum(instance_hours) FILTER (WHERE pricing_rule = 'profile'), 0) AS profile_priced_hours,
       sum(cost)                                                            AS cost
FROM lines WHERE line <> 'unallocated'
GROUP BY month, cluster, line, namespace, currency
UNION ALL
SELECT month, cluster, 'not covered', '(not covered)', currency, NULL, NULL, NULL,
       sum(gpu_cost) - coalesce(sum(cost) FILTER (WHERE line <> 'unallocated'), 0)
FROM lines WHERE currency IS NOT NULL
GROUP BY month, cluster, currency
UNION ALL
SELECT month, cluster, line, namespace, currency, NULL, alloc_gpu_hours, NULL, cost_alloc
FROM chargeback_namespace_monthly
WHERE line NOT IN ('tenant', 'unassigned', 'unallocated') AND alloc_gpu_hours > 0;

REVOKE ALL ON profile_memory_share_records FROM migmeter_reader, migmeter_writer;
GRANT SELECT ON profile_memory_shares, chargeback_profile_lines_daily, chargeback_profile_namespace_monthly
    TO migmeter_reader;
