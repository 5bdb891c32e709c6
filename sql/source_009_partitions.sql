-- pgteleport source, version 9: partitioned tables. A row trigger on a partitioned table
-- fires on its partitions, where tg_table_name and tg_relid are the partition's; the
-- catalog model, the target and the filters know the partitioned table. Its trigger now
-- carries the partitioned table's schema, name and oid after a second '' argument, and the
-- row trigger queues the partitions' rows under them.

create or replace function capture_table(rel oid, args text[], copy_rows boolean) returns bigint
language plpgsql set search_path from current as $$
declare
    sch name;
    tbl name;
    existing bytea;
    wanted bytea;
    text_form text[];
    image text;
    n bigint := 0;
    trigger_args text[] := args;
begin
    select ns.nspname, c.relname into sch, tbl
      from pg_catalog.pg_class c join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
     where c.oid = rel;
    if not found then
        raise exception 'table with OID % does not exist', rel;
    end if;
    -- A partitioned table: the row trigger (cloned onto every partition, present and
    -- future) names the partitioned table after a second ''.
    if (select c.relkind from pg_catalog.pg_class c where c.oid = rel) = 'p' then
        trigger_args := args || case when array_position(args, '') is null then array['', ''] else array[''] end
                        || array[sch::text, tbl::text, rel::text];
    end if;
    if not exists (select 1 from pg_catalog.pg_trigger where tgrelid = rel and tgname = 'pgteleport_truncate') then
        execute format('create trigger pgteleport_truncate after truncate on %I.%I for each statement execute function %I.capture_truncate()',
                       sch, tbl, current_schema());
    end if;
    select t.tgargs into existing
      from pg_catalog.pg_trigger t join pg_catalog.pg_proc p on p.oid = t.tgfoid
     where t.tgrelid = rel and t.tgname = 'pgteleport_capture'
       and p.pronamespace = current_schema()::regnamespace and p.proname = 'capture_row';
    wanted := coalesce((select string_agg(convert_to(a, pg_catalog.getdatabaseencoding()) || '\x00'::bytea, ''::bytea order by o)
                          from unnest(trigger_args) with ordinality as u(a, o)), ''::bytea);
    if existing = wanted then
        return -1;
    end if;
    execute format('create or replace trigger pgteleport_capture after insert or update or delete on %I.%I for each row execute function %I.capture_row(%s)',
                   sch, tbl, current_schema(),
                   coalesce((select string_agg(quote_literal(a), ', ' order by o) from unnest(trigger_args) with ordinality as u(a, o)), ''));
    if existing is null and copy_rows then
        text_form := case when array_position(args, '') is null then array[]::text[]
                          else args[array_position(args, '') + 1:] end;
        image := case when cardinality(text_form) = 0 then 'to_json(pgteleport_row.*)'
                      else format('(select json_object_agg(j.key, case j.key %s else j.value end) from json_each(to_json(pgteleport_row.*)) as j)',
                                  (select string_agg(format('when %L then to_json(pgteleport_row.%I::text)', c, c), ' ')
                                     from unnest(text_form) as c))
                 end;
        execute format('select %I.enqueue(''I'', %L, %L, %s::oid, null, %s) from %I.%I pgteleport_row',
                       current_schema(), sch, tbl, rel, image, sch, tbl);
        get diagnostics n = row_count;
    end if;
    return n;
end
$$;

create or replace function capture_row() returns trigger
language plpgsql security definer set search_path from current as $$
declare
    q    bigint;
    k    json;
    d    json;
    o    json;
    i    int;
    npk  int := tg_nargs;
    nend int := tg_nargs;
    arrs jsonb := '{}';
    txt  text;
    sch  name := tg_table_schema;
    tbl  name := tg_table_name;
    rel  oid := tg_relid;
begin
    for i in 0 .. tg_nargs - 1 loop
        if tg_argv[i] = '' then
            if npk = tg_nargs then
                npk := i;
            else
                nend := i;
                exit;
            end if;
        end if;
    end loop;
    if nend < tg_nargs then
        -- A partition: its rows are the partitioned table's, named by the arguments.
        sch := tg_argv[nend + 1];
        tbl := tg_argv[nend + 2];
        rel := tg_argv[nend + 3]::oid;
    end if;
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
    if tg_op <> 'DELETE' and npk < nend - 1 then
        for i in npk + 1 .. nend - 1 loop
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
                                    substr(tg_op, 1, 1)::"char", sch, tbl, k, d, rel);
    elsif q = 1 then
        insert into event_1 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(),
                                    substr(tg_op, 1, 1)::"char", sch, tbl, k, d, rel);
    else
        insert into event_2 values (nextval('event_id_seq'), pg_current_xact_id(), clock_timestamp(),
                                    substr(tg_op, 1, 1)::"char", sch, tbl, k, d, rel);
    end if;
    return null;
end
$$;
