-- Claim up to $3 visible tasks of flows $2 for worker $1, leased for their
-- timeout plus $4 seconds. The input comes as JSON text: a supervisor puts it
-- in the executor's frame without decoding it.
--
-- flow_input: for a task whose input is something else (a dependent step's
-- map of outputs, a map task's element), the run's input as JSON text when it
-- is at most 4,000 bytes, so that reading ctx.flow_input needs no connection
-- of the executor's own; null otherwise. Each run's input is read and made
-- text once per claim, however many of its tasks the claim holds (a map's),
-- and pg_column_size (no detoasting) keeps larger ones from being read at all.
with claimed as materialized (
    select * from pgflow.claim_tasks($1::uuid, $2::text[], $3::int, $4::numeric)
                  with ordinality as c(task_id, token, run_id, flow_slug, step_slug, task_index,
                                       attempt, timeout_ms, input, input_is_flow_input,
                                       waited_s, claim_order)
), small_inputs as materialized (
    -- A subquery per run: a primary-key lookup whatever the statistics say.
    select d.run_id,
           (select r.input::text from pgflow.runs r
            where r.run_id = d.run_id and pg_column_size(r.input) <= 4000) as text
    from (select distinct run_id from claimed where not input_is_flow_input) d
)
select c.task_id, c.token, c.run_id, c.flow_slug, c.step_slug, c.task_index, c.attempt,
       c.timeout_ms, c.input::text as input, c.input_is_flow_input, c.waited_s,
       case when not c.input_is_flow_input and octet_length(s.text) <= 4000 then s.text
       end as flow_input
from claimed c
left join small_inputs s on s.run_id = c.run_id
order by c.claim_order
