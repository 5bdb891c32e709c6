#!/usr/bin/env bash
# The demo: two throwaway PostgreSQL clusters, a live workload replicated between them.
# Arguments go to `pgteleport demo` (e.g. --duration 30 --rate 500). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --quiet
exec ./target/release/pgteleport demo "$@"
