//! Source side of the initial load: snapshot, plan, parallel COPY streams, progress.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ddlwatcher::{quote_ident, Table, TypeRef};
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};

use crate::capture;
use crate::config::{Config, Target};
use crate::db;
use crate::stage;
use crate::wire::{
    CopyHeader, ForeignKeysAdded, LoadFinish, LoadForeignKeys, LoadPrepare, LoadStart,
    LoadTableState,
};

type Body = crate::tls::Body;

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: String,
    /// Replace rows of non-empty target tables (otherwise they are refused).
    pub truncate: bool,
    /// Tables (source names, `target_expression` patterns) to copy again though complete on
    /// the target — a load finished them, or the stream made them —, replacing their rows:
    /// the way to copy a table whose values differ. `None`: complete tables are left.
    pub copy_again: Option<ddlwatcher::TargetExpression>,
    /// Parallel COPY streams.
    pub workers: usize,
    /// Heap bytes per ctid range of a large table.
    pub range_bytes: u64,
    /// Whole tables or ctid ranges of large tables.
    pub split: Split,
    /// Progress bars (default: when stderr is a terminal).
    pub progress: Option<bool>,
    /// How long to wait for a lock before the snapshot: each table to copy (a schema
    /// change not committed yet holds it), and the ddlwatcher's look.
    pub lock_wait: Duration,
}

/// [`LoadOptions::lock_wait`] of the command line and of an instance's initial snapshot.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Default number of parallel COPY streams: half the CPUs, at least one. A stream keeps a
/// source backend, this process and a target backend busy (about 1.7 cores when all share
/// one machine), and each table's keys are built beside the next table's copy; more streams
/// than that only contend (README, "Initial load" benchmark).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .max(1)
}

/// How large tables are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Split {
    /// Whole tables when the target runs with wal_level = minimal, ranges otherwise.
    #[default]
    Auto,
    /// ctid ranges of about `range_bytes` each, copied in parallel.
    Ranges,
    /// One COPY per table.
    Whole,
}

/// The final report.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub tables: usize,
    pub skipped: usize,
    pub ranges: usize,
    pub rows: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Foreign keys the target added after the tables (validated or `NOT VALID` as on the
    /// source), and those it left `NOT VALID` or could not add (logged with the reason).
    pub foreign_keys: usize,
    pub foreign_keys_left: usize,
    /// Times the load started again within this run (a schema change while it started, or
    /// one it gave way to).
    pub restarts: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "loaded {} table(s) ({} already done) in {} range(s): {} rows, {:.1} MB in {:.1} s, {:.1} MB/s",
            self.tables,
            self.skipped,
            self.ranges,
            self.rows,
            self.bytes as f64 / 1e6,
            secs,
            self.bytes as f64 / 1e6 / secs
        )?;
        if self.foreign_keys + self.foreign_keys_left > 0 {
            write!(f, "; {} foreign key(s) added", self.foreign_keys)?;
            if self.foreign_keys_left > 0 {
                write!(
                    f,
                    ", {} not added or not validated (see the warnings)",
                    self.foreign_keys_left
                )?;
            }
        }
        if self.restarts > 0 {
            write!(
                f,
                "; started again {} time(s) (schema changes while it started)",
                self.restarts
            )?;
        }
        Ok(())
    }
}

/// Why the load stopped. Re-running resumes it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("target `{0}` is not in the config's targets")]
    UnknownTarget(String),
    #[error("--copy-again `{patterns}` names no table that target `{target}` replicates (its target_expression `{expression}`); name tables as `schema.table` by their source names")]
    CopyAgainNothing {
        patterns: String,
        target: String,
        expression: String,
    },
    #[error(transparent)]
    Connect(Box<db::ConnectError>),
    #[error(transparent)]
    Install(Box<capture::InstallError>),
    #[error("source database: {context}: {}", db::describe(.source))]
    Source {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("another initial load of target `{0}` is running against this source (its instance's initial snapshot, or a load command): wait for it to end")]
    Busy(String),
    #[error("the source's schema changed while the initial load of target `{0}` started (a table it copies or a type it uses, between its catalog read and its snapshot or before its copy), three times in a row: run it again")]
    SchemaMoved(String),
    /// Schema changes of the tables to copy kept asking for their locks between the
    /// snapshot transaction's locks and the copy streams': each waits for the load, and a
    /// stream would wait behind it, so the load let each go first ([`LOCK_TRIES`] times).
    #[error("initial load of target `{target}`: schema changes on the source kept asking for locks on the tables to copy while the load was taking its own ({detail}); the load let them go first {tries} times in a row: run it again once they are done", tries = LOCK_TRIES)]
    GaveWay { target: String, detail: String },
    /// A table to copy stayed locked by another transaction (a schema change) too long.
    #[error("initial load of target `{target}`: source table {table} is locked by another transaction (a schema change not committed yet?) and was not free within {seconds} s; end that transaction, then run the load again")]
    Locked {
        target: String,
        table: String,
        seconds: u64,
    },
    /// The capture install or the catalog read waited `lock_wait` for a lock: printing a
    /// view locks the tables it reads, and creating a trigger waits for the writes open on
    /// its table.
    #[error("initial load of target `{target}`: {detail} — it waited {seconds} s for a lock another transaction holds: a schema change not committed yet, on a table to copy or one a view reads, or a write left open on a table that needs its capture trigger; end that transaction (see pg_locks), then run the load again")]
    Waited {
        target: String,
        detail: String,
        seconds: u64,
    },
    /// Reading where the schema stream stands (a look of the ddlwatcher in diffing mode).
    #[error("source database: finding the schema version the load's catalog is at: {0}")]
    Position(String),
    #[error("target `{target}` at {url}: {message}")]
    Target {
        target: String,
        url: String,
        message: String,
        /// The target's HTTP status when it answered with an error.
        status: Option<u16>,
    },
}

