-- The row trigger's check of a partition (version 18 against version 14): whether the
-- partition is known, and since version 18 whether its trigger is the clone recorded
-- (one lookup of pg_trigger more). The row trigger runs it once per partition and
-- transaction. 200 000 calls of each form in a PL/pgSQL loop, alternating, 3 rounds, in
-- one run; a known_partition of 1 002 rows.
-- Usage: psql -d <scratch database> -f bench/partition_check.sql   (creates and drops
-- schema partition_check_bench)
drop schema if exists partition_check_bench cascade;
create schema partition_check_bench;
set search_path = partition_check_bench;
create table known_partition (relid oid primary key, root oid not null, clone oid);
create table m (id int, at date) partition by range (at);
create table m1 partition of m for values from ('2024-01-01') to ('2025-01-01');
create function f() returns trigger language plpgsql as $$ begin return null; end $$;
create trigger pgteleport_capture after insert on m for each row execute function f();
insert into known_partition
select 'm1'::regclass, 'm'::regclass, (select oid from pg_trigger where tgrelid = 'm1'::regclass);
insert into known_partition select g, g + 1, null from generate_series(100000, 101000) g;
analyze known_partition;
do $$
declare
    r oid := 'm1'::regclass;
    rt oid := 'm'::regclass;
    n name := 'pgteleport_capture';
    ok boolean;
    t0 timestamptz;
    v14 interval := '0';
    v18 interval := '0';
begin
    for round in 1..3 loop
        t0 := clock_timestamp();
        for i in 1..200000 loop
            ok := exists (select 1 from known_partition k where k.relid = r and k.root = rt);
        end loop;
        v14 := v14 + (clock_timestamp() - t0);
        t0 := clock_timestamp();
        for i in 1..200000 loop
            ok := exists (select 1 from known_partition k
                            join pg_catalog.pg_trigger g on g.tgrelid = k.relid and g.tgname = n
                           where k.relid = r and k.root = rt and (k.clone is null or k.clone = g.oid));
        end loop;
        v18 := v18 + (clock_timestamp() - t0);
    end loop;
    raise notice 'version 14: % µs per check; version 18: % µs per check; ratio %',
        round((extract(epoch from v14) * 1e6 / 600000)::numeric, 2),
        round((extract(epoch from v18) * 1e6 / 600000)::numeric, 2),
        round((extract(epoch from v18) / extract(epoch from v14))::numeric, 2);
end $$;
reset search_path;
drop schema partition_check_bench cascade;
