-- pgteleport source, version 14: a key image that names no column. The row trigger's
-- arguments name the table's key columns as they were when the trigger was made; a key
-- column renamed (or dropped) since then — until the trigger is made again, at once in
-- event-trigger mode, at the ddlwatcher's next look in diffing mode — is not in the row's
-- image, and the key image was built of nulls under the old name ({"id": null}): an update
-- or delete the target could never match, the old key lost. Now a key image the arguments
-- cannot build (a member missing: key columns are never null, and a null column is a JSON
-- null, not a missing member) is the whole old row, as for a table without a key; the
-- applier takes the key columns it needs from it. The common paths run the same statements
-- as before (the check is inside the expressions that build the key image).
-- And a table that loses its key without `keyless_tables` keeps a row trigger, made again
-- without key columns (whole old rows), instead of keeping one that names a key the table
-- no longer has: on_ddl below, and the ddlwatcher in diffing mode.

create or replace function capture_row() returns trigger
language plpgsql security definer as $$
-- Every statement below costs a writer's transaction about 0.4 µs the first time it runs in
-- that transaction (PL/pgSQL prepares each expression once per transaction), which in
-- short transactions is most of the trigger's cost: the common case (a table with a key,
-- no partition, no column in text form) runs as few statements as it can.
declare
    q    bigint;
    k    pg_catalog.json;
    d    pg_catalog.json;
    o    pg_catalog.json;
    i    int;
    npk  int;  -- the key columns are tg_argv[0 .. npk - 1]
    nend int;  -- null, or where the columns in text form end (tg_argv[npk + 1 .. nend - 1])
    arrs pg_catalog.jsonb;
    txt  pg_catalog.text;
    sch  pg_catalog.name;  -- null, or a partition's partitioned table
    tbl  pg_catalog.name;
    rel  pg_catalog.oid;
