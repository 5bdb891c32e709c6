-- pgteleport target, version 2: initial load state.
-- One row per loaded table: live batches of its (source, target) wait while any table is
-- not done, then skip the events of transactions visible in the table's load snapshot
-- (they are in the copy). A range is done only together with its rows (same transaction).
create table if not exists load_table (
    source           text not null,
    target           text not null,
    schema_name      text not null,   -- on the target
    table_name       text not null,
    state            text not null check (state in ('pending', 'copying', 'done')),
    snapshot         text,            -- source pg_snapshot the rows were read under
    created_by_load  boolean not null default false,
    rows             bigint not null default 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    primary key (source, target, schema_name, table_name)
);

create table if not exists load_range (
    source      text   not null,
    target      text   not null,
    schema_name text   not null,
    table_name  text   not null,
    range_no    int    not null,
    snapshot    text   not null,
    rows        bigint not null,
    primary key (source, target, schema_name, table_name, range_no, snapshot)
);
