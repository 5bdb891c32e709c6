-- pgteleport source, version 4: operations. Each target is a mirror with a state; peers
-- (named connections) and alert configurations made through the REST API live here too.
alter table target_state
    add column if not exists state text not null default 'SETUP'
        check (state in ('SETUP', 'SNAPSHOT', 'RUNNING', 'PAUSING', 'PAUSED', 'TERMINATING', 'TERMINATED', 'FAILED')),
    add column if not exists state_reason text,            -- why FAILED (or who paused)
    add column if not exists state_changed_at timestamptz not null default clock_timestamp();

create table if not exists peer (
    name       text primary key,
    kind       text not null check (kind in ('postgres', 'pgteleport')),
    config     jsonb not null,         -- the connection; its password never leaves through the API
    created_at timestamptz not null default clock_timestamp(),
    updated_at timestamptz not null default clock_timestamp()
);

create table if not exists alert_config (
    id           bigserial primary key,
    service_type text not null,
    config       jsonb not null,
    created_at   timestamptz not null default clock_timestamp(),
    unique (service_type, config)      -- a repeated create returns the same id
);