begin
    npk := coalesce(pg_catalog.array_position(tg_argv, ''), tg_nargs);
    if npk operator(pg_catalog.<) tg_nargs then
        nend := coalesce(pg_catalog.array_position(tg_argv, '', npk operator(pg_catalog.+) 1), tg_nargs);
        if nend operator(pg_catalog.<) tg_nargs then
            -- A partition: its rows are the partitioned table's, named by the arguments.
            sch := tg_argv[nend operator(pg_catalog.+) 1];
            tbl := tg_argv[nend operator(pg_catalog.+) 2];
            rel := tg_argv[nend operator(pg_catalog.+) 3]::pg_catalog.oid;
            -- A partition whose rows are not on the target yet (created or attached since the
            -- last look) is skipped: its rows are queued all at once when it is taken in. The
            -- answer is kept for the transaction (a simple expression, no query, for the next
            -- rows): the lock that taking a partition in or out needs waits for this one.
            if coalesce(pg_catalog.current_setting('pgteleport.known_' operator(pg_catalog.||) tg_relid, true), '')
               operator(pg_catalog.<>) rel::pg_catalog.text then
                if not exists (select 1 from @schema@.known_partition k
                                where k.relid operator(pg_catalog.=) tg_relid and k.root operator(pg_catalog.=) rel) then
                    return null;
                end if;
                perform pg_catalog.set_config('pgteleport.known_' operator(pg_catalog.||) tg_relid, rel::pg_catalog.text, true);
            end if;
        end if;
    end if;
    if tg_op operator(pg_catalog.=) 'INSERT' then
        d := pg_catalog.to_json(new);
    elsif tg_op operator(pg_catalog.=) 'UPDATE' then
        d := pg_catalog.to_json(new);
        o := pg_catalog.to_json(old);
        if d::pg_catalog.text operator(pg_catalog.=) o::pg_catalog.text then
            return null; -- nothing changed: nothing to replicate
        end if;
        if pg_catalog.octet_length(d::pg_catalog.text) operator(pg_catalog.>) 2048 then
            -- A large row: only the columns that changed, and the key, so that an unchanged
            -- large value is not shipped again (the applier updates the columns an image
            -- carries). A small row travels whole: cheaper than finding what changed.
            select pg_catalog.json_object_agg(n.key, n.value) into d
              from pg_catalog.json_each(d) as n
             where (n.value::pg_catalog.text operator(pg_catalog.<>) (o operator(pg_catalog.->) n.key)::pg_catalog.text) is not false
                or n.key operator(pg_catalog.=) any(tg_argv[0:(npk operator(pg_catalog.-) 1)]);
        end if;
        -- The old key when the key changed (members of images made by to_json from one row
        -- type: equal values, equal text).
        if npk operator(pg_catalog.=) 0 then
            k := o;
        elsif npk operator(pg_catalog.=) 1 then
            if ((o operator(pg_catalog.->) tg_argv[0])::pg_catalog.text
                operator(pg_catalog.<>) (d operator(pg_catalog.->) tg_argv[0])::pg_catalog.text) is not false then
                k := case when (o operator(pg_catalog.->) tg_argv[0]) is null then o
                          else pg_catalog.json_build_object(tg_argv[0], o operator(pg_catalog.->) tg_argv[0]) end;
            end if;
        else
            for i in 0 .. (npk operator(pg_catalog.-) 1) loop
                if ((o operator(pg_catalog.->) tg_argv[i])::pg_catalog.text
                    operator(pg_catalog.<>) (d operator(pg_catalog.->) tg_argv[i])::pg_catalog.text) is not false then
                    select case when pg_catalog.bool_or((o operator(pg_catalog.->) a) is null) then o
                                else pg_catalog.json_object_agg(a, o operator(pg_catalog.->) a) end into k
                      from pg_catalog.unnest(tg_argv[0:(npk operator(pg_catalog.-) 1)]) as a;
                    exit;
                end if;
            end loop;
        end if;
    else
        o := pg_catalog.to_json(old);
        if npk operator(pg_catalog.=) 0 then
            k := o;
        elsif npk operator(pg_catalog.=) 1 then
            k := case when (o operator(pg_catalog.->) tg_argv[0]) is null then o
                      else pg_catalog.json_build_object(tg_argv[0], o operator(pg_catalog.->) tg_argv[0]) end;
        else
            select case when pg_catalog.bool_or((o operator(pg_catalog.->) a) is null) then o
                        else pg_catalog.json_object_agg(a, o operator(pg_catalog.->) a) end into k
              from pg_catalog.unnest(tg_argv[0:(npk operator(pg_catalog.-) 1)]) as a;
        end if;
    end if;
    if nend operator(pg_catalog.>) (npk operator(pg_catalog.+) 1) and tg_op operator(pg_catalog.<>) 'DELETE' then
        -- Columns in text form (arrays, json, jsonb, xml): their text replaces their JSON.
        arrs := '{}';
        for i in (npk operator(pg_catalog.+) 1) .. (nend operator(pg_catalog.-) 1) loop
            continue when (d operator(pg_catalog.->) tg_argv[i]) is null;
            execute pg_catalog.format('select ($1).%I::pg_catalog.text', tg_argv[i]) into txt using new;
            arrs := arrs operator(pg_catalog.||) pg_catalog.jsonb_build_object(tg_argv[i], txt);
        end loop;
        select pg_catalog.json_object_agg(j.key, case when arrs operator(pg_catalog.?) j.key
                                                      then pg_catalog.to_json(arrs operator(pg_catalog.->>) j.key)
                                                      else j.value end)
          into d from pg_catalog.json_each(d) as j;
    end if;
    -- The current event table, read as a function of the sequence: a simple expression,
    -- which PL/pgSQL evaluates without starting a query (NULL before the first rotation).
    q := coalesce(pg_catalog.pg_sequence_last_value('@schema_in_literal@.queue_rotation'::pg_catalog.regclass), 0)
         operator(pg_catalog.%) 3;
    if q operator(pg_catalog.=) 0 then
        insert into @schema@.event_0
        values (pg_catalog.nextval('@schema_in_literal@.event_id_seq'::pg_catalog.regclass), pg_catalog.pg_current_xact_id(),
                pg_catalog.clock_timestamp(), pg_catalog.substr(tg_op, 1, 1)::pg_catalog."char",
                coalesce(sch, tg_table_schema), coalesce(tbl, tg_table_name), k, d, coalesce(rel, tg_relid));
    elsif q operator(pg_catalog.=) 1 then
        insert into @schema@.event_1
        values (pg_catalog.nextval('@schema_in_literal@.event_id_seq'::pg_catalog.regclass), pg_catalog.pg_current_xact_id(),
                pg_catalog.clock_timestamp(), pg_catalog.substr(tg_op, 1, 1)::pg_catalog."char",
                coalesce(sch, tg_table_schema), coalesce(tbl, tg_table_name), k, d, coalesce(rel, tg_relid));
    else
        insert into @schema@.event_2
        values (pg_catalog.nextval('@schema_in_literal@.event_id_seq'::pg_catalog.regclass), pg_catalog.pg_current_xact_id(),
                pg_catalog.clock_timestamp(), pg_catalog.substr(tg_op, 1, 1)::pg_catalog."char",
                coalesce(sch, tg_table_schema), coalesce(tbl, tg_table_name), k, d, coalesce(rel, tg_relid));
    end if;
    return null;
