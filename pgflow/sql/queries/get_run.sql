-- One run, as Client.get_run returns it.
select run_id, flow_slug, status, input, output, error, failed_step,
       started_at, completed_at, failed_at, cancelled_at, retry_count, retried_at,
       key, coalesce(tags, '{}') as tags
from pgflow.runs
where run_id = %(run_id)s
