//! Configuration: teleport's YAML format, plus what production needs.
//!
//! Every struct denies unknown keys, so a typo is an error naming the key. Secrets are
//! [`Secret`]s: `Debug` prints `***` and they are never serialised. Environment overrides
//! (applied after the file is read):
//!
//! | variable | key |
//! |---|---|
//! | `PGTELEPORT_DATABASE__PASSWORD` | `database.password` |
//! | `PGTELEPORT_SERVER__AUTH_TOKEN` | `server.auth_token` |
//! | `PGTELEPORT_TARGETS__<NAME>__AUTH_TOKEN` | `targets.<name>.auth_token` (name upper-cased, `-` and `.` as `_`) |
//! | `PGTELEPORT_AUTH_TOKEN` | any auth token not set otherwise |
//! | `PGTELEPORT_SENTRY_ENDPOINT` | `sentry_endpoint` |
//!
//! `verify` reads a second config, the target instance's: there `database.password` comes
//! from `PGTELEPORT_TARGET_DATABASE__PASSWORD` (`PGTELEPORT_DATABASE__PASSWORD` is the
//! source's).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ddlwatcher::TargetExpression;
use serde::Deserialize;

/// A value that must never reach a log.
#[derive(Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Errors while loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: `{key}` {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// One instance's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rows per set-based apply statement (teleport's key; runs longer than this are chunked).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Upper bound of events per batch; one transaction is never split, so a larger
    /// transaction makes one larger batch.
    #[serde(default = "default_max_events")]
    pub max_events_per_batch: usize,
    /// Capture DDL with event triggers (needs a role that may create them).
    #[serde(default)]
    pub use_event_triggers: bool,
    #[serde(default)]
    pub processing_intervals: Intervals,
    pub database: Database,
    #[serde(default)]
    pub server: Option<Server>,
    #[serde(default)]
    pub targets: BTreeMap<String, Target>,
    /// A source even without `targets`: its mirrors are created through the REST API
    /// (`POST /api/v1/flows/cdc/create`, served by `server`).
    #[serde(default)]
    pub api_mirrors: bool,
    #[serde(default)]
    pub sentry_endpoint: Option<Secret>,
    /// Schema for pgteleport's own objects in this instance's database.
    #[serde(default = "default_internal_schema")]
    pub internal_schema: String,
    /// `text` (default) or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Replicate tables without any key by full-row identity (each UPDATE and DELETE on the
    /// target scans the table for one equal row: fine for small tables, slow for big ones).
    #[serde(default)]
    pub keyless_tables: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Loop intervals in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intervals {
    #[serde(default = "default_100")]
    pub batcher: u64,
    #[serde(default = "default_100")]
    pub transmitter: u64,
    #[serde(default = "default_100")]
    pub applier: u64,
    #[serde(default = "default_500")]
    pub vacuum: u64,
    #[serde(default = "default_5000")]
    pub ddlwatcher: u64,
    /// How often the queue moves on to its next event table (then the old one is emptied
    /// with TRUNCATE once acknowledged).
    #[serde(default = "default_rotation")]
    pub rotation: u64,
    /// How often alert conditions are evaluated (alert configs of the REST API).
    #[serde(default = "default_alerts")]
    pub alerts: u64,
    /// How long one step of a stage may run before the instance says what it waits for
    /// (a lock another session holds, most often), and again each time as long after.
    #[serde(default = "default_stall_report")]
    pub stall_report: u64,
}

fn default_stall_report() -> u64 {
    30_000
}

fn default_alerts() -> u64 {
    1000
}

impl Default for Intervals {
    fn default() -> Self {
        Self {
            batcher: 100,
            transmitter: 100,
            applier: 100,
            vacuum: 500,
            ddlwatcher: 5000,
            rotation: default_rotation(),
            alerts: default_alerts(),
            stall_report: default_stall_report(),
        }
    }
}

