-- Runs, newest first, optionally of one flow, in one status, started since a time.
select run_id, flow_slug, status, error, failed_step, started_at, completed_at, failed_at,
       cancelled_at,
       extract(epoch from coalesce(completed_at, failed_at, cancelled_at) - started_at)::float8
           as duration_s
from pgflow.runs
where (%(flow)s::text is null or flow_slug = %(flow)s::text)
  and (%(status)s::text is null or status = %(status)s::text)
  and (%(since)s::timestamptz is null or started_at >= %(since)s::timestamptz)
order by started_at desc, run_id
limit %(limit)s
