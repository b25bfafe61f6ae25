-- The tasks of one run in flow order: status, attempts, the error of each
-- failed attempt (tasks.errors: one {attempt, error, at} per failure) and
-- the duration of the last attempt.
select t.step_slug, t.task_index, t.status, t.attempt, t.error, t.errors,
       t.queued_at, t.started_at, t.completed_at, t.failed_at,
       extract(epoch from coalesce(t.completed_at, t.failed_at) - t.started_at)::float8
           as duration_s,
       w.hostname, w.pid
from pgflow.task_states t
left join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
left join pgflow.workers w on w.worker_id = t.worker_id
where t.run_id = %(run_id)s
order by s.step_index nulls last, t.step_slug, t.task_index
