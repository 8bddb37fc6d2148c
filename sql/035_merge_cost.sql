-- 035: what the processor's merges cost the database (issue 13: throughput), three choices.
--
-- 1. The 1h and 1d usage rows are merged again by every batch of their hour or day
--    (processor/sink.py step 3: ON CONFLICT DO UPDATE). With full pages every update writes a
--    new row version on another page plus an entry in each of the table's three indexes; with
--    room left on the page (fillfactor 50) the update stays on its page and touches no index
--    (a HOT update). Measured on 40 batches' worth of a dense fleet: HOT updates 0.3 % -> 57-79 %
--    of all updates, database write time per instance-sample -18 to -25 % (bench/RESULTS.md).
--    These tables are small next to the 1m ones (1/60 and 1/1440 of their rows), so the pages
--    left half empty cost little disk. Chunks take the hypertable's setting.
-- 2. The 1m instance and tenant tables keep only their primary key (bucket, gpu_uuid, ...):
--    every 1m row is new, and each secondary index cost an insert per row (a third of the
--    database's time per batch). 1m rows are kept 30 days for right-sizing and drill-down,
--    which read a time range (the key's first column and chunk exclusion); queries by tenant
--    or GPU over longer periods read the 1h/1d tables, which keep their (namespace, pod) and
--    (gpu_uuid) indexes. gpu_usage_1m (one row per seven instance rows) keeps its indexes.
-- 3. The (bucket DESC) index create_hypertable adds by default is dropped from every usage
--    table: each primary key starts with bucket and serves the same range scans (read
--    backwards for DESC), so it was an index write per row for nothing.

ALTER TABLE instance_usage_1h SET (fillfactor = 50);
ALTER TABLE instance_usage_1d SET (fillfactor = 50);
ALTER TABLE tenant_usage_1h SET (fillfactor = 50);
ALTER TABLE tenant_usage_1d SET (fillfactor = 50);
ALTER TABLE gpu_usage_1h SET (fillfactor = 50);
ALTER TABLE gpu_usage_1d SET (fillfactor = 50);

DROP INDEX instance_usage_1m_tenant_idx;
DROP INDEX instance_usage_1m_gpu_idx;
DROP INDEX tenant_usage_1m_tenant_idx;
DROP INDEX tenant_usage_1m_gpu_idx;

DROP INDEX instance_usage_1m_bucket_idx;
DROP INDEX instance_usage_1h_bucket_idx;
DROP INDEX instance_usage_1d_bucket_idx;
DROP INDEX tenant_usage_1m_bucket_idx;
DROP INDEX tenant_usage_1h_bucket_idx;
DROP INDEX tenant_usage_1d_bucket_idx;
DROP INDEX gpu_usage_1m_bucket_idx;
DROP INDEX gpu_usage_1h_bucket_idx;
DROP INDEX gpu_usage_1d_bucket_idx;