impl LoadError {
    /// Whether running the load again cannot help until someone acts (the target refused
    /// the request: a table that holds rows, a config it rejects); network trouble, a
    /// database restart or a busy target are worth retrying.
    pub fn needs_action(&self) -> bool {
        match self {
            LoadError::UnknownTarget(_)
            | LoadError::Install(_)
            | LoadError::CopyAgainNothing { .. } => true,
            LoadError::Target {
                status: Some(s), ..
            } => (400..500).contains(s) && *s != 408 && *s != 423 && *s != 429,
            _ => false,
        }
    }
}

impl From<db::ConnectError> for LoadError {
    fn from(e: db::ConnectError) -> Self {
        LoadError::Connect(Box::new(e))
    }
}

impl From<capture::InstallError> for LoadError {
    fn from(e: capture::InstallError) -> Self {
        LoadError::Install(Box::new(e))
    }
}

fn src_err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> LoadError {
    let context = context.into();
    move |source| LoadError::Source { context, source }
}

struct Remote {
    name: String,
    base: String,
    token: Option<String>,
    http: crate::tls::HttpClient,
    /// `processing_intervals.stall_report`: a request the target has not answered in that
    /// long is reported with what the target says it waits for ([`Remote::waits`]).
    stall_report: Duration,
}

impl Remote {
    fn new(name: &str, t: &Target, stall_report: Duration) -> Result<Self, LoadError> {
        let (base, connector) =
            crate::tls::https_connector(&t.endpoint).map_err(|e| LoadError::Target {
                status: None,
                target: name.to_string(),
                url: format!("{}:{}", t.endpoint.hostname, t.endpoint.port),
                message: e.to_string(),
            })?;
        Ok(Self {
            name: name.to_string(),
            base,
            token: t.auth_token.as_ref().map(|s| s.expose().to_string()),
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
            stall_report,
        })
    }

    fn err(&self, message: String) -> LoadError {
        LoadError::Target {
            target: self.name.clone(),
            url: self.base.clone(),
            message,
            status: None,
        }
    }

    async fn send(
        &self,
        path: &str,
        body: Body,
        copy: Option<String>,
    ) -> Result<serde_json::Value, LoadError> {
        let mut req = crate::tls::request(&self.base, self.token.as_deref(), Method::POST, path);
        if let Some(h) = copy {
            req = req.header("x-pgteleport-copy", h);
        }
        let req = req.body(body).map_err(|e| self.err(e.to_string()))?;
        // The whole exchange is watched: the target's work is done before its answer.
        let exchange = crate::tls::exchange(&self.http, req);
        let stage = format!("initial load to {}", self.name);
        let (status, bytes) =
            stage::watched_with(&stage, self.stall_report, || self.waits(path), exchange)
                .await
                .map_err(|e| self.err(e))?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if status == StatusCode::OK {
            Ok(v)
        } else {
            let msg = v
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            Err(LoadError::Target {
                target: self.name.clone(),
                url: self.base.clone(),
                message: format!("{status}: {msg}"),
                status: Some(status.as_u16()),
            })
        }
    }

    /// What the target says about request `path` it has not answered yet: its own stall
    /// report of stage `initial load` — the lock its connection waits for and who holds
    /// it, or that it works.
    async fn waits(&self, path: &str) -> (bool, String) {
        let asked = format!(
            "the target `{}` has not answered POST {path} yet",
            self.name
        );
        stage::target_account(
            &self.http,
            &self.base,
            self.token.as_deref(),
            &asked,
            "step of the load",
            |s| s.stage == "initial load",
        )
        .await
    }

    async fn post_json<T: serde::Serialize>(
        &self,
        path: &str,
        msg: &T,
    ) -> Result<serde_json::Value, LoadError> {
        let body = serde_json::to_vec(msg).map_err(|e| self.err(e.to_string()))?;
        let body = Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync();
        self.send(path, body, None).await
    }
}

/// One ctid range of one table.
#[derive(Debug, Clone)]
struct Job {
    table: usize,
    range: i32,
    /// Block bounds; `None` for "the whole table" (one range).
    blocks: Option<(u64, Option<u64>)>,
    /// `FROM ONLY`: an ordinary table (its inheritance children are tables of their own);
    /// false for a partitioned table, whose rows live in its partitions.
    only: bool,
}

