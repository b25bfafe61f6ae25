-- Runs started within the window (seconds), by status, through the index on
-- started_at; and how many of them finished within the last minute.
select status, count(*)::int as runs,
       count(*) filter (where coalesce(completed_at, failed_at, cancelled_at)
                              >= now() - interval '1 minute')::int as finished_last_minute
from pgflow.runs
where started_at >= now() - %(window)s * interval '1 second'
group by status
