#!/usr/bin/env bash
# Capture-trigger variants (issue #7, profiling the trigger body): pgbench on one cluster
# with the capture triggers disabled, with version 1's capture function, version 3's,
# version 12's (with `SET search_path`), the current one (version 14: no SET clause, every
# name qualified), and with the floor of any PL/pgSQL capture — a function that only
# inserts `to_json(new)` into the current event table (no key, no diff, no rotation check,
# no SET clause since session 15: it loses information, it only shows what the insert itself
# costs). Each is `create or replace`d in turn on the same installed triggers; no instance
# runs, the queue is emptied before each run. REPEAT interleaved rounds, medians of TPS and
# of the per-round ratios.
# Three more variants take one piece out of version 12's function, each to show what that
# piece costs (they lose what the piece does): v12_nosp without its `SET search_path`
# clause (relations qualified, nothing else: what version 13 does safely), v12_noold
# without the UPDATE's old image (no unchanged-row check, no key-change check, no large-row
# diff), v12_noloop without the loop over the trigger's arguments (one key column assumed,
# as pgbench's tables have).
# VARIANTS="…" picks and orders the variants (default: all but those three).
# C_FLOOR=1 adds the same floor written in C (bench/c_floor: `row_to_json` of the row and
# one SPI insert) — what a capture outside PL/pgSQL could reach. It needs root: it installs
# postgresql-server-dev-15 when missing and the module into PostgreSQL's library directory,
# and a superuser creates the function. Measurement only; pgteleport does not use it.
# Usage: bench/trigger_variants.sh [SECONDS] [CLIENTS]   (defaults 15, 4; SCALE=10, REPEAT=3,
#   WORKLOAD=update|tpcb|rows, C_FLOOR=1). Writes bench/results/trigger_variants.json.
# WORKLOAD=txns and rows measure one backend instead of pgbench's clients, in rows per
# second of the backend's CPU time, and "trigger_us_per_row" is the CPU time each variant
# adds per row over `none`: far less noisy than TPS on a shared 2-core machine (no client,
# no lock waits, no group commit, no other tenant's time). txns: ROWS/10 (20 000)
# transactions of one single-row UPDATE of pgbench_accounts — each trigger call the first
# of its function in the transaction, as in tpcb-like; rows: one UPDATE of ROWS (200 000)
# rows, rolled back — the cost per call once the function is warm.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
DURATION="${1:-15}"; CLIENTS="${2:-4}"; SCALE="${SCALE:-10}"; REPEAT="${REPEAT:-3}"; WORKLOAD="${WORKLOAD:-update}"
ROWS="${ROWS:-200000}"
source bench/lib.sh
pgbench_with_capture "$SCALE"
# The capture function as each migration defines it.
python3 - "$WORK" <<'PY'
import sys
def out(name, body):
    open(f"{sys.argv[1]}/{name}.sql", "w").write("set search_path = teleport, pg_temp;\n" + body + "\n")
def defined(path):
    s = open(path).read()
    i = s.index("create or replace function capture_row()")
    return s[i:s.index("$$;", i) + 3]
out("v1", defined("sql/source_001_queue.sql"))
out("v3", defined("sql/source_003_capture.sql"))
f = defined("sql/source_011_partition_maintenance.sql")  # version 12's, with SET search_path
out("v12", f)
out("current", defined("sql/source_014_key_image_after_a_rename.sql")
    .replace("@schema_in_literal@", "teleport").replace("@schema@", "teleport"))
def variant(name, body):
    assert body != f, name
    out(name, body)
nosp = f.replace("security definer set search_path from current", "security definer")
for a, b in (("insert into event_", "insert into teleport.event_"), ("'event_id_seq'", "'teleport.event_id_seq'"),
             ("'queue_rotation'", "'teleport.queue_rotation'"), ("from known_partition", "from teleport.known_partition")):
    nosp = nosp.replace(a, b)
