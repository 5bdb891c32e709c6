-- pgteleport target, version 3: the last DDL version applied per (source, target),
-- updated in the same transaction as the statements.
create table if not exists ddl_applied (
    source  text   not null,
    target  text   not null,
    version bigint not null,
    applied_at timestamptz not null default clock_timestamp(),
    primary key (source, target)
);
