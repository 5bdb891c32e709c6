-- pgteleport source, version 8: an UPDATE ships only the columns that changed (and the key).
-- A 20 MB value that an UPDATE does not touch is not queued or sent again; an UPDATE that
-- changes nothing queues nothing.
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
    changed boolean;
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
        o := to_json(old);
        -- Only the columns that changed, and the key: an unchanged large value is not
        -- shipped again (the applier updates the columns an image carries).
        select json_object_agg(n.key, n.value), bool_or(n.value::text is distinct from p.value::text)
          into d, changed
          from json_each(to_json(new)) as n
          join json_each(o) as p on p.key = n.key
         where n.value::text is distinct from p.value::text
            or n.key = any(tg_argv[0:npk - 1]);
        if not coalesce(changed, false) then
            return null; -- nothing changed: nothing to replicate
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
