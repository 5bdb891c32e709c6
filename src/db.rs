//! Connections to PostgreSQL and classification of its errors.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::config::Database;
use crate::tls::Tls;

/// Statements a pipeline stage prepares once on its connection and keeps: the queries it
/// runs for every batch are then parsed once and, after a few runs, planned once (PostgreSQL
/// plans a prepared statement again by itself after a schema change). For statements whose
/// best plan depends on the values (the queue reads, bounded by the batch's snapshots), do
/// not: an unnamed statement is planned with its values every time. A stage clears its cache
/// when it connects again ([`crate::stage::Step::connected`]): a statement belongs to the
/// connection that prepared it.
#[derive(Default)]
pub struct Prepared(std::sync::Mutex<std::collections::HashMap<String, tokio_postgres::Statement>>);

impl Prepared {
    /// `sql` prepared on `client`'s connection (the first time, prepared now); a failure
    /// names `context`.
    pub async fn get<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        sql: &str,
        context: &str,
    ) -> Result<tokio_postgres::Statement, crate::stage::StepError> {
        if let Some(st) = self.lock().get(sql) {
            return Ok(st.clone());
        }
        let st = client
            .prepare(sql)
            .await
            .map_err(crate::stage::StepError::db(context))?;
        self.lock().insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Forgets every statement (the connection they belong to is gone).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, tokio_postgres::Statement>>
    {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("database `{database}` on {host}:{port} as `{user}`: {reason} — {hint}")]
    Failed {
        database: String,
        host: String,
        port: u16,
        user: String,
        reason: String,
        hint: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("database `{database}`: {message}")]
    Tls { database: String, message: String },
}

/// Opens a connection as `purpose` (shown in `pg_stat_activity.application_name`) and spawns
/// its driver task, which logs how the connection ended.
pub async fn connect(db: &Database, purpose: &str) -> Result<Client, ConnectError> {
    let mut cfg = pg_config(db, purpose);
    let label = format!("{purpose} {}@{}:{}", db.database, db.hostname, db.port);
    let result = match tls_for(db)? {
        Tls::Plain => cfg.connect(NoTls).await.map(|(client, conn)| {
            spawn_connection(conn, label);
            client
        }),
        Tls::Rustls(mode, tls) => {
            cfg.ssl_mode(mode);
            cfg.connect(tls).await.map(|(client, conn)| {
                spawn_connection(conn, label);
                client
            })
        }
    };
    result.map_err(|source| {
        let (reason, hint) = describe_connect_error(&source);
        ConnectError::Failed {
            database: db.database.clone(),
            host: db.hostname.clone(),
            port: db.port,
            user: db.username.clone(),
            reason,
            hint,
            source,
        }
    })
}

/// The effective `sslmode` (key or `options.sslmode`; default `disable`).
pub fn sslmode(db: &Database) -> String {
    db.sslmode
        .clone()
        .or_else(|| db.options.get("sslmode").cloned())
        .unwrap_or_else(|| "disable".into())
}

/// The TLS connector for `db`'s sslmode.
pub fn tls_for(db: &Database) -> Result<Tls, ConnectError> {
    let rootcert = db
        .sslrootcert
        .clone()
        .or_else(|| db.options.get("sslrootcert").map(std::path::PathBuf::from));
    crate::tls::for_mode(&sslmode(db), rootcert.as_deref()).map_err(|e| ConnectError::Tls {
        database: db.database.clone(),
        message: e.to_string(),
    })
}

/// Drives a connection, logging how it ended (the one place connections are spawned).
pub fn spawn_connection<S, T>(conn: tokio_postgres::Connection<S, T>, label: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        match conn.await {
            Ok(()) => tracing::debug!(connection = %label, "database connection closed"),
            Err(e) => tracing::warn!(connection = %label, error = %e, "database connection ended"),
        }
    });
}

/// The driver configuration for `db`, with `purpose` in the application name.
/// The `application_name` of this instance's connections is `prefix`, their purpose, then
/// `suffix`: `pgteleport batcher`, or with `options.application_name` set `orders (batcher)`.
pub(crate) fn application_affixes(db: &Database) -> (String, &'static str) {
    match db.options.get("application_name") {
        Some(custom) => (format!("{custom} ("), ")"),
        None => ("pgteleport ".to_string(), ""),
    }
}

