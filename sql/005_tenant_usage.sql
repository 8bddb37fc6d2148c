-- 005: tenant_usage_{1m,1h,1d} — per tenant per GPU per bucket, for chargeback.
-- Grain / primary key: (bucket, gpu_uuid, namespace, pod). Keyed by GPU as well so that the
-- one processor owning the GPU's partition is the only writer of each row (no cross-processor
-- contention); per-tenant totals are GROUP BY namespace, pod over these rows.
-- Unassigned instances are stored under namespace '' and pod '' (views: '(unassigned)').
-- Attributes (last seen): cluster, gpu_model.
-- Sums: alloc_gpu_seconds = Σ w·dt (allocated GPU-seconds), util_alloc_gpu_seconds = Σ w·dt
--   where util known, busy_gpu_seconds = Σ w·u·dt (used GPU-seconds), seconds = Σdt (instance-
--   seconds), samples = count of instance samples.
-- Reconciliation: Σ over tenants (incl. unassigned) of alloc_gpu_seconds = gpu_usage
--   alloc_gpu_seconds, so tenants + unassigned + unallocated = physical GPU-seconds.
--
-- Time-weighting: every snapshot carries interval_s, the scrape interval it represents (dt).
-- A sample is weighted by its dt and lands WHOLLY in the bucket that contains its ts
-- (buckets are [start, start + width) in UTC, start = time_bucket(width, ts)); it is not
-- split across a bucket edge. All measures are sums (or min/max), so any bucket may be
-- written in parts, by several batches, in any order: the processor merges each batch with
-- INSERT ... ON CONFLICT DO UPDATE SET x = t.x + EXCLUDED.x (LEAST/GREATEST for min/max).
-- 1h and 1d are maintained by the processor itself (TimescaleDB's Apache build has no
-- continuous aggregates); all three grains receive the same samples, so they agree exactly.
-- Ratios are never stored: the views divide sums (NULL instead of division by zero).
-- w = slices / total_slices (share of the physical GPU); u = gr_engine_active (0..1,
-- relative to the instance); "util known" = the sample reported gr_engine_active.

-- The three grains have the same shape: 1h and 1d are copies of 1m (LIKE ... INCLUDING ALL
-- copies columns, the primary key and the indexes), then each becomes a hypertable whose
-- chunk interval suits its grain (1m: 1 day, 1h: 30 days, 1d: 365 days).
CREATE TABLE tenant_usage_1m (
    bucket                  timestamptz      NOT NULL,
    gpu_uuid                text             NOT NULL,
    namespace               text             NOT NULL,
    pod                     text             NOT NULL,
    cluster                 text             NOT NULL,
    gpu_model               text             NOT NULL,
    seconds                 double precision NOT NULL,
    alloc_gpu_seconds       double precision NOT NULL,
    util_alloc_gpu_seconds  double precision NOT NULL,
    busy_gpu_seconds        double precision NOT NULL,
    samples                 bigint           NOT NULL,
    PRIMARY KEY (bucket, gpu_uuid, namespace, pod)
);
CREATE INDEX tenant_usage_1m_tenant_idx ON tenant_usage_1m (namespace, pod, bucket DESC);
CREATE INDEX tenant_usage_1m_gpu_idx ON tenant_usage_1m (gpu_uuid, bucket DESC);
CREATE TABLE tenant_usage_1h (LIKE tenant_usage_1m INCLUDING ALL);
CREATE TABLE tenant_usage_1d (LIKE tenant_usage_1m INCLUDING ALL);
SELECT create_hypertable('tenant_usage_1m', 'bucket', chunk_time_interval => INTERVAL '1 day');
SELECT create_hypertable('tenant_usage_1h', 'bucket', chunk_time_interval => INTERVAL '30 days');
SELECT create_hypertable('tenant_usage_1d', 'bucket', chunk_time_interval => INTERVAL '365 days');

GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_usage_1m, tenant_usage_1h, tenant_usage_1d TO migmeter_writer;
