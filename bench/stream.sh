#!/usr/bin/env bash
# Change-stream benchmark (issue #7, scenarios 2–4): pgteleport against native logical
# replication (PUBLICATION/SUBSCRIPTION), on the same two clusters (both wal_level=logical),
# the same tables and the same workload, one method after the other.
#   2. throughput: a backlog of CHANGES row changes (transactions of 10: 4 inserts, 3 updates
#      of a hot table, 1 update and 1 delete of the previous transaction's rows, 1 insert into
#      a history table) committed while replication is stopped; then the time until the target
#      has applied all of it (a marker row committed last arrives; both apply in commit order).
#   3. lag: pgbench at fixed rates (RATES, transactions of 2 changes, 4 clients) for DURATION
#      seconds; heartbeat rows carry the source's clock_timestamp(), 20 a second, and
#      a loop on the target records when each value becomes visible (2 ms polling; one
#      machine, one clock). p50/p99/max of visible − written.
#   4. memory and CPU: peak RSS (VmHWM) and CPU seconds of each pgteleport instance per
#      scenario; CPU of the walsender and apply worker for native replication.
# Usage: bench/stream.sh   (CHANGES=1000000, RATES="500 2000", DURATION=60; SOURCE_EXTRA="yaml lines"
#   adds keys to the source instance's config, e.g. SOURCE_EXTRA="max_events_per_batch: 50000";
#   REPEAT=N rounds of scenario 2, in alternating order (native first, then pgteleport first),
#   reporting the medians: single runs vary widely on a shared machine; PERF=FILE records
#   every CPU (perf record -a, call graphs) while pgteleport applies the backlog, to FILE.ROUND)
# Prints a table and writes bench/results/stream.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
CHANGES="${CHANGES:-1000000}"; RATES="${RATES-500 2000}"; DURATION="${DURATION:-60}"; REPEAT="${REPEAT:-1}"
TXNS=$((CHANGES / 10))
source bench/lib.sh
source bench/workload.sh
# synchronous_commit=on (the server default; the other benchmarks turn it off): with it off,
# the walsender sends only what the WAL writer has flushed, every 200 ms.
# STATS=1: pg_stat_statements on both clusters; the statements that took the most time in
# the throughput scenario are printed after it (where the time goes).
EXTRA=""; [ "${STATS:-0}" = 1 ] && EXTRA="-c shared_preload_libraries=pg_stat_statements,auto_explain -c pg_stat_statements.track=all -c auto_explain.log_min_duration=${SLOW_MS:-5} -c auto_explain.log_analyze=on"
# wal_retrieve_retry_interval=100ms: the launcher starts an apply worker at most once per
# interval (5 s by default), which a re-enabled subscription would otherwise wait out.
start_pair "-c wal_level=logical -c synchronous_commit=on -c wal_retrieve_retry_interval=100ms $EXTRA ${PG_EXTRA:-}"
"$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U postgres -X -q -c "create role bench login password 'bench'"
"$PG_BINDIR/psql" -h 127.0.0.1 -p "$DP" -U postgres -X -q -c "create role bench login password 'bench'"
# Replica mode for pgteleport's applier, as native apply workers run: target triggers and
# foreign keys stay quiet, and batches apply in runs that span transactions.
"$PG_BINDIR/psql" -h 127.0.0.1 -p "$DP" -U postgres -X -q -c "grant set on parameter session_replication_role to bench"
for m in nat tele; do
    for p in "$SP" "$DP"; do
        psql_at "$p" postgres -c "create database $m owner bench"
        "$PG_BINDIR/psql" -h 127.0.0.1 -p "$p" -U bench -d "$m" -X -q -v ON_ERROR_STOP=1 -c "$TABLES"
    done
done
psql_at "$DP" tele -c "create table lagobs (id bigint, ts timestamptz, seen timestamptz)"
psql_at "$DP" nat -c "create table lagobs (id bigint, ts timestamptz, seen timestamptz)"

