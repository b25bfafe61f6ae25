-- Supervisors (and drain() callers): live ones (a heartbeat within three
-- intervals), then those stopped or silent within the recent window. What a
-- supervisor reports with its heartbeat (executors, buffered tasks, attempts
-- finished and their rate) is null for drain() callers.
select worker_id, hostname, pid, flows, started_at, last_heartbeat_at, stopped_at,
       case when stopped_at is not null then 'stopped'
            when last_heartbeat_at >= now() - 3 * %(interval)s * interval '1 second' then 'live'
            else 'silent' end as state,
       extract(epoch from now() - last_heartbeat_at)::float8 as heartbeat_age_s,
       (select count(*) from pgflow.queue q
        where q.worker_id = w.worker_id and q.lease_expires_at is not null)::int as tasks_held,
       executors, executors_busy, tasks_buffered, attempts_succeeded, attempts_failed,
       attempts_per_second
from pgflow.workers w
where (stopped_at is null and last_heartbeat_at >= now() - 3 * %(interval)s * interval '1 second')
   or coalesce(stopped_at, last_heartbeat_at) >= now() - %(recent)s * interval '1 second'
order by (stopped_at is null and last_heartbeat_at >= now() - 3 * %(interval)s * interval '1 second')
         desc, coalesce(stopped_at, last_heartbeat_at) desc
