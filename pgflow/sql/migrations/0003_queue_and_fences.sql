-- pgflow engine, second version: a narrow queue table, claim tokens, bounded
-- options, one lock order, and batch starts.
--
-- Why (measured, see docs/design.md):
-- * Claimable and held work used to be partial indexes on pgflow.tasks keyed
--   on status, so no update of a task could be HOT, every state change wrote
--   three or four index entries, and with stale statistics a generic plan
--   used the "started" index to join every held task against every answer
--   (5,000 held tasks made completions 8x slower). Unfinished tasks now have a
--   row in pgflow.queue (task id, flow, when visible, lease); pgflow.tasks has
--   no index that mentions a column the engine updates, so its updates are HOT.
-- * The fence was the attempt number, which release_tasks decremented and a
--   claim lost in a crash (claims commit asynchronously) could hand out again,
--   so a stale answer could be accepted. Each claim now draws a random 63-bit
--   token; an answer must carry the token of the claim that holds the task.
-- * Options had no upper bounds: one step with timeout 3e6 s broke every claim
--   that picked its task. They are bounded here and in the Flow DSL.
--
-- Lock order, everywhere: runs (in run_id order), then queue rows, then task
-- rows. Claims and heartbeats take no run lock, never wait for a queue row
-- (SKIP LOCKED) and touch only rows whose queue row they hold.
--
-- Upgrading: stop every supervisor first. Tasks held by a supervisor of the
-- old version keep their lease and are requeued when it expires.

-- ---------------------------------------------------------------------------
-- tables
-- ---------------------------------------------------------------------------

-- One row per unfinished task (queued, or held by a claim). Narrow and
-- short-lived: inserted with the task, leased by a claim, deleted when the
-- task completes, fails for good or is cancelled. While a claim holds the
-- task its state lives here (token, attempt, worker, started_at), so a claim
-- writes this row only; pgflow.tasks is written when an attempt ends.
create table pgflow.queue (
    -- Deleting a run (by hand, or pruning) deletes its tasks and with them
    -- their queue rows: an orphan row would be claimed and skipped forever.
    task_id          bigint primary key references pgflow.tasks on delete cascade,
    flow_slug        text not null,
    visible_at       timestamptz not null,
    -- Set by the claim that holds the task (null while queued).
    lease_expires_at timestamptz,
    -- The fence: drawn at random by each claim; an answer must carry it.
    token            bigint,
    -- Attempts started so far, this one included while held.
    attempt          integer not null default 0,
    worker_id        uuid,
    started_at       timestamptz
) with (fillfactor = 50);
-- Claims walk this per flow, oldest first: tasks of flows a supervisor does
-- not serve cost it nothing.
create index queue_claimable on pgflow.queue (flow_slug, visible_at, task_id)
    where lease_expires_at is null;
create index queue_leased on pgflow.queue (lease_expires_at)
    where lease_expires_at is not null;

insert into pgflow.queue (task_id, flow_slug, visible_at, lease_expires_at, token, attempt,
                          worker_id, started_at)
select task_id, flow_slug, visible_at,
       case when status = 'started' then coalesce(lease_expires_at, now()) end,
       case when status = 'started' then 0 end,
       attempt, worker_id, started_at
from pgflow.tasks
where status in ('queued', 'started');

-- pgflow.tasks is the history: 'queued' until an attempt's end is final
-- (completed, failed, cancelled); whether it runs now is in pgflow.queue (and
-- in the view pgflow.task_states).
update pgflow.tasks set status = 'queued' where status = 'started';
alter table pgflow.tasks drop constraint tasks_status_check;
alter table pgflow.tasks add constraint tasks_status_check
    check (status in ('queued', 'completed', 'failed', 'cancelled'));
drop index pgflow.tasks_claimable;
drop index pgflow.tasks_started_lease;
alter table pgflow.tasks drop column lease_expires_at;
-- Room on each page for the next versions of a row, so updates stay HOT and
-- pages are pruned without waiting for vacuum.
alter table pgflow.tasks set (fillfactor = 70);
alter table pgflow.step_states set (fillfactor = 70);
alter table pgflow.runs set (fillfactor = 70);

-- Tasks as they stand now: history joined with what is held. 'started' means
-- a claim holds the task (it may still be buffered by its supervisor).
create view pgflow.task_states as
select t.task_id, t.run_id, t.flow_slug, t.step_slug, t.task_index,
       case when q.lease_expires_at is not null then 'started' else t.status end as status,
       coalesce(q.attempt, t.attempt) as attempt,
       t.input, t.output, t.error, t.errors,
       coalesce(q.visible_at, t.visible_at) as visible_at,
       q.lease_expires_at,
       coalesce(q.worker_id, t.worker_id) as worker_id,
       t.queued_at,
       coalesce(q.started_at, t.started_at) as started_at,
       t.completed_at, t.failed_at
from pgflow.tasks t
left join pgflow.queue q on q.task_id = t.task_id;

-- Listing runs by flow, newest first, without an index on status (which
-- changes, and would make every update of a run a non-HOT one).
drop index pgflow.runs_by_flow_status;
create index runs_by_flow_started on pgflow.runs (flow_slug, started_at);
create index runs_by_started on pgflow.runs (started_at);

-- Bounds: each keeps one bad value from breaking claims or batches for all
-- (the claim computes timeout_ms as an int, a start delay becomes an interval).
update pgflow.flows set max_attempts = least(max_attempts, 1000),
    base_delay = least(base_delay, 3600), timeout = least(timeout, 604800);
