-- pgflow engine: the only statements that change state.
--
-- Every function is set-based: complete, fail, release and heartbeat take
-- arrays so a supervisor writes many answers in one round trip. Answers are
-- fenced by attempt number: only the attempt that holds a task (status
-- 'started', same attempt) can finish it, so late answers change nothing.
--
-- Public functions run with plan_cache_mode = force_generic_plan (inherited
-- by the internal ones they call): their statements are short, index-driven
-- and take array parameters, for which Postgres otherwise keeps re-planning
-- custom plans on every call. Measured with 200k finished runs in the tables:
-- start_flow 173 -> 668 runs/s, claim + complete (batch 1) 108 -> 293 tasks/s.
--
-- The runtime functions also run with enable_seqscan = off: every statement
-- here is meant to go through an index, and a generic plan made while a
-- table was small (a new install, before autovacuum's first analyze) would
-- otherwise keep scanning it whole as it grows. Measured: a producer starting
-- 10,000 runs fell from ~750 to ~240 runs/s that way.
--
-- Notifications (one per transaction and payload; Postgres folds duplicates):
--   pgflow_tasks  payload flow_slug: tasks became (or will become) claimable
--   pgflow_runs   payload comma-separated run ids that finished (chunks of
--                 100, well under NOTIFY's 8000-byte limit)
--
-- Error codes raised on bad input (SQLSTATE):
--   PF001 unknown flow      PF002 invalid input     PF003 shape conflict
--   PF004 unknown run       PF005 invalid flow definition

-- ---------------------------------------------------------------------------
-- internal helpers
-- ---------------------------------------------------------------------------

create function pgflow._notify_runs(p_run_ids uuid[]) returns void
language plpgsql as $$
begin
    perform pg_notify('pgflow_runs', string_agg(id::text, ',' order by id))
    from (select id, (row_number() over () - 1) / 100 as chunk
          from unnest(p_run_ids) as id) ids
    group by chunk;
end;
$$;

-- A short, readable preview of a JSON value for error messages.
create function pgflow._preview(p_value jsonb) returns text
language sql immutable as $$
    select case when length(v) > 200 then left(v, 200) || '...' else v end
    from (select coalesce(p_value::text, 'nothing (SQL NULL)') as v) s;
$$;

-- Fail runs: the failing step is marked failed, the run records the error and
-- the step, and every unfinished task and step state of the run is cancelled.
create function pgflow._fail_runs(p_run_ids uuid[], p_step_slugs text[], p_errors text[])
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

    update pgflow.tasks
    set status = 'cancelled', worker_id = null, lease_expires_at = null
    where run_id = any (v_failed) and status in ('queued', 'started');

    update pgflow.step_states
    set status = 'cancelled'
    where run_id = any (v_failed) and status in ('created', 'started');

    perform pgflow._notify_runs(v_failed);
end;
$$;

-- Bookkeeping after steps complete: each dependent has one dependency fewer
-- to wait for, each run one step fewer to finish. A run with no step left
-- completes here, with {leaf step slug: output} (leaf outputs are already
-- stored by earlier statements). Returns the runs that have a dependent
-- whose dependencies are now all done, i.e. the runs worth advancing.
create function pgflow._steps_completed(p_run_ids uuid[], p_step_slugs text[]) returns uuid[]
language plpgsql as $$
declare
    v_ready uuid[];
    v_finished uuid[];
begin
    with deps_done as (
        update pgflow.step_states ss
        set remaining_deps = ss.remaining_deps - c.n
        from (
            select done.run_id, d.step_slug, count(*)::int as n
            from unnest(p_run_ids, p_step_slugs) as done(run_id, step_slug)
            join pgflow.step_states src
              on src.run_id = done.run_id and src.step_slug = done.step_slug
            join pgflow.deps d on d.flow_slug = src.flow_slug and d.dep_slug = done.step_slug
            group by done.run_id, d.step_slug
        ) c
        where ss.run_id = c.run_id and ss.step_slug = c.step_slug
        returning ss.run_id, ss.remaining_deps
    ), runs_done as (
        update pgflow.runs r
        set remaining_steps = r.remaining_steps - c.n,
            status = case when r.remaining_steps = c.n then 'completed' else r.status end,
            completed_at = case when r.remaining_steps = c.n then now() end,
            output = case when r.remaining_steps = c.n then (
                select coalesce(jsonb_object_agg(ss.step_slug, ss.output), '{}'::jsonb)
                from pgflow.step_states ss
                join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
                where ss.run_id = r.run_id and s.is_leaf and ss.status = 'completed'
            ) end
        from (select run_id, count(*)::int as n from unnest(p_run_ids) as run_id group by run_id) c
        where r.run_id = c.run_id and r.status = 'started'
        returning r.run_id, r.status
    )
    select (select array_agg(distinct run_id) from deps_done where remaining_deps = 0),
           (select array_agg(run_id) from runs_done where status = 'completed')
    into v_ready, v_finished;

    if v_finished is not null then
        perform pgflow._notify_runs(v_finished);
    end if;
    return v_ready;
end;
$$;

-- Ready map steps whose array source is not an array fail their run at once
-- (no retry can change a dependency's stored output).
create function pgflow._fail_unmappable(p_run_ids uuid[]) returns void
language plpgsql as $$
declare
    v_runs uuid[];
    v_steps text[];
    v_errors text[];
begin
    select array_agg(ss.run_id), array_agg(ss.step_slug),
           array_agg(format(
               'Map step %L in flow %L expects an array from step %L, but that step returned %s: %s',
               ss.step_slug, ss.flow_slug, d.dep_slug,
               coalesce(jsonb_typeof(src.output), 'nothing'), pgflow._preview(src.output)))
    into v_runs, v_steps, v_errors
    from pgflow.step_states ss
    join pgflow.runs r on r.run_id = ss.run_id and r.status = 'started'
    join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
    join pgflow.deps d on d.flow_slug = ss.flow_slug and d.step_slug = ss.step_slug
    join pgflow.step_states src on src.run_id = ss.run_id and src.step_slug = d.dep_slug
    where ss.run_id = any (p_run_ids) and ss.status = 'created' and ss.remaining_deps = 0
      and s.step_type = 'map'
      and jsonb_typeof(src.output) is distinct from 'array';

    if v_runs is not null then
        perform pgflow._fail_runs(v_runs, v_steps, v_errors);
    end if;
end;
$$;

-- Start every step of these runs whose dependencies are all done: one task
-- for a single step, one per element for a map step. A map over an empty
-- array completes at once with [], which may ready further steps, hence the
-- loop (bounded by the depth of the flow).
create function pgflow._advance(p_run_ids uuid[]) returns void
language plpgsql as $$
declare
    v_done_runs uuid[];
    v_done_steps text[];
    v_flows text[];
begin
    loop
        perform pgflow._fail_unmappable(p_run_ids);

        with ready as (
            select ss.run_id, ss.flow_slug, ss.step_slug, s.step_type, s.start_delay,
                   case when s.step_type = 'map'
                        then case when s.deps_count = 0 then r.input else src.output end
                   end as arr
            from pgflow.step_states ss
            join pgflow.runs r on r.run_id = ss.run_id and r.status = 'started'
            join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
            left join pgflow.deps d
                   on s.step_type = 'map' and d.flow_slug = ss.flow_slug
                  and d.step_slug = ss.step_slug
            left join pgflow.step_states src
                   on src.run_id = ss.run_id and src.step_slug = d.dep_slug
            where ss.run_id = any (p_run_ids) and ss.status = 'created'
              and ss.remaining_deps = 0
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
            returning flow_slug
        )
        select (select array_agg(distinct flow_slug) from new_tasks),
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

-- Lock the runs of these tasks in run_id order. Every batch that changes a
-- run's bookkeeping takes these locks first, so concurrent batches from
-- several supervisors serialize per run and never deadlock.
create function pgflow._lock_runs_of_tasks(p_task_ids bigint[]) returns void
language plpgsql as $$
begin
    perform 1 from pgflow.runs r
    where r.run_id in (select t.run_id from pgflow.tasks t where t.task_id = any (p_task_ids))
      and r.status = 'started'
    order by r.run_id
    for no key update of r;
end;
$$;

-- What complete_tasks / fail_tasks report for the tasks they accepted: the
-- run's final status and duration on one row per run that finished during
-- the call (its tasks were all in started runs when the call began).
create function pgflow._answer_report(p_task_ids bigint[], p_run_ids uuid[])
returns table (task_id bigint, run_status text, run_seconds double precision)
language sql stable as $$
    select a.task_id,
           case when a.first_of_run and r.status <> 'started' then r.status end,
           case when a.first_of_run and r.status <> 'started' then
               extract(epoch from coalesce(r.completed_at, r.failed_at, r.cancelled_at)
                                  - r.started_at)::float8 end
    from (select x.task_id, x.run_id,
                 row_number() over (partition by x.run_id order by x.task_id) = 1 as first_of_run
          from unnest(p_task_ids, p_run_ids) as x(task_id, run_id)) a
    join pgflow.runs r on r.run_id = a.run_id;
$$;

-- ---------------------------------------------------------------------------
-- flows
-- ---------------------------------------------------------------------------

-- Register a flow. p_shape: {"steps": [{"slug", "type", "depends_on": [...]}]}
-- in dependency order; p_options: {"max_attempts", "base_delay", "timeout",
-- "steps": {slug: {"max_attempts", "base_delay", "timeout", "start_delay"}}}.
-- Returns 'created', 'verified' (same shape and options), 'updated' (same
-- shape, options changed in place) or 'replaced' (p_replace and a changed
-- shape: unfinished runs of the old shape are cancelled, history is kept).
create function pgflow.register_flow(
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
        perform 1 from pgflow.runs
        where flow_slug = p_flow_slug and status = 'started'
        order by run_id
        for no key update;
        update pgflow.runs
        set status = 'cancelled', cancelled_at = now(),
            error = format('Flow %L was replaced by a new shape', p_flow_slug)
        where flow_slug = p_flow_slug and status = 'started';
        update pgflow.tasks set status = 'cancelled', worker_id = null, lease_expires_at = null
        where flow_slug = p_flow_slug and status in ('queued', 'started');
        update pgflow.step_states set status = 'cancelled'
        where flow_slug = p_flow_slug and status in ('created', 'started');
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

-- Start a run: one transaction creates the run, a state per step and the
-- tasks of every ready step. Passing run_id makes it idempotent: starting an
-- existing run id returns that run unchanged.
create function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null)
returns pgflow.runs
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
#variable_conflict use_column
declare
    v_run pgflow.runs;
    v_steps integer;
    v_root_map text;
begin
    if input is null then
        raise exception using
            errcode = 'PF002',
            message = format('Flow %L: the run input is SQL NULL', start_flow.flow_slug),
            hint = 'Pass a JSON value; JSON null is ''null''::jsonb.';
    end if;

    if start_flow.run_id is not null then
        select * into v_run from pgflow.runs r where r.run_id = start_flow.run_id;
        if found then
            if v_run.flow_slug <> start_flow.flow_slug then
                raise exception using
                    errcode = 'PF002',
                    message = format('Run %s already exists for flow %L, not for flow %L',
                                     start_flow.run_id, v_run.flow_slug, start_flow.flow_slug),
                    hint = 'Use a new run id.';
            end if;
            return v_run;
        end if;
    end if;

    -- Shared with every other start; register_flow(replace) takes it exclusively.
    perform pg_advisory_xact_lock_shared(hashtext('pgflow.flow'), hashtext(start_flow.flow_slug));

    select count(*)::int,
           min(s.step_slug) filter (where s.step_type = 'map' and s.deps_count = 0)
    into v_steps, v_root_map
    from pgflow.steps s where s.flow_slug = start_flow.flow_slug;

    if v_steps = 0 then
        raise exception using
            errcode = 'PF001',
            message = format('Flow %L is not registered', start_flow.flow_slug),
            hint = 'Register it with Client.register(flow), or start a supervisor that serves it.';
    end if;

    if v_root_map is not null and jsonb_typeof(input) <> 'array' then
        raise exception using
            errcode = 'PF002',
            message = format('Flow %L: root map step %L needs a JSON array as the run input, got %s: %s',
                             start_flow.flow_slug, v_root_map, jsonb_typeof(input),
                             pgflow._preview(input)),
            hint = 'Start the run with an array input.';
    end if;

    insert into pgflow.runs (run_id, flow_slug, input, remaining_steps)
    values (coalesce(start_flow.run_id, gen_random_uuid()), start_flow.flow_slug, input, v_steps)
    on conflict (run_id) do nothing
    returning * into v_run;

    if not found then
        -- A concurrent start with the same run id won the race.
        select * into v_run from pgflow.runs r where r.run_id = start_flow.run_id;
        return v_run;
    end if;

    insert into pgflow.step_states (run_id, flow_slug, step_slug, remaining_deps)
    select v_run.run_id, s.flow_slug, s.step_slug, s.deps_count
    from pgflow.steps s where s.flow_slug = start_flow.flow_slug;

    perform pgflow._advance(array[v_run.run_id]);

    select * into v_run from pgflow.runs r where r.run_id = v_run.run_id;
    return v_run;
end;
$$;

-- Cancel a run: queued tasks are cancelled, answers of running ones are
-- ignored, unfinished step states are cancelled. A finished run is returned
-- unchanged.
create function pgflow.cancel_run(p_run_id uuid) returns pgflow.runs
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

    update pgflow.tasks set status = 'cancelled', worker_id = null, lease_expires_at = null
    where run_id = p_run_id and status in ('queued', 'started');
    update pgflow.step_states set status = 'cancelled'
    where run_id = p_run_id and status in ('created', 'started');
    perform pgflow._notify_runs(array[p_run_id]);
    return v_run;
end;
$$;

-- ---------------------------------------------------------------------------
-- tasks
-- ---------------------------------------------------------------------------

-- Claim up to p_limit visible queued tasks of these flows, oldest first.
-- Each comes with its handler input (flow input for a root single step, a map
-- of dependency outputs keyed by slug for a dependent single step, the
-- element for a map task), its attempt number and effective timeout. Its
-- lease runs until now() + timeout + p_lease_grace seconds.
--
-- Bitmap scans are off here: with stale statistics (a queue table changes
-- faster than autovacuum analyzes it) the planner otherwise reads and sorts
-- every queued task instead of walking the claimable index in order
-- (measured: 23 ms instead of 0.4 ms with 16k queued tasks).
create function pgflow.claim_tasks(
    p_worker_id uuid, p_flows text[], p_limit integer, p_lease_grace numeric default 30
) returns table (
    task_id bigint, run_id uuid, flow_slug text, step_slug text, task_index integer,
    attempt integer, timeout_ms integer, input jsonb, input_is_flow_input boolean,
    visible_at timestamptz
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
        select t.task_id
        from pgflow.tasks t
        where t.status = 'queued' and t.visible_at <= now() and t.flow_slug = any (p_flows)
        order by t.visible_at, t.task_id
        limit p_limit
        for update skip locked
    ), claimed as (
        update pgflow.tasks t
        set status = 'started', attempt = t.attempt + 1, started_at = now(),
            worker_id = p_worker_id,
            lease_expires_at = now() + (coalesce(s.timeout, f.timeout) + p_lease_grace)
                                       * interval '1 second'
        from picked, pgflow.steps s, pgflow.flows f
        where t.task_id = picked.task_id
          and s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
          and f.flow_slug = t.flow_slug
        returning t.task_id, t.run_id, t.flow_slug, t.step_slug, t.task_index, t.attempt,
                  t.input, t.visible_at, s.step_type, s.deps_count,
                  ceil(coalesce(s.timeout, f.timeout) * 1000)::int as timeout_ms
    )
    select c.task_id, c.run_id, c.flow_slug, c.step_slug, c.task_index, c.attempt,
           c.timeout_ms,
           case
               when c.step_type = 'map' then c.input
               when c.deps_count = 0 then (select r.input from pgflow.runs r
                                           where r.run_id = c.run_id)
               else (select coalesce(jsonb_object_agg(d.dep_slug, ss.output), '{}'::jsonb)
                     from pgflow.deps d
                     join pgflow.step_states ss
                       on ss.run_id = c.run_id and ss.step_slug = d.dep_slug
                      and ss.status = 'completed'
                     where d.flow_slug = c.flow_slug and d.step_slug = c.step_slug)
           end,
           c.step_type = 'single' and c.deps_count = 0,
           c.visible_at
    from claimed c
    order by c.visible_at, c.task_id;
end;
$$;

-- The earliest time a queued task of these flows becomes visible (null if
-- none): the supervisor sleeps until then instead of polling.
create function pgflow.next_visible_at(p_flows text[]) returns timestamptz
language plpgsql stable
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
begin
    -- order by + limit rather than min(): with the flow filter, min() would
    -- read every queued task.
    return (select visible_at from pgflow.tasks
            where status = 'queued' and flow_slug = any (p_flows)
            order by visible_at limit 1);
end;
$$;

-- Complete many tasks in one call. Arrays are parallel. Returns a row per
-- accepted task (see _answer_report); the others were stale (another attempt
-- holds the task, the task or run is finished) and changed nothing.
create function pgflow.complete_tasks(
    p_task_ids bigint[], p_attempts integer[], p_outputs jsonb[]
) returns table (task_id bigint, run_status text, run_seconds double precision)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
#variable_conflict use_column
declare
    v_accepted bigint[];
    v_accepted_runs uuid[];
    v_runs uuid[];
    v_steps text[];
    v_map_runs uuid[];
    v_map_steps text[];
    v_ready uuid[];
begin
    perform pgflow._lock_runs_of_tasks(p_task_ids);

    with answer as (
        select * from unnest(p_task_ids, p_attempts, p_outputs) as a(task_id, attempt, output)
    ), done as (
        update pgflow.tasks t
        set status = 'completed', output = coalesce(answer.output, 'null'::jsonb),
            completed_at = now(), lease_expires_at = null
        from answer, pgflow.runs r
        where t.task_id = answer.task_id and t.attempt = answer.attempt
          and t.status = 'started' and r.run_id = t.run_id and r.status = 'started'
        returning t.task_id, t.run_id, t.step_slug, t.output
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
           (select array_agg(run_id) from steps_done where status = 'completed'),
           (select array_agg(step_slug) from steps_done where status = 'completed'),
           (select array_agg(run_id) from steps_done
            where status = 'completed' and step_type = 'map'),
           (select array_agg(step_slug) from steps_done
            where status = 'completed' and step_type = 'map')
    into v_accepted, v_accepted_runs, v_runs, v_steps, v_map_runs, v_map_steps;

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

    return query select * from pgflow._answer_report(v_accepted, v_accepted_runs);
end;
$$;

-- Fail many tasks in one call (parallel arrays). An attempt below the step's
-- max_attempts is retried after base_delay * 2^(attempt-1) seconds (capped
-- at one hour); the last one fails the step and the run. Every error is kept
-- in tasks.errors. Returns a row per accepted task, with whether it will be
-- retried (stale answers change nothing).
create function pgflow.fail_tasks(
    p_task_ids bigint[], p_attempts integer[], p_errors text[]
) returns table (task_id bigint, retry boolean, run_status text, run_seconds double precision)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
#variable_conflict use_column
declare
    v_accepted bigint[];
    v_accepted_runs uuid[];
    v_retried bigint[];
    v_fail_runs uuid[];
    v_fail_steps text[];
    v_fail_errors text[];
    v_retry_flows text[];
begin
    perform pgflow._lock_runs_of_tasks(p_task_ids);

    with answer as (
        select * from unnest(p_task_ids, p_attempts, p_errors) as a(task_id, attempt, error)
    ), policy as (
        select answer.task_id, answer.attempt, coalesce(answer.error, 'Unknown error') as error,
               coalesce(s.max_attempts, f.max_attempts) as max_attempts,
               coalesce(s.base_delay, f.base_delay) as base_delay
        from answer
        join pgflow.tasks t on t.task_id = answer.task_id
        join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
        join pgflow.flows f on f.flow_slug = t.flow_slug
    ), failed as (
        update pgflow.tasks t
        set status = case when t.attempt < p.max_attempts then 'queued' else 'failed' end,
            error = p.error,
            errors = t.errors || jsonb_build_array(jsonb_build_object(
                'attempt', t.attempt, 'error', p.error, 'at', now())),
            visible_at = case when t.attempt < p.max_attempts
                              then now() + least(p.base_delay * power(2::numeric,
                                                 least(t.attempt - 1, 20)), 3600)
                                           * interval '1 second'
                              else t.visible_at end,
            failed_at = case when t.attempt < p.max_attempts then null else now() end,
            worker_id = null, lease_expires_at = null
        from policy p, pgflow.runs r
        where t.task_id = p.task_id and t.attempt = p.attempt and t.status = 'started'
          and r.run_id = t.run_id and r.status = 'started'
        returning t.task_id, t.run_id, t.flow_slug, t.step_slug, t.status, t.error
    )
    select (select array_agg(task_id) from failed),
           (select array_agg(run_id) from failed),
           (select array_agg(task_id) from failed where status = 'queued'),
           (select array_agg(run_id) from failed where status = 'failed'),
           (select array_agg(step_slug) from failed where status = 'failed'),
           (select array_agg(error) from failed where status = 'failed'),
           (select array_agg(distinct flow_slug) from failed where status = 'queued')
    into v_accepted, v_accepted_runs, v_retried, v_fail_runs, v_fail_steps, v_fail_errors,
         v_retry_flows;

    if v_fail_runs is not null then
        perform pgflow._fail_runs(v_fail_runs, v_fail_steps, v_fail_errors);
    end if;
    if v_retry_flows is not null then
        perform pg_notify('pgflow_tasks', f) from unnest(v_retry_flows) as f;
    end if;

    return query
    select r.task_id, r.task_id = any (coalesce(v_retried, '{}')), r.run_status, r.run_seconds
    from pgflow._answer_report(v_accepted, v_accepted_runs) r;
end;
$$;

-- Give tasks back without charging an attempt (a supervisor shutting down
-- releases what it buffered or could not finish). Fenced like answers.
create function pgflow.release_tasks(p_task_ids bigint[], p_attempts integer[])
returns setof bigint
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
    v_released bigint[];
    v_flows text[];
begin
    with released as (
        update pgflow.tasks t
        set status = 'queued', attempt = t.attempt - 1, visible_at = now(),
            started_at = null, worker_id = null, lease_expires_at = null
        from unnest(p_task_ids, p_attempts) as a(task_id, attempt)
        where t.task_id = a.task_id and t.attempt = a.attempt and t.status = 'started'
        returning t.task_id, t.flow_slug
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

create function pgflow.register_worker(
    p_worker_id uuid, p_hostname text, p_pid integer, p_flows text[]
) returns void
language sql
set plan_cache_mode = force_generic_plan
as $$
    insert into pgflow.workers (worker_id, hostname, pid, flows)
    values (p_worker_id, p_hostname, p_pid, p_flows)
    on conflict (worker_id) do update
    set hostname = excluded.hostname, pid = excluded.pid, flows = excluded.flows,
        last_heartbeat_at = now(), stopped_at = null;
$$;

-- A live worker's heartbeat: mark it alive and extend the leases of the
-- tasks it still holds to at least now() + p_lease_grace. Returns how many
-- leases were extended.
create function pgflow.heartbeat(
    p_worker_id uuid, p_task_ids bigint[], p_lease_grace numeric default 30
) returns integer
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
    v_extended integer;
begin
    update pgflow.workers set last_heartbeat_at = now(), stopped_at = null
    where worker_id = p_worker_id;

    update pgflow.tasks
    set lease_expires_at = greatest(lease_expires_at, now() + p_lease_grace * interval '1 second')
    where task_id = any (p_task_ids) and worker_id = p_worker_id and status = 'started';
    get diagnostics v_extended = row_count;
    return v_extended;
end;
$$;

create function pgflow.stop_worker(p_worker_id uuid) returns void
language sql
set plan_cache_mode = force_generic_plan
as $$
    update pgflow.workers set stopped_at = now() where worker_id = p_worker_id;
$$;

-- Requeue tasks whose lease expired (their supervisor died or froze). The
-- lost attempt counts: it goes through fail_tasks, so retries and backoff
-- follow the step's policy and a late answer from that attempt is ignored.
create function pgflow.requeue_expired(p_limit integer default 1000) returns integer
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
    v_ids bigint[];
    v_attempts integer[];
    v_errors text[];
begin
    select array_agg(t.task_id), array_agg(t.attempt),
           array_agg(format('Lease expired after %s: worker %s (%s) stopped answering',
                            date_trunc('second', now() - t.started_at),
                            coalesce(w.hostname || ' pid ' || w.pid, 'unknown'),
                            coalesce(t.worker_id::text, 'unknown')))
    into v_ids, v_attempts, v_errors
    -- No row locks here: fail_tasks locks runs before tasks, like every
    -- other batch, and its attempt fence makes a concurrent requeue a no-op.
    from (
        select task_id from pgflow.tasks
        where status = 'started' and lease_expires_at < now()
        order by lease_expires_at
        limit p_limit
    ) expired
    join pgflow.tasks t on t.task_id = expired.task_id
    left join pgflow.workers w on w.worker_id = t.worker_id;

    if v_ids is null then
        return 0;
    end if;
    return (select count(*) from pgflow.fail_tasks(v_ids, v_attempts, v_errors));
end;
$$;