variant("v12_nosp", nosp)
update = f[f.index("    elsif tg_op = 'UPDATE' then"):f.index("    else\n        o := to_json(old);")]
variant("v12_noold", f.replace(update, "    elsif tg_op = 'UPDATE' then\n        d := to_json(new);\n"))
loop = f[f.index("    for i in 0 .. tg_nargs - 1 loop"):f.index("    if nend < tg_nargs then")]
variant("v12_noloop", f.replace(loop, "    npk := 1;\n"))
# The floor: one insert of the new row's JSON, no SET clause (as the current function).
out("floor", """create or replace function capture_row() returns trigger
language plpgsql security definer as $$
begin
    insert into teleport.event_0
    values (pg_catalog.nextval('teleport.event_id_seq'::pg_catalog.regclass), pg_catalog.pg_current_xact_id(),
            pg_catalog.clock_timestamp(), pg_catalog.substr(tg_op, 1, 1)::pg_catalog."char", tg_table_schema,
            tg_table_name, null, pg_catalog.to_json(new), tg_relid);
    return null;
end
$$;""")
PY
VARIANTS="${VARIANTS:-none v1 v3 v12 current floor}"
if [ "${C_FLOOR:-0}" = 1 ]; then
    [ -f /usr/include/postgresql/15/server/postgres.h ] || {
        apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-server-dev-15 >/dev/null
    }
    cp bench/c_floor/capture_floor.c bench/c_floor/Makefile "$WORK/"
    make -s -C "$WORK" PG_CONFIG="$PG_BINDIR/pg_config" install >/dev/null
    echo "create or replace function teleport.capture_row() returns trigger language c as '\$libdir/capture_floor', 'capture_floor_c';" > "$WORK/c_floor.sql"
    VARIANTS="$VARIANTS c_floor"
fi
cat > "$WORK/update.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
update pgbench_accounts set abalance = abalance + 1 where aid = :aid;
SQL
TABLES="pgbench_accounts pgbench_branches pgbench_tellers pgbench_history"
results="$WORK/results.txt"; : > "$results"
for r in $(seq 1 "$REPEAT"); do
    for variant in $VARIANTS; do
        for t in $TABLES; do
            psql_b -c "alter table $t $([ "$variant" = none ] && echo disable || echo enable) trigger pgteleport_capture"
        done
        [ "$variant" != none ] && psql_su -d bench -f "$WORK/$variant.sql"
        psql_b -c "truncate teleport.event_0, teleport.event_1, teleport.event_2"; psql_su -c checkpoint
        if [ "$WORKLOAD" = txns ] || [ "$WORKLOAD" = rows ]; then
            # One backend; the figure is rows per second of that backend's CPU time (from
            # /proc, before and after), which other tenants of the machine barely move.
            # txns: ROWS/10 transactions of one single-row UPDATE each (committed,
            # synchronous_commit off) — each call is its function's first in the
            # transaction, as in tpcb-like. rows: one UPDATE of ROWS rows, rolled back.
            psql_b -c "vacuum pgbench_accounts" >/dev/null
            if [ "$WORKLOAD" = txns ]; then
                n=$((ROWS / 10))
                sql="set synchronous_commit = off;
do \$\$ begin for i in 1..$n loop update pgbench_accounts set abalance = abalance + 1 where aid = i; commit; end loop; end \$\$;"
            else
                n=$ROWS
                sql="begin; update pgbench_accounts set abalance = abalance + 1 where aid <= $n; rollback;"
            fi
            secs=$(backend_cpu_seconds "$sql")
            tps=$(python3 -c "print(round($n / $secs, 1))")
        else
            args=(-h 127.0.0.1 -p "$SP" -U bench -n -c "$CLIENTS" -j 2 -T "$DURATION")
            if [ "$WORKLOAD" = tpcb ]; then args+=(-b tpcb-like); else args+=(-f "$WORK/update.sql"); fi
            tps=$("$PG_BINDIR/pgbench" "${args[@]}" bench 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
        fi
        echo "$r $variant $tps" >> "$results"
        echo "round $r $variant: $tps tps"
    done
done
python3 - "$results" "$WORKLOAD" "$DURATION" "$CLIENTS" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for r, v, tps in rows:
    by.setdefault(v, {})[r] = float(tps)
med = statistics.median
rounds = sorted(by[next(iter(by))])
out = {"workload": sys.argv[2], "duration_s": int(sys.argv[3]), "clients": int(sys.argv[4]),
       "tps": {v: med(by[v].values()) for v in by}}
# Per-round ratios, then their median.
for a, b in (("v1", "none"), ("v3", "none"), ("v12", "none"), ("current", "none"), ("current", "v1"), ("current", "v3"),
             ("current", "v12"), ("floor", "none"), ("current", "floor"), ("c_floor", "none"), ("c_floor", "floor"),
             ("v12_nosp", "v12"), ("v12_noold", "v12"), ("v12_noloop", "v12")):
    if a in by and b in by:
        out[f"ratio_{a}_to_{b}"] = round(med(by[a][r] / by[b][r] for r in rounds), 3)
if sys.argv[2] in ("rows", "txns") and "none" in by:
    out["trigger_us_per_row"] = {v: round(med(1e6 / by[v][r] - 1e6 / by["none"][r] for r in rounds), 3)
                                 for v in by if v != "none"}
print(json.dumps(out, indent=2))
json.dump(out, open("bench/results/trigger_variants.json", "w"), indent=2)
PY
