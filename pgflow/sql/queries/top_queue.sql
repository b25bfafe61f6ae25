-- Unfinished tasks per flow: ready to claim now, scheduled for later (retry
-- backoff, start delay), held by a claim (running or buffered), and how long
-- the oldest ready one has waited, in seconds.
select flow_slug,
       count(*) filter (where lease_expires_at is null and visible_at <= now())::int as ready,
       count(*) filter (where lease_expires_at is null and visible_at > now())::int as delayed,
       count(*) filter (where lease_expires_at is not null)::int as running,
       coalesce(extract(epoch from now() - min(visible_at)
                        filter (where lease_expires_at is null and visible_at <= now())),
                0)::float8 as oldest_ready_s
from pgflow.queue
group by flow_slug
order by flow_slug
