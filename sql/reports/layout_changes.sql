-- Layout change events of one GPU in [start, end).
-- Params: gpu (text), start, end (timestamptz).
SELECT ts, event, gi_id, profile_before, profile_after, tenant_before, tenant_after
FROM layout_changes
WHERE gpu_uuid = %(gpu)s::text AND ts >= %(start)s AND ts < %(end)s
ORDER BY ts, gi_id NULLS FIRST, event