impl Intervals {
    pub fn batcher(&self) -> Duration {
        Duration::from_millis(self.batcher)
    }
    pub fn transmitter(&self) -> Duration {
        Duration::from_millis(self.transmitter)
    }
    pub fn vacuum(&self) -> Duration {
        Duration::from_millis(self.vacuum)
    }
    pub fn rotation(&self) -> Duration {
        Duration::from_millis(self.rotation)
    }
    pub fn stall_report(&self) -> Duration {
        Duration::from_millis(self.stall_report)
    }
}

/// Connection to this instance's database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// This instance's name: identifies the source to its targets.
    pub name: String,
    pub database: String,
    #[serde(default = "default_host")]
    pub hostname: String,
    pub username: String,
    #[serde(default)]
    pub password: Secret,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// `disable` (default), `prefer`, `require`, `verify-ca` or `verify-full`.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// Root certificate(s) (PEM) to verify the server with; default: the Mozilla roots built into the binary (webpki-roots).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Other libpq-style connection options: `connect_timeout` (seconds),
    /// `application_name`, `options`, `keepalives`, `keepalives_idle` (seconds),
    /// `target_session_attrs`, `sslmode`, `sslrootcert`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// The HTTP server of this instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listen")]
    pub hostname: String,
    #[serde(default = "default_server_port")]
    pub port: u16,
    /// Bearer token a source must present to send batches here.
    #[serde(default)]
    pub auth_token: Option<Secret>,
    /// Accept batches without a token (only on a trusted network).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Tokens that each admit one source only (`database.name` of that source): a request
    /// with one of them for another source is refused with 403.
    #[serde(default)]
    pub source_tokens: std::collections::BTreeMap<String, Secret>,
    /// Largest request body read whole (the initial load's control messages), in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest batch segment after decompression, in bytes.
    #[serde(default = "default_max_batch")]
    pub max_batch_bytes: usize,
    /// A batch body that sends nothing for this many seconds is abandoned and its
    /// transaction rolled back (a stalled source must not hold a transaction open here).
    #[serde(default = "default_read_timeout")]
    pub read_timeout_seconds: u64,
    /// Serve HTTPS with this certificate chain (PEM); needs `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Password of the REST API (`/api/v1`, on a source instance): HTTP Basic with any
    /// user name, or `Authorization: Bearer <password>`; default: `auth_token`. Without
    /// either, the API is served on loopback only: on any other address it answers 403.
    /// Also PGTELEPORT_API_PASSWORD.
    #[serde(default)]
    pub api_password: Option<Secret>,
}

