-- pgflow schema: flow definitions, runs, step states, tasks, workers.
--
-- Public contract (operators and other languages read these):
--   pgflow.flows        keyed by flow_slug
--   pgflow.runs         run_id, flow_slug, status, input, output, error, timestamps
--   pgflow.step_states  one row per (run, step); status, output, error
--   pgflow.tasks        one row per unit of work (one per step, one per map element)
-- Durations and delays are in seconds (numeric); timestamps are timestamptz.

create table pgflow.flows (
    flow_slug    text primary key
                 check (flow_slug ~ '^[a-zA-Z_][a-zA-Z0-9_]*$' and length(flow_slug) <= 128
                        and flow_slug <> 'run'),
    max_attempts integer not null default 3 check (max_attempts >= 1),
    base_delay   numeric not null default 1 check (base_delay >= 0),
    timeout      numeric not null default 30 check (timeout > 0),
    -- The structure compared on registration: {"steps": [{slug, type, depends_on}, ...]}.
    shape        jsonb not null,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);

create table pgflow.steps (
    flow_slug    text not null references pgflow.flows (flow_slug) on delete cascade,
    step_slug    text not null
                 check (step_slug ~ '^[a-zA-Z_][a-zA-Z0-9_]*$' and length(step_slug) <= 128
                        and step_slug <> 'run'),
    step_index   integer not null,
    step_type    text not null check (step_type in ('single', 'map')),
    deps_count   integer not null default 0 check (deps_count >= 0),
    is_leaf      boolean not null default true,
    -- Per-step overrides; null means "the flow's value".
    max_attempts integer check (max_attempts >= 1),
    base_delay   numeric check (base_delay >= 0),
    timeout      numeric check (timeout > 0),
    start_delay  numeric check (start_delay >= 0),
    primary key (flow_slug, step_slug),
    unique (flow_slug, step_index),
    check (step_type = 'single' or deps_count <= 1)
);

create table pgflow.deps (
    flow_slug text not null,
    dep_slug  text not null,
    step_slug text not null,
    primary key (flow_slug, step_slug, dep_slug),
    foreign key (flow_slug, dep_slug) references pgflow.steps (flow_slug, step_slug)
        on delete cascade,
    foreign key (flow_slug, step_slug) references pgflow.steps (flow_slug, step_slug)
        on delete cascade,
    check (dep_slug <> step_slug)
);
create index deps_by_dep on pgflow.deps (flow_slug, dep_slug);

create table pgflow.runs (
    run_id          uuid primary key,
    flow_slug       text not null references pgflow.flows (flow_slug),
    status          text not null default 'started'
                    check (status in ('started', 'completed', 'failed', 'cancelled')),
    input           jsonb not null,
    output          jsonb,
    error           text,
    failed_step     text,
    remaining_steps integer not null check (remaining_steps >= 0),
    started_at      timestamptz not null default now(),
    completed_at    timestamptz,
    failed_at       timestamptz,
    cancelled_at    timestamptz
);
create index runs_by_flow_status on pgflow.runs (flow_slug, status);

-- Step states keep no foreign key to pgflow.steps: a replaced flow's old runs
-- keep their history after the old steps are gone.
create table pgflow.step_states (
    run_id          uuid not null references pgflow.runs (run_id) on delete cascade,
    flow_slug       text not null,
    step_slug       text not null,
    status          text not null default 'created'
                    check (status in ('created', 'started', 'completed', 'failed',
                                      'skipped', 'cancelled')),
    remaining_deps  integer not null check (remaining_deps >= 0),
    -- Tasks not yet completed; null until the step starts (a map's count is
    -- known only then).
    remaining_tasks integer check (remaining_tasks >= 0),
    task_count      integer,
    output          jsonb,
    error           text,
    created_at      timestamptz not null default now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    failed_at       timestamptz,
    primary key (run_id, step_slug)
);

create table pgflow.workers (
    worker_id         uuid primary key,
    hostname          text not null,
    pid               integer not null,
    flows             text[] not null default '{}',
    started_at        timestamptz not null default now(),
    last_heartbeat_at timestamptz not null default now(),
    stopped_at        timestamptz
);

create table pgflow.tasks (
    task_id          bigint generated always as identity primary key,
    run_id           uuid not null references pgflow.runs (run_id) on delete cascade,
    flow_slug        text not null,
    step_slug        text not null,
    task_index       integer not null default 0 check (task_index >= 0),
    status           text not null default 'queued'
                     check (status in ('queued', 'started', 'completed', 'failed', 'cancelled')),
    -- Attempts started so far; the claim increments it, so a started task's
    -- attempt is the number the answer must carry (the fence).
    attempt          integer not null default 0 check (attempt >= 0),
    -- Map tasks hold their element; other tasks get their input at claim time.
    input            jsonb,
    output           jsonb,
    error            text,
    -- One entry per failed attempt: {"attempt": n, "error": "...", "at": "..."}.
    errors           jsonb not null default '[]',
    visible_at       timestamptz not null default now(),
    worker_id        uuid,
    lease_expires_at timestamptz,
    queued_at        timestamptz not null default now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    failed_at        timestamptz,
    unique (run_id, step_slug, task_index)
);
-- What is claimable. Partial, so millions of finished tasks cost nothing here.
create index tasks_claimable on pgflow.tasks (visible_at, task_id) where status = 'queued';
-- What is held, for lease expiry and heartbeats.
create index tasks_started_lease on pgflow.tasks (lease_expires_at) where status = 'started';
