#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what is missing, starts nothing by hand
# (the tests create their own throwaway PostgreSQL cluster), cleans up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The REST API's contract test (tests/operations.rs) runs schemathesis, from PyPI.
if ! command -v schemathesis >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check "schemathesis==4.32.5" 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "schemathesis==4.32.5"
    hash -r
fi

export PGTELEPORT_TEST_CLUSTER="${TMPDIR:-/tmp}/pgteleport-test-cluster-$$"
cleanup() {
    if [ -f "$PGTELEPORT_TEST_CLUSTER/data/postmaster.pid" ]; then
        as_postgres "$PG_BINDIR/pg_ctl" -D "$PGTELEPORT_TEST_CLUSTER/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PGTELEPORT_TEST_CLUSTER" "$PGTELEPORT_TEST_CLUSTER.lock"
}
trap cleanup EXIT
status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?
if [ "$status" -ne 0 ]; then
    # A server crash or a full disk fails many tests at once with "not yet accepting
    # connections": say so here, as the cluster (and its log) is removed on exit.
    log="$PGTELEPORT_TEST_CLUSTER/server.log"
    echo "tests failed (exit $status); the shared test cluster's log, crashes and errors:" >&2
    if [ -f "$log" ]; then
        grep -E "PANIC|terminated by signal|No space left|out of memory|database system was interrupted" "$log" |
            tail -n 20 >&2 || echo "  (nothing of that kind)" >&2
    fi
    df -h "${TMPDIR:-/tmp}" >&2 || true
    exit "$status"
fi
