-- pgteleport target, version 1: the applied position.
-- One row per (source instance, target name). Updated in the same transaction as the
-- batch's changes, so a batch is applied exactly once whatever crashes.
create table if not exists applied (
    source     text   not null,
    target     text   not null,
    seq        bigint not null,
    events     bigint not null default 0,
    applied_at timestamptz not null default clock_timestamp(),
    primary key (source, target)
);
