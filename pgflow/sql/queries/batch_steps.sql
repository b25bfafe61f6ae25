-- Progress of a batch of runs, per step in flow order: tasks by status and
-- failed attempts so far (tasks.errors holds one entry per failed attempt).
select t.step_slug,
       count(*) filter (where t.status = 'queued')::int as queued,
       count(*) filter (where t.status = 'started')::int as running,
       count(*) filter (where t.status = 'completed')::int as completed,
       count(*) filter (where t.status in ('failed', 'cancelled'))::int as failed,
       coalesce(sum(jsonb_array_length(t.errors)), 0)::int as failed_attempts
from pgflow.task_states t
left join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
where t.run_id = any (%(run_ids)s::uuid[])
group by t.step_slug, s.step_index
order by s.step_index nulls last, t.step_slug
