-- pgteleport source, version 1: the event queue, capture triggers and schema-change state.
-- Runs with search_path set to the internal schema (then pg_temp), so every object below
-- lands there and functions pin that search_path with `set search_path from current`.
--
-- Queue: three event tables written round-robin (PgQ's rotation). The current one is
-- `queue_rotation.last_value % 3`; a sequence is read outside MVCC, so a switch is seen by
-- every writer at once, even inside REPEATABLE READ transactions. Old tables are emptied with
-- TRUNCATE once every batch reading them is acknowledged: no per-event DELETE, no dead tuples.

create sequence if not exists event_id_seq cache 1;  -- cache 1: ids follow capture order
create sequence if not exists queue_rotation minvalue 0 start 0;

create table if not exists event (
    ev_id     bigint      not null,
    ev_txid   xid8        not null,
    ev_time   timestamptz not null,
    ev_op     "char"      not null,   -- I, U, D, T (truncate), S (schema version), Q (sequences)
    ev_schema name        not null,
    ev_table  name        not null,   -- for S and Q: the target's name
    -- json, not jsonb: json keeps the text it is given (numeric precision, a float's -0, a
    -- json column's duplicate keys and key order).
    ev_key    json,                   -- old key: DELETE, and UPDATE that changed it
    ev_data   json,                   -- new row image (UPDATE: changed columns and the key)
    ev_relid  oid                     -- the table (names change with renames; OIDs do not)
);
create table if not exists event_0 () inherits (event);
create table if not exists event_1 () inherits (event);
create table if not exists event_2 () inherits (event);
create index if not exists event_0_txid on event_0 (ev_txid);
create index if not exists event_1_txid on event_1 (ev_txid);
create index if not exists event_2_txid on event_2 (ev_txid);

-- State of each event table. For a table that is not current: `done` means it is empty
-- and may become current; otherwise `switched` is the snapshot taken right after writers
-- were moved away from it (every transaction that could still write to it has an xid below
-- its xmax).
create table if not exists queue_table (
    idx         int primary key check (idx between 0 and 2),
    done        boolean not null,
    switched    pg_snapshot,
    switched_at timestamptz           -- when writers last moved away from this table
);
insert into queue_table (idx, done) values (0, false), (1, true), (2, true)
    on conflict do nothing;

-- One row per target: the batcher's cursor and the acknowledged position.
create table if not exists target_state (
    target        text primary key,
    next_seq      bigint not null default 1,
    acked_seq     bigint not null default 0,
    last_snapshot pg_snapshot not null,   -- batches cover every transaction visible here
    acked_at      timestamptz,
    acked_ddl     bigint not null default 0,  -- schema version the target reported applied
    last_error    text,                       -- last transmit error, for `pgteleport status`
    last_error_at timestamptz
);

-- A batch: the events of the transactions visible in snap_to and not in snap_from, of the
-- tables matching `filter`, restricted to `txids` when one interval was split.
create table if not exists batch (
    target     text   not null references target_state on delete cascade,
    seq        bigint not null,
    snap_from  pg_snapshot not null,
    snap_to    pg_snapshot not null,
    txids      xid8[],
    filter     text   not null,
    events     bigint not null,
    created_at timestamptz not null default clock_timestamp(),
    acked_at   timestamptz,
    primary key (target, seq)
);

-- The ddlwatcher's last catalog snapshot per target, and the schema versions it derived;
-- a schema event ('S') in the queue marks where each version belongs in the stream.
create table if not exists schema_snapshot (
    target  text primary key references target_state on delete cascade,
    catalog jsonb not null,
    taken_at timestamptz not null default clock_timestamp()
);

create table if not exists ddl (
    target     text   not null references target_state on delete cascade,
    version    bigint not null,
    statements jsonb  not null,
    created_at timestamptz not null default clock_timestamp(),
    primary key (target, version)
);

-- Puts one event into the current queue table (schema and sequence events, TRUNCATE, and
-- the rows a table held when its trigger was installed).
create or replace function enqueue(op "char", sch name, tbl name, relid oid, k json, d json) returns void
language plpgsql set search_path from current as $$
declare
    q bigint;
begin
    select last_value % 3 into q from queue_rotation;
    if q = 0 then
        insert into event_0 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(), op, sch, tbl, k, d, relid);
    elsif q = 1 then
        insert into event_1 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(), op, sch, tbl, k, d, relid);
    else
        insert into event_2 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(), op, sch, tbl, k, d, relid);
    end if;