pub fn pg_config(db: &Database, purpose: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&db.hostname)
        .port(db.port)
        .dbname(&db.database)
        .user(&db.username)
        .connect_timeout(Duration::from_secs(10));
    if !db.password.is_empty() {
        cfg.password(db.password.expose());
    }
    let (prefix, suffix) = application_affixes(db);
    let app = format!("{prefix}{purpose}{suffix}");
    // Exactly once needs durable commits whatever the server's default: a target that
    // answered "applied" and a source that numbered a batch must not forget it in a crash
    // (with `synchronous_commit = off` the last commits vanish). Last, so it wins. (The
    // applier commits a batch with it off and then waits for the flush in a statement of
    // its own, after the position lock is released: `Applier::acknowledge`.)
    let mut options = String::new();
    for (k, v) in &db.options {
        match k.as_str() {
            "connect_timeout" => {
                if let Ok(s) = v.parse::<u64>() {
                    cfg.connect_timeout(Duration::from_secs(s));
                }
            }
            "options" => options = v.clone(),
            "keepalives" => {
                cfg.keepalives(v != "0");
            }
            "keepalives_idle" => {
                if let Ok(s) = v.parse::<u64>() {
                    cfg.keepalives_idle(Duration::from_secs(s));
                }
            }
            "target_session_attrs" if v == "read-write" => {
                cfg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
            }
            _ => {}
        }
    }
    cfg.application_name(&app);
    // JIT off unless the user's `options` turn it on: pgteleport's queries are small, but
    // the planner's guesses for its rarely analysed queue tables crossed jit_above_cost and
    // each run of the vacuum's rotation check compiled for ~250 ms (measured, PostgreSQL 15).
    cfg.options(format!("-c jit=off {options} -c synchronous_commit=on").trim_end());
    cfg
}

fn describe_connect_error(e: &tokio_postgres::Error) -> (String, &'static str) {
    if let Some(db) = e.as_db_error() {
        let hint = match *db.code() {
            SqlState::INVALID_PASSWORD | SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                "check database.username and database.password (or PGTELEPORT_DATABASE__PASSWORD)"
            }
            SqlState::INVALID_CATALOG_NAME => {
                "check database.database: the database does not exist"
            }
            SqlState::TOO_MANY_CONNECTIONS => "the server has no free connection slots",
            _ => "see the server's message",
        };
        return (db.message().to_string(), hint);
    }
    (
        error_chain(e),
        "is the server running and reachable from this host?",
    )
}

/// An error with every cause behind it, `outer: inner: …`, for reports.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// How to react to a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection lost, serialization failure, deadlock, shutdown: try again.
    Retryable,
    /// The target schema lacks a table, column or type the batch needs: hold the batch.
    SchemaBehind,
    /// Anything else: retrying the same thing gives the same error.
    Permanent,
}

/// Classifies by SQLSTATE, never by message text.
pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    let Some(code) = e.code() else {
        return ErrorClass::Retryable; // no SQLSTATE: I/O or protocol level
    };
    let c = code.code();
    if *code == SqlState::UNDEFINED_TABLE
        || *code == SqlState::UNDEFINED_COLUMN
        || *code == SqlState::UNDEFINED_OBJECT
        || *code == SqlState::INVALID_SCHEMA_NAME
        || *code == SqlState::UNDEFINED_FUNCTION
    {
        ErrorClass::SchemaBehind
    } else if c.starts_with("08") // connection exception
        || c.starts_with("57P") // operator intervention (shutdown)
        || c.starts_with("53") // insufficient resources
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
    {
        ErrorClass::Retryable
    } else {
        ErrorClass::Permanent
    }
}

/// The server's message with its SQLSTATE, or the client error, for reports.
/// [`describe`] for a catalog read, whose error may also be a model mismatch.
pub fn describe_read(e: &ddlwatcher::ReadError) -> String {
    match e {
        ddlwatcher::ReadError::Db(e) => describe(e),
        other => other.to_string(),
    }
}

pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            // The detail is left out on purpose: it can quote row values.
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => error_chain(e),
    }
}

/// Takes (`lock`, waiting for it) or releases a session advisory lock: `key` and the hash of
/// `name` (re-entrant within a session: each take needs its release).
pub async fn session_lock(
    client: &Client,
    key: i32,
    name: &str,
    lock: bool,
) -> Result<(), tokio_postgres::Error> {
    let f = if lock {
        "pg_advisory_lock"
    } else {
        "pg_advisory_unlock"
    };
    client
        .execute(
            &format!("select pg_catalog.{f}($1, pg_catalog.hashtext($2))"),
            &[&key, &name],
        )
        .await?;
    Ok(())
}