update pgflow.steps set max_attempts = least(max_attempts, 1000),
    base_delay = least(base_delay, 3600), timeout = least(timeout, 604800),
    start_delay = least(start_delay, 2592000);
alter table pgflow.flows
    add constraint flows_max_attempts_bound check (max_attempts <= 1000),
    add constraint flows_base_delay_bound check (base_delay <= 3600),
    add constraint flows_timeout_bound check (timeout <= 604800);
alter table pgflow.steps
    add constraint steps_max_attempts_bound check (max_attempts <= 1000),
    add constraint steps_base_delay_bound check (base_delay <= 3600),
    add constraint steps_timeout_bound check (timeout <= 604800),
    add constraint steps_start_delay_bound check (start_delay <= 2592000);

-- Shapes list dependencies sorted: declaring them in another order is not a
-- change of shape.
update pgflow.flows f
set shape = jsonb_build_object('steps', (
    select jsonb_agg(step || jsonb_build_object('depends_on', (
               select coalesce(jsonb_agg(d order by d), '[]'::jsonb)
               from jsonb_array_elements_text(step -> 'depends_on') d))
           order by idx)
    from jsonb_array_elements(f.shape -> 'steps') with ordinality as x(step, idx)));

-- Hot tables: vacuum them by rows changed, not by a fraction of their size
-- (a fraction of a million finished rows is too late for a queue). These
-- settings do nothing while autovacuum is off server-wide; the supervisor
-- warns at start when it is.
alter table pgflow.queue set (autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000, autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000);
alter table pgflow.tasks set (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000, autovacuum_analyze_scale_factor = 0.02);
alter table pgflow.step_states set (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000, autovacuum_analyze_scale_factor = 0.02);
alter table pgflow.runs set (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000, autovacuum_analyze_scale_factor = 0.02);

-- ---------------------------------------------------------------------------
-- functions: the old ones whose signatures change go first
-- ---------------------------------------------------------------------------

drop function pgflow.claim_tasks(uuid, text[], integer, numeric);
drop function pgflow.complete_tasks(bigint[], integer[], jsonb[]);
drop function pgflow.fail_tasks(bigint[], integer[], text[]);
drop function pgflow.release_tasks(bigint[], integer[]);
drop function pgflow.heartbeat(uuid, bigint[], numeric);
drop function pgflow.requeue_expired(integer);
drop function pgflow._answer_report(bigint[], uuid[]);
drop function pgflow._lock_runs_of_tasks(bigint[]);

-- Batches of answers arrive as one JSON array of arrays, [task_id, token, ...]:
-- a supervisor passes handlers' outputs through without decoding them.
-- Refuse anything else with a clear error rather than a null somewhere.
create function pgflow._answers(p_what text, p_answers jsonb, p_width integer)
returns table (task_id bigint, token bigint, a jsonb)
language plpgsql immutable as $$
begin
    if jsonb_typeof(p_answers) is distinct from 'array' or exists (
        select 1 from jsonb_array_elements(p_answers) x
        where jsonb_typeof(x) <> 'array' or jsonb_array_length(x) < p_width
           or jsonb_typeof(x -> 0) <> 'number' or jsonb_typeof(x -> 1) <> 'number'
    ) then
        raise exception using
            errcode = 'PF002',
            message = format('%s: expected a JSON array of [task_id, token%s] arrays', p_what,
                             repeat(', ...', p_width - 2));
    end if;
    return query select (x ->> 0)::bigint, (x ->> 1)::bigint, x
                 from jsonb_array_elements(p_answers) x;
end;
$$;

