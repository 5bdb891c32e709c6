-- pgteleport source, version 2: schema changes.
-- Events carry the table's OID (names change with renames; the OID does not). The
-- ddlwatcher keeps the last catalog snapshot per target and the DDL versions it derived,
-- and puts a schema event ('S') into the queue where each version belongs in the stream.

alter table event add column if not exists ev_relid oid;

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

alter table target_state add column if not exists acked_ddl bigint not null default 0;

-- Puts one event into the current queue table (used for schema events and for the rows a
-- table held when its trigger was installed).
create or replace function enqueue(op "char", sch name, tbl name, relid oid, k jsonb, d jsonb) returns void
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
