#!/usr/bin/env bash
# Random soak of schema changes under concurrent writers (tests/soak.rs), both DDL modes:
# SOAK_ROUNDS seeds (from SOAK_SEED, default: the clock), SOAK_STEPS schema changes each.
# A failure prints the seed, the mode, the databases (kept in the cluster under
# PGTELEPORT_TEST_CLUSTER, default /tmp/pgteleport-soak-cluster, for a look afterwards)
# and every step. Usage: bash bench/schema_soak.sh   (SOAK_MODES="diffing events",
# SOAK_LOAD=1: the target starts empty and an initial load runs at a random step,
# SOAK_TARGET_FIRST=N: one step in N that makes or retypes runs it on the target first, as
# a migration run on both sides; SOAK_TARGET_FIRST_RENAMES=1: renames too — see the README's
# limit of renames run there while the stream lags)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PGTELEPORT_TEST_CLUSTER="${PGTELEPORT_TEST_CLUSTER:-/tmp/pgteleport-soak-cluster}"
export SOAK_ROUNDS="${SOAK_ROUNDS:-5}" SOAK_STEPS="${SOAK_STEPS:-80}"
exec cargo nextest run --run-ignored only --no-fail-fast -E 'test(=schema_soak)' "$@"
