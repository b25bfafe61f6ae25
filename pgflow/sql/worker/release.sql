-- $1: [[task_id, token], ...]
select task_id from pgflow.release_tasks($1::jsonb) as task_id
