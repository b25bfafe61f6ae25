-- Wall time of the finished runs of a batch, in seconds.
select count(*)::int as runs,
       (percentile_cont(0.5) within group (order by extract(epoch from
           coalesce(completed_at, failed_at, cancelled_at) - started_at)))::float8 as p50_s,
       max(extract(epoch from coalesce(completed_at, failed_at, cancelled_at) - started_at))::float8
           as max_s,
       extract(epoch from max(coalesce(completed_at, failed_at, cancelled_at)) - min(started_at))::float8
           as span_s
from pgflow.runs
where run_id = any (%(run_ids)s::uuid[]) and status <> 'started'
