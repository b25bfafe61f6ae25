-- The step states of one run in flow order, with the highest attempt used by
-- any of each step's tasks, and why and when a skipped step was skipped.
select ss.step_slug, ss.status, ss.output, ss.error,
       coalesce(a.attempts, 0) as attempts, ss.task_count,
       ss.started_at, ss.completed_at, ss.failed_at, ss.skip_reason, ss.skipped_at
from pgflow.step_states ss
left join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
left join lateral (
    select max(t.attempt) as attempts
    from pgflow.task_states t
    where t.run_id = ss.run_id and t.step_slug = ss.step_slug
) a on true
where ss.run_id = %(run_id)s
order by s.step_index nulls last, ss.step_slug