-- Lock the started runs of these tasks, in run_id order (the first lock
-- every batch that changes a run's bookkeeping takes). With p_skip_locked,
-- runs another transaction holds are left out instead of waited for: their
-- answers are deferred, the others written. Returns the runs locked.
create function pgflow._lock_runs_of_tasks(p_task_ids bigint[], p_skip_locked boolean)
returns uuid[]
language plpgsql as $$
begin
    if p_skip_locked then
        return array(
            select r.run_id from pgflow.runs r
            where r.run_id in (select t.run_id from pgflow.tasks t
                               where t.task_id = any (p_task_ids))
              and r.status = 'started'
            order by r.run_id
            for no key update of r skip locked);
    end if;
    return array(
        select r.run_id from pgflow.runs r
        where r.run_id in (select t.run_id from pgflow.tasks t where t.task_id = any (p_task_ids))
          and r.status = 'started'
        order by r.run_id
        for no key update of r);
end;
$$;

-- Fail runs: the failing step is marked failed, the run records the error and
-- the step, and every unfinished task and step state of the run is
-- cancelled. The caller holds the runs' locks.
create or replace function pgflow._fail_runs(p_run_ids uuid[], p_step_slugs text[], p_errors text[])
returns void
language plpgsql as $$
declare
    v_failed uuid[];
begin
    with failure as (
        select distinct on (run_id) run_id, step_slug, error
        from unnest(p_run_ids, p_step_slugs, p_errors) as f(run_id, step_slug, error)
        order by run_id
    ), failed_runs as (
        update pgflow.runs r
        set status = 'failed', failed_at = now(), error = failure.error,
            failed_step = failure.step_slug
        from failure
        where r.run_id = failure.run_id and r.status = 'started'
        returning r.run_id
    )
    select array_agg(run_id) into v_failed from failed_runs;

    if v_failed is null then
        return;
    end if;

    update pgflow.step_states ss
    set status = 'failed', failed_at = now(), error = f.error
    from unnest(p_run_ids, p_step_slugs, p_errors) as f(run_id, step_slug, error)
    where ss.run_id = f.run_id and ss.step_slug = f.step_slug
      and ss.run_id = any (v_failed) and ss.status in ('created', 'started');

    perform pgflow._cancel_unfinished(v_failed);
    perform pgflow._notify_runs(v_failed);
end;
$$;

-- Cancel every unfinished task and step state of these runs (the caller
-- holds their run locks): queue rows first, then tasks (lock order).
create function pgflow._cancel_unfinished(p_run_ids uuid[]) returns void
language plpgsql as $$
begin
    with unfinished as (
        delete from pgflow.queue q
        using pgflow.tasks t
        where t.run_id = any (p_run_ids) and t.status = 'queued' and q.task_id = t.task_id
        returning q.task_id, q.attempt, q.worker_id, q.started_at
    )
    update pgflow.tasks t
    set status = 'cancelled', attempt = u.attempt, worker_id = u.worker_id,
        started_at = u.started_at
    from unfinished u
    where t.task_id = u.task_id;

    update pgflow.step_states
    set status = 'cancelled'
    where run_id = any (p_run_ids) and status in ('created', 'started');
end;
$$;

-- Start every step of these runs whose dependencies are all done: one task
-- for a single step, one per element for a map step, each with its queue
-- row. A map over an empty array completes at once with [], which may ready
-- further steps, hence the loop (bounded by the depth of the flow).
create or replace function pgflow._advance(p_run_ids uuid[]) returns void
language plpgsql as $$
declare
    v_done_runs uuid[];
    v_done_steps text[];
    v_flows text[];
begin
    loop
        perform pgflow._fail_unmappable(p_run_ids);

        with waiting as materialized (
            -- First, and on its own (MATERIALIZED), so that no statistics can
            -- make the plan start from pgflow.runs: measured, a plan that did
            -- read all 6,667 started runs to ready 100 steps (30 ms, not 5).
            select ss.run_id, ss.flow_slug, ss.step_slug
            from pgflow.step_states ss
            where ss.run_id = any (p_run_ids) and ss.status = 'created'
              and ss.remaining_deps = 0
        ), ready as (
            select ss.run_id, ss.flow_slug, ss.step_slug, s.step_type, s.start_delay,
                   case when s.step_type = 'map'
                        then case when s.deps_count = 0 then r.input else src.output end
                   end as arr
            from waiting ss
            join pgflow.runs r on r.run_id = ss.run_id and r.status = 'started'
            join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
            left join pgflow.deps d
                   on s.step_type = 'map' and d.flow_slug = ss.flow_slug
                  and d.step_slug = ss.step_slug
            left join pgflow.step_states src
                   on src.run_id = ss.run_id and src.step_slug = d.dep_slug
        ), sized as (
            select ready.*,
                   case when step_type = 'single' then 1
                        when jsonb_typeof(arr) = 'array' then jsonb_array_length(arr)
                        else 0 end as n
            from ready
        ), started as (
            update pgflow.step_states ss
            set status = case when sized.n = 0 then 'completed' else 'started' end,
                started_at = now(),
                completed_at = case when sized.n = 0 then now() end,
                output = case when sized.n = 0 then '[]'::jsonb end,
                task_count = sized.n,
                remaining_tasks = sized.n
            from sized
            where ss.run_id = sized.run_id and ss.step_slug = sized.step_slug
              and ss.status = 'created'
            returning ss.run_id, ss.step_slug, ss.status
        ), new_tasks as (
            insert into pgflow.tasks (run_id, flow_slug, step_slug, task_index, input, visible_at)
            select sized.run_id, sized.flow_slug, sized.step_slug, e.task_index, e.element,
                   now() + coalesce(sized.start_delay, 0) * interval '1 second'
            from sized
            cross join lateral (
                select (x.idx - 1)::int as task_index, x.element
                from jsonb_array_elements(sized.arr) with ordinality as x(element, idx)
                where sized.step_type = 'map'
                union all
                select 0, null::jsonb where sized.step_type = 'single'
            ) e
            where sized.n > 0
            returning task_id, flow_slug, visible_at
        ), queued as (
            insert into pgflow.queue (task_id, flow_slug, visible_at)
            select task_id, flow_slug, visible_at from new_tasks
            returning flow_slug
        )
        select (select array_agg(distinct flow_slug) from queued),
               (select array_agg(run_id) from started where status = 'completed'),
               (select array_agg(step_slug) from started where status = 'completed')
        into v_flows, v_done_runs, v_done_steps;

        if v_flows is not null then
            perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
        end if;

        exit when v_done_runs is null;
        perform pgflow._steps_completed(v_done_runs, v_done_steps);
    end loop;
end;
$$;

-- ---------------------------------------------------------------------------
-- flows
-- ---------------------------------------------------------------------------

-- Register a flow; see 0002 for the contract. Changes: a replace also
-- removes the old runs' queue rows and notifies their waiters.
create or replace function pgflow.register_flow(
    p_flow_slug text, p_shape jsonb, p_options jsonb, p_replace boolean default false
) returns text
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
declare
    v_existing pgflow.flows;
    v_before jsonb;
    v_after jsonb;
    v_bad record;
    v_result text;
    v_replaced uuid[];
begin
    perform pg_advisory_xact_lock(hashtext('pgflow.flow'), hashtext(p_flow_slug));

    select * into v_existing from pgflow.flows where flow_slug = p_flow_slug for update;

    if found and v_existing.shape <> p_shape then
        if not p_replace then
            raise exception using
                errcode = 'PF003',
                message = format('Flow %L is already registered with a different shape', p_flow_slug),
                detail = format('registered: %s; new: %s', v_existing.shape, p_shape),
                hint = 'Give the new version another slug, or register it with replace=True '
                       '(unfinished runs of the old shape are cancelled).';
        end if;
        with locked as (
            select run_id from pgflow.runs
            where flow_slug = p_flow_slug and status = 'started'
            order by run_id
            for no key update
        ), cancelled as (
            update pgflow.runs r
            set status = 'cancelled', cancelled_at = now(),
                error = format('Flow %L was replaced by a new shape', p_flow_slug)
            from locked
            where r.run_id = locked.run_id
            returning r.run_id
        )
        select array_agg(run_id) into v_replaced from cancelled;
        if v_replaced is not null then
            perform pgflow._cancel_unfinished(v_replaced);
            perform pgflow._notify_runs(v_replaced);
        end if;
        delete from pgflow.steps where flow_slug = p_flow_slug;
        v_result := 'replaced';
    elsif found then
        select jsonb_agg(to_jsonb(s) - 'flow_slug' order by step_index) into v_before
        from pgflow.steps s where flow_slug = p_flow_slug;
        v_before := jsonb_build_array(v_existing.max_attempts, v_existing.base_delay,
                                      v_existing.timeout, v_before);
    else
        v_result := 'created';
    end if;

    insert into pgflow.flows as f (flow_slug, max_attempts, base_delay, timeout, shape)
    values (p_flow_slug,
            coalesce((p_options ->> 'max_attempts')::int, 3),
            coalesce((p_options ->> 'base_delay')::numeric, 1),
            coalesce((p_options ->> 'timeout')::numeric, 30),
            p_shape)
    on conflict (flow_slug) do update
    set max_attempts = excluded.max_attempts, base_delay = excluded.base_delay,
        timeout = excluded.timeout, shape = excluded.shape, updated_at = now();

    insert into pgflow.steps as st (flow_slug, step_slug, step_index, step_type, deps_count,
                                    is_leaf, max_attempts, base_delay, timeout, start_delay)
    select p_flow_slug, step ->> 'slug', (idx - 1)::int, step ->> 'type',
           jsonb_array_length(step -> 'depends_on'),
           not exists (
               select 1 from jsonb_array_elements(p_shape -> 'steps') other
               where other -> 'depends_on' ? (step ->> 'slug')
           ),
           (opts ->> 'max_attempts')::int, (opts ->> 'base_delay')::numeric,
           (opts ->> 'timeout')::numeric, (opts ->> 'start_delay')::numeric
    from jsonb_array_elements(p_shape -> 'steps') with ordinality as x(step, idx)
    cross join lateral (select p_options -> 'steps' -> (step ->> 'slug') as opts) o
    on conflict (flow_slug, step_slug) do update
    set max_attempts = excluded.max_attempts, base_delay = excluded.base_delay,
        timeout = excluded.timeout, start_delay = excluded.start_delay;

    if v_result is not null then
        -- A new shape: dependencies must name earlier steps (so no cycles).
        select d.step ->> 'slug' as step_slug, dep.slug as dep_slug into v_bad
        from jsonb_array_elements(p_shape -> 'steps') with ordinality as d(step, idx)
        cross join lateral jsonb_array_elements_text(d.step -> 'depends_on') as dep(slug)
        left join pgflow.steps s on s.flow_slug = p_flow_slug and s.step_slug = dep.slug
        where s.step_index is null or s.step_index >= d.idx - 1
        limit 1;
        if found then
            raise exception using
                errcode = 'PF005',
                message = format('Flow %L, step %L: dependency %L is unknown or not an earlier step',
                                 p_flow_slug, v_bad.step_slug, v_bad.dep_slug),
                hint = 'List steps in dependency order; a flow must not have cycles.';
        end if;
        insert into pgflow.deps (flow_slug, dep_slug, step_slug)
        select p_flow_slug, dep.slug, d.step ->> 'slug'
        from jsonb_array_elements(p_shape -> 'steps') as d(step)
        cross join lateral jsonb_array_elements_text(d.step -> 'depends_on') as dep(slug);
        return v_result;
    end if;

    select jsonb_agg(to_jsonb(s) - 'flow_slug' order by step_index) into v_after
    from pgflow.steps s where flow_slug = p_flow_slug;
    select jsonb_build_array(f.max_attempts, f.base_delay, f.timeout, v_after) into v_after
    from pgflow.flows f where f.flow_slug = p_flow_slug;
    return case when v_before = v_after then 'verified' else 'updated' end;
end;
$$;

-- ---------------------------------------------------------------------------
-- runs
-- ---------------------------------------------------------------------------

-- Start many runs of one flow in one transaction, one per input, and return
-- their ids in the order of the inputs. p_run_ids (optional, parallel to
-- p_inputs; a null element means "a new id") makes each start idempotent:
-- an id that already exists is returned as it is, without a second run.
-- Nothing is written if any input is refused.
create function pgflow.start_flows(p_flow_slug text, p_inputs jsonb[], p_run_ids uuid[] default null)
returns table (run_id uuid)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
#variable_conflict use_column
declare
    v_steps integer;
    v_root_map text;
    v_bad record;
    v_ids uuid[];
    v_created uuid[];
begin
    if p_run_ids is not null and cardinality(p_run_ids) <> cardinality(p_inputs) then
        raise exception using
            errcode = 'PF002',
            message = format('start_flows(%L): %s inputs but %s run ids', p_flow_slug,
                             cardinality(p_inputs), cardinality(p_run_ids)),
            hint = 'Give one run id (or null) per input.';
    end if;

    -- Shared with every other start; register_flow(replace) takes it exclusively.
    perform pg_advisory_xact_lock_shared(hashtext('pgflow.flow'), hashtext(p_flow_slug));

    select count(*)::int,
           min(s.step_slug) filter (where s.step_type = 'map' and s.deps_count = 0)
    into v_steps, v_root_map
    from pgflow.steps s where s.flow_slug = p_flow_slug;

    if v_steps = 0 then
        raise exception using
            errcode = 'PF001',
            message = format('Flow %L is not registered', p_flow_slug),
            hint = 'Register it with Client.register(flow), or start a supervisor that serves it.';
    end if;

    select i, x into v_bad
    from unnest(p_inputs) with ordinality as u(x, i)
    where x is null or (v_root_map is not null and jsonb_typeof(x) <> 'array')
    limit 1;
    if found then
        if v_bad.x is null then
            raise exception using
                errcode = 'PF002',
                message = format('Flow %L: run input #%s is SQL NULL', p_flow_slug, v_bad.i),
                hint = 'Pass a JSON value; JSON null is ''null''::jsonb.';
        end if;
        raise exception using
            errcode = 'PF002',
            message = format('Flow %L: root map step %L needs a JSON array as the run input, '
                             'got %s: %s', p_flow_slug, v_root_map, jsonb_typeof(v_bad.x),
                             pgflow._preview(v_bad.x)),
            hint = 'Start the run with an array input.';
    end if;

    select array_agg(coalesce(p_run_ids[i], gen_random_uuid()) order by i) into v_ids
    from generate_subscripts(p_inputs, 1) as i;

    with created as (
        insert into pgflow.runs (run_id, flow_slug, input, remaining_steps)
        select v_ids[i], p_flow_slug, p_inputs[i], v_steps
        from generate_subscripts(p_inputs, 1) as i
        on conflict (run_id) do nothing
        returning run_id
    )
    select array_agg(run_id) into v_created from created;

    if p_run_ids is not null then
        -- Existing ids (a retried call, or a race another start won) must be
        -- runs of this flow.
        select r.run_id, r.flow_slug into v_bad
        from pgflow.runs r
        where r.run_id = any (v_ids) and r.flow_slug <> p_flow_slug
        limit 1;
        if found then
            raise exception using
                errcode = 'PF002',
                message = format('Run %s already exists for flow %L, not for flow %L',
                                 v_bad.run_id, v_bad.flow_slug, p_flow_slug),
                hint = 'Use a new run id.';
        end if;
    end if;

    if v_created is not null then
        insert into pgflow.step_states (run_id, flow_slug, step_slug, remaining_deps)
        select c.id, s.flow_slug, s.step_slug, s.deps_count
        from unnest(v_created) as c(id)
        cross join pgflow.steps s
        where s.flow_slug = p_flow_slug;

        perform pgflow._advance(v_created);
    end if;

    return query select id from unnest(v_ids) with ordinality as u(id, i) order by i;
end;
$$;

-- Start a run: one transaction creates the run, a state per step and the
-- tasks of every ready step. Passing run_id makes it idempotent: starting an
-- existing run id returns that run unchanged.
create or replace function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null)
returns pgflow.runs
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
#variable_conflict use_column
declare
    v_run pgflow.runs;
    v_id uuid;
