-- Operating runs: retry a failed or cancelled run in place, prune finished
-- runs in small batches (by hand, or by whichever supervisor wins a tick),
-- tell supervisors to kill the handlers of cancelled tasks, and let
-- supervisors report their executors for `pgflow top`.
--
-- Notifications added:
--   pgflow_cancel  payload comma-separated run ids whose tasks were held by a
--                  claim when they were cancelled (run cancelled, failed or
--                  replaced): supervisors kill the executors running them.
--                  Chunks of 100 ids, well under NOTIFY's 8000 bytes.

-- ---------------------------------------------------------------------------
-- tables
-- ---------------------------------------------------------------------------

-- How many times a run was retried, and when last. started_at stays the
-- first start (listing and pruning go by it).
alter table pgflow.runs
    add column retry_count integer not null default 0,
    add column retried_at timestamptz;

-- When the flow's shape last changed (a replace), so a run started under the
-- old shape is not retried under the new one. Null: not since this
-- migration (older replaces are caught by comparing step sets).
alter table pgflow.flows add column shape_changed_at timestamptz;

create function pgflow._note_shape_change() returns trigger
language plpgsql as $$
begin
    -- clock_timestamp(), not now(): the replace holds the flow's lock from
    -- here until it commits, so every run started under the old shape began
    -- before this instant. (A start that began before it but waited for the
    -- lock runs the new shape and is refused a retry: conservative.)
    new.shape_changed_at := clock_timestamp();
    return new;
end;
$$;

create trigger flows_shape_changed
    before update of shape on pgflow.flows
    for each row when (old.shape is distinct from new.shape)
    execute function pgflow._note_shape_change();

-- What a supervisor reports with each heartbeat, for `pgflow top` and
-- `pgflow workers`: its executors, the tasks it buffers, the attempts it
-- finished since it started, and the rate over its last report.
alter table pgflow.workers
    add column executors integer,
    add column executors_busy integer,
    add column tasks_buffered integer,
    add column attempts_succeeded bigint,
    add column attempts_failed bigint,
    add column attempts_per_second double precision,
    add column stats_at timestamptz;

-- Periodic chores shared by every supervisor. The row of a chore names the
-- tick (floor(epoch / tick length)) last claimed and who claimed it: the
-- first supervisor to come by in a new tick takes it, and only that one
-- works on it during the tick (continuing while a backlog remains). No lock
-- outlives a transaction, so a supervisor that dies holds nothing.
create table pgflow.chores (
    chore     text primary key,
    tick      bigint not null default 0,
    worker_id uuid,
    ran_at    timestamptz
);
insert into pgflow.chores (chore) values ('retention');

-- ---------------------------------------------------------------------------
-- cancelling stops running handlers
-- ---------------------------------------------------------------------------

create function pgflow._notify_cancel(p_run_ids uuid[]) returns void
language plpgsql as $$
begin
    perform pg_notify('pgflow_cancel', string_agg(id::text, ',' order by id))
    from (select id, (row_number() over () - 1) / 100 as chunk
          from unnest(p_run_ids) as id) ids
    group by chunk;
end;
$$;

-- Cancel every unfinished task and step state of these runs (the caller
-- holds their run locks): queue rows first, then tasks (lock order). Runs
-- that had a task held by a claim are announced on pgflow_cancel, so the
-- supervisors running those tasks kill their executors; the task's answer,
-- if one still comes, is refused by the fence.
create or replace function pgflow._cancel_unfinished(p_run_ids uuid[]) returns void
language plpgsql as $$
declare
    v_running uuid[];
begin
    with unfinished as (
        delete from pgflow.queue q
        using pgflow.tasks t
        where t.run_id = any (p_run_ids) and t.status = 'queued' and q.task_id = t.task_id
        returning q.task_id, q.attempt, q.worker_id, q.started_at, t.run_id,
                  q.lease_expires_at is not null as held
    ), cancelled as (
        update pgflow.tasks t
        set status = 'cancelled', attempt = u.attempt, worker_id = u.worker_id,
            started_at = u.started_at
        from unfinished u
        where t.task_id = u.task_id
    )
    select array_agg(distinct u.run_id) filter (where u.held) into v_running
    from unfinished u;

    update pgflow.step_states
    set status = 'cancelled'
    where run_id = any (p_run_ids) and status in ('created', 'started');

    if v_running is not null then
        perform pgflow._notify_cancel(v_running);
    end if;
end;
$$;

-- ---------------------------------------------------------------------------
-- retry
-- ---------------------------------------------------------------------------

