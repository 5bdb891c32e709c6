#!/usr/bin/env bash
# Initial-load benchmark (issue #3): one data set, three ways of copying it, in one run.
#   (a) raw pipe: psql COPY ... TO STDOUT (binary) | psql COPY ... FROM STDIN, table by table
#   (b) pg_dump -Fd -j 2 | pg_restore -j 2 (or pgcopydb clone when installed)
#   (c) pgteleport -mode initial-load (parallel ctid ranges, streamed through HTTP)
# Usage: bench/initial_load.sh [SCALE]   (SCALE 100 ≈ 1.3 GB of pgbench_accounts + ~0.7 GB wide table);
#   SPLITS="auto auto@/tmp/pgt-old" pgteleport variants (--split mode[@another binary]), SKIP_B=1 leaves (b) out,
#   WORKERS=N COPY streams (default: pgteleport's, half the CPUs), REPEAT=N (default 3) interleaved rounds (order alternating), PROFILE=1 CPU per process,
#   PERF=1 a perf profile of the whole machine during (c)
# Prints MB/s of each and the ratios of (c) to (a) and (b); writes bench/results/initial_load.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SCALE="${1:-100}"
WORKERS="${WORKERS:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}"
WIDE_ROWS=$((SCALE * 3500))
source bench/lib.sh
trap stop_clusters EXIT
SP=$(port); DP=$(port)
MINIMAL="-c wal_level=minimal -c max_wal_senders=0"
# No autovacuum on the target: it would vacuum one method's freshly loaded tables while the
# next method runs. Each method starts after a checkpoint and with the page cache written back.
start_cluster "$WORK/src" "$SP" "$MINIMAL"; start_cluster "$WORK/dst" "$DP" "$MINIMAL -c autovacuum=off"

echo "building the data set (scale $SCALE) …"
psql_s -c "create role bench login password 'bench'" -c "create database bench owner bench"
"$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$SP" -U bench -i -s "$SCALE" -q --unlogged-tables bench >/dev/null 2>&1 || \
    "$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$SP" -U bench -i -s "$SCALE" -q bench >/dev/null
psql_s -U bench -d bench -c "alter table pgbench_accounts set logged; alter table pgbench_branches set logged; alter table pgbench_tellers set logged; alter table pgbench_history set logged" 2>/dev/null || true
psql_s -U bench -d bench -c "alter table pgbench_history add column id bigserial primary key" \
    -c "create table wide (id bigint primary key, created timestamptz not null, payload text not null, score numeric(12,4), tags text[])" \
    -c "insert into wide select g, now() - g * interval '1 s', repeat(md5(g::text), 56), g / 7.0, array['a','b'] from generate_series(1, $WIDE_ROWS) g" \
    -c "vacuum analyze pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, wide"
TABLES="pgbench_accounts pgbench_branches pgbench_tellers pgbench_history wide"
MB=$(psql_s -U bench -d bench -Atc "select round(sum(pg_relation_size(c.oid)) / 1e6) from pg_class c where relname in ('pgbench_accounts','pgbench_branches','pgbench_tellers','pgbench_history','wide')")
echo "data set: $MB MB of heap in 5 tables"
psql_d -c "create role bench login password 'bench'"
DDL=$(psql_s -U bench -d bench -Atc "select 'create table ' || relname || ' (' || string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' order by attnum) || ');' from pg_attribute a join pg_class c on c.oid = a.attrelid where relname in ('pgbench_accounts','pgbench_branches','pgbench_tellers','pgbench_history','wide') and attnum > 0 and not attisdropped group by relname")
REPEAT="${REPEAT:-3}"
SPLITS="${SPLITS:-auto}"
TP=$(port)
cat > "$WORK/source.yml" <<YML
database: {name: bench-source, database: bench, hostname: 127.0.0.1, port: $SP, username: bench, password: bench}
targets:
  copy:
    target_expression: "public.*"
    endpoint: {hostname: 127.0.0.1, port: $TP}