begin
    if input is null then
        raise exception using
            errcode = 'PF002',
            message = format('Flow %L: the run input is SQL NULL', start_flow.flow_slug),
            hint = 'Pass a JSON value; JSON null is ''null''::jsonb.';
    end if;
    select s.run_id into v_id
    from pgflow.start_flows(start_flow.flow_slug, array[input],
                            case when start_flow.run_id is null then null
                                 else array[start_flow.run_id] end) s;
    select * into v_run from pgflow.runs r where r.run_id = v_id;
    return v_run;
end;
$$;

-- Cancel a run: queued tasks are cancelled, answers of running ones are
-- ignored, unfinished step states are cancelled. A finished run is returned
-- unchanged.
create or replace function pgflow.cancel_run(p_run_id uuid) returns pgflow.runs
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
    v_run pgflow.runs;
begin
    update pgflow.runs
    set status = 'cancelled', cancelled_at = now(), error = 'Cancelled'
    where run_id = p_run_id and status = 'started'
    returning * into v_run;

    if not found then
        select * into v_run from pgflow.runs where run_id = p_run_id;
        if not found then
            raise exception using
                errcode = 'PF004',
                message = format('Run %s does not exist', p_run_id);
        end if;
        return v_run;
    end if;

    perform pgflow._cancel_unfinished(array[p_run_id]);
    perform pgflow._notify_runs(array[p_run_id]);
    return v_run;
