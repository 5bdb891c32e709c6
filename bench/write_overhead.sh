#!/usr/bin/env bash
# Source write overhead (issue #7, scenario 1): pgbench on the source with no capture, with
# pgteleport's triggers installed and the source instance running (shipping to a target
# instance on a second cluster), and — the reference — with native logical replication
# running (a PUBLICATION of the same tables, a SUBSCRIPTION on the second cluster: walsender,
# apply worker and target on the same cores, as pgteleport's pipeline is). Both clusters
# have wal_level=logical in every mode, so the settings are the same. Two workloads:
# pgbench's built-in tpcb-like, and a single-row UPDATE script. REPEAT interleaved rounds
# (none, capture, native, none, …), medians; TPS and latency p50/p99 from pgbench's
# per-transaction logs. MODES="none capture" leaves native out; a mode `capture@/path/to/bin`
# runs another pgteleport build's source instance (and its triggers), to compare two builds
# in one run (e.g. MODES="none capture capture@/tmp/old-pgteleport native").
# CPU=1 also prints the CPU time of every process group (pgbench, the source's backends by
# application, the instances, the target's backends, background processes) per transaction,
# over the middle of each run (bench/cpu_groups.py reads /proc).
# STATS=1: pg_stat_statements on both clusters (planning time too); after each run, the
# statements of the pipeline (everything but pgbench's) that took the most time, with their
# calls and µs per pgbench transaction (STATS_TOP=N rows, default 12).
# DURABLE=1: both clusters with PostgreSQL's default durability (fsync, synchronous_commit and
# full_page_writes on; bench/lib.sh turns them off for every other benchmark), so that each
# commit waits for its WAL flush as in production.
# Usage: bench/write_overhead.sh [SECONDS] [CLIENTS]   (defaults 20, 4; SCALE=10, REPEAT=3,
# WORKLOADS="tpcb update")
# Writes bench/results/write_overhead.json (with DURABLE=1, write_overhead_durable.json).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
DURATION="${1:-20}"; CLIENTS="${2:-4}"; SCALE="${SCALE:-10}"; REPEAT="${REPEAT:-3}"
MODES="${MODES:-none capture native}"
source bench/lib.sh
EXTRA=""; [ "${STATS:-0}" = 1 ] && EXTRA="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_planning=on"
[ "${DURABLE:-0}" = 1 ] && EXTRA="$EXTRA -c fsync=on -c synchronous_commit=on -c full_page_writes=on"
start_pair "-c wal_level=logical $EXTRA"
for p in "$SP" "$DP"; do
    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U postgres -X -q -c "create role bench login password 'bench'" -c "create database bench owner bench"
    "$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$p" -U bench -i -s "$SCALE" -q bench >/dev/null 2>&1
    # History gets a key so that it replicates by key (pgbench's inserts fill it by default).
    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U bench -d bench -X -q -c "alter table pgbench_history add column id bigserial primary key"
    [ "${STATS:-0}" = 1 ] && "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U postgres -d bench -X -q -c "create extension pg_stat_statements"
