-- 003: instance_usage_{1m,1h,1d} — per MIG instance (or whole-GPU pseudo-instance gi_id -1)
-- per tenant per bucket. Grain / primary key: (bucket, gpu_uuid, gi_id, profile, namespace, pod);
-- an instance that changes profile or tenant inside a bucket gets one row per combination.
-- Unassigned instances have namespace '' and pod '' (views show '(unassigned)').
-- Attributes (last seen): cluster, gpu_model, slices, total_slices, container.
-- Sums: seconds = Σdt; alloc_gpu_seconds = Σ w·dt; util_seconds = Σdt where util known;
--   busy_seconds = Σ u·dt; busy_gpu_seconds = Σ w·u·dt; samples = count.
-- Extremes: util_min / util_max (of u), fb_used_max_mib (peak framebuffer use).
-- Instance utilization = busy_seconds / util_seconds; its GPU-share = busy_gpu_seconds.
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
CREATE TABLE instance_usage_1m (
    bucket             timestamptz      NOT NULL,
    gpu_uuid           text             NOT NULL,
    gi_id              integer          NOT NULL,
    profile            text             NOT NULL,
    namespace          text             NOT NULL,
    pod                text             NOT NULL,
    cluster            text             NOT NULL,
    gpu_model          text             NOT NULL,
    slices             smallint         NOT NULL,
    total_slices       smallint         NOT NULL,
    container          text             NOT NULL,
    seconds            double precision NOT NULL,
    alloc_gpu_seconds  double precision NOT NULL,
    util_seconds       double precision NOT NULL,
    busy_seconds       double precision NOT NULL,
    busy_gpu_seconds   double precision NOT NULL,
    samples            bigint           NOT NULL,
    util_min           double precision,
    util_max           double precision,
    fb_used_max_mib    double precision,
    PRIMARY KEY (bucket, gpu_uuid, gi_id, profile, namespace, pod)
);
CREATE INDEX instance_usage_1m_tenant_idx ON instance_usage_1m (namespace, pod, bucket DESC);
CREATE INDEX instance_usage_1m_gpu_idx ON instance_usage_1m (gpu_uuid, bucket DESC);
CREATE TABLE instance_usage_1h (LIKE instance_usage_1m INCLUDING ALL);
CREATE TABLE instance_usage_1d (LIKE instance_usage_1m INCLUDING ALL);
SELECT create_hypertable('instance_usage_1m', 'bucket', chunk_time_interval => INTERVAL '1 day');
SELECT create_hypertable('instance_usage_1h', 'bucket', chunk_time_interval => INTERVAL '30 days');
SELECT create_hypertable('instance_usage_1d', 'bucket', chunk_time_interval => INTERVAL '365 days');

GRANT SELECT, INSERT, UPDATE, DELETE ON instance_usage_1m, instance_usage_1h, instance_usage_1d TO migmeter_writer;
