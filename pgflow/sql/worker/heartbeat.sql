-- Worker $1 holds tasks $2 ([[task_id, token], ...]); extend their leases to
-- at least $3 seconds from now. Rows: the tasks it no longer holds.
select task_id from pgflow.heartbeat($1::uuid, $2::jsonb, $3::numeric) as task_id
