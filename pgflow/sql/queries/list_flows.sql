-- Registered flows with their options, schedule (if any) and how many runs
-- they have by status.
select f.flow_slug, f.max_attempts, f.base_delay::float8 as base_delay,
       f.timeout::float8 as timeout, f.max_concurrency, f.created_at, f.updated_at,
       coalesce((select jsonb_object_agg(r.status, r.n)
                 from (select status, count(*) as n from pgflow.runs
                       where runs.flow_slug = f.flow_slug group by status) r), '{}') as runs,
       sc.cron, sc.timezone, sc.input as schedule_input, sc.catch_up, sc.last_tick_at
from pgflow.flows f
left join pgflow.schedules sc on sc.flow_slug = f.flow_slug
order by f.flow_slug
