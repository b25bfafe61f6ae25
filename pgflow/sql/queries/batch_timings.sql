-- Per-step timings of a batch of runs, in flow order: tasks, attempts,
-- failed attempts, and the duration of each completed task's last attempt
-- (claim to completion), in seconds, and the first error seen, as an example.
select t.step_slug,
       count(*)::int as tasks,
       sum(t.attempt)::int as attempts,
       coalesce(sum(jsonb_array_length(t.errors)), 0)::int as failed_attempts,
       (percentile_cont(0.5) within group (order by extract(epoch from t.completed_at - t.started_at))
           filter (where t.status = 'completed'))::float8 as p50_s,
       max(extract(epoch from t.completed_at - t.started_at))::float8 as max_s,
       (array_agg(t.errors -> 0 ->> 'error' order by t.task_id)
           filter (where jsonb_array_length(t.errors) > 0))[1] as example_error
from pgflow.tasks t
left join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
where t.run_id = any (%(run_ids)s::uuid[])
group by t.step_slug, s.step_index
order by s.step_index nulls last, t.step_slug
