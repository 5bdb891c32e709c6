#!/usr/bin/env bash
# Cost of event-trigger mode on the application's DDL (issue #4): the same DDL script
# (STATEMENTS × add column / create index / drop index / drop column on replicated tables,
# plus as many CREATE TEMP TABLE and DDL outside the replicated schemas) is timed in a
# database of TABLES replicated tables, first with no pgteleport at all, then with pgteleport
# installed in diffing mode (no event triggers: its capture triggers only), then in
# event-trigger mode; REPEAT interleaved rounds, medians.
# Usage: bench/ddl_overhead.sh [TABLES] [STATEMENTS]   (defaults 200, 50; REPEAT=3)
# Writes bench/results/ddl_overhead.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
TABLES="${1:-200}"; STATEMENTS="${2:-50}"; REPEAT="${REPEAT:-3}"
source bench/lib.sh
trap stop_clusters EXIT
SP=$(port)
start_cluster "$WORK/src" "$SP"
psql_a() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
# A superuser role: event triggers need one on PostgreSQL 15.
psql_a -c "create role bench login superuser password 'bench'"
script="$WORK/ddl.sql"
{
    for i in $(seq 1 "$STATEMENTS"); do
        t=$(( (i % TABLES) + 1 ))
        echo "alter table app.t$t add column x$i int;"
        echo "create index i$i on app.t$t (x$i);"
        echo "drop index app.i$i;"
        echo "alter table app.t$t drop column x$i;"
        echo "create temp table tmp$i (id int); drop table tmp$i;"
        echo "create table other.o$i (id int primary key); drop table other.o$i;"
    done
} > "$script"
run_round() { # mode -> seconds
    local db="b_$1_$2"
    psql_a -c "create database $db owner bench"
    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U bench -d "$db" -X -q -v ON_ERROR_STOP=1 -c "create schema app; create schema other;" \
        -c "do \$\$ begin for g in 1..$TABLES loop execute format('create table app.t%s (id bigint primary key, a int, b text, c timestamptz, d numeric(12,2))', g); end loop; end \$\$" >/dev/null || exit 1
    if [ "$1" != none ]; then
        cat > "$WORK/$db.yml" <<YML
database: {name: $db, database: $db, hostname: 127.0.0.1, port: $SP, username: bench, password: bench}
use_event_triggers: $([ "$1" = events ] && echo true || echo false)
targets:
  t:
    target_expression: "app.*"
    endpoint: {hostname: 127.0.0.1, port: 9}
YML
        PGTELEPORT_LOG=error "$BIN" install --config "$WORK/$db.yml" >/dev/null || exit 1
    fi
    local t0 t1
    t0=$(now)
    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U bench -d "$db" -X -q -v ON_ERROR_STOP=1 -f "$script" >/dev/null || exit 1
    t1=$(now)
    psql_a -c "drop database $db" >/dev/null
    python3 -c "print(f'{$t1 - $t0:.3f}')"
}
declare -A times
for r in $(seq 1 "$REPEAT"); do
    for mode in none diffing events; do
        s=$(run_round "$mode" "$r") || { echo "round $r $mode failed" >&2; exit 1; }
        times[$mode]="${times[$mode]:-} $s"
        echo "round $r $mode: ${s} s for $((STATEMENTS * 8)) DDL statements"
    done
done
python3 - "$TABLES" "$STATEMENTS" "${times[none]}" "${times[diffing]}" "${times[events]}" <<'PY'
import json, statistics, sys
tables, statements = int(sys.argv[1]), int(sys.argv[2])
none, diffing, events = ([float(x) for x in a.split()] for a in sys.argv[3:6])
m = {k: statistics.median(v) for k, v in (("none", none), ("diffing", diffing), ("events", events))}
n = statements * 8
out = {"tables": tables, "ddl_statements": n, "median_seconds": m,
       "ms_per_statement": {k: round(v * 1000 / n, 2) for k, v in m.items()},
       "events_over_none": round(m["events"] / m["none"], 2), "diffing_over_none": round(m["diffing"] / m["none"], 2)}
print(json.dumps(out, indent=2))
json.dump(out, open("bench/results/ddl_overhead.json", "w"), indent=2)
PY
