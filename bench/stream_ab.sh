#!/usr/bin/env bash
# Before/after comparison of pgteleport builds on bench/stream.sh's throughput scenario (a
# backlog of CHANGES row changes in transactions of 10, applied from a stopped source),
# without native replication: the builds alternate within each round on the same clusters,
# so a change's effect is not lost in the machine's drift between separate runs.
# Usage: BUILDS="before:/path/to/old/pgteleport after:target/release/pgteleport" bash bench/stream_ab.sh
#   ROUNDS=N (5), CHANGES=N (500000); a build runs both instances; EXTRA_<name>="yaml lines"
#   adds keys to that build's source config (e.g. EXTRA_after="max_events_per_batch: 50000");
#   KEEP=DIR keeps the instances' and clusters' logs (LOG=… sets the instances' log filter).
# Prints each round's apply time per build and the median of each.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
CHANGES="${CHANGES:-500000}"; TXNS=$((CHANGES / 10)); ROUNDS="${ROUNDS:-5}"
: "${BUILDS:?BUILDS=\"name:binary name:binary …\"}"
SKIP_BUILD=1 source bench/lib.sh
source bench/workload.sh
start_pair "-c wal_level=logical -c synchronous_commit=on ${PG_EXTRA:-}"
for p in "$SP" "$DP"; do
    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U postgres -X -q -c "create role bench login password 'bench'"
    psql_at "$p" postgres -c "create database tele owner bench"
    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U bench -d tele -X -q -v ON_ERROR_STOP=1 -c "$TABLES"
done
"$PG_BINDIR/psql" -h 127.0.0.1 -p "$DP" -U postgres -X -q -c "grant set on parameter session_replication_role to bench"
cat > "$WORK/target.yml" <<YML
database: {name: stream-target, database: tele, hostname: 127.0.0.1, port: $DP, username: bench, password: bench}
server: {hostname: 127.0.0.1, port: $TP, allow_unauthenticated: true}
YML
source_config() { # build name
    local extra="EXTRA_$1"
    cat > "$WORK/source.yml" <<YML
database: {name: stream-source, database: tele, hostname: 127.0.0.1, port: $SP, username: bench, password: bench}
${!extra:-}
targets:
  t:
    target_expression: "public.*"
    endpoint: {hostname: 127.0.0.1, port: $TP, timeout_seconds: 600}
YML
}
TPID=""; SPID=""; CURRENT=""
start_target() { # binary
    [ -n "$TPID" ] && { kill "$TPID"; wait "$TPID" 2>/dev/null || true; }
    PGTELEPORT_LOG="${LOG:-warn}" "$1" -config "$WORK/target.yml" 2>>"$WORK/target.log" & TPID=$!; PIDS+=("$TPID")
    CURRENT=$1
}
start_source() { PGTELEPORT_LOG="${LOG:-warn}" "$1" -config "$WORK/source.yml" 2>>"$WORK/source.log" & SPID=$!; PIDS+=("$SPID"); }
stop_source() { kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true; }
wait_target() { # sql expected
    local deadline=$(( $(date +%s) + 600 ))
    until [ "$(psql_at "$DP" tele -c "$1")" = "$2" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out waiting for $1 = $2" >&2; exit 1; }
        sleep "${3:-0.1}"
    done
}
first=${BUILDS%% *}; first=${first#*:}
start_target "$first"; source_config "${BUILDS%%:*}"; start_source "$first"
until [ "$(psql_at "$SP" tele -c "select count(*) from pg_trigger where tgname = 'pgteleport_capture'")" = 5 ]; do sleep 0.2; done
psql_at "$SP" tele -c "insert into acc select g, g % 10, 0, '' from generate_series(1, 100000) g"
wait_target "select count(*) from acc" 100000
RES="$WORK/rounds"; : > "$RES"
for round in $(seq 1 "$ROUNDS"); do
    # Alternating order: a build's place in a round can change its time.
    builds=$BUILDS; [ $((round % 2)) = 0 ] && builds=$(echo "$BUILDS" | tr ' ' '\n' | tac | tr '\n' ' ')
    for b in $builds; do
        name=${b%%:*}; bin=${b#*:}
        stop_source
        [ "$bin" = "$CURRENT" ] || start_target "$bin"
        source_config "$name"
        psql_at "$SP" tele -c "truncate items, mark"
        start_source "$bin"
        wait_target "select (select count(*) from items) + (select count(*) from mark)" 0
        stop_source
        psql_at "$SP" tele -c "$BACKLOG"
        wait_idle
        t0=$(now); start_source "$bin"
        wait_target "select count(*) from mark" 1 0.02
        t1=$(now)
        [ "$(checksum "$SP" tele)" = "$(checksum "$DP" tele)" ] || { echo "[$name] source and target differ" >&2; exit 1; }
        secs=$(python3 -c "print(round($t1 - $t0, 3))")
        echo "round $round $name $secs" | tee -a "$RES"
    done
done
python3 - "$RES" <<'PY'
import statistics, sys
by = {}
for l in open(sys.argv[1]):
    _, r, name, s = l.split()
    by.setdefault(name, []).append(float(s))
names = list(by)
for n in names:
    print(f"{n}: median {statistics.median(by[n]):.3f} s over {len(by[n])} rounds ({', '.join(map(str, by[n]))})")
if len(names) == 2:
    a, b = names
    print(f"{b} / {a} apply time: {statistics.median(by[b]) / statistics.median(by[a]):.2f} (lower is faster)")
PY
if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP" && cp "$WORK"/*.log "$KEEP"/ && cp "$WORK/dst/log" "$KEEP/target.pg.log" && cp "$WORK/src/log" "$KEEP/source.pg.log"
fi
