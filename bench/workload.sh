# The change-stream workload shared by bench/stream.sh and bench/bucardo.sh, so that their
# figures compare: the tables, the backlog of CHANGES row changes in transactions of 10
# (4 inserts, 3 updates of a hot table, an update and a delete of the previous transaction's
# rows, a history insert; a marker row committed last), and the end-state checksum.
# Source after bench/lib.sh (needs PG_BINDIR) with TXNS set.
psql_at() { # port db [psql args] — as the superuser
    local p=$1 d=$2; shift 2
    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U postgres -d "$d" -X -q -At -v ON_ERROR_STOP=1 "$@"
}
TABLES="
create table acc (id int primary key, bid int not null, balance int not null, filler char(84));
create table items (id bigint primary key, name text not null, qty int not null, price numeric(12,2));
create table hist (id bigserial primary key, aid int, delta int, mtime timestamptz);
create table heartbeat (id bigserial primary key, ts timestamptz not null);
create table mark (id int primary key);
"
# enable_seqscan off: the loop's statements are cached as generic plans; planned while
# `items` is empty after a round's TRUNCATE (and analysed so), they scanned it whole for
# every update and delete, and the backlog took minutes instead of seconds.
BACKLOG="do \$\$ begin
  perform set_config('enable_seqscan', 'off', false);
  for i in 1 .. $TXNS loop
    insert into items select i * 4 + g, md5((i * 4 + g)::text), g, g * 1.5 from generate_series(1, 4) g;
    update acc set balance = balance + 1 where id between (i * 3) % 99997 + 1 and (i * 3) % 99997 + 3;
    update items set qty = qty + 1 where id = (i - 1) * 4 + 1;
    delete from items where id = (i - 1) * 4 + 2;
    insert into hist (aid, delta, mtime) values (i % 100000 + 1, 1, now());
    commit;
  end loop;
  insert into mark values (1);
end \$\$"
checksum() { # port db
    psql_at "$1" "$2" -c "select (select md5(string_agg(id || ':' || bid || ':' || balance || ':' || filler, ',' order by id)) from acc)
                          || (select md5(string_agg(id || ':' || name || ':' || qty || ':' || price, ',' order by id)) from items)
                          || (select md5(string_agg(id || ':' || aid || ':' || delta || ':' || mtime, ',' order by id)) from hist)"
}
