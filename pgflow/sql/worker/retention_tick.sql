-- Worker $1's retention chore: if it holds (or is first to take) the current
-- tick of $4 seconds, prune up to $3 runs that finished more than $2 seconds ago.
select ran, runs, tasks from pgflow.retention_tick($1::uuid, $2::numeric, $3::int, $4::numeric)
