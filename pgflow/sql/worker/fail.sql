-- $1: [[task_id, token, error, details], ...]
select task_id, retry, deferred, run_status, run_seconds from pgflow.fail_tasks($1::jsonb)
