-- pgteleport source, version 1: the event queue.
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
    ev_op     "char"      not null,   -- I, U, D (T for TRUNCATE later)
    ev_schema name        not null,
    ev_table  name        not null,
    ev_key    jsonb,                  -- old primary key: DELETE, and UPDATE that changed it
    ev_data   jsonb                   -- new row image: INSERT, UPDATE
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
    acked_at      timestamptz
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

-- The row trigger. Arguments: the primary key column names. SECURITY DEFINER so that
-- application roles need no grant on the queue; it never swallows an error.
create or replace function capture_row() returns trigger
language plpgsql security definer set search_path from current as $$
declare
    q   bigint;
    k   jsonb;
    d   jsonb;
    o   jsonb;
    i   int;
begin
    if tg_op = 'INSERT' then
        d := to_jsonb(new);
    elsif tg_op = 'UPDATE' then
        d := to_jsonb(new);
        o := to_jsonb(old);
        for i in 0 .. tg_nargs - 1 loop
            if (o -> tg_argv[i]) is distinct from (d -> tg_argv[i]) then
                select jsonb_object_agg(a, o -> a) into k from unnest(tg_argv) as a;
                exit;
            end if;
        end loop;
    else
        o := to_jsonb(old);
        select jsonb_object_agg(a, o -> a) into k from unnest(tg_argv) as a;
    end if;
    select last_value % 3 into q from queue_rotation;
    if q = 0 then
        insert into event_0 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(),
                                    substr(tg_op, 1, 1)::"char", tg_table_schema, tg_table_name, k, d);
    elsif q = 1 then
        insert into event_1 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(),
                                    substr(tg_op, 1, 1)::"char", tg_table_schema, tg_table_name, k, d);
    else
        insert into event_2 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(),
                                    substr(tg_op, 1, 1)::"char", tg_table_schema, tg_table_name, k, d);
    end if;
    return null;
end
$$;
