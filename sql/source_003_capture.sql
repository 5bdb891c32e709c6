-- pgteleport source, version 3: a cheaper capture trigger (same behaviour as version 1's).
-- The rotation is read with pg_sequence_last_value() instead of a SELECT from the sequence.
-- Measured with `bash bench/trigger_variants.sh` (see README, "Source write overhead").

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
    -- The current event table, read as a function of the sequence: a simple expression,
    -- which PL/pgSQL evaluates without starting a query (NULL before the first rotation).
    q := coalesce(pg_sequence_last_value('queue_rotation'::regclass), 0) % 3;
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
