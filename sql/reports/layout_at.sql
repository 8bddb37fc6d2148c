-- The MIG layout of one GPU at one instant (as-of), from instance_intervals.
-- Params: gpu (text), at (timestamptz).
SELECT gi_id, profile, slices, total_slices, namespace, pod, container, valid_from, valid_to
FROM layout_at(%(gpu)s::text, %(at)s::timestamptz)
ORDER BY gi_id
