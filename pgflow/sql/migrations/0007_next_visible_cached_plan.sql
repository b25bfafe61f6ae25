-- next_visible_at as PL/pgSQL, so its plan is cached per session. As a SQL
-- function with SET clauses (which keep it from being inlined) Postgres 15
-- planned its query, _lanes included, on every call: 0.41 ms of a
-- supervisor's round after each claim that came back short, against 0.16 ms
-- before 0004 made it count lanes. Same result as 0004's.

create or replace function pgflow.next_visible_at(p_flows text[]) returns timestamptz
language plpgsql stable
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
begin
    return (
        select min(n.visible_at)
        from pgflow._lanes(p_flows, 1, p_flows) l
        cross join lateral (
            select q.visible_at from pgflow.queue q
            where q.flow_slug = l.flow_slug and q.lane = l.lane and q.lease_expires_at is null
            order by q.visible_at
            limit 1
        ) n
        where l.room > 0);
end;
$$;
