-- Ready tasks per flow of $1 and the age of the oldest one (seconds since it
-- became visible), read through the queue's claimable index, one flow at a time.
select f.slug as flow_slug, count(*)::int as depth,
       extract(epoch from now() - min(q.visible_at))::float8 as oldest_age
from unnest($1::text[]) as f(slug)
join pgflow.queue q
  on q.flow_slug = f.slug and q.lease_expires_at is null and q.visible_at <= now()
group by f.slug
