-- pgflow flow features (issue 12): conditional steps, concurrency limits,
-- schedules, run keys and tags.
--
-- * Conditions: steps carry if_ / if_not patterns matched by JSON containment
--   (@>) against the step's input, when_unmet (skip, skip_cascade, fail) and
--   when_exhausted (fail, skip, skip_cascade). _advance evaluates them in the
--   statement that readies steps; a skipped step is 'skipped' with its reason
--   (condition_unmet, dependency_skipped, handler_failed) and time, and counts
--   as done for its dependents, which see it absent from their input.
-- * Concurrency limits: flows.max_concurrency and steps.max_concurrency cap
--   the tasks held (claimed, running or about to) at once across every
--   supervisor. Queue rows of a step with its own limit live in a lane of
--   their own (queue.lane = the step's slug; '' otherwise) so a claim reaches
--   them without walking other tasks; the claim counts the held tasks of a
--   limited flow or step through a partial index of held, limited rows, so
--   its cost grows with the limit, never with the tasks waiting. Claims of a
--   limited flow serialize on a per-flow try-lock (never waiting).
-- * Schedules: pgflow.schedules holds each scheduled flow's cron expression
--   and the last tick done (the watermark). Supervisors compute tick times
--   (Python, cronsim) and hand them to start_due_ticks, which starts one run
--   per tick after the watermark, with a run id derived from flow and tick:
--   exactly one run per tick, whichever supervisors ask.
-- * Keys and tags: runs.key (while a run with that key is unfinished,
--   starting the flow with the key again returns it; pgflow.run_keys holds
--   the keys of unfinished runs) and runs.tags (an object of strings).
--   Neither is in an index that mentions a column the engine updates, so run
--   updates stay HOT.
--
-- Redefined here: _advance, fail_tasks (when_exhausted), claim_tasks,
-- next_visible_at, register_flow; start_flows and start_flow take keys and
-- tags (dropped and created again: a new signature).
--
-- Upgrading: stop every supervisor first, as for 0003.

-- ---------------------------------------------------------------------------
-- tables
-- ---------------------------------------------------------------------------

alter table pgflow.flows
    add column max_concurrency integer
        constraint flows_max_concurrency_check check (max_concurrency between 1 and 100000),
    -- The flow or one of its steps has a concurrency limit (kept by register_flow).
    add column has_limits boolean not null default false;

alter table pgflow.steps
    add column max_concurrency integer
        constraint steps_max_concurrency_check check (max_concurrency between 1 and 100000),
    add column if_pattern jsonb,
    add column if_not_pattern jsonb,
    add column when_unmet text not null default 'skip'
        constraint steps_when_unmet_check check (when_unmet in ('skip', 'skip_cascade', 'fail')),
    add column when_exhausted text not null default 'fail'
        constraint steps_when_exhausted_check
        check (when_exhausted in ('fail', 'skip', 'skip_cascade'));

alter table pgflow.step_states
    add column skip_reason text
        constraint step_states_skip_reason_check
        check (skip_reason in ('condition_unmet', 'dependency_skipped', 'handler_failed')),
    add column skipped_at timestamptz;

alter table pgflow.runs
    add column key text constraint runs_key_check check (length(key) between 1 and 512),
    add column tags jsonb constraint runs_tags_check check (jsonb_typeof(tags) = 'object');

-- Runs by tag (list_runs(tags=...)). Partial: runs without tags cost nothing
-- here, and tags never change, so the index keeps run updates HOT.
create index runs_by_tags on pgflow.runs using gin (tags jsonb_path_ops) where tags is not null;

-- The key of each unfinished run started with one. A run that finishes gives
-- its key back (trigger below); a small table, unlike a unique index on runs
-- that mentions status, which would make every update of a run non-HOT.
create table pgflow.run_keys (
    flow_slug text not null,
    key       text not null,
    run_id    uuid not null references pgflow.runs (run_id) on delete cascade
              deferrable initially deferred,
    primary key (flow_slug, key)
);
create index run_keys_by_run on pgflow.run_keys (run_id);

-- A scheduled flow: its cron expression in its time zone, the input of each
-- run, and the last tick done (started, or skipped for want of catch_up).
create table pgflow.schedules (
    flow_slug    text primary key references pgflow.flows (flow_slug) on delete cascade,
    cron         text not null,
    timezone     text not null default 'UTC',
    input        jsonb not null default 'null',
    catch_up     boolean not null default false,
    last_tick_at timestamptz not null default now(),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);

-- Lanes: '' for tasks of steps without a limit of their own, the step slug
-- for a step with one. limited: the flow or the step has a limit, so the
-- task counts while held.
alter table pgflow.queue
    add column lane text not null default '',
    add column limited boolean not null default false;
drop index pgflow.queue_claimable;
create index queue_claimable on pgflow.queue (flow_slug, lane, visible_at, task_id)
    where lease_expires_at is null;
-- Held tasks of limited flows and steps, counted by each claim of them.
create index queue_limited_held on pgflow.queue (flow_slug, lane)
    where lease_expires_at is not null and limited;

-- ---------------------------------------------------------------------------
-- triggers
-- ---------------------------------------------------------------------------

-- A finished run gives its key back.
create function pgflow._release_run_key() returns trigger
language plpgsql as $$
begin
    delete from pgflow.run_keys
    where flow_slug = new.flow_slug and key = new.key and run_id = new.run_id;
    return null;
end;
$$;
create trigger runs_release_key after update of status on pgflow.runs
    for each row when (new.key is not null and old.status = 'started' and new.status <> 'started')
    execute function pgflow._release_run_key();

-- A held task of a limited flow that ends (answered, given back, requeued,
-- cancelled) makes room: tell every supervisor of the flow, whose next claim
-- may now take a task it had to leave. Unlimited tasks do not fire it.
create function pgflow._limited_task_released() returns trigger
language plpgsql as $$
begin
    perform pg_notify('pgflow_tasks', old.flow_slug);
    return null;
end;
$$;
create trigger queue_limited_task_ended after delete on pgflow.queue
    for each row when (old.limited and old.lease_expires_at is not null)
    execute function pgflow._limited_task_released();
create trigger queue_limited_task_returned after update of lease_expires_at on pgflow.queue
    for each row when (old.limited and old.lease_expires_at is not null
                       and new.lease_expires_at is null)
    execute function pgflow._limited_task_released();

-- ---------------------------------------------------------------------------
-- conditions and skips
-- ---------------------------------------------------------------------------

-- Whether a step with these patterns runs on this input. No pattern: it runs.
create function pgflow._condition_met(p_if jsonb, p_if_not jsonb, p_input jsonb) returns boolean
language sql immutable as $$
    select (p_if is null or coalesce(p_input @> p_if, false))
       and (p_if_not is null or not coalesce(p_input @> p_if_not, false));
$$;

-- The error of a run failed by an unmet condition (when_unmet = 'fail').
create function pgflow._unmet_error(p_flow_slug text, p_step_slug text, p_if jsonb,
                                    p_if_not jsonb, p_input jsonb) returns text
language sql immutable as $$
    select format('Flow %L, step %L: condition not met (when_unmet = fail): %s',
                  p_flow_slug, p_step_slug,
                  case when p_if is not null and not coalesce(p_input @> p_if, false)
                       then format('its input %s does not contain if_ %s',
                                   pgflow._preview(p_input), pgflow._preview(p_if))
                       else format('its input %s contains if_not %s',
                                   pgflow._preview(p_input), pgflow._preview(p_if_not))
                  end);
$$;

-- Skip every step downstream of these (run, step) pairs that has not
-- started (reason dependency_skipped) and return them. The caller holds the
-- runs' locks (or created the runs) and does the bookkeeping.
create function pgflow._skip_downstream(p_run_ids uuid[], p_step_slugs text[])
returns table (run_id uuid, step_slug text)
language plpgsql as $$
#variable_conflict use_column
begin
    return query
    with recursive downstream (run_id, flow_slug, step_slug) as (
        select ss.run_id, ss.flow_slug, d.step_slug
        from unnest(p_run_ids, p_step_slugs) as x(run_id, step_slug)
        join pgflow.step_states ss on ss.run_id = x.run_id and ss.step_slug = x.step_slug
        join pgflow.deps d on d.flow_slug = ss.flow_slug and d.dep_slug = x.step_slug
        union
        select ds.run_id, ds.flow_slug, d.step_slug
        from downstream ds
        join pgflow.deps d on d.flow_slug = ds.flow_slug and d.dep_slug = ds.step_slug
    ), skipped as (
        update pgflow.step_states ss
        set status = 'skipped', skip_reason = 'dependency_skipped', skipped_at = now()
        from downstream ds
        where ss.run_id = ds.run_id and ss.step_slug = ds.step_slug and ss.status = 'created'
        returning ss.run_id, ss.step_slug
    )
    select run_id, step_slug from skipped;
end;
$$;

-- Steps whose task ran out of attempts and whose when_exhausted is skip or
-- skip_cascade: the step is skipped (handler_failed, keeping the error), its
-- other unfinished tasks are cancelled, with skip_cascade every step
-- downstream is skipped too, and the run goes on. The caller holds the
-- runs' locks.
create function pgflow._skip_exhausted(p_run_ids uuid[], p_step_slugs text[], p_errors text[])
returns void
language plpgsql as $$
declare
    v_runs uuid[];
    v_steps text[];
    v_cascade_runs uuid[];
    v_cascade_steps text[];
    v_ready uuid[];
begin
    -- Queue rows first, then tasks (lock order).
    with exhausted as (
        select distinct x.run_id, x.step_slug
        from unnest(p_run_ids, p_step_slugs) as x(run_id, step_slug)
        join pgflow.runs r on r.run_id = x.run_id and r.status = 'started'
    ), unfinished as (
        delete from pgflow.queue q
        using pgflow.tasks t, exhausted e
        where t.run_id = e.run_id and t.step_slug = e.step_slug and t.status = 'queued'
          and q.task_id = t.task_id
        returning q.task_id, q.attempt, q.worker_id, q.started_at
    )
    update pgflow.tasks t
    set status = 'cancelled', attempt = u.attempt, worker_id = u.worker_id,
        started_at = u.started_at
    from unfinished u
    where t.task_id = u.task_id;

    with exhausted as (
        select distinct on (x.run_id, x.step_slug) x.run_id, x.step_slug, x.error
        from unnest(p_run_ids, p_step_slugs, p_errors) as x(run_id, step_slug, error)
        join pgflow.runs r on r.run_id = x.run_id and r.status = 'started'
        order by x.run_id, x.step_slug
    ), skipped as (
        update pgflow.step_states ss
        set status = 'skipped', skip_reason = 'handler_failed', skipped_at = now(),
            error = e.error, remaining_tasks = null
        from exhausted e
        where ss.run_id = e.run_id and ss.step_slug = e.step_slug and ss.status = 'started'
        returning ss.run_id, ss.flow_slug, ss.step_slug
    )
    select array_agg(sk.run_id), array_agg(sk.step_slug),
           array_agg(sk.run_id) filter (where s.when_exhausted = 'skip_cascade'),
           array_agg(sk.step_slug) filter (where s.when_exhausted = 'skip_cascade')
    into v_runs, v_steps, v_cascade_runs, v_cascade_steps
    from skipped sk
    join pgflow.steps s on s.flow_slug = sk.flow_slug and s.step_slug = sk.step_slug;

    if v_runs is null then
        return;
    end if;
    if v_cascade_runs is not null then
        select v_runs || coalesce(array_agg(d.run_id), '{}'),
               v_steps || coalesce(array_agg(d.step_slug), '{}')
        into v_runs, v_steps
        from pgflow._skip_downstream(v_cascade_runs, v_cascade_steps) d;
    end if;
    v_ready := pgflow._steps_completed(v_runs, v_steps);
    if v_ready is not null then
        perform pgflow._advance(v_ready);
    end if;
end;
$$;

-- Start every step of these runs whose dependencies are all done. In one
-- statement, each ready step is decided:
--   condition unmet      skip (condition_unmet), skip_cascade (it and every
--                        step downstream), or fail the run (when_unmet)
--   a map over a skipped step: skipped (dependency_skipped); nothing to map
--   a map over a non-array: the run fails, saying which step returned what
--   otherwise            started: one task for a single step, one per element
--                        for a map (an empty map completes at once with [])
-- A run with a step that fails starts nothing more. Steps completed or
-- skipped here may ready others, hence the loop (bounded by the flow's
-- depth). Supersedes _fail_unmappable.
create or replace function pgflow._advance(p_run_ids uuid[]) returns void
language plpgsql as $$
declare
    v_flows text[];
    v_done_runs uuid[];
    v_done_steps text[];
    v_cascade_runs uuid[];
    v_cascade_steps text[];
    v_fail_runs uuid[];
    v_fail_steps text[];
    v_fail_errors text[];
begin
    loop
        with waiting as materialized (
            -- First, and on its own, as in 0003: no statistics can make the
            -- plan start from pgflow.runs (and read every started run).
            select ss.run_id, ss.flow_slug, ss.step_slug
            from pgflow.step_states ss
            where ss.run_id = any (p_run_ids) and ss.status = 'created'
              and ss.remaining_deps = 0
        ), ready as (
            select ss.run_id, ss.flow_slug, ss.step_slug, s.step_index, s.step_type, s.deps_count,
                   s.start_delay, s.when_unmet, s.if_pattern, s.if_not_pattern,
                   case when s.max_concurrency is not null then s.step_slug else '' end as lane,
                   f.max_concurrency is not null or s.max_concurrency is not null as limited,
                   src.dep_slug as src_slug, src.status as src_status,
                   case when s.step_type = 'map'
                        then case when s.deps_count = 0 then r.input else src.output end
                   end as arr,
                   cond.input as cond_input
            from waiting ss
            join pgflow.runs r on r.run_id = ss.run_id and r.status = 'started'
            join pgflow.steps s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
            join pgflow.flows f on f.flow_slug = ss.flow_slug
            -- A dependent map's source step (offset 0: read for map steps only,
            -- and by the whole key of step_states whatever the statistics say).
            left join lateral (
                select d.dep_slug, dep.status, dep.output
                from pgflow.deps d
                join pgflow.step_states dep on dep.run_id = ss.run_id and dep.step_slug = d.dep_slug
                where s.step_type = 'map' and d.flow_slug = ss.flow_slug
                  and d.step_slug = ss.step_slug
                offset 0
            ) src on true
            -- What a condition is matched against, read only for steps that have one
            -- (offset 0 keeps it a column, so _condition_met is inlined).
            left join lateral (
                select case when s.deps_count = 0 then r.input
                            else (select coalesce(jsonb_object_agg(dd.dep_slug, dep.output),
                                                  '{}'::jsonb)
                                  from pgflow.deps dd
                                  join pgflow.step_states dep
                                    on dep.run_id = ss.run_id and dep.step_slug = dd.dep_slug
                                   and dep.status = 'completed'
                                  where dd.flow_slug = ss.flow_slug and dd.step_slug = ss.step_slug)
                       end as input
                where s.if_pattern is not null or s.if_not_pattern is not null
                offset 0
            ) cond on true
        ), decided as (
            select ready.*,
                   case
                       when not pgflow._condition_met(if_pattern, if_not_pattern, cond_input)
                           then when_unmet
                       when step_type = 'map' and deps_count > 0 and src_status = 'skipped'
                           then 'skip_source'
                       when step_type = 'map' and jsonb_typeof(arr) is distinct from 'array'
                           then 'unmappable'
                       else 'start'
                   end as action
            from ready
        ), failing as (
            -- One error per run: its first failing step in flow order.
            select distinct on (run_id) run_id, step_slug,
                   case when action = 'fail'
                        then pgflow._unmet_error(flow_slug, step_slug, if_pattern, if_not_pattern,
                                                 cond_input)
                        else format('Map step %L in flow %L expects an array from step %L, but '
                                    'that step returned %s: %s', step_slug, flow_slug, src_slug,
                                    coalesce(jsonb_typeof(arr), 'nothing'), pgflow._preview(arr))
                   end as error
            from decided
            where action in ('fail', 'unmappable')
            order by run_id, step_index
        ), go as (
            select d.*,
                   case when d.action <> 'start' then 0
                        when d.step_type = 'single' then 1
                        else jsonb_array_length(d.arr) end as n
            from decided d
            where d.action not in ('fail', 'unmappable')
              and not exists (select 1 from failing x where x.run_id = d.run_id)
        ), changed as (
            update pgflow.step_states ss
            set status = case when go.action <> 'start' then 'skipped'
                              when go.n = 0 then 'completed' else 'started' end,
                skip_reason = case go.action when 'start' then null
                                             when 'skip_source' then 'dependency_skipped'
                                             else 'condition_unmet' end,
                skipped_at = case when go.action <> 'start' then now() end,
                started_at = case when go.action = 'start' then now() end,
                completed_at = case when go.action = 'start' and go.n = 0 then now() end,
                output = case when go.action = 'start' and go.n = 0 then '[]'::jsonb end,
                task_count = case when go.action = 'start' then go.n end,
                remaining_tasks = case when go.action = 'start' then go.n end
            from go
            where ss.run_id = go.run_id and ss.step_slug = go.step_slug
              and ss.status = 'created'
            returning ss.run_id, ss.step_slug, ss.status
        ), new_tasks as (
            insert into pgflow.tasks (run_id, flow_slug, step_slug, task_index, input, visible_at)
            select go.run_id, go.flow_slug, go.step_slug, e.task_index, e.element,
                   now() + coalesce(go.start_delay, 0) * interval '1 second'
            from go
            cross join lateral (
                select (x.idx - 1)::int as task_index, x.element
                from jsonb_array_elements(go.arr) with ordinality as x(element, idx)
                where go.step_type = 'map'
                union all
                select 0, null::jsonb where go.step_type = 'single'
            ) e
            where go.action = 'start' and go.n > 0
            returning task_id, run_id, flow_slug, step_slug, visible_at
        ), queued as (
            insert into pgflow.queue (task_id, flow_slug, visible_at, lane, limited)
            select nt.task_id, nt.flow_slug, nt.visible_at, go.lane, go.limited
            from new_tasks nt
            join go on go.run_id = nt.run_id and go.step_slug = nt.step_slug
            returning flow_slug
        )
        select (select array_agg(distinct flow_slug) from queued),
               (select array_agg(run_id) from changed where status <> 'started'),
               (select array_agg(step_slug) from changed where status <> 'started'),
               (select array_agg(run_id) from go where action = 'skip_cascade'),
               (select array_agg(step_slug) from go where action = 'skip_cascade'),
               (select array_agg(run_id) from failing),
               (select array_agg(step_slug) from failing),
               (select array_agg(error) from failing)
        into v_flows, v_done_runs, v_done_steps, v_cascade_runs, v_cascade_steps,
             v_fail_runs, v_fail_steps, v_fail_errors;

        if v_flows is not null then
            perform pg_notify('pgflow_tasks', f) from unnest(v_flows) as f;
        end if;
        if v_fail_runs is not null then
            perform pgflow._fail_runs(v_fail_runs, v_fail_steps, v_fail_errors);
        end if;
        if v_cascade_runs is not null then
            select v_done_runs || coalesce(array_agg(d.run_id), '{}'),
                   v_done_steps || coalesce(array_agg(d.step_slug), '{}')
            into v_done_runs, v_done_steps
            from pgflow._skip_downstream(v_cascade_runs, v_cascade_steps) d;
        end if;

        exit when v_done_runs is null or cardinality(v_done_runs) = 0;
        perform pgflow._steps_completed(v_done_runs, v_done_steps);
    end loop;
