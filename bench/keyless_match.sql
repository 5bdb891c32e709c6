-- The statement a keyless table's update or delete is matched by on the target, with and
-- without the `=` on a column that leads a btree index (src/applier.rs, RowIdentity):
-- alternating events over a 100 000-row table, each form timed in the same run.
-- Usage: psql -d <scratch database> -f bench/keyless_match.sql   (creates and drops table
-- keyless_match_bench)
drop table if exists keyless_match_bench;
create table keyless_match_bench (a int, b numeric, c text);
insert into keyless_match_bench select g, g, 'row ' || g from generate_series(1, 100000) g;
create index on keyless_match_bench (a);
analyze keyless_match_bench;
do $$
declare
    t0 timestamptz;
    scan interval := '0';
    idx interval := '0';
    img text;
    v int;
    same text := 't2.a::text is not distinct from k.a::text and t2.b::text is not distinct from k.b::text
                  and t2.c::text is not distinct from k.c::text';
    stmt text := 'update keyless_match_bench t set b = b where t.ctid = (select t2.ctid
                    from keyless_match_bench t2, json_populate_record(null::keyless_match_bench, $1::json) k
                   where %s limit 1)';
begin
    for i in 1..400 loop
        v := (i * 7919) % 100000 + 1;  -- spread over the table
        img := json_build_object('a', v, 'b', v, 'c', 'row ' || v)::text;
        t0 := clock_timestamp();
        if i % 2 = 0 then
            execute format(stmt, same) using img;
            scan := scan + (clock_timestamp() - t0);
        else
            execute format(stmt, 't2.a = k.a and ' || same) using img;
            idx := idx + (clock_timestamp() - t0);
        end if;
    end loop;
    raise notice 'whole-table match % ms/event, through the index % ms/event: % times faster',
        round(extract(epoch from scan) * 1000 / 200, 3), round(extract(epoch from idx) * 1000 / 200, 3),
        round(extract(epoch from scan) / extract(epoch from idx), 1);
end $$;
drop table keyless_match_bench;