# pgteleport: a target instance, and a source instance started and stopped per scenario.
cat > "$WORK/target.yml" <<YML
database: {name: stream-target, database: tele, hostname: 127.0.0.1, port: $DP, username: bench, password: bench}
server: {hostname: 127.0.0.1, port: $TP, allow_unauthenticated: true}
YML
cat > "$WORK/source.yml" <<YML
database: {name: stream-source, database: tele, hostname: 127.0.0.1, port: $SP, username: bench, password: bench}
${SOURCE_EXTRA:-}
targets:
  t:
    target_expression: "public.*"
    endpoint: {hostname: 127.0.0.1, port: $TP, timeout_seconds: 600}
YML
PGTELEPORT_LOG="${LOG:-warn}" "$BIN" -config "$WORK/target.yml" 2>>"$WORK/target.log" & TPID=$!; PIDS+=("$TPID")
SPID=""
start_source() {
    PGTELEPORT_LOG="${LOG:-warn}" "$BIN" -config "$WORK/source.yml" 2>>"$WORK/source.log" & SPID=$!; PIDS+=("$SPID")
}
stop_source() { kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true; }
start_source
for _ in $(seq 1 150); do
    [ "$(psql_at "$SP" tele -c "select count(*) from pg_trigger where tgname = 'pgteleport_capture'")" = 5 ] && break
    sleep 0.2
done
# Native: a publication of the same tables, a subscription that copies nothing.
psql_at "$SP" nat -c "create publication bench for table acc, items, hist, heartbeat, mark"
psql_at "$DP" nat -c "create subscription bench connection 'host=127.0.0.1 port=$SP dbname=nat user=postgres' publication bench with (copy_data = false)"

