-- pgteleport source, version 5: alerts that are firing, per alert configuration, kind and
-- subject (a mirror, or the instance). A row is written once its FIRING message was
-- delivered and removed once its RESOLVED message was: each is sent once, across restarts.
create table if not exists alert_state (
    config_id bigint not null references alert_config on delete cascade,
    alert     text   not null,      -- lag_seconds, queue_mb, held_minutes, open_connections
    subject   text   not null,      -- the mirror, or '' for the instance
    value     float8 not null,      -- the value when it fired
    since     timestamptz not null default clock_timestamp(),
    primary key (config_id, alert, subject)
);