YML
: > "$WORK/times"
# Each method is a function; rounds alternate their order (odd: a, b, c; even: c, b, a),
# since on this machine a method runs faster or slower by its place in the round.
method_a() {
    psql_d -c "drop database if exists dst_a" -c "create database dst_a"
    # (a) raw pipe, table by table, into tables without indexes
    echo "$DDL" | psql_d -d dst_a
    quiesce; t0=$(now)
    for t in $TABLES; do
        psql_s -U bench -d bench -c "copy $t to stdout (format binary)" | psql_d -d dst_a -c "copy $t from stdin (format binary)"
    done
    t1=$(now); A=$(python3 -c "print($t1 - $t0)")
    # (a+) the same, plus the primary keys every other method builds
    quiesce; t0=$(now)
    psql_d -d dst_a -c "alter table pgbench_accounts add primary key (aid); alter table pgbench_branches add primary key (bid); alter table pgbench_tellers add primary key (tid); alter table pgbench_history add primary key (id); alter table wide add primary key (id)"
    t1=$(now); AP=$(python3 -c "print($A + $t1 - $t0)")
}
method_b() {
    # SKIP_B=1: leave (b) out (its time shows as 0), e.g. to compare pgteleport variants
    if [ "${SKIP_B:-0}" = 1 ]; then BNAME="(skipped)"; B=0; return; fi
    psql_d -c "drop database if exists dst_b" -c "create database dst_b"
    # (b) pgcopydb clone if installed, else pg_dump -Fd -j 2 | pg_restore -j 2
    rm -rf "$WORK/dump" "$WORK/pgcopydb"
    if command -v pgcopydb >/dev/null 2>&1; then
        BNAME="pgcopydb clone (2 jobs)"
        quiesce; t0=$(now)
        pgcopydb clone --dir "$WORK/pgcopydb" --source "host=127.0.0.1 port=$SP user=bench dbname=bench" --target "host=127.0.0.1 port=$DP user=postgres dbname=dst_b" --table-jobs 2 --index-jobs 2 --no-owner >"$WORK/pgcopydb.log" 2>&1 \
            || { echo "pgcopydb clone failed:"; grep -E "ERROR|FATAL" "$WORK/pgcopydb.log" | head -20; exit 1; }
        t1=$(now)
    else
        BNAME="pg_dump -Fd -j 2 + pg_restore -j 2"
        quiesce; t0=$(now)
        "$PG_BINDIR/pg_dump" -h 127.0.0.1 -p "$SP" -U bench -Fd -j 2 -Z 0 -f "$WORK/dump" bench
        "$PG_BINDIR/pg_restore" -h 127.0.0.1 -p "$DP" -U postgres -d dst_b -j 2 --no-owner "$WORK/dump"
        t1=$(now)
    fi
    B=$(python3 -c "print($t1 - $t0)")

}
method_c() {
    # (c) pgteleport, once per variant in SPLITS (default: auto): a --split mode, optionally
    # with another pgteleport binary after an @ (`auto@/tmp/pgteleport-old`)
    # (variants run in reverse order on even rounds: the place in a round counts)
    declare -gA CV=()
    ORDER="$SPLITS"; [ $((r % 2)) = 0 ] && ORDER=$(echo $SPLITS | tr ' ' '\n' | tac | tr '\n' ' ')
    for variant in $ORDER; do
    split=${variant%%@*}; VBIN=$BIN
    case "$variant" in *@*) VBIN=${variant#*@};; esac
    vname=$(echo "$variant" | tr '/@' '__')
    psql_d -c "drop database if exists dst_c" -c "create database dst_c owner bench"
    cat > "$WORK/target.yml" <<YML
database: {name: bench-target, database: dst_c, hostname: 127.0.0.1, port: $DP, username: bench, password: bench}
server: {hostname: 127.0.0.1, port: $TP, allow_unauthenticated: true}
YML
    PGTELEPORT_LOG=info "$VBIN" -config "$WORK/target.yml" 2>"$WORK/target-$r-$vname.log" & TPID=$!
    sleep 1
    # PROFILE=1: sample every process's CPU time during (c) and print where it went.
    if [ "${PROFILE:-0}" = 1 ]; then
        rm -f "$WORK/cpu.samples"
        ( while :; do ps -eo pid=,times=,args= >> "$WORK/cpu.samples"; sleep 0.5; done ) & SAMPLER=$!
    fi
    # PERF=1: sample the whole machine with perf during (c) (report in $WORK/perf.txt).
    if [ "${PERF:-0}" = 1 ]; then
        perf record -a -F 499 -o "$WORK/perf.data" >/dev/null 2>&1 & PERFPID=$!
        sleep 0.5
    fi
    quiesce; t0=$(now)
    PGTELEPORT_LOG=warn "$VBIN" -config "$WORK/source.yml" -mode initial-load -load-target copy -workers "$WORKERS" -split "$split" -no-progress
    t1=$(now)
    C=$(python3 -c "print($t1 - $t0)")
    if [ "${PERF:-0}" = 1 ]; then
        kill -INT "$PERFPID"; wait "$PERFPID" || true
        perf report -i "$WORK/perf.data" --sort comm,dso,sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60 | tee "$WORK/perf.txt"
    fi
    if [ "${PROFILE:-0}" = 1 ]; then
        sleep 0.6; kill "$SAMPLER"
        python3 - "$WORK/cpu.samples" "$C" <<'PY'
import sys, collections
first, last = {}, {}
for line in open(sys.argv[1]):
    parts = line.split(None, 2)
    if len(parts) == 3 and parts[0].isdigit():
        first.setdefault(parts[0], int(parts[1]))
        last[parts[0]] = (int(parts[1]), parts[2].strip())
groups = collections.Counter()
for pid, (secs, args) in last.items():
    if "release/pgteleport" in args and "target.yml" in args: g = "pgteleport target instance"
    elif "release/pgteleport" in args: g = "pgteleport source (load)"
    elif args.startswith("postgres:") and " dst_c " in args: g = "target backends (COPY FROM, index builds)"
    elif args.startswith("postgres:") and " bench bench " in args: g = "source backends (COPY TO)"
    elif args.startswith("postgres:"): g = "other postgres processes (workers, writers)"
    else: continue
    groups[g] += secs - first[pid]
print(f"CPU seconds during (c), {float(sys.argv[2]):.1f} s wall on 2 cores (1 s resolution):")
for g, s in groups.most_common():
    print(f"  {g:45} {s:5d}")
PY
    fi
    kill $TPID; wait $TPID 2>/dev/null || true
    # The target's own account of each copy and key build (seconds), for the critical path.
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/target-$r-$vname.log" | grep -E "range copied|table loaded" | sed 's/^.*Z *INFO [a-z_:]*: /  /' || true

    ROWS_OK=$(psql_d -d dst_c -Atc "select count(*) from pgbench_accounts")
    CV[$variant]=$C
    done
    CS=""; for variant in $SPLITS; do CS="$CS ${CV[$variant]}"; done
}
# The methods run interleaved, REPEAT times each, into fresh databases: the machine is
# shared and noisy, so ratios are taken per round and their median reported.
for r in $(seq 1 "$REPEAT"); do
    if [ $((r % 2)) = 1 ]; then method_a; method_b; method_c; else method_c; method_b; method_a; fi
    echo "$A $AP $B $ROWS_OK$CS" >> "$WORK/times"
    echo "round $r: (a) $A s, (a+) $AP s, (b) $B s, (c) per split ($SPLITS):$CS s"
