-- pgteleport source, version 9: the capture trigger evaluates fewer PL/pgSQL expressions
-- (same behaviour as version 3's). PL/pgSQL prepares every expression it evaluates once per
-- transaction, and a write often runs the trigger once in its transaction: `perf` put that
-- preparation at a sixth of the trigger's CPU (pgbench one-row UPDATE). Gone from the common
-- paths: the variable defaults (one parsed '{}'::jsonb a call), the scan of the arguments
-- for '' on every call (the key's length is looked up only when a key is built).
-- Measured with `bash bench/trigger_variants.sh` (see README, "Source write overhead").

create or replace function capture_row() returns trigger
language plpgsql security definer set search_path from current as $$
declare
    q    bigint;
    k    json;
    d    json;
    o    json;
    i    int;
    npk  int;
    arrs jsonb;
    txt  text;
begin
    -- PL/pgSQL prepares each expression again in every transaction, and a trigger often runs
    -- once per transaction: the common paths below evaluate as few expressions as they can
    -- (no variable defaults; the key's length looked up only when a key is built).
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
            npk := coalesce(array_position(tg_argv, ''), tg_nargs);
            select json_object_agg(n.key, n.value) into d
              from json_each(d) as n
             where n.value::text is distinct from (o -> n.key)::text
                or n.key = any(tg_argv[0:npk - 1]);
        end if;
        -- The key columns come first in the arguments, up to '' (none: the whole row is
        -- the key). The old key travels when one of them changed.
        if tg_nargs = 0 or tg_argv[0] = '' then
            k := o;
        else
            for i in 0 .. tg_nargs - 1 loop
                exit when tg_argv[i] = '';
                if (o ->> tg_argv[i]) is distinct from (d ->> tg_argv[i]) then
                    npk := coalesce(array_position(tg_argv, ''), tg_nargs);
                    select json_object_agg(a, o -> a) into k from unnest(tg_argv[0:npk - 1]) as a;
                    exit;
                end if;
            end loop;
        end if;
    else
        o := to_json(old);
        if tg_nargs = 0 or tg_argv[0] = '' then
            k := o;
        else
            npk := coalesce(array_position(tg_argv, ''), tg_nargs);
            select json_object_agg(a, o -> a) into k from unnest(tg_argv[0:npk - 1]) as a;
        end if;
    end if;
    -- Columns sent as their text form follow the '' argument.
    if tg_op <> 'DELETE' and '' = any(tg_argv) then
        arrs := '{}';
        for i in array_position(tg_argv, '') + 1 .. tg_nargs - 1 loop
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
