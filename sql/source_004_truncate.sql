-- pgteleport source, version 4: TRUNCATE capture.
-- A statement-level trigger per captured table queues one 'T' event per truncated table;
-- the tables of one TRUNCATE statement (several, or through CASCADE) queue consecutive
-- events, applied on the target as one TRUNCATE of them all.
create or replace function capture_truncate() returns trigger
language plpgsql security definer set search_path from current as $$
begin
    perform enqueue('T', tg_table_schema, tg_table_name, tg_relid, null, null);
    return null;
end
$$;