done
python3 - "$MB" "$BNAME" "$WORKERS" "$WORK/times" "$SPLITS" <<'PY'
import json, statistics, sys
mb, name, workers, splits = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[5].split()
runs = [l.split() for l in open(sys.argv[4]) if l.strip()]
med = statistics.median
a = med([float(r[0]) for r in runs]); ap = med([float(r[1]) for r in runs]); b = med([float(r[2]) for r in runs])
res = {"heap_mb": mb, "rounds": len(runs), "baseline_b": name, "pgteleport_workers": workers,
       "raw_pipe_s": a, "raw_pipe_plus_pk_s": ap, "baseline_b_s": b,
       "raw_pipe_mb_s": mb / a, "baseline_b_mb_s": mb / b if b else 0, "pgteleport": {},
       "per_round": [{"raw_pipe_s": float(r[0]), "raw_pipe_plus_pk_s": float(r[1]), "baseline_b_s": float(r[2]),
                      "pgbench_accounts_rows_on_target": int(r[3]),
                      "pgteleport_s": dict(zip(splits, map(float, r[4:])))} for r in runs]}
print(f"medians of {len(runs)} interleaved rounds:")
print(f"{'method':46} {'seconds':>8} {'MB/s':>8}")
print(f"{'(a) raw COPY binary pipe, sequential':46} {a:8.1f} {mb/a:8.1f}")
print(f"{'(a+) the same, then primary keys':46} {ap:8.1f} {mb/ap:8.1f}")
print(f"{'(b) ' + name:46} {b:8.1f} {mb/b if b else 0:8.1f}")
for k, split in enumerate(splits):
    cs = [float(r[4 + k]) for r in runs]
    c = med(cs)
    ra = med([float(r[0]) / x for r, x in zip(runs, cs)])
    rap = med([float(r[1]) / x for r, x in zip(runs, cs)])
    rb = med([float(r[2]) / x for r, x in zip(runs, cs)])  # 0 when (b) was skipped
    res["pgteleport"][split] = {"seconds": c, "mb_s": mb / c, "ratio_vs_raw_pipe": ra,
                                "ratio_vs_raw_pipe_plus_pk": rap, "ratio_vs_baseline_b": rb}
    print(f"{f'(c) pgteleport, {workers} workers, {split}':46} {c:8.1f} {mb/c:8.1f}")
    print(f"    median per-round ratio (c)/(a) = {ra:.2f}   (c)/(a+) = {rap:.2f}   (c)/(b) = {rb:.2f}   (higher is faster)")
    print("    per round (c)/(a): " + ", ".join(f"{float(r[0])/x:.2f}" for r, x in zip(runs, cs)))
json.dump(res, open("bench/results/initial_load.json", "w"), indent=2)
PY
