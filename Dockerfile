# syntax=docker/dockerfile:1
#
# pgteleport container image: one binary, run as a source or a target instance depending on
# the YAML file given with `-config FILE`. See docker/README.md.
#
#   docker build -t pgteleport:local .
#   docker run --rm pgteleport:local --help
#
# Needs BuildKit (the default builder of current Docker and of `docker compose`): the build
# stage uses cache mounts for cargo's registry and the target directory.

# The code uses `if let` guards in match arms (src/api.rs, src/server.rs), stable since Rust
# 1.95; Cargo.toml's `rust-version = "1.85"` is lower than what actually compiles it.
ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------------------------
# bookworm is fixed on purpose: the libclang package names below are bookworm's.
FROM rust:${RUST_VERSION}-bookworm AS build

# ddlwatcher depends on pg_query, whose build script compiles libpg_query (C, with the cc
# already in this image) and runs bindgen, which loads libclang at build time. These are the
# packages scripts/setup.sh installs: libclang itself and clang's builtin headers (stddef.h).
# No protoc: pg_query's build script then keeps its pre-generated protobuf bindings.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libclang1-14 \
        libclang-common-14-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Everything `cargo build --release --locked --bin pgteleport` reads:
# - the workspace manifest and lock file; members "." and "ddlwatcher" (fuzz/ is excluded);
# - benches/: Cargo.toml declares [[bench]] wire and apply, and cargo checks that their
#   files exist when it loads the manifest, even for a --bin build;
# - sql/*.sql and openapi.json: compiled in with include_str! (src/capture.rs,
#   src/applier.rs, src/api.rs).
# tests/ is not needed (cargo infers test targets only from files that exist).
COPY Cargo.toml Cargo.lock ./
COPY ddlwatcher/ ddlwatcher/
COPY benches/ benches/
COPY sql/ sql/
COPY openapi.json ./
COPY src/ src/

# The target directory is a cache mount (kept between builds, not part of the image), so the
# binary is copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked --bin pgteleport \
 && install -D -m 0755 target/release/pgteleport /out/pgteleport

# ---------------------------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------------------------
# Same Debian release as the build stage, so the binary's glibc matches. The binary links
# only libc, libm and libgcc_s (TLS is rustls; libpg_query and zstd are linked statically).
FROM debian:bookworm-slim AS runtime

# ca-certificates only. pgteleport itself trusts the Mozilla roots compiled into it
# (webpki-roots) or the PEM files named in its config (database.sslrootcert,
# targets.<name>.endpoint.ca_cert), not the system store.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 pgteleport \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pgteleport

COPY --from=build /out/pgteleport /usr/local/bin/pgteleport

LABEL org.opencontainers.image.title="pgteleport" \
      org.opencontainers.image.description="Trigger-based PostgreSQL to PostgreSQL replication without superuser or logical decoding" \
      org.opencontainers.image.licenses="Apache-2.0"

# Config files are expected under /etc/pgteleport (mounted read-only). A running instance
# writes no files (logs go to stderr); only `pgteleport demo` does, and it needs PostgreSQL
# server binaries this image does not have.
WORKDIR /etc/pgteleport

# Plain log lines (no ANSI colour codes) for `docker logs` and log collectors; set
# NO_COLOR= (empty) to get colours back, or `log_format: json` in the config for JSON lines.
ENV NO_COLOR=1

USER 10001:10001

# The HTTP ports of the example configs: 3000 the source (health, /readyz, /metrics, the
# REST API under /api/v1), 3001 the target (batches from sources). The port is whatever
# `server.port` says; EXPOSE only documents it. The server listens on `server.hostname`
# (default 127.0.0.1): set "0.0.0.0" to reach it from outside the container.
EXPOSE 3000 3001

# No HEALTHCHECK: the image has no HTTP client. Probe GET /healthz (liveness) or GET /readyz
# (the instance reaches its database) from outside, e.g. from an orchestrator.

# pgteleport handles SIGTERM and SIGINT itself (a clean stop) and starts no child processes
# when it runs an instance, so it can be PID 1 without an init.
ENTRYPOINT ["pgteleport"]
CMD ["--help"]
