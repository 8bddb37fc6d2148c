-- 033: where each MIG instance sits on its GPU (issue 14, gap 2: stranded capacity from the
-- real placement instead of an estimate).
--
-- instance_intervals.placement_start  the first memory slice the instance occupies (0..7;
--   NVML placement.start, the `nvidia-smi mig -lgipp` slots), as reported by the snapshot that
--   opened the interval; NULL when the source does not report it (dcgm-exporter, Prometheus,
--   NVML without it) or reported garbage. Rows written before this migration have NULL.
-- layout_history gains the same column, last, for the reader role (layout_at() returns it too).

ALTER TABLE instance_intervals ADD COLUMN placement_start smallint;

CREATE OR REPLACE VIEW layout_history AS
SELECT i.gpu_uuid, i.cluster, g.host, g.gpu_model, i.gi_id, i.profile, i.slices, i.total_slices,
       CASE WHEN i.namespace = '' AND i.pod = '' THEN '(unassigned)' ELSE i.namespace END AS namespace,
       CASE WHEN i.namespace = '' AND i.pod = '' THEN '(unassigned)' ELSE i.pod END       AS pod,
       i.container, i.valid_from, i.valid_to, i.placement_start
FROM instance_intervals i
LEFT JOIN gpus g ON g.gpu_uuid = i.gpu_uuid;
