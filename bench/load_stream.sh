#!/usr/bin/env bash
# The initial load's COPY stream alone, against the fastest raw pipe doing the same work.
# One table (pgbench_accounts, SCALE × 100 000 rows), per round, in alternating order:
#   (a')  psql COPY … TO STDOUT (binary) | psql BEGIN; TRUNCATE; COPY … FROM STDIN (binary, FREEZE); COMMIT
#         — the no-WAL path under wal_level = minimal, as pgteleport's load takes it
#   (c)   pgteleport -mode initial-load of that table (its copy, then its primary key)
# and the CPU seconds of each process group during each, and the seconds it was runnable
# but waited for a core (from /proc/PID/stat and schedstat, every 0.1 s).
# Usage: bench/load_stream.sh [SCALE] (default 100), REPEAT=N rounds (default 3).
# Prints per round: (a') seconds, (c) seconds and the target's own time for the copy alone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SCALE="${1:-100}"
REPEAT="${REPEAT:-3}"
source bench/lib.sh
trap stop_clusters EXIT
SP=$(port); DP=$(port); TP=$(port)
MINIMAL="-c wal_level=minimal -c max_wal_senders=0"
start_cluster "$WORK/src" "$SP" "$MINIMAL"; start_cluster "$WORK/dst" "$DP" "$MINIMAL -c autovacuum=off"
echo "building pgbench_accounts (scale $SCALE) …"
psql_s -c "create role bench login password 'bench'" -c "create database bench owner bench"
"$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$SP" -U bench -i -s "$SCALE" -q --unlogged-tables bench >/dev/null 2>&1
psql_s -U bench -d bench -c "alter table pgbench_accounts set logged" -c "vacuum analyze pgbench_accounts"
psql_d -c "create role bench login password 'bench'"
DDL="create table pgbench_accounts (aid integer not null, bid integer, abalance integer, filler character(84));"
cat > "$WORK/source.yml" <<YML
database: {name: bench-source, database: bench, hostname: 127.0.0.1, port: $SP, username: bench, password: bench}
targets:
  copy:
    target_expression: "public.pgbench_accounts"
    endpoint: {hostname: 127.0.0.1, port: $TP}
YML
cat > "$WORK/target.yml" <<YML
database: {name: bench-target, database: dc, hostname: 127.0.0.1, port: $DP, username: bench, password: bench}
server: {hostname: 127.0.0.1, port: $TP, allow_unauthenticated: true}
YML
# CPU seconds per process group while it runs, written to $1 when stopped.
sample_cpu() {
    python3 - "$1" <<'PY' &
import collections, os, signal, sys, time
stop = False
def h(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, h)
tick = os.sysconf("SC_CLK_TCK")
first, last = {}, {}
while not stop:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
            cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip()
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()
        t = (int(f[11]) + int(f[12])) / tick
        # Seconds spent runnable but waiting for a core (schedstat's 2nd field), summed
        # over the process's threads.
        q = 0.0
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                q += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            pass
        first.setdefault(pid, (t, q))
        last[pid] = (t, q, cmd)
    time.sleep(0.1)
groups = collections.Counter()
waits = collections.Counter()
me = str(os.getpid())
for pid, (t, q, cmd) in last.items():
    prog = os.path.basename(cmd.split(" ", 1)[0])
    if pid == me: continue
    elif "target.yml" in cmd: g = "pgteleport target instance"
    elif prog == "pgteleport": g = "pgteleport load process"
    elif cmd.startswith("postgres:") and (" dst_a " in cmd or " dst_c " in cmd): g = "target backend"
    elif cmd.startswith("postgres: parallel worker"): g = "target parallel worker (key build)"
    elif cmd.startswith("postgres:") and " bench " in cmd: g = "source backend"
    elif prog == "psql": g = "psql (both)"
    else: continue
    groups[g] += t - first[pid][0]
    waits[g] += q - first[pid][1]
with open(sys.argv[1], "w") as out:
    for g, s in groups.most_common():
        out.write(f"    {g:36} {s:6.2f}  (waited for a core {waits[g]:5.2f})\n")
PY
    SAMPLER=$!
}
method_a() {
    psql_d -c "drop database if exists dst_a" -c "create database dst_a owner bench" 2>/dev/null
    echo "$DDL" | psql_d -d dst_a
    quiesce; sample_cpu "$WORK/a.cpu"; sleep 0.3; t0=$(now)
    psql_s -U bench -d bench -c "copy pgbench_accounts to stdout (format binary)" |
        psql_d -d dst_a -c "begin" -c "truncate pgbench_accounts" -c "copy pgbench_accounts from stdin (format binary, freeze)" -c "commit"
    t1=$(now); A=$(python3 -c "print(round($t1 - $t0, 2))")
    kill "$SAMPLER"; wait "$SAMPLER" || true
}
method_c() {
    psql_d -c "drop database if exists dst_c" -c "create database dst_c owner bench" 2>/dev/null
    sed -i "s/database: dc,/database: dst_c,/" "$WORK/target.yml"
    PGTELEPORT_LOG=info "$BIN" -config "$WORK/target.yml" 2>"$WORK/target.log" & TPID=$!
    sleep 1; quiesce; sample_cpu "$WORK/c.cpu"; sleep 0.3; t0=$(now)
    PGTELEPORT_LOG=warn "$BIN" -config "$WORK/source.yml" -mode initial-load -load-target copy -no-progress >/dev/null
    t1=$(now); C=$(python3 -c "print(round($t1 - $t0, 2))")
    kill "$SAMPLER"; wait "$SAMPLER" || true
    kill "$TPID"; wait "$TPID" 2>/dev/null || true
    COPY_MS=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/target.log" | grep -o "range copied.*ms=[0-9]*" | grep -o "[0-9]*$")
    KEY_MS=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/target.log" | grep "keys and indexes built" | grep -o "ms=[0-9]*" | grep -o "[0-9]*$")
}
: > "$WORK/times"
for r in $(seq 1 "$REPEAT"); do
    if [ $((r % 2)) = 1 ]; then method_a; method_c; else method_c; method_a; fi
    echo "round $r: (a') $A s; (c) $C s, of which the copy $(python3 -c "print($COPY_MS / 1000)") s and the key $(python3 -c "print($KEY_MS / 1000)") s"
    echo "  CPU seconds during (a'):"; cat "$WORK/a.cpu"
    echo "  CPU seconds during (c):"; cat "$WORK/c.cpu"
    echo "$A $C $COPY_MS $KEY_MS" >> "$WORK/times"
done
python3 - "$WORK/times" <<'PY'
import statistics, sys
runs = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = statistics.median
print(f"medians of {len(runs)} rounds: (a') {med(r[0] for r in runs):.2f} s; (c) {med(r[1] for r in runs):.2f} s, "
      f"its copy {med(r[2] for r in runs) / 1000:.2f} s, its key {med(r[3] for r in runs) / 1000:.2f} s")
print(f"(c)'s copy / (a'), per round: " + ", ".join(f"{r[2] / 1000 / r[0]:.2f}" for r in runs)
      + f"; median {med(r[2] / 1000 / r[0] for r in runs):.2f} (1.00: the stream costs nothing over the raw pipe)")
PY
