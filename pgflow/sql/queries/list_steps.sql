-- The steps of every registered flow, in flow order, with their dependencies,
-- their own options (null: the flow's value) and their conditions.
select s.flow_slug, s.step_slug, s.step_type, s.step_index,
       coalesce((select array_agg(d.dep_slug order by d.dep_slug) from pgflow.deps d
                 where d.flow_slug = s.flow_slug and d.step_slug = s.step_slug), '{}')
           as depends_on,
       s.max_attempts, s.base_delay::float8 as base_delay, s.timeout::float8 as timeout,
       s.start_delay::float8 as start_delay, s.max_concurrency,
       s.if_pattern, s.if_not_pattern, s.when_unmet, s.when_exhausted
from pgflow.steps s
order by s.flow_slug, s.step_index