end;
$$;

-- ---------------------------------------------------------------------------
-- answers: fail_tasks follows when_exhausted
-- ---------------------------------------------------------------------------

-- As in 0003, except for a task out of attempts: its step's when_exhausted
-- decides between failing the run (fail) and skipping the step (skip,
-- skip_cascade; see _skip_exhausted) while the run goes on.
create or replace function pgflow.fail_tasks(p_answers jsonb)
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
    v_skip_runs uuid[];
    v_skip_steps text[];
    v_skip_errors text[];
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
               answer.error, answer.details, t.run_id, s.when_exhausted,
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
        returning t.task_id, t.run_id, t.flow_slug, t.step_slug, h.retry, h.when_exhausted,
                  t.error, t.visible_at
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
           (select array_agg(run_id) from failed where not retry and when_exhausted = 'fail'),
           (select array_agg(step_slug) from failed where not retry and when_exhausted = 'fail'),
           (select array_agg(error) from failed where not retry and when_exhausted = 'fail'),
           (select array_agg(run_id) from failed where not retry and when_exhausted <> 'fail'),
           (select array_agg(step_slug) from failed where not retry and when_exhausted <> 'fail'),
           (select array_agg(error) from failed where not retry and when_exhausted <> 'fail'),
           (select array_agg(distinct flow_slug) from failed where retry)
    into v_accepted, v_accepted_runs, v_deferred, v_retried, v_fail_runs, v_fail_steps,
         v_fail_errors, v_skip_runs, v_skip_steps, v_skip_errors, v_retry_flows;

    if v_fail_runs is not null then
        perform pgflow._fail_runs(v_fail_runs, v_fail_steps, v_fail_errors);
    end if;
    if v_skip_runs is not null then
        perform pgflow._skip_exhausted(v_skip_runs, v_skip_steps, v_skip_errors);
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

