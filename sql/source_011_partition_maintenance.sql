-- pgteleport source, version 11: partition maintenance. A partition's rows are the
-- partitioned table's on the target; these change them without row events:
-- * TRUNCATE of a partition: each partition gets the statement-level TRUNCATE trigger, which
--   queues a 'T' event for the partitioned table carrying the partition's constraint
--   (`{"where": …}`): the target deletes the rows that match it.
-- * DETACH or DROP of a partition: the schema change deletes the rows of its constraint
--   (ddlwatcher).
-- * ATTACH of a table that holds rows, and partitions created since the last look: the row
--   trigger (cloned onto every partition) skips partitions not in `known_partition`;
--   capture_partitions() takes one in — locks it, queues its rows as inserts, records it —
--   in one transaction, so no row is lost or doubled. The event trigger does it in the DDL's
--   own transaction; in diffing mode the ddlwatcher does it when it notices the partition.

create table if not exists known_partition (
    relid oid primary key,
    root  oid not null
);

-- The partitions of every captured partitioned table are known: their rows are on the
-- target (or on their way).
insert into known_partition (relid, root)
select t.relid, c.oid
  from pg_catalog.pg_class c
  join pg_catalog.pg_trigger g on g.tgrelid = c.oid and g.tgname = 'pgteleport_capture'
  cross join lateral pg_catalog.pg_partition_tree(c.oid) t
 where c.relkind = 'p' and t.isleaf and t.relid <> c.oid
on conflict (relid) do nothing;

do $$
declare
    leaf record;
begin
    for leaf in select ns.nspname, c.relname
                  from known_partition k
                  join pg_catalog.pg_class c on c.oid = k.relid
                  join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
                 where not exists (select 1 from pg_catalog.pg_trigger g where g.tgrelid = k.relid and g.tgname = 'pgteleport_truncate') loop
        execute format('create trigger pgteleport_truncate after truncate on %I.%I for each statement execute function %I.capture_truncate()',
                       leaf.nspname, leaf.relname, current_schema());
    end loop;
end
$$;

-- Queues the rows of `src` (those matching the SQL condition `filter`, all when null) as
-- inserts of the table (`sch`.`tbl`, `rel`), in the row trigger's form for arguments `args`
-- (capture_args: arrays, json and xml as their text). Returns the rows queued.
create or replace function queue_rows(src oid, sch name, tbl name, rel oid, args text[], filter text) returns bigint
language plpgsql set search_path from current as $$
declare
    text_form text[];
    image text;
    n bigint;
begin
    text_form := case when array_position(args, '') is null then array[]::text[]
                      else args[array_position(args, '') + 1:] end;
    image := case when cardinality(text_form) = 0 then 'to_json(pgteleport_row.*)'
                  else format('(select json_object_agg(j.key, case j.key %s else j.value end) from json_each(to_json(pgteleport_row.*)) as j)',
                              (select string_agg(format('when %L then to_json(pgteleport_row.%I::text)', c, c), ' ')
                                 from unnest(text_form) as c))
             end;
    execute format('select %I.enqueue(''I'', %L, %L, %s::oid, null, %s) from %s pgteleport_row where %s',
                   current_schema(), sch, tbl, rel, image, src::regclass, coalesce(filter, 'true'));
    get diagnostics n = row_count;
    return n;
end
$$;

-- Takes in the partitions of partitioned table `rel` (capture arguments `args`) that are
-- not known: TRUNCATE trigger, rows queued (when `copy_rows`) under a lock that keeps
-- writers out, recorded as known — all in the caller's transaction. Forgets the partitions
-- that left it. Returns the rows queued.
create or replace function capture_partitions(rel oid, args text[], copy_rows boolean) returns bigint
language plpgsql set search_path from current as $$
declare
    sch name;
    tbl name;
    leaf record;
    n bigint := 0;