end
$$;

create or replace function capture_row_numbered() returns trigger
language plpgsql security definer as $$
-- Every statement below costs a writer's transaction about 0.4 µs the first time it runs in
-- that transaction (PL/pgSQL prepares each expression once per transaction), which in
-- short transactions is most of the trigger's cost: the common case (a table with a key,
-- no partition, no column in text form) runs as few statements as it can.
declare
    q    bigint;
    k    pg_catalog.json;
    d    pg_catalog.json;
    o    pg_catalog.json;
    i    int;
    npk  int;  -- the key columns are tg_argv[0 .. npk - 1]
    nend int;  -- null, or where the columns in text form end (tg_argv[npk + 1 .. nend - 1])
    arrs pg_catalog.jsonb;
    txt  pg_catalog.text;
    sch  pg_catalog.name;  -- null, or a partition's partitioned table
    tbl  pg_catalog.name;
    rel  pg_catalog.oid;
begin
    npk := coalesce(pg_catalog.array_position(tg_argv, ''), tg_nargs);
    if npk operator(pg_catalog.<) tg_nargs then
        nend := coalesce(pg_catalog.array_position(tg_argv, '', npk operator(pg_catalog.+) 1), tg_nargs);
        if nend operator(pg_catalog.<) tg_nargs then
            -- A partition: its rows are the partitioned table's, named by the arguments.
            sch := tg_argv[nend operator(pg_catalog.+) 1];
            tbl := tg_argv[nend operator(pg_catalog.+) 2];
            rel := tg_argv[nend operator(pg_catalog.+) 3]::pg_catalog.oid;
            -- A partition whose rows are not on the target yet (created or attached since the
            -- last look) is skipped: its rows are queued all at once when it is taken in. The
            -- answer is kept for the transaction (a simple expression, no query, for the next
            -- rows): the lock that taking a partition in or out needs waits for this one.
            if coalesce(pg_catalog.current_setting('pgteleport.known_' operator(pg_catalog.||) tg_relid, true), '')
               operator(pg_catalog.<>) rel::pg_catalog.text then
                if not exists (select 1 from @schema@.known_partition k
                                where k.relid operator(pg_catalog.=) tg_relid and k.root operator(pg_catalog.=) rel) then
                    return null;
                end if;
                perform pg_catalog.set_config('pgteleport.known_' operator(pg_catalog.||) tg_relid, rel::pg_catalog.text, true);
            end if;
        end if;
    end if;
    if tg_op operator(pg_catalog.=) 'INSERT' then
        d := pg_catalog.to_json(new);
    elsif tg_op operator(pg_catalog.=) 'UPDATE' then
        d := pg_catalog.to_json(new);
        o := pg_catalog.to_json(old);
        if d::pg_catalog.text operator(pg_catalog.=) o::pg_catalog.text then
            return null; -- nothing changed: nothing to replicate
        end if;
        if pg_catalog.octet_length(d::pg_catalog.text) operator(pg_catalog.>) 2048 then
            -- A large row: only the columns that changed, and the key, so that an unchanged
            -- large value is not shipped again (the applier updates the columns an image
            -- carries). A small row travels whole: cheaper than finding what changed.
            select pg_catalog.json_object_agg(n.key, n.value) into d
              from pg_catalog.json_each(d) as n
             where (n.value::pg_catalog.text operator(pg_catalog.<>) (o operator(pg_catalog.->) n.key)::pg_catalog.text) is not false
                or n.key operator(pg_catalog.=) any(tg_argv[0:(npk operator(pg_catalog.-) 1)]);
        end if;
        -- The old key when the key changed (members of images made by to_json from one row
        -- type: equal values, equal text).
        if npk operator(pg_catalog.=) 0 then
            k := o;
        elsif npk operator(pg_catalog.=) 1 then
            if ((o operator(pg_catalog.->) tg_argv[0])::pg_catalog.text
                operator(pg_catalog.<>) (d operator(pg_catalog.->) tg_argv[0])::pg_catalog.text) is not false then
                k := case when (o operator(pg_catalog.->) tg_argv[0]) is null then o
                          else pg_catalog.json_build_object(tg_argv[0], o operator(pg_catalog.->) tg_argv[0]) end;
            end if;
        else
            for i in 0 .. (npk operator(pg_catalog.-) 1) loop
                if ((o operator(pg_catalog.->) tg_argv[i])::pg_catalog.text
                    operator(pg_catalog.<>) (d operator(pg_catalog.->) tg_argv[i])::pg_catalog.text) is not false then
                    select case when pg_catalog.bool_or((o operator(pg_catalog.->) a) is null) then o
                                else pg_catalog.json_object_agg(a, o operator(pg_catalog.->) a) end into k
                      from pg_catalog.unnest(tg_argv[0:(npk operator(pg_catalog.-) 1)]) as a;
                    exit;
                end if;
            end loop;
        end if;
        -- numbered: begin
        -- A numbered statement on this table (it has a DEFERRABLE key): every row it
        -- changes names its old key, with the number under the member '' (no column
        -- has that name), so the applier applies the statement's rows together.
        txt := pg_catalog.current_setting('pgteleport.statement', true);
        if npk operator(pg_catalog.>) 0 and txt operator(pg_catalog.<>) ''
           and pg_catalog.split_part(txt, ':', 1) operator(pg_catalog.=) coalesce(rel, tg_relid)::pg_catalog.text then
            if k is null then
                select pg_catalog.json_object_agg(a, o operator(pg_catalog.->) a) into k
                  from pg_catalog.unnest(tg_argv[0:(npk operator(pg_catalog.-) 1)]) as a;
            end if;
            k := (k::pg_catalog.jsonb operator(pg_catalog.||)
                  pg_catalog.jsonb_build_object('', pg_catalog.split_part(txt, ':', 2)))::pg_catalog.json;
        end if;
        -- numbered: end
    else
        o := pg_catalog.to_json(old);
        if npk operator(pg_catalog.=) 0 then
            k := o;
        elsif npk operator(pg_catalog.=) 1 then
            k := case when (o operator(pg_catalog.->) tg_argv[0]) is null then o
                      else pg_catalog.json_build_object(tg_argv[0], o operator(pg_catalog.->) tg_argv[0]) end;
        else
            select case when pg_catalog.bool_or((o operator(pg_catalog.->) a) is null) then o
                        else pg_catalog.json_object_agg(a, o operator(pg_catalog.->) a) end into k
              from pg_catalog.unnest(tg_argv[0:(npk operator(pg_catalog.-) 1)]) as a;
        end if;
    end if;
    if nend operator(pg_catalog.>) (npk operator(pg_catalog.+) 1) and tg_op operator(pg_catalog.<>) 'DELETE' then
        -- Columns in text form (arrays, json, jsonb, xml): their text replaces their JSON.
        arrs := '{}';
        for i in (npk operator(pg_catalog.+) 1) .. (nend operator(pg_catalog.-) 1) loop
            continue when (d operator(pg_catalog.->) tg_argv[i]) is null;
            execute pg_catalog.format('select ($1).%I::pg_catalog.text', tg_argv[i]) into txt using new;
            arrs := arrs operator(pg_catalog.||) pg_catalog.jsonb_build_object(tg_argv[i], txt);
        end loop;
        select pg_catalog.json_object_agg(j.key, case when arrs operator(pg_catalog.?) j.key
                                                      then pg_catalog.to_json(arrs operator(pg_catalog.->>) j.key)
                                                      else j.value end)
          into d from pg_catalog.json_each(d) as j;
    end if;
    -- The current event table, read as a function of the sequence: a simple expression,
    -- which PL/pgSQL evaluates without starting a query (NULL before the first rotation).
    q := coalesce(pg_catalog.pg_sequence_last_value('@schema_in_literal@.queue_rotation'::pg_catalog.regclass), 0)
         operator(pg_catalog.%) 3;
    if q operator(pg_catalog.=) 0 then
        insert into @schema@.event_0
        values (pg_catalog.nextval('@schema_in_literal@.event_id_seq'::pg_catalog.regclass), pg_catalog.pg_current_xact_id(),
                pg_catalog.clock_timestamp(), pg_catalog.substr(tg_op, 1, 1)::pg_catalog."char",
                coalesce(sch, tg_table_schema), coalesce(tbl, tg_table_name), k, d, coalesce(rel, tg_relid));
    elsif q operator(pg_catalog.=) 1 then
        insert into @schema@.event_1
        values (pg_catalog.nextval('@schema_in_literal@.event_id_seq'::pg_catalog.regclass), pg_catalog.pg_current_xact_id(),
                pg_catalog.clock_timestamp(), pg_catalog.substr(tg_op, 1, 1)::pg_catalog."char",
                coalesce(sch, tg_table_schema), coalesce(tbl, tg_table_name), k, d, coalesce(rel, tg_relid));
    else
        insert into @schema@.event_2
        values (pg_catalog.nextval('@schema_in_literal@.event_id_seq'::pg_catalog.regclass), pg_catalog.pg_current_xact_id(),
                pg_catalog.clock_timestamp(), pg_catalog.substr(tg_op, 1, 1)::pg_catalog."char",
                coalesce(sch, tg_table_schema), coalesce(tbl, tg_table_name), k, d, coalesce(rel, tg_relid));
    end if;
    return null;
