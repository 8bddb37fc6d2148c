-- 004: gpu_usage_{1m,1h,1d} — per physical GPU per bucket. Grain / primary key: (bucket, gpu_uuid).
-- Attributes (last seen): cluster, host, gpu_model, total_slices.
-- Sums over the GPU's snapshots (each snapshot: dt = interval_s; i = its instances):
--   seconds = Σdt (physical GPU-seconds: the capacity);  mig_seconds = Σdt with MIG on;
--   alloc_gpu_seconds = Σ Σ_i w_i·dt (allocated GPU-seconds; MIG on with no instances adds 0);
--   util_alloc_gpu_seconds = Σ Σ_i w_i·dt over instances whose util is known;
--   busy_gpu_seconds = Σ Σ_i w_i·u_i·dt;
--   simple_util_seconds = Σ mean_i(u_i)·dt and simple_seconds = Σdt, both over snapshots with
--     at least one instance with known u (the naive mean, kept to show how wrong it is);
--   instance_samples = Σ number of instances; snapshots = count.
-- Extremes per snapshot: alloc_min/alloc_max (Σ_i w_i), whole_util_min/whole_util_max (Σ_i w_i·u_i).
-- Ratios (views): weighted = busy_gpu_seconds / util_alloc_gpu_seconds (utilization of the
--   allocated capacity), whole GPU = busy_gpu_seconds / seconds, simple = simple_util_seconds /
--   simple_seconds, allocation = alloc_gpu_seconds / seconds.
-- Unallocated GPU-seconds = seconds - alloc_gpu_seconds.
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
CREATE TABLE gpu_usage_1m (
    bucket                  timestamptz      NOT NULL,
    gpu_uuid                text             NOT NULL,
    cluster                 text             NOT NULL,
    host                    text             NOT NULL,
    gpu_model               text             NOT NULL,
    total_slices            smallint         NOT NULL,
    seconds                 double precision NOT NULL,
    mig_seconds             double precision NOT NULL,
    alloc_gpu_seconds       double precision NOT NULL,
    util_alloc_gpu_seconds  double precision NOT NULL,
    busy_gpu_seconds        double precision NOT NULL,
    simple_util_seconds     double precision NOT NULL,
    simple_seconds          double precision NOT NULL,
    instance_samples        bigint           NOT NULL,
    snapshots               bigint           NOT NULL,
    alloc_min               double precision,
    alloc_max               double precision,
    whole_util_min          double precision,
    whole_util_max          double precision,
    PRIMARY KEY (bucket, gpu_uuid)
);
CREATE INDEX gpu_usage_1m_gpu_idx ON gpu_usage_1m (gpu_uuid, bucket DESC);
CREATE INDEX gpu_usage_1m_cluster_idx ON gpu_usage_1m (cluster, gpu_model, bucket DESC);
CREATE TABLE gpu_usage_1h (LIKE gpu_usage_1m INCLUDING ALL);
CREATE TABLE gpu_usage_1d (LIKE gpu_usage_1m INCLUDING ALL);
SELECT create_hypertable('gpu_usage_1m', 'bucket', chunk_time_interval => INTERVAL '1 day');
SELECT create_hypertable('gpu_usage_1h', 'bucket', chunk_time_interval => INTERVAL '30 days');
SELECT create_hypertable('gpu_usage_1d', 'bucket', chunk_time_interval => INTERVAL '365 days');

GRANT SELECT, INSERT, UPDATE, DELETE ON gpu_usage_1m, gpu_usage_1h, gpu_usage_1d TO migmeter_writer;
