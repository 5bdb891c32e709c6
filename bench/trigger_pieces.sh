#!/usr/bin/env bash
# What each piece of the capture trigger costs, and two ways around them that were measured
# and not kept (issue #7; measurement only). One cluster with pgbench's tables and capture
# installed, no instance running. Per variant, one backend runs ROWS/10 transactions of one
# single-row UPDATE of pgbench_accounts (each trigger call its function's first in the
# transaction, as in tpcb-like) and the figure is that backend's CPU time per transaction,
# from /proc; "added" is the CPU over `none`. Variants (the trigger on pgbench_accounts runs
# the named function; all are SECURITY DEFINER, every name qualified):
#   none      the capture trigger disabled
#   current   pgteleport's capture_row
#   empty     a function that returns at once (the cost of a PL/pgSQL trigger call)
#   json      to_json(new) only, nothing queued
#   floor     one INSERT of to_json(new) into the event table (no key, no checks)
#   rot       floor + reading the queue's rotation (pg_sequence_last_value)
#   argpos    floor + finding the key columns among the arguments (array_position)
#   old       floor + the old image: to_json(old) and the unchanged-row check
#   spec      a function written for this table: the key column named in its body (new.aid,
#             old.aid), the unchanged-row and key-change checks as record image comparisons,
#             no old image. Not kept: a renamed or dropped key column makes every write to
#             the table fail until the trigger is made again, and without event triggers
#             (no superuser) that is up to an interval away.
#   plain     the current function's UPDATE path without what only some tables need (a
#             partition's arguments, columns in text form, the key found among other
#             arguments): 10 statements instead of 15 for a one-column key. Not kept: 10 %
#             of the trigger's cost is a few % of tpcb-like TPS, short of a new trigger
#             function for every table kind.
#   split     the current function for INSERT, DELETE and key changes, and a lean one for
#             UPDATEs that keep the key, chosen by the triggers' WHEN clauses (record image
#             comparisons). Not kept: PostgreSQL prepares a trigger's WHEN clause again in
#             every statement, which costs what the lean function saves.
# Usage: bash bench/trigger_pieces.sh   (ROWS=400000, REPEAT=3, VARIANTS="…")
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
ROWS="${ROWS:-400000}"; REPEAT="${REPEAT:-3}"
VARIANTS="${VARIANTS:-none current empty json floor rot argpos old plain spec split}"
pgbench_with_capture 10
INSERT="insert into teleport.event_0 values (pg_catalog.nextval('teleport.event_id_seq'::pg_catalog.regclass),
    pg_catalog.pg_current_xact_id(), pg_catalog.clock_timestamp(), 'U', tg_table_schema, tg_table_name, K, pg_catalog.to_json(new), tg_relid);"
ROTATION="coalesce(pg_catalog.pg_sequence_last_value('teleport.queue_rotation'::pg_catalog.regclass), 0) operator(pg_catalog.%) 3"
function_of() { # name, declarations, body
    psql_su -d bench <<SQL
create or replace function teleport.v_$1() returns trigger language plpgsql security definer as \$f\$
declare $2
begin
$3
return null;
end
\$f\$;
SQL
}
ins() { echo "${INSERT/K/$1}"; }
function_of empty "" ""
function_of json "" "perform pg_catalog.to_json(new);"
function_of floor "" "$(ins null)"
function_of rot "" "if $ROTATION operator(pg_catalog.=) 0 then $(ins null) end if;"
function_of argpos "" "if coalesce(pg_catalog.array_position(tg_argv, ''), tg_nargs) operator(pg_catalog.<) 5 then $(ins null) end if;"
function_of old "" "if pg_catalog.to_json(new)::pg_catalog.text operator(pg_catalog.<>) pg_catalog.to_json(old)::pg_catalog.text then $(ins null) end if;"
function_of spec "q bigint; k pg_catalog.json;" "
if tg_op operator(pg_catalog.=) 'UPDATE' then
    if pg_catalog.record_image_eq(new, old) then return null; end if;
    if pg_catalog.record_image_ne(row(new.aid), row(old.aid)) then k := pg_catalog.json_build_object('aid', old.aid); end if;
    if pg_catalog.octet_length(pg_catalog.to_json(new)::pg_catalog.text) operator(pg_catalog.>) 2048 then raise exception 'not measured'; end if;
