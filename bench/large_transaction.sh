#!/usr/bin/env bash
# Large-transaction benchmark (issue #5): one source transaction of ROWS row changes
# (60 % inserts, then 20 % updates and 20 % deletes of those rows, all in one COMMIT) is
# replicated by two pgteleport processes; prints the time, the queue payload of the batch
# and the peak RSS (VmHWM) of each instance, and checks the target never showed a part of
# the transaction. Usage: bench/large_transaction.sh [ROWS]   (default 5000000)
# Writes bench/results/large_transaction.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ROWS="${1:-5000000}"
INS=$((ROWS * 6 / 10)); UPD=$((ROWS * 2 / 10)); DEL=$((ROWS - INS - UPD))
source bench/lib.sh
start_pair
psql_s() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U bench -d bench -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_d() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$DP" -U bench -d bench -X -q -v ON_ERROR_STOP=1 "$@"; }
for p in "$SP" "$DP"; do
    "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U postgres -X -q -c "create role bench login password 'bench'" -c "create database bench owner bench"
done
TABLE="create schema app; create table app.big (id bigint primary key, v int not null, pad text not null)"
psql_s -c "$TABLE"; psql_d -c "$TABLE"
cat > "$WORK/target.yml" <<YML
database: {name: big-target, database: bench, hostname: 127.0.0.1, port: $DP, username: bench, password: bench}
server: {hostname: 127.0.0.1, port: $TP, allow_unauthenticated: true}
YML
cat > "$WORK/source.yml" <<YML
database: {name: big-source, database: bench, hostname: 127.0.0.1, port: $SP, username: bench, password: bench}
targets:
  t:
    target_expression: "app.*"
    endpoint: {hostname: 127.0.0.1, port: $TP, timeout_seconds: 600}
YML
PGTELEPORT_LOG=warn "$BIN" -config "$WORK/target.yml" & TPID=$!; PIDS+=("$TPID")
sleep 1
PGTELEPORT_LOG=warn "$BIN" -config "$WORK/source.yml" & SPID=$!; PIDS+=("$SPID")
sleep 2
echo "one transaction: $INS inserts, $UPD updates, $DEL deletes …"
t0=$(now)
psql_s -c "begin; insert into app.big select g, 0, md5(g::text) from generate_series(1, $INS) g;
           update app.big set v = 1 where id <= $UPD;
           delete from app.big where id > $INS - $DEL; commit;"
t1=$(now)
FINAL=$((INS - DEL))
PAYLOAD=$(psql_s -Atc "select coalesce(sum(octet_length(ev_data::text) + coalesce(octet_length(ev_key::text), 0)), 0) from teleport.event")
# Wait for the target; every count seen there must be 0 or the final one.
PARTIAL=0
while :; do
    n=$(psql_d -Atc "select count(*) from app.big")
    [ "$n" != 0 ] && [ "$n" != "$FINAL" ] && PARTIAL=$n
    [ "$n" = "$FINAL" ] && break
    kill -0 "$SPID" && kill -0 "$TPID" || { echo "an instance died" >&2; exit 1; }
    sleep 0.5
done
t2=$(now)
SRC_SUM=$(psql_s -Atc "select sum(v), md5(string_agg(id::text || pad, ',' order by id)) from app.big")
DST_SUM=$(psql_d -Atc "select sum(v), md5(string_agg(id::text || pad, ',' order by id)) from app.big")
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
SRC_KB=$(hwm "$SPID"); DST_KB=$(hwm "$TPID")
python3 - "$ROWS" "$t0" "$t1" "$t2" "$PAYLOAD" "$SRC_KB" "$DST_KB" "$PARTIAL" "$SRC_SUM" "$DST_SUM" <<'PY'
import json, sys
rows = int(sys.argv[1]); t0, t1, t2 = map(float, sys.argv[2:5]); payload = int(sys.argv[5])
src_kb, dst_kb, partial = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
equal = sys.argv[9] == sys.argv[10]
res = {"row_changes": rows, "source_commit_s": t1 - t0, "replicated_after_commit_s": t2 - t1,
       "queue_payload_mb": payload / 1e6, "source_peak_rss_mb": src_kb / 1024,
       "target_peak_rss_mb": dst_kb / 1024, "partial_state_seen": partial, "equal": equal}
print(f"{rows} row changes in one transaction: source commit {t1-t0:.1f} s, on the target {t2-t1:.1f} s later")
print(f"queue payload {payload/1e6:.0f} MB; peak RSS source instance {src_kb/1024:.0f} MB, target instance {dst_kb/1024:.0f} MB")
print(f"target showed a partial state: {'yes (' + str(partial) + ' rows)' if partial else 'no'}; end state equal: {equal}")
json.dump(res, open("bench/results/large_transaction.json", "w"), indent=2)
sys.exit(0 if equal and not partial else 1)
PY
