-- The step states of one run in flow order, with the highest attempt used by
-- any of each step's tasks, the error of every failed attempt of its
-- tasks, oldest first: the tasks.errors entries (attempt, error, at, type,
-- traceback, and retry for attempts made before the run was retried) with
-- their task_index, and why and when a skipped step was skipped.
select ss.step_slug, ss.status, ss.output, ss.error,
       coalesce(a.attempts, 0) as attempts, ss.task_count,
       ss.started_at, ss.completed_at, ss.failed_at,
       coalesce(e.errors, '[]'::jsonb) as errors, ss.skip_reason, ss.skipped_at
from pgflow.step_states ss
left join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
left join lateral (
    select max(t.attempt) as attempts
    from pgflow.task_states t
    where t.run_id = ss.run_id and t.step_slug = ss.step_slug
) a on true
left join lateral (
    select jsonb_agg(x.entry || jsonb_build_object('task_index', t.task_index)
                     order by (x.entry ->> 'at')::timestamptz, t.task_index) as errors
    from pgflow.tasks t
    cross join lateral jsonb_array_elements(t.errors) as x(entry)
    where t.run_id = ss.run_id and t.step_slug = ss.step_slug
) e on true
where ss.run_id = %(run_id)s
order by s.step_index nulls last, ss.step_slug
