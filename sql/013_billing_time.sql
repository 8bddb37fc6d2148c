-- 013: the v2 time model (DESIGN.md "Time model"): every second of every GPU billed once.
--
-- gpu_state gains what the processor needs to bill each second once and to fence writers:
--   billed   jsonb: the GPU's billed time as [[start_us, end_us], ...] (epoch microseconds, an
--            interval stands for (start, end]; sorted, disjoint, adjacent ones merged; at most
--            64 pairs, the oldest hole closed beyond that). '[]' on rows written before this
--            migration: the processor then treats everything up to last_ts as billed (the old
--            model kept no record of which seconds it billed), so history older than the
--            migration is not merged for GPUs metered before it.
--   version  bigint: +1 per batch that changes the row. A batch states the version it read;
--            the upsert applies only on top of that version (a GPU whose snapshots reach two
--            partitions is never billed twice by two processors: the loser re-reads and re-folds).
--   feed     text: "source@host" of the snapshot that last moved the GPU's clock on.
-- sink_offsets gains, per partition, beside snapshots (merged: billed whole), duplicates
--   (billed nothing) and dead_letters:
--   trimmed          records billed in part (the rest was billed already by another snapshot),
--   trimmed_seconds  seconds not billed again (of trimmed records and duplicates).
--   records consumed = snapshots + trimmed + duplicates + dead_letters.
-- gpu_usage_{1m,1h,1d} gain unmetered_seconds: time inside the GPU's life (first covered
--   second .. last ts) that no snapshot covers. capacity = seconds + unmetered_seconds;
--   coverage = seconds / capacity. NULL on rows written before this migration: coverage
--   unknown there (no gap was ever recorded); new rows default to 0.
ALTER TABLE gpu_state
    ADD COLUMN billed  jsonb  NOT NULL DEFAULT '[]',
    ADD COLUMN version bigint NOT NULL DEFAULT 0,
    ADD COLUMN feed    text   NOT NULL DEFAULT '';

ALTER TABLE sink_offsets
    ADD COLUMN trimmed         bigint           NOT NULL DEFAULT 0,
    ADD COLUMN trimmed_seconds double precision NOT NULL DEFAULT 0;

ALTER TABLE gpu_usage_1m ADD COLUMN unmetered_seconds double precision;
ALTER TABLE gpu_usage_1h ADD COLUMN unmetered_seconds double precision;
ALTER TABLE gpu_usage_1d ADD COLUMN unmetered_seconds double precision;
ALTER TABLE gpu_usage_1m ALTER COLUMN unmetered_seconds SET DEFAULT 0;
ALTER TABLE gpu_usage_1h ALTER COLUMN unmetered_seconds SET DEFAULT 0;
ALTER TABLE gpu_usage_1d ALTER COLUMN unmetered_seconds SET DEFAULT 0;
