-- $1: [[task_id, token, output], ...]
select task_id, deferred, run_status, run_seconds from pgflow.complete_tasks($1::jsonb)
