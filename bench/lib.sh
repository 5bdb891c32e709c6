# Shared by the benchmarks: a work directory, the release binary, and throwaway clusters
# tuned for speed (fsync off; never for data you keep). Source after scripts/setup.sh.
WORK="${TMPDIR:-/tmp}/pgteleport-bench-$$"
mkdir -p "$WORK" bench/results
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
# SKIP_BUILD=1: benchmarks that do not run pgteleport (bench/bucardo.sh) need no build.
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet
# PGTELEPORT_BIN: another build to measure (a before/after comparison).
BIN="${PGTELEPORT_BIN:-$PWD/target/release/pgteleport}"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_cluster() { # dir port [extra postgres options]
    as_postgres "$PG_BINDIR/initdb" -D "$1" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
    as_postgres "$PG_BINDIR/pg_ctl" -D "$1" -l "$1/log" -w -o "-p $2 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK -c shared_buffers=512MB -c max_wal_size=8GB -c checkpoint_timeout=30min -c synchronous_commit=off -c fsync=off -c full_page_writes=off ${3:-}" start >/dev/null
}
stop_clusters() {
    for d in "$WORK/src" "$WORK/dst"; do
        [ -f "$d/postmaster.pid" ] && as_postgres "$PG_BINDIR/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    # KEEP_LOGS=DIR: the instances' and clusters' logs survive the run (with LOG=info: one
    # line per batch; with STATS=1, auto_explain's plans in source.pg.log and target.pg.log).
    if [ -n "${KEEP_LOGS:-}" ]; then
        mkdir -p "$KEEP_LOGS" && cp "$WORK"/*.log "$KEEP_LOGS"/ 2>/dev/null
        cp "$WORK/src/log" "$KEEP_LOGS/source.pg.log" 2>/dev/null; cp "$WORK/dst/log" "$KEEP_LOGS/target.pg.log" 2>/dev/null
    fi
    rm -rf "$WORK"
}
now() { date +%s.%N; }
# psql as postgres on the source ($SP) and the target ($DP) cluster; quiesce: both
# checkpointed and the page cache written back, so a timed step does not pay for the last one.
psql_s() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_d() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$DP" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
quiesce() { psql_s -c checkpoint; psql_d -c checkpoint; sync; }
# Waits (at most 60 s) until the machine is nearly idle (below 15 % busy over half a
# second): what ran before — a walsender decoding another backlog, autovacuum, a queue
# being emptied — must not run into a timed step.
wait_idle() {
    python3 - <<'PY'
import time
def busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)
end = time.time() + 60
while time.time() < end:
    b0, t0 = busy(); time.sleep(0.5); b1, t1 = busy()
    if (b1 - b0) / max(t1 - t0, 1) < 0.15:
        break
PY
}
# One cluster on $SP holding pgbench's tables (scale $1) in database bench of role bench,
# with pgteleport's capture installed on them for a target that is never reached (no
# instance runs): the setup of the benchmarks that measure the capture trigger alone.
# Defines psql_su (the superuser) and psql_b (role bench, database bench, unaligned).
pgbench_with_capture() {
    trap stop_clusters EXIT
    SP=$(port)
    start_cluster "$WORK/src" "$SP"
    psql_su() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
    psql_b() { "$PG_BINDIR/psql" -h 127.0.0.1 -p "$SP" -U bench -d bench -X -q -At -v ON_ERROR_STOP=1 "$@"; }
    psql_su -c "create role bench login password 'bench'" -c "create database bench owner bench"
    "$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$SP" -U bench -i -s "$1" -q bench >/dev/null 2>&1
    psql_b -c "alter table pgbench_history add column id bigserial primary key"
    cat > "$WORK/source.yml" <<YML
database: {name: variants, database: bench, hostname: 127.0.0.1, port: $SP, username: bench, password: bench}
targets:
  t:
    target_expression: "public.pgbench_*"
    endpoint: {hostname: 127.0.0.1, port: 9}
YML
    "$BIN" install --config "$WORK/source.yml" >/dev/null 2>&1
}
# The CPU seconds the backend of one psql_b session spends running the SQL "$1" (its
# /proc/PID/stat before and after): far steadier than TPS on a shared machine. When the SQL
# fails, psql's output goes to stderr and the function fails.
backend_cpu_seconds() {
    local out
    out=$(printf '%s\n' 'select pg_backend_pid() as pid \gset' '\setenv PID :pid' \
              '\! awk "{print \$14 + \$15}" /proc/$PID/stat' "$1" \
              '\! awk "{print \$14 + \$15}" /proc/$PID/stat' | psql_b 2>&1) || { echo "$out" >&2; return 1; }
    # shellcheck disable=SC2046
    python3 -c "import sys; a, b = map(int, sys.argv[1:3]); print((b - a) / $(getconf CLK_TCK))" \
        $(echo "$out" | grep -E '^[0-9]+$')
}
# Two clusters (source on $SP, target on $DP; $TP free for the target instance) and the
# processes in PIDS killed, the clusters removed, on exit.
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; stop_clusters; }
start_pair() { # [extra postgres options for both clusters]
    trap cleanup EXIT
    SP=$(port); DP=$(port); TP=$(port)
    start_cluster "$WORK/src" "$SP" "${1:-}"; start_cluster "$WORK/dst" "$DP" "${1:-}"
}