begin
    select ns.nspname, c.relname into sch, tbl
      from pg_catalog.pg_class c join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
     where c.oid = rel;
    for leaf in select k.relid, ns.nspname, c.relname, c.relispartition
                  from known_partition k
                  left join pg_catalog.pg_class c on c.oid = k.relid
                  left join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
                 where k.root = rel
                   and k.relid not in (select t.relid from pg_catalog.pg_partition_tree(rel) t where t.isleaf) loop
        delete from known_partition k where k.relid = leaf.relid;
        -- A table of its own now: its TRUNCATE trigger goes unless it is replicated itself.
        if leaf.relname is not null and not leaf.relispartition
           and not exists (select 1 from pg_catalog.pg_trigger g where g.tgrelid = leaf.relid and g.tgname = 'pgteleport_capture') then
            execute format('drop trigger if exists pgteleport_truncate on %I.%I', leaf.nspname, leaf.relname);
        end if;
    end loop;
    for leaf in select t.relid, ns.nspname, c.relname
                  from pg_catalog.pg_partition_tree(rel) t
                  join pg_catalog.pg_class c on c.oid = t.relid
                  join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
                 where t.isleaf and t.relid <> rel
                   and not exists (select 1 from known_partition k where k.relid = t.relid)
                 order by t.relid loop
        if copy_rows then
            execute format('lock table %I.%I in share mode', leaf.nspname, leaf.relname);
            n := n + queue_rows(leaf.relid, sch, tbl, rel, args, null);
        end if;
        if not exists (select 1 from pg_catalog.pg_trigger g where g.tgrelid = leaf.relid and g.tgname = 'pgteleport_truncate') then
            execute format('create trigger pgteleport_truncate after truncate on %I.%I for each statement execute function %I.capture_truncate()',
                           leaf.nspname, leaf.relname, current_schema());
        end if;
        insert into known_partition (relid, root) values (leaf.relid, rel)
        on conflict (relid) do update set root = excluded.root;
    end loop;
    return n;
end
$$;

-- TRUNCATE: of a captured table, one 'T' event; of a known partition, a 'T' event of its
-- partitioned table carrying the partition's constraint (a TRUNCATE of the partitioned
-- table fires on the partitions too: those deletes find nothing left on the target).
create or replace function capture_truncate() returns trigger
language plpgsql security definer set search_path from current as $$
declare
    r oid;
    sch name;
    tbl name;
begin
    if (select c.relispartition from pg_catalog.pg_class c where c.oid = tg_relid) then
        select k.root into r from known_partition k where k.relid = tg_relid;
        if r is null then
            return null;  -- its rows are not on the target
        end if;
        select ns.nspname, c.relname into sch, tbl
          from pg_catalog.pg_class c join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
         where c.oid = r;
        perform enqueue('T', sch, tbl, r, null::json,
                        json_build_object('where', pg_catalog.pg_get_partition_constraintdef(tg_relid)));
        return null;
    end if;
    perform enqueue('T', tg_table_schema, tg_table_name, tg_relid, null::json, null::json);
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
    select t.tgargs into existing
      from pg_catalog.pg_trigger t join pg_catalog.pg_proc p on p.oid = t.tgfoid
     where t.tgrelid = rel and t.tgname = 'pgteleport_capture'
       and p.pronamespace = current_schema()::regnamespace and p.proname = 'capture_row';
    wanted := coalesce((select string_agg(convert_to(a, pg_catalog.getdatabaseencoding()) || '\x00'::bytea, ''::bytea order by o)
                          from unnest(trigger_args) with ordinality as u(a, o)), ''::bytea);
    if existing = wanted then
        if partitioned then
            -- Partitions the row trigger fires on but whose rows were never queued.
            n := capture_partitions(rel, args, true);
            return case when n > 0 then n else -1 end;
        end if;
        return -1;
    end if;
    execute format('create or replace trigger pgteleport_capture after insert or update or delete on %I.%I for each row execute function %I.capture_row(%s)',
                   sch, tbl, current_schema(),
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
    -- Tables new to replication, or whose key changed, are captured at once.
    perform set_config('pgteleport.in_ddl', 'on', true);
    for t in select (n.t->>'oid')::oid as rel, a.args
               from jsonb_array_elements(snap->'tables') as n(t)
               cross join lateral (select capture_args(n.t) as args) a
               left join jsonb_array_elements(coalesce(prev->'tables', '[]')) as o(t) on o.t->'oid' = n.t->'oid'
              where (clock.keyless or nullif(n.t->'primary_key', 'null') is not null or nullif(n.t->'unique_key', 'null') is not null)
                and (a.args is distinct from case when o.t is not null then capture_args(o.t) end
                     or (n.t->'partitions') is distinct from (o.t->'partitions')) loop
        perform capture_table(t.rel, t.args, true);
    end loop;
    perform set_config('pgteleport.in_ddl', '', true);
end
$$;