end;
$$;

-- ---------------------------------------------------------------------------
-- tasks
-- ---------------------------------------------------------------------------

-- Claim up to p_limit visible queued tasks of these flows, oldest first.
-- Each comes with a fresh token (the fence its answer must carry), its
-- handler input (flow input for a root single step, a map of dependency
-- outputs keyed by slug for a dependent single step, the element for a map
-- task), its attempt number and effective timeout, and how long it had been
-- visible. Its lease runs until now() + timeout + p_lease_grace seconds.
-- Only queue rows are written.
create function pgflow.claim_tasks(
    p_worker_id uuid, p_flows text[], p_limit integer, p_lease_grace numeric default 30
) returns table (
    task_id bigint, token bigint, run_id uuid, flow_slug text, step_slug text,
    task_index integer, attempt integer, timeout_ms integer, input jsonb,
    input_is_flow_input boolean, waited_s double precision
)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
#variable_conflict use_column
begin
    return query
    with picked as (
        -- Per flow, oldest first, skipping what other claimers hold; then the
        -- oldest p_limit of all (rows locked beyond that are let go at commit).
        select q.task_id, q.visible_at
        from unnest(p_flows) as f(slug)
        cross join lateral (
            select q.task_id, q.visible_at
            from pgflow.queue q
            where q.flow_slug = f.slug and q.lease_expires_at is null and q.visible_at <= now()
            order by q.visible_at, q.task_id
            limit p_limit
            for update of q skip locked
        ) q
        order by q.visible_at, q.task_id
        limit p_limit
    ), policy as (
        select p.task_id, p.visible_at, t.run_id, t.flow_slug, t.step_slug, t.task_index,
               t.input, s.step_type, s.deps_count, coalesce(s.timeout, f.timeout) as timeout
        from picked p
        join pgflow.tasks t on t.task_id = p.task_id
        join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
        join pgflow.flows f on f.flow_slug = t.flow_slug
    ), leased as (
        update pgflow.queue q
        set lease_expires_at = now() + (p.timeout + p_lease_grace) * interval '1 second',
            token = (random() * 9.2e18)::bigint, attempt = q.attempt + 1,
            worker_id = p_worker_id, started_at = now()
        from policy p
        where q.task_id = p.task_id
        returning q.task_id, q.token, q.attempt, p.visible_at, p.run_id, p.flow_slug,
                  p.step_slug, p.task_index, p.input, p.step_type, p.deps_count, p.timeout
    )
    select p.task_id, p.token, p.run_id, p.flow_slug, p.step_slug, p.task_index, p.attempt,
           ceil(p.timeout * 1000)::int,
           case
               when p.step_type = 'map' then p.input
               when p.deps_count = 0 then (select r.input from pgflow.runs r
                                           where r.run_id = p.run_id)
               else (select coalesce(jsonb_object_agg(d.dep_slug, ss.output), '{}'::jsonb)
                     from pgflow.deps d
                     join pgflow.step_states ss
                       on ss.run_id = p.run_id and ss.step_slug = d.dep_slug
                      and ss.status = 'completed'
                     where d.flow_slug = p.flow_slug and d.step_slug = p.step_slug)
           end,
           p.step_type = 'single' and p.deps_count = 0,
           extract(epoch from now() - p.visible_at)::float8
    from leased p
    order by p.visible_at, p.task_id;
