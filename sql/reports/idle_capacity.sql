-- Allocated-but-unused slice-hours per tenant and GPU over [start, end), most idle first.
-- Params: start, end (timestamptz), cluster (text or NULL), top (integer).
SELECT rank() OVER (ORDER BY sum(idle_slice_hours) DESC)                        AS rank,
       namespace, pod, gpu_uuid, gpu_model,
       sum(allocated_slice_hours)                                               AS allocated_slice_hours,
       sum(idle_slice_hours)                                                    AS idle_slice_hours,
       100.0 * sum(idle_slice_hours) / NULLIF(sum(measured_slice_hours), 0)     AS idle_pct,
       sum(idle_cost)                                                           AS idle_cost,
       min(currency)                                                            AS currency
FROM idle_capacity_daily
WHERE bucket >= %(start)s AND bucket < %(end)s
  AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s::text)
GROUP BY namespace, pod, gpu_uuid, gpu_model
ORDER BY sum(idle_slice_hours) DESC, namespace, pod, gpu_uuid
LIMIT %(top)s