end
$$;

create or replace function on_ddl() returns event_trigger
language plpgsql security definer set search_path from current as $$
declare
    clock ddl_clock;
    snap jsonb;
    prev jsonb;
    t record;
    f text;
    known text[];
begin
    if current_setting('pgteleport.in_ddl', true) = 'on' then
        return;  -- the triggers this function creates
    end if;
    select filter into f from ddl_clock;
    if f is null then
        return;  -- no target
    end if;
    select s.catalog into prev from ddl_snapshot s order by s.id desc limit 1;
    if prev is not null then
        known := array(select distinct o->>'schema'
                         from jsonb_array_elements((prev->'tables') || (prev->'types') || (prev->'functions')
                                                   || (prev->'views') || (prev->'sequences')) as o);
    end if;
    if tg_event = 'sql_drop' then
        -- A dropped table that was replicated, or anything in a schema that still has some.
        if not exists (select 1 from pg_event_trigger_dropped_objects() o
                        where not o.is_temporary
                          and (o.object_type = 'table' and (o.schema_name || '.' || o.object_name) ~ f
                               or ddl_relevant(o.schema_name, f, known))) then
            return;
        end if;
    elsif not exists (select 1 from pg_event_trigger_ddl_commands() c where ddl_relevant(c.schema_name, f, known)) then
        return;
    end if;
    -- The row lock orders DDL transactions: numbers follow commit order.
    update ddl_clock set n = n + 1 returning * into clock;
    snap := catalog_snapshot(clock.filter, current_schema())::jsonb;
    -- Again: the counter's lock may have waited for another DDL transaction's snapshot.
    select s.catalog into prev from ddl_snapshot s order by s.id desc limit 1;
    if snap = prev then
        update ddl_clock set n = n - 1;
        return;  -- nothing replicated changed
    end if;
    insert into ddl_snapshot (id, catalog) values (clock.n, snap);
    perform enqueue('S', '', ts.target, 0, null, json_build_object('version', clock.n)) from target_state ts;
    -- Tables new to replication, or whose key changed, are captured at once — also one that
    -- lost its key (without keyless_tables): its trigger then ships whole old rows, which
    -- the target can apply, while the ddlwatcher reports the table until it has a key again.
    perform set_config('pgteleport.in_ddl', 'on', true);
    for t in select (n.t->>'oid')::oid as rel, a.args
               from jsonb_array_elements(snap->'tables') as n(t)
               cross join lateral (select capture_args(n.t) as args) a
               left join jsonb_array_elements(coalesce(prev->'tables', '[]')) as o(t) on o.t->'oid' = n.t->'oid'
              where (clock.keyless or nullif(n.t->'primary_key', 'null') is not null or nullif(n.t->'unique_key', 'null') is not null
                     or exists (select 1 from pg_catalog.pg_trigger g
                                 where g.tgrelid = (n.t->>'oid')::oid and g.tgname = 'pgteleport_capture'))
                and (a.args is distinct from case when o.t is not null then capture_args(o.t) end
                     or (n.t->'partitions') is distinct from (o.t->'partitions')) loop
        perform capture_table(t.rel, t.args, true);
    end loop;
    perform set_config('pgteleport.in_ddl', '', true);
end
$$;
