-- pgteleport source, version 2: one capture installer for every path, and the state of
-- event-trigger mode (`use_event_triggers: true`).
--
-- In event-trigger mode, `ddl_command_end` and `sql_drop` event triggers (created by the
-- installer with `catalog_snapshot`, whose body is the replicator's catalog query) store the
-- catalog model in the DDL's own transaction, with a schema event ('S') per target at that
-- exact place in the stream. DDL transactions take their version number from `ddl_clock`'s
-- one row, whose row lock orders them: a snapshot's number is its commit order. The
-- ddlwatcher turns each snapshot into one schema version per target (the diff from the
-- previous one), and the transmitter sends no batch while a stored snapshot waits for that.

create table if not exists ddl_clock (
    one       boolean primary key default true check (one),
    n         bigint  not null default 0,  -- last schema version number handed out
    processed bigint  not null default 0,  -- last snapshot turned into schema versions
    filter    text,                        -- the targets' tables: a regex on schema.table
    keyless   boolean not null default false
);
insert into ddl_clock default values on conflict do nothing;

-- The xid of the transaction that moved writers away from a queue table. Every transaction
-- that could still write into the table had its xid assigned before that one (the row write
-- that assigns it precedes the trigger that reads the current table), so the table is done
-- once no transaction below this xid is unacknowledged. (A snapshot's xmax is no such bound:
-- it is the latest *completed* xid + 1, and a running transaction can have an xid at or above
-- it — the first rule, `xmax(switched)`, let a table be emptied under such a writer.)
alter table queue_table add column if not exists switched_xid xid8;

-- Consecutive failed attempts to transmit the next batch (reset by a success), for status.
alter table target_state add column if not exists failures bigint not null default 0;

create table if not exists ddl_snapshot (
    id       bigint primary key,
    txid     xid8 not null default pg_current_xact_id(),
    taken_at timestamptz not null default clock_timestamp(),
    catalog  jsonb not null
);

-- The capture trigger's arguments for a table of the catalog model (`Table` as JSON): its key
-- columns (primary key, else unique key; none for full-row identity), then '' and the
-- columns sent as their text form (array, json, jsonb, xml), generated columns left out.
create or replace function capture_args(t jsonb) returns text[]
language sql immutable set search_path from current as $$
    select array(select jsonb_array_elements_text(coalesce(nullif(t->'primary_key', 'null'), nullif(t->'unique_key', 'null'), '[]')))
        || case when exists (select 1 from jsonb_array_elements(t->'columns') c
                              where (c->>'text_form')::boolean and not (c->>'generated')::boolean)
                then array[''] || array(select c->>'name' from jsonb_array_elements(t->'columns') c
                                         where (c->>'text_form')::boolean and not (c->>'generated')::boolean
                                         order by (c->>'attnum')::int)
                else array[]::text[] end
$$;

-- Puts the capture and TRUNCATE triggers on table `rel` (replacing a row trigger whose
-- arguments differ). A table that gets its row trigger now and `copy_rows` queues the rows it
-- holds as inserts, in this transaction, under the trigger's lock, so none is lost or
-- doubled. Returns -1 when the row trigger was already right, else the rows queued.
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
begin
    select ns.nspname, c.relname into sch, tbl
      from pg_catalog.pg_class c join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
     where c.oid = rel;
    if not found then
        raise exception 'table with OID % does not exist', rel;
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
                          from unnest(args) with ordinality as u(a, o)), ''::bytea);
    if existing = wanted then
        return -1;
    end if;
    execute format('create or replace trigger pgteleport_capture after insert or update or delete on %I.%I for each row execute function %I.capture_row(%s)',
                   sch, tbl, current_schema(),
                   coalesce((select string_agg(quote_literal(a), ', ' order by o) from unnest(args) with ordinality as u(a, o)), ''));
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

-- Whether DDL on an object of schema `sch` can change what is replicated: the schema holds a
-- replicated table, or an object of the last snapshot (a type a replicated column uses), or
-- has no name (a schema itself, an extension, …); without a snapshot yet (`known` null),
-- any schema. Temporary objects, this schema, and the schemas of other applications cost
-- the event trigger no catalog snapshot.
create or replace function ddl_relevant(sch text, filter text, known text[]) returns boolean
language sql stable set search_path from current as $$
    select sch is null
        or sch not like 'pg\_temp%' and sch <> current_schema()
           and (known is null or sch = any(known)
                or exists (select 1 from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                            where n.nspname = sch and c.relkind in ('r', 'p') and (n.nspname::text || '.' || c.relname::text) ~ filter))
$$;

-- The event trigger function (event-trigger mode). Runs as its owner, who may create event
-- triggers.
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
                and a.args is distinct from case when o.t is not null then capture_args(o.t) end loop
        perform capture_table(t.rel, t.args, true);
    end loop;
    perform set_config('pgteleport.in_ddl', '', true);
end
$$;
