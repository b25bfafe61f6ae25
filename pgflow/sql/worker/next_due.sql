-- Seconds until the earliest queued task of flows $1 becomes visible, on the
-- database clock (<= 0: one is visible now; null: none is queued).
select extract(epoch from pgflow.next_visible_at($1::text[]) - now())::float8 as seconds
