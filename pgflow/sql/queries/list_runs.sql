-- Runs, newest first, optionally of one flow, in one status, started since a
-- time, carrying every given tag (containment, through the runs_by_tags index).
select run_id, flow_slug, status, error, failed_step, started_at, completed_at, failed_at,
       cancelled_at,
       extract(epoch from coalesce(completed_at, failed_at, cancelled_at) - started_at)::float8
           as duration_s,
       key, coalesce(tags, '{}') as tags
from pgflow.runs
where (%(flow)s::text is null or flow_slug = %(flow)s::text)
  and (%(status)s::text is null or status = %(status)s::text)
  and (%(since)s::timestamptz is null or started_at >= %(since)s::timestamptz)
  and (%(tags)s::jsonb is null or tags @> %(tags)s::jsonb)
order by started_at desc, run_id
limit %(limit)s
