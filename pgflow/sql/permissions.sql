-- Least privilege for schema pgflow. `pgflow migrate` runs this after the
-- migrations, every time, in the same transaction, as the schema's owner: it
-- covers the functions any migration adds, and it changes only what differs
-- from the state below, so a migrate with nothing to do writes nothing.
--
-- 1. Every function and procedure in schema pgflow runs as its owner
--    (SECURITY DEFINER) with a fixed search_path, pg_catalog first and
--    pg_temp last, so no object of the caller's (a temporary table or
--    function) can stand in for one of the engine's or the catalog's.
--    Internal helpers (names starting with "_") are the exception: only the
--    owner may call them (2.), always from a function of 1., so they already
--    run as the owner under that fixed search_path. A SET clause of their
--    own would keep Postgres from inlining the SQL ones into their callers'
--    cached plans, and costs a user switch and a GUC change per call:
--    measured (one database, toggled back and forth), claim + complete fell
--    from 1,025 to 855 tasks/s one task at a time and from 16,500 to 15,300
--    in batches of 100 with the helpers altered too; altering the public
--    functions costs nothing measurable (16.6 us per heartbeat call either way).
-- 2. Nobody but the owner may call one (EXECUTE revoked from PUBLIC), except
--    what is granted to the two roles of roles.sql, by function name (every
--    overload of that name):
--      pgflow_app     start_flow, start_flows, cancel_run, retry_run
--      pgflow_worker  claim_tasks, complete_tasks, fail_tasks, release_tasks,
--                     heartbeat, requeue_expired, next_visible_at,
--                     register_worker, stop_worker, register_flow,
--                     retention_tick, report_worker, start_due_ticks
--    prune_runs and prunable_runs stay the owner's: deleting history is an
--    operator's act (`pgflow prune` as the schema's owner); a supervisor's
--    --retention goes through retention_tick.
--    A function a new migration adds is the owner's alone until its name is
--    listed here (tests/integration/test_roles.py fails for an unlisted one).
-- 3. Tables: no privilege for PUBLIC; SELECT only for the roles: pgflow_app
--    reads every table and view (runs, steps, tasks, workers, ...), and
--    pgflow_worker what a supervisor and its executors read (flow
--    definitions, a run's input for ctx.flow_input, queue depth, the
--    migrations applied). Any other privilege either role holds on a pgflow
--    table or function is revoked: re-running migrate restores this state.
-- Roles that do not exist (no `pgflow migrate --roles` yet) are skipped.

do $$
declare
    c_search_path constant text := 'search_path=pg_catalog, pgflow, pg_temp';
    c_app_functions constant text[] := array['start_flow', 'start_flows', 'cancel_run',
                                             'retry_run'];
    c_worker_functions constant text[] := array[
        'claim_tasks', 'complete_tasks', 'fail_tasks', 'release_tasks', 'heartbeat',
        'requeue_expired', 'next_visible_at', 'register_worker', 'stop_worker', 'register_flow',
        'retention_tick', 'report_worker', 'start_due_ticks'];
    c_worker_tables constant text[] := array['flows', 'steps', 'deps', 'runs', 'queue',
                                            'workers', 'schema_migrations'];
    v_schema constant oid := 'pgflow'::regnamespace;
    v_fn record;
    v_rel record;
    v_role record;
    v_granted boolean;
    v_wanted boolean;
begin
    -- 1 and 2 (PUBLIC): every routine.
    for v_fn in
        select p.oid, p.oid::regprocedure as signature, p.proname, p.prosecdef, p.proconfig,
               p.proacl
        from pg_catalog.pg_proc p
        where p.pronamespace = v_schema and p.prokind in ('f', 'p')
    loop
        if not starts_with(v_fn.proname, '_') and (not v_fn.prosecdef
                or not (c_search_path = any (coalesce(v_fn.proconfig, '{}')))) then
            execute format('alter routine %s security definer '
                           'set search_path = pg_catalog, pgflow, pg_temp', v_fn.signature);
        end if;
        -- A null ACL means the default: EXECUTE for PUBLIC.
        if v_fn.proacl is null or exists (select from pg_catalog.aclexplode(v_fn.proacl) a
                                          where a.grantee = 0) then
            execute format('revoke all on routine %s from public', v_fn.signature);
        end if;
    end loop;

    -- Tables and views: nothing for PUBLIC.
    for v_rel in
        select c.oid, c.oid::regclass as name, c.relname
        from pg_catalog.pg_class c
        where c.relnamespace = v_schema and c.relkind in ('r', 'p', 'v', 'm', 'S')
          and exists (select from pg_catalog.aclexplode(c.relacl) a where a.grantee = 0)
    loop
        execute format('revoke all on %s from public', v_rel.name);
    end loop;

    -- 2 and 3 (the roles), for those that exist.
    for v_role in
        select r.oid, r.rolname from pg_catalog.pg_roles r
        where r.rolname in ('pgflow_app', 'pgflow_worker')
    loop
        if not pg_catalog.has_schema_privilege(v_role.oid, v_schema, 'USAGE') then
            execute format('grant usage on schema pgflow to %I', v_role.rolname);
        end if;

        for v_fn in
            select p.oid, p.oid::regprocedure as signature, p.proname, p.proacl
            from pg_catalog.pg_proc p
            where p.pronamespace = v_schema and p.prokind in ('f', 'p')
        loop
            v_wanted := v_fn.proname = any (case v_role.rolname
                                                when 'pgflow_app' then c_app_functions
                                                else c_worker_functions end);
            v_granted := exists (select from pg_catalog.aclexplode(v_fn.proacl) a
                                 where a.grantee = v_role.oid);
            if v_wanted and not v_granted then
                execute format('grant execute on routine %s to %I', v_fn.signature,
                               v_role.rolname);
            elsif v_granted and not v_wanted then
                execute format('revoke all on routine %s from %I', v_fn.signature,
                               v_role.rolname);
            end if;
        end loop;

        for v_rel in
            select c.oid, c.oid::regclass as name, c.relname, c.relkind,
                   array(select a.privilege_type from pg_catalog.aclexplode(c.relacl) a
                         where a.grantee = v_role.oid) as privileges
            from pg_catalog.pg_class c
            where c.relnamespace = v_schema and c.relkind in ('r', 'p', 'v', 'm', 'S')
        loop
            v_wanted := v_rel.relkind <> 'S' and (v_role.rolname = 'pgflow_app'
                                                  or v_rel.relname = any (c_worker_tables));
            if v_rel.privileges <> (case when v_wanted then array['SELECT']
                                         else '{}'::text[] end) then
                execute format('revoke all on %s from %I', v_rel.name, v_role.rolname);
                if v_wanted then
                    execute format('grant select on %s to %I', v_rel.name, v_role.rolname);
                end if;
            end if;
        end loop;
    end loop;
end;
$$;
