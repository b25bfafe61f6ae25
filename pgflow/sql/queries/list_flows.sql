-- Registered flows with their options and how many runs they have by status.
select f.flow_slug, f.max_attempts, f.base_delay::float8 as base_delay,
       f.timeout::float8 as timeout, f.created_at, f.updated_at,
       coalesce((select jsonb_object_agg(r.status, r.n)
                 from (select status, count(*) as n from pgflow.runs
                       where runs.flow_slug = f.flow_slug group by status) r), '{}') as runs
from pgflow.flows f
order by f.flow_slug