end;
$$;

-- The earliest time a queued task of these flows becomes visible (null if
-- none): the supervisor sleeps until then instead of polling.
create or replace function pgflow.next_visible_at(p_flows text[]) returns timestamptz
language sql stable
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
    select min(n.visible_at)
    from unnest(p_flows) as f(slug)
    cross join lateral (
        select q.visible_at from pgflow.queue q
        where q.flow_slug = f.slug and q.lease_expires_at is null
        order by q.visible_at
        limit 1
    ) n;
$$;

-- What complete_tasks / fail_tasks report: a row per accepted task, with the
-- run's final status and duration on one task of each run that finished
-- during the call; and a row per deferred task (its run was locked by
-- another transaction: send the answer again).
create function pgflow._answer_report(p_task_ids bigint[], p_run_ids uuid[], p_deferred bigint[])
returns table (task_id bigint, deferred boolean, run_status text, run_seconds double precision)
language sql stable as $$
    select a.task_id, false,
           case when a.first_of_run and r.status <> 'started' then r.status end,
           case when a.first_of_run and r.status <> 'started' then
               extract(epoch from coalesce(r.completed_at, r.failed_at, r.cancelled_at)
                                  - r.started_at)::float8 end
    from (select x.task_id, x.run_id,
                 row_number() over (partition by x.run_id order by x.task_id) = 1 as first_of_run
          from unnest(p_task_ids, p_run_ids) as x(task_id, run_id)) a
    join pgflow.runs r on r.run_id = a.run_id
    union all
    select d, true, null, null from unnest(p_deferred) as d;
$$;

-- Complete many tasks in one call: p_answers is [[task_id, token, output],
-- ...]. Only the claim holding a task (same token) can complete it; stale
-- answers change nothing and are left out of the result. A task whose run
-- another transaction has locked is deferred (reported, not written).
create function pgflow.complete_tasks(p_answers jsonb)
returns table (task_id bigint, deferred boolean, run_status text, run_seconds double precision)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
#variable_conflict use_column
declare
    v_locked uuid[];
    v_accepted bigint[];
    v_accepted_runs uuid[];
    v_deferred bigint[];
    v_runs uuid[];
    v_steps text[];
    v_map_runs uuid[];
    v_map_steps text[];
    v_ready uuid[];