-- Resume a failed or cancelled run in place, under the same id: completed
-- steps and tasks keep their outputs; every task that failed or was
-- cancelled is queued again with its attempts counted from zero (the errors
-- of earlier attempts stay in tasks.errors, each tagged with "retry": how
-- many retries the run had had when it ran); failed and cancelled steps are
-- started again (those with tasks) or wait for their dependencies as new
-- (those without), and steps whose dependencies are all done start now.
-- The run is 'started' again; it may fail again at once (a map step whose
-- source is still not an array). Refused, with a clear error: an unknown
-- run (PF004), a run still started or completed, a run of a flow whose
-- shape was replaced since it started (PF002).
create function pgflow.retry_run(p_run_id uuid) returns pgflow.runs
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
    v_flow_slug text;
    v_run pgflow.runs;
    v_changed timestamptz;
    v_odd text;
    v_requeued integer;
begin
    select r.flow_slug into v_flow_slug from pgflow.runs r where r.run_id = p_run_id;
    if found then
        -- Like a start (shared with starts; a replace takes it exclusively),
        -- and before the run's lock, in the order a replace takes them.
        perform pg_advisory_xact_lock_shared(hashtext('pgflow.flow'), hashtext(v_flow_slug));
        select * into v_run from pgflow.runs r where r.run_id = p_run_id for no key update;
    end if;
    if v_run.run_id is null then
        raise exception using
            errcode = 'PF004',
            message = format('Run %s does not exist', p_run_id),
            hint = 'It may have been pruned; list runs with `pgflow runs`.';
    end if;
    if v_run.status = 'started' then
        raise exception using
            errcode = 'PF002',
            message = format('Run %s of flow %L is still running (started); only a failed or '
                             'cancelled run can be retried', p_run_id, v_run.flow_slug),
            hint = 'Wait for it to finish, or cancel it first.';
    end if;
    if v_run.status = 'completed' then
        raise exception using
            errcode = 'PF002',
            message = format('Run %s of flow %L completed; there is nothing to retry',
                             p_run_id, v_run.flow_slug),
            hint = 'Start a new run with the same input to run it again.';
    end if;

    select f.shape_changed_at into v_changed from pgflow.flows f where f.flow_slug = v_run.flow_slug;
    select coalesce(ss.step_slug, s.step_slug) into v_odd
    from (select x.step_slug from pgflow.step_states x where x.run_id = p_run_id) ss
    full join (select y.step_slug from pgflow.steps y where y.flow_slug = v_run.flow_slug) s
           on s.step_slug = ss.step_slug
    where ss.step_slug is null or s.step_slug is null
    limit 1;
    if v_changed > v_run.started_at or v_odd is not null then
        raise exception using
            errcode = 'PF002',
            message = format('Run %s cannot be retried: flow %L was replaced by a new shape%s '
                             'after the run started', p_run_id, v_run.flow_slug,
                             coalesce(' at ' || v_changed::text, '')),
            hint = 'Start a new run of the new shape with the run''s input.';
    end if;

    -- Earlier attempts' errors: tagged with the try they belong to.
    update pgflow.tasks t
    set errors = (select jsonb_agg(case when e ? 'retry' then e
                                        else e || jsonb_build_object('retry', v_run.retry_count) end
                                   order by i)
                  from jsonb_array_elements(t.errors) with ordinality as x(e, i))
    where t.run_id = p_run_id and t.errors <> '[]'::jsonb;

    -- Queue rows first, then tasks (lock order); attempts start again at 0.
    with again as (
        select t.task_id, t.flow_slug from pgflow.tasks t
        where t.run_id = p_run_id and t.status in ('failed', 'cancelled')
    ), queued as (
        insert into pgflow.queue (task_id, flow_slug, visible_at)
        select again.task_id, again.flow_slug, now() from again
        returning task_id
    ), requeued as (
        update pgflow.tasks t
        set status = 'queued', attempt = 0, error = null, output = null, visible_at = now(),
            queued_at = now(), worker_id = null, started_at = null, completed_at = null,
            failed_at = null
        from queued
        where t.task_id = queued.task_id
        returning t.task_id
    )
    select count(*)::int into v_requeued from requeued;

    -- A step that had tasks goes on with them; one that had none waits for
    -- its dependencies as if new (_advance below starts it if they are done).
    update pgflow.step_states ss
    set status = case when ss.task_count is null then 'created' else 'started' end,
        error = null, failed_at = null,
        started_at = case when ss.task_count is null then null else ss.started_at end
    where ss.run_id = p_run_id and ss.status in ('failed', 'cancelled');

    update pgflow.runs r
    set status = 'started', output = null, error = null, failed_step = null,
        completed_at = null, failed_at = null, cancelled_at = null,
        retry_count = r.retry_count + 1, retried_at = now()
    where r.run_id = p_run_id;

    if v_requeued > 0 then
        perform pg_notify('pgflow_tasks', v_run.flow_slug);
    end if;
    perform pgflow._advance(array[p_run_id]);

    select * into v_run from pgflow.runs r where r.run_id = p_run_id;
    return v_run;
end;
$$;

-- ---------------------------------------------------------------------------
-- retention
-- ---------------------------------------------------------------------------