-- ---------------------------------------------------------------------------
-- claims
-- ---------------------------------------------------------------------------

-- Where a claim of these flows may take tasks, and how many: per flow, the
-- lane '' (tasks of steps without a limit of their own) and one lane per
-- step with its own max_concurrency, each with the room its limits leave
-- (limit minus the tasks of that flow or step held now), and the room the
-- flow's own limit leaves (p_limit when it has none). A flow with limits
-- that is not in p_locked (another claim holds its lock right now) gets no
-- limited lane. The counts read the partial index of held limited tasks:
-- their cost grows with the limits, not with the tasks waiting.
create function pgflow._lanes(p_flows text[], p_limit integer, p_locked text[])
returns table (flow_slug text, lane text, room integer, flow_room integer)
language sql stable as $$
    with flow_room as (
        select f.flow_slug, f.has_limits, f.max_concurrency is not null as flow_limited,
               not f.has_limits or f.flow_slug = any (p_locked) as mine,
               case when f.max_concurrency is null then p_limit
                    else greatest(f.max_concurrency - (
                             select count(*) from pgflow.queue q
                             where q.flow_slug = f.flow_slug and q.limited
                               and q.lease_expires_at is not null), 0)::int
               end as room
        from pgflow.flows f
        where f.flow_slug = any (p_flows)
    )
    select fr.flow_slug, ''::text, least(fr.room, p_limit), fr.room
    from flow_room fr
    where fr.mine or not fr.flow_limited
    union all
    select fr.flow_slug, s.step_slug,
           least(fr.room, p_limit, greatest(s.max_concurrency - (
               select count(*) from pgflow.queue q
               where q.flow_slug = s.flow_slug and q.lane = s.step_slug and q.limited
                 and q.lease_expires_at is not null), 0))::int,
           fr.room
    from flow_room fr
    join pgflow.steps s on s.flow_slug = fr.flow_slug and s.max_concurrency is not null
    where fr.has_limits and fr.mine;