begin
    v_locked := pgflow._lock_runs_of_tasks(
        array(select x.task_id from pgflow._answers('complete_tasks', p_answers, 3) x), true);

    with answer as (
        select x.task_id, x.token, x.a -> 2 as output
        from pgflow._answers('complete_tasks', p_answers, 3) x
    ), held as (
        -- Two answers for one task (a supervisor that paused past its lease and
        -- claimed the task again) complete it once.
        select distinct on (q.task_id) q.task_id, q.attempt, q.worker_id, q.started_at,
               answer.output, t.run_id
        from answer
        join pgflow.queue q on q.task_id = answer.task_id and q.token = answer.token
                           and q.lease_expires_at is not null
        join pgflow.tasks t on t.task_id = q.task_id
        order by q.task_id
    ), done as (
        update pgflow.tasks t
        set status = 'completed', output = held.output, attempt = held.attempt,
            worker_id = held.worker_id, started_at = held.started_at, completed_at = now()
        from held
        where t.task_id = held.task_id and held.run_id = any (v_locked)
        returning t.task_id, t.run_id, t.step_slug, t.output
    ), dequeued as (
        delete from pgflow.queue q using done where q.task_id = done.task_id
    ), steps_done as (
        -- A single step's output is its task's; a map step's is assembled below
        -- (this statement cannot see the task rows it is updating).
        update pgflow.step_states ss
        set remaining_tasks = ss.remaining_tasks - c.n,
            status = case when ss.remaining_tasks = c.n then 'completed' else ss.status end,
            completed_at = case when ss.remaining_tasks = c.n then now() end,
            output = case when ss.remaining_tasks = c.n and s.step_type = 'single'
                          then c.output end
        from (select run_id, step_slug, count(*)::int as n, (array_agg(output))[1] as output
              from done group by 1, 2) c,
             pgflow.steps s
        where ss.run_id = c.run_id and ss.step_slug = c.step_slug
          and s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
        returning ss.run_id, ss.step_slug, ss.status, s.step_type
    )
    select (select array_agg(task_id) from done),
           (select array_agg(run_id) from done),
           (select array_agg(task_id) from held where run_id <> all (v_locked)),
           (select array_agg(run_id) from steps_done where status = 'completed'),
           (select array_agg(step_slug) from steps_done where status = 'completed'),
           (select array_agg(run_id) from steps_done
            where status = 'completed' and step_type = 'map'),
           (select array_agg(step_slug) from steps_done
            where status = 'completed' and step_type = 'map')
    into v_accepted, v_accepted_runs, v_deferred, v_runs, v_steps, v_map_runs, v_map_steps;

    if v_map_runs is not null then
        update pgflow.step_states ss
        set output = (select jsonb_agg(t.output order by t.task_index)
                      from pgflow.tasks t
                      where t.run_id = ss.run_id and t.step_slug = ss.step_slug)
        from unnest(v_map_runs, v_map_steps) as d(run_id, step_slug)
        where ss.run_id = d.run_id and ss.step_slug = d.step_slug;
    end if;

    if v_runs is not null then
        v_ready := pgflow._steps_completed(v_runs, v_steps);
        if v_ready is not null then
            perform pgflow._advance(v_ready);
        end if;
    end if;

    return query select * from pgflow._answer_report(v_accepted, v_accepted_runs, v_deferred);
end;
$$;

-- Fail many attempts in one call: p_answers is [[task_id, token, error,
-- details], ...] where error is the message kept in tasks.error and details
-- (optional, an object such as {"type": ..., "traceback": ...}) is merged
-- into the attempt's entry in tasks.errors. An attempt below the step's
-- max_attempts is retried after base_delay * 2^(attempt-1) seconds (capped
-- at one hour); the last one fails the step and the run. Stale answers
-- change nothing; a task whose run is locked by another transaction is
-- deferred. Rows say whether each accepted task will be retried.
create function pgflow.fail_tasks(p_answers jsonb)
returns table (task_id bigint, retry boolean, deferred boolean, run_status text,
               run_seconds double precision)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
#variable_conflict use_column
declare
    v_locked uuid[];
    v_accepted bigint[];
    v_accepted_runs uuid[];
    v_deferred bigint[];
    v_retried bigint[];
    v_fail_runs uuid[];
    v_fail_steps text[];
    v_fail_errors text[];
    v_retry_flows text[];
begin
    v_locked := pgflow._lock_runs_of_tasks(
        array(select x.task_id from pgflow._answers('fail_tasks', p_answers, 3) x), true);

    with answer as (
        select x.task_id, x.token,
               coalesce(nullif(x.a ->> 2, ''), 'Unknown error') as error,
               case when jsonb_typeof(x.a -> 3) = 'object' then x.a -> 3 else '{}' end as details
        from pgflow._answers('fail_tasks', p_answers, 3) x
    ), held as (
        select distinct on (q.task_id) q.task_id, q.attempt, q.worker_id, q.started_at,
               answer.error, answer.details, t.run_id,
               q.attempt < coalesce(s.max_attempts, f.max_attempts) as retry,
               least(coalesce(s.base_delay, f.base_delay)
                     * power(2::numeric, least(q.attempt - 1, 20)), 3600) as delay
        from answer
        join pgflow.queue q on q.task_id = answer.task_id and q.token = answer.token
                           and q.lease_expires_at is not null
        join pgflow.tasks t on t.task_id = q.task_id
        join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
        join pgflow.flows f on f.flow_slug = t.flow_slug
        order by q.task_id
    ), failed as (
        update pgflow.tasks t
        set status = case when h.retry then 'queued' else 'failed' end,
            attempt = h.attempt, worker_id = h.worker_id, started_at = h.started_at,
            error = h.error,
            errors = t.errors || jsonb_build_array(h.details || jsonb_build_object(
                'attempt', h.attempt, 'error', h.error, 'at', now())),
            visible_at = case when h.retry then now() + h.delay * interval '1 second'
                              else t.visible_at end,
            failed_at = case when h.retry then null else now() end
        from held h
        where t.task_id = h.task_id and h.run_id = any (v_locked)
        returning t.task_id, t.run_id, t.flow_slug, t.step_slug, h.retry, t.error, t.visible_at
    ), requeued as (
        update pgflow.queue q
        set visible_at = failed.visible_at, lease_expires_at = null, token = null,
            worker_id = null, started_at = null
        from failed
        where q.task_id = failed.task_id and failed.retry
    ), dequeued as (
        delete from pgflow.queue q
        using failed
        where q.task_id = failed.task_id and not failed.retry
    )
    select (select array_agg(task_id) from failed),
           (select array_agg(run_id) from failed),
           (select array_agg(task_id) from held where run_id <> all (v_locked)),
           (select array_agg(task_id) from failed where retry),
           (select array_agg(run_id) from failed where not retry),
           (select array_agg(step_slug) from failed where not retry),
           (select array_agg(error) from failed where not retry),
           (select array_agg(distinct flow_slug) from failed where retry)
    into v_accepted, v_accepted_runs, v_deferred, v_retried, v_fail_runs, v_fail_steps,
         v_fail_errors, v_retry_flows;

    if v_fail_runs is not null then
        perform pgflow._fail_runs(v_fail_runs, v_fail_steps, v_fail_errors);
    end if;
    if v_retry_flows is not null then
        perform pg_notify('pgflow_tasks', f) from unnest(v_retry_flows) as f;
    end if;

    return query
    select r.task_id, r.task_id = any (coalesce(v_retried, '{}')), r.deferred, r.run_status,
           r.run_seconds
    from pgflow._answer_report(v_accepted, v_accepted_runs, v_deferred) r;
