#!/usr/bin/env bash
# What the queue's txid index costs the writers (measurement only: the batch cut and the
# batch reads need an index). One cluster, capture installed, no instance running; in
# ROUNDS rounds, with the btree index, with a BRIN index instead and with none: the CPU one
# backend spends per one-row UPDATE transaction (40 000 of them, from /proc), then pgbench
# tpcb-like TPS (4 clients, 10 s), the queue emptied before each.
# Usage: bash bench/queue_index.sh   (ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
pgbench_with_capture 10
btree() { psql_b -c "set client_min_messages = warning; drop index if exists teleport.event_0_txid, teleport.event_1_txid, teleport.event_2_txid; create index event_0_txid on teleport.event_0 (ev_txid); create index event_1_txid on teleport.event_1 (ev_txid); create index event_2_txid on teleport.event_2 (ev_txid);"; }
noidx() { psql_b -c "set client_min_messages = warning; drop index if exists teleport.event_0_txid, teleport.event_1_txid, teleport.event_2_txid;"; }
# BRIN has no operator class for xid8 in PostgreSQL 15: one on the txid as bigint (an
# expression, evaluated at each insert), ranges of 16 pages.
brin() {
  psql_b -c "set client_min_messages = warning; drop index if exists teleport.event_0_txid, teleport.event_1_txid, teleport.event_2_txid;
             $(for i in 0 1 2; do echo "create index event_${i}_txid on teleport.event_$i using brin (((ev_txid::text)::bigint)) with (pages_per_range = 16);"; done)"
}
empty() { psql_b -c "truncate teleport.event_0, teleport.event_1, teleport.event_2"; psql_su -d bench -c checkpoint; }
cpu_txns() {
  python3 - "$PG_BINDIR" "$SP" <<'PY'
import subprocess, sys, os
bindir, port = sys.argv[1], sys.argv[2]
p = subprocess.Popen([f"{bindir}/psql", "-h", "127.0.0.1", "-p", port, "-U", "bench", "-d", "bench", "-X", "-q", "-At"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
p.stdin.write("select pg_backend_pid();\n"); p.stdin.flush()
pid = p.stdout.readline().strip()
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
c0 = cpu()
p.stdin.write("do $$ begin for i in 1 .. 40000 loop update pgbench_accounts set abalance = abalance + 1 where aid = (i * 37) % 1000000 + 1; commit; end loop; end $$;\nselect 'done';\n"); p.stdin.flush()
while p.stdout.readline().strip() != "done": pass
print(round((cpu() - c0) / 40000 * 1e6, 1))
p.stdin.close(); p.wait()
PY
}
tps() { "$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$SP" -U bench -n -c 4 -j 2 -T 10 bench 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
for r in $(seq 1 "${ROUNDS:-3}"); do
  for v in btree brin noidx; do
    $v; empty
    us=$(cpu_txns)
    empty
    t=$(tps)
    echo "round $r index=$v cpu_us_per_update_txn=$us tpcb_tps=$t"
  done
done
