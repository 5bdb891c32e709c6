-- A run of a keyless table's deletes on a target table without an index (src/applier.rs,
-- delete_alike against the RowIdentity statement): 200 deletes over a 100 000-row table,
-- one statement per row (each reads the whole table) against one statement for the run
-- (reads it once, matching each row's whole text by hash). Each form deletes the same rows
-- in its own transaction, rolled back, alternating, 3 rounds, timed in the same run.
-- Usage: psql -d <scratch database> -f bench/keyless_delete.sql   (creates and drops table
-- keyless_delete_bench)
drop table if exists keyless_delete_bench;
create table keyless_delete_bench (a int, b numeric, c text);
insert into keyless_delete_bench select g, g, 'row ' || g from generate_series(1, 100000) g;
analyze keyless_delete_bench;
do $$
declare
    t0 timestamptz;
    one interval := '0';
    run interval := '0';
    imgs json;
    n bigint;
    img json;
begin
    select json_agg(json_build_object('a', v, 'b', v, 'c', 'row ' || v))
      into imgs from (select (i * 7919) % 100000 + 1 as v from generate_series(1, 200) i) s;
    for round in 1..3 loop
        begin
            t0 := clock_timestamp();
            for img in select * from json_array_elements(imgs) loop
                delete from keyless_delete_bench t where t.ctid = (select t2.ctid
                  from keyless_delete_bench t2, json_populate_record(null::keyless_delete_bench, img) k
                 where t2.a::text is not distinct from k.a::text and t2.b::text is not distinct from k.b::text
                   and t2.c::text is not distinct from k.c::text limit 1);
            end loop;
            one := one + (clock_timestamp() - t0);
            raise exception using errcode = 'P0002';  -- roll the deletes back
        exception when no_data_found then null;
        end;
        begin
            t0 := clock_timestamp();
            with x as (select row(k.a::text, k.b::text, k.c::text)::text as key, count(*) as n
                         from json_populate_recordset(null::keyless_delete_bench, imgs) k group by 1),
                 m as (select t2.ctid as tid, row_number() over (partition by x.key) as rn, x.n
                         from keyless_delete_bench t2 join x on row(t2.a::text, t2.b::text, t2.c::text)::text = x.key)
            delete from keyless_delete_bench t using m where t.ctid = m.tid and m.rn <= m.n;
            get diagnostics n = row_count;
            if n <> 200 then raise 'deleted % rows, not 200', n; end if;
            run := run + (clock_timestamp() - t0);
            raise exception using errcode = 'P0002';
        exception when no_data_found then null;
        end;
    end loop;
    raise notice 'one statement per row % ms/event, one per run % ms/event: % times faster',
        round(extract(epoch from one) * 1000 / 600, 3), round(extract(epoch from run) * 1000 / 600, 3),
        round(extract(epoch from one) / extract(epoch from run), 1);
end $$;
drop table keyless_delete_bench;
