-- Instance-hours per cluster, GPU model and profile over a bucket range (MIG instances only):
-- which profile tenants ask for most, for the stranded-capacity split. Reader view
-- instance_utilization_1d (007), filtered on `bucket`.
-- Params: start, end (timestamptz), cluster (text or NULL).
SELECT cluster, gpu_model, profile, max(slices) AS slices, sum(hours) AS instance_hours
FROM instance_utilization_1d
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
  AND gi_id >= 0
GROUP BY cluster, gpu_model, profile
ORDER BY cluster, gpu_model, sum(hours) DESC, profile
