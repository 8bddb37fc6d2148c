-- The fleet's capacity (every GPU's metered + unmetered hours: the time it existed, from its
-- first covered second to its last snapshot) over a bucket range, from the daily rows: what
-- the chargeback lines must add up to.
-- Params: start, end (timestamptz), cluster (text or NULL).
SELECT coalesce(sum(capacity_gpu_hours), 0) AS physical_gpu_hours
FROM gpu_usage_hours_1d
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
