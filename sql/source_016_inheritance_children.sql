-- pgteleport source, version 16: a table new to replication that has inheritance children
-- (INHERITS, not partitions) queued the children's rows as its own: `queue_rows` read it
-- without ONLY. The children are tables of their own, captured (and queued) as such; the
-- rows a table holds are now read with ONLY — but for a partitioned table, whose rows are
-- its partitions'.
-- (`values_checksum`, version 15, reads a table's own rows the same way.)
create or replace function queue_rows(src oid, sch name, tbl name, rel oid, args text[], filter text) returns bigint
language plpgsql set search_path from current as $$
declare
    text_form text[];
    image text;
    n bigint;
    only_it text;
begin
    text_form := case when array_position(args, '') is null then array[]::text[]
                      else args[array_position(args, '') + 1:] end;
    image := case when cardinality(text_form) = 0 then 'to_json(pgteleport_row.*)'
                  else format('(select json_object_agg(j.key, case j.key %s else j.value end) from json_each(to_json(pgteleport_row.*)) as j)',
                              (select string_agg(format('when %L then to_json(pgteleport_row.%I::text)', c, c), ' ')
                                 from unnest(text_form) as c))
             end;
    only_it := case when (select c.relkind from pg_catalog.pg_class c where c.oid = src) = 'p' then '' else 'only ' end;
    execute format('select %I.enqueue(''I'', %L, %L, %s::oid, null, %s) from %s%s pgteleport_row where %s',
                   current_schema(), sch, tbl, rel, image, only_it, src::regclass, coalesce(filter, 'true'));
    get diagnostics n = row_count;
    return n;
end
$$;

