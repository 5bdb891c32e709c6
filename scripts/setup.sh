# Sourced by the other scripts: installs what a fresh Debian machine lacks.
need_apt=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    need_apt+=(postgresql)
fi
if ! command -v runuser >/dev/null 2>&1; then need_apt+=(util-linux); fi
# pg_query (the SQL parser used to re-target DDL) needs libclang to build.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1; then
    need_apt+=(libclang1-14 libclang-common-14-dev)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    else
        echo "missing packages: ${need_apt[*]} (install them, e.g. sudo apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust (https://rustup.rs)" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
PG_BINDIR="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$PG_BINDIR" ]; then PG_BINDIR="$(dirname "$(command -v initdb)")"; fi
export PG_BINDIR PGTELEPORT_PG_BINDIR="$PG_BINDIR"
as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