end
$$;

-- TRUNCATE: a statement-level trigger per captured table queues one 'T' event per truncated
-- table; the tables of one statement (several, or through CASCADE) queue consecutive events,
-- truncated together on the target.
create or replace function capture_truncate() returns trigger
language plpgsql security definer set search_path from current as $$
begin
    perform enqueue('T', tg_table_schema, tg_table_name, tg_relid, null::json, null::json);
    return null;
end
$$;

-- The row trigger. SECURITY DEFINER so that application roles need no grant on the queue; it
-- never swallows an error. Arguments: the key columns (primary key, replica identity or
-- unique NOT NULL index; none for full-row identity, when the whole old row is the key),
-- then '' and the columns sent as their text form: arrays (JSON arrays would lose their
-- bounds) and json/jsonb (a JSON null stays apart from SQL NULL). An UPDATE ships only the
-- columns that changed, and the key; one that changes nothing queues nothing. The insert is
-- written out here rather than calling enqueue(): one PL/pgSQL call less per captured row.
create or replace function capture_row() returns trigger
language plpgsql security definer set search_path from current as $$
declare
    q    bigint;
    k    json;
    d    json;
    o    json;
    i    int;
    npk  int := tg_nargs;
    arrs jsonb := '{}';
    txt  text;
begin
    for i in 0 .. tg_nargs - 1 loop
        if tg_argv[i] = '' then
            npk := i;
            exit;
        end if;
    end loop;
    if tg_op = 'INSERT' then
        d := to_json(new);
    elsif tg_op = 'UPDATE' then
        d := to_json(new);
        o := to_json(old);
        if d::text = o::text then
            return null; -- nothing changed: nothing to replicate
        end if;
        if octet_length(d::text) > 2048 then
            -- A large row: only the columns that changed, and the key, so that an unchanged
            -- large value is not shipped again (the applier updates the columns an image
            -- carries). A small row travels whole: cheaper than finding what changed.
            select json_object_agg(n.key, n.value) into d
              from json_each(d) as n
             where n.value::text is distinct from (o -> n.key)::text
                or n.key = any(tg_argv[0:npk - 1]);
        end if;
        if npk = 0 then
            k := o;
        else
            for i in 0 .. npk - 1 loop
                if (o ->> tg_argv[i]) is distinct from (d ->> tg_argv[i]) then
                    select json_object_agg(a, o -> a) into k from unnest(tg_argv[0:npk - 1]) as a;
                    exit;
                end if;
            end loop;
        end if;
    else
        o := to_json(old);
        if npk = 0 then
            k := o;
        else
            select json_object_agg(a, o -> a) into k from unnest(tg_argv[0:npk - 1]) as a;
        end if;
    end if;
    if tg_op <> 'DELETE' and npk < tg_nargs - 1 then
        for i in npk + 1 .. tg_nargs - 1 loop
            continue when (d -> tg_argv[i]) is null;
            execute format('select ($1).%I::text', tg_argv[i]) into txt using new;
            arrs := arrs || jsonb_build_object(tg_argv[i], txt);
        end loop;
        select json_object_agg(j.key, case when arrs ? j.key then to_json(arrs ->> j.key) else j.value end)
          into d from json_each(d) as j;
    end if;
    select last_value % 3 into q from queue_rotation;
    if q = 0 then
        insert into event_0 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(),
                                    substr(tg_op, 1, 1)::"char", tg_table_schema, tg_table_name, k, d, tg_relid);
    elsif q = 1 then
        insert into event_1 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(),
                                    substr(tg_op, 1, 1)::"char", tg_table_schema, tg_table_name, k, d, tg_relid);
    else
        insert into event_2 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(),
                                    substr(tg_op, 1, 1)::"char", tg_table_schema, tg_table_name, k, d, tg_relid);
    end if;
    return null;
end
$$;
