#!/usr/bin/env bash
# Bucardo, a trigger-based peer (issue #7, scenario 5): the throughput and write-overhead
# scenarios of bench/stream.sh and bench/write_overhead.sh, with Bucardo (Debian's package,
# a one-way source → target sync, autokick, onetimecopy=0) in place of pgteleport, and native
# logical replication measured in the same run for the ratio. Does not build or run pgteleport.
#   throughput: the backlog of stream.sh (CHANGES row changes in transactions of 10, tables
#      acc/items/hist/heartbeat/mark, a marker row committed last) committed while the sync
#      is paused (Bucardo) or the subscription disabled (native); then the time until the
#      target holds the marker, and source and target compared. Bucardo copies the current
#      state of each changed row (delete + COPY of the distinct keys), not each change, so
#      its events/s is CHANGES / apply time, the same formula as stream.sh. The backlog's
#      commit time with Bucardo's triggers against native (no triggers) is a write cost too.
#   write overhead: pgbench tpcb-like (SCALE, CLIENTS, DURATION s) on the source, REPEAT
#      interleaved rounds: no capture (database pgb_none), then Bucardo's triggers with its
#      daemon syncing to the target (database pgb_bucardo); after each Bucardo round the
#      time until the target has caught up. Medians; the TPS ratio is the median of the
#      per-round ratios, as in write_overhead.sh. Both databases run synchronous_commit=off
#      like write_overhead.sh's clusters (the clusters have wal_level=logical for native).
# Installs bucardo and PL/Perl (apt-get, as root) when missing. The Bucardo daemon runs as
# the invoking user; its control database `bucardo` lives on the source cluster; its pid
# files, log and .pgpass stay in the work directory.
# Usage: bench/bucardo.sh   (CHANGES=500000; DURATION=20, CLIENTS=4, SCALE=10, REPEAT=3;
#   WORKLOADS="tpcb update" adds write_overhead.sh's one-row update script)
# Prints a table and writes bench/results/bucardo.json. Exits non-zero, saying which step
# failed, if Bucardo cannot be installed or run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
CHANGES="${CHANGES:-500000}"; TXNS=$((CHANGES / 10))
DURATION="${DURATION:-20}"; CLIENTS="${CLIENTS:-4}"; SCALE="${SCALE:-10}"; REPEAT="${REPEAT:-3}"
WORKLOADS="${WORKLOADS:-tpcb}"

