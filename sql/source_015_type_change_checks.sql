-- pgteleport source, version 15: event-trigger mode checks the values of a column whose type
-- changed. `ALTER TABLE … ALTER COLUMN … TYPE … USING expr` computes the new values with an
-- expression no catalog shows; the target, applying the schema version, casts its old ones.
-- The diffing watcher checksums such a column on the source at its look; here the checksum
-- is taken in the DDL's own transaction (the table is still locked by the ALTER: no writer
-- between), at the place of the schema event, and stored with the catalog snapshot
-- (`ddl_snapshot.checks`: table oid, column attnum, rows, sum). The ddlwatcher names the
-- columns as the target does and puts the checks into each target's schema event, where the
-- applier runs them. A type change that does not rewrite the table (varchar(10) to
-- varchar(20), varchar to text) keeps the values as they were, byte for byte, and cannot
-- have a USING expression (PostgreSQL rewrites for any): the `table_rewrite` event trigger
-- marks the transaction's column rewrites, and only then are the columns scanned.

alter table ddl_snapshot add column if not exists checks jsonb;

-- The rows of `rel` and the sum of the `hashtext` of `col`'s text in each, printed under the
-- settings that make a value's text the same on every server (the applier's check computes
-- the same on the target: ddlwatcher::ddl::values_checksum_sql under CANONICAL_SETTINGS).
-- Null when the role may not read the table (the check is then left out; the DDL goes on).
create or replace function values_checksum(rel pg_catalog.regclass, col pg_catalog.name,
                                           out n_rows pg_catalog.int8, out total pg_catalog.int8)
language plpgsql
set "TimeZone" = 'UTC' set "DateStyle" = 'ISO, YMD' set "IntervalStyle" = 'postgres'
set extra_float_digits = 1 set bytea_output = 'hex' set search_path = pg_catalog, pg_temp as $$
begin
    execute pg_catalog.format(
        'select pg_catalog.count(*)::pg_catalog.int8, '
        'coalesce(pg_catalog.sum(pg_catalog.hashtext(t.%I::pg_catalog.text)::pg_catalog.int8), 0)::pg_catalog.int8 '
        'from %s%s as t', col,
        -- The table's own rows (not an inheritance parent's children's, tables of their
        -- own), as the target checks them (ddlwatcher::ddl::own_rows); a partitioned
        -- table's are its partitions'.
        case when (select c.relkind from pg_catalog.pg_class c where c.oid = rel) = 'p' then '' else 'only ' end,
        rel)
       into n_rows, total;
exception when insufficient_privilege then
    raise warning 'pgteleport: cannot read % to check the values of its column % after its type change: %',
        rel, col, sqlerrm;
    n_rows := null;
    total := null;
end
$$;

-- `table_rewrite`: a column rewritten (a type change or USING) marks the transaction until
-- the command's `ddl_command_end`.
create or replace function on_table_rewrite() returns event_trigger
language plpgsql security definer set search_path from current as $$
begin
    if pg_catalog.pg_event_trigger_table_rewrite_reason() & 4 <> 0 then
        perform pg_catalog.set_config('pgteleport.column_rewritten', 'on', true);
    end if;
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
    rewritten boolean;
    checks jsonb;
begin
    if current_setting('pgteleport.in_ddl', true) = 'on' then
        return;  -- the triggers this function creates
    end if;
    rewritten := coalesce(current_setting('pgteleport.column_rewritten', true), '') = 'on';
    if rewritten then
        perform set_config('pgteleport.column_rewritten', '', true);
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
    if rewritten and prev is not null then
        -- The columns whose type changed (generated ones too: their stored values are
        -- cast, as on the target), each scanned once (OFFSET 0: the scans run for these
        -- columns only).
        select jsonb_agg(jsonb_build_object('oid', r.rel::int8, 'attnum', r.attnum, 'rows', v.n_rows, 'sum', v.total))
          into checks
          from (select (n.t->>'oid')::oid as rel, (c.c->>'attnum')::int2 as attnum, (c.c->>'name')::name as col
                  from jsonb_array_elements(snap->'tables') as n(t)
                  join jsonb_array_elements(prev->'tables') as o(t) on o.t->'oid' = n.t->'oid'
                 cross join jsonb_array_elements(n.t->'columns') as c(c)
                  join jsonb_array_elements(o.t->'columns') as b(c) on b.c->'attnum' = c.c->'attnum'
                 where b.c->'type_name' is distinct from c.c->'type_name'
                offset 0) as r
         cross join lateral values_checksum(r.rel::regclass, r.col) as v
         where v.n_rows is not null;
    end if;
    insert into ddl_snapshot (id, catalog, checks) values (clock.n, snap, checks);
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