/// The tables of `catalog` an earlier run of this load finished, as the target names them
/// (`names` applied): the target's answer to `/v1/load/done`; none from a target that
/// predates it (then every table is locked, as before).
async fn finished_tables(
    remote: &Remote,
    config: &Config,
    target_name: &str,
    target: &Target,
    catalog: &ddlwatcher::Catalog,
    names: &ddlwatcher::SchemaMap,
) -> Result<Vec<(String, String)>, LoadError> {
    let msg = crate::wire::LoadDone {
        source: config.database.name.clone(),
        target: target_name.to_string(),
        apply_schema: target.apply_schema.clone(),
        tables: catalog
            .tables
            .iter()
            .map(|t| {
                let d = names.renamed(t);
                (d.schema, d.name)
            })
            .collect(),
        oids: catalog.tables.iter().map(|t| t.oid).collect(),
    };
    match remote.post_json("/v1/load/done", &msg).await {
        Ok(v) => serde_json::from_value(v.get("done").cloned().unwrap_or_default())
            .map_err(|e| remote.err(format!("its answer to /v1/load/done: {e}"))),
        Err(LoadError::Target {
            status: Some(404), ..
        }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The tables of `catalog` that `patterns` (`--copy-again`, source names) names, as the
/// target calls them (`names` applied).
fn copy_again(
    catalog: &ddlwatcher::Catalog,
    names: &ddlwatcher::SchemaMap,
    patterns: Option<&ddlwatcher::TargetExpression>,
) -> Vec<(String, String)> {
    let Some(patterns) = patterns else {
        return Vec::new();
    };
    catalog
        .tables
        .iter()
        .filter(|t| patterns.matches(&t.schema, &t.name))
        .map(|t| {
            let d = names.renamed(t);
            (d.schema, d.name)
        })
        .collect()
}

/// The schema versions of `target` up to `upto` that it has not acknowledged, in order.
async fn pending_versions(
    client: &tokio_postgres::Client,
    config: &Config,
    target: &str,
    upto: i64,
) -> Result<Vec<crate::wire::DdlVersion>, LoadError> {
    let s = quote_ident(&config.internal_schema);
    let rows = client
        .query(
            &format!(
                "select {columns} from {s}.ddl d
                  where d.target = $1 and d.version <= $2
                    and d.version > coalesce((select acked_ddl from {s}.target_state where target = $1), 0)
                  order by d.version",
                columns = crate::transmitter::VERSION_COLUMNS,
            ),
            &[&target, &upto],
        )
        .await
        .map_err(src_err("reading the schema versions the target has not applied"))?;
    rows.iter()
        .map(crate::transmitter::version_of)
        .collect::<Result<_, _>>()
        .map_err(LoadError::Position)
}

/// Runs the initial load of `opts.target`; resumable by running it again.
pub async fn run(config: &Config, opts: LoadOptions) -> Result<Summary, LoadError> {
    let mut attempt = 1;
    loop {
        match run_once(config, opts.clone()).await {
            Ok(mut summary) => {
                summary.restarts += attempt - 1;
                return Ok(summary);
            }
            Err(LoadError::SchemaMoved(target)) if attempt < 3 => {
                tracing::info!(%target, attempt, "the source's schema changed while the load started: starting again (the tables it created are made again)");
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// One run of the load; [`LoadError::SchemaMoved`] when a schema change came between the
/// catalog the tables were made from and the snapshot (the copy would not fit them).
async fn run_once(config: &Config, opts: LoadOptions) -> Result<Summary, LoadError> {
    let started = Instant::now();
    let target = config
        .targets
        .get(&opts.target)
        .ok_or_else(|| LoadError::UnknownTarget(opts.target.clone()))?;
    let remote = Arc::new(Remote::new(
        &opts.target,
        target,
        config.processing_intervals.stall_report(),
    )?);
    let mut client = db::connect(&config.database, "initial load").await?;
    // One load per target at a time: a second would remake the tables the first is
    // filling. Held by this connection until the load ends (a run just stopped may hold
    // it a moment longer: waited for a few seconds).
    let key = format!("{}/{}", config.internal_schema, opts.target);
    if !db::session_lock_within(&client, db::LOAD_LOCK, &key, Duration::from_secs(5))
        .await
        .map_err(src_err("taking the initial load's lock"))?
    {
        return Err(LoadError::Busy(opts.target.clone()));
    }
    // A transaction left open after a schema change makes the catalog reads below wait for
    // it when it holds a table a view reads, and the install when it holds a table that
    // needs its trigger: at most `lock_wait` each, then the load says so.
    client
        .batch_execute(&format!(
            "set lock_timeout = {}",
            opts.lock_wait.as_millis().max(1)
        ))
        .await
        .map_err(src_err("setting lock_timeout"))?;
    // Triggers first: every change not in the snapshot below is captured.
    capture::install(&mut client, config)
        .await
        .map_err(|e| waited(e, LoadError::from, &opts))?;
    let expr = ddlwatcher::TargetExpression::parse(&target.target_expression)
        .map_err(|e| LoadError::Position(e.to_string()))?;
    let mut holders = Holders::connect(config, opts.workers.max(1)).await?;
    // Renamed tables travel under their destination name (the source keeps its own for
    // the COPY); the target applies apply_schema itself.
    let names = ddlwatcher::SchemaMap::default().with_renames(target.renames());
    let mut restarts = 0;
    let (catalog, schema_version, locked, again) = loop {
        // The catalog the tables are created from, at a schema version boundary: the
        // versions up to it are in that catalog, and the target leaves them out for what
        // the load creates (they would add a column twice, rename one that has its new
        // name).
        let (catalog, schema_version) =
            crate::watcher::schema_position(&mut client, config, &opts.target, opts.lock_wait)
                .await
                .map_err(|e| waited(e, |e| LoadError::Position(e.to_string()), &opts))?;
        // Then its tables are locked by the snapshot's transaction and the copy streams'
        // (see `Holders`) until the copy ends, as under pg_dump, and the catalog is read
        // again under the locks, which takes the snapshot: a schema change of a table to
        // copy since the position starts over here (nothing is made yet); afterwards it
        // waits for the load. Not the tables an earlier run finished: their rows are
        // fixed by that run's snapshot, and their schema changes reach them by the stream.
        let finished =
            finished_tables(&remote, config, &opts.target, target, &catalog, &names).await?;
        // Those to copy again are not finished for this run.
        let again = copy_again(&catalog, &names, opts.copy_again.as_ref());
        let finished: Vec<(String, String)> = finished
            .into_iter()
            .filter(|t| !again.contains(t))
            .collect();
        let to_copy: Vec<Table> = catalog
            .tables
            .iter()
            .filter(|t| {
                let d = names.renamed(t);
                !finished.contains(&(d.schema, d.name))
            })
            .cloned()
            .collect();
        let locked: Vec<String> = to_copy.iter().map(|t| t.qualified()).collect();
        if holders.lock(&locked, &opts).await?.is_ok() {
            match ddlwatcher::Catalog::read(&holders.snap, &expr, &config.internal_schema).await {
                Ok(now) if copy_fits(&catalog, &now, &to_copy) => {
                    holders
                        .snap
                        .batch_execute("set local lock_timeout = default")
                        .await
                        .map_err(src_err("starting the snapshot transaction"))?;
                    break (catalog, schema_version, locked, again);
                }
                Ok(_) => {}
                // PostgreSQL chose this session to break a deadlock (a schema change holding a
                // lock the catalog read asks for waits for the load's own): tried again.
                Err(e)
                    if e.is_concurrent_change()
                        || db::has_code(
                            &e,
                            &tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED,
                        ) => {}
                Err(e) => {
                    return Err(waited(
                        e,
                        |e| {
                            LoadError::Position(format!(
                                "reading the catalog under the load's locks: {e}"
                            ))
                        },
                        &opts,
                    ))
                }
            }
        }
        restarts += 1;
        if restarts == POSITION_TRIES {
            return Err(LoadError::SchemaMoved(opts.target.clone()));
        }
        tracing::info!(target = %opts.target, restarts, "the source's schema changed between the load's catalog read and its locks: reading it again");
        holders.end().await?;
    };
    client
        .batch_execute("reset lock_timeout")
        .await
        .map_err(src_err("resetting lock_timeout"))?;
    if let (Some(patterns), true) = (&opts.copy_again, again.is_empty()) {
        return Err(LoadError::CopyAgainNothing {
            patterns: patterns.as_str().to_string(),
            target: opts.target.clone(),
            expression: target.target_expression.clone(),
        });
    }
    let position = catalog.clone();
    // The versions up to it the target has not acknowledged: a table it has already (not
    // created by the load) takes their changes before its copy.
    let ddl = pending_versions(&client, config, &opts.target, schema_version).await?;
    // Excluded columns (recorded by number at install) are left out of the tables the
    // load creates and copies, with the indexes, constraints and generated columns on them.
    let excluded = crate::exclusion::Exclusions::read(
        &client,
        &quote_ident(&config.internal_schema),
        &opts.target,
        &target.exclude_columns,
    )
    .await
    .map_err(|source| LoadError::Source {
        context: "reading the excluded columns".into(),
        source,
    })?;
    let catalog = excluded.strip(&catalog);
    let (tables, types, functions, views, sequences, collations) = (
        catalog.tables,
        catalog.types,
        catalog.functions,
        catalog.views,
        catalog.sequences,
        catalog.collations,
    );
    let renamed: Vec<Table> = tables.iter().map(|t| names.renamed(t)).collect();
    let prepared = remote
        .post_json(
            "/v1/load/prepare",
            &LoadPrepare {
                source: config.database.name.clone(),
                target: opts.target.clone(),
                apply_schema: target.apply_schema.clone(),
                tables: renamed.clone(),
                types,
                functions,
                views,
                sequences,
                collations,
                truncate: opts.truncate,
                again,
                schema_version: Some(schema_version),
                ddl,
            },
        )
        .await?;
    let states: Vec<LoadTableState> =
        serde_json::from_value(prepared.get("tables").cloned().unwrap_or_default())
            .map_err(|e| remote.err(e.to_string()))?;
    let done: Vec<(String, String)> = states
        .iter()
        .filter(|s| s.state == "done")
        .map(|s| (s.schema.clone(), s.name.clone()))
        .collect();
    let (todo, dest): (Vec<Table>, Vec<Table>) = tables
        .into_iter()
        .zip(renamed.iter().cloned())
        .filter(|(_, d)| !done.contains(&(d.schema.clone(), d.name.clone())))
        .unzip();
    // Only this load changes what is done (one at a time per target): what the prepare
    // says is left to copy was left when the locks were taken.
    if let Some(t) = todo.iter().find(|t| !locked.contains(&t.qualified())) {
        return Err(LoadError::Position(format!(
            "table {} is left to copy, but the target said it was finished when the load took its locks; run the load again",
            t.qualified()
        )));
    }
    // Under wal_level = minimal on the target, a table filled in the transaction that
    // empties it writes no WAL: then whole tables (in parallel) beat ranges of one table.
    let whole_tables = match opts.split {
        Split::Whole => true,
        Split::Ranges => false,
        Split::Auto => prepared
            .get("wal_level_minimal")
            .and_then(|w| w.as_bool())
            .unwrap_or(false),
    };
    if whole_tables && opts.split == Split::Auto {
        tracing::info!("the target runs with wal_level = minimal: each table is copied whole, in the transaction that empties it (no WAL)");
    }
    let mut summary = Summary {
        skipped: done.len(),
        restarts,
        ..Default::default()
    };
    if todo.is_empty() {
        // Also when an earlier run copied everything but stopped before this step.
        (summary.foreign_keys, summary.foreign_keys_left) =
            add_foreign_keys(&remote, config, &opts.target, target, renamed).await?;
        summary.elapsed = started.elapsed();
        return Ok(summary);
    }

    // Every table to copy is locked; those an earlier run finished are not.
    let (snapshot, block_size) = holders.export().await?;
    let Holders {
        snap: tx, streams, ..
    } = holders;
    remote
        .post_json(
            "/v1/load/start",
            &LoadStart {
                source: config.database.name.clone(),
                target: opts.target.clone(),
                apply_schema: target.apply_schema.clone(),
                snapshot: snapshot.clone(),
                tables: dest
                    .iter()
                    .map(|t| (t.schema.clone(), t.name.clone()))
                    .collect(),
            },
        )
        .await?;

    // Plan: ctid ranges of about range_bytes of heap each, largest tables first.
    let mut jobs: Vec<Job> = Vec::new();
    let mut estimate_bytes: u64 = 0;
    let mut sized: Vec<(usize, u64, bool)> = Vec::new();
    for (i, t) in todo.iter().enumerate() {
        let r = tx
            .query_one(
                "select pg_relation_size($1::oid)::int8, (select relkind::text from pg_catalog.pg_class where oid = $1::oid)",
                &[&t.oid],
            )
            .await
            .map_err(src_err(format!("sizing {}", t.qualified())))?;
        let (bytes, kind): (i64, String) = (r.get(0), r.get(1));
        sized.push((i, if kind == "r" { bytes as u64 } else { 0 }, kind == "r"));
        estimate_bytes += bytes as u64;
    }
    sized.sort_by_key(|(_, b, _)| std::cmp::Reverse(*b));
    let range_blocks = (opts.range_bytes / block_size as u64).max(1);
    let mut ranges_of: HashMap<usize, i32> = HashMap::new();
    for (i, bytes, only) in &sized {
        let only = *only;
        let blocks = bytes / block_size as u64;
        let n = if whole_tables {
            1
        } else {
            blocks.div_ceil(range_blocks).max(1)
        };
        if n == 1 {
            jobs.push(Job {
                table: *i,
                range: 0,
                blocks: None,
                only,
            });
        } else {
            for k in 0..n {
                let lo = k * range_blocks;
                let hi = (k + 1 < n).then_some((k + 1) * range_blocks);
                jobs.push(Job {
                    table: *i,
                    range: k as i32,
                    blocks: Some((lo, hi)),
                    only,
                });
            }
        }
        ranges_of.insert(*i, n as i32);
    }
    summary.tables = todo.len();
    summary.ranges = jobs.len();

    let progress = Progress::new(
        opts.progress
            .unwrap_or_else(|| std::io::stderr().is_terminal()),
        estimate_bytes,
    );
    let shared = Arc::new(Shared {
        jobs: Mutex::new(jobs.into_iter().collect()),
        remaining: Mutex::new(ranges_of.clone()),
        builds: Arc::new(tokio::sync::Semaphore::new(opts.workers.max(1))),
        bytes: AtomicU64::new(0),
        rows: AtomicU64::new(0),
    });
    // Kept apart from `shared`, which the builds hold: dropping the load aborts them.
    let finishes = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
    let todo = Arc::new(todo);
    let dest = Arc::new(dest);
    let mut workers = tokio::task::JoinSet::new();
    for stream in streams {
        let ctx = WorkerCtx {
            config: config.clone(),
            target: opts.target.clone(),
            apply_schema: target.apply_schema.clone(),
            snapshot: snapshot.clone(),
            tables: todo.clone(),
            dest: dest.clone(),
            ranges_of: ranges_of.clone(),
            remote: remote.clone(),
            shared: shared.clone(),
            finishes: finishes.clone(),
            progress: progress.clone(),
        };
        workers.spawn(async move { ctx.run(stream).await });
    }
    let mut first_error = None;
    while let Some(r) = workers.join_next().await {
        let r = r.unwrap_or_else(|e| Err(remote.err(format!("worker failed: {e}"))));
        if let Err(e) = r {
            if first_error.is_none() {
                first_error = Some(e);
                shared.jobs.lock().expect("not poisoned").clear();
            }
        }
    }
    // The key builds the workers left running; no worker adds one any more.
    let mut finishes = std::mem::take(&mut *finishes.lock().expect("not poisoned"));
    while let Some(r) = finishes.join_next().await {
        let r = r.unwrap_or_else(|e| Err(remote.err(format!("key build failed: {e}"))));
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    tx.batch_execute("commit")
        .await
        .map_err(src_err("ending the snapshot transaction"))?;
    progress.finish();
    if let Some(e) = first_error {
        // PostgreSQL prints an enum value by the latest catalog, not the snapshot's: a label
        // renamed after the snapshot reaches the copy under its new name, which the type the
        // target made from the catalog read lacks. A copy that failed on the target while
        // the types changed since that read starts the load again (it takes the change).
        if matches!(e, LoadError::Target { .. })
            && types_moved(&client, config, &expr, &position).await
        {
            tracing::info!(target = %opts.target, error = %e, "a copy failed while types it copies changed since the catalog read");
            return Err(LoadError::SchemaMoved(opts.target.clone()));
        }
        return Err(e);
    }
    (summary.foreign_keys, summary.foreign_keys_left) =
        add_foreign_keys(&remote, config, &opts.target, target, renamed).await?;
    summary.rows = shared.rows.load(Ordering::Relaxed);
    summary.bytes = shared.bytes.load(Ordering::Relaxed);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// `e` made a [`LoadError`] by `into`, as [`LoadError::Waited`] when it came from
/// PostgreSQL's lock timeout.
fn waited<E: std::error::Error + 'static>(
    e: E,
    into: impl FnOnce(E) -> LoadError,
    opts: &LoadOptions,
) -> LoadError {
    let timed_out = db::has_code(&e, &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
    let e = into(e);
    if timed_out {
        return LoadError::Waited {
            target: opts.target.clone(),
            detail: e.to_string(),
            seconds: opts.lock_wait.as_secs(),
        };
    }
    e
}

/// How many times the load reads its catalog again when a table to copy changed before
/// its locks.
const POSITION_TRIES: usize = 10;

/// How many times the load takes its locks again when a schema change came between the
/// snapshot transaction's lock and a copy stream's (the change goes first).
const LOCK_TRIES: u32 = 20;

/// The source connections that hold the load's table locks: `snap`, whose transaction
/// takes the snapshot and exports it, and the copy streams, which import it. Each is in a
/// REPEATABLE READ transaction that locked the tables to copy in ACCESS SHARE mode and took
/// no snapshot then (a LOCK takes none): `snap`'s catalog read takes it, and no schema
/// change of these tables can come between that read and the copy, nor rewrite one under
/// the copy (`ALTER … TYPE` is not MVCC-safe). The streams lock too, or their COPY would
/// queue behind a schema change that waits for `snap`. Nothing else of the load may ask
/// for a lock on these tables meanwhile: behind a schema change waiting for the holders,
/// it would wait for good.
struct Holders {
    snap: tokio_postgres::Client,
    streams: Vec<tokio_postgres::Client>,
    /// Whether the holders are in their transactions.
    open: bool,
}

impl Holders {
    async fn connect(config: &Config, workers: usize) -> Result<Self, LoadError> {
        let snap = db::connect(&config.database, "initial load snapshot").await?;
        let mut streams = Vec::new();
        for w in 0..workers {
            streams.push(db::connect(&config.database, &format!("initial load worker {w}")).await?);
        }
        Ok(Holders {
            snap,
            streams,
            open: false,
        })
    }

    /// Locks `tables` in every holder, after ending what they held. `snap` waits for a
    /// transaction holding one of them up to `lock_wait` ([`LoadError::Locked`]; its
    /// `lock_timeout` stays set for the catalog read that follows); the
    /// streams do not wait: a schema change that asked for its lock after `snap`'s queues
    /// behind it, and a stream's lock would queue behind the change for good — then all
    /// let go, the change goes first, and the locks are taken again ([`LOCK_TRIES`] times,
    /// then [`LoadError::GaveWay`]). `Ok(Err(message))` when a table is gone.
    async fn lock(
        &mut self,
        tables: &[String],
        opts: &LoadOptions,
    ) -> Result<Result<(), String>, LoadError> {
        use tokio_postgres::error::SqlState;
        let begin = "begin isolation level repeatable read, read only";
        let mut detail = String::new();
        for attempt in 1..=LOCK_TRIES {
            self.end().await?;
            self.open = true;
            self.snap
                .batch_execute(&format!(
                    "{begin}; set local lock_timeout = {}",
                    opts.lock_wait.as_millis().max(1)
                ))
                .await
                .map_err(src_err("starting the snapshot transaction"))?;
            // A schema change holding a lock on one table and waiting for another that
            // `snap` holds: PostgreSQL breaks the deadlock, maybe on `snap`'s side.
            let mut gave_way = None;
            if !tables.is_empty() {
                let lock = format!("lock table {} in access share mode", tables.join(", "));
                if let Err(e) = self.snap.batch_execute(&lock).await {
                    match e.code() {
                        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => {
                            gave_way = Some(db::describe(&e));
                        }
                        Some(c) if *c == SqlState::UNDEFINED_TABLE => {
                            return Ok(Err(db::describe(&e)))
                        }
                        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => {
                            self.end().await?;
                            return Err(LoadError::Locked {
                                target: opts.target.clone(),
                                table: self.locked_one(tables).await?,
                                seconds: opts.lock_wait.as_secs(),
                            });
                        }
                        _ => return Err(src_err("locking the tables to copy")(e)),
                    }
                }
            }
            if gave_way.is_none() {
                let lock = if tables.is_empty() {
                    begin.to_string()
                } else {
                    format!(
                        "{begin}; lock table {} in access share mode nowait",
                        tables.join(", ")
                    )
                };
                let locks = self.streams.iter().map(|c| c.batch_execute(&lock));
                for r in futures_util::future::join_all(locks).await {
                    match r {
                        Ok(()) => {}
                        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                            gave_way = Some(db::describe(&e));
                        }
                        Err(e) => {
                            return Err(src_err("locking the tables to copy")(e));
                        }
                    }
                }
            }
            match gave_way {
                None => {
                    return Ok(Ok(()));
                }
                Some(d) => {
                    tracing::debug!(target = %opts.target, attempt, detail = %d, "a schema change asked for its lock between the load's: letting it go first");
                    detail = d;
                    self.end().await?;
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
            }
        }
        Err(LoadError::GaveWay {
            target: opts.target.clone(),
            detail,
        })
    }

    /// Which of `tables` another transaction holds in ACCESS EXCLUSIVE mode (a schema
    /// change), to name it; all of them when none is found (the lock went meanwhile).
    async fn locked_one(&self, tables: &[String]) -> Result<String, LoadError> {
        let row = self
            .snap
            .query_one(
                "select (select x from pg_catalog.unnest($1::text[]) x
                          where pg_catalog.to_regclass(x)::oid in (
                                select l.relation from pg_catalog.pg_locks l
                                 where l.granted and l.mode = 'AccessExclusiveLock'
                                   and l.pid <> pg_catalog.pg_backend_pid())
                          limit 1)",
                &[&tables],
            )
            .await
            .map_err(src_err("finding the table another transaction locks"))?;
        Ok(row
            .get::<_, Option<String>>(0)
            .unwrap_or_else(|| format!("(one of) {}", tables.join(", "))))
    }

    /// Ends the holders' transactions (their locks go).
    async fn end(&mut self) -> Result<(), LoadError> {
        if std::mem::take(&mut self.open) {
            for c in std::iter::once(&self.snap).chain(&self.streams) {
                c.batch_execute("rollback")
                    .await
                    .map_err(src_err("letting the tables to copy go"))?;
            }
        }
        Ok(())
    }

    /// Exports `snap`'s snapshot (taken by its first query) and has every stream import
    /// it: `pg_current_snapshot()` and the block size.
    async fn export(&self) -> Result<(String, i64), LoadError> {
        let row = self
            .snap
            .query_one(
                "select pg_export_snapshot(), pg_current_snapshot()::text, current_setting('block_size')::int8",
                &[],
            )
            .await
            .map_err(src_err("exporting a snapshot"))?;
        let (id, snapshot, block_size): (String, String, i64) =
            (row.get(0), row.get(1), row.get(2));
        let import = format!(
            "set transaction snapshot {}",
            ddlwatcher::quote_literal(&id)
        );
        let imports = self.streams.iter().map(|c| c.batch_execute(&import));
        for r in futures_util::future::join_all(imports).await {
            r.map_err(src_err("importing the load snapshot"))?;
        }
        Ok((snapshot, block_size))
    }
}

/// Whether the catalog under the load's snapshot (`now`) still fits what the load made from
/// `position` for the tables it copies (`todo`): each is there under its name with the same
/// columns, key and partitions, and with every index and constraint it had (one dropped
/// since would be built again over rows that may break it); the types and collations are
/// the same. Any other change — other tables, functions, views, sequences, an index or a
/// constraint added — has its schema version after the load's, which the stream applies
/// to the loaded tables after the copy. With nothing to copy (a resumed load whose tables
/// are all done), nothing to fit: a type changed meanwhile reaches the target by the stream.
fn copy_fits(position: &ddlwatcher::Catalog, now: &ddlwatcher::Catalog, todo: &[Table]) -> bool {
    if todo.is_empty() {
        return true;
    }
    if position.types != now.types || position.collations != now.collations {
        return false;
    }
    todo.iter().all(|t| {
        let (Some(a), Some(b)) = (
            position.tables.iter().find(|x| x.oid == t.oid),
            now.tables.iter().find(|x| x.oid == t.oid),
        ) else {
            return false;
        };
        a.schema == b.schema
            && a.name == b.name
            && a.columns == b.columns
            && a.primary_key == b.primary_key
            && a.primary_key_deferrable == b.primary_key_deferrable
            && a.unique_key == b.unique_key
            && a.partitions == b.partitions
            && a.indexes.iter().all(|i| b.indexes.contains(i))
            && a.constraints.iter().all(|c| b.constraints.contains(c))
    })
}

/// Whether the types of the catalog `expr` selects (enums, composites, domains) differ now
/// from those of `position`, the catalog the load made the target's from (false when the
/// catalog cannot be read).
async fn types_moved(
    client: &tokio_postgres::Client,
    config: &Config,
    expr: &ddlwatcher::TargetExpression,
    position: &ddlwatcher::Catalog,
) -> bool {
    match ddlwatcher::Catalog::read(client, expr, &config.internal_schema).await {
        Ok(now) => now.types != position.types,
        Err(e) => e.is_concurrent_change(),
    }
}

/// The load's last step, once every table is loaded: the target adds the foreign keys of
/// the tables it created. Keys it could not add or validate are reported (the target logs
/// them too) and do not fail the load. Returns (keys added, keys left out or unvalidated).
async fn add_foreign_keys(
    remote: &Remote,
    config: &Config,
    name: &str,
    target: &Target,
    tables: Vec<Table>,
) -> Result<(usize, usize), LoadError> {
    if !tables
        .iter()
        .any(|t| t.constraints.iter().any(|c| c.kind == 'f'))
    {
        return Ok((0, 0));
    }
    let msg = LoadForeignKeys {
        source: config.database.name.clone(),
        target: name.to_string(),
        apply_schema: target.apply_schema.clone(),
        tables,
    };
    let added: ForeignKeysAdded = match remote.post_json("/v1/load/foreign-keys", &msg).await {
        Ok(v) => serde_json::from_value(v).map_err(|e| remote.err(e.to_string()))?,
        Err(LoadError::Target {
            status: Some(404), ..
        }) => {
            tracing::warn!(target = name, "the target's pgteleport is older and adds no foreign keys after a load: create them by hand, or upgrade it and run the load again");
            return Ok((0, 0));
        }
        Err(e) => return Err(e),
    };
    if !added.added.is_empty() {
        tracing::info!(target = name, keys = ?added.added, "foreign keys added on the target");
    }
    if !added.not_valid_as_on_source.is_empty() {
        tracing::info!(target = name, keys = ?added.not_valid_as_on_source, "foreign keys added NOT VALID on the target, as the source has them");
    }
    for k in &added.not_validated {
        tracing::warn!(target = name, key = %k, "foreign key added NOT VALID on the target (rows it refers to are missing there): validate it once they arrive");
    }
    for k in &added.failed {
        tracing::warn!(target = name, key = %k, "foreign key not added on the target: create it by hand");
    }
    Ok((
        added.added.len() + added.not_valid_as_on_source.len(),
        added.not_validated.len() + added.failed.len(),
    ))
}

struct Shared {
    jobs: Mutex<VecDeque<Job>>,
    remaining: Mutex<HashMap<usize, i32>>,
    /// At most one key build per worker at a time: builds hold target connections too.
    builds: Arc<tokio::sync::Semaphore>,
    bytes: AtomicU64,
    rows: AtomicU64,
}

struct WorkerCtx {
    config: Config,
    target: String,
    apply_schema: Option<String>,
    snapshot: String,
    /// The tables as the source names them, and as the target does (`rename_tables`).
    tables: Arc<Vec<Table>>,
    dest: Arc<Vec<Table>>,
    ranges_of: HashMap<usize, i32>,
    remote: Arc<Remote>,
    shared: Arc<Shared>,
    /// Each fully copied table's finish (key and index builds on the target), running
    /// while the workers copy the next tables.
    finishes: Arc<Mutex<tokio::task::JoinSet<Result<(), LoadError>>>>,
    progress: Progress,
}

impl WorkerCtx {
    /// Copies jobs until none is left, on `stream`: a connection in a transaction under the
    /// load's snapshot, holding its tables' locks (taken in [`run_once`]).
    async fn run(self, stream: tokio_postgres::Client) -> Result<(), LoadError> {
        let tx = &stream;
        loop {
            let Some(job) = self.shared.jobs.lock().expect("not poisoned").pop_front() else {
                break;
            };
            let table = &self.tables[job.table];
            let mut attempt = 0;
            let rows = loop {
                attempt += 1;
                match self.copy(tx, table, &job).await {
                    Ok(r) => break r,
                    // The snapshot is still held: a failed range is simply sent again.
                    Err(e @ LoadError::Target { .. }) if attempt < 4 => {
                        tracing::warn!(table = %table.qualified(), range = job.range, attempt, error = %e, "range failed; sending it again");
                        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            self.shared.rows.fetch_add(rows, Ordering::Relaxed);
            let last = {
                let mut rem = self.shared.remaining.lock().expect("not poisoned");
                let left = rem.get_mut(&job.table).expect("planned");
                *left -= 1;
                *left == 0
            };
            if last {
                // The table's keys and indexes are built while this worker copies the
                // next table, instead of leaving the stream idle meanwhile.
                let permit = self
                    .shared
                    .builds
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let msg = LoadFinish {
                    source: self.config.database.name.clone(),
                    target: self.target.clone(),
                    apply_schema: self.apply_schema.clone(),
                    table: self.dest[job.table].clone(),
                    ranges: self.ranges_of[&job.table],
                    snapshot: self.snapshot.clone(),
                };
                let (remote, progress, shared, name) = (
                    self.remote.clone(),
                    self.progress.clone(),
                    self.shared.clone(),
                    table.qualified(),
                );
                self.finishes
                    .lock()
                    .expect("not poisoned")
                    .spawn(async move {
                        let loaded = remote.post_json("/v1/load/finish", &msg).await;
                        drop(permit);
                        match loaded {
                            Ok(v) => {
                                let rows = v.get("rows").and_then(|r| r.as_i64()).unwrap_or(0);
                                progress.table_done(&name, rows);
                                Ok(())
                            }
                            Err(e) => {
                                // The load fails: no worker starts another table.
                                shared.jobs.lock().expect("not poisoned").clear();
                                Err(e)
                            }
                        }
                    });
            }
        }
        tx.batch_execute("commit")
            .await
            .map_err(src_err("commit"))?;
        Ok(())
    }

    /// Streams one range; returns the rows the target took.
    async fn copy(
        &self,
        tx: &tokio_postgres::Client,
        table: &Table,
        job: &Job,
    ) -> Result<u64, LoadError> {
        let columns = table.writable_columns();
        let binary = table
            .columns
            .iter()
            .filter(|c| !c.generated)
            .all(|c| matches!(c.type_ref, TypeRef::Builtin(_)));
        let format = if binary { "binary" } else { "text" };
        let cols = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let filter = match job.blocks {
            None => String::new(),
            Some((lo, None)) => format!(" where ctid >= '({lo},0)'::tid"),
            Some((lo, Some(hi))) => {
                format!(" where ctid >= '({lo},0)'::tid and ctid < '({hi},0)'::tid")
            }
        };
        // A whole plain table is copied as a table (no executor, no projection: cheaper
        // than COPY of a query); a range, or a partitioned table, through a query.
        let sql = if job.blocks.is_none() && job.only {
            format!(
                "copy {} ({cols}) to stdout (format {format})",
                table.qualified()
            )
        } else {
            format!(
                "copy (select {cols} from {}{}{filter}) to stdout (format {format})",
                if job.only { "only " } else { "" },
                table.qualified()
            )
        };
        let stream = tx
            .copy_out(&sql)
            .await
            .map_err(src_err(format!("COPY from {}", table.qualified())))?;
        let counter = self.shared.clone();
        let progress = self.progress.clone();
        // COPY sends one message per row; ship them in chunks of about CHUNK bytes.
        let frames = coalesce(Box::pin(stream))
            .map_ok(move |chunk: Bytes| {
                counter
                    .bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                progress.add_bytes(chunk.len() as u64);
                Frame::data(chunk)
            })
            .map_err(std::io::Error::other);
        let body: Body = BodyExt::boxed_unsync(StreamBody::new(frames));
        let header = CopyHeader {
            source: self.config.database.name.clone(),
            target: self.target.clone(),
            apply_schema: self.apply_schema.clone(),
            schema: self.dest[job.table].schema.clone(),
            table: self.dest[job.table].name.clone(),
            range: job.range,
            snapshot: self.snapshot.clone(),
            format: format.to_string(),
            columns,
            whole: job.blocks.is_none(),
        };
        let header = header.to_header_value();
        let v = self
            .remote
            .send("/v1/load/copy", body, Some(header))
            .await?;
        Ok(v.get("rows").and_then(|r| r.as_u64()).unwrap_or(0))
    }
}

/// Bytes per HTTP chunk of a COPY stream.
const CHUNK: usize = 256 << 10;

/// Joins the many small messages of a COPY stream into chunks of about [`CHUNK`] bytes.
fn coalesce<S>(inner: S) -> impl futures_util::Stream<Item = Result<Bytes, tokio_postgres::Error>>
where
    S: futures_util::Stream<Item = Result<Bytes, tokio_postgres::Error>> + Unpin,
{
    futures_util::stream::try_unfold((inner, false), |(mut inner, ended)| async move {
        if ended {
            return Ok(None);
        }
        let mut buf = bytes::BytesMut::with_capacity(CHUNK + 8192);
        loop {
            match inner.try_next().await? {
                Some(b) => {
                    buf.extend_from_slice(&b);
                    if buf.len() >= CHUNK {
                        return Ok(Some((buf.freeze(), (inner, false))));
                    }
                }
                None if buf.is_empty() => return Ok(None),
                None => return Ok(Some((buf.freeze(), (inner, true)))),
            }
        }
    })
}

/// A progress display on a terminal, plain log lines otherwise.
#[derive(Clone)]
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Arc<Mutex<Instant>>,
    bytes: Arc<AtomicU64>,
    estimate: u64,
}

impl Progress {
    fn new(terminal: bool, estimate: u64) -> Self {
        let bar = terminal.then(|| {
            let b = ProgressBar::new(estimate.max(1));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
                )
                .expect("valid template"),
            );
            b
        });
        Self {
            bar,
            started: Instant::now(),
            last_log: Arc::new(Mutex::new(Instant::now())),
            bytes: Arc::new(AtomicU64::new(0)),
            estimate,
        }
    }

    fn add_bytes(&self, n: u64) {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &self.bar {
            b.set_position(total.min(b.length().unwrap_or(u64::MAX)));
            return;
        }
        let mut last = self.last_log.lock().expect("not poisoned");
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            tracing::info!(
                mb = total as f64 / 1e6,
                of_mb_heap = self.estimate as f64 / 1e6,
                mb_per_s = total as f64 / 1e6 / secs,
                "initial load progress"
            );
        }
    }

    fn table_done(&self, table: &str, rows: i64) {
        match &self.bar {
            Some(b) => b.println(format!("  done  {table}: {rows} rows")),
            None => tracing::info!(table, rows, "table loaded"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_or_collation_changed_since_the_position_matters_only_with_tables_to_copy() {
        let table: Table = serde_json::from_value(serde_json::json!({
            "oid": 1, "schema": "app", "name": "t", "columns": [], "primary_key": []
        }))
        .expect("a table");
        let position = ddlwatcher::Catalog {
            tables: vec![table.clone()],
            ..Default::default()
        };
        let mut now = position.clone();
        assert!(copy_fits(&position, &now, std::slice::from_ref(&table)));
        now.collations.push(ddlwatcher::catalog::Collation {
            oid: 9,
            schema: "app".into(),
            name: "c".into(),
            qualified: "app.c".into(),
            provider: 'c',
            deterministic: true,
            locale: None,
            lc_collate: Some("C".into()),
            lc_ctype: Some("C".into()),
        });
        assert!(!copy_fits(&position, &now, std::slice::from_ref(&table)));
        assert!(copy_fits(&position, &now, &[]));
    }
}