done
statements() { # workload mode tps: the pipeline's costliest statements of the run
    [ "${STATS:-0}" = 1 ] || return 0
    local p side
    for p in "$SP" "$DP"; do
        side=source; [ "$p" = "$DP" ] && side=target
        echo "    [$1 $2] top statements on the $side: calls per txn, µs per txn planning, executing, query"
        "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U postgres -d bench -X -Atq -F ' | ' \
            -c "select round(calls / ($3 * $DURATION), 3), round((total_plan_time * 1000 / ($3 * $DURATION))::numeric, 1), round((total_exec_time * 1000 / ($3 * $DURATION))::numeric, 1),
                       left(regexp_replace(query, '\s+', ' ', 'g'), 140)
                  from pg_stat_statements
                 where query !~ '(?i)^(update|insert into|select abalance from|begin|end|commit)\s*(pgbench_|;|$)' and query !~ 'pg_stat_statements'
                 order by total_exec_time + total_plan_time desc limit ${STATS_TOP:-12}" | sed 's/^/        /'
        "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U postgres -d bench -X -Atq -c "select pg_stat_statements_reset()" >/dev/null
    done
}
cat > "$WORK/target.yml" <<YML
database: {name: bench-target, database: bench, hostname: 127.0.0.1, port: $DP, username: bench, password: bench}
server: {hostname: 127.0.0.1, port: $TP, allow_unauthenticated: true}
YML
PGTELEPORT_LOG=warn "$BIN" -config "$WORK/target.yml" 2>"$WORK/target.log" & TPID=$!; PIDS+=("$TPID")
cat > "$WORK/update.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
update pgbench_accounts set abalance = abalance + 1 where aid = :aid;
SQL
psql_src() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U bench -d bench -X -Atq "$@"; }
psql_dst_su() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$DP" -U postgres -d bench -X -Atq -v ON_ERROR_STOP=1 "$@"; }
# Native logical replication: the walsender connects as bench (the tables' owner).
"$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U postgres -X -q -c "alter role bench replication"
psql_src -c "create publication overhead for table pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"

