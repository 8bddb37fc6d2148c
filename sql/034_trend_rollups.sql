-- 034: per-day rollups for `migmeter report trend` (issue 14, gap 3: two years of a 1,000-GPU
-- fleet must answer in well under a second). A TimescaleDB continuous aggregate would do this,
-- but the Apache build (what Debian ships, and the local stack) refuses them ("functionality
-- not supported under the current apache license"), so the daily rows keep their rollups
-- current themselves: statement triggers on gpu_usage_1d / tenant_usage_1d add what each
-- statement inserted, minus what it replaced or deleted (its transition tables: the processor's
-- additive merges, attribute changes included: the old key loses what the new one gains), to
-- the rollup rows of their (day, cluster, GPU model [, namespace]), one grouped upsert per
-- statement (row triggers would update one hot rollup row once per GPU in a batch). They run
-- in the writing transaction, so a rollup is never ahead of or behind the rows it sums; the
-- processor's code is unchanged. Retention drops the rollups' chunks
-- with the 1d tables' (same 365-day chunks, same cutoff: warehouse/retention.py).
--
-- gpu_usage_model_1d   grain (bucket, cluster, gpu_model): gpu_days (1d GPU rows), metered_days
--   (rows with seconds <> 0), unmetered_days (rows with unmetered_seconds <> 0), and the sums of
--   seconds, alloc_gpu_seconds, util_alloc_gpu_seconds, busy_gpu_seconds, unallocated_seconds
--   (seconds - alloc_gpu_seconds), unmetered_seconds (NULL counted as 0).
-- tenant_usage_namespace_1d  grain (bucket, cluster, gpu_model, unassigned, namespace):
--   tenant_days (1d tenant rows), sums of alloc_gpu_seconds, util_alloc_gpu_seconds,
--   busy_gpu_seconds; unassigned = the instance had no tenant (namespace = pod = '').
-- Reader views (hours, like gpu_usage_hours_1d): trend_gpu_model_daily, trend_namespace_daily:
--   the lines chargeback_lines_daily (014) would give per day, cluster, GPU model and namespace
--   ('(unassigned)', '(unallocated)', '(unmetered)' as there), unpriced.
-- Sums are double precision, kept by adding differences: they agree with a fresh sum of the
-- daily rows to ~1e-12 relative (float addition order), not bit for bit.

CREATE TABLE gpu_usage_model_1d (
    bucket                  timestamptz      NOT NULL,
    cluster                 text             NOT NULL,
    gpu_model               text             NOT NULL,
    gpu_days                bigint           NOT NULL,
    metered_days            bigint           NOT NULL,
    unmetered_days          bigint           NOT NULL,
    seconds                 double precision NOT NULL,
    alloc_gpu_seconds       double precision NOT NULL,
    util_alloc_gpu_seconds  double precision NOT NULL,
    busy_gpu_seconds        double precision NOT NULL,
    unallocated_seconds     double precision NOT NULL,
    unmetered_seconds       double precision NOT NULL,
    PRIMARY KEY (bucket, cluster, gpu_model)
);
SELECT create_hypertable('gpu_usage_model_1d', 'bucket', chunk_time_interval => INTERVAL '365 days');

CREATE TABLE tenant_usage_namespace_1d (
    bucket                  timestamptz      NOT NULL,
    cluster                 text             NOT NULL,
    gpu_model               text             NOT NULL,
    unassigned              boolean          NOT NULL,
    namespace               text             NOT NULL,
    tenant_days             bigint           NOT NULL,
    alloc_gpu_seconds       double precision NOT NULL,
    util_alloc_gpu_seconds  double precision NOT NULL,
    busy_gpu_seconds        double precision NOT NULL,
    PRIMARY KEY (bucket, cluster, gpu_model, unassigned, namespace)
);
SELECT create_hypertable('tenant_usage_namespace_1d', 'bucket', chunk_time_interval => INTERVAL '365 days');

-- The rows a statement changed, signed: +1 for what it inserted or an update left, -1 for what
-- an update replaced or a delete removed (the statement's transition tables).
CREATE FUNCTION rollup_delta_source(op text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE op WHEN 'INSERT' THEN 'SELECT 1 AS sign, * FROM new_rows'
                   WHEN 'UPDATE' THEN 'SELECT 1 AS sign, * FROM new_rows UNION ALL SELECT -1, * FROM old_rows'
                   ELSE 'SELECT -1 AS sign, * FROM old_rows' END
$$;

-- One upsert per statement, grouped and sorted by key (two writers lock rollup rows in the same
-- order: they wait for each other, never deadlock).
CREATE FUNCTION gpu_usage_1d_rollup() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($q$
        INSERT INTO gpu_usage_model_1d AS m
            (bucket, cluster, gpu_model, gpu_days, metered_days, unmetered_days, seconds, alloc_gpu_seconds,
             util_alloc_gpu_seconds, busy_gpu_seconds, unallocated_seconds, unmetered_seconds)
        SELECT bucket, cluster, gpu_model, sum(sign), sum(sign * (seconds <> 0)::int),
               sum(sign * (coalesce(unmetered_seconds, 0) <> 0)::int), sum(sign * seconds),
               sum(sign * alloc_gpu_seconds), sum(sign * util_alloc_gpu_seconds), sum(sign * busy_gpu_seconds),
               sum(sign * (seconds - alloc_gpu_seconds)), sum(sign * coalesce(unmetered_seconds, 0))
        FROM (%s) d
        GROUP BY bucket, cluster, gpu_model
        ORDER BY bucket, cluster, gpu_model
        ON CONFLICT (bucket, cluster, gpu_model) DO UPDATE SET
            gpu_days = m.gpu_days + EXCLUDED.gpu_days,
            metered_days = m.metered_days + EXCLUDED.metered_days,
            unmetered_days = m.unmetered_days + EXCLUDED.unmetered_days,
            seconds = m.seconds + EXCLUDED.seconds,
            alloc_gpu_seconds = m.alloc_gpu_seconds + EXCLUDED.alloc_gpu_seconds,
            util_alloc_gpu_seconds = m.util_alloc_gpu_seconds + EXCLUDED.util_alloc_gpu_seconds,
            busy_gpu_seconds = m.busy_gpu_seconds + EXCLUDED.busy_gpu_seconds,
            unallocated_seconds = m.unallocated_seconds + EXCLUDED.unallocated_seconds,
            unmetered_seconds = m.unmetered_seconds + EXCLUDED.unmetered_seconds
        $q$, rollup_delta_source(TG_OP));
    RETURN NULL;
END
$fn$;

CREATE FUNCTION tenant_usage_1d_rollup() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($q$
        INSERT INTO tenant_usage_namespace_1d AS m
            (bucket, cluster, gpu_model, unassigned, namespace, tenant_days, alloc_gpu_seconds,
             util_alloc_gpu_seconds, busy_gpu_seconds)
        SELECT bucket, cluster, gpu_model, namespace = '' AND pod = '', namespace, sum(sign),
               sum(sign * alloc_gpu_seconds), sum(sign * util_alloc_gpu_seconds), sum(sign * busy_gpu_seconds)
        FROM (%s) d
        GROUP BY bucket, cluster, gpu_model, namespace = '' AND pod = '', namespace
        ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (bucket, cluster, gpu_model, unassigned, namespace) DO UPDATE SET
            tenant_days = m.tenant_days + EXCLUDED.tenant_days,
            alloc_gpu_seconds = m.alloc_gpu_seconds + EXCLUDED.alloc_gpu_seconds,
            util_alloc_gpu_seconds = m.util_alloc_gpu_seconds + EXCLUDED.util_alloc_gpu_seconds,
            busy_gpu_seconds = m.busy_gpu_seconds + EXCLUDED.busy_gpu_seconds
        $q$, rollup_delta_source(TG_OP));
    RETURN NULL;
END
$fn$;

-- What is there already, then every later change.
INSERT INTO gpu_usage_model_1d
SELECT bucket, cluster, gpu_model, count(*), count(*) FILTER (WHERE seconds <> 0),
       count(*) FILTER (WHERE coalesce(unmetered_seconds, 0) <> 0), sum(seconds), sum(alloc_gpu_seconds),
       sum(util_alloc_gpu_seconds), sum(busy_gpu_seconds), sum(seconds - alloc_gpu_seconds),
       coalesce(sum(unmetered_seconds), 0)
FROM gpu_usage_1d GROUP BY bucket, cluster, gpu_model;
INSERT INTO tenant_usage_namespace_1d
SELECT bucket, cluster, gpu_model, namespace = '' AND pod = '', namespace, count(*), sum(alloc_gpu_seconds),
       sum(util_alloc_gpu_seconds), sum(busy_gpu_seconds)
FROM tenant_usage_1d GROUP BY bucket, cluster, gpu_model, namespace = '' AND pod = '', namespace;

-- PostgreSQL allows transition tables on single-event triggers only: one trigger per event.
CREATE TRIGGER gpu_usage_1d_rollup_insert AFTER INSERT ON gpu_usage_1d
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION gpu_usage_1d_rollup();
CREATE TRIGGER gpu_usage_1d_rollup_update AFTER UPDATE ON gpu_usage_1d
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION gpu_usage_1d_rollup();
CREATE TRIGGER gpu_usage_1d_rollup_delete AFTER DELETE ON gpu_usage_1d
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION gpu_usage_1d_rollup();
CREATE TRIGGER tenant_usage_1d_rollup_insert AFTER INSERT ON tenant_usage_1d
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_1d_rollup();
CREATE TRIGGER tenant_usage_1d_rollup_update AFTER UPDATE ON tenant_usage_1d
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_1d_rollup();
CREATE TRIGGER tenant_usage_1d_rollup_delete AFTER DELETE ON tenant_usage_1d
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_1d_rollup();

CREATE VIEW trend_gpu_model_daily AS
SELECT bucket, (bucket AT TIME ZONE 'UTC')::date AS day, cluster, gpu_model, gpu_days,
       seconds / 3600.0                        AS gpu_hours,
       (seconds + unmetered_seconds) / 3600.0  AS capacity_gpu_hours,
       alloc_gpu_seconds / 3600.0              AS alloc_gpu_hours,
       busy_gpu_seconds / 3600.0               AS used_gpu_hours,
       util_alloc_gpu_seconds / 3600.0         AS util_known_gpu_hours
FROM gpu_usage_model_1d
WHERE gpu_days > 0;

CREATE VIEW trend_namespace_daily AS
SELECT bucket, (bucket AT TIME ZONE 'UTC')::date AS day, cluster, gpu_model, namespace,
       alloc_gpu_hours, used_gpu_hours, util_known_gpu_hours
FROM (
    SELECT bucket, cluster, gpu_model, CASE WHEN unassigned THEN '(unassigned)' ELSE namespace END AS namespace,
           alloc_gpu_seconds / 3600.0 AS alloc_gpu_hours, busy_gpu_seconds / 3600.0 AS used_gpu_hours,
           util_alloc_gpu_seconds / 3600.0 AS util_known_gpu_hours
    FROM tenant_usage_namespace_1d
    WHERE tenant_days > 0
    UNION ALL
    SELECT bucket, cluster, gpu_model, '(unallocated)', unallocated_seconds / 3600.0, 0.0, 0.0
    FROM gpu_usage_model_1d
    WHERE metered_days > 0
    UNION ALL
    SELECT bucket, cluster, gpu_model, '(unmetered)', unmetered_seconds / 3600.0, 0.0, 0.0
    FROM gpu_usage_model_1d
    WHERE unmetered_days > 0
) u;

GRANT SELECT, INSERT, UPDATE, DELETE ON gpu_usage_model_1d, tenant_usage_namespace_1d TO migmeter_writer;
GRANT SELECT ON trend_gpu_model_daily, trend_namespace_daily TO migmeter_reader;
