-- A run of a keyless table's deletes, then of its updates, on a target table without an
-- index (src/applier.rs, apply_alike against the RowIdentity statement): 200 rows of a
-- 100 000-row table, one statement per row (each reads the whole table) against one
-- statement for the run (reads it once, matching each row's whole text by hash). Each form
-- changes the same rows in its own transaction, rolled back, alternating, 3 rounds, timed
-- in the same run.
-- Usage: psql -d <scratch database> -f bench/keyless_run.sql   (creates and drops table
-- keyless_run_bench)
drop table if exists keyless_run_bench;
create table keyless_run_bench (a int, b numeric, c text);
insert into keyless_run_bench select g, g, 'row ' || g from generate_series(1, 100000) g;
analyze keyless_run_bench;
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
                delete from keyless_run_bench t where t.ctid = (select t2.ctid
                  from keyless_run_bench t2, json_populate_record(null::keyless_run_bench, img) k
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
                         from json_populate_recordset(null::keyless_run_bench, imgs) k group by 1),
                 m as (select t2.ctid as tid, row_number() over (partition by x.key) as rn, x.n
                         from keyless_run_bench t2 join x on row(t2.a::text, t2.b::text, t2.c::text)::text = x.key)
            delete from keyless_run_bench t using m where t.ctid = m.tid and m.rn <= m.n;
            get diagnostics n = row_count;
            if n <> 200 then raise 'deleted % rows, not 200', n; end if;
            run := run + (clock_timestamp() - t0);
            raise exception using errcode = 'P0002';
        exception when no_data_found then null;
        end;
    end loop;
    raise notice 'deletes: one statement per row % ms/event, one per run % ms/event: % times faster',
        round(extract(epoch from one) * 1000 / 600, 3), round(extract(epoch from run) * 1000 / 600, 3),
        round(extract(epoch from one) / extract(epoch from run), 1);
end $$;
do $$
declare
    t0 timestamptz;
    one interval := '0';
    run interval := '0';
    olds json;
    news json;
    n bigint;
    e int;
begin
    select json_agg(json_build_object('a', v, 'b', v, 'c', 'row ' || v) order by v),
           json_agg(json_build_object('a', v, 'b', v, 'c', 'new ' || v) order by v)
      into olds, news from (select (g * 7919) % 100000 + 1 as v from generate_series(1, 200) g) s;
    for round in 1..3 loop
        begin
            t0 := clock_timestamp();
            for e in 0 .. 199 loop
                update keyless_run_bench t set a = r.a, b = r.b, c = r.c
                  from json_populate_record(null::keyless_run_bench, news -> e) r
                 where t.ctid = (select t2.ctid
                  from keyless_run_bench t2, json_populate_record(null::keyless_run_bench, olds -> e) k
                 where t2.a::text is not distinct from k.a::text and t2.b::text is not distinct from k.b::text
                   and t2.c::text is not distinct from k.c::text limit 1);
            end loop;
            one := one + (clock_timestamp() - t0);
            raise exception using errcode = 'P0002';
        exception when no_data_found then null;
        end;
        begin
            t0 := clock_timestamp();
            with x as (select o.i, d.value as data, row(k.a::text, k.b::text, k.c::text)::text as key,
                              row_number() over (partition by row(k.a::text, k.b::text, k.c::text)::text order by o.i) as rn
                         from json_array_elements(olds) with ordinality o(value, i)
                         join json_array_elements(news) with ordinality d(value, i) on d.i = o.i,
                              json_populate_record(null::keyless_run_bench, o.value) k),
                 m as (select t2.ctid as tid, y.key, row_number() over (partition by y.key) as rn
                         from keyless_run_bench t2
                         join (select distinct x.key from x) y on row(t2.a::text, t2.b::text, t2.c::text)::text = y.key)
            update keyless_run_bench t set a = r.a, b = r.b, c = r.c
              from m join x on x.key = m.key and x.rn = m.rn,
                   json_populate_record(null::keyless_run_bench, x.data) r
             where t.ctid = m.tid;
            get diagnostics n = row_count;
            if n <> 200 then raise 'updated % rows, not 200', n; end if;
            run := run + (clock_timestamp() - t0);
            raise exception using errcode = 'P0002';
        exception when no_data_found then null;
        end;
    end loop;
    raise notice 'updates: one statement per row % ms/event, one per run % ms/event: % times faster',
        round(extract(epoch from one) * 1000 / 600, 3), round(extract(epoch from run) * 1000 / 600, 3),
        round(extract(epoch from one) / extract(epoch from run), 1);
end $$;
drop table keyless_run_bench;
