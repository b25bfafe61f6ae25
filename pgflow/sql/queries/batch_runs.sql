-- Runs of a batch by status.
select status, count(*)::int as runs
from pgflow.runs
where run_id = any (%(run_ids)s::uuid[])
group by status