end if;
q := $ROTATION;
if q operator(pg_catalog.=) 0 then $(ins k) end if;"
function_of plain "q bigint; k pg_catalog.json; d pg_catalog.json; o pg_catalog.json;" "
if tg_op operator(pg_catalog.=) 'UPDATE' then
    d := pg_catalog.to_json(new);
    o := pg_catalog.to_json(old);
    if d::pg_catalog.text operator(pg_catalog.=) o::pg_catalog.text then return null; end if;
    if pg_catalog.octet_length(d::pg_catalog.text) operator(pg_catalog.>) 2048 then raise exception 'not measured'; end if;
    if tg_nargs operator(pg_catalog.=) 1 then
        if ((o operator(pg_catalog.->) tg_argv[0])::pg_catalog.text
            operator(pg_catalog.<>) (d operator(pg_catalog.->) tg_argv[0])::pg_catalog.text) is not false then
            k := pg_catalog.json_build_object(tg_argv[0], o operator(pg_catalog.->) tg_argv[0]);
        end if;
    else
        raise exception 'not measured';
    end if;
elsif tg_op operator(pg_catalog.=) 'INSERT' then
    d := pg_catalog.to_json(new);
else
    raise exception 'not measured';
end if;
q := $ROTATION;
if q operator(pg_catalog.=) 0 then $(ins k) end if;"
# The lean function of `split`: an UPDATE that keeps the key.
function_of update "q bigint;" "
if pg_catalog.octet_length(pg_catalog.to_json(new)::pg_catalog.text) operator(pg_catalog.>) 2048 then raise exception 'not measured'; end if;
q := $ROTATION;
if q operator(pg_catalog.=) 0 then $(ins null) end if;"
psql_b -c "truncate teleport.event_0"
one_trigger() { # function
    psql_b -c "set client_min_messages = warning" \
        -c "drop trigger if exists pgteleport_capture_update on pgbench_accounts" \
        -c "drop trigger if exists pgteleport_capture_key on pgbench_accounts" \
        -c "create or replace trigger pgteleport_capture after insert or update or delete on pgbench_accounts
            for each row execute function teleport.$1('aid')" \
        -c "alter table pgbench_accounts enable trigger pgteleport_capture"
}
results="$WORK/pieces.txt"; : > "$results"
for r in $(seq 1 "$REPEAT"); do
    for v in $VARIANTS; do
        case $v in
            none) one_trigger capture_row; psql_b -c "alter table pgbench_accounts disable trigger pgteleport_capture" ;;
            current) one_trigger capture_row ;;
            split)
                one_trigger capture_row
                psql_b -c "create or replace trigger pgteleport_capture after insert or delete on pgbench_accounts
                           for each row execute function teleport.capture_row('aid')" \
                    -c "create trigger pgteleport_capture_update after update on pgbench_accounts for each row
                        when (pg_catalog.record_image_eq(row(old.aid), row(new.aid)) and pg_catalog.record_image_ne(old, new))
                        execute function teleport.v_update('aid')" \
                    -c "create trigger pgteleport_capture_key after update on pgbench_accounts for each row
                        when (pg_catalog.record_image_ne(row(old.aid), row(new.aid)))
                        execute function teleport.capture_row('aid')" ;;
            *) one_trigger "v_$v" ;;
        esac
        psql_b -c "truncate teleport.event_0, teleport.event_1, teleport.event_2"
        psql_b -c "vacuum pgbench_accounts" >/dev/null; psql_su -c checkpoint
        n=$((ROWS / 10))
        sql="set synchronous_commit = off;
do \$\$ begin for i in 1..$n loop update pgbench_accounts set abalance = abalance + 1 where aid = i; commit; end loop; end \$\$;"
        secs=$(backend_cpu_seconds "$sql") || { echo "variant $v failed (above)" >&2; exit 1; }
        events=$(psql_b -c "select count(*) from teleport.event")
        expected=$([ "$v" = none ] || [ "$v" = empty ] || [ "$v" = json ] && echo 0 || echo "$n")
        [ "$events" = "$expected" ] || { echo "variant $v queued $events events, not $expected" >&2; exit 1; }
        us=$(python3 -c "print(round($secs / $n * 1e6, 2))")
        echo "round $r $v: $us µs per transaction"
        echo "$r $v $us" >> "$results"
    done
done
python3 - "$results" <<'PY'
import statistics, sys
by = {}
for line in open(sys.argv[1]):
    r, v, us = line.split()
    by.setdefault(v, []).append(float(us))
med = statistics.median
base = med(by["none"]) if "none" in by else 0.0
for v, xs in by.items():
    print(f"{v:8} {med(xs):6.1f} µs per transaction, added {med(xs) - base:5.1f}   (rounds: {', '.join(map(str, xs))})")
PY
