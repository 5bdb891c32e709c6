#!/usr/bin/env bash
# Capture granularity (issue #7, measurement only; pgteleport does not capture this way
# yet): the floor of a row-level capture trigger (one insert of `to_json(new)` per row, as
# bench/trigger_variants.sh's floor) against a statement-level one (one INSERT … SELECT
# from the statement's transition table), on N statements of ROWS inserted rows each, with
# no capture as the baseline. REPEAT rounds; seconds of each, and the capture's cost
# (seconds above the baseline) of each in the round.
# Usage: bench/capture_granularity.sh   (ROWS=1000, N=200 statements, REPEAT=3)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SKIP_BUILD=1 source bench/lib.sh
trap stop_clusters EXIT
SP=$(port)
start_cluster "$WORK/src" "$SP"
q() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }
q -c "create table ev (ev_id bigint, ev_txid xid8, ev_time timestamptz, ev_op \"char\", ev_schema name, ev_table name, ev_key json, ev_data json, ev_relid oid);
      create index on ev (ev_txid); create sequence evs cache 1;
      create table items (id bigint primary key, name text not null, qty int not null, price numeric(12,2));
      create function cap_row() returns trigger language plpgsql security definer set search_path = public, pg_temp as \$\$
      begin insert into ev values (nextval('evs'), pg_current_xact_id(), clock_timestamp(), substr(tg_op,1,1)::\"char\", tg_table_schema, tg_table_name, null, to_json(new), tg_relid); return null; end \$\$;
      create function cap_stmt() returns trigger language plpgsql security definer set search_path = public, pg_temp as \$\$
      begin insert into ev select nextval('evs'), pg_current_xact_id(), clock_timestamp(), 'I', tg_table_schema, tg_table_name, null, to_json(n), tg_relid from n; return null; end \$\$;"
ROWS="${ROWS:-1000}"; N="${N:-200}"
run() { # label -> seconds
    q -c "truncate items, ev" -c checkpoint
    local t0=$(now)
    q -c "do \$\$ begin for i in 0 .. $((N - 1)) loop insert into items select i * $ROWS + g, md5(g::text), g, g * 1.5 from generate_series(1, $ROWS) g; commit; end loop; end \$\$"
    local t1=$(now)
    [ "$(q -c 'select count(*) from ev')" = "$([ "$1" = none ] && echo 0 || echo $((N * ROWS)))" ] || { echo "$1: wrong event count" >&2; exit 1; }
    python3 -c "print(round($t1 - $t0, 3))"
}
for r in $(seq 1 "${REPEAT:-3}"); do
    q -c "drop trigger if exists c on items"; none=$(run none)
    q -c "create trigger c after insert on items for each row execute function cap_row()"; row=$(run row)
    q -c "drop trigger c on items" -c "create trigger c after insert on items referencing new table as n for each statement execute function cap_stmt()"; stmt=$(run statement)
    python3 -c "
n, r, s = $none, $row, $stmt
print(f'round $r ($N statements of $ROWS rows): none {n:.2f} s, row-level {r:.2f} s, statement-level {s:.2f} s; capture cost row {r - n:.2f} s, statement {s - n:.2f} s ({(r - n) / max(s - n, 1e-9):.1f}x less)')"
done
