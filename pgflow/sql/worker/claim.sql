-- Claim up to $3 visible tasks of flows $2 for worker $1, leased for their
-- timeout plus $4 seconds. The input comes as JSON text: a supervisor puts it
-- in the executor's frame without decoding it.
select task_id, token, run_id, flow_slug, step_slug, task_index, attempt, timeout_ms,
       input::text as input, input_is_flow_input, waited_s
from pgflow.claim_tasks($1::uuid, $2::text[], $3::int, $4::numeric)
