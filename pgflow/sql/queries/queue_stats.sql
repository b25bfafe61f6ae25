-- Ready tasks per flow and the age of the oldest one (seconds since it became
-- visible), read through the partial index on claimable tasks.
select flow_slug, count(*)::int as depth,
       extract(epoch from now() - min(visible_at))::float8 as oldest_age
from pgflow.tasks
where status = 'queued' and visible_at <= now() and flow_slug = any (%(flows)s::text[])
group by flow_slug