-- Delete up to p_limit finished runs (completed, failed or cancelled) that
-- finished before p_cutoff, oldest first, with their step states and tasks.
-- Runs another transaction holds (a retry, another pruner) are skipped, not
-- waited for. One call is one small transaction: call it again until it
-- returns fewer than p_limit runs. Returns how many runs and tasks went.
create function pgflow.prune_runs(p_cutoff timestamptz, p_limit integer default 200)
returns table (runs integer, tasks integer)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
    v_ids uuid[];
    v_tasks integer;
begin
    if p_cutoff is null or p_limit is null or p_limit < 1 then
        raise exception using
            errcode = 'PF002',
            message = format('prune_runs(%L, %L): give a cutoff time and a limit of at least 1',
                             p_cutoff, p_limit);
    end if;

    -- Runs finish after they start, so walking runs by start time, oldest
    -- first, reaches every run that finished before the cutoff.
    select array_agg(c.run_id) into v_ids
    from (select r.run_id from pgflow.runs r
          where r.started_at < p_cutoff and r.status <> 'started'
            and coalesce(r.completed_at, r.failed_at, r.cancelled_at) < p_cutoff
          order by r.started_at
          limit p_limit
          for update of r skip locked) c;
    if v_ids is null then
        return query select 0, 0;
        return;
    end if;

    -- Dependents first, so the cascades behind the foreign keys find nothing.
    -- A finished run has no queue rows; none is left behind if one had.
    delete from pgflow.queue q
    using pgflow.tasks t
    where t.run_id = any (v_ids) and q.task_id = t.task_id;
    delete from pgflow.tasks t where t.run_id = any (v_ids);
    get diagnostics v_tasks = row_count;
    delete from pgflow.step_states ss where ss.run_id = any (v_ids);
    delete from pgflow.runs r where r.run_id = any (v_ids);
    return query select cardinality(v_ids), v_tasks;
end;
$$;

-- The same choice of runs, counted (for a dry run).
create function pgflow.prunable_runs(p_cutoff timestamptz)
returns table (runs bigint, tasks bigint)
language sql stable
set enable_seqscan = off
as $$
    select count(*), coalesce(sum((select count(*) from pgflow.tasks t
                                   where t.run_id = r.run_id)), 0)::bigint
    from pgflow.runs r
    where r.started_at < p_cutoff and r.status <> 'started'
      and coalesce(r.completed_at, r.failed_at, r.cancelled_at) < p_cutoff;
$$;

-- A supervisor's retention chore: prune one batch of runs that finished
-- more than p_older_than seconds ago, if this worker holds the current tick
-- (p_tick seconds long) or is the first to come by in it. Supervisors that
-- lose (another holds the tick, or is pruning right now) prune nothing.
-- Returns whether it ran, and how many runs and tasks went.
create function pgflow.retention_tick(p_worker_id uuid, p_older_than numeric,
                                      p_limit integer, p_tick numeric)
returns table (ran boolean, runs integer, tasks integer)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
    v_tick bigint := floor(extract(epoch from now()) / p_tick);
    v_chore pgflow.chores;
begin
    select * into v_chore from pgflow.chores c where c.chore = 'retention'
    for update skip locked;
    if not found or v_chore.tick > v_tick
       or (v_chore.tick = v_tick and v_chore.worker_id is distinct from p_worker_id) then
        return query select false, 0, 0;
        return;
    end if;
    update pgflow.chores c set tick = v_tick, worker_id = p_worker_id, ran_at = now()
    where c.chore = 'retention';
    return query
    select true, p.runs, p.tasks
    from pgflow.prune_runs(now() - p_older_than * interval '1 second', p_limit) p;
end;
$$;

-- ---------------------------------------------------------------------------
-- workers
-- ---------------------------------------------------------------------------

-- What a supervisor reports with its heartbeat (see the columns above).
-- attempts_per_second is computed here: the attempts finished since the
-- previous report (or since the worker registered) over the time between.
create function pgflow.report_worker(
    p_worker_id uuid, p_executors integer, p_busy integer, p_buffered integer,
    p_succeeded bigint, p_failed bigint
) returns void
language sql
set plan_cache_mode = force_generic_plan
as $$
    update pgflow.workers w
    set executors = p_executors, executors_busy = p_busy, tasks_buffered = p_buffered,
        attempts_per_second = case
            when now() > coalesce(w.stats_at, w.started_at)
                 and p_succeeded + p_failed >= coalesce(w.attempts_succeeded, 0)
                                                + coalesce(w.attempts_failed, 0)
            then (p_succeeded + p_failed - coalesce(w.attempts_succeeded, 0)
                  - coalesce(w.attempts_failed, 0))
                 / extract(epoch from now() - coalesce(w.stats_at, w.started_at))::float8
        end,
        attempts_succeeded = p_succeeded, attempts_failed = p_failed, stats_at = now()
    where w.worker_id = p_worker_id;
$$;
