-- pgteleport source, version 12: key changes under a DEFERRABLE key. One UPDATE may then
-- move keys through each other (swap two rows' keys, `SET id = id + 1` in any order); its
-- row events name old keys of the rows before the statement, which the applier can only
-- match all at once. Tables with a DEFERRABLE primary key or unique constraint number
-- their UPDATE statements (a statement-level trigger sets `pgteleport.statement` to
-- `relid:n` for the transaction), and the row trigger gives each UPDATE of that table in
-- that statement its old key with the number under the member '' (no column has an
-- empty name): their row trigger is capture_row_numbered(). Other tables keep capture_row.

create or replace function count_statement() returns trigger
language plpgsql security definer set search_path from current as $$
declare
    n bigint := coalesce(nullif(current_setting('pgteleport.statements', true), ''), '0')::bigint + 1;
begin
    perform set_config('pgteleport.statements', n::text, true);
    perform set_config('pgteleport.statement', tg_relid::text || ':' || n, true);
    return null;
end
$$;

create or replace function capture_table(rel oid, args text[], copy_rows boolean) returns bigint
language plpgsql set search_path from current as $$
declare
    sch name;
    tbl name;
    existing bytea;
    wanted bytea;
    n bigint := 0;
    trigger_args text[] := args;
    partitioned boolean;
    existing_fn name;
    fn name := 'capture_row';
begin
    select ns.nspname, c.relname into sch, tbl
      from pg_catalog.pg_class c join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
     where c.oid = rel;
    if not found then
        raise exception 'table with OID % does not exist', rel;
    end if;
    -- A partitioned table: the row trigger (cloned onto every partition, present and
    -- future) names the partitioned table after a second ''.
    partitioned := (select c.relkind from pg_catalog.pg_class c where c.oid = rel) = 'p';
    if partitioned then
        trigger_args := args || case when array_position(args, '') is null then array['', ''] else array[''] end
                        || array[sch::text, tbl::text, rel::text];
    end if;
    if not exists (select 1 from pg_catalog.pg_trigger where tgrelid = rel and tgname = 'pgteleport_truncate') then
        execute format('create trigger pgteleport_truncate after truncate on %I.%I for each statement execute function %I.capture_truncate()',
                       sch, tbl, current_schema());
    end if;
    -- A DEFERRABLE primary key or unique constraint: statements are numbered, so that the
    -- key changes of one (which may pass through each other) are applied together.
    if exists (select 1 from pg_catalog.pg_constraint k
                where k.conrelid = rel and k.contype in ('p', 'u') and k.condeferrable) then
        fn := 'capture_row_numbered';
        if not exists (select 1 from pg_catalog.pg_trigger where tgrelid = rel and tgname = 'pgteleport_statement') then
            execute format('create trigger pgteleport_statement before update on %I.%I for each statement execute function %I.count_statement()',
                           sch, tbl, current_schema());
        end if;
    elsif exists (select 1 from pg_catalog.pg_trigger where tgrelid = rel and tgname = 'pgteleport_statement') then
        execute format('drop trigger pgteleport_statement on %I.%I', sch, tbl);
    end if;
    select t.tgargs, p.proname into existing, existing_fn
      from pg_catalog.pg_trigger t join pg_catalog.pg_proc p on p.oid = t.tgfoid
     where t.tgrelid = rel and t.tgname = 'pgteleport_capture'
       and p.pronamespace = current_schema()::regnamespace and p.proname in ('capture_row', 'capture_row_numbered');
    wanted := coalesce((select string_agg(convert_to(a, pg_catalog.getdatabaseencoding()) || '\x00'::bytea, ''::bytea order by o)
                          from unnest(trigger_args) with ordinality as u(a, o)), ''::bytea);
    if existing = wanted and existing_fn = fn then
        if partitioned then
            -- Partitions the row trigger fires on but whose rows were never queued.
            n := capture_partitions(rel, args, true);
            return case when n > 0 then n else -1 end;
        end if;
        return -1;
    end if;
    execute format('create or replace trigger pgteleport_capture after insert or update or delete on %I.%I for each row execute function %I.%I(%s)',
                   sch, tbl, current_schema(), fn,
                   coalesce((select string_agg(quote_literal(a), ', ' order by o) from unnest(trigger_args) with ordinality as u(a, o)), ''));
    if existing is null and copy_rows then
        n := queue_rows(rel, sch, tbl, rel, args, null);
    end if;
    if partitioned then
        -- A new row trigger: the rows of the partitions are queued above (through the
        -- partitioned table) or come with the initial load; a changed one (the key): the
        -- partitions not known yet are copied.
        n := n + capture_partitions(rel, args, existing is not null);
    end if;
    return n;
end
$$;

-- The row trigger of a table with a DEFERRABLE key: capture_row (version 11) with the
-- statement number (the block marked below). Kept identical to capture_row otherwise (a
-- unit test compares them).
create or replace function capture_row_numbered() returns trigger
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
        -- A partition whose rows are not on the target yet (created or attached since the
        -- last look) is skipped: its rows are queued all at once when it is taken in. The
        -- answer is kept for the transaction (a simple expression, no query, for the next
        -- rows): the lock that taking a partition in or out needs waits for this one.
        if current_setting('pgteleport.known_' || tg_relid, true) is distinct from rel::text then
            if not exists (select 1 from known_partition k where k.relid = tg_relid and k.root = rel) then
                return null;
            end if;
            perform set_config('pgteleport.known_' || tg_relid, rel::text, true);
        end if;
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
            -- numbered: begin
            -- A numbered statement on this table (it has a DEFERRABLE key): every row it
            -- changes names its old key, with the number under the member '' (no column
            -- has that name), so the applier applies the statement's rows together.
            txt := current_setting('pgteleport.statement', true);
            if txt <> '' and split_part(txt, ':', 1) = rel::text then
                if k is null then
                    select json_object_agg(a, o -> a) into k from unnest(tg_argv[0:npk - 1]) as a;
                end if;
                k := (k::jsonb || jsonb_build_object('', split_part(txt, ':', 2)))::json;
            end if;
            -- numbered: end
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