run_pgbench() { # workload logprefix -> prints tps
    local args=(-h 127.0.0.1 -p "$SP" -U bench -n -c "$CLIENTS" -j 2 -T "$DURATION" -l --log-prefix="$2")
    if [ "$1" = tpcb ]; then args+=(-b tpcb-like); else args+=(-f "$WORK/update.sql"); fi
    "$PG_BINDIR/pgbench" "${args[@]}" bench 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

results="$WORK/results.txt"; : > "$results"
n=0
for r in $(seq 1 "$REPEAT"); do
    for workload in ${WORKLOADS:-tpcb update}; do
        for mode in $MODES; do
            n=$((n + 1))
            SPID=""
            if [ "${mode%%@*}" = capture ]; then
                SBIN="$BIN"; [ "$mode" = capture ] || SBIN="${mode#capture@}"
                cat > "$WORK/source-$n.yml" <<YML
database: {name: bench-source-$n, database: bench, hostname: 127.0.0.1, port: $SP, username: bench, password: bench}
targets:
  t:
    target_expression: "public.pgbench_*"
    endpoint: {hostname: 127.0.0.1, port: $TP}
YML
                PGTELEPORT_LOG=warn "$SBIN" -config "$WORK/source-$n.yml" 2>>"$WORK/source.log" & SPID=$!; PIDS+=("$SPID")
                for _ in $(seq 1 100); do
                    [ "$(psql_src -c "select count(*) from pg_trigger where tgname = 'pgteleport_capture'")" = 4 ] && break
                    sleep 0.2
                done
            elif [ "$mode" = native ]; then
                # copy_data off: both sides start from the same pgbench -i data, and only the
                # changes made while the subscription exists are streamed.
                psql_dst_su -c "create subscription overhead connection 'host=127.0.0.1 port=$SP user=bench password=bench dbname=bench' publication overhead with (copy_data = false)"
                for _ in $(seq 1 100); do
                    [ "$(psql_src -c "select count(*) from pg_stat_replication where application_name = 'overhead' and state = 'streaming'")" = 1 ] && break
                    sleep 0.2
                done
            fi
            rm -f "$WORK"/pglog-"$n".*
            if [ "${STATS:-0}" = 1 ]; then
                for p in "$SP" "$DP"; do
                    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U postgres -d bench -X -Atq -c "select pg_stat_statements_reset()" >/dev/null
                done
            fi
            if [ "${CPU:-0}" = 1 ]; then
                # CPU by process group over the middle of the run (start and end left out).
                run_pgbench "$workload" "$WORK/pglog-$n" > "$WORK/tps-$n" & BPID=$!
                sleep 1; python3 bench/cpu_groups.py snap "$WORK/cpu-a"
                sleep $((DURATION - 2))
                for p in "$SP" "$DP"; do
                    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U postgres -d bench -X -Atq \
                        -c "select $p, pid, application_name from pg_stat_activity where backend_type = 'client backend'"
                done > "$WORK/apps"
                python3 bench/cpu_groups.py snap "$WORK/cpu-b"
                wait "$BPID"; tps=$(cat "$WORK/tps-$n")
                python3 bench/cpu_groups.py diff "$WORK/cpu-a" "$WORK/cpu-b" "$WORK/src" "$WORK/dst" "$WORK/apps" \
                    "pgbench=$BPID,source instance=${SPID:-0},target instance=$TPID" |
                    while IFS=$'\t' read -r g sec; do
                        echo "$workload|$mode|$g|$sec|$((DURATION - 2))|$tps" >> "$WORK/cpu.txt"
                        printf '    %-40s %6.2f s  %6.0f µs per transaction\n' "$g" "$sec" \
                            "$(python3 -c "print($sec * 1e6 / ($tps * ($DURATION - 2)))")"
                    done
            else
                tps=$(run_pgbench "$workload" "$WORK/pglog-$n")
            fi
            lat=$(cat "$WORK"/pglog-"$n".* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.3f %.3f", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}')
            echo "$workload $mode $tps $lat" >> "$results"
            echo "round $r $workload $mode: $tps tps, p50/p99 ${lat// / / } ms"
            [ "$mode" = none ] || statements "$workload" "$mode" "$tps"
            if [ -n "$SPID" ]; then
                kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true
                "$SBIN" uninstall --config "$WORK/source-$n.yml" >/dev/null 2>&1
            elif [ "$mode" = native ]; then
                psql_dst_su -c "drop subscription overhead"
            fi
        done
    done
done
python3 - "$results" "$DURATION" "$CLIENTS" "$SCALE" "${DURABLE:-0}" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
out = {"durable": sys.argv[5] == "1", "duration_s": int(sys.argv[2]), "clients": int(sys.argv[3]), "scale": int(sys.argv[4]), "workloads": {}}
for w in sorted({r[0] for r in rows}):
    m = {}
    # Each mode's TPS per round, in round order.
    tps = {}
    modes = list(dict.fromkeys(r[1] for r in rows))
    for mode in modes:
        sel = [r for r in rows if r[0] == w and r[1] == mode]
        if not sel:
            continue
        tps[mode] = [float(r[2]) for r in sel]
        m[mode] = {"tps": statistics.median(tps[mode]),
                   "p50_ms": statistics.median(float(r[3]) for r in sel),
                   "p99_ms": statistics.median(float(r[4]) for r in sel),
                   "rounds_tps": tps[mode]}
    # Ratio per round (interleaved), then the median of the ratios.
    pairs = [("capture", "none", "tps_ratio"), ("native", "none", "native_tps_ratio"),
             ("capture", "native", "capture_to_native_ratio")]
    pairs += [(o, "none", f"{o}_tps_ratio") for o in modes if o.startswith("capture@")]
    pairs += [("capture", o, f"capture_to_{o}_ratio") for o in modes if o.startswith("capture@")]
    for a, b, key in pairs:
        if a in tps and b in tps:
            m[key] = round(statistics.median(x / y for x, y in zip(tps[a], tps[b])), 3)
    out["workloads"][w] = m
print(json.dumps(out, indent=2))
json.dump(out, open("bench/results/write_overhead" + ("_durable" if out["durable"] else "") + ".json", "w"), indent=2)
PY
if [ "${CPU:-0}" = 1 ]; then
    # CPU µs per transaction by process group, medians of the rounds.
    python3 - "$WORK/cpu.txt" <<'PY'
import statistics, sys
by = {}
for line in open(sys.argv[1]):
    w, mode, g, sec, window, tps = line.rstrip("\n").split("|")
    by.setdefault((w, mode), {}).setdefault(g, []).append(float(sec) * 1e6 / (float(tps) * float(window)))
for (w, mode), groups in by.items():
    total = sum(statistics.median(v) for v in groups.values())
    print(f"{w} {mode}: CPU µs per transaction, {total:.0f} in all")
    for g, v in sorted(groups.items(), key=lambda x: -statistics.median(x[1])):
        print(f"    {g:40} {statistics.median(v):7.0f}")
PY
fi