/// Tries to take the session advisory lock of [`session_lock`] until `within` has passed;
/// whether it was taken.
pub async fn session_lock_within(
    client: &Client,
    key: i32,
    name: &str,
    within: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let taken: bool = client
            .query_one(
                "select pg_catalog.pg_try_advisory_lock($1, pg_catalog.hashtext($2))",
                &[&key, &name],
            )
            .await?
            .get(0);
        if taken {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The backend holding the session advisory lock of [`session_lock`] (`key`, `name`) in
/// this database, if one does.
pub async fn session_lock_holder(
    client: &Client,
    key: i32,
    name: &str,
) -> Result<Option<i32>, tokio_postgres::Error> {
    // A two-key advisory lock shows its keys as `classid` and `objid`, `objsubid` 2.
    Ok(client
        .query_opt(
            "select pid from pg_catalog.pg_locks
              where locktype = 'advisory' and granted and objsubid = 2
                and database = (select oid from pg_catalog.pg_database where datname = current_database())
                and classid = $1::int4::oid and objid = pg_catalog.hashtext($2)::oid
              limit 1",
            &[&key, &name],
        )
        .await?
        .map(|r| r.get(0)))
}

/// The first key of the advisory lock that serialises installs into one internal schema
/// (the second is the hash of its name).
pub const INSTALL_LOCK: i32 = 7419;

/// The first key of the advisory lock that serialises the ddlwatcher's looks (diffing
/// mode) into one internal schema, and an initial load's reading of its schema position.
pub const LOOK_LOCK: i32 = 7420;

/// The first key of the advisory lock an initial load holds for its whole run (the second
/// is the hash of `internal_schema/target`): one load per target at a time.
pub const LOAD_LOCK: i32 = 7421;

/// `sql` with the internal schema put in: `@schema@` becomes its quoted identifier and
/// `@schema_in_literal@` the same inside a string literal (its quotes doubled). Functions
/// that run under their caller's search_path name their relations with it.
pub(crate) fn with_schema(sql: &str, schema: &str) -> String {
    let ident = ddlwatcher::quote_ident(schema);
    sql.replace("@schema_in_literal@", &ident.replace('\'', "''"))
        .replace("@schema@", &ident)
}

/// Runs the versioned SQL files of `component` that are not yet recorded in
/// `<schema>.schema_version`, each in its own transaction, under an advisory lock so that
/// two instances starting at once do not race.
pub async fn migrate(
    client: &mut Client,
    schema: &str,
    component: &str,
    files: &[(i32, &str)],
) -> Result<(), tokio_postgres::Error> {
    let q = ddlwatcher::quote_ident(schema);
    let tx = client.transaction().await?;
    tx.execute(
        "select pg_advisory_xact_lock($1, hashtext($2))",
        &[&INSTALL_LOCK, &schema],
    )
    .await?;
    tx.batch_execute(&format!(
        "create schema if not exists {q};
         create table if not exists {q}.schema_version (
             component text not null, version int not null,
             applied_at timestamptz not null default now(),
             primary key (component, version))"
    ))
    .await?;
    let done: Vec<i32> = tx
        .query(
            &format!("select version from {q}.schema_version where component = $1"),
            &[&component],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.batch_execute(&format!("set local search_path = {q}, pg_temp"))
        .await?;
    for (version, sql) in files {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(&with_schema(sql, schema)).await?;
        tx.execute(
            "insert into schema_version (component, version) values ($1, $2)",
            &[&component, version],
        )
        .await?;
        tracing::info!(schema, component, version, "installed sql migration");
    }
    tx.commit().await
}

/// Whether `e`, or an error it comes from, is PostgreSQL's error `code` (through wrappers
/// such as a catalog read's error, which passes its source's on).
pub fn has_code(
    e: &(dyn std::error::Error + 'static),
    code: &tokio_postgres::error::SqlState,
) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        let found = e
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|p| p.code())
            .or_else(|| {
                e.downcast_ref::<tokio_postgres::error::DbError>()
                    .map(|d| d.code())
            });
        if found == Some(code) {
            return true;
        }
        next = e.source();
    }
    false
}