end;
$$;

-- Give tasks back without charging an attempt (a supervisor shutting down
-- releases what it buffered or could not finish): p_tasks is [[task_id,
-- token], ...]. Fenced like answers; waits for run locks. Returns the ids
-- released.
create function pgflow.release_tasks(p_tasks jsonb)
returns setof bigint
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
    v_released bigint[];
    v_flows text[];
begin
    perform pgflow._lock_runs_of_tasks(
        array(select x.task_id from pgflow._answers('release_tasks', p_tasks, 2) x), false);

    with released as (
        update pgflow.queue q
        set visible_at = now(), lease_expires_at = null, token = null,
            attempt = q.attempt - 1, worker_id = null, started_at = null
        from pgflow._answers('release_tasks', p_tasks, 2) x
        where q.task_id = x.task_id and q.token = x.token and q.lease_expires_at is not null
        returning q.task_id, q.flow_slug
    )
    select array_agg(task_id), array_agg(distinct flow_slug) into v_released, v_flows
    from released;

    if v_flows is not null then
        perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
    end if;
    return query select unnest(coalesce(v_released, '{}'));
end;
$$;

-- ---------------------------------------------------------------------------
-- workers and leases
-- ---------------------------------------------------------------------------

-- A live worker's heartbeat: mark it alive and extend the leases of the
-- tasks it still holds (p_tasks: [[task_id, token], ...]) to at least
-- now() + p_lease_grace. Returns the ids of the tasks it no longer holds
-- (requeued after their lease expired, cancelled, answered by another claim):
-- the supervisor drops them. A task whose queue row is locked right now
-- (being answered, requeued or cancelled) is skipped, neither extended nor
-- reported: a heartbeat never waits.
create function pgflow.heartbeat(p_worker_id uuid, p_tasks jsonb, p_lease_grace numeric default 30)
returns setof bigint
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
begin
    update pgflow.workers set last_heartbeat_at = now(), stopped_at = null
    where worker_id = p_worker_id;

    return query
    with held as (
        select x.task_id, x.token from pgflow._answers('heartbeat', p_tasks, 2) x
    ), lockable as (
        select q.task_id
        from pgflow.queue q
        join held h on h.task_id = q.task_id and h.token = q.token
        where q.lease_expires_at is not null
        for update of q skip locked
    ), extended as (
        update pgflow.queue q
        set lease_expires_at = greatest(q.lease_expires_at,
                                        now() + p_lease_grace * interval '1 second')
        from lockable l
        where q.task_id = l.task_id
        returning q.task_id
    )
    select h.task_id
    from held h
    where not exists (select 1 from extended e where e.task_id = h.task_id)
      and not exists (select 1 from pgflow.queue q
                      where q.task_id = h.task_id and q.token = h.token
                        and q.lease_expires_at is not null);
end;
$$;

-- Requeue tasks whose lease expired (their supervisor died or froze). The
-- lost attempt counts: it goes through fail_tasks, so retries and backoff
-- follow the step's policy and a late answer from that attempt is ignored.
-- The lease is read again under the locks (a heartbeat that extended it
-- meanwhile wins); runs locked by others wait for the next call.
create function pgflow.requeue_expired(p_limit integer default 1000) returns integer
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
    v_ids bigint[];
    v_expired jsonb;
begin
    select array_agg(q.task_id) into v_ids
    from (select q.task_id from pgflow.queue q
          where q.lease_expires_at < now()
          order by q.lease_expires_at
          limit p_limit) q;
    if v_ids is null then
        return 0;
    end if;

    -- Runs first (lock order), then the queue rows, then read the lease again.
    perform pgflow._lock_runs_of_tasks(v_ids, true);
    select jsonb_agg(jsonb_build_array(
               q.task_id, q.token,
               format('Lease expired after %s: worker %s (%s) stopped answering',
                      date_trunc('second', now() - q.started_at),
                      coalesce(w.hostname || ' pid ' || w.pid, 'unknown'),
                      coalesce(q.worker_id::text, 'unknown')),
               jsonb_build_object('type', 'LeaseExpired')))
    into v_expired
    from (select q.* from pgflow.queue q
          where q.task_id = any (v_ids) and q.lease_expires_at < now()
          for update of q skip locked) q
    left join pgflow.workers w on w.worker_id = q.worker_id;

    if v_expired is null then
        return 0;
    end if;
    return (select count(*) from pgflow.fail_tasks(v_expired) f where not f.deferred);
end;
$$;