impl Server {
    /// Whether `hostname` reaches this machine only (`localhost`, 127.0.0.0/8, ::1).
    pub fn is_loopback(&self) -> bool {
        self.hostname == "localhost"
            || self
                .hostname
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// A destination of this source instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub target_expression: String,
    pub endpoint: Endpoint,
    /// Schema on the target that every replicated table is written to; default: the same
    /// schema as on the source.
    #[serde(default)]
    pub apply_schema: Option<String>,
    #[serde(default)]
    pub auth_token: Option<Secret>,
    /// Copy the rows the tables already hold before streaming changes: the instance runs
    /// the initial load itself (mirror state SNAPSHOT; pausable, resumed where it stopped
    /// after a pause or a restart), then the mirror goes RUNNING.
    #[serde(default)]
    pub do_initial_snapshot: bool,
    /// Parallel COPY streams of that snapshot (default: the number of CPUs, at least 2).
    #[serde(default)]
    pub snapshot_workers: Option<usize>,
    /// Heap kilobytes per ctid range of a large table in that snapshot (default 65536).
    #[serde(default)]
    pub snapshot_range_kb: Option<u64>,
    /// Replace the rows of target tables that hold some (otherwise the snapshot refuses
    /// them and the mirror goes FAILED naming them).
    #[serde(default)]
    pub snapshot_truncate: bool,
    /// A delete on the source sets this boolean column of the target row (added to the
    /// target table when missing, `not null default false`) instead of removing the row;
    /// an insert of that key again clears it.
    #[serde(default)]
    pub soft_delete_col_name: Option<String>,
    /// A `timestamptz` column (added when missing) set to the apply's time on every row an
    /// insert, update or soft delete writes.
    #[serde(default)]
    pub synced_at_col_name: Option<String>,
    /// Columns that never leave the source, per table (`"schema.table": [column, …]`):
    /// stripped from every row image, left out of the tables the snapshot creates and of
    /// its copies. Key columns cannot be excluded.
    #[serde(default)]
    pub exclude_columns: BTreeMap<String, Vec<String>>,
    /// Events per batch of this target (default: `max_events_per_batch`); one transaction
    /// is never split.
    #[serde(default)]
    pub max_batch_size: Option<usize>,
    /// Tables written under another name on the target (`"schema.table": "schema.other"`):
    /// their rows, the tables the snapshot creates and their schema changes use the
    /// destination name. Not together with `apply_schema`.
    #[serde(default)]
    pub rename_tables: BTreeMap<String, String>,
}

/// `schema.table` split at its dot (names with dots are not supported here).
pub fn split_table(id: &str) -> Option<(String, String)> {
    id.split_once('.')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('.'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
}

/// Checks a target's renamed tables (`"schema.table": "schema.table"`); the error names the
/// source table it is about.
pub fn check_renames(
    renames: &BTreeMap<String, String>,
    apply_schema: bool,
) -> Result<(), (String, String)> {
    let mut destinations = std::collections::BTreeSet::new();
    for (from, to) in renames {
        let fail = |m: String| Err((from.clone(), m));
        for id in [from, to] {
            let Some((a, b)) = split_table(id) else {
                return fail(format!("`{id}` is not `schema.table`"));
            };
            if let Err(m) = check_ident(&a).and_then(|_| check_ident(&b)) {
                return fail(format!("`{id}`: {m}"));
            }
        }
        if apply_schema {
            return fail("a renamed table cannot be combined with apply_schema: name each destination schema in rename_tables instead".into());
        }
        if from != to && renames.contains_key(to) {
            return fail(format!(
                "the destination `{to}` is itself renamed: a chain or swap of names is not supported"
            ));
        }
        if !destinations.insert(to) {
            return fail(format!("`{to}` is the destination of two tables"));
        }
    }
    Ok(())
}

/// Renamed tables: source (schema, table) → destination (schema, table).
pub type Renames = BTreeMap<(String, String), (String, String)>;

/// `rename_tables` (`"schema.table": "schema.table"`, checked by [`check_renames`]) split
/// into names; a table "renamed" to its own name is left out.
pub fn parse_renames(renames: &BTreeMap<String, String>) -> Renames {
    renames
        .iter()
        .filter_map(|(k, v)| Some((split_table(k)?, split_table(v)?)))
        .filter(|(k, v)| k != v)
        .collect()
}

/// A renamed table whose destination is the name another of `tables` keeps on the target
/// (it is not renamed itself): (source, destination).
pub fn rename_onto_kept<'a>(
    renames: &Renames,
    tables: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<((String, String), (String, String))> {
    tables.into_iter().find_map(|(schema, table)| {
        let id = (schema.to_string(), table.to_string());
        if renames.contains_key(&id) {
            return None;
        }
        renames
            .iter()
            .find(|(_, to)| **to == id)
            .map(|(from, to)| (from.clone(), to.clone()))
    })
}

impl Target {
    /// The renamed tables: source (schema, table) → destination (schema, table).
    pub fn renames(&self) -> Renames {
        parse_renames(&self.rename_tables)
    }

    /// How the source's names become the target's: `apply_schema` and renamed tables.
    pub fn schema_map(&self, tables: &[ddlwatcher::Table]) -> ddlwatcher::SchemaMap {
        ddlwatcher::SchemaMap::new(self.apply_schema.clone(), tables).with_renames(self.renames())
    }

    /// The initial load options of this target's snapshot.
    pub fn snapshot_options(&self, name: &str) -> crate::load::LoadOptions {
        crate::load::LoadOptions {
            target: name.to_string(),
            truncate: self.snapshot_truncate,
            copy_again: None,
            workers: self
                .snapshot_workers
                .unwrap_or_else(crate::load::default_workers),
            range_bytes: self.snapshot_range_kb.unwrap_or(65536).max(8) << 10,
            split: Default::default(),
            progress: Some(false),
            lock_wait: crate::load::DEFAULT_LOCK_WAIT,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub hostname: String,
    pub port: u16,
    /// Seconds to wait for one batch request (including its apply on the target).
    #[serde(default = "default_request_timeout")]
    pub timeout_seconds: u64,
    /// Speak HTTPS to the target (its `server.tls_cert`), verifying its certificate and name.
    #[serde(default)]
    pub tls: bool,
    /// Root certificate(s) (PEM) to verify the target with; default: the Mozilla roots.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
}

fn default_batch_size() -> usize {
    10_000
}
fn default_max_events() -> usize {
    10_000
}
fn default_100() -> u64 {
    100
}
fn default_500() -> u64 {
    500
}
fn default_5000() -> u64 {
    5000
}
fn default_rotation() -> u64 {
    60_000
}
fn default_host() -> String {
    "localhost".into()
}
fn default_pg_port() -> u16 {
    5432
}
fn default_listen() -> String {
    "127.0.0.1".into()
}
fn default_server_port() -> u16 {
    3000
}
fn default_max_body() -> usize {
    256 << 20
}
fn default_max_batch() -> usize {
    1 << 30
}
fn default_read_timeout() -> u64 {
    60
}
fn default_request_timeout() -> u64 {
    600
}
fn default_internal_schema() -> String {
    "teleport".into()
}

/// What the config makes of this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub source: bool,
    pub target: bool,
}

impl Config {
    /// Reads, applies environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, |k| std::env::var(k).ok())
    }

    /// Reads the target instance's config for `verify`, which runs with the source's
    /// environment: the target's database password comes from
    /// `PGTELEPORT_TARGET_DATABASE__PASSWORD`, never from the source's variable.
    pub fn load_verify_target(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, verify_target_env(|k| std::env::var(k).ok()))
    }

    /// Reads the file and parses it with `env` looking up the override variables.
    fn load_with(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path, env)
    }

