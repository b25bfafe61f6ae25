-- Worker $1 reports its executors ($2 in all, $3 busy), the tasks it buffers
-- ($4) and the attempts it finished since it started ($5 succeeded, $6 failed).
select pgflow.report_worker($1::uuid, $2::int, $3::int, $4::int, $5::bigint, $6::bigint)