cpu_of() { # pid -> CPU seconds (user + system)
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
hwm_mb() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
native_cpu() { # CPU seconds of the walsender and apply worker processes now running
    ps -eo times=,args= | awk '/walsender|logical replication/ && !/awk/ {s += $1} END {print s + 0}'
}
# CPU seconds per process (/proc, clock-tick resolution) of the processes whose command line
# matches a regular expression, as "pid:seconds …"; cpu_delta sums what they used between
# two such readings (a process started in between counts whole).
proc_cpu() {
    python3 - "$1" <<'PY'
import os, re, sys
hz, pattern, out = os.sysconf("SC_CLK_TCK"), re.compile(sys.argv[1]), []
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        if pattern.search(cmd):
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            out.append(f"{p}:{(int(f[11]) + int(f[12])) / hz}")
    except OSError:
        pass
print(" ".join(out))
PY
}
cpu_delta() {
    python3 -c "import sys; b = dict(x.split(':') for x in sys.argv[1].split()); a = dict(x.split(':') for x in sys.argv[2].split())
print(round(sum(float(v) - float(b.get(k, 0)) for k, v in a.items()), 2))" "$1" "$2"
}
# Every process of a method's pipeline: native — the walsender and the apply worker;
# pgteleport — both instances and their PostgreSQL backends (role bench, database tele).
pipeline_pattern() { [ "$1" = nat ] && echo '^postgres: (walsender|logical replication)' || echo "^postgres: bench tele |^$BIN "; }
# Waits (at most 60 s) until the machine is nearly idle: what one method left running — the
# walsender decoding the other database's backlog, autovacuum, a queue being emptied — must
# not run during the other method's timed apply.
quiesce() { wait_idle; }
wait_for() { # port db sql expected [timeout s]
    local deadline=$(( $(date +%s) + ${5:-1800} ))
    until [ "$(psql_at "$1" "$2" -c "$3")" = "$4" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out waiting for $3 = $4 on $2" >&2; exit 1; }
        kill -0 "$TPID" || { echo "the target instance died" >&2; exit 1; }
        sleep 0.1
    done
}
stats() { # method: where the time went, with STATS=1
    local m=$1
    if [ "${STATS:-0}" = 1 ]; then
        for p in "$SP" "$DP"; do
            echo "[$m] top statements on $([ "$p" = "$SP" ] && echo source || echo target): calls, total ms, mean ms, query"
            psql_at "$p" "$m" -F ' | ' -c "select calls, round(total_exec_time + total_plan_time), round((mean_exec_time + mean_plan_time)::numeric, 3), left(regexp_replace(query, '\s+', ' ', 'g'), 150)
                                          from pg_stat_statements order by total_exec_time + total_plan_time desc limit ${STATS_TOP:-8}"
            psql_at "$p" "$m" -c "select pg_stat_statements_reset()" >/dev/null
        done
        echo "[$m] the first plans over ${SLOW_MS:-5} ms on the target (auto_explain):"
        grep -h -A30 "duration:" "$WORK/dst/log" "$WORK/src/log" | grep -A24 "${PLAN_GREP:-duration}" | head -60 || true
    fi
}
RES="$WORK/results"; : > "$RES"
record() { echo "$*" >> "$RES"; }

echo "preloading 100 000 rows through each method …"
for m in nat tele; do
    [ "${STATS:-0}" = 1 ] && for p in "$SP" "$DP"; do psql_at "$p" "$m" -c "create extension if not exists pg_stat_statements"; done
    psql_at "$SP" "$m" -c "insert into acc select g, g % 10, 0, '' from generate_series(1, 100000) g"
    wait_for "$DP" "$m" "select count(*) from acc" 100000
done

# Scenario 2: throughput on a backlog, REPEAT rounds in alternating order. A later round
# first empties items and mark (TRUNCATE, replicated by both) and waits for the target.
for round in $(seq 1 "$REPEAT"); do
order="nat tele"; [ $((round % 2)) = 0 ] && order="tele nat"
for m in $order; do
    if [ "$round" -gt 1 ]; then
        psql_at "$SP" "$m" -c "truncate items, mark"
        wait_for "$DP" "$m" "select (select count(*) from items) + (select count(*) from mark)" 0
    fi
    echo "[$m] round $round: committing a backlog of $CHANGES row changes ($TXNS transactions) …"
    if [ "$m" = nat ]; then psql_at "$DP" nat -c "alter subscription bench disable"; else stop_source; fi
    sleep 1
    g0=$(now); psql_at "$SP" "$m" -c "$BACKLOG"; g1=$(now)
    quiesce
    p0=$(proc_cpu "$(pipeline_pattern "$m")")
    if [ "$m" = nat ]; then
        c0=$(native_cpu); t0=$(now)
        psql_at "$DP" nat -c "alter subscription bench enable"
    else
        tc0=$(cpu_of "$TPID"); t0=$(now)
        [ -n "${PERF:-}" ] && { perf record -e cpu-clock -F 499 -a -g -o "$PERF.$round" >/dev/null 2>&1 & PERFPID=$!; }
        start_source
    fi
    wait_for "$DP" "$m" "select count(*) from mark" 1
    t1=$(now)
    pipeline=$(cpu_delta "$p0" "$(proc_cpu "$(pipeline_pattern "$m")")")
    [ -n "${PERF:-}" ] && [ "$m" = tele ] && { kill -INT "$PERFPID"; wait "$PERFPID" || true; ps -eo pid,args > "$PERF.$round.ps"; }
    if [ "$m" = nat ]; then
        cpu=$(python3 -c "print($(native_cpu) - $c0)"); mem="- -"
    else
        cpu="$(cpu_of "$SPID") $(python3 -c "print($(cpu_of "$TPID") - $tc0)")"; mem="$(hwm_mb "$SPID") $(hwm_mb "$TPID")"
    fi
    stats "$m"
    equal=$([ "$(checksum "$SP" "$m")" = "$(checksum "$DP" "$m")" ] && echo true || echo false)
    record throughput "$m" "$(python3 -c "print($g1 - $g0)")" "$(python3 -c "print($t1 - $t0)")" "$equal" "$pipeline" $cpu $mem
    echo "[$m] backlog committed in $(python3 -c "print(round($g1 - $g0, 1))") s; applied in $(python3 -c "print(round($t1 - $t0, 1))") s using $pipeline CPU-s; equal: $equal"
done
done

# Scenario 3: lag at fixed rates.
cat > "$WORK/load.sql" <<'SQL'
\set aid random(1, 100000)
update acc set balance = balance + 1 where id = :aid;
insert into hist (aid, delta, mtime) values (:aid, 1, now());
SQL
echo "insert into heartbeat (ts) values (clock_timestamp());" > "$WORK/hb.sql"
# Every heartbeat row, with the time it became visible on the target (rows that arrive in
# one batch are seen at the same moment: each keeps its own commit time).
OBSERVE="do \$\$ declare last bigint; t_end timestamptz := clock_timestamp() + interval '$((DURATION + 3)) seconds';
begin
  select coalesce(max(id), 0) into last from heartbeat;
  while clock_timestamp() < t_end loop
    insert into lagobs select h.id, h.ts, clock_timestamp() from heartbeat h where h.id > last;
    select coalesce(max(id), last) into last from lagobs;
    perform pg_sleep(0.002);
  end loop;
end \$\$"
for rate in $RATES; do
    for m in nat tele; do
        psql_at "$DP" "$m" -c "truncate lagobs"
        if [ "$m" = nat ]; then c0=$(native_cpu); else sc0=$(cpu_of "$SPID"); tc0=$(cpu_of "$TPID"); fi
        psql_at "$DP" "$m" -c "$OBSERVE" & OBS=$!
        sleep 1
        "$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$SP" -U bench -n -c 1 -R 20 -T "$DURATION" -f "$WORK/hb.sql" "$m" >/dev/null 2>&1 & HB=$!
        tps=$("$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$SP" -U bench -n -c 4 -j 2 -R "$rate" -T "$DURATION" -f "$WORK/load.sql" "$m" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
        wait "$HB"; wait "$OBS"
        lag=$(psql_at "$DP" "$m" -F ' ' -c "select percentile_cont(0.5) within group (order by ms), percentile_cont(0.99) within group (order by ms), max(ms), count(*)
                                             from (select extract(epoch from seen - ts) * 1000 as ms from lagobs ) x")
        if [ "$m" = nat ]; then
            cpu=$(python3 -c "print($(native_cpu) - $c0)"); mem="- - - -"
        else
            cpu="$(python3 -c "print($(cpu_of "$SPID") - $sc0)") $(python3 -c "print($(cpu_of "$TPID") - $tc0)")"
            mem="$(hwm_mb "$SPID") $(hwm_mb "$TPID") $(rss_mb "$SPID") $(rss_mb "$TPID")"
        fi
        stats "$m"
        record lag "$m" "$rate" "$tps" $lag $cpu $mem
        echo "[$m] $rate TPS asked, $tps done: lag p50/p99/max/samples $lag ms"
    done
done
for m in nat tele; do
    wait_for "$DP" "$m" "select count(*) from hist" "$(psql_at "$SP" "$m" -c "select count(*) from hist")" 120
    [ "$(checksum "$SP" "$m")" = "$(checksum "$DP" "$m")" ] || { echo "[$m] source and target differ after the lag runs" >&2; exit 1; }
done

python3 - "$RES" "$CHANGES" "$DURATION" <<'PY'
import json, statistics, sys
changes, duration = int(sys.argv[2]), int(sys.argv[3])
out = {"changes": changes, "lag_duration_s": duration, "throughput": {}, "lag": {}}
rounds = {"nat": [], "tele": []}
names = {"nat": "native logical replication", "tele": "pgteleport"}
for l in open(sys.argv[1]):
    f = l.split()
    if f[0] == "throughput":
        m = f[1]
        r = {"backlog_commit_s": float(f[2]), "apply_s": float(f[3]), "equal": f[4] == "true",
             "events_per_s": changes / float(f[3]), "pipeline_cpu_s": float(f[5])}
        if m == "nat":
            r["walsender_and_apply_worker_cpu_s"] = float(f[6])
        else:
            r.update(source_instance_cpu_s=float(f[6]), target_instance_cpu_s=float(f[7]),
                     source_instance_peak_rss_mb=float(f[8]), target_instance_peak_rss_mb=float(f[9]))
        rounds[m].append(r)
    else:
        m, rate = f[1], f[2]
        r = {"tps": float(f[3] or 0), "p50_ms": float(f[4]), "p99_ms": float(f[5]), "max_ms": float(f[6]),
             "samples": int(f[7])}
        if m == "nat":
            r["walsender_and_apply_worker_cpu_s"] = float(f[8])
        else:
            r.update(source_instance_cpu_s=float(f[8]), target_instance_cpu_s=float(f[9]),
                     source_instance_peak_rss_mb=float(f[10]), target_instance_peak_rss_mb=float(f[11]),
                     source_instance_rss_mb=float(f[12]), target_instance_rss_mb=float(f[13]))
        out["lag"].setdefault(rate, {})[m] = r
# Per method the round with the median apply time; the ratio is the median of the rounds'.
for m, rs in rounds.items():
    out["throughput"][m] = sorted(rs, key=lambda r: r["apply_s"])[(len(rs) - 1) // 2]
t = out["throughput"]
per_round = [b["events_per_s"] / a["events_per_s"] for a, b in zip(rounds["nat"], rounds["tele"])]
ratio = statistics.median(per_round)
out["throughput_ratio"] = round(ratio, 3)
out["throughput_rounds"] = [{"native_apply_s": a["apply_s"], "pgteleport_apply_s": b["apply_s"],
                             "ratio": round(b["events_per_s"] / a["events_per_s"], 3),
                             "native_pipeline_cpu_s": a["pipeline_cpu_s"], "pgteleport_pipeline_cpu_s": b["pipeline_cpu_s"]}
                            for a, b in zip(rounds["nat"], rounds["tele"])]
# CPU per change of every process involved: steadier than wall time on a shared machine.
cpu_ratio = statistics.median(b["pipeline_cpu_s"] / a["pipeline_cpu_s"] for a, b in zip(rounds["nat"], rounds["tele"]))
out["pipeline_cpu_ratio"] = round(cpu_ratio, 3)
print(f"\n2. throughput, backlog of {changes} row changes (10 per transaction), {len(per_round)} round(s), median round shown:")
print(f"   {'method':30} {'commit s':>9} {'apply s':>8} {'events/s':>9} {'CPU-s':>6}  equal")
for m in ("nat", "tele"):
    r = t[m]
    print(f"   {names[m]:30} {r['backlog_commit_s']:9.1f} {r['apply_s']:8.1f} {r['events_per_s']:9.0f} {r['pipeline_cpu_s']:6.1f}  {r['equal']}")
print(f"   ratio pgteleport / native apply: {ratio:.2f} (higher is faster)"
      + (f"; per round: {', '.join(f'{x:.2f}' for x in per_round)}" if len(per_round) > 1 else ""))
print(f"   CPU seconds of every process of the pipeline, pgteleport / native: {cpu_ratio:.2f} (median of the rounds; lower is leaner)")
print(f"\n3. lag under steady load ({duration} s per run; ms from commit on the source to visible on the target):")
print(f"   {'rate':>6} {'method':30} {'tps':>7} {'p50':>7} {'p99':>7} {'max':>7}")
for rate, ms in out["lag"].items():
    for m in ("nat", "tele"):
        r = ms[m]
        print(f"   {rate:>6} {names[m]:30} {r['tps']:7.0f} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['max_ms']:7.1f}")
print("\n4. pgteleport instances: CPU seconds and peak RSS (MB)")
tt = t["tele"]
print(f"   throughput: source {tt['source_instance_cpu_s']:.1f} CPU-s, {tt['source_instance_peak_rss_mb']:.0f} MB; "
      f"target {tt['target_instance_cpu_s']:.1f} CPU-s, {tt['target_instance_peak_rss_mb']:.0f} MB; "
      f"native walsender + apply worker {t['nat']['walsender_and_apply_worker_cpu_s']:.0f} CPU-s")
for rate, ms in out["lag"].items():
    r = ms["tele"]
    print(f"   lag {rate}/s: source {r['source_instance_cpu_s']:.1f} CPU-s, RSS {r['source_instance_rss_mb']:.0f} MB (peak {r['source_instance_peak_rss_mb']:.0f}); "
          f"target {r['target_instance_cpu_s']:.1f} CPU-s, RSS {r['target_instance_rss_mb']:.0f} MB (peak {r['target_instance_peak_rss_mb']:.0f}); "
          f"native {ms['nat']['walsender_and_apply_worker_cpu_s']:.0f} CPU-s")
json.dump(out, open("bench/results/stream.json", "w"), indent=2)
PY
