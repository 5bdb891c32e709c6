-- pgteleport source, version 5: row images as json, not jsonb.
-- json keeps the text it is given: a json column's duplicate keys and key order, and -0 of a
-- float, reach the target as the source wrote them (jsonb would normalise both).
alter table event alter column ev_key type json using ev_key::json;
alter table event alter column ev_data type json using ev_data::json;

drop function if exists enqueue("char", name, name, oid, jsonb, jsonb);
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

create or replace function capture_truncate() returns trigger
language plpgsql security definer set search_path from current as $$
begin
    perform enqueue('T', tg_table_schema, tg_table_name, tg_relid, null::json, null::json);
    return null;
end
$$;

create or replace function capture_row() returns trigger
language plpgsql security definer set search_path from current as $$
declare
    q   bigint;
    k   json;
    d   json;
    o   json;
    i   int;
begin
    if tg_op = 'INSERT' then
        d := to_json(new);
    elsif tg_op = 'UPDATE' then
        d := to_json(new);
        o := to_json(old);
        for i in 0 .. tg_nargs - 1 loop
            if (o ->> tg_argv[i]) is distinct from (d ->> tg_argv[i]) then
                select json_object_agg(a, o -> a) into k from unnest(tg_argv) as a;
                exit;
            end if;
        end loop;
    else
        o := to_json(old);
        select json_object_agg(a, o -> a) into k from unnest(tg_argv) as a;
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
