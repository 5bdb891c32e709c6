-- pgteleport source, version 6: rows per table and mirror, counted when the target
-- acknowledges the batch that carried them (the mirror status's rowsPerTable).
create table if not exists table_rows (
    target      text   not null,
    schema_name text   not null,
    table_name  text   not null,
    inserts     bigint not null default 0,
    updates     bigint not null default 0,
    deletes     bigint not null default 0,
    truncates   bigint not null default 0,
    primary key (target, schema_name, table_name)
);
