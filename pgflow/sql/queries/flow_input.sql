-- The flow input of one run, for ctx.flow_input when the claim did not carry it.
select input from pgflow.runs where run_id = %(run_id)s