# What Bucardo needs: the daemon, DBD::Pg, and PL/Perl (untrusted) for its control database.
PG_MAJOR="$(basename "$(dirname "$PG_BINDIR")")"
need=()
command -v bucardo >/dev/null 2>&1 || need+=(bucardo)
perl -MDBD::Pg -e 1 2>/dev/null || need+=(libdbd-pg-perl)
[ -f "$PG_BINDIR/../lib/plperl.so" ] || need+=("postgresql-plperl-$PG_MAJOR")
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bucardo.sh: missing packages ${need[*]} (install them as root: apt-get install ${need[*]})" >&2
        exit 1
    fi
    echo "installing ${need[*]} …"
    apt-get update -qq || { echo "bucardo.sh: apt-get update failed" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || { echo "bucardo.sh: apt-get install ${need[*]} failed: Bucardo cannot be installed here" >&2; exit 1; }
fi
BUCARDO_VERSION="$(bucardo --version 2>/dev/null | awk '{print $NF}')"

SKIP_BUILD=1
source bench/lib.sh
source bench/workload.sh
start_pair "-c wal_level=logical -c synchronous_commit=on"
BUCDIR="$WORK/bucardo"; mkdir -p "$BUCDIR"
# Every bucardo command: its own rc file (not /etc/bucardorc), HOME in the work directory
# (`bucardo install` appends the new role's password to ~/.pgpass), run from its pid
# directory (`bucardo stop` writes bucardo.restart.reason.txt/.log to the current directory).
cat > "$WORK/bucardorc" <<RC
dbhost = 127.0.0.1
dbport = $SP
dbname = bucardo
dbuser = bucardo
piddir = $BUCDIR
logdest = $BUCDIR
RC
buc() { (cd "$BUCDIR" && HOME="$WORK" PGBINDIR="$PG_BINDIR" bucardo --bucardorc "$WORK/bucardorc" "$@"); }
fail() { # message: which Bucardo step failed, and the end of its log
    echo "bucardo.sh: $*" >&2
    [ -f "$BUCDIR/log.bucardo" ] && { echo "--- last lines of the Bucardo log:" >&2; tail -20 "$BUCDIR/log.bucardo" >&2; }
    exit 1
}
mcp_pid() { head -1 "$BUCDIR/bucardo.mcp.pid" 2>/dev/null || true; }
stop_bucardo() { # the daemon's processes (MCP, controllers, kids, VAC), from its pid files
    local pids p
    pids=$(for f in "$BUCDIR"/*.pid; do [ -f "$f" ] && head -1 "$f"; done | grep -E '^[0-9]+$' || true)
    [ -n "$pids" ] || return 0
    buc stop >/dev/null 2>&1 || true
    cp "$BUCDIR/log.bucardo" "$WORK/bucardo.log" 2>/dev/null || true   # kept with KEEP_LOGS=DIR
    for _ in $(seq 1 50); do
        for p in $pids; do kill -0 "$p" 2>/dev/null && break; p=""; done
        [ -z "${p:-}" ] && return 0
        sleep 0.2
    done
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
}
trap 'stop_bucardo; cleanup' EXIT

for p in "$SP" "$DP"; do
    psql_at "$p" postgres -c "create role bench login password 'bench'"
    for m in nat buc; do
        psql_at "$p" postgres -c "create database $m owner bench"
        "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U bench -d "$m" -X -q -v ON_ERROR_STOP=1 -c "$TABLES"
    done
done
# pgbench databases: pgb_none (source only, no capture) and pgb_bucardo (synced).
for d in pgb_none pgb_bucardo; do
    for p in "$SP" "$DP"; do
        [ "$d" = pgb_none ] && [ "$p" = "$DP" ] && continue
        psql_at "$p" postgres -c "create database $d owner bench" -c "alter database $d set synchronous_commit = off"
        "$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$p" -U bench -i -s "$SCALE" -q "$d" >/dev/null 2>&1
        # History gets a key: Bucardo replicates by primary key (as write_overhead.sh does).
        psql_at "$p" "$d" -c "alter table pgbench_history add column id bigserial primary key"
    done
done

# Bucardo: control database on the source cluster, two syncs (buc, pgb_bucardo). It works as
# the superuser `bucardo` (made by `bucardo install` on the source; made here on the target),
# so that its server backends can be told apart for the CPU figures.
psql_at "$DP" postgres -c "create role bucardo superuser login"
echo "installing Bucardo $BUCARDO_VERSION (control database on the source cluster) …"
buc install --batch --dbhost 127.0.0.1 --dbport "$SP" --dbuser postgres --dbname postgres --piddir "$BUCDIR" \
    > "$WORK/bucardo-install.out" 2>&1 || { cat "$WORK/bucardo-install.out" >&2; fail "'bucardo install' failed (needs PL/PerlU and a superuser)"; }
buc add db src_buc dbname=buc host=127.0.0.1 port="$SP" user=bucardo >/dev/null || fail "'bucardo add db' (source, buc) failed"
buc add db dst_buc dbname=buc host=127.0.0.1 port="$DP" user=bucardo >/dev/null || fail "'bucardo add db' (target, buc) failed"
buc add db src_pgb dbname=pgb_bucardo host=127.0.0.1 port="$SP" user=bucardo >/dev/null || fail "'bucardo add db' (source, pgb_bucardo) failed"
buc add db dst_pgb dbname=pgb_bucardo host=127.0.0.1 port="$DP" user=bucardo >/dev/null || fail "'bucardo add db' (target, pgb_bucardo) failed"
buc add all tables db=src_buc relgroup=stream >/dev/null || fail "'bucardo add all tables' (buc) failed"
buc add all tables db=src_pgb relgroup=pgb >/dev/null || fail "'bucardo add all tables' (pgb_bucardo) failed"
buc add sync stream relgroup=stream dbs=src_buc:source,dst_buc:target onetimecopy=0 autokick=1 >/dev/null || fail "'bucardo add sync stream' failed"
buc add sync pgb relgroup=pgb dbs=src_pgb:source,dst_pgb:target onetimecopy=0 autokick=1 >/dev/null || fail "'bucardo add sync pgb' failed"
for d in buc pgb_bucardo; do
    [ "$(psql_at "$SP" "$d" -c "select count(*) from pg_trigger where tgname = 'bucardo_delta'")" -ge 4 ] \
        || fail "the sync did not install Bucardo's delta triggers in $d"
done
buc start > "$WORK/bucardo-start.out" 2>&1 || { cat "$WORK/bucardo-start.out" >&2; fail "'bucardo start' failed"; }
for _ in $(seq 1 50); do [ -n "$(mcp_pid)" ] && break; sleep 0.2; done
[ -n "$(mcp_pid)" ] || fail "the Bucardo daemon did not start (no MCP pid file in $BUCDIR)"

# Native: a publication of the same tables, a subscription that copies nothing.
psql_at "$SP" nat -c "create publication bench for table acc, items, hist, heartbeat, mark"
psql_at "$DP" nat -c "create subscription bench connection 'host=127.0.0.1 port=$SP dbname=nat user=postgres' publication bench with (copy_data = false)"

cpu_of() { # pid -> CPU seconds (user + system); Perl puts spaces in the command name, so
    # the fields are counted after its closing parenthesis
    awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); print ($12 + $13) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
sum_cpu() { # awk pattern on `ps args` [parent pids] -> CPU seconds of the processes now running that match
    ps -eo pid=,ppid=,args= | awk -v re="$1" -v pp=" ${2:-} " '$0 ~ re && !/awk/ && (pp == "  " || index(pp, " " $2 " ")) {print $1}' |
        while read -r p; do cpu_of "$p"; done | awk '{s += $1} END {print s + 0}'
}
# Server processes are counted on this run's two clusters only (others may run on the machine).
POSTMASTERS="$(head -1 "$WORK/src/postmaster.pid") $(head -1 "$WORK/dst/postmaster.pid")"
native_cpu() { sum_cpu 'walsender|logical replication (apply|worker)' "$POSTMASTERS"; }
daemon_cpu() { sum_cpu '^ *[0-9]+ +[0-9]+ Bucardo '; }   # the Perl processes: MCP, controllers, kids, VAC
backend_cpu() { sum_cpu 'postgres: bucardo ' "$POSTMASTERS"; }  # their server backends
wait_for() { # port db sql expected [timeout s]
    local deadline=$(( $(date +%s) + ${5:-1800} ))
    until [ "$(psql_at "$1" "$2" -c "$3")" = "$4" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $3 = $4 on $2"
        kill -0 "$(mcp_pid)" 2>/dev/null || fail "the Bucardo daemon died"
        sleep 0.1
    done
}
RES="$WORK/results"; : > "$RES"
record() { echo "$*" >> "$RES"; }

echo "preloading 100 000 rows through each method …"
for m in nat buc; do
    psql_at "$SP" "$m" -c "insert into acc select g, g % 10, 0, '' from generate_series(1, 100000) g"
    wait_for "$DP" "$m" "select count(*) from acc" 100000 300
done

# Throughput on a backlog: bench/workload.sh, as stream.sh runs it.
for m in nat buc; do
    echo "[$m] committing a backlog of $CHANGES row changes ($TXNS transactions) …"
    if [ "$m" = nat ]; then psql_at "$DP" nat -c "alter subscription bench disable"; else buc pause stream >/dev/null || fail "'bucardo pause stream' failed"; fi
    sleep 1
    g0=$(now); psql_at "$SP" "$m" -c "$BACKLOG"; g1=$(now)
    sleep 1
    [ "$(psql_at "$DP" "$m" -c "select count(*) from items")" = 0 ] || fail "[$m] the target received changes while replication was stopped"
    if [ "$m" = nat ]; then
        c0=$(native_cpu); t0=$(now)
        psql_at "$DP" nat -c "alter subscription bench enable"
    else
        d0=$(daemon_cpu); b0=$(backend_cpu); t0=$(now); since=$(psql_at "$SP" postgres -c "select now()")
        buc resume stream >/dev/null || fail "'bucardo resume stream' failed"
    fi
    wait_for "$DP" "$m" "select count(*) from mark" 1
    t1=$(now)
    if [ "$m" = nat ]; then
        cpu=$(python3 -c "print($(native_cpu) - $c0)"); rows="0 0"
    else
        cpu="$(python3 -c "print($(daemon_cpu) - $d0, $(backend_cpu) - $b0)")"
        rows=$(psql_at "$SP" bucardo -F ' ' -c "select coalesce(sum(inserts), 0), coalesce(sum(deletes), 0) from bucardo.syncrun where sync = 'stream' and started >= '$since'")
    fi
    equal=$([ "$(checksum "$SP" "$m")" = "$(checksum "$DP" "$m")" ] && echo true || echo false)
    record throughput "$m" "$(python3 -c "print($g1 - $g0)")" "$(python3 -c "print($t1 - $t0)")" "$equal" $rows $cpu
    echo "[$m] backlog committed in $(python3 -c "print(round($g1 - $g0, 1))") s; applied in $(python3 -c "print(round($t1 - $t0, 1))") s; equal: $equal"
done

# Write overhead: pgbench, interleaved rounds without and with Bucardo.
cat > "$WORK/update.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
update pgbench_accounts set abalance = abalance + 1 where aid = :aid;
SQL
PGB_STATE="select (select sum(abalance) from pgbench_accounts) || ':' || (select sum(bbalance) from pgbench_branches)
           || ':' || (select sum(tbalance) from pgbench_tellers) || ':' || (select count(*) from pgbench_history)"
run_pgbench() { # workload db logprefix -> prints tps
    local args=(-h 127.0.0.1 -p "$SP" -U bench -n -c "$CLIENTS" -j 2 -T "$DURATION" -l --log-prefix="$3")
    if [ "$1" = tpcb ]; then args+=(-b tpcb-like); else args+=(-f "$WORK/update.sql"); fi
    "$PG_BINDIR/pgbench" "${args[@]}" "$2" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
n=0
for r in $(seq 1 "$REPEAT"); do
    for workload in $WORKLOADS; do
        for mode in none bucardo; do
            n=$((n + 1))
            db=pgb_none; [ "$mode" = bucardo ] && db=pgb_bucardo
            rm -f "$WORK"/pglog-"$n".*
            d0=$(daemon_cpu)
            tps=$(run_pgbench "$workload" "$db" "$WORK/pglog-$n")
            [ -n "$tps" ] || fail "pgbench ($workload, $mode) failed"
            lat=$(cat "$WORK"/pglog-"$n".* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.3f %.3f", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}')
            drain=0; dcpu=0
            if [ "$mode" = bucardo ]; then
                # The target catches up before the next round, which must not share the CPU.
                e0=$(now)
                wait_for "$DP" pgb_bucardo "$PGB_STATE" "$(psql_at "$SP" pgb_bucardo -c "$PGB_STATE")" 600
                drain=$(python3 -c "print($(now) - $e0)"); dcpu=$(python3 -c "print($(daemon_cpu) - $d0)")
            fi
            echo "$workload $mode $tps $lat $drain $dcpu" >> "$WORK/pgbench.txt"
            echo "round $r $workload $mode: $tps tps, p50/p99 ${lat// / / } ms$([ "$mode" = bucardo ] && echo ", target caught up $(python3 -c "print(round($drain, 1))") s after")"
        done
    done
done
PGB_SUM="select (select md5(string_agg(aid || ':' || abalance, ',' order by aid)) from pgbench_accounts)
         || (select md5(string_agg(id || ':' || tid || ':' || bid || ':' || aid || ':' || delta || ':' || mtime, ',' order by id)) from pgbench_history)"
pgb_equal=$([ "$(psql_at "$SP" pgb_bucardo -c "$PGB_SUM")" = "$(psql_at "$DP" pgb_bucardo -c "$PGB_SUM")" ] && echo true || echo false)

python3 - "$RES" "$WORK/pgbench.txt" "$CHANGES" "$DURATION" "$CLIENTS" "$SCALE" "$REPEAT" "$BUCARDO_VERSION" "$pgb_equal" <<'PY'
import json, statistics, sys
res, pgb, changes, duration, clients, scale, repeat, version, pgb_equal = sys.argv[1:]
changes = int(changes)
out = {"bucardo_version": version, "changes": changes, "throughput": {}}
names = {"nat": "native logical replication", "buc": "Bucardo"}
for l in open(res):
    f = l.split()
    m = f[1]
    r = {"backlog_commit_s": float(f[2]), "apply_s": float(f[3]), "equal": f[4] == "true",
         "events_per_s": changes / float(f[3])}
    if m == "nat":
        r["walsender_and_apply_worker_cpu_s"] = float(f[7])
    else:
        r.update(target_rows_inserted=int(f[5]), target_rows_deleted=int(f[6]),
                 daemon_cpu_s=float(f[7]), bucardo_backends_cpu_s=float(f[8]))
    out["throughput"][m] = r
t = out["throughput"]
out["throughput_ratio"] = round(t["buc"]["events_per_s"] / t["nat"]["events_per_s"], 3)
out["backlog_commit_ratio"] = round(t["buc"]["backlog_commit_s"] / t["nat"]["backlog_commit_s"], 3)

rows = [l.split() for l in open(pgb) if l.strip()]
w_out = {"duration_s": int(duration), "clients": int(clients), "scale": int(scale), "repeat": int(repeat),
         "target_equal": pgb_equal == "true", "workloads": {}}
for w in dict.fromkeys(r[0] for r in rows):
    m = {}
    for mode in ("none", "bucardo"):
        sel = [r for r in rows if r[0] == w and r[1] == mode]
        m[mode] = {"tps": statistics.median(float(r[2]) for r in sel),
                   "p50_ms": statistics.median(float(r[3]) for r in sel),
                   "p99_ms": statistics.median(float(r[4]) for r in sel)}
        if mode == "bucardo":
            m[mode]["catch_up_s"] = statistics.median(float(r[5]) for r in sel)
            m[mode]["daemon_cpu_s"] = statistics.median(float(r[6]) for r in sel)
    nones = [float(r[2]) for r in rows if r[0] == w and r[1] == "none"]
    bucs = [float(r[2]) for r in rows if r[0] == w and r[1] == "bucardo"]
    m["tps_ratio"] = round(statistics.median(b / n for b, n in zip(bucs, nones)), 3)
    m["rounds"] = [{"mode": r[1], "tps": float(r[2]), "p50_ms": float(r[3]), "p99_ms": float(r[4]),
                    **({"catch_up_s": float(r[5]), "daemon_cpu_s": float(r[6])} if r[1] == "bucardo" else {})}
                   for r in rows if r[0] == w]
    w_out["workloads"][w] = m
out["write_overhead"] = w_out

print(f"\nBucardo {version}: throughput, backlog of {changes} row changes (10 per transaction):")
print(f"   {'method':28} {'commit s':>9} {'apply s':>8} {'events/s':>9}  equal")
for m in ("nat", "buc"):
    r = t[m]
    print(f"   {names[m]:28} {r['backlog_commit_s']:9.1f} {r['apply_s']:8.1f} {r['events_per_s']:9.0f}  {r['equal']}")
print(f"   ratio Bucardo / native apply: {out['throughput_ratio']:.2f} (higher is faster); "
      f"backlog commit with Bucardo's triggers / without: {out['backlog_commit_ratio']:.2f}")
b = t["buc"]
print(f"   Bucardo wrote {b['target_rows_inserted']} rows and deleted {b['target_rows_deleted']} on the target; "
      f"daemon {b['daemon_cpu_s']:.1f} CPU-s, its backends {b['bucardo_backends_cpu_s']:.1f} CPU-s; "
      f"native walsender + apply worker {t['nat']['walsender_and_apply_worker_cpu_s']:.1f} CPU-s")
print(f"\nwrite overhead, pgbench on the source (scale {scale}, {clients} clients, {duration} s, median of {repeat} rounds):")
print(f"   {'workload':9} {'mode':8} {'tps':>8} {'p50 ms':>7} {'p99 ms':>7} {'catch-up s':>10}")
for w, m in w_out["workloads"].items():
    for mode in ("none", "bucardo"):
        r = m[mode]
        cu = f"{r['catch_up_s']:10.1f}" if mode == "bucardo" else f"{'':10}"
        print(f"   {w:9} {mode:8} {r['tps']:8.0f} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {cu}")
    print(f"   {w:9} TPS ratio Bucardo / none: {m['tps_ratio']:.2f}")
print(f"   pgbench tables equal on source and target at the end: {w_out['target_equal']}")
json.dump(out, open("bench/results/bucardo.json", "w"), indent=2)
PY
