-- pgflow's two roles, for least privilege (`pgflow migrate --roles` runs this;
-- so can `psql -f roles.sql` as a role with CREATEROLE). Run it once per
-- cluster: roles belong to the cluster, not to a database. The next
-- `pgflow migrate` (as the schema's owner) grants them what they need in its
-- database, and keeps granting it to functions later migrations add.
--
--   pgflow_app     applications: start, read, wait for, cancel (and retry)
--                  runs; read-only on every pgflow table
--   pgflow_worker  supervisors and their executors: claim, answer, heartbeat,
--                  release and requeue tasks, register and stop themselves,
--                  register the flows they serve; read what they read
--
-- Both are NOLOGIN groups: give them to login roles of your own, e.g.
--   create role orders_api login password '...' in role pgflow_app;
--   create role supervisor login password '...' in role pgflow_worker;
-- Neither owns anything, so neither can change the schema, a table or a
-- function: every change goes through the engine's functions, which run as
-- the schema's owner (see permissions.sql).

do $$
declare
    v_role text;
begin
    foreach v_role in array array['pgflow_app', 'pgflow_worker'] loop
        if not exists (select from pg_catalog.pg_roles where rolname = v_role) then
            begin
                execute format('create role %I nologin', v_role);
            exception when duplicate_object or unique_violation then
                null;  -- created meanwhile by another migrate
            end;
        end if;
    end loop;
end;
$$;
