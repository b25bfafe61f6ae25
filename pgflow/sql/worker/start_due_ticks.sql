-- $1: [{"flow": slug, "cron": expr, "timezone": tz, "ticks": [timestamp, ...]}, ...]
-- Rows: each flow's watermark (epoch seconds; null: not this schedule), the
-- runs started, and the error that kept them from starting.
select flow_slug, extract(epoch from last_tick_at)::float8 as last_tick_at, started, error
from pgflow.start_due_ticks($1::jsonb)
