-- Retry, with the features of 0004 (0005 was written beside 0004, not on
-- top of it):
-- * a retried task goes back to its lane with its limited flag, so a retried
--   run of a flow or step with a concurrency limit stays within it (0005's
--   retry_run queued such tasks outside every limit);
-- * a run started with a key takes its key again while it runs, and a retry
--   is refused while another unfinished run holds that key.

create or replace function pgflow.retry_run(p_run_id uuid) returns pgflow.runs
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
    v_holder uuid;
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

    -- A run started with a key holds it again while it runs, unless another
    -- unfinished run has taken the key since (then two runs would share it).
    if v_run.key is not null then
        insert into pgflow.run_keys as k (flow_slug, key, run_id)
        values (v_run.flow_slug, v_run.key, p_run_id)
        on conflict (flow_slug, key) do update set run_id = k.run_id
        returning k.run_id into v_holder;
        if v_holder <> p_run_id then
            raise exception using
                errcode = 'PF002',
                message = format('Run %s cannot be retried: its key %L is held by run %s of '
                                 'flow %L, which is unfinished', p_run_id, v_run.key, v_holder,
                                 v_run.flow_slug),
                hint = 'Wait for that run to finish, or cancel it, then retry.';
        end if;
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
        -- In the lane and under the limits the claim counts (see 0004's
        -- _advance): a retried task of a limited flow or step stays within them.
        select t.task_id, t.flow_slug,
               case when s.max_concurrency is not null then s.step_slug else '' end as lane,
               f.max_concurrency is not null or s.max_concurrency is not null as limited
        from pgflow.tasks t
        join pgflow.steps s on s.flow_slug = t.flow_slug and s.step_slug = t.step_slug
        join pgflow.flows f on f.flow_slug = t.flow_slug
        where t.run_id = p_run_id and t.status in ('failed', 'cancelled')
    ), queued as (
        insert into pgflow.queue (task_id, flow_slug, visible_at, lane, limited)
        select again.task_id, again.flow_slug, now(), again.lane, again.limited from again
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
