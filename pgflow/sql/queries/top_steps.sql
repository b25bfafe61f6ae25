-- Per flow and step, over the tasks of the latest %(runs)s runs started within
-- the window (seconds), so the cost stays bounded however busy the system
-- is: tasks completed, the duration of their last attempt (p50, p95, max, in
-- seconds), failed attempts (retried or not) and tasks failed for good.
with recent as (
    select run_id from pgflow.runs
    where started_at >= now() - %(window)s * interval '1 second'
    order by started_at desc
    limit %(runs)s
)
select t.flow_slug, t.step_slug,
       count(*) filter (where t.status = 'completed')::int as completed,
       (percentile_cont(0.5) within group (order by extract(epoch from t.completed_at - t.started_at))
           filter (where t.status = 'completed'))::float8 as p50_s,
       (percentile_cont(0.95) within group (order by extract(epoch from t.completed_at - t.started_at))
           filter (where t.status = 'completed'))::float8 as p95_s,
       (max(extract(epoch from t.completed_at - t.started_at))
           filter (where t.status = 'completed'))::float8 as max_s,
       coalesce(sum(jsonb_array_length(t.errors)), 0)::int as failed_attempts,
       count(*) filter (where t.status = 'failed')::int as failed_tasks
from recent
join pgflow.tasks t on t.run_id = recent.run_id
group by t.flow_slug, t.step_slug