$$;

-- Claim up to p_limit visible queued tasks of these flows, oldest first,
-- within their concurrency limits; see 0003 for what each row carries. A
-- flow with limits is claimed by one transaction at a time: its lock is
-- tried (never waited for; a flow another claim is taking is left to it)
-- before the statement that counts its held tasks, so that statement's
-- snapshot sees every claim committed before.
create or replace function pgflow.claim_tasks(
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
declare
    v_locked text[];
begin
    select array_agg(f.flow_slug) into v_locked
    from pgflow.flows f
    where f.flow_slug = any (p_flows)
      and case when f.has_limits
               then pg_try_advisory_xact_lock(hashtext('pgflow.limit'), hashtext(f.flow_slug))
               else false end;

    return query
    with picked as (
        -- Per lane, oldest first, as many as its room allows, skipping what
        -- other claimers hold.
        select q.task_id, q.visible_at, l.flow_slug, l.flow_room
        from pgflow._lanes(p_flows, p_limit, coalesce(v_locked, '{}')) l
        cross join lateral (
            select q.task_id, q.visible_at
            from pgflow.queue q
            where q.flow_slug = l.flow_slug and q.lane = l.lane and q.lease_expires_at is null
              and q.visible_at <= now()
            order by q.visible_at, q.task_id
            limit l.room
            for update of q skip locked
        ) q
        where l.room > 0
    ), capped as (
        -- A flow's lanes together stay within its room; then the oldest
        -- p_limit of all (rows locked beyond that are let go at commit).
        select c.task_id, c.visible_at
        from (select p.task_id, p.visible_at, p.flow_room,
                     row_number() over (partition by p.flow_slug
                                        order by p.visible_at, p.task_id) as nth
              from picked p) c
        where c.nth <= c.flow_room
        order by c.visible_at, c.task_id
        limit p_limit
    ), policy as (
        select p.task_id, p.visible_at, t.run_id, t.flow_slug, t.step_slug, t.task_index,
               t.input, s.step_type, s.deps_count, coalesce(s.timeout, f.timeout) as timeout
        from capped p
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
-- none), counting only lanes with room: tasks waiting for a flow or step at
-- its limit are not due (the end of a held limited task notifies instead).
create or replace function pgflow.next_visible_at(p_flows text[]) returns timestamptz
language sql stable
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
    select min(n.visible_at)
    from pgflow._lanes(p_flows, 1, p_flows) l
    cross join lateral (
        select q.visible_at from pgflow.queue q
        where q.flow_slug = l.flow_slug and q.lane = l.lane and q.lease_expires_at is null
        order by q.visible_at
        limit 1
    ) n
    where l.room > 0;
$$;

-- ---------------------------------------------------------------------------
-- flows
-- ---------------------------------------------------------------------------

-- Register a flow; see 0002 and 0003. Added: step conditions (if, if_not,
-- when_unmet, when_exhausted in the shape), concurrency limits (options
-- max_concurrency and steps.<slug>.max_concurrency; the queued and held
-- tasks of the flow move to their new lanes when they change), and the
-- schedule (options.schedule: {cron, timezone, input, catch_up}, or null
-- to remove it; a changed schedule keeps its watermark).
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
    v_schedule jsonb := p_options -> 'schedule';
    v_found boolean;
    v_old_limits jsonb;
    v_limits jsonb;
begin
    perform pg_advisory_xact_lock(hashtext('pgflow.flow'), hashtext(p_flow_slug));

    select * into v_existing from pgflow.flows where flow_slug = p_flow_slug for update;
    v_found := found;
    v_old_limits := jsonb_build_array(v_existing.max_concurrency, (
        select jsonb_object_agg(s.step_slug, s.max_concurrency) from pgflow.steps s
        where s.flow_slug = p_flow_slug and s.max_concurrency is not null));

    if v_found and v_existing.shape <> p_shape then
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
    elsif v_found then
        select jsonb_agg(to_jsonb(s) - 'flow_slug' order by step_index) into v_before
        from pgflow.steps s where flow_slug = p_flow_slug;
        v_before := jsonb_build_array(
            v_existing.max_attempts, v_existing.base_delay, v_existing.timeout,
            v_existing.max_concurrency, v_before,
            (select to_jsonb(sc) - 'last_tick_at' - 'created_at' - 'updated_at'
             from pgflow.schedules sc where sc.flow_slug = p_flow_slug));
    else
        v_result := 'created';
    end if;

    insert into pgflow.flows as f (flow_slug, max_attempts, base_delay, timeout, max_concurrency,
                                   shape)
    values (p_flow_slug,
            coalesce((p_options ->> 'max_attempts')::int, 3),
            coalesce((p_options ->> 'base_delay')::numeric, 1),
            coalesce((p_options ->> 'timeout')::numeric, 30),
            (p_options ->> 'max_concurrency')::int,
            p_shape)
    on conflict (flow_slug) do update
    set max_attempts = excluded.max_attempts, base_delay = excluded.base_delay,
        timeout = excluded.timeout, max_concurrency = excluded.max_concurrency,
        shape = excluded.shape, updated_at = now();

    insert into pgflow.steps as st (flow_slug, step_slug, step_index, step_type, deps_count,
                                    is_leaf, max_attempts, base_delay, timeout, start_delay,
                                    max_concurrency, if_pattern, if_not_pattern, when_unmet,
                                    when_exhausted)
    select p_flow_slug, step ->> 'slug', (idx - 1)::int, step ->> 'type',
           jsonb_array_length(step -> 'depends_on'),
           not exists (
               select 1 from jsonb_array_elements(p_shape -> 'steps') other
               where other -> 'depends_on' ? (step ->> 'slug')
           ),
           (opts ->> 'max_attempts')::int, (opts ->> 'base_delay')::numeric,
           (opts ->> 'timeout')::numeric, (opts ->> 'start_delay')::numeric,
           (opts ->> 'max_concurrency')::int,
           step -> 'if', step -> 'if_not',
           coalesce(step ->> 'when_unmet', 'skip'), coalesce(step ->> 'when_exhausted', 'fail')
    from jsonb_array_elements(p_shape -> 'steps') with ordinality as x(step, idx)
    cross join lateral (select p_options -> 'steps' -> (step ->> 'slug') as opts) o
    on conflict (flow_slug, step_slug) do update
    set max_attempts = excluded.max_attempts, base_delay = excluded.base_delay,
        timeout = excluded.timeout, start_delay = excluded.start_delay,
        max_concurrency = excluded.max_concurrency;

    update pgflow.flows f
    set has_limits = f.max_concurrency is not null or exists (
            select 1 from pgflow.steps s
            where s.flow_slug = f.flow_slug and s.max_concurrency is not null)
    where f.flow_slug = p_flow_slug;

    -- Queued and held tasks follow changed limits (their lane, and whether
    -- they count). The queue holds unfinished tasks only: reading all of
    -- this flow's, once per change of limits, is cheap.
    select jsonb_build_array(f.max_concurrency, (
               select jsonb_object_agg(s.step_slug, s.max_concurrency) from pgflow.steps s
               where s.flow_slug = f.flow_slug and s.max_concurrency is not null))
    into v_limits
    from pgflow.flows f where f.flow_slug = p_flow_slug;
    if v_found and v_limits is distinct from v_old_limits then
        update pgflow.queue q
        set lane = x.lane, limited = x.limited
        from (select q2.task_id,
                     case when s.max_concurrency is not null then s.step_slug else '' end as lane,
                     f.max_concurrency is not null or s.max_concurrency is not null as limited
              from pgflow.queue q2
              join pgflow.tasks t on t.task_id = q2.task_id
              join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
              join pgflow.flows f on f.flow_slug = t.flow_slug
              where q2.flow_slug = p_flow_slug) x
        where q.task_id = x.task_id and (q.lane, q.limited) is distinct from (x.lane, x.limited);
    end if;

    if jsonb_typeof(v_schedule) = 'object' then
        insert into pgflow.schedules as sc (flow_slug, cron, timezone, input, catch_up)
        values (p_flow_slug, v_schedule ->> 'cron', coalesce(v_schedule ->> 'timezone', 'UTC'),
                coalesce(v_schedule -> 'input', 'null'),
                coalesce((v_schedule ->> 'catch_up')::boolean, false))
        on conflict (flow_slug) do update
        set cron = excluded.cron, timezone = excluded.timezone, input = excluded.input,
            catch_up = excluded.catch_up,
            updated_at = case when (sc.cron, sc.timezone, sc.input, sc.catch_up)
                                   is distinct from (excluded.cron, excluded.timezone,
                                                     excluded.input, excluded.catch_up)
                              then now() else sc.updated_at end;
    else
        delete from pgflow.schedules where flow_slug = p_flow_slug;
    end if;

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
    select jsonb_build_array(
               f.max_attempts, f.base_delay, f.timeout, f.max_concurrency, v_after,
               (select to_jsonb(sc) - 'last_tick_at' - 'created_at' - 'updated_at'
                from pgflow.schedules sc where sc.flow_slug = p_flow_slug))
    into v_after
    from pgflow.flows f where f.flow_slug = p_flow_slug;
    return case when v_before = v_after then 'verified' else 'updated' end;
end;
$$;

-- ---------------------------------------------------------------------------
-- runs
-- ---------------------------------------------------------------------------

drop function pgflow.start_flow(text, jsonb, uuid);
drop function pgflow.start_flows(text, jsonb[], uuid[]);

-- Refuse malformed keys and tags of a batch of starts, naming the input.
create function pgflow._check_keys_and_tags(p_flow_slug text, p_count integer, p_keys text[],
                                            p_tags jsonb[]) returns void
language plpgsql immutable as $$
declare
    v_bad record;
begin
    if cardinality(p_keys) <> p_count or cardinality(p_tags) <> p_count then
        raise exception using
            errcode = 'PF002',
            message = format('start_flows(%L): %s inputs but %s keys and %s tags', p_flow_slug,
                             p_count, cardinality(p_keys), cardinality(p_tags)),
            hint = 'Give one key (or null) and one tags object (or null) per input.';
    end if;
    select i, k into v_bad
    from unnest(p_keys) with ordinality as u(k, i)
    where length(k) not between 1 and 512
    limit 1;
    if found then
        raise exception using
            errcode = 'PF002',
            message = format('Flow %L: the key of run input #%s must be 1 to 512 characters, '
                             'got %s', p_flow_slug, v_bad.i, pgflow._preview(to_jsonb(v_bad.k)));
    end if;
    select i, t into v_bad
    from unnest(p_tags) with ordinality as u(t, i)
    where t is not null
      and (jsonb_typeof(t) <> 'object'
           or exists (select 1 from jsonb_each(t) e where jsonb_typeof(e.value) <> 'string'))
    limit 1;
    if found then
        raise exception using
            errcode = 'PF002',
            message = format('Flow %L: the tags of run input #%s must be a JSON object of '
                             'strings, got %s', p_flow_slug, v_bad.i, pgflow._preview(v_bad.t)),
            hint = 'Tags look like {"tenant": "acme"}.';
    end if;
end;
$$;

-- Start many runs of one flow in one transaction, one per input, and return
-- their ids in the order of the inputs; nothing is written if any input is
-- refused. Per input (each parallel array optional, a null element meaning
-- "none"):
--   p_run_ids  an id that already exists returns that run (a retried call);
--   p_keys     while a run of this flow with that key is unfinished, the
--              input returns it instead of starting one (a key wins over a
--              new run id; within the batch the first input with a key starts
--              the run, the others return it);
--   p_tags     a JSON object of strings stored on the run.
create function pgflow.start_flows(
    p_flow_slug text, p_inputs jsonb[], p_run_ids uuid[] default null,
    p_keys text[] default null, p_tags jsonb[] default null
) returns table (run_id uuid)
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
    v_result uuid[];
    v_created uuid[];
begin
    if p_run_ids is not null and cardinality(p_run_ids) <> cardinality(p_inputs) then
        raise exception using
            errcode = 'PF002',
            message = format('start_flows(%L): %s inputs but %s run ids', p_flow_slug,
                             cardinality(p_inputs), cardinality(p_run_ids)),
            hint = 'Give one run id (or null) per input.';
    end if;
    if p_keys is not null or p_tags is not null then
        perform pgflow._check_keys_and_tags(
            p_flow_slug, cardinality(p_inputs),
            coalesce(p_keys, array_fill(null::text, array[cardinality(p_inputs)])),
            coalesce(p_tags, array_fill(null::jsonb, array[cardinality(p_inputs)])));
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

    if p_keys is null then
        v_result := v_ids;
    else
        -- Claim each key for the run of its first input, unless an unfinished
        -- run holds it (the no-op update returns that run's id; a start of the
        -- same key in another transaction is waited for).
        with wanted as (
            select i, v_ids[i] as id, p_keys[i] as key,
                   exists (select 1 from pgflow.runs r where r.run_id = v_ids[i]) as existing
            from generate_subscripts(p_inputs, 1) as i
        ), claimed as (
            insert into pgflow.run_keys as k (flow_slug, key, run_id)
            select distinct on (w.key) p_flow_slug, w.key, w.id
            from wanted w
            where w.key is not null and not w.existing
            order by w.key, w.i
            on conflict (flow_slug, key) do update set run_id = k.run_id
            returning k.key, k.run_id
        )
        select array_agg(case when w.existing or w.key is null then w.id else c.run_id end
                         order by w.i)
        into v_result
        from wanted w
        left join claimed c on c.key = w.key;
    end if;

    with created as (
        insert into pgflow.runs (run_id, flow_slug, input, remaining_steps, key, tags)
        select v_ids[i], p_flow_slug, p_inputs[i], v_steps, p_keys[i], nullif(p_tags[i], '{}')
        from generate_subscripts(p_inputs, 1) as i
        where v_result[i] = v_ids[i]
        on conflict (run_id) do nothing
        returning run_id
    )
    select array_agg(run_id) into v_created from created;

    if p_run_ids is not null then
        -- Existing ids (a retried call, or a race another start won) must be
        -- runs of this flow.
        select r.run_id, r.flow_slug into v_bad
        from pgflow.runs r
        where r.run_id = any (v_result) and r.flow_slug <> p_flow_slug
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

    return query select id from unnest(v_result) with ordinality as u(id, i) order by i;
end;
$$;

-- Start a run: one transaction creates the run, a state per step and the
-- tasks of every ready step (root steps' conditions are evaluated here).
-- run_id makes it idempotent (an existing id returns that run unchanged);
-- key returns the unfinished run of this flow started with the same key,
-- if any; tags ({"tenant": "acme"}) are stored on the run.
create function pgflow.start_flow(flow_slug text, input jsonb, run_id uuid default null,
                                  key text default null, tags jsonb default null)
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
                                 else array[start_flow.run_id] end,
                            case when start_flow.key is null then null
                                 else array[start_flow.key] end,
                            case when start_flow.tags is null then null
                                 else array[start_flow.tags] end) s;
    select * into v_run from pgflow.runs r where r.run_id = v_id;
    return v_run;
end;
$$;

-- ---------------------------------------------------------------------------
-- schedules
-- ---------------------------------------------------------------------------

-- Start the runs of due schedule ticks. p_ticks: [{"flow": slug, "cron":
-- expr, "timezone": tz, "ticks": [timestamp, ...]}, ...], the tick times a
-- supervisor computed from the cron expression after the last tick it knows
-- of. For a flow whose registered schedule has the same cron expression and
-- time zone (a supervisor still running code with another schedule, or
-- none, starts nothing), ticks after the watermark and not in the future
-- (database clock) start one run each, or only the latest of them without
-- catch_up; the watermark moves to the latest. Each run's id is derived from
-- flow and tick and it is tagged {"scheduled_for": tick}: one run per tick,
-- however many supervisors ask, at once or later. A schedule row another
-- transaction holds is skipped (it is being served). Returns each flow's
-- watermark (null: no such schedule), the runs started and the error that
-- prevented starting them (the ticks are then done all the same, so a
-- broken input does not fail every second).
create function pgflow.start_due_ticks(p_ticks jsonb)
returns table (flow_slug text, last_tick_at timestamptz, started integer, error text)
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_item record;
    v_schedule pgflow.schedules;
    v_due timestamptz[];
    v_error text;
    v_started integer;
begin
    for v_item in
        select x ->> 'flow' as flow, x ->> 'cron' as cron,
               coalesce(x ->> 'timezone', 'UTC') as timezone,
               coalesce(x -> 'ticks', '[]') as ticks
        from jsonb_array_elements(p_ticks) x
        order by 1
    loop
        v_error := null;
        v_started := 0;
        -- Shared with starts; register_flow takes it exclusively (then the schedule row).
        perform pg_advisory_xact_lock_shared(hashtext('pgflow.flow'), hashtext(v_item.flow));
        select * into v_schedule
        from pgflow.schedules s
        where s.flow_slug = v_item.flow and s.cron = v_item.cron and s.timezone = v_item.timezone
        for update skip locked;
        if not found then
            return query
            select v_item.flow, s.last_tick_at, 0, null::text
            from (select null) one
            left join pgflow.schedules s
              on s.flow_slug = v_item.flow and s.cron = v_item.cron
             and s.timezone = v_item.timezone;
            continue;
        end if;

        select array_agg(t order by t) into v_due
        from (select distinct (x #>> '{}')::timestamptz as t
              from jsonb_array_elements(v_item.ticks) x) ticks
        where t > v_schedule.last_tick_at and t <= now();
        if v_due is not null then
            if not v_schedule.catch_up then
                v_due := array[v_due[cardinality(v_due)]];
            end if;
            begin
                select count(*) into v_started
                from pgflow.start_flows(
                    v_item.flow,
                    array_fill(v_schedule.input, array[cardinality(v_due)]),
                    array(select md5(format('pgflow schedule %s %s', v_item.flow,
                                            extract(epoch from t)))::uuid
                          from unnest(v_due) with ordinality as u(t, i) order by i),
                    null,
                    array(select jsonb_build_object(
                                     'scheduled_for',
                                     to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                          from unnest(v_due) with ordinality as u(t, i) order by i));
            exception when others then
                v_error := sqlerrm;
                v_started := 0;
            end;
            update pgflow.schedules s
            set last_tick_at = v_due[cardinality(v_due)]
            where s.flow_slug = v_item.flow;
            v_schedule.last_tick_at := v_due[cardinality(v_due)];
        end if;
        return query select v_item.flow, v_schedule.last_tick_at, v_started, v_error;
    end loop;
end;
$$;