    /// Parses YAML text; `env` looks up override variables (injected for tests).
    pub fn from_yaml(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config: Config = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.apply_env(env);
        config.validate(path)?;
        Ok(config)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(v) = env("PGTELEPORT_DATABASE__PASSWORD") {
            self.database.password = Secret(v);
        }
        if let Some(v) = env("PGTELEPORT_SENTRY_ENDPOINT") {
            self.sentry_endpoint = Some(Secret(v));
        }
        let shared = env("PGTELEPORT_AUTH_TOKEN").map(Secret);
        if let Some(server) = self.server.as_mut() {
            if let Some(v) = env("PGTELEPORT_SERVER__AUTH_TOKEN") {
                server.auth_token = Some(Secret(v));
            }
            if let Some(v) =
                env("PGTELEPORT_SERVER__API_PASSWORD").or_else(|| env("PGTELEPORT_API_PASSWORD"))
            {
                server.api_password = Some(Secret(v));
            }
            if server.auth_token.is_none() {
                server.auth_token = shared.clone();
            }
            for (name, token) in server.source_tokens.iter_mut() {
                let var = format!("PGTELEPORT_SERVER__SOURCE_TOKENS__{}", env_name(name));
                if let Some(v) = env(&var) {
                    *token = Secret(v);
                }
            }
        }
        for (name, target) in self.targets.iter_mut() {
            let var = format!("PGTELEPORT_TARGETS__{}__AUTH_TOKEN", env_name(name));
            if let Some(v) = env(&var) {
                target.auth_token = Some(Secret(v));
            }
            if target.auth_token.is_none() {
                target.auth_token = shared.clone();
            }
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        check_name(&self.database.name).map_err(|m| invalid("database.name", m))?;
        if self.database.database.is_empty() {
            return Err(invalid("database.database", "must not be empty".into()));
        }
        if self.database.username.is_empty() {
            return Err(invalid("database.username", "must not be empty".into()));
        }
        if self.database.port == 0 {
            return Err(invalid(
                "database.port",
                "must be between 1 and 65535".into(),
            ));
        }
        if let Err((key, message)) = connection_options(&self.database) {
            return Err(invalid(&format!("database.{key}"), message));
        }
        if self.batch_size == 0 {
            return Err(invalid("batch_size", "must be at least 1".into()));
        }
        if self.max_events_per_batch == 0 {
            return Err(invalid("max_events_per_batch", "must be at least 1".into()));
        }
        let iv = &self.processing_intervals;
        for (key, v) in [
            ("batcher", iv.batcher),
            ("transmitter", iv.transmitter),
            ("applier", iv.applier),
            ("vacuum", iv.vacuum),
            ("ddlwatcher", iv.ddlwatcher),
            ("rotation", iv.rotation),
            ("alerts", iv.alerts),
            ("stall_report", iv.stall_report),
        ] {
            if v == 0 || v > 86_400_000 {
                return Err(invalid(
                    &format!("processing_intervals.{key}"),
                    format!("is {v}; give milliseconds between 1 and 86400000"),
                ));
            }
        }
        check_ident(&self.internal_schema).map_err(|m| invalid("internal_schema", m))?;
        for (name, t) in &self.targets {
            let key = |k: &str| format!("targets.{name}.{k}");
            check_name(name).map_err(|m| invalid(&format!("targets.{name}"), m))?;
            TargetExpression::parse(&t.target_expression)
                .map_err(|e| invalid(&key("target_expression"), e.to_string()))?;
            if t.endpoint.hostname.is_empty() {
                return Err(invalid(
                    &key("endpoint.hostname"),
                    "must not be empty".into(),
                ));
            }
            if t.endpoint.port == 0 {
                return Err(invalid(
                    &key("endpoint.port"),
                    "must be between 1 and 65535".into(),
                ));
            }
            if let Some(s) = &t.apply_schema {
                check_ident(s).map_err(|m| invalid(&key("apply_schema"), m))?;
            }
            if t.auth_token.as_ref().is_some_and(Secret::is_empty) {
                return Err(invalid(&key("auth_token"), "must not be empty".into()));
            }
            for (k, v) in [
                ("soft_delete_col_name", &t.soft_delete_col_name),
                ("synced_at_col_name", &t.synced_at_col_name),
            ] {
                if let Some(c) = v {
                    check_ident(c).map_err(|m| invalid(&key(k), m))?;
                }
            }
            if t.soft_delete_col_name.is_some() && t.soft_delete_col_name == t.synced_at_col_name {
                return Err(invalid(
                    &key("synced_at_col_name"),
                    "must differ from soft_delete_col_name".into(),
                ));
            }
            for (table, cols) in &t.exclude_columns {
                if table
                    .split_once('.')
                    .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
                {
                    return Err(invalid(
                        &key("exclude_columns"),
                        format!("key `{table}` is not `schema.table`"),
                    ));
                }
                for c in cols {
                    check_ident(c)
                        .map_err(|m| invalid(&key(&format!("exclude_columns.{table}")), m))?;
                }
            }
            check_renames(&t.rename_tables, t.apply_schema.is_some())
                .map_err(|(from, m)| invalid(&key(&format!("rename_tables.{from}")), m))?;
            if t.max_batch_size == Some(0) {
                return Err(invalid(&key("max_batch_size"), "must be at least 1".into()));
            }
            if t.snapshot_workers == Some(0) {
                return Err(invalid(
                    &key("snapshot_workers"),
                    "must be at least 1".into(),
                ));
            }
            if t.endpoint.ca_cert.is_some() && !t.endpoint.tls {
                return Err(invalid(
                    &key("endpoint.ca_cert"),
                    "is set but endpoint.tls is not: set endpoint.tls: true to speak HTTPS to the target".into(),
                ));
            }
        }
        if let Some(server) = &self.server {
            if server.auth_token.as_ref().is_some_and(Secret::is_empty) {
                return Err(invalid("server.auth_token", "must not be empty".into()));
            }
            if server.api_password.as_ref().is_some_and(Secret::is_empty) {
                return Err(invalid("server.api_password", "must not be empty".into()));
            }
            if let Some((name, _)) = server.source_tokens.iter().find(|(_, t)| t.is_empty()) {
                return Err(invalid(
                    &format!("server.source_tokens.{name}"),
                    format!(
                        "must not be empty (set it, or PGTELEPORT_SERVER__SOURCE_TOKENS__{})",
                        env_name(name)
                    ),
                ));
            }
            if self.targets.is_empty()
                && !self.api_mirrors
                && server.auth_token.is_none()
                && server.source_tokens.is_empty()
                && !server.allow_unauthenticated
            {
                return Err(invalid(
                    "server.auth_token",
                    "is missing: a target instance refuses unauthenticated batches. Set it (or \
                     PGTELEPORT_SERVER__AUTH_TOKEN / PGTELEPORT_AUTH_TOKEN), or set \
                     server.allow_unauthenticated: true on a trusted network"
                        .into(),
                ));
            }
            if server.max_body_bytes == 0 || server.max_batch_bytes == 0 {
                return Err(invalid(
                    "server.max_body_bytes",
                    "must be at least 1".into(),
                ));
            }
            if server.tls_cert.is_some() != server.tls_key.is_some() {
                return Err(invalid(
                    if server.tls_cert.is_some() {
                        "server.tls_key"
                    } else {
                        "server.tls_cert"
                    },
                    "is missing: HTTPS needs both server.tls_cert and server.tls_key (PEM files)"
                        .into(),
                ));
            }
            if server.read_timeout_seconds == 0 {
                return Err(invalid(
                    "server.read_timeout_seconds",
                    "must be at least 1".into(),
                ));
            }
        } else if self.api_mirrors {
            return Err(invalid(
                "api_mirrors",
                "needs a `server` section: mirrors are created through its REST API".into(),
            ));
        } else if self.targets.is_empty() {
            return Err(invalid(
                "targets",
                "and `server` are both missing: a source needs `targets`, a target needs `server`"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether this instance captures (has targets) and/or applies (accepts batches).
    pub fn roles(&self) -> Roles {
        let target = self
            .server
            .as_ref()
            .is_some_and(|s| s.auth_token.is_some() || s.allow_unauthenticated);
        Roles {
            source: !self.targets.is_empty() || self.api_mirrors,
            target,
        }
    }
}

/// Checks a connection's `sslmode` and option names: `Err((key, message))`.
fn connection_options(db: &Database) -> Result<(), (String, String)> {
    let sslmode = db
        .sslmode
        .as_deref()
        .or(db.options.get("sslmode").map(String::as_str));
    if let Some(mode) = sslmode {
        if !["disable", "prefer", "require", "verify-ca", "verify-full"].contains(&mode) {
            return Err((
                "sslmode".into(),
                format!("is `{mode}`; use disable, prefer, require, verify-ca or verify-full"),
            ));
        }
    }
    for key in db.options.keys() {
        if !KNOWN_OPTIONS.contains(&key.as_str()) {
            return Err((
                format!("options.{key}"),
                format!(
                    "is not a known connection option; known: {}",
                    KNOWN_OPTIONS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// [`connection_options`] as one message, for connections made through the API.
pub fn check_connection_options(db: &Database) -> Result<(), String> {
    connection_options(db).map_err(|(key, message)| format!("{key} {message}"))
}

const KNOWN_OPTIONS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "application_name",
    "options",
    "keepalives",
    "keepalives_idle",
    "target_session_attrs",
];

/// The overrides of `verify`'s target config: `env`, except that the database password is
/// `PGTELEPORT_TARGET_DATABASE__PASSWORD`.
fn verify_target_env(env: impl Fn(&str) -> Option<String>) -> impl Fn(&str) -> Option<String> {
    move |k| match k {
        "PGTELEPORT_DATABASE__PASSWORD" => env("PGTELEPORT_TARGET_DATABASE__PASSWORD"),
        other => env(other),
    }
}

fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Instance and target names travel in URLs and logs: keep them plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "is `{name}`; use 1 to 63 letters, digits, `_`, `-` or `.`, starting with a letter or digit"
        ))
    }
}

fn check_ident(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        Err(format!(
            "is `{name}`; a PostgreSQL identifier has 1 to 63 bytes"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TELEPORT: &str = r#"
batch_size: 10000
max_events_per_batch: 10000
use_event_triggers: false
processing_intervals:
  batcher: 100
  transmitter: 100
  applier: 100
  vacuum: 500
  ddlwatcher: 5000
database:
  name: "orders-db"
  database: "orders"
  hostname: "db.internal"
  username: "replicator"
  password: "secret"
  port: 5432
server:
  hostname: "0.0.0.0"
  port: 3000
targets:
  analytics:
    target_expression: "public.*"
    endpoint:
      hostname: "replica.internal"
      port: 3001
    apply_schema: "orders_copy"
sentry_endpoint: "https://key@sentry.example.com/8"
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Config::from_yaml(text, Path::new("x.yml"), |k| {
            env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
        })
    }

    #[test]
    fn teleport_format_loads_as_is() {
        let c = parse(TELEPORT, &[]).unwrap();
        assert_eq!(c.database.name, "orders-db");
        assert_eq!(
            c.targets["analytics"].apply_schema.as_deref(),
            Some("orders_copy")
        );
        assert_eq!(
            c.roles(),
            Roles {
                source: true,
                target: false
            }
        );
        assert_eq!(c.processing_intervals.rotation, 60_000);
    }

    #[test]
    fn api_mirrors_make_a_source_that_needs_a_server() {
        let db = "database: {name: s, database: d, hostname: h, username: u, password: p}\n";
        let e = Config::from_yaml(&format!("api_mirrors: true\n{db}"), Path::new("x"), |_| {
            None
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("api_mirrors") && e.contains("server"), "{e}");
        let c = Config::from_yaml(
            &format!("api_mirrors: true\n{db}server: {{hostname: 127.0.0.1, port: 1}}\n"),
            Path::new("x"),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            c.roles(),
            Roles {
                source: true,
                target: false
            }
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = parse(TELEPORT, &[]).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(!dbg.contains("key@sentry"), "{dbg}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = TELEPORT.replace("batch_size:", "batch_sise:");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("batch_sise") && e.contains("x.yml"), "{e}");
        let text = TELEPORT.replace("apply_schema:", "apply_shema:");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("apply_shema"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let e = parse(&TELEPORT.replace("\"public.*\"", "\"public\""), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("targets.analytics.target_expression"), "{e}");
        let e = parse(&TELEPORT.replace("batcher: 100", "batcher: 0"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("processing_intervals.batcher"), "{e}");
        let e = parse(&TELEPORT.replace("port: 5432", "port: 70000"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
        let e = parse(&TELEPORT.replace("\"orders-db\"", "\"orders db\""), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("database.name"), "{e}");
    }

    #[test]
    fn renamed_tables_are_checked() {
        let with = |renames: &str, apply_schema: bool| {
            let mut text = TELEPORT.replace(
                "    apply_schema: \"orders_copy\"\n",
                &format!("    rename_tables: {{{renames}}}\n"),
            );
            if apply_schema {
                text = text.replace("rename_tables", "apply_schema: x\n    rename_tables");
            }
            parse(&text, &[]).map_err(|e| e.to_string())
        };
        let ok = with(
            "\"public.a\": \"archive.a2\", \"public.b\": \"public.b2\"",
            false,
        )
        .unwrap();
        assert_eq!(
            ok.targets["analytics"].renames(),
            [
                (
                    ("public".into(), "a".into()),
                    ("archive".into(), "a2".into())
                ),
                (
                    ("public".into(), "b".into()),
                    ("public".into(), "b2".into())
                ),
            ]
            .into()
        );
        for (renames, apply_schema, says) in [
            ("\"public.a\": \"a2\"", false, "is not `schema.table`"),
            ("\"public.a\": \"p.a2\"", true, "apply_schema"),
            (
                "\"public.a\": \"public.b\", \"public.b\": \"public.a\"",
                false,
                "chain or swap",
            ),
            (
                "\"public.a\": \"public.c\", \"public.b\": \"public.c\"",
                false,
                "destination of two",
            ),
        ] {
            let e = with(renames, apply_schema).unwrap_err();
            assert!(e.contains("targets.analytics.rename_tables.public."), "{e}");
            assert!(e.contains(says), "{renames}: {e}");
        }
    }

    #[test]
    fn verify_reads_the_target_password_from_its_own_variable() {
        let text = "database: {name: t, database: d, hostname: h, username: u, password: infile}\n\
                    server: {hostname: 127.0.0.1, port: 3000, allow_unauthenticated: true}\n";
        let vars = |with_target: bool| {
            move |k: &str| match k {
                "PGTELEPORT_DATABASE__PASSWORD" => Some("source-secret".to_string()),
                "PGTELEPORT_TARGET_DATABASE__PASSWORD" if with_target => {
                    Some("target-secret".to_string())
                }
                _ => None,
            }
        };
        let target = Config::from_yaml(text, Path::new("t.yml"), verify_target_env(vars(true)));
        assert_eq!(target.unwrap().database.password.expose(), "target-secret");
        // Without it the file's password stands; the source's variable never applies.
        let target = Config::from_yaml(text, Path::new("t.yml"), verify_target_env(vars(false)));
        assert_eq!(target.unwrap().database.password.expose(), "infile");
        let source = Config::from_yaml(text, Path::new("s.yml"), vars(true));
        assert_eq!(source.unwrap().database.password.expose(), "source-secret");
    }

    #[test]
    fn env_overrides_secrets() {
        let c = parse(
            TELEPORT,
            &[
                ("PGTELEPORT_DATABASE__PASSWORD", "fromenv"),
                ("PGTELEPORT_TARGETS__ANALYTICS__AUTH_TOKEN", "tok"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.password.expose(), "fromenv");
        assert_eq!(
            c.targets["analytics"].auth_token.as_ref().unwrap().expose(),
            "tok"
        );
    }

    #[test]
    fn target_without_token_refuses() {
        let target = "database: {name: t, database: d, username: u}\nserver: {port: 3001}\n";
        let e = parse(target, &[]).unwrap_err().to_string();
        assert!(e.contains("server.auth_token"), "{e}");
        let c = parse(target, &[("PGTELEPORT_AUTH_TOKEN", "x")]).unwrap();
        assert_eq!(
            c.roles(),
            Roles {
                source: false,
                target: true
            }
        );
        let c = parse(
            &target.replace("port: 3001", "port: 3001, allow_unauthenticated: true"),
            &[],
        )
        .unwrap();
        assert!(c.roles().target);
    }
}
