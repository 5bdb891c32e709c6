//! The applier: applies a batch on the target in one transaction together with the
//! (source, target) position, so a batch is applied exactly once whatever crashes.
//!
//! Consecutive events of one table and one kind are applied with one set-based statement
//! (`INSERT … SELECT … FROM unnest` of a text array per column, or `json_populate_recordset`
//! where values are arrays or objects; `UPDATE … FROM`, `DELETE … USING`); an UPDATE that
//! changes the primary key is applied on its own. UPDATE and DELETE check that they matched
//! every row they name: a row missing on the target is an error, never a silent no-op.
//! Statements are sent as they are built (`InFlight`), and a batch's first part is
//! planned while the batch waits for the position lock.

use ddlwatcher::{qualified, quote_ident};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Transaction};

use crate::config::Config;
use crate::db::{self, ErrorClass};
use crate::wire::{Batch, DdlVersion, Event, Op, Snapshot, TableMeta};
use std::collections::HashMap;

/// Versioned SQL of the target side.
pub const TARGET_SQL: &[(i32, &str)] = &[
    (1, include_str!("../sql/target_001_position.sql")),
    (2, include_str!("../sql/target_002_load.sql")),
    (3, include_str!("../sql/target_003_ddl.sql")),
    (4, include_str!("../sql/target_004_runs.sql")),
    (5, include_str!("../sql/target_005_acknowledged.sql")),
    (6, include_str!("../sql/target_006_early_versions.sql")),
    (7, include_str!("../sql/target_007_load_positions.sql")),
    (8, include_str!("../sql/target_008_objects_through.sql")),
];

/// Largest JSON text handed to one statement; longer runs are split.
const MAX_STATEMENT_BYTES: usize = 32 << 20;

/// A successful apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now; the position is `applied_seq`, the schema version `ddl_version`.
    Applied {
        applied_seq: i64,
        ddl_version: i64,
        events: usize,
        /// Statements and steps the events were applied in (runs of rows, schema and
        /// sequence steps).
        runs: usize,
    },
    /// Applied before; nothing changed.
    Duplicate { applied_seq: i64 },
}

/// Why a batch was not applied. Nothing of it is visible on the target.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("batch {seq} does not follow the applied position {applied_seq}; send batch {} next", .applied_seq + 1)]
    Gap { seq: i64, applied_seq: i64 },
    #[error("the target schema is behind the batch: {message}")]
    SchemaBehind { message: String },
    #[error("target database unavailable: {message}")]
    Unavailable { message: String },
    #[error("{message}")]
    Failed { message: String },
    #[error("an initial load of {tables} table(s) from this source is in progress on the target; batches wait until it is done")]
    LoadInProgress { tables: i64 },
    #[error("{message}")]
    Conflict { message: String },
    #[error("{message}")]
    BadRequest { message: String },
    #[error("{message}")]
    TooLarge { message: String },
    #[error("{message}")]
    Timeout { message: String },
    /// The request's token does not admit the source the batch names.
    #[error("{message}")]
    Forbidden { message: String },
}

/// The segments of one batch, in order, as they arrive.
pub trait Segments {
    /// The next segment; `None` at the end of the body.
    fn next_segment(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<Batch>, ApplyError>> + Send;
}

/// Segments already in memory (a batch built in process).
impl Segments for std::collections::VecDeque<Batch> {
    async fn next_segment(&mut self) -> Result<Option<Batch>, ApplyError> {
        Ok(self.pop_front())
    }
}

pub(crate) fn pg(context: &str) -> impl Fn(tokio_postgres::Error) -> ApplyError + '_ {
    move |e| {
        let message = format!("{context}: {}", db::describe(&e));
        match db::classify(&e) {
            ErrorClass::SchemaBehind => ApplyError::SchemaBehind { message },
            ErrorClass::Retryable => ApplyError::Unavailable { message },
            ErrorClass::Permanent => ApplyError::Failed { message },
        }
    }
}

/// Applies batches into this instance's database.
pub struct Applier {
    pub(crate) pool: Pool,
    pub(crate) schema: String,
    batch_size: usize,
    /// `session_replication_role = replica` is allowed: target triggers and foreign-key
    /// actions do not fire while applying (the source already ran them).
    pub(crate) replica_role: bool,
    /// Origin mode only, per target table: whether it has a foreign key ON DELETE CASCADE
    /// (the target itself may already have deleted a row when the source's cascaded delete
    /// arrives), and whether it has one whose action may change its key (ON UPDATE CASCADE,
    /// SET NULL or SET DEFAULT: the target may have moved a row to its new key already).
    cascade_children: std::sync::Mutex<std::collections::HashMap<String, (bool, bool)>>,
    /// Target tables known to have their mirror's soft-delete and synced-at columns
    /// (forgotten when a batch applies schema changes).
    extra_columns: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Column types of target tables by `schema version/table` (a schema change makes a
    /// new key), for runs applied from text arrays.
    column_types: std::sync::Mutex<HashMap<String, std::sync::Arc<TargetColumns>>>,
    /// The tables of the last batch part planned, and which of them could be reordered:
    /// what the next batch's first part is planned with before the position lock.
    last_reorderable: std::sync::Mutex<Option<(Vec<TableMeta>, Vec<bool>)>>,
    /// For the stall reports of batches applied longer than `stall_report`.
    database: crate::config::Database,
    stall_report: std::time::Duration,
}

/// What the applier needs of a target table's columns, read once per schema version.
struct TargetColumns {
    /// Column → its type, `schema.name` quoted.
    types: HashMap<String, String>,
    /// Identity columns `GENERATED ALWAYS`.
    identity_always: Vec<String>,
    /// Columns of a composite type → its attributes: [`composite_attributes_known`].
    composite: HashMap<String, Vec<String>>,
    /// Columns of type json or jsonb (or a domain over one) → `json` or `jsonb`.
    json: HashMap<String, String>,
    /// Columns of an enum type → its OID: [`DdlState::relabeled`].
    enums: HashMap<String, u32>,
    /// The table's OID.
    oid: u32,
}

/// The table the target writes `meta`'s rows into: (schema, name), the schema the batch's
/// `apply_schema` if set, else the table's own.
fn target_parts<'b>(batch: &'b Batch, meta: &'b TableMeta) -> (&'b str, &'b str) {
    (
        batch.apply_schema.as_deref().unwrap_or(&meta.schema),
        &meta.name,
    )
}

/// [`target_parts`], quoted and qualified.
fn target_name(batch: &Batch, meta: &TableMeta) -> String {
    let (schema, name) = target_parts(batch, meta);
    qualified(schema, name)
}

/// [`TargetColumns`] of target table `table` (qualified); `None` when it does not exist.
async fn read_target_columns(
    tx: &Transaction<'_>,
    table: &str,
) -> Result<Option<TargetColumns>, ApplyError> {
    let rows = tx
        .query(
            &format!(
                "select a.attname::text, format('%I.%I', n.nspname, t.typname), a.attidentity = 'a',
                        case when t.typtype = 'c' then
                             array(select ca.attname::text from pg_catalog.pg_attribute ca
                                    where ca.attrelid = t.typrelid and ca.attnum > 0 and not ca.attisdropped) end,
                        (select b.typname::text from pg_catalog.pg_type b
                          where b.oid = {} and b.oid in ('pg_catalog.json'::regtype, 'pg_catalog.jsonb'::regtype)),
                        case when t.typtype = 'e' then t.oid end,
                        a.attrelid
                   from pg_catalog.pg_attribute a
                   join pg_catalog.pg_type t on t.oid = a.atttypid
                   join pg_catalog.pg_namespace n on n.oid = t.typnamespace
                  where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped",
                ddlwatcher::base_type_sql("a.atttypid")
            ),
            &[&table],
        )
        .await
        .map_err(pg(&format!("reading the column types of {table}")))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(TargetColumns {
        oid: rows[0].get(6),
        types: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        identity_always: rows
            .iter()
            .filter(|r| r.get::<_, bool>(2))
            .map(|r| r.get(0))
            .collect(),
        composite: rows
            .iter()
            .filter_map(|r| Some((r.get(0), r.get::<_, Option<Vec<String>>>(3)?)))
            .collect(),
        json: rows
            .iter()
            .filter_map(|r| Some((r.get(0), r.get::<_, Option<String>>(4)?)))
            .collect(),
        enums: rows
            .iter()
            .filter_map(|r| Some((r.get(0), r.get::<_, Option<u32>>(5)?)))
            .collect(),
    }))
}

/// `meta` with the json/jsonb columns of `cols` as the target's table has them: the
/// trigger ships json values in text form (a JSON string of the JSON text), read by the
/// type of the column they go to. The batch names its json columns as the source has them
/// when it is sent, which may differ from the target's until a schema version arrives: a
/// column renamed since (the row images name it as it was called when written), or
/// retyped (a jsonb column made text: a value written after the change, no JSON, into a
/// target column still jsonb makes that version apply early — and is then text, not
/// parsed). Columns the target lacks keep the batch's type. `None` when nothing changes.
fn with_target_json(
    meta: &TableMeta,
    target: &TargetColumns,
    cols: &[String],
) -> Option<TableMeta> {
    let kept = meta
        .json_columns
        .iter()
        .filter(|(c, _)| !target.types.contains_key(c) || !cols.contains(c))
        .cloned();
    let on_target = target
        .json
        .iter()
        .filter(|(c, _)| cols.contains(c))
        .map(|(c, t)| (c.clone(), t.clone()));
    let json: Vec<(String, String)> = kept.chain(on_target).collect();
    let same =
        json.len() == meta.json_columns.len() && json.iter().all(|j| meta.json_columns.contains(j));
    if same {
        return None;
    }
    Some(TableMeta {
        json_columns: json,
        ..meta.clone()
    })
}

/// A run's events and columns as [`as_changed_since`] gives them.
type Renamed = (Vec<Event>, Vec<String>);

/// `run` (its columns `cols`) with the image members that name a column of the target's
/// table `t` as it was called before versions applied early renamed or dropped it
/// (`changes`): under the column's name now (through every rename after), or left out
/// when it was dropped — only names the table lacks now, so a column of that name added
/// since keeps its values. The rows were written before those versions, in diffing mode's
/// interval between two looks, and are applied after them because they needed one (they
/// name a column it added). `None` when no image names such a column, or when one would
/// name a column twice.
fn as_changed_since(
    changes: &[ColumnChange],
    t: &TargetColumns,
    cols: &[String],
    run: &[&Event],
) -> Result<Option<Renamed>, ApplyError> {
    let ours: Vec<&ColumnChange> = changes.iter().filter(|c| c.1 == t.oid).collect();
    if ours.is_empty() {
        return Ok(None);
    }
    // Some(new name) or Some(None) (dropped) for a name the table lacks that a change named.
    let now = |name: &str| -> Option<Option<&String>> {
        if t.types.contains_key(name) {
            return None;
        }
        let from = ours.iter().rposition(|c| c.2 == name)?;
        let mut to = ours[from].3.as_ref();
        for c in &ours[from + 1..] {
            if to.is_some_and(|n| *n == c.2) {
                to = c.3.as_ref();
            }
        }
        Some(to)
    };
    let mut changed = false;
    let mut new_cols: Vec<String> = Vec::with_capacity(cols.len());
    for c in cols {
        match now(c) {
            None => new_cols.push(c.clone()),
            Some(Some(n)) => {
                changed = true;
                new_cols.push(n.clone());
            }
            Some(None) => changed = true,
        }
    }
    let mut keys_change = false;
    for e in run {
        if let Some(k) = &e.key {
            let names = crate::wire::object_keys(k).map_err(|err| ApplyError::BadRequest {
                message: format!("event {}: a row image is not a JSON object: {err}", e.id),
            })?;
            keys_change |= names.iter().any(|n| now(n).is_some());
        }
    }
    if !changed && !keys_change {
        return Ok(None);
    }
    let mut seen = std::collections::HashSet::new();
    if !new_cols.iter().all(|c| seen.insert(c)) {
        return Ok(None);
    }
    let events = events_edited(run, |k, _| match now(k) {
        None => crate::wire::Edit::Keep,
        Some(Some(n)) => crate::wire::Edit::Rename(n.clone()),
        Some(None) => crate::wire::Edit::Drop,
    })?;
    Ok(Some((events, new_cols)))
}

/// `run`'s events with each member of their row images (old and new) kept, left out,
/// given another value or another name as `edit` says ([`crate::wire::object_edited`]).
fn events_edited(
    run: &[&Event],
    edit: impl Fn(&str, &serde_json::value::RawValue) -> crate::wire::Edit,
) -> Result<Vec<Event>, ApplyError> {
    let image = |e: &Event, image: &Option<Box<serde_json::value::RawValue>>| {
        image
            .as_deref()
            .map(|raw| {
                crate::wire::object_edited(raw.get(), &edit)
                    .and_then(serde_json::value::RawValue::from_string)
                    .map_err(|err| ApplyError::BadRequest {
                        message: format!("event {}: a row image is not a JSON object: {err}", e.id),
                    })
            })
            .transpose()
    };
    run.iter()
        .map(|e| {
            Ok(Event {
                id: e.id,
                op: e.op,
                table: e.table,
                txid: e.txid,
                key: image(e, &e.key)?,
                data: image(e, &e.data)?,
            })
        })
        .collect()
}

/// The composite-type columns of `target` among `cols`, with their type's attributes.
fn composite_columns<'t>(
    target: &'t TargetColumns,
    cols: &[String],
) -> Vec<(&'t String, &'t Vec<String>)> {
    target
        .composite
        .iter()
        .filter(|(c, _)| cols.contains(c))
        .collect()
}

/// The attributes event `e`'s image gives the value of each of `columns` (none for a value
/// that is no JSON object, and for every column of an event without an image).
fn value_attributes(
    e: &Event,
    columns: &[(&String, &Vec<String>)],
) -> Result<Vec<Vec<String>>, ApplyError> {
    let Some(data) = e.data.as_deref() else {
        return Ok(vec![Vec::new(); columns.len()]);
    };
    let image = members(e, data.get())?;
    Ok(columns
        .iter()
        .map(
            |(c, _)| match member(&image, c).and_then(|v| members(e, v).ok()) {
                Some(v) => v.into_iter().map(|(name, _)| name).collect(),
                None => Vec::new(),
            },
        )
        .collect())
}

/// Fails as schema behind when a row image of `run` gives a value of a composite-type
/// column of `table` an attribute that type lacks on the target (an attribute added on the
/// source, or renamed, whose schema version has not been applied here yet): the value
/// would be read without it (`json_populate_record` passes over unknown members),
/// silently. Only the top level of a composite value is checked.
fn composite_attributes_known(
    target: &TargetColumns,
    cols: &[String],
    table: &str,
    run: &[&Event],
) -> Result<(), ApplyError> {
    let composite = composite_columns(target, cols);
    if composite.is_empty() {
        return Ok(());
    }
    for e in run {
        let given = value_attributes(e, &composite)?;
        for ((column, attributes), given) in composite.iter().zip(given) {
            if let Some(a) = given.iter().find(|a| !attributes.contains(a)) {
                return Err(ApplyError::SchemaBehind {
                    message: format!(
                        "event {}: the value of column {} of {table} has attribute {} that its type lacks on the target",
                        e.id,
                        quote_ident(column),
                        quote_ident(a)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The members of JSON object `text` (of event `e`'s image), their values unparsed (a
/// number may have more digits than a float holds). Members in their order.
fn members(
    e: &Event,
    text: &str,
) -> Result<Vec<(String, Box<serde_json::value::RawValue>)>, ApplyError> {
    // A map type keeps one value per name (a row image has distinct names), in order.
    struct Members(Vec<(String, Box<serde_json::value::RawValue>)>);
    impl<'de> serde::Deserialize<'de> for Members {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Members;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Members, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = m.next_entry()? {
                        out.push(entry);
                    }
                    Ok(Members(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Members>(text)
        .map(|m| m.0)
        .map_err(|err| ApplyError::BadRequest {
            message: format!("event {}: row image is not a JSON object: {err}", e.id),
        })
}

/// The text of member `name` of `members`, if any.
fn member<'m>(
    members: &'m [(String, Box<serde_json::value::RawValue>)],
    name: &str,
) -> Option<&'m str> {
    members
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.get())
}

/// `run` cut where the attributes its row images give the values of composite-type
/// columns (of `target`, among `cols`) change: consecutive events of one shape together.
fn composite_shapes<'r, 'e>(
    target: &TargetColumns,
    cols: &[String],
    run: &'r [&'e Event],
) -> Result<Vec<&'r [&'e Event]>, ApplyError> {
    let composite = composite_columns(target, cols);
    if composite.is_empty() || run.len() < 2 {
        return Ok(vec![run]);
    }
    let shape = |e: &Event| value_attributes(e, &composite);
    let mut out = Vec::new();
    let (mut start, mut current) = (0, shape(run[0])?);
    for (i, e) in run.iter().enumerate().skip(1) {
        let s = shape(e)?;
        if s != current {
            out.push(&run[start..i]);
            (start, current) = (i, s);
        }
    }
    out.push(&run[start..]);
    Ok(out)
}

/// A run of consecutive events applied by one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Insert,
    Update,
    /// An UPDATE that changed the primary key: one row per statement.
    UpdateKey,
    Delete,
    /// TRUNCATE of the run's tables, in one statement (foreign keys between them allow
    /// nothing else).
    Truncate,
    /// TRUNCATE of one partition: DELETE of the rows matching its constraint, one event
    /// per statement.
    DeleteWhere,
    /// UPDATE or DELETE of a table without any key: exactly one row equal to the old row
    /// image, one event per statement.
    RowIdentity,
}

impl Applier {
    /// Connects, installs the position table, and returns the applier.
    pub async fn connect(config: &Config) -> Result<Self, ApplyError> {
        let client = db::connect(&config.database, "applier setup")
            .await
            .map_err(|e| ApplyError::Unavailable {
                message: e.to_string(),
            })?;
        let mut client = client;
        db::migrate(&mut client, &config.internal_schema, "target", TARGET_SQL)
            .await
            .map_err(|e| ApplyError::Failed {
                message: format!(
                    "installing schema `{}` on the target: {} — the role needs CREATE on the database",
                    config.internal_schema,
                    db::describe(&e)
                ),
            })?;
        let replica_role = {
            let tx = client.transaction().await.map_err(pg("begin"))?;
            let ok = tx
                .batch_execute("set local session_replication_role = replica")
                .await
                .is_ok();
            let _ = tx.rollback().await;
            ok
        };
        if replica_role {
            tracing::info!("applying with session_replication_role = replica: target triggers and foreign-key actions stay quiet");
        } else {
            tracing::warn!(
                role = %config.database.username,
                "the role may not set session_replication_role: target triggers and ON DELETE/UPDATE actions fire while applying, \
                 and tables with triggers or rules, or tied by foreign keys to others in the same batch, are applied one source statement at a time. \
                 Grant it (GRANT SET ON PARAMETER session_replication_role TO …) for exact replicas of tables with triggers"
            );
        }
        let mut pg_config = db::pg_config(&config.database, "applier");
        // Apply statements are prepared once per connection (parsed and analysed once) but
        // planned for each run: a generic plan made while a table was small would keep its
        // sequential scan after the table has grown (measured: deletes 12× slower).
        let options = format!(
            "{} -c plan_cache_mode=force_custom_plan",
            pg_config.get_options().unwrap_or("")
        );
        pg_config.options(options.trim_start());
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let tls = db::tls_for(&config.database).map_err(|e| ApplyError::Failed {
            message: e.to_string(),
        })?;
        let manager = match tls {
            crate::tls::Tls::Plain => Manager::from_config(pg_config, NoTls, manager_config),
            crate::tls::Tls::Rustls(mode, connector) => {
                pg_config.ssl_mode(mode);
                Manager::from_config(pg_config, connector, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(8)
            .build()
            .map_err(|e| ApplyError::Failed {
                message: e.to_string(),
            })?;
        Ok(Self {
            pool,
            schema: quote_ident(&config.internal_schema),
            batch_size: config.batch_size,
            replica_role,
            cascade_children: Default::default(),
            extra_columns: Default::default(),
            column_types: Default::default(),
            last_reorderable: Default::default(),
            database: config.database.clone(),
            stall_report: config.processing_intervals.stall_report(),
        })
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, ApplyError> {
        let client = self.pool.get().await.map_err(|e| ApplyError::Unavailable {
            message: format!("no connection to the target database: {e}"),
        })?;
        // Watched work (an initial load's request) notes its backend for the stall report.
        if let Ok(backend) = crate::stage::BACKEND.try_with(|b| b.clone()) {
            if let Ok(row) = client.query_one("select pg_backend_pid()", &[]).await {
                backend.store(row.get(0), std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(client)
    }

    /// Runs an initial load's request on the target, reported as the `initial load` stage
    /// when it runs past `stall_report` (a target session holding a table the load empties,
    /// say).
    pub(crate) async fn watch<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        crate::stage::watched_here("initial load", &self.database, self.stall_report, work).await
    }

    /// The last batch applied from `source` for `target` (0 when none), durable.
    pub async fn position(&self, source: &str, target: &str) -> Result<i64, ApplyError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "select seq from {}.applied where source = $1 and target = $2",
                    self.schema
                ),
                &[&source, &target],
            )
            .await
            .map_err(pg("reading the applied position"))?;
        let seq = row.map_or(0, |r| r.get(0));
        if seq > 0 {
            self.acknowledge(&client, source, target, seq).await?;
        }
        Ok(seq)
    }

    /// Makes every transaction committed so far durable, with position `seq` recorded as
    /// acknowledged: a batch's transaction commits without waiting for its WAL to reach
    /// disk (the next batch may apply meanwhile), and this statement's commit waits (every
    /// connection runs with `synchronous_commit = on`, see `db::pg_config`) — its commit
    /// record comes after every commit visible to it, so flushing it flushes them. Runs
    /// before any answer that reports a position: the source forgets what is acknowledged.
    async fn acknowledge(
        &self,
        client: &deadpool_postgres::Object,
        source: &str,
        target: &str,
        seq: i64,
    ) -> Result<(), ApplyError> {
        client
            .execute(
                &format!(
                    "insert into {}.acknowledged as a (source, target, seq) values ($1, $2, $3)
                 on conflict (source, target) do update
                    set seq = greatest(a.seq, excluded.seq), acknowledged_at = clock_timestamp()",
                    self.schema
                ),
                &[&source, &target, &seq],
            )
            .await
            .map_err(pg("flushing the applied position to disk"))?;
        Ok(())
    }

    /// Applies `batch` atomically with its position.
    /// Applies a batch read segment by segment: the whole batch in one transaction, each
    /// segment as it arrives. Returns after the body ended (or at the first error).
    /// A batch applied longer than `processing_intervals.stall_report` is reported as a
    /// stage's step is ([`crate::stage::watched`]): a target session holding a lock on a
    /// replicated row or table is named.
    pub async fn apply(&self, segments: &mut impl Segments) -> Result<Outcome, ApplyError> {
        let pid = std::sync::atomic::AtomicI32::new(0);
        // Which batch, once its first segment is read: the source's transmitter finds its
        // own there (`stage::batches_of`).
        let label = std::sync::OnceLock::new();
        let describe = || async {
            let (blocked, detail) = crate::stage::describe_backend(&self.database, &pid).await;
            match label.get() {
                Some(l) => (blocked, format!("{l}: {detail}")),
                None => (blocked, detail),
            }
        };
        let result = crate::stage::watched_with(
            "applier",
            self.stall_report,
            describe,
            self.apply_batch(segments, &pid, &label),
        )
        .await;
        if result.is_err() {
            // The target's tables may have changed outside replication: read their types
            // and foreign keys anew.
            if let Ok(mut c) = self.column_types.lock() {
                c.clear();
            }
            self.forget_foreign_keys();
        }
        result
    }

    /// Forgets what the target's foreign keys were read to be: after schema changes, a
    /// failed batch, and the foreign keys an initial load adds at its end (a key ON DELETE
    /// CASCADE read as missing would hold the source's cascaded deletes for ever).
    pub(crate) fn forget_foreign_keys(&self) {
        if let Ok(mut c) = self.cascade_children.lock() {
            c.clear();
        }
    }

    async fn apply_batch(
        &self,
        segments: &mut impl Segments,
        pid: &std::sync::atomic::AtomicI32,
        label: &std::sync::OnceLock<String>,
    ) -> Result<Outcome, ApplyError> {
        let first = segments
            .next_segment()
            .await?
            .ok_or_else(|| ApplyError::BadRequest {
                message: "the body holds no batch".into(),
            })?;
        if first.part != 0 {
            return Err(ApplyError::BadRequest {
                message: format!("batch {} starts with part {}, not 0", first.seq, first.part),
            });
        }
        let batch = &first;
        let _ = label.set(format!(
            "{}{}",
            crate::stage::batches_of(&batch.source, &batch.target),
            batch.seq
        ));
        let first_columns = event_columns(batch)?;
        let started = std::time::Instant::now();
        let mut client = self.client().await?;
        // Statements that cannot share the batch's transaction (ALTER TYPE … ADD VALUE) are
        // additive and repeatable: run them first, each on its own.
        // With the connection's backend, for the stall reports (no round trip of its own).
        let row = client
            .query_one(
                &format!(
                    "select coalesce(max(version), 0), coalesce(max(objects_through), 0), pg_backend_pid()
                       from {}.ddl_applied where source = $1 and target = $2",
                    self.schema
                ),
                &[&batch.source, &batch.target],
            )
            .await
            .map_err(pg("reading the applied schema version"))?;
        let (done_ddl, objects_through): (i64, i64) = (row.get(0), row.get(1));
        pid.store(row.get(2), std::sync::atomic::Ordering::Relaxed);
        for v in batch.ddl.iter().filter(|v| v.version > done_ddl) {
            for st in v.statements.iter().filter(|s| !s.transactional) {
                if of_no_table(st) && v.version <= objects_through {
                    // An initial load's prepare took it (`objects_through`).
                    continue;
                }
                client
                    .batch_execute(&st.sql)
                    .await
                    .map_err(pg(&format!("schema version {}: `{}`", v.version, st.sql)))?;
            }
        }
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // Runs join their rows with the table by key: through the key's index, as native
        // apply finds each row. The planner would hash the whole table for a few thousand
        // rows (an update of 3 000 rows of a 100 000-row table: 53 ms against 22 ms).
        // The transaction commits without waiting for the WAL flush, which `acknowledge`
        // does after the position lock is released (a new WAL segment made at the flush took ~140 ms
        // every 8 batches while the next batch waited).
        let mut settings = String::from(
            "set local enable_hashjoin = off; set local enable_mergejoin = off; set local synchronous_commit = off;",
        );
        if self.replica_role {
            settings.push_str(" set local session_replication_role = replica;");
        }
        tx.batch_execute(&settings)
            .await
            .map_err(pg("setting the apply transaction's parameters"))?;
        let s = &self.schema;
        tx.execute(
            &format!("insert into {s}.applied (source, target, seq) values ($1, $2, 0) on conflict do nothing"),
            &[&batch.source, &batch.target],
        )
        .await
        .map_err(pg("registering the source"))?;
        let lock_sql =
            format!("select seq from {s}.applied where source = $1 and target = $2 for update");
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&batch.source, &batch.target];
        let (applied, early_plan) = {
            let lock = tx.query_one(&lock_sql, &params);
            let mut lock = std::pin::pin!(lock);
            // Its first poll sends the lock's query; while the batch ahead holds the lock, the
            // first part's runs are planned here — as they will be applied unless the tables'
            // triggers or keys (read again under the lock), an initial load's copies or the
            // schema version changed meanwhile.
            let first_poll = futures_util::poll!(lock.as_mut());
            let early_plan = self.early_plan(batch, &first_columns, done_ddl);
            let applied: i64 = match first_poll {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => lock.await,
            }
            .map_err(pg("locking the applied position"))?
            .get(0);
            (applied, early_plan)
        };
        let locked = started.elapsed();
        if batch.seq != applied + 1 {
            tx.rollback().await.map_err(pg("rollback"))?;
            self.acknowledge(&client, &batch.source, &batch.target, applied)
                .await?;
            if batch.seq <= applied {
                return Ok(Outcome::Duplicate {
                    applied_seq: applied,
                });
            }
            return Err(ApplyError::Gap {
                seq: batch.seq,
                applied_seq: applied,
            });
        }
        // Initial loads: wait while one runs; then skip what the copies already hold.
        let loads = tx
            .query(
                &format!("select schema_name, table_name, state, snapshot, source_oid, at_version from {s}.load_table where source = $1 and target = $2"),
                &[&batch.source, &batch.target],
            )
            .await
            .map_err(pg("reading initial load state"))?;
        let unfinished = loads
            .iter()
            .filter(|r| r.get::<_, &str>(2) != "done")
            .count() as i64;
        if unfinished > 0 {
            return Err(ApplyError::LoadInProgress { tables: unfinished });
        }
        tx.execute(
            &format!("insert into {s}.ddl_applied (source, target, version) values ($1, $2, 0) on conflict do nothing"),
            &[&batch.source, &batch.target],
        )
        .await
        .map_err(pg("registering the schema version"))?;
        let row = tx
            .query_one(
                &format!("select version, early::text, loaded_version, objects_through from {s}.ddl_applied where source = $1 and target = $2 for update"),
                &[&batch.source, &batch.target],
            )
            .await
            .map_err(pg("locking the schema version"))?;
        let applied_ddl: i64 = row.get(0);
        let early_before: Option<String> = row.get(1);
        let loaded_version: Option<i64> = row.get(2);
        let objects_through: Option<i64> = row.get(3);
        let early: EarlyVersions = match early_before.as_deref() {
            Some(text) => serde_json::from_str(text).map_err(|e| ApplyError::Failed {
                message: format!("{s}.ddl_applied.early is unreadable: {e}"),
            })?,
            None => EarlyVersions::default(),
        };
        let mut loaded: HashMap<(String, String), Snapshot> = HashMap::new();
        let mut created_at: HashMap<u32, i64> = HashMap::new();
        let mut loaded_by_oid: HashMap<u32, Snapshot> = HashMap::new();
        for r in &loads {
            let oid: Option<u32> = r.get(4);
            if let (Some(oid), Some(at)) = (oid, r.get::<_, Option<i64>>(5)) {
                created_at.insert(oid, at);
            }
            let snap: Option<String> = r.get(3);
            if let Some(snap) = snap.as_deref().and_then(Snapshot::parse) {
                if let Some(oid) = oid {
                    loaded_by_oid.insert(oid, snap.clone());
                }
                loaded.insert((r.get(0), r.get(1)), snap);
            }
        }
        let mut ddl = DdlState {
            pending: batch
                .ddl
                .iter()
                .filter(|v| v.version > applied_ddl)
                .collect(),
            applied: applied_ddl,
            extra_columns_seen: Vec::new(),
            early: early.versions,
            keys_before: std::sync::Arc::new(std::sync::Mutex::new(early.keys)),
            keys_by_oid: Vec::new(),
            renamed_labels: early.renamed_labels,
            columns_changed: std::sync::Arc::new(std::sync::Mutex::new(early.columns_changed)),
            columns_added: std::sync::Arc::new(std::sync::Mutex::new(early.columns_added)),
            tables_renamed: std::sync::Arc::new(std::sync::Mutex::new(early.tables_renamed)),
            labels_known: HashMap::new(),
            loaded,
            loaded_by_oid,
            created_at,
            loaded_version,
            objects_through,
            tables: batch.tables.iter().map(|t| target_name(batch, t)).collect(),
            covered: Covered {
                schema: s.to_string(),
                source: batch.source.clone(),
                target: batch.target.clone(),
            },
        };
        // Planned before the lock over all of the part's events: of use when no copy holds
        // some of them (apply_events uses it if it assumed the reorderability found now).
        let early_plan = early_plan.filter(|_| ddl.loaded.is_empty());
        let mut runs = self
            .apply_events(&tx, batch, Some((first_columns, early_plan)), &mut ddl)
            .await?;
        let mut events = batch.events.len();
        let (mut part, mut last) = (batch.part, batch.last);
        while !last {
            let next = segments.next_segment().await?.ok_or_else(|| ApplyError::BadRequest {
                message: format!(
                    "batch {} ends after part {part} without its last part (truncated); nothing of it was applied",
                    batch.seq
                ),
            })?;
            if next.seq != batch.seq
                || next.source != batch.source
                || next.target != batch.target
                || next.apply_schema != batch.apply_schema
                || next.part != part + 1
                || !next.ddl.is_empty()
            {
                return Err(ApplyError::BadRequest {
                    message: format!(
                        "part {} of batch {} does not continue part {part} of batch {} (another batch, source or apply_schema, or schema versions after the first part)",
                        next.part, next.seq, batch.seq
                    ),
                });
            }
            runs += self.apply_events(&tx, &next, None, &mut ddl).await?;
            events += next.events.len();
            (part, last) = (next.part, next.last);
        }
        if let Some(extra) = segments.next_segment().await? {
            return Err(ApplyError::BadRequest {
                message: format!(
                    "part {} of batch {} follows the last part",
                    extra.part, extra.seq
                ),
            });
        }
        let early_after = ddl.early_state();
        if early_after != early_before {
            tx.execute(
                &format!(
                    "update {s}.ddl_applied set early = $3::text::jsonb where source = $1 and target = $2"
                ),
                &[&batch.source, &batch.target, &early_after],
            )
            .await
            .map_err(pg("recording the schema versions applied early"))?;
        }
        if ddl.applied != applied_ddl {
            // A table may have been dropped and made again: check its columns and foreign
            // keys anew.
            if let Ok(mut k) = self.extra_columns.lock() {
                k.clear();
            }
            self.forget_foreign_keys();
            tx.execute(
                &format!(
                    "update {s}.ddl_applied set version = $3, applied_at = clock_timestamp() where source = $1 and target = $2"
                ),
                &[&batch.source, &batch.target, &ddl.applied],
            )
            .await
            .map_err(pg("recording the schema version"))?;
        }
        tx.execute(
            &format!(
                "update {s}.applied set seq = $3, events = events + $4, runs = runs + $5, applied_at = clock_timestamp()
                  where source = $1 and target = $2"
            ),
            &[&batch.source, &batch.target, &batch.seq, &(events as i64), &(runs as i64)],
        )
        .await
        .map_err(pg("recording the applied position"))?;
        let applied_in = started.elapsed();
        tx.commit().await.map_err(pg("commit"))?;
        let committed = started.elapsed();
        self.acknowledge(&client, &batch.source, &batch.target, batch.seq)
            .await?;
        if ddl.applied == applied_ddl {
            if let Ok(mut k) = self.extra_columns.lock() {
                k.extend(ddl.extra_columns_seen);
            }
        }
        tracing::debug!(
            batch_seq = batch.seq,
            lock_ms = locked.as_secs_f64() * 1e3,
            apply_ms = (applied_in - locked).as_secs_f64() * 1e3,
            commit_ms = (committed - applied_in).as_secs_f64() * 1e3,
            flush_ms = (started.elapsed() - committed).as_secs_f64() * 1e3,
            "batch phases"
        );
        Ok(Outcome::Applied {
            applied_seq: batch.seq,
            ddl_version: ddl.applied,
            events,
            runs,
        })
    }

    /// The runs of a batch's first part planned with the reorderability the last part
    /// planned found for the same tables (none if it had other tables, or if the batch
    /// carries a schema version not applied as of `done_ddl`: nothing is reordered then).
    fn early_plan(&self, batch: &Batch, columns: &[Columns], done_ddl: i64) -> Option<EarlyPlan> {
        if batch.ddl.iter().any(|v| v.version > done_ddl) {
            return None;
        }
        // Read and let go: another source's batch may plan meanwhile.
        let reorderable = match &*self.last_reorderable.lock().ok()? {
            Some((tables, reorderable)) if *tables == batch.tables => reorderable.clone(),
            _ => return None,
        };
        let events: Vec<&Event> = batch.events.iter().collect();
        let plan = plan_runs(
            &events,
            columns,
            &batch.tables,
            &reorderable,
            self.batch_size,
        );
        Some((reorderable, plan))
    }

    async fn apply_events(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        batch: &Batch,
        precomputed: Option<(Vec<Columns>, Option<EarlyPlan>)>,
        ddl: &mut DdlState<'_>,
    ) -> Result<usize, ApplyError> {
        // Events of transactions visible in a table's load snapshot are in its copy already.
        let mut events: Vec<&Event> = Vec::with_capacity(batch.events.len());
        let mut columns: Vec<Columns> = Vec::with_capacity(batch.events.len());
        let (all_columns, planned) = match precomputed {
            Some((c, plan)) => (c, plan),
            None => (event_columns(batch)?, None),
        };
        let mut all_columns = all_columns.into_iter();
        for e in &batch.events {
            let cols = all_columns.next().unwrap_or_default();
            if !e.op.is_stream_wide() {
                let meta = &batch.tables[e.table as usize];
                let (schema, name) = target_parts(batch, meta);
                if let Some(snap) = ddl.copy_of(meta.oid, schema, name) {
                    let txid = e.txid.ok_or_else(|| ApplyError::BadRequest {
                        message: format!(
                            "event {} lacks txid, needed for the initial load rule",
                            e.id
                        ),
                    })?;
                    if snap.visible(txid) {
                        continue;
                    }
                }
            }
            events.push(e);
            columns.push(cols);
        }
        if events.is_empty() {
            return Ok(0);
        }
        // Runs of one table, kind and column set. For tables no trigger, rule or foreign key
        // can see the order of (see `reorderable_tables`) the runs of a batch span
        // transactions: an event joins the latest run of its kind after every run that
        // touched its row, so each row still sees its changes in source order and the end
        // state is the same, in a few statements instead of one per source statement. A
        // constraint the new order trips (a unique value moved between rows) sends the
        // batch back to source order.
        self.ensure_extra_columns(tx, batch, &mut ddl.extra_columns_seen)
            .await?;
        let planning = std::time::Instant::now();
        let reorderable = if ddl.pending.is_empty() {
            self.reorderable_tables(tx, batch).await?
        } else {
            Vec::new()
        };
        let plan = match planned {
            Some((assumed, plan)) if assumed == reorderable => plan,
            _ => plan_runs(
                &events,
                &columns,
                &batch.tables,
                &reorderable,
                self.batch_size,
            ),
        };
        if ddl.pending.is_empty() {
            if let Ok(mut last) = self.last_reorderable.lock() {
                *last = Some((batch.tables.clone(), reorderable));
            }
        }
        tracing::debug!(
            batch_seq = batch.seq,
            events = events.len(),
            runs = plan.runs.len(),
            plan_ms = planning.elapsed().as_secs_f64() * 1e3,
            "batch planned"
        );
        if !plan.reordered {
            self.apply_runs(tx, batch, &events, &columns, &plan.runs, ddl)
                .await?;
            return Ok(plan.runs.len());
        }
        tx.batch_execute("savepoint pgteleport_reorder")
            .await
            .map_err(pg("savepoint"))?;
        match self
            .apply_runs(tx, batch, &events, &columns, &plan.runs, ddl)
            .await
        {
            Ok(()) => {
                tx.batch_execute("release savepoint pgteleport_reorder")
                    .await
                    .map_err(pg("savepoint"))?;
                Ok(plan.runs.len())
            }
            Err(e) => {
                tracing::debug!(batch = batch.seq, error = %e, "runs across transactions failed; applying the batch in source order");
                tx.batch_execute("rollback to savepoint pgteleport_reorder")
                    .await
                    .map_err(pg("savepoint"))?;
                let plan = plan_runs(&events, &columns, &batch.tables, &[], self.batch_size);
                self.apply_runs(tx, batch, &events, &columns, &plan.runs, ddl)
                    .await?;
                Ok(plan.runs.len())
            }
        }
    }

    /// The type of each column of target table `table` (qualified), by schema and internal
    /// name; `None` when the table does not exist. Cached per schema version.
    async fn column_types(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        version: i64,
        table: &str,
    ) -> Result<Option<std::sync::Arc<TargetColumns>>, ApplyError> {
        let key = format!("{version}/{table}");
        if let Some(t) = self
            .column_types
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
        {
            return Ok(Some(t));
        }
        let Some(types) = read_target_columns(tx, table).await? else {
            return Ok(None);
        };
        let types = std::sync::Arc::new(types);
        if let Ok(mut c) = self.column_types.lock() {
            if c.len() > 4096 {
                c.clear();
            }
            c.insert(key, types.clone());
        }
        Ok(Some(types))
    }

    /// Adds the mirror's soft-delete (`boolean not null default false`) and synced-at
    /// (`timestamptz default now()`) columns to the batch's target tables that lack them.
    /// A table that does not exist yet (a pending schema version creates it) is left to the
    /// next batch: this one fails on the missing column and is sent again.
    async fn ensure_extra_columns(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        batch: &Batch,
        seen: &mut Vec<String>,
    ) -> Result<(), ApplyError> {
        for meta in &batch.tables {
            let wanted: Vec<(&String, &str)> = meta
                .soft_delete_column
                .iter()
                .map(|c| (c, "boolean not null default false"))
                .chain(
                    meta.synced_at_column
                        .iter()
                        .map(|c| (c, "timestamptz default now()")),
                )
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let table = target_name(batch, meta);
            if seen.contains(&table)
                || self
                    .extra_columns
                    .lock()
                    .map(|k| k.contains(&table))
                    .unwrap_or(false)
            {
                continue;
            }
            let names: Vec<&str> = wanted.iter().map(|(c, _)| c.as_str()).collect();
            let row = tx
                .query_one(
                    "select to_regclass($1) is not null,
                            array(select a.attname::text from pg_catalog.pg_attribute a
                                   where a.attrelid = to_regclass($1) and a.attname = any($2) and not a.attisdropped)",
                    &[&table, &names],
                )
                .await
                .map_err(pg(&format!("reading the columns of {table}")))?;
            let (exists, present): (bool, Vec<String>) = (row.get(0), row.get(1));
            if !exists {
                continue;
            }
            for (c, definition) in wanted.iter().filter(|(c, _)| !present.contains(c)) {
                tx.batch_execute(&format!(
                    "alter table {table} add column if not exists {} {definition}",
                    quote_ident(c)
                ))
                .await
                .map_err(pg(&format!("adding column {c} to {table}")))?;
                tracing::info!(table = %table, column = %c, "added the mirror's column to the target table");
            }
            seen.push(table);
        }
        Ok(())
    }

    /// For each table of the batch, whether its events may be applied out of source order
    /// (between rows): no deferrable unique, primary key or exclusion constraint (checked
    /// at commit, after the fallback to source order could help) and no trigger that fires
    /// in the apply's mode (it would see the new order) — in replica mode ENABLE ALWAYS or
    /// REPLICA ones; otherwise ordinary and ALWAYS ones, and then also no rule, no foreign
    /// key from the table to itself, and no other table of the batch among the tables its
    /// foreign keys tie it to, directly or through others (its checks and actions fire: a
    /// child row could come before its parent, or a cascade take a row applied too early;
    /// against tables the batch does not change, they give the same answers in any order).
    /// Partitions count as their table (`pg_partition_tree` lists no rows for a table that
    /// is not partitioned: the table itself is added).
    async fn reorderable_tables(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        batch: &Batch,
    ) -> Result<Vec<bool>, ApplyError> {
        let names: Vec<String> = batch.tables.iter().map(|m| target_name(batch, m)).collect();
        let st = prepared(
            tx,
            "with recursive
                  b as (select n, rel, array(select rel union select relid::oid from pg_catalog.pg_partition_tree(rel)) as rels
                          from unnest($1::text[]) with ordinality as u(t, n),
                               lateral (select pg_catalog.to_regclass(t)::oid as rel) r),
                  member as (select n, unnest(rels) as oid from b),
                  -- Relations tied by a foreign key, either way, or by partitioning (only
                  -- without replica mode, where foreign keys act).
                  edge as (select conrelid as a, confrelid as z from pg_catalog.pg_constraint where contype = 'f' and not $2
                           union all select confrelid, conrelid from pg_catalog.pg_constraint where contype = 'f' and not $2
                           union all select inhrelid, inhparent from pg_catalog.pg_inherits where not $2
                           union all select inhparent, inhrelid from pg_catalog.pg_inherits where not $2),
                  reach (n, oid) as (select n, oid from member
                                     union select r.n, e.z from reach r join edge e on e.a = r.oid)
             select coalesce(rel is not null
                        and not exists (select 1 from pg_catalog.pg_constraint c
                                         where c.conrelid = any(rels) and c.condeferrable and c.contype in ('p', 'u', 'x'))
                        and not exists (select 1 from pg_catalog.pg_trigger g
                                         where g.tgrelid = any(rels) and not g.tgisinternal
                                           and g.tgenabled in ('A', case when $2 then 'R' else 'O' end))
                        and ($2 or not exists (select 1 from pg_catalog.pg_constraint c
                                                where c.contype = 'f' and c.conrelid = any(rels) and c.confrelid = any(rels))
                               and not exists (select 1 from reach r join member m on m.oid = r.oid
                                                where r.n = b.n and m.n <> b.n)
                               and not exists (select 1 from pg_catalog.pg_class r
                                                where r.oid = any(rels) and r.relhasrules)), false)
               from b order by n",
            "reading the target tables' constraints and triggers",
        )
        .await?;
        let rows = tx
            .query(&st, &[&names, &self.replica_role])
            .await
            .map_err(pg("reading the target tables' constraints and triggers"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Applies `runs` (indexes into `events`), each one statement or step, in order.
    async fn apply_runs(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        batch: &Batch,
        events: &[&Event],
        columns: &[Columns],
        runs: &[Vec<usize>],
        ddl: &mut DdlState<'_>,
    ) -> Result<(), ApplyError> {
        let mut queued = InFlight::default();
        let sent = self
            .send_runs(tx, batch, events, columns, runs, ddl, &mut queued)
            .await;
        // A step that failed after runs were sent may have failed only because one of them
        // did (the server refuses the rest of the transaction then): that run's error is
        // the cause.
        let finished = queued.finish().await;
        finished.and(sent)
    }

    /// [`Self::apply_runs`]'s runs, sent into `queued` (and waited for where a step needs the
    /// runs before it applied).
    #[allow(clippy::too_many_arguments)]
    async fn send_runs<'a>(
        &self,
        tx: &'a deadpool_postgres::Transaction<'_>,
        batch: &Batch,
        events: &[&Event],
        columns: &[Columns],
        runs: &[Vec<usize>],
        ddl: &mut DdlState<'_>,
        queued: &mut InFlight<'a>,
    ) -> Result<(), ApplyError> {
        // Insert, update and delete runs are sent pipelined (each still one statement, in
        // order, in the batch's transaction) rather than one round trip at a time: a stream
        // of small transactions is a long series of small runs. Each is sent as soon as it
        // is built, so the server executes one run while the next one's values are built
        // here. Anything else first waits for the runs sent.
        let keyless = |e: &Event| {
            batch
                .tables
                .get(e.table as usize)
                .is_some_and(|t| t.key.is_empty())
        };
        for indexes in runs {
            let first = events[indexes[0]];
            // Row events only: kind_of gives schema and sequence events a stand-in kind.
            let pipelined = ddl.pending.is_empty()
                && ddl.early.is_empty()
                && matches!(first.op, Op::Insert | Op::Update | Op::Delete)
                && matches!(
                    kind_of(first, keyless(first)),
                    Kind::Insert | Kind::Update | Kind::Delete
                );
            if !pipelined {
                queued.finish().await?;
            }
            if first.op == Op::Sequences {
                // Like a run: a sequence created by a pending version is made first.
                ddl.run(tx, |_| {
                    apply_sequences(tx, batch.apply_schema.as_deref(), first)
                })
                .await?;
                continue;
            }
            if first.op == Op::Schema {
                let version = first
                    .data
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(d.get()).ok())
                    .and_then(|v| v.get("version").and_then(|v| v.as_i64()))
                    .ok_or_else(|| ApplyError::BadRequest {
                        message: format!("schema event {} lacks a version", first.id),
                    })?;
                while ddl.pending.first().is_some_and(|v| v.version <= version) {
                    ddl.apply_next(tx).await?;
                }
                ddl.reached(version);
                // Checks of rows the event carries (values of a retyped column): here the
                // target's rows stand where the source's did, whenever the version was
                // applied — unless an initial load copied the table since (found by its
                // source OID: the check names the table as it was called then).
                for check in schema_checks(first)? {
                    let copied = ddl
                        .copy_of(check.oid, &check.schema, &check.table)
                        .zip(first.txid)
                        .is_some_and(|(snap, txid)| snap.visible(txid));
                    if copied {
                        continue;
                    }
                    // The check names the table as it was called then; the target may
                    // have renamed it since (a rename run there first).
                    let named = qualified(&check.schema, &check.table);
                    let now = ddl.name_on_target(tx, &named, check.oid).await?;
                    let mut sql = match now == named {
                        true => check.sql.clone(),
                        false => check
                            .sql
                            .replace(&format!("only {named} as t"), &format!("only {now} as t")),
                    };
                    // And its column under the name the target has now (renamed there
                    // first: a later version renames it).
                    let later: Vec<&ddlwatcher::Statement> =
                        ddl.pending.iter().flat_map(|v| &v.statements).collect();
                    for (first, last) in later_column_names(tx, &now, &later).await? {
                        sql = sql.replace(
                            &format!("t.{}", quote_ident(&first)),
                            &format!("t.{}", quote_ident(&last)),
                        );
                    }
                    tx.batch_execute(&sql)
                        .await
                        .map_err(|e| ApplyError::Failed {
                            message: format!("schema version {version}: {}", db::describe(&e)),
                        })?;
                }
                if ddl.applied < version {
                    return Err(ApplyError::BadRequest {
                        message: format!("schema event {} names version {version}, which the batch does not carry", first.id),
                    });
                }
                continue;
            }
            let kind = kind_of(first, keyless(first));
            let meta = &batch.tables[first.table as usize];
            let run: Vec<&Event> = indexes.iter().map(|&i| events[i]).collect();
            let run = run.as_slice();
            // Under the names versions applied early gave the tables since.
            let renamed = &ddl.tables_renamed;
            let table = if kind == Kind::Truncate {
                let mut names: Vec<String> = Vec::new();
                for e in run {
                    let m = &batch.tables[e.table as usize];
                    let n = renamed_if_gone(tx, renamed, target_name(batch, m), m.oid).await?;
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                names.join(", ")
            } else {
                renamed_if_gone(tx, renamed, target_name(batch, meta), meta.oid).await?
            };
            let union;
            let cols: &[String] = if indexes.iter().all(|&i| columns[i] == columns[indexes[0]]) {
                &columns[indexes[0]]
            } else {
                union = union_of(indexes.iter().map(|&i| &columns[i][..]));
                &union
            };
            // Also for the check of composite values' attributes.
            let target_columns = if matches!(
                kind,
                Kind::Insert | Kind::Update | Kind::UpdateKey | Kind::RowIdentity
            ) {
                self.column_types(tx, ddl.applied, &table).await?
            } else {
                None
            };
            // An update that names an identity column GENERATED ALWAYS on the target.
            let with_identity;
            let meta = match &target_columns {
                Some(t)
                    if matches!(kind, Kind::Update | Kind::UpdateKey)
                        && t.identity_always.iter().any(|c| cols.contains(c)) =>
                {
                    with_identity = TableMeta {
                        identity_always: t.identity_always.clone(),
                        ..meta.clone()
                    };
                    &with_identity
                }
                _ => meta,
            };
            // Before the json columns of the target's table are taken: a step of its own
            // reads them again at each try (a version applied early may retype them).
            let plain = meta;
            let with_json;
            let meta = match target_columns
                .as_ref()
                .and_then(|t| with_target_json(meta, t, cols))
            {
                Some(m) => {
                    with_json = m;
                    &with_json
                }
                None => meta,
            };
            // Labels of a rename that writers racing it still wrote.
            let relabeled = match &target_columns {
                Some(t) => ddl.relabeled(tx, t, run).await?,
                None => None,
            };
            let relabeled_run: Vec<&Event>;
            let run: &[&Event] = match &relabeled {
                Some(events) => {
                    relabeled_run = events.iter().collect();
                    &relabeled_run
                }
                None => run,
            };
            if pipelined {
                if let Some(t) = &target_columns {
                    composite_attributes_known(t, cols, &table, run)?;
                }
                let tolerate = self.tolerates_missing(tx, kind, &table).await?;
                let arrays = if matches!(kind, Kind::Insert | Kind::Update)
                    && meta.json_columns.is_empty()
                    && meta.soft_delete_column.is_none()
                    && meta.synced_at_column.is_none()
                {
                    match &target_columns {
                        Some(t) => {
                            SetRun::prepare_arrays(tx, kind, meta, cols, &table, run, &t.types)
                                .await?
                        }
                        None => None,
                    }
                } else {
                    None
                };
                let r = match arrays {
                    Some(r) => Some(r),
                    None => SetRun::prepare(tx, kind, meta, cols, &table, run, tolerate).await?,
                };
                if let Some(r) = r {
                    queued.send(tx, r).await;
                }
                if queued.len() >= PIPELINE_DEPTH {
                    queued.finish().await?;
                }
            } else {
                // Asked inside the step: a pending version may create the table first.
                let keys_before = ddl.keys_before.clone();
                // Composite values written before and after their type changed carry
                // different attributes: each shape in a step of its own, so the version is
                // applied early between them (rows before it go under the type before).
                let shapes = match &target_columns {
                    Some(t) => composite_shapes(t, cols, run)?,
                    None => vec![run],
                };
                let columns_changed = ddl.columns_changed.clone();
                let columns_added = ddl.columns_added.clone();
                let tables_renamed = ddl.tables_renamed.clone();
                for run in shapes {
                    let (table, columns_changed, columns_added, keys_before, tables_renamed) = (
                        &table,
                        &columns_changed,
                        &columns_added,
                        &keys_before,
                        &tables_renamed,
                    );
                    ddl.run(tx, |versions_pending| async move {
                        // Read at each try: a version applied early meanwhile may have
                        // renamed the table.
                        let now =
                            renamed_if_gone(tx, tables_renamed, table.clone(), meta.oid).await?;
                        let table = &now;
                        if kind == Kind::DeleteWhere {
                            let apply_schema = batch.apply_schema.as_deref();
                            return delete_where(tx, meta, table, run, apply_schema).await;
                        }
                        // Read at each try: a version applied early meanwhile may have
                        // renamed or dropped columns the images name.
                        let changed = columns_changed
                            .lock()
                            .map(|c| c.clone())
                            .unwrap_or_default();
                        let renamed = match changed.is_empty() {
                            true => None,
                            false => match read_target_columns(tx, table).await? {
                                Some(t) => as_changed_since(&changed, &t, cols, run)?,
                                None => None,
                            },
                        };
                        let renamed_run: Vec<&Event>;
                        let (run, cols) = match &renamed {
                            Some((events, cols)) => {
                                renamed_run = events.iter().collect();
                                (&renamed_run[..], &cols[..])
                            }
                            None => (run, cols),
                        };
                        // Asked again at each try: a version applied meanwhile may change it.
                        let before = keys_before.lock().ok().and_then(|k| k.get(table).cloned());
                        let keyed = self
                            .key_as_on_target(tx, kind, plain, run, table, before)
                            .await?;
                        let (kind, meta) = match &keyed {
                            // A table whose key was dropped: rows written before, with the
                            // key their trigger had, go by that key while the target has it.
                            Some(m) if kind == Kind::RowIdentity => (kind_of(run[0], false), m),
                            Some(m) if m.key.is_empty() => (Kind::RowIdentity, m),
                            Some(m) => (kind, m),
                            None => (kind, plain),
                        };
                        let tolerate = self.tolerates_missing(tx, kind, table).await?;
                        // Read again at each try: a version applied meanwhile may change it.
                        let mut with_json = None;
                        if matches!(
                            kind,
                            Kind::Insert | Kind::Update | Kind::UpdateKey | Kind::RowIdentity
                        ) {
                            if let Some(t) = read_target_columns(tx, table).await? {
                                composite_attributes_known(&t, cols, table, run)?;
                                with_json = with_target_json(meta, &t, cols);
                            }
                        }
                        let meta = with_json.as_ref().unwrap_or(meta);
                        let ahead = SchemaAhead {
                            versions_pending,
                            columns_added: columns_added
                                .lock()
                                .map(|c| c.iter().map(|(_, o, n)| (*o, n.clone())).collect())
                                .unwrap_or_default(),
                        };
                        apply_run(tx, kind, meta, cols, table, run, tolerate, &ahead).await
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// The columns each event of a batch part writes, read from its row image (after a rename
/// or an added column, older and newer events of one table carry different columns);
/// empty for events without an image. Pure work: done for the first part before the
/// batch waits for the target's position lock (while the batch before it applies).
fn event_columns(batch: &Batch) -> Result<Vec<Columns>, ApplyError> {
    let generated: Vec<&[String]> = batch
        .tables
        .iter()
        .map(|t| t.generated.as_slice())
        .collect();
    // The events of a table mostly write the same columns: each list is kept once, shared.
    let mut last: HashMap<u32, Columns> = HashMap::new();
    let none: Columns = Columns::from(Vec::new());
    batch
        .events
        .iter()
        .map(|e| match (e.op, &e.data) {
            (Op::Insert | Op::Update, Some(d)) => {
                let g = generated.get(e.table as usize).copied().unwrap_or(&[]);
                let bad = |err: serde_json::Error| ApplyError::BadRequest {
                    message: format!("event {}: row image is not a JSON object: {err}", e.id),
                };
                if let Some(cols) = last.get(&e.table) {
                    if crate::wire::object_keys_are(d, cols, g).map_err(bad)? {
                        return Ok(cols.clone());
                    }
                }
                let keys: Vec<String> = crate::wire::object_keys(d)
                    .map_err(bad)?
                    .into_iter()
                    .filter(|c| !g.contains(c))
                    .collect();
                let cols = Columns::from(keys);
                last.insert(e.table, cols.clone());
                Ok(cols)
            }
            _ => Ok(none.clone()),
        })
        .collect()
}

/// A part's runs planned before the position lock, with the tables it took as reorderable.
type EarlyPlan = (Vec<bool>, Plan);

/// The columns an event's row image writes, shared between the events that write the same.
type Columns = std::sync::Arc<[String]>;

/// The runs a batch part is applied in: indexes into its events, in the order applied.
struct Plan {
    runs: Vec<Vec<usize>>,
    /// Whether some event was placed before an event that precedes it.
    reordered: bool,
}

/// Cuts `events` into runs. An event of a table marked in `reorderable` that an insert,
/// update or delete run may take joins the latest run of its table, kind and columns that
/// comes after every run holding an event of its row (and after the last event applied in
/// order); every other event (schema, sequences, truncate, key change, keyless table, or a
/// table not reorderable) continues the run just before it or starts one, and no later
/// event joins a run before it.
fn plan_runs(
    events: &[&Event],
    columns: &[Columns],
    tables: &[TableMeta],
    reorderable: &[bool],
    batch_size: usize,
) -> Plan {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut bytes: Vec<usize> = Vec::new();
    let mut reordered = false;
    // Runs before `floor` are closed.
    let mut floor = 0;
    // The run the previous event went to, when it was placed in order.
    let mut in_order: Option<usize> = None;
    let mut latest: HashMap<(u32, Kind, &[String]), usize> = HashMap::new();
    let mut row_run: HashMap<(u32, String), usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let meta = tables.get(e.table as usize);
        let row_event = matches!(e.op, Op::Insert | Op::Update | Op::Delete);
        let kind = kind_of(e, meta.is_none_or(|t| t.key.is_empty()));
        let set_based = row_event && matches!(kind, Kind::Insert | Kind::Update | Kind::Delete);
        let row = match (meta, e.op) {
            (Some(m), _) if set_based && reorderable.get(e.table as usize) == Some(&true) => {
                let image = if e.op == Op::Delete { &e.key } else { &e.data };
                image
                    .as_deref()
                    .and_then(|r| crate::wire::object_values(r, &m.key))
            }
            _ => None,
        };
        let fits = |r: usize| runs[r].len() < batch_size && bytes[r] < MAX_STATEMENT_BYTES;
        let run = if let Some(row) = row {
            let sig = (e.table, kind, &columns[i][..]);
            let after = row_run
                .get(&(e.table, row.clone()))
                .copied()
                .unwrap_or(0)
                .max(floor);
            let run = match latest.get(&sig) {
                Some(&r) if r >= after && fits(r) => r,
                _ => {
                    runs.push(Vec::new());
                    bytes.push(0);
                    latest.insert(sig, runs.len() - 1);
                    runs.len() - 1
                }
            };
            row_run.insert((e.table, row), run);
            in_order = None;
            run
        } else {
            let continues = in_order.filter(|&r| {
                let first = events[runs[r][0]];
                r + 1 == runs.len()
                    && fits(r)
                    && (row_event || e.op == Op::Truncate)
                    && first.op != Op::Schema
                    && first.op != Op::Sequences
                    && kind != Kind::DeleteWhere
                    // A keyless table's deletes together, and its updates (`apply_alike`).
                    && (kind != Kind::RowIdentity || e.op == first.op)
                    // Key changes one by one, except those of one statement on a
                    // table with a DEFERRABLE key: they may pass through each other.
                    && (kind != Kind::UpdateKey
                        || meta.is_some_and(|m| m.key_deferrable)
                            && first.table == e.table
                            && crate::wire::statement_of(first)
                                .is_some_and(|s| Some(s) == crate::wire::statement_of(e)))
                    && (first.table == e.table || kind == Kind::Truncate)
                    && kind_of(
                        first,
                        tables
                            .get(first.table as usize)
                            .is_none_or(|t| t.key.is_empty()),
                    ) == kind
                    // One statement's key changes stay one run whatever columns each
                    // row ships (a row over 2 KB ships only those that changed).
                    && (columns[runs[r][0]] == columns[i] || kind == Kind::UpdateKey)
            });
            let run = continues.unwrap_or_else(|| {
                runs.push(Vec::new());
                bytes.push(0);
                runs.len() - 1
            });
            floor = run + 1;
            in_order = Some(run);
            run
        };
        if run + 1 != runs.len() {
            reordered = true;
        }
        runs[run].push(i);
        bytes[run] += payload_len(e);
    }
    Plan { runs, reordered }
}

/// Most runs sent before their results are read.
const PIPELINE_DEPTH: usize = 256;

/// An insert, update or delete run with its statement prepared and its parameter built.
struct SetRun {
    kind: Kind,
    statement: tokio_postgres::Statement,
    values: Values,
    /// Rows the values hold (`limit $n`; for a delete, the keys it must find).
    n: i64,
    tolerate_missing: bool,
    context: String,
}

/// The values a run's statement takes.
enum Values {
    /// The row images (the keys for a delete) as one JSON array.
    Json(String),
    /// One text array per column (values as input functions take them).
    Arrays(Arrays),
}

/// One text array per column of a run.
type Arrays = Vec<Vec<Option<String>>>;

impl SetRun {
    /// Prepares `sql`, the statement of a run taking `values`.
    async fn new(
        tx: &deadpool_postgres::Transaction<'_>,
        kind: Kind,
        sql: &str,
        values: Values,
        n: i64,
        tolerate_missing: bool,
        context: String,
    ) -> Result<SetRun, ApplyError> {
        let statement = prepared(tx, sql, &context).await?;
        Ok(SetRun {
            kind,
            statement,
            values,
            n,
            tolerate_missing,
            context,
        })
    }

    /// `None` for an update that writes key columns only (it changes nothing).
    async fn prepare(
        tx: &deadpool_postgres::Transaction<'_>,
        kind: Kind,
        meta: &TableMeta,
        cols: &[String],
        table: &str,
        events: &[&Event],
        tolerate_missing: bool,
    ) -> Result<Option<SetRun>, ApplyError> {
        let context = format!("applying {} {:?} event(s) to {table}", events.len(), kind);
        let sql = match kind {
            Kind::Insert => insert_sql(meta, cols, table),
            Kind::Update => update_sql(meta, cols, table),
            Kind::Delete => delete_sql(meta, table),
            other => unreachable!("{other:?} runs are not set-based"),
        };
        let (json, n) = run_parameter(kind, events);
        let run = SetRun::new(
            tx,
            kind,
            &sql,
            Values::Json(json),
            n,
            tolerate_missing,
            context,
        );
        Ok(Some(run.await?))
    }

    /// An insert or update run applied from text arrays, one per column, each value cast
    /// to its column's type (no JSON for PostgreSQL to parse). `None` when the run needs
    /// the JSON path: a value that is an array or object, a column the target table lacks,
    /// an update of key columns only.
    async fn prepare_arrays(
        tx: &deadpool_postgres::Transaction<'_>,
        kind: Kind,
        meta: &TableMeta,
        cols: &[String],
        table: &str,
        events: &[&Event],
        types: &HashMap<String, String>,
    ) -> Result<Option<SetRun>, ApplyError> {
        let Some(tys) = cols
            .iter()
            .map(|c| types.get(c).map(String::as_str))
            .collect::<Option<Vec<&str>>>()
        else {
            return Ok(None);
        };
        let sql = match kind {
            Kind::Insert => insert_arrays_sql(cols, &tys, table),
            Kind::Update => match update_arrays_sql(meta, cols, &tys, table) {
                Some(sql) => sql,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let mut arrays: Arrays = vec![Vec::with_capacity(events.len()); cols.len()];
        for e in events {
            let Some(values) = e
                .data
                .as_deref()
                .and_then(|d| crate::wire::object_texts(d, cols))
            else {
                return Ok(None);
            };
            for (a, v) in arrays.iter_mut().zip(values) {
                a.push(v);
            }
        }
        if kind == Kind::Update {
            let key = key_positions(meta, cols).unwrap_or_default();
            arrays = last_per_key(arrays, &key);
        }
        // One array per column, each with a value per row.
        let Some(n) = arrays.first().map(|a| a.len() as i64) else {
            return Ok(None);
        };
        let context = format!("applying {n} {kind:?} event(s) to {table}");
        let run = SetRun::new(tx, kind, &sql, Values::Arrays(arrays), n, false, context);
        Ok(Some(run.await?))
    }

    async fn execute(&self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let context = &self.context;
        let json = match &self.values {
            Values::Json(json) => json,
            Values::Arrays(arrays) => {
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    arrays.iter().map(|a| a as _).collect();
                if self.kind == Kind::Insert {
                    tx.execute(&self.statement, &params)
                        .await
                        .map_err(pg(context))?;
                } else {
                    params.push(&self.n);
                    let row = tx
                        .query_one(&self.statement, &params)
                        .await
                        .map_err(pg(context))?;
                    check_matched(context, row.get(0), row.get(1))?;
                }
                return Ok(());
            }
        };
        match self.kind {
            Kind::Insert => {
                tx.execute(&self.statement, &[json])
                    .await
                    .map_err(pg(context))?;
            }
            Kind::Update => {
                let row = tx
                    .query_one(&self.statement, &[json, &self.n])
                    .await
                    .map_err(pg(context))?;
                check_matched(context, row.get(0), row.get(1))?;
            }
            _ => {
                let row = tx
                    .query_one(&self.statement, &[json, &self.n])
                    .await
                    .map_err(pg(context))?;
                check_matched(context, self.n, row.get(0))?;
                // Without replica mode the target's own ON DELETE CASCADE may have removed
                // the rows already; the end state is the same.
                if !self.tolerate_missing {
                    check_matched(context, row.get(0), row.get(1))?;
                }
            }
        }
        Ok(())
    }
}

/// The parameter of a set-based run — its row images (its keys for a delete) as one JSON
/// array — and how many it holds.
fn run_parameter(kind: Kind, events: &[&Event]) -> (String, i64) {
    let parts: Vec<&str> = events
        .iter()
        .filter_map(|e| match kind {
            Kind::Delete => e.key.as_deref().map(|k| k.get()),
            _ => e.data.as_deref().map(|d| d.get()),
        })
        .collect();
    let n = parts.len() as i64;
    (json_array(parts.into_iter()), n)
}

/// Runs sent to the server whose results are not read yet, in the order sent. A run is
/// sent by the first poll of its statement's future (tokio-postgres writes the Bind/Execute
/// then), so runs reach the server in the order given to [`InFlight::send`] and run in it;
/// the server works on them while the caller builds the next. After a failure the server
/// refuses the rest of the transaction, so the first error in order is the cause.
#[derive(Default)]
struct InFlight<'a> {
    runs: Vec<RunFuture<'a>>,
}

type RunFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApplyError>> + Send + 'a>>;

impl<'a> InFlight<'a> {
    fn len(&self) -> usize {
        self.runs.len()
    }

    /// Sends `run` without waiting for its result.
    async fn send(&mut self, tx: &'a deadpool_postgres::Transaction<'_>, run: SetRun) {
        let tx: &'a Transaction<'_> = tx;
        let mut fut: RunFuture<'a> = Box::pin(async move { run.execute(tx).await });
        if let std::task::Poll::Ready(r) = futures_util::poll!(fut.as_mut()) {
            fut = Box::pin(std::future::ready(r));
        }
        self.runs.push(fut);
    }

    /// Waits for every run sent; the first error in order.
    async fn finish(&mut self) -> Result<(), ApplyError> {
        let runs = std::mem::take(&mut self.runs);
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .collect()
    }
}

/// How many enum label renames the applier keeps for writers that raced them
/// ([`DdlState::renamed_labels`]).
const RENAMED_LABELS_KEPT: usize = 64;

/// Versions applied before their schema event, and the target's keys before the first of
/// them (`ddl_applied.early`, kept from batch to batch until the events arrive).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct EarlyVersions {
    versions: Vec<i64>,
    keys: HashMap<String, Vec<String>>,
    /// Enum labels renamed by the last versions applied: [`DdlState::renamed_labels`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    renamed_labels: Vec<(u32, String, String)>,
    /// Columns renamed or dropped by the versions applied early: [`DdlState::columns_changed`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    columns_changed: Vec<ColumnChange>,
    /// Columns added by the versions applied early: [`DdlState::columns_added`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    columns_added: Vec<ColumnAdded>,
    /// Tables renamed by the versions applied early: [`DdlState::tables_renamed`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tables_renamed: Vec<TableRenamed>,
}

/// A table renamed by a schema version: (the version, the source table's OID — 0 when the
/// statement does not say —, its target name before, after; each quoted and qualified).
type TableRenamed = (i64, u32, String, String);

/// `table` (quoted and qualified; source OID `oid` when known) under the name the renames
/// in `renamed` gave it since (through each one after), when the target has no table of
/// its name: rows written between a rename and its schema event carry the new name already
/// (diffing mode), and a name may be another table's by then (tables swapped). By OID where
/// both say it.
async fn renamed_if_gone(
    tx: &Transaction<'_>,
    renamed: &std::sync::Mutex<Vec<TableRenamed>>,
    table: String,
    oid: Option<u32>,
) -> Result<String, ApplyError> {
    let renamed = match renamed.lock() {
        Ok(r) if !r.is_empty() => r.clone(),
        _ => return Ok(table),
    };
    let there: bool = tx
        .query_one("select pg_catalog.to_regclass($1) is not null", &[&table])
        .await
        .map_err(pg("reading whether a table is there"))?
        .get(0);
    Ok(if there {
        table
    } else {
        renamed_since(&renamed, &table, oid)
    })
}

/// [`renamed_if_gone`]'s renames, whether or not the table is there.
fn renamed_since(renamed: &[TableRenamed], table: &str, oid: Option<u32>) -> String {
    let mut name = table.to_string();
    for (_, of, from, to) in renamed {
        let same = match (oid, *of) {
            (Some(a), b) if b != 0 => a == b,
            _ => true,
        };
        if *from == name && same {
            name = to.clone();
        }
    }
    name
}

/// A column added by a schema version: (the version, the target table's OID, its name).
type ColumnAdded = (i64, u32, String);

/// A column renamed or dropped by a schema version: (the version, the target table's OID,
/// the column's name, its new name — `None` when dropped).
type ColumnChange = (i64, u32, String, Option<String>);

/// Schema versions of a batch not applied yet, and the version applied.
struct DdlState<'a> {
    pending: Vec<&'a DdlVersion>,
    applied: i64,
    /// Target tables seen with their mirror's extra columns in this batch: remembered once
    /// it commits (an ALTER that added them may still roll back).
    extra_columns_seen: Vec<String>,
    /// Columns renamed or dropped by versions applied before their schema event, until it:
    /// rows written before a version, applied after it (they needed it: a column it added),
    /// name those columns as they were called — see [`as_changed_since`]. (Shared with the
    /// runs' steps, which read it at each try.)
    columns_changed: std::sync::Arc<std::sync::Mutex<Vec<ColumnChange>>>,
    /// Columns added by versions applied before their schema event, until it: their values
    /// on the target are the table's own (NULL, a default) until the source's arrive, and
    /// a keyless table's rows written before the event that name them are found without
    /// them (a column dropped and added again under its name: the retype by copy of
    /// diffing mode, whose values the look queues again after the event). (Shared with the
    /// runs' steps.)
    columns_added: std::sync::Arc<std::sync::Mutex<Vec<ColumnAdded>>>,
    /// Tables renamed by versions applied before their schema event, until it: rows written
    /// before the rename name the table as it was called (the batch names tables as the
    /// target has them at that point of the stream), and are applied to it under its new
    /// name. (Shared with the runs' steps, which read it at each try.)
    tables_renamed: std::sync::Arc<std::sync::Mutex<Vec<TableRenamed>>>,
    /// Versions applied before their schema event (a run needed them) whose event is still
    /// ahead in the batch.
    early: Vec<i64>,
    /// The target's keys (table → key columns) before the first of `early` was applied. Up
    /// to a version's schema event, a table's row trigger is the one made before the change
    /// (the source makes it again with the event: at once in event-trigger mode, when
    /// recording the version in diffing mode), so those rows carry the key of before.
    keys_before: std::sync::Arc<std::sync::Mutex<HashMap<String, Vec<String>>>>,
    /// `keys_before` by table OID, as read (names may change with each early version).
    keys_by_oid: Vec<(u32, Vec<String>)>,
    /// Enum labels renamed by the last versions applied (the enum's OID on the target, the
    /// old label, the new one; the latest [`RENAMED_LABELS_KEPT`]), kept across batches.
    /// `ALTER TYPE … RENAME VALUE` locks no table that uses the enum: a writer may still
    /// write the old label while it runs, and reach the stream after its schema event (its
    /// row's events get ids after the event's, its transaction commits after it). The
    /// value is the same (an enum value is its OID; the label is its text), so such a label
    /// the enum lacks now is written as its new name: [`DdlState::relabeled`].
    renamed_labels: Vec<(u32, String, String)>,
    /// Whether the target's enum (OID) has the label, as asked in this batch.
    labels_known: HashMap<(u32, String), bool>,
    /// The batch's tables as named on the target.
    tables: Vec<String>,
    /// Tables an initial load copied, with its snapshot: events (and a schema event's checks
    /// of rows) of transactions the copy saw are in the copy already.
    loaded: HashMap<(String, String), Snapshot>,
    /// The same by source OID: the events of a table renamed since name it as it was
    /// called then.
    loaded_by_oid: HashMap<u32, Snapshot>,
    /// Tables an initial load created (their source OIDs), with the last schema version
    /// the catalog it created them from holds: statements of those versions about them
    /// only are left out.
    created_at: HashMap<u32, i64>,
    /// The last schema version held by a catalog an initial load created types or tables
    /// from: statements of no table of versions up to it that find their work done there
    /// are left out.
    loaded_version: Option<i64>,
    /// Statements of no table of the versions up to it were taken by an initial load's
    /// prepare, or are held by what it created from its catalog: left out.
    objects_through: Option<i64>,
    /// Where a table this stream creates is recorded as complete (see [`Covered`]).
    covered: Covered,
}

/// A table the stream creates holds every row of it from its creation on: it is recorded
/// in `load_table` as done (with no snapshot: no event of it is in a copy), so an initial
/// load run later leaves it as it is — it would refuse it, holding rows it did not copy.
struct Covered {
    /// The internal schema, quoted.
    schema: String,
    source: String,
    target: String,
}

impl Covered {
    /// Forgets the tables statement `st` drops, if it is a `DROP TABLE`: before it runs. A
    /// table made again under that name is not the one recorded (nor the one a load copied).
    async fn dropping(
        &self,
        tx: &Transaction<'_>,
        version: i64,
        st: &ddlwatcher::Statement,
    ) -> Result<(), ApplyError> {
        let dropped = ddlwatcher::retarget::tables_dropped(&st.sql);
        if dropped.is_empty() {
            return Ok(());
        }
        let s = &self.schema;
        tx.execute(
            &format!(
                "delete from {s}.load_table l
                  using pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                  where l.source = $1 and l.target = $2
                    and c.oid = any(select pg_catalog.to_regclass(t) from pg_catalog.unnest($3::text[]) t)
                    and (l.schema_name, l.table_name) = (n.nspname::text, c.relname::text)"
            ),
            &[&self.source, &self.target, &dropped],
        )
        .await
        .map_err(pg(&format!(
            "schema version {version}: forgetting the load state of the tables it drops"
        )))?;
        Ok(())
    }

    /// Records the table statement `st` of `version` created, if it is a `CREATE TABLE`.
    async fn created(
        &self,
        tx: &Transaction<'_>,
        version: i64,
        st: &ddlwatcher::Statement,
    ) -> Result<(), ApplyError> {
        let ([oid], Some(written)) = (
            st.tables.as_slice(),
            ddlwatcher::retarget::table_created(&st.sql),
        ) else {
            return Ok(());
        };
        let s = &self.schema;
        tx.execute(
            &format!(
                "insert into {s}.load_table (source, target, schema_name, table_name, state, source_oid, finished_at)
                 select $1, $2, n.nspname, c.relname, 'done', $4, clock_timestamp()
                   from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                  where c.oid = pg_catalog.to_regclass($3)
                 on conflict (source, target, schema_name, table_name) do nothing"
            ),
            &[&self.source, &self.target, &written, oid],
        )
        .await
        .map_err(pg(&format!(
            "schema version {version}: recording {written}, created by the stream, as complete"
        )))?;
        Ok(())
    }
}

impl DdlState<'_> {
    /// The snapshot an initial load copied a table under: found by its source OID when
    /// known (events name a table renamed since as it was called then), else by its name
    /// on the target. What a transaction the snapshot saw did is in the copy already.
    fn copy_of(&self, oid: Option<u32>, schema: &str, name: &str) -> Option<&Snapshot> {
        oid.and_then(|o| self.loaded_by_oid.get(&o))
            .or_else(|| self.loaded.get(&(schema.to_string(), name.to_string())))
    }

    /// Runs `step`. While schema versions are pending, a version may be due before its own
    /// event: `step` then runs in a savepoint, and on a failure a pending version may explain
    /// (schema behind, or any failure but a lost connection: a value out of range for the
    /// old type, a label the enum lacks) it is rolled back, the next version applied, and
    /// `step` tried again.
    async fn run<F, Fut>(&mut self, tx: &Transaction<'_>, mut step: F) -> Result<(), ApplyError>
    where
        F: FnMut(bool) -> Fut,
        Fut: std::future::Future<Output = Result<(), ApplyError>>,
    {
        // The step's failure before any version was applied here: the cause to look at
        // first when applying versions does not cure it (each one applied ahead of its
        // event may make the step fail otherwise: a column it renamed, a table it dropped).
        let mut first: Option<String> = None;
        let mut tried: Vec<i64> = Vec::new();
        let uncured = |message: String, first: &Option<String>, tried: &[i64]| match first {
            Some(f) if *f != message => {
                let tried: Vec<String> = tried.iter().map(|v| v.to_string()).collect();
                format!(
                    "{message} (schema version(s) {} applied ahead of their events to cure \
                     the first failure, which they did not: {f})",
                    tried.join(", ")
                )
            }
            _ => message,
        };
        loop {
            if self.pending.is_empty() {
                return step(false).await.map_err(|e| match e {
                    ApplyError::Failed { message } => ApplyError::Failed {
                        message: uncured(message, &first, &tried),
                    },
                    ApplyError::SchemaBehind { message } => ApplyError::SchemaBehind {
                        message: uncured(message, &first, &tried),
                    },
                    other => other,
                });
            }
            tx.batch_execute("savepoint pgteleport_run")
                .await
                .map_err(pg("savepoint"))?;
            match step(true).await {
                Ok(()) => {
                    return tx
                        .batch_execute("release savepoint pgteleport_run")
                        .await
                        .map_err(pg("savepoint"));
                }
                Err(ApplyError::SchemaBehind { message } | ApplyError::Failed { message }) => {
                    tx.batch_execute("rollback to savepoint pgteleport_run")
                        .await
                        .map_err(pg("savepoint"))?;
                    if self.renames_made_first(tx).await? {
                        // Tried again under the names the target has already.
                        continue;
                    }
                    let version = self.pending[0].version;
                    tracing::debug!(%message, version, "applying a schema version early");
                    if self.early.is_empty() {
                        self.remember_keys(tx).await?;
                    }
                    // A version that fails here may fail only because it came early: the
                    // step's own failure is named too (the cause to look at first).
                    let message = uncured(message, &first, &tried);
                    first.get_or_insert_with(|| message.clone());
                    self.apply_next(tx).await.map_err(|e| match e {
                        ApplyError::Failed { message: failed } => ApplyError::Failed {
                            message: format!(
                                "{failed} (applied ahead of its schema event because this failed without it: {message})"
                            ),
                        },
                        other => other,
                    })?;
                    tried.push(version);
                    self.early.push(version);
                    self.name_remembered_keys(tx).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Table `table` (quoted and qualified; source OID `oid` when known) under the name the
    /// target has it now: as it is, or as the renames of versions applied early and then
    /// those of the pending versions name it (renamed on the target first).
    async fn name_on_target(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        oid: Option<u32>,
    ) -> Result<String, ApplyError> {
        let there = "select pg_catalog.to_regclass($1) is not null";
        if checked(tx, there, &[&table]).await? != Some(false) {
            return Ok(table.to_string());
        }
        let renamed = self
            .tables_renamed
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let mut name = renamed_since(&renamed, table, oid);
        for st in self.pending.iter().flat_map(|v| &v.statements) {
            if let Some((from, to)) = ddlwatcher::retarget::relation_renamed(&st.sql) {
                if qualified(&from.0, &from.1) == name {
                    name = qualified(&to.0, &to.1);
                }
            }
        }
        Ok(name)
    }

    /// Column and table renames of the pending versions that the target has made already
    /// (run there first: the old name gone, the new one there), recorded as if their
    /// versions were applied early (`columns_changed`, `tables_renamed`: rows written
    /// before them name the old name, and go under the new one) — without applying them,
    /// nor the versions before them, which may need rows still to come (a key added once
    /// duplicates are deleted). Whether one was recorded that was not before.
    async fn renames_made_first(&mut self, tx: &Transaction<'_>) -> Result<bool, ApplyError> {
        let mut found = Vec::new();
        let mut tables = Vec::new();
        for v in &self.pending {
            for st in v.statements.iter().filter(|s| s.transactional) {
                if let Some((from, to)) = ddlwatcher::retarget::relation_renamed(&st.sql) {
                    let (from, to) = (qualified(&from.0, &from.1), qualified(&to.0, &to.1));
                    if relation_renamed_there(tx, &from, &to).await? {
                        let oid = st.tables.first().copied().unwrap_or(0);
                        tables.push((v.version, oid, from, to));
                    }
                }
                for (table, old, new) in ddlwatcher::retarget::column_renames_and_drops(&st.sql) {
                    let Some(new) = new else { continue };
                    if let Some(oid) = column_renamed_there(tx, &table, &old, &new).await? {
                        found.push((v.version, oid, old, Some(new)));
                    }
                }
            }
        }
        let mut recorded = false;
        if let Ok(mut renamed) = self.tables_renamed.lock() {
            for t in tables {
                if !renamed.contains(&t) {
                    tracing::info!(
                        version = t.0,
                        table = %t.2,
                        to = %t.3,
                        "rows name a table by its old name, which the target has renamed already (the version's rename run there first): applied under its new name"
                    );
                    renamed.push(t);
                    recorded = true;
                }
            }
            // In the stream's order: a table renamed twice goes through each.
            renamed.sort_by_key(|t| t.0);
        }
        let Ok(mut changed) = self.columns_changed.lock() else {
            return Ok(recorded);
        };
        for f in found {
            if !changed.contains(&f) {
                tracing::info!(
                    version = f.0,
                    column = %f.2,
                    to = %f.3.as_deref().unwrap_or_default(),
                    "rows name a column by its old name, which the target has renamed already (the version's rename run there first): applied under its new name"
                );
                changed.push(f);
                recorded = true;
            }
        }
        Ok(recorded)
    }

    /// Reads the target's key of every table in the schemas of the batch's tables (before a
    /// version is applied early: the key the rows up to its schema event were captured
    /// with), by table OID: a version may rename a table, and the batch names it as it is
    /// called after the change.
    async fn remember_keys(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let rows = tx
            .query(
                &format!(
                    "select c.oid, {} from pg_catalog.pg_class c
                      where c.relkind in ('r', 'p')
                        and c.relnamespace in (select n.oid from pg_catalog.pg_namespace n
                                                where n.nspname = any(select (pg_catalog.parse_ident(t))[1]
                                                                        from pg_catalog.unnest($1::text[]) t))",
                    ddlwatcher::key_columns_sql("c.oid")
                ),
                &[&self.tables],
            )
            .await
            .map_err(pg("reading the keys of the batch's tables"))?;
        self.keys_by_oid = rows
            .iter()
            .map(|r| (r.get::<_, u32>(0), r.get::<_, Vec<String>>(1)))
            .filter(|(_, k)| !k.is_empty())
            .collect();
        Ok(())
    }

    /// Names the keys [`Self::remember_keys`] read by the tables' names now (after an
    /// early version renamed some).
    async fn name_remembered_keys(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        if self.keys_by_oid.is_empty() {
            return Ok(());
        }
        let oids: Vec<u32> = self.keys_by_oid.iter().map(|(o, _)| *o).collect();
        let rows = tx
            .query(
                "select c.oid, n.nspname::text, c.relname::text
                   from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                  where c.oid = any($1::oid[])",
                &[&oids],
            )
            .await
            .map_err(pg("naming the keys of the batch's tables"))?;
        let names: HashMap<u32, String> = rows
            .iter()
            .map(|r| (r.get(0), qualified(r.get(1), r.get(2))))
            .collect();
        if let Ok(mut keys) = self.keys_before.lock() {
            *keys = self
                .keys_by_oid
                .iter()
                .filter_map(|(o, k)| Some((names.get(o)?.clone(), k.clone())))
                .collect();
        }
        Ok(())
    }

    /// What is kept of the versions applied early for the next batch (`None`: nothing).
    fn early_state(&self) -> Option<String> {
        let columns_changed = self
            .columns_changed
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let columns_added = self
            .columns_added
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let tables_renamed = self
            .tables_renamed
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        if self.early.is_empty()
            && self.renamed_labels.is_empty()
            && columns_changed.is_empty()
            && columns_added.is_empty()
            && tables_renamed.is_empty()
        {
            return None;
        }
        let keys = self
            .keys_before
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        serde_json::to_string(&EarlyVersions {
            versions: self.early.clone(),
            keys,
            renamed_labels: self.renamed_labels.clone(),
            columns_changed,
            columns_added,
            tables_renamed,
        })
        .ok()
    }

    /// `run` with the enum labels of its row images that a version renamed, and that the
    /// target's enum lacks now, written by their new names (see `renamed_labels`); `None`
    /// when no image holds one.
    async fn relabeled(
        &mut self,
        tx: &Transaction<'_>,
        target: &TargetColumns,
        run: &[&Event],
    ) -> Result<Option<Vec<Event>>, ApplyError> {
        if self.renamed_labels.is_empty() {
            return Ok(None);
        }
        let columns: Vec<(&String, u32)> = target
            .enums
            .iter()
            .filter(|(_, t)| self.renamed_labels.iter().any(|(o, _, _)| o == *t))
            .map(|(c, t)| (c, *t))
            .collect();
        if columns.is_empty() {
            return Ok(None);
        }
        // A quick look first: no image that holds an old label as a JSON string.
        let olds: Vec<String> = self
            .renamed_labels
            .iter()
            .filter(|(o, _, _)| columns.iter().any(|(_, t)| t == o))
            .filter_map(|(_, old, _)| serde_json::to_string(old).ok())
            .collect();
        let may_hold = |e: &&Event| {
            [&e.data, &e.key]
                .into_iter()
                .flatten()
                .any(|image| olds.iter().any(|o| image.get().contains(o.as_str())))
        };
        if !run.iter().any(may_hold) {
            return Ok(None);
        }
        // The renamed labels each image holds (column's enum, old label).
        let mut found: Vec<(u32, String)> = Vec::new();
        for e in run {
            for image in [&e.data, &e.key].into_iter().flatten() {
                let labels = crate::wire::object_texts_of(image, &columns).map_err(|err| {
                    ApplyError::BadRequest {
                        message: format!("event {}: a row image is not a JSON object: {err}", e.id),
                    }
                })?;
                for (column, label) in labels {
                    if self
                        .renamed_labels
                        .iter()
                        .any(|(o, old, _)| *o == column && *old == label)
                        && !found.contains(&(column, label.clone()))
                    {
                        found.push((column, label));
                    }
                }
            }
        }
        let mut gone: Vec<(u32, String)> = Vec::new();
        for (enum_oid, label) in found {
            let known = match self.labels_known.get(&(enum_oid, label.clone())) {
                Some(k) => *k,
                None => {
                    let k: bool = tx
                        .query_one(
                            "select exists (select 1 from pg_catalog.pg_enum e where e.enumtypid = $1 and e.enumlabel = $2)",
                            &[&enum_oid, &label],
                        )
                        .await
                        .map_err(pg("reading an enum's labels"))?
                        .get(0);
                    self.labels_known.insert((enum_oid, label.clone()), k);
                    k
                }
            };
            if !known {
                gone.push((enum_oid, label));
            }
        }
        if gone.is_empty() {
            return Ok(None);
        }
        let renamed = |column: &str, v: &serde_json::value::RawValue| -> crate::wire::Edit {
            let Some((_, enum_oid)) = columns.iter().find(|(c, _)| *c == column) else {
                return crate::wire::Edit::Keep;
            };
            let Ok(label) = serde_json::from_str::<String>(v.get()) else {
                return crate::wire::Edit::Keep;
            };
            if !gone.contains(&(*enum_oid, label.clone())) {
                return crate::wire::Edit::Keep;
            }
            // From the latest rename of that label (the one it has been gone since), its
            // name through the renames after it (a label renamed twice: the last name).
            let renames = &self.renamed_labels;
            let Some(from) = renames
                .iter()
                .rposition(|(o, old, _)| o == enum_oid && *old == label)
            else {
                return crate::wire::Edit::Keep;
            };
            let mut to = &renames[from].2;
            for (o, old, new) in &renames[from + 1..] {
                if o == enum_oid && old == to {
                    to = new;
                }
            }
            serde_json::to_string(to).map_or(crate::wire::Edit::Keep, crate::wire::Edit::Replace)
        };
        events_edited(run, renamed).map(Some)
    }

    /// The schema event of `version` reached: the versions up to it applied early are in
    /// their place now, and the rows after it were captured with the key they name.
    fn reached(&mut self, version: i64) {
        self.early.retain(|&v| v > version);
        if let Ok(mut c) = self.columns_changed.lock() {
            c.retain(|(v, ..)| *v > version);
        }
        if let Ok(mut c) = self.columns_added.lock() {
            c.retain(|(v, ..)| *v > version);
        }
        if let Ok(mut c) = self.tables_renamed.lock() {
            c.retain(|(v, ..)| *v > version);
        }
        if self.early.is_empty() {
            if let Ok(mut keys) = self.keys_before.lock() {
                keys.clear();
            }
        }
    }

    async fn apply_next(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let v = self.pending.remove(0);
        for (i, st) in v
            .statements
            .iter()
            .enumerate()
            .filter(|(_, s)| s.transactional)
        {
            // Tables an initial load created from a catalog that holds this version.
            if !st.tables.is_empty()
                && st
                    .tables
                    .iter()
                    .all(|oid| self.created_at.get(oid).is_some_and(|&at| v.version <= at))
            {
                tracing::info!(
                    version = v.version,
                    statement = %st.sql,
                    "statement left out: an initial load created the table from a catalog that holds this version"
                );
                continue;
            }
            if let Some(table) = &st.deletes_rows_of {
                // Rows the version took out of a table whose copy came after it: the copy
                // holds the table as the source had it then.
                let copied = self
                    .copy_of(st.tables.first().copied(), &table.0, &table.1)
                    .zip(v.txid)
                    .is_some_and(|(snap, txid)| snap.visible(txid));
                if copied {
                    tracing::info!(
                        version = v.version,
                        table = %qualified(&table.0, &table.1),
                        statement = %st.sql,
                        "statement left out: the table's initial load copied it after this version"
                    );
                    continue;
                }
            }
            if of_no_table(st) && self.objects_through >= Some(v.version) {
                // What it did is recorded below all the same (a label renamed: the events
                // before it carry the old name).
                tracing::info!(
                    version = v.version,
                    statement = %st.sql,
                    "statement left out: an initial load's prepare took it, or created its objects from a catalog that holds it"
                );
            } else {
                let done_by_load = st.tables.is_empty() && self.loaded_version >= Some(v.version);
                self.covered.dropping(tx, v.version, st).await?;
                // What comes after it: the rest of this version, and the pending ones.
                let later: Vec<&ddlwatcher::Statement> = v.statements[i + 1..]
                    .iter()
                    .chain(self.pending.iter().flat_map(|p| &p.statements))
                    .collect();
                run_statement(tx, v.version, st, &later, done_by_load).await?;
                self.covered.created(tx, v.version, st).await?;
            }
            if let Some((from, to)) = ddlwatcher::retarget::relation_renamed(&st.sql) {
                if let Ok(mut r) = self.tables_renamed.lock() {
                    let oid = st.tables.first().copied().unwrap_or(0);
                    r.push((
                        v.version,
                        oid,
                        qualified(&from.0, &from.1),
                        qualified(&to.0, &to.1),
                    ));
                }
            }
            for (table, old, new) in ddlwatcher::retarget::column_renames_and_drops(&st.sql) {
                let oid = table_oid(tx, &table).await?;
                if let (Some(oid), Ok(mut c)) = (oid, self.columns_changed.lock()) {
                    c.push((v.version, oid, old, new));
                }
            }
            for (table, column) in ddlwatcher::retarget::columns_added(&st.sql) {
                let oid = table_oid(tx, &table).await?;
                if let (Some(oid), Ok(mut c)) = (oid, self.columns_added.lock()) {
                    c.push((v.version, oid, column));
                }
            }
            if let Some((name, old, new)) = ddlwatcher::retarget::enum_label_rename(&st.sql) {
                let oid: Option<u32> = tx
                    .query_one("select pg_catalog.to_regtype($1)::oid", &[&name])
                    .await
                    .map_err(pg("reading a renamed enum"))?
                    .get(0);
                if let Some(oid) = oid {
                    self.renamed_labels.push((oid, old, new));
                    let over = self
                        .renamed_labels
                        .len()
                        .saturating_sub(RENAMED_LABELS_KEPT);
                    self.renamed_labels.drain(..over);
                    self.labels_known.clear();
                }
            }
        }
        tracing::info!(
            version = v.version,
            statements = v.statements.len(),
            "schema version applied"
        );
        self.applied = v.version;
        Ok(())
    }
}

/// The checks of rows a schema event carries (`checks`): SQL that fails when the target's
/// rows of a table are not the source's at the event.
fn schema_checks(event: &Event) -> Result<Vec<ddlwatcher::ddl::RowsCheck>, ApplyError> {
    #[derive(serde::Deserialize)]
    struct Payload {
        #[serde(default)]
        checks: Vec<ddlwatcher::ddl::RowsCheck>,
    }
    let Some(data) = event.data.as_deref() else {
        return Ok(Vec::new());
    };
    serde_json::from_str::<Payload>(data.get())
        .map(|p| p.checks)
        .map_err(|e| ApplyError::BadRequest {
            message: format!("schema event {}: unreadable checks: {e}", event.id),
        })
}

/// A statement about types, enum labels, schemas, functions — objects of no table — that an
/// initial load's prepare takes ahead of the stream (`take_object_versions`). A table's
/// drop is not one of them, though versions stored before it named its tables carry none:
/// the stream runs it in its place, after the statements of that table before it.
pub(crate) fn of_no_table(st: &ddlwatcher::Statement) -> bool {
    st.tables.is_empty() && !st.sql.starts_with("drop table ")
}

/// SQLSTATEs of a schema statement that finds its work done: an object it creates exists,
/// one it renames or drops is gone, an enum label it renames has its new name.
fn finds_its_work_done(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    made_already(e)
        || [
            SqlState::UNDEFINED_OBJECT,
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_COLUMN,
            SqlState::UNDEFINED_FUNCTION,
            SqlState::INVALID_PARAMETER_VALUE,
        ]
        .iter()
        .any(|c| e.code() == Some(c))
}

/// Runs `work` in a savepoint rolled back afterwards, whatever it did (a probe made, a
/// check that failed): the batch's transaction is left as it was. The inner error is
/// `work`'s.
async fn undone<T>(
    tx: &Transaction<'_>,
    work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<Result<T, tokio_postgres::Error>, ApplyError> {
    tx.batch_execute("savepoint pgteleport_probe")
        .await
        .map_err(pg("savepoint"))?;
    let done = work.await;
    tx.batch_execute("rollback to savepoint pgteleport_probe; release savepoint pgteleport_probe")
        .await
        .map_err(pg("savepoint"))?;
    Ok(done)
}

/// Runs `make` (statements that make a probe and the statement's object on it), then reads
/// what the target has with `there` and what the probe got with `made`, each a query of
/// one row at most and its parameters, described by `describe`. When the two differ, the
/// `later` statements (the stream's later changes of the table, made onto the probe) are run
/// on the probe one by one and it is read after each: a migration run on the target first
/// may be further on there than the stream (a column added, then retyped), and the first
/// state that is the target's counts. A later statement the probe refuses is passed over (an
/// index or key of a name the target's table has: what is compared is read by `made`). All
/// of it undone afterwards. `(there, made)`, what differs said of the object as the
/// statement makes it; the inner error: no probe could be made.
async fn probed(
    tx: &Transaction<'_>,
    make: &str,
    there: (&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]),
    made: (&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]),
    describe: impl Fn(tokio_postgres::Row) -> String,
    later: &[String],
) -> Result<Result<(Option<String>, Option<String>), tokio_postgres::Error>, ApplyError> {
    undone(tx, async {
        tx.batch_execute(make).await?;
        let t = tx.query_opt(there.0, there.1).await?.map(&describe);
        let m = tx.query_opt(made.0, made.1).await?.map(&describe);
        let mut now = m.clone();
        for step in later {
            if t.is_none() || now == t {
                break;
            }
            tx.batch_execute("savepoint pgteleport_step").await?;
            if tx.batch_execute(step).await.is_err() {
                tx.batch_execute("rollback to savepoint pgteleport_step")
                    .await?;
                continue;
            }
            tx.batch_execute("release savepoint pgteleport_step")
                .await?;
            now = tx.query_opt(made.0, made.1).await?.map(&describe);
        }
        Ok((t.clone(), if now == t { now } else { m }))
    })
    .await
}

/// The name of the probes that a statement finding its work done is compared on (made and
/// rolled back in a savepoint).
const PROBE_NAME: &str = "pgteleport_probe";

/// The `later` statements that change table `table` (as written, each part quoted), made to
/// change the probe `onto` (schema, name) instead: see [`probed`].
fn later_steps(table: &str, onto: (&str, &str), later: &[&ddlwatcher::Statement]) -> Vec<String> {
    later
        .iter()
        .filter_map(|l| ddlwatcher::retarget::altered_onto(&l.sql, table, onto))
        .collect()
}

/// What a probe found: `Ok(the target's definition)` when it is the one the statement
/// makes, `Err(both named)` when not, `None` when either is missing or no probe was made.
fn compared(
    st: &ddlwatcher::Statement,
    what: &str,
    seen: Result<(Option<String>, Option<String>), tokio_postgres::Error>,
) -> Option<Result<String, String>> {
    match seen {
        Ok((Some(there), Some(made))) if there == made => Some(Ok(there)),
        Ok((Some(there), Some(made))) => Some(Err(format!(
            "The target's {what} is `{there}`, the source's `{made}`: make it as the source's \
             (or drop it: the batch then makes it)"
        ))),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %db::describe(&e), statement = %st.sql, "no probe of the {what}");
            None
        }
    }
}

/// Whether the column statement `st` (`ALTER TABLE … ADD COLUMN`, which failed: the column
/// is there) adds is the one the target's table has: the statement is run on an empty copy
/// of the table without that column (a temporary probe, rolled back) and the two columns'
/// type, collation, default or generation, identity and NOT NULL compared — as made, or as
/// the `later` statements of the table change it (see [`probed`]: the column added, then
/// retyped, on the target first). `Ok(that column)` when the same, `Err(what differs)`;
/// `None` when not such a statement, or no probe could be made (no TEMP privilege, a
/// generated column computed from it…).
async fn column_there_already(
    tx: &Transaction<'_>,
    st: &ddlwatcher::Statement,
    later: &[&ddlwatcher::Statement],
    there_as: Option<&str>,
) -> Result<Option<Result<String, String>>, ApplyError> {
    const PROBE: (&str, &str) = ("pg_temp", PROBE_NAME);
    let Some((table, column, on_probe)) = ddlwatcher::retarget::column_added_onto(&st.sql, PROBE)
    else {
        return Ok(None);
    };
    // The target's column: of the statement's name, or of the name a later rename gives it.
    let there = there_as.unwrap_or(&column).to_string();
    let probe = format!("{}.{}", PROBE.0, PROBE.1);
    let describe = |r: tokio_postgres::Row| {
        let (ty, not_null, collation, identity, generated, expr): (
            String,
            bool,
            Option<String>,
            String,
            String,
            Option<String>,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let mut d = ty;
        // The type's own collation (`default`) is not said.
        if let Some(c) = collation.filter(|c| c != "default") {
            d.push_str(&format!(" collate {}", quote_ident(&c)));
        }
        match (generated.as_str(), expr) {
            ("s", Some(e)) => d.push_str(&format!(" generated always as ({e}) stored")),
            (_, Some(e)) => d.push_str(&format!(" default {e}")),
            _ => {}
        }
        match identity.as_str() {
            "a" => d.push_str(" generated always as identity"),
            "d" => d.push_str(" generated by default as identity"),
            _ => {}
        }
        if not_null {
            d.push_str(" not null");
        }
        d
    };
    let make = format!(
        "create temp table {probe} (like {table} including defaults including generated including identity);
         alter table {probe} drop column if exists {}; {on_probe}",
        quote_ident(&column)
    );
    let read = "select pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, co.collname::text,
                       a.attidentity::text, a.attgenerated::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
                  from pg_catalog.pg_attribute a
                  left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
                  left join pg_catalog.pg_collation co on co.oid = a.attcollation
                 where a.attrelid = pg_catalog.to_regclass($1) and a.attname = $2 and not a.attisdropped";
    let seen = probed(
        tx,
        &make,
        (read, &[&table, &there]),
        (read, &[&probe, &column]),
        describe,
        &later_steps(&table, PROBE, later),
    )
    .await?;
    let what = format!("column {} of {table}", quote_ident(&there));
    Ok(compared(st, &what, seen).map(|r| r.map(|d| format!("{} {d}", quote_ident(&there)))))
}

/// The OID of the target's table `table` (quoted and qualified) when it lacks column `old`
/// and has column `new`: the rename of `old` to `new` done there already. `None` otherwise,
/// or when the table is missing.
async fn column_renamed_there(
    tx: &Transaction<'_>,
    table: &str,
    old: &str,
    new: &str,
) -> Result<Option<u32>, ApplyError> {
    let query = "select c.oid from pg_catalog.pg_class c
                  where c.oid = pg_catalog.to_regclass($1)
                    and not exists (select from pg_catalog.pg_attribute a
                                     where a.attrelid = c.oid and a.attname = $2 and not a.attisdropped)
                    and exists (select from pg_catalog.pg_attribute a
                                 where a.attrelid = c.oid and a.attname = $3 and not a.attisdropped)";
    // Undone, as [`checked`]: a failure is no rename.
    Ok(
        match undone(tx, tx.query_opt(query, &[&table, &old, &new])).await? {
            Ok(row) => row.map(|r| r.get(0)),
            Err(e) => {
                tracing::debug!(error = %db::describe(&e), table, "check failed");
                None
            }
        },
    )
}

/// Whether the target has relation `from` (quoted and qualified) as `to` already: `from`
/// gone and `to` there.
async fn relation_renamed_there(
    tx: &Transaction<'_>,
    from: &str,
    to: &str,
) -> Result<bool, ApplyError> {
    let query =
        "select pg_catalog.to_regclass($1) is null and pg_catalog.to_regclass($2) is not null";
    Ok(checked(tx, query, &[&from, &to]).await? == Some(true))
}

/// The names table `table` (quoted and qualified) has in the stream: its columns' later
/// renames may name it as it was called before a later rename (a statement run on the
/// later name of a table renamed on the target first) or after.
fn table_names(table: &str, later: &[&ddlwatcher::Statement]) -> Vec<String> {
    let mut names = vec![table.to_string()];
    for (from, to) in later
        .iter()
        .filter_map(|l| ddlwatcher::retarget::relation_renamed(&l.sql))
    {
        let (from, to) = (qualified(&from.0, &from.1), qualified(&to.0, &to.1));
        if names.contains(&from) || names.contains(&to) {
            names.extend([from, to]);
        }
    }
    names
}

/// Statement `st` (`ALTER TABLE`, which failed: a column it names is missing) on the later
/// names of its columns, when `later` statements rename them and the target's table has
/// them under that later name already, not the old one (renamed on the target first: the
/// source retyped a column, then renamed it). `None` when no such rename helps.
async fn on_later_column_names(
    tx: &Transaction<'_>,
    st: &ddlwatcher::Statement,
    later: &[&ddlwatcher::Statement],
) -> Result<Option<ddlwatcher::Statement>, ApplyError> {
    let Some(table) = ddlwatcher::retarget::altered_table(&st.sql) else {
        return Ok(None);
    };
    let moved = later_column_names(tx, &table, later).await?;
    if moved.is_empty() {
        return Ok(None);
    }
    Ok(ddlwatcher::retarget::columns_renamed(&st.sql, &moved)
        .map(|sql| ddlwatcher::Statement { sql, ..st.clone() }))
}

/// The columns of table `table` (quoted and qualified) that `later` statements rename and
/// that the target's table has under their later name already, not the old one (renamed on
/// the target first): (first name, last name) each.
async fn later_column_names(
    tx: &Transaction<'_>,
    table: &str,
    later: &[&ddlwatcher::Statement],
) -> Result<Vec<(String, String)>, ApplyError> {
    let names = table_names(table, later);
    // Each column's first name to its last.
    let mut renames: Vec<(String, String)> = Vec::new();
    for l in later {
        for (t, old, new) in ddlwatcher::retarget::column_renames_and_drops(&l.sql) {
            if !names.contains(&t) {
                continue;
            }
            match renames.iter_mut().find(|(_, last)| *last == old) {
                Some(r) => match new {
                    Some(n) => r.1 = n,
                    None => r.1 = String::new(),
                },
                None => {
                    if let Some(n) = new {
                        renames.push((old, n));
                    }
                }
            }
        }
    }
    let mut moved = Vec::new();
    for (first, last) in renames.into_iter().filter(|(_, last)| !last.is_empty()) {
        if column_renamed_there(tx, table, &first, &last)
            .await?
            .is_some()
        {
            moved.push((first, last));
        }
    }
    Ok(moved)
}

/// Whether the column statement `st` adds (`ALTER TABLE … ADD COLUMN c`) is on the target
/// already under the name a `later` rename gives it (the column added, then renamed, on the
/// target first): the target's table lacks `c` and has that name. Then compared as by
/// [`column_there_already`]: `Some(Ok)` leaves the statement out (run, it would add a second
/// column, and the rename would fail), `Some(Err)` holds the batch naming both.
async fn column_there_under_a_later_name(
    tx: &Transaction<'_>,
    st: &ddlwatcher::Statement,
    later: &[&ddlwatcher::Statement],
) -> Result<Option<Result<String, String>>, ApplyError> {
    if !later
        .iter()
        .any(|l| l.sql.to_ascii_lowercase().contains(" rename "))
    {
        return Ok(None);
    }
    let Some((table, column)) = ddlwatcher::retarget::columns_added(&st.sql)
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let names = table_names(&table, later);
    let mut name = column.clone();
    // Names whose column a later statement drops or renames away: a column of that name
    // the target has now is another one (a retype by copy: `x` dropped, `new_x` renamed
    // to `x`).
    let mut freed = Vec::new();
    for l in later {
        for (t, old, new) in ddlwatcher::retarget::column_renames_and_drops(&l.sql) {
            if !names.contains(&t) {
                continue;
            }
            if old == name {
                match new {
                    Some(n) => name = n,
                    None => return Ok(None),
                }
            } else {
                freed.push(old);
            }
        }
    }
    if name == column || freed.contains(&name) {
        return Ok(None);
    }
    if column_renamed_there(tx, &table, &column, &name)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    column_there_already(tx, st, later, Some(&name)).await
}

/// Whether the index or constraint that statement `st` makes (`CREATE INDEX name …`,
/// `ALTER TABLE … ADD CONSTRAINT name …`, which failed: one of its name is there) is the one
/// the target's table has under that name: the statement is run, under another name, on an
/// empty copy of the table's columns made beside it (a probe rolled back: a foreign key may
/// not refer from a temporary table), and the two definitions compared (`pg_get_indexdef`
/// without the names, `pg_get_constraintdef`). As [`column_there_already`].
async fn object_there_already(
    tx: &Transaction<'_>,
    st: &ddlwatcher::Statement,
) -> Result<Option<Result<String, String>>, ApplyError> {
    use ddlwatcher::retarget::Made;
    const OBJECT: &str = "pgteleport_probe_object";
    let Some(m) = ddlwatcher::retarget::object_made_onto(&st.sql, PROBE_NAME, OBJECT) else {
        return Ok(None);
    };
    let make = format!(
        "create table {} (like {}); {}",
        m.probe_table, m.table, m.probe
    );
    let name: &str = &m.name;
    let (what, read) = match m.made {
        Made::Index => (
            "index",
            "select pg_catalog.pg_get_indexdef(i.indexrelid), pg_catalog.quote_ident(ic.relname::text),
                    pg_catalog.format('%I.%I', n.nspname, c.relname)
               from pg_catalog.pg_index i
               join pg_catalog.pg_class ic on ic.oid = i.indexrelid
               join pg_catalog.pg_class c on c.oid = i.indrelid
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              where i.indrelid = pg_catalog.to_regclass($1) and ic.relname = $2
                and ic.relnamespace = c.relnamespace",
        ),
        Made::Constraint => (
            "constraint",
            "select pg_catalog.pg_get_constraintdef(oid) from pg_catalog.pg_constraint
              where conrelid = pg_catalog.to_regclass($1) and conname = $2",
        ),
    };
    // An index's definition as if made under the statement's names.
    let as_made = |r: tokio_postgres::Row| -> String {
        let def: String = r.get(0);
        if m.made == Made::Constraint {
            return def;
        }
        let (index, table): (String, String) = (r.get(1), r.get(2));
        let to = format!(" INDEX {} ON {} USING ", quote_ident(name), m.table);
        def.replacen(&format!(" INDEX {index} ON ONLY {table} USING "), &to, 1)
            .replacen(&format!(" INDEX {index} ON {table} USING "), &to, 1)
    };
    let seen = probed(
        tx,
        &make,
        (read, &[&m.table, &name]),
        (read, &[&m.probe_table, &OBJECT]),
        as_made,
        &[],
    )
    .await?;
    let what = format!("{what} {} of {}", quote_ident(name), m.table);
    Ok(compared(st, &what, seen))
}

/// An attribute `a` (`pg_attribute`; its type `ty`, a `pg_type`) as `name type [collate
/// c]`, its collation said when not its type's: a table's column, a composite type's
/// attribute.
fn attribute_sql(ty: &str) -> String {
    format!(
        "pg_catalog.quote_ident(a.attname::text) || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
         || case when a.attcollation <> {ty}.typcollation
                 then ' collate ' || a.attcollation::pg_catalog.regcollation::text else '' end"
    )
}

/// Whether the table, type or view that statement `st` makes (`CREATE TABLE`, `CREATE
/// TYPE`, `CREATE DOMAIN`, `CREATE VIEW`, which failed: one of its name is there) is the one
/// the target has: the statement is run under another name in the same schema (rolled
/// back) and the two compared — a table's columns (names, types, collations, defaults or
/// generation, identity, NOT NULL; and the target's must be empty: the stream brings every
/// row of a table it makes), an enum's labels in order, a composite type's attributes, a
/// domain's base type, collation, default, NOT NULL and checks, a view's query and options.
/// As [`column_there_already`].
async fn made_as_there_already(
    tx: &Transaction<'_>,
    st: &ddlwatcher::Statement,
    later: &[&ddlwatcher::Statement],
) -> Result<Option<Result<String, String>>, ApplyError> {
    use ddlwatcher::retarget::MadeKind;
    let Some(m) = ddlwatcher::retarget::object_made_as(&st.sql, PROBE_NAME) else {
        return Ok(None);
    };
    let (what, read) = match m.kind {
        MadeKind::Type => (
            "type",
            format!(
                "select case t.typtype
                      when 'e' then 'enum (' || coalesce((
                          select pg_catalog.string_agg(pg_catalog.quote_literal(e.enumlabel::text), ', ' order by e.enumsortorder)
                            from pg_catalog.pg_enum e where e.enumtypid = t.oid), '') || ')'
                      when 'c' then '(' || coalesce((
                          select pg_catalog.string_agg({attribute}, ', ' order by a.attnum)
                            from pg_catalog.pg_attribute a join pg_catalog.pg_type at on at.oid = a.atttypid
                           where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped), '') || ')'
                      when 'd' then 'domain over ' || pg_catalog.format_type(t.typbasetype, t.typtypmod)
                          || case when t.typcollation <> b.typcollation
                                  then ' collate ' || t.typcollation::pg_catalog.regcollation::text else '' end
                          || coalesce(' default ' || t.typdefault, '')
                          || case when t.typnotnull then ' not null' else '' end
                          || coalesce((select ' ' || pg_catalog.string_agg(d, ' ' order by d)
                                         from (select pg_catalog.pg_get_constraintdef(k.oid) as d
                                                 from pg_catalog.pg_constraint k where k.contypid = t.oid) s), '')
                      else 'of kind ' || t.typtype::text end
               from pg_catalog.pg_type t left join pg_catalog.pg_type b on b.oid = t.typbasetype
              where t.oid = pg_catalog.to_regtype($1)",
                attribute = attribute_sql("at")
            ),
        ),
        MadeKind::View => (
            "view",
            "select pg_catalog.pg_get_viewdef(c.oid) || coalesce(' with ' || c.reloptions::text, '')
               from pg_catalog.pg_class c where c.oid = pg_catalog.to_regclass($1) and c.relkind = 'v'"
                .to_string(),
        ),
        MadeKind::Table => (
            "table",
            format!(
                "select '(' || coalesce(pg_catalog.string_agg({attribute}
                        || case when a.attgenerated = 's'
                                then ' generated always as (' || pg_catalog.pg_get_expr(d.adbin, d.adrelid) || ') stored'
                                else coalesce(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '') end
                        || case a.attidentity when 'a' then ' generated always as identity'
                                              when 'd' then ' generated by default as identity' else '' end
                        || case when a.attnotnull then ' not null' else '' end,
                        ', ' order by a.attnum), '') || ')'
               from pg_catalog.pg_class c
               left join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
               left join pg_catalog.pg_type t on t.oid = a.atttypid
               left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
              where c.oid = pg_catalog.to_regclass($1) and c.relkind in ('r', 'p')
              group by c.oid",
                attribute = attribute_sql("t")
            ),
        ),
    };
    let read = read.as_str();
    // A table is compared as later statements change it too: see [`probed`].
    let later = match (m.kind, &m.table) {
        (MadeKind::Table, Some((schema, _))) => later_steps(&m.name, (schema, PROBE_NAME), later),
        _ => Vec::new(),
    };
    let seen = probed(
        tx,
        &m.probe,
        (read, &[&m.name]),
        (read, &[&m.probe_name]),
        |r| r.get(0),
        &later,
    )
    .await?;
    let what = format!("{what} {}", m.name);
    let same = compared(st, &what, seen);
    if m.kind == MadeKind::Table && matches!(same, Some(Ok(_))) {
        // The stream brings every row of a table it makes: one that holds rows is not it.
        let rows = format!("select exists (select from {})", m.name);
        if checked(tx, &rows, &[]).await? != Some(false) {
            return Ok(Some(Err(format!(
                "The target's {what} is the one the source makes, but holds rows: the stream brings \
                 every row of it — empty it (TRUNCATE) and the batch goes on"
            ))));
        }
    }
    Ok(same)
}

/// Statement `st` (which failed: a relation it names is missing) on the later names of the
/// relations it names, when `later` statements rename them and the target has them under
/// that later name already, not the old one (renamed on the target first: the source
/// changed its table, then renamed it). `None` when no such rename helps.
async fn on_later_names(
    tx: &Transaction<'_>,
    st: &ddlwatcher::Statement,
    later: &[&ddlwatcher::Statement],
) -> Result<Option<ddlwatcher::Statement>, ApplyError> {
    let mut renames: std::collections::BTreeMap<(String, String), (String, String)> =
        Default::default();
    for (from, to) in later
        .iter()
        .filter_map(|l| ddlwatcher::retarget::relation_renamed(&l.sql))
    {
        // A relation renamed twice: its first name goes to the last.
        let first = renames
            .iter()
            .find(|(_, v)| **v == from)
            .map(|(k, _)| k.clone());
        renames.insert(first.unwrap_or(from), to);
    }
    let mut moved = std::collections::BTreeMap::new();
    for (from, to) in renames {
        let (f, t) = (qualified(&from.0, &from.1), qualified(&to.0, &to.1));
        if relation_renamed_there(tx, &f, &t).await? {
            moved.insert(from, to);
        }
    }
    if moved.is_empty() {
        return Ok(None);
    }
    let map = ddlwatcher::SchemaMap::default().with_renames(moved);
    Ok(ddlwatcher::retarget::statement(&st.sql, &map)
        .ok()
        .filter(|sql| *sql != st.sql)
        .map(|sql| ddlwatcher::Statement { sql, ..st.clone() }))
}

/// The boolean query `query` answers, run undone (a failure: `None`, and a debug line).
async fn checked(
    tx: &Transaction<'_>,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<bool>, ApplyError> {
    Ok(match undone(tx, tx.query_one(query, params)).await? {
        Ok(r) => r.get(0),
        Err(e) => {
            tracing::debug!(error = %db::describe(&e), query, "check failed");
            None
        }
    })
}

/// Whether the rename statement `st` (which failed: what it renames is missing) finds its
/// work done — the old name gone and the new one there (the change run on the target
/// first). A column, constraint, attribute or label is looked for in its table or type
/// under its name and under the names `later` statements give it (the source renamed a
/// column, then its table: the column's statement names the table's old name, which the
/// target has renamed too). `Some(what)` when so.
async fn renamed_already(
    tx: &Transaction<'_>,
    st: &ddlwatcher::Statement,
    later: &[&ddlwatcher::Statement],
) -> Result<Option<String>, ApplyError> {
    use ddlwatcher::retarget::Renamed;
    let Some(r) = ddlwatcher::retarget::renamed(&st.sql) else {
        return Ok(None);
    };
    // The owner's names: as the statement writes it, then as the later renames make it.
    let owners = |of: &str| {
        let mut names = vec![of.to_string()];
        for next in later
            .iter()
            .filter_map(|l| ddlwatcher::retarget::renamed(&l.sql))
        {
            if let Renamed::Relation { from, to } | Renamed::Type { from, to } = next {
                if names.last() == Some(&from) {
                    names.push(to);
                }
            }
        }
        names
    };
    // The query (true when the old name is gone and the new one there), the owner, the old
    // and the new name. A member of an owner: in `catalog`, named by column `name`, of the
    // owner `$1` when `of` holds.
    let member = |catalog: &str, name: &str, of: &str| {
        format!(
            "select pg_catalog.count(*) filter (where {name} = $2) = 0
                    and pg_catalog.count(*) filter (where {name} = $3) = 1
               from pg_catalog.{catalog} where {of}"
        )
    };
    let whole = |to_reg: &str| {
        format!("select pg_catalog.{to_reg}($2) is null and pg_catalog.{to_reg}($3) is not null and $1 = ''")
    };
    let columns = "attnum > 0 and not attisdropped and attrelid =";
    let (query, owner, from, to, what) = match &r {
        Renamed::Relation { from, to } => (whole("to_regclass"), "", from, to, "relation"),
        Renamed::Type { from, to } => (whole("to_regtype"), "", from, to, "type"),
        Renamed::Column { of, from, to } => (
            member("pg_attribute", "attname", &format!("{columns} pg_catalog.to_regclass($1)")),
            of.as_str(),
            from,
            to,
            "column",
        ),
        Renamed::Constraint { of, from, to } => (
            member("pg_constraint", "conname", "conrelid = pg_catalog.to_regclass($1)"),
            of.as_str(),
            from,
            to,
            "constraint",
        ),
        Renamed::Attribute { of, from, to } => (
            member(
                "pg_attribute",
                "attname",
                &format!(
                    "{columns} (select typrelid from pg_catalog.pg_type where oid = pg_catalog.to_regtype($1))"
                ),
            ),
            of.as_str(),
            from,
            to,
            "attribute",
        ),
        Renamed::Label { of, from, to } => (
            member("pg_enum", "enumlabel", "enumtypid = pg_catalog.to_regtype($1)"),
            of.as_str(),
            from,
            to,
            "enum label",
        ),
    };
    for owner in owners(owner) {
        if checked(tx, &query, &[&owner, from, to]).await? == Some(true) {
            return Ok(Some(format!("{what} {from} is {to} there already")));
        }
    }
    Ok(None)
}

/// SQLSTATEs of a schema statement that finds the object it makes there already.
fn made_already(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    [
        SqlState::DUPLICATE_OBJECT,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_COLUMN,
        SqlState::DUPLICATE_FUNCTION,
        SqlState::DUPLICATE_SCHEMA,
    ]
    .iter()
    .any(|c| e.code() == Some(c))
}

/// Runs one statement of schema version `version`; `later`, the statements after it (of
/// this version and the pending ones). `done_by_load`: an initial load created objects from a catalog that holds this
/// version already — a statement that finds its work done there (a type it creates exists)
/// is left out.
pub(crate) async fn run_statement(
    tx: &Transaction<'_>,
    version: i64,
    st: &ddlwatcher::Statement,
    later: &[&ddlwatcher::Statement],
    done_by_load: bool,
) -> Result<(), ApplyError> {
    let failed = |e: &tokio_postgres::Error| {
        let m = db::describe(e);
        let hint = if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            " — the target role must own the objects it changes and have USAGE and CREATE on their schema \
             (GRANT USAGE, CREATE ON SCHEMA … TO …, or ALTER SCHEMA … OWNER TO …)"
        } else if made_already(e) {
            // Not left out: what is there may differ from what the source made.
            " — the target has it already, made outside replication (the stream makes the target's \
             schema from the source's; a table, column, index, constraint, type or view made \
             there as the source makes it is taken as it is, a table when empty): undo that \
             change on the target (or make it as the source's) and the batch goes on"
        } else if finds_its_work_done(e) {
            " — the target lacks what it changes: dropped or renamed outside replication? Put it \
             back as the source has it and the batch goes on"
        } else {
            ""
        };
        ApplyError::Failed {
            message: format!("schema version {version}: `{}` failed: {m}{hint}", st.sql),
        }
    };
    // A column the target has under the name a later rename gives it: not added again.
    if !done_by_load {
        match column_there_under_a_later_name(tx, st, later).await? {
            Some(Ok(definition)) => {
                tracing::info!(
                    version,
                    statement = %st.sql,
                    "statement left out: the target has the column it adds under the name a later rename gives it, as it makes it ({definition})"
                );
                return Ok(());
            }
            Some(Err(differs)) => {
                return Err(ApplyError::Failed {
                    message: format!(
                        "schema version {version}: `{}` not run: the target has the column it adds under \
                         the name a later rename gives it (the change run on the target first), \
                         but not as the source makes it. {differs}",
                        st.sql
                    ),
                })
            }
            None => {}
        }
    }
    // In a savepoint, whatever comes of it: a statement that fails may be left out.
    tx.batch_execute("savepoint pgteleport_statement")
        .await
        .map_err(pg("savepoint"))?;
    let result = tx.batch_execute(&st.sql).await;
    let end = match &result {
        Ok(()) => "release savepoint pgteleport_statement",
        Err(_) => {
            "rollback to savepoint pgteleport_statement; release savepoint pgteleport_statement"
        }
    };
    tx.batch_execute(end).await.map_err(pg("savepoint"))?;
    match result {
        Ok(()) => Ok(()),
        Err(e) if st.table_dropped_since => {
            // The table's rows were not sent since the source dropped it (the target's are
            // stale): a change they refuse is left out; a later version drops the table.
            tracing::warn!(
                version,
                statement = %st.sql,
                error = %db::describe(&e),
                "a schema change of a table the source has dropped since failed on the target's stale rows of it; left out (a later version drops the table)"
            );
            Ok(())
        }
        // A rename run on the target first.
        Err(e) if finds_its_work_done(&e) && !made_already(&e) && !done_by_load => {
            if let Some(done) = renamed_already(tx, st, later).await? {
                tracing::info!(version, statement = %st.sql, "statement left out: the {done}");
                return Ok(());
            }
            use tokio_postgres::error::SqlState;
            let moved = match e.code() {
                Some(c) if *c == SqlState::UNDEFINED_COLUMN => {
                    on_later_column_names(tx, st, later).await?
                }
                Some(c) if *c == SqlState::UNDEFINED_TABLE => on_later_names(tx, st, later).await?,
                _ => None,
            };
            if let Some(moved) = moved {
                tracing::info!(
                    version,
                    statement = %st.sql,
                    on = %moved.sql,
                    "statement run on the later names of the relation or columns it names: renamed on the target first"
                );
                return Box::pin(run_statement(tx, version, &moved, later, done_by_load)).await;
            }
            Err(failed(&e))
        }
        Err(e) if done_by_load && finds_its_work_done(&e) => {
            tracing::info!(
                version,
                statement = %st.sql,
                error = %db::describe(&e),
                "statement left out: an initial load created its objects from a catalog that holds this version"
            );
            Ok(())
        }
        // A column, index or constraint the target has already, as the source makes it (the
        // change run on the target first), is left out.
        Err(e)
            if made_already(&e)
                || e.code() == Some(&tokio_postgres::error::SqlState::INVALID_TABLE_DEFINITION) =>
        {
            let there = if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_COLUMN) {
                column_there_already(tx, st, later, None).await?
            } else if let Some(there) = object_there_already(tx, st).await? {
                Some(there)
            } else {
                made_as_there_already(tx, st, later).await?
            };
            match there {
                Some(Ok(definition)) => {
                    tracing::info!(
                        version,
                        statement = %st.sql,
                        "statement left out: the target has what it makes already, as it makes it ({definition})"
                    );
                    Ok(())
                }
                Some(Err(differs)) => Err(match failed(&e) {
                    ApplyError::Failed { message } => ApplyError::Failed {
                        message: format!("{message}. {differs}"),
                    },
                    other => other,
                }),
                None => Err(failed(&e)),
            }
        }
        Err(e) => Err(failed(&e)),
    }
}

impl Applier {
    /// The table's description with the target's key instead of the batch's, for a run
    /// applied while schema versions are pending. The batch describes its tables as the
    /// source catalog is when it is sent, but its rows were captured with the key the
    /// row trigger had then: rows written before a change of the key (columns renamed, the
    /// key moved to other columns, or dropped) name the old key columns and may change the
    /// new ones unseen (an update of the future key's column is no key change to a trigger
    /// that still watches the old key). Until that change's version is applied, the target
    /// table has the old key, and every such row precedes the change in the stream: the run
    /// is matched on the target's key when its images hold it. That includes a table that
    /// has no key in the batch (its rows are otherwise found by their whole old image, which
    /// rows captured with a key do not carry). `None`: the same key, or images without the
    /// target's key columns (the run then goes as before, and a pending version may be due).
    ///
    /// `before`: the table's key before a version that a run needed was applied ahead of its
    /// schema event (a key widened, and a row inserted that only the new key allows): rows
    /// up to that event were captured with it — an update that changed a column only the
    /// new key has is no key change to their trigger — and are matched on it.
    async fn key_as_on_target(
        &self,
        tx: &Transaction<'_>,
        kind: Kind,
        meta: &TableMeta,
        run: &[&Event],
        table: &str,
        before: Option<Vec<String>>,
    ) -> Result<Option<TableMeta>, ApplyError> {
        // The image each event would be matched by with a key.
        let holds = |key: &[String]| {
            run.iter().all(|e| {
                let image = if kind_of(e, false) == Kind::Update {
                    &e.data
                } else {
                    &e.key
                };
                image
                    .as_deref()
                    .is_some_and(|r| crate::wire::object_values(r, key).is_some())
            })
        };
        let keyed = matches!(kind, Kind::Update | Kind::UpdateKey | Kind::Delete);
        if !(keyed && !meta.key.is_empty() || kind == Kind::RowIdentity && meta.key.is_empty()) {
            return Ok(None);
        }
        // The values a volatile default gave a keyless table's rows name their rows by
        // all their other columns, whatever key the target's table has.
        if kind == Kind::RowIdentity && run.iter().any(|e| fills(e)) {
            return Ok(None);
        }
        if let Some(key) = before.filter(|k| *k != meta.key && holds(k)) {
            tracing::debug!(table, key = ?key, batch_key = ?meta.key, "rows written before their table's key changed, after that change was applied: matched on the key of before");
            return Ok(Some(TableMeta {
                key,
                ..meta.clone()
            }));
        }
        let context = format!("reading the key of {table}");
        let row = tx
            .query_one(
                &format!(
                    "select {}, {}",
                    ddlwatcher::key_columns_sql("pg_catalog.to_regclass($1)"),
                    column_names_sql("pg_catalog.to_regclass($1)")
                ),
                &[&table],
            )
            .await
            .map_err(pg(&context))?;
        let (key, columns): (Vec<String>, Vec<String>) = (row.get(0), row.get(1));
        if key.is_empty()
            && keyed
            && !columns.is_empty()
            && whole_old_rows(run, &columns, &meta.key)
        {
            // The target's table has no key here (dropped, and duplicates may share the
            // batch's key now) while the batch, described when sent, has one again: rows
            // written meanwhile carry their whole old row — matched by it, one row each.
            tracing::debug!(table, batch_key = ?meta.key, "rows written while their table had no key: matched by their whole old row");
            return Ok(Some(TableMeta {
                key: Vec::new(),
                ..meta.clone()
            }));
        }
        if key.is_empty() || key == meta.key || !holds(&key) {
            return Ok(None);
        }
        tracing::debug!(table, key = ?key, batch_key = ?meta.key, "rows written before their table's key changed: matched on the target's key");
        Ok(Some(TableMeta {
            key,
            ..meta.clone()
        }))
    }

    /// Whether a run may find fewer rows than it names: without replica mode the target's
    /// own foreign-key actions may have applied the source's cascaded change already — a
    /// delete run's rows removed by ON DELETE CASCADE, a key change's row moved to its new
    /// key by ON UPDATE CASCADE (or SET NULL / SET DEFAULT); the end state is the same.
    async fn tolerates_missing(
        &self,
        tx: &Transaction<'_>,
        kind: Kind,
        table: &str,
    ) -> Result<bool, ApplyError> {
        if self.replica_role || !matches!(kind, Kind::Delete | Kind::UpdateKey | Kind::RowIdentity)
        {
            return Ok(false);
        }
        let (deletes, moves_keys) = self.cascade_child(tx, table).await?;
        // A keyless table's deletes (its updates never tolerate a missing row).
        Ok(if matches!(kind, Kind::Delete | Kind::RowIdentity) {
            deletes
        } else {
            moves_keys
        })
    }

    async fn cascade_child(
        &self,
        tx: &Transaction<'_>,
        table: &str,
    ) -> Result<(bool, bool), ApplyError> {
        if let Some(v) = self
            .cascade_children
            .lock()
            .expect("not poisoned")
            .get(table)
        {
            return Ok(*v);
        }
        let row = tx
            .query_one(
                "select to_regclass($1) is not null,
                        exists (select 1 from pg_catalog.pg_constraint
                                 where contype = 'f' and conrelid = to_regclass($1) and confdeltype = 'c'),
                        exists (select 1 from pg_catalog.pg_constraint
                                 where contype = 'f' and conrelid = to_regclass($1)
                                   and (confupdtype in ('c', 'n', 'd') or confdeltype in ('n', 'd')))",
                &[&table],
            )
            .await
            .map_err(pg("reading foreign keys"))?;
        let (exists, v): (bool, (bool, bool)) = (row.get(0), (row.get(1), row.get(2)));
        if !exists {
            return Ok((false, false)); // not created yet: ask again later
        }
        self.cascade_children
            .lock()
            .expect("not poisoned")
            .insert(table.to_string(), v);
        Ok(v)
    }
}

/// Moves target sequences forward to the source's positions (never back).
async fn apply_sequences(
    tx: &Transaction<'_>,
    apply_schema: Option<&str>,
    e: &Event,
) -> Result<(), ApplyError> {
    #[derive(serde::Deserialize)]
    struct Positions {
        /// Sequences of the replicated schemas (renamed to `apply_schema`).
        sequences: Vec<(String, String, i64)>,
        /// Sequences of other schemas that tables' defaults draw from (names kept).
        #[serde(default)]
        outside: Vec<(String, String, i64)>,
    }
    let data = e.data.as_deref().map(|d| d.get()).unwrap_or("{}");
    let p: Positions = serde_json::from_str(data).map_err(|err| ApplyError::BadRequest {
        message: format!("sequence event {}: {err}", e.id),
    })?;
    let all = p
        .sequences
        .into_iter()
        .map(|(schema, name, last)| (apply_schema.unwrap_or(&schema).to_string(), name, last))
        .chain(p.outside);
    for (schema, name, last) in all {
        let seq = qualified(&schema, &name);
        tx.execute(
            &format!("select setval($1::text::regclass, $2::int8, true) from {seq} s where not s.is_called or s.last_value < $2::int8"),
            &[&seq, &last],
        )
        .await
        .map_err(pg(&format!("moving sequence {seq} to {last}")))?;
    }
    Ok(())
}

fn kind_of(e: &Event, keyless: bool) -> Kind {
    match e.op {
        Op::Insert => Kind::Insert,
        Op::Update | Op::Delete if keyless => Kind::RowIdentity,
        // Values a volatile default gave a keyless table's rows, sent once it has a key.
        Op::Update if fills(e) => Kind::RowIdentity,
        Op::Update if e.key.is_some() => Kind::UpdateKey,
        Op::Update => Kind::Update,
        Op::Truncate if e.data.is_some() => Kind::DeleteWhere,
        Op::Truncate => Kind::Truncate,
        Op::Sequences => Kind::Delete, // handled before, never a run
        // Schema events never form runs (handled before); Delete is a harmless stand-in.
        Op::Delete | Op::Schema => Kind::Delete,
    }
}

/// Applies a run of partitions' TRUNCATEs: the rows matching each one's condition go.
async fn delete_where(
    tx: &deadpool_postgres::Transaction<'_>,
    meta: &TableMeta,
    table: &str,
    events: &[&Event],
    apply_schema: Option<&str>,
) -> Result<(), ApplyError> {
    let context = format!(
        "deleting the rows of {} truncated partition(s) from {table}",
        events.len()
    );
    for e in events {
        let sql = delete_where_sql(e, table, meta, apply_schema)?;
        // One statement (extended protocol), whatever the condition holds.
        let n = tx.execute(&sql, &[]).await.map_err(pg(&context))?;
        tracing::debug!(table, rows = n, "rows of a truncated partition deleted");
    }
    Ok(())
}

/// The DELETE for a partition's TRUNCATE (`data`: `{"where": condition}`), the condition
/// checked to be one SQL condition and re-targeted to `apply_schema` (it may name the
/// source's types).
fn delete_where_sql(
    e: &Event,
    table: &str,
    meta: &TableMeta,
    apply_schema: Option<&str>,
) -> Result<String, ApplyError> {
    let bad = |why: String| ApplyError::BadRequest {
        message: format!("event {} (a partition's truncate of {table}): {why}", e.id),
    };
    #[derive(serde::Deserialize)]
    struct Where {
        #[serde(rename = "where")]
        condition: String,
    }
    let w: Where = serde_json::from_str(e.data.as_deref().map_or("null", |d| d.get()))
        .map_err(|err| bad(format!("not {{\"where\": text}}: {err}")))?;
    let map = ddlwatcher::SchemaMap {
        apply_schema: apply_schema.map(String::from),
        replicated: [meta.schema.clone()].into(),
        tables: Default::default(),
    };
    ddlwatcher::retarget::delete_where(table, &w.condition, &map)
        .map_err(|err| bad(err.to_string()))
}

fn payload_len(e: &Event) -> usize {
    e.data.as_ref().map_or(0, |d| d.get().len()) + e.key.as_ref().map_or(0, |k| k.get().len())
}

/// `[a,b,c]` from raw JSON objects, without re-parsing them.
fn json_array<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

/// Distinct apply statements kept prepared per connection; past this the cache starts over
/// (tables whose large rows ship changed columns only can make many column sets).
const STATEMENT_CACHE_SIZE: usize = 512;

/// Prepares `sql` once per connection: a run's statement text depends only on its table,
/// kind and columns, so a stream of small transactions repeats a few statements, and
/// PostgreSQL then skips parsing and planning them (re-planning by itself after DDL).
async fn prepared(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    context: &str,
) -> Result<tokio_postgres::Statement, ApplyError> {
    if tx.statement_cache.size() >= STATEMENT_CACHE_SIZE {
        tx.statement_cache.clear();
    }
    tx.prepare_cached(sql).await.map_err(pg(context))
}

/// The OID of table `name` (quoted and qualified as a statement names it), if it exists.
async fn table_oid(tx: &Transaction<'_>, name: &str) -> Result<Option<u32>, ApplyError> {
    Ok(tx
        .query_one("select pg_catalog.to_regclass($1)::oid", &[&name])
        .await
        .map_err(pg(&format!("looking up table {name}")))?
        .get(0))
}

/// What the schema versions of a batch leave a run to reckon with.
struct SchemaAhead {
    /// Versions are pending: one may be applied first ([`DdlState::run`]).
    versions_pending: bool,
    /// Columns (target table OID, name) that versions applied before their schema event
    /// added ([`DdlState::columns_added`]).
    columns_added: Vec<(u32, String)>,
}

#[allow(clippy::too_many_arguments)]
async fn apply_run(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: Kind,
    meta: &TableMeta,
    cols: &[String],
    table: &str,
    events: &[&Event],
    tolerate_missing: bool,
    ahead: &SchemaAhead,
) -> Result<(), ApplyError> {
    let context = format!("applying {} {:?} event(s) to {table}", events.len(), kind);
    match kind {
        Kind::Insert | Kind::Update | Kind::Delete => {
            // The element count is `limit $2` of the statements that join the run with the
            // table: planned for each run, they then expect this many rows, not the 100
            // PostgreSQL assumes of a JSON function (which made a one-row delete hash the
            // whole table).
            if let Some(run) =
                SetRun::prepare(tx, kind, meta, cols, table, events, tolerate_missing).await?
            {
                run.execute(tx).await?;
            }
        }
        Kind::UpdateKey if events.len() > 1 => {
            let items: Vec<String> = events
                .iter()
                .map(|e| {
                    format!(
                        r#"{{"k":{},"d":{}}}"#,
                        e.key.as_deref().map_or("{}", |k| k.get()),
                        e.data.as_deref().map_or("{}", |d| d.get())
                    )
                })
                .collect();
            let pairs = json_array(items.iter().map(String::as_str));
            let st = prepared(tx, &update_keys_sql(meta, cols, table), &context).await?;
            let row = tx.query_one(&st, &[&pairs]).await.map_err(pg(&context))?;
            check_matched(&context, row.get(0), row.get(1))?;
        }
        Kind::UpdateKey => {
            let e = events[0];
            let key = e.key.as_deref().map(|k| k.get()).unwrap_or("{}");
            let d = e.data.as_deref().map(|d| d.get()).unwrap_or("{}");
            let st = prepared(tx, &update_key_sql(meta, cols, table), &context).await?;
            let n = tx.execute(&st, &[&d, &key]).await.map_err(pg(&context))?;
            if n == 0 && tolerate_missing {
                // The target's own ON UPDATE CASCADE (or SET NULL / DEFAULT) moved the row
                // already: the image is written at its new key, which must hold the row.
                if let Some(run) =
                    SetRun::prepare(tx, Kind::Update, meta, cols, table, events, false).await?
                {
                    run.execute(tx).await?;
                }
                return Ok(());
            }
            check_matched(&context, 1, n as i64)?;
        }
        Kind::Truncate => {
            tx.batch_execute(&format!("truncate {table}"))
                .await
                .map_err(pg(&context))?;
        }
        Kind::DeleteWhere => unreachable!("applied by delete_where()"),
        Kind::RowIdentity => {
            // A run in one statement when it can (`apply_alike`), else one event at a
            // time.
            let row = tx
                .query_one(
                    &format!(
                        "select {}, {}, {}, pg_catalog.to_regclass($1)::oid",
                        column_names_sql("pg_catalog.to_regclass($1)"),
                        indexed_columns_sql("pg_catalog.to_regclass($1)"),
                        self_filled_columns_sql("pg_catalog.to_regclass($1)")
                    ),
                    &[&table],
                )
                .await
                .map_err(pg(&context))?;
            let (target_columns, indexed, mut self_filled): (
                Vec<String>,
                Vec<String>,
                Vec<String>,
            ) = (row.get(0), row.get(1), row.get(2));
            // Columns a version applied early added hold the table's own values too.
            let oid: Option<u32> = row.get(3);
            for (o, n) in &ahead.columns_added {
                if Some(*o) == oid && !self_filled.contains(n) {
                    self_filled.push(n.clone());
                }
            }
            // An old row naming a column the target's table lacks while schema versions
            // are on their way: one of them adds it, or renames one to it (diffing mode:
            // rows written between a rename and the look that saw it name the new name
            // before the schema event). Matched without it, the row could be any that is
            // alike in the other columns — a key column renamed made a delete take another
            // row. The version is applied first (`DdlState::run`); with none pending the
            // column is gone for good (added and dropped again) and is left out.
            if ahead.versions_pending {
                for e in events {
                    let Some(old_row) = e.key.as_deref() else {
                        continue;
                    };
                    let names = crate::wire::object_keys(old_row).unwrap_or_default();
                    if let Some(c) = names
                        .iter()
                        .find(|n| !n.is_empty() && !target_columns.contains(n))
                    {
                        return Err(ApplyError::SchemaBehind {
                            message: format!(
                                "{context}: event {} names its row by column {c}, which {table} lacks",
                                e.id
                            ),
                        });
                    }
                }
            }
            if apply_alike(
                tx,
                meta,
                cols,
                table,
                &target_columns,
                &indexed,
                events,
                &context,
            )
            .await?
            {
                return Ok(());
            }
            // The SET list of an update found one row at a time.
            let set = cols
                .iter()
                .map(|c| assignment(meta, c, "r", "$2::text::json"))
                .collect::<Vec<_>>()
                .join(", ");
            let set = set.as_str();
            for e in events {
                // An update whose columns were all left out on the way (`exclude_columns`:
                // the values a volatile default gave an excluded column) writes nothing.
                if e.op == Op::Update && cols.is_empty() {
                    continue;
                }
                if meta.soft_delete_column.is_some() || meta.synced_at_column.is_some() {
                    return Err(ApplyError::Failed {
                    message: format!(
                        "{context}: soft_delete_col_name / synced_at_col_name need a key, and table {table} has none \
                         (a keyless table is replicated by full-row identity); give the source table a primary key, \
                         or replicate it with a mirror without those columns"
                    ),
                });
                }
                let old_row = e
                .key
                .as_deref()
                .ok_or_else(|| ApplyError::Failed {
                    // Written by a row trigger made while the table had a key (its image
                    // holds the key, not the old row): found by that key on the target, when
                    // the target's table has it — a version still pending (a rename, the key
                    // dropped) is applied first.
                    message: format!(
                        "event {} on {table}: the row was written while the table had a key (its image holds \
                         no old row), and the target's table has no key the image holds; if no schema change \
                         on its way gives it one, compare the table and re-run the initial load for it",
                        e.id
                    ),
                })?;
                let old = old_row.get();
                // One row whose columns hold the old row's values, compared as text (so
                // NULLs and types without `=` compare too); any one of identical duplicates
                // is the same. Only the columns both the image and the target's table have:
                // the target's may have more here (a column added by a version applied
                // ahead of its event, or a mirror's own), which the image cannot match.
                let names =
                    crate::wire::object_keys(old_row).map_err(|err| ApplyError::BadRequest {
                        message: format!("event {}: old row is not a JSON object: {err}", e.id),
                    })?;
                // A column that leads a btree index of the target's table, and that the old
                // row gives a value, is compared with `=` too: the row is found through the
                // index rather than by reading the whole table, per event.
                let through_index = |n: &String| {
                    indexed.contains(n)
                        && crate::wire::object_texts(old_row, std::slice::from_ref(n))
                            .is_some_and(|v| v.first().is_some_and(Option::is_some))
                };
                let same = |leave_out: &[String]| {
                    let same: Vec<String> = names
                        .iter()
                        .filter(|n| target_columns.contains(n) && !leave_out.contains(n))
                        .map(|n| {
                            let c = quote_ident(n);
                            let text = format!("t2.{c}::text is not distinct from k.{c}::text");
                            if through_index(n) {
                                format!("t2.{c} = k.{c} and {text}")
                            } else {
                                text
                            }
                        })
                        .collect();
                    if same.is_empty() {
                        "true".to_string()
                    } else {
                        same.join(" and ")
                    }
                };
                let d = e.data.as_deref().map(|d| d.get()).unwrap_or("{}");
                if let Some(rows) = filled_rows(e, old_row)? {
                    // The values a volatile default gave the rows equal in every other
                    // column on the source ([`crate::watcher`]'s backfill of a keyless
                    // table): one each, in any order — the rows are alike but for them.
                    let lists: HashMap<String, Vec<&serde_json::value::RawValue>> =
                        serde_json::from_str(d).map_err(|err| ApplyError::BadRequest {
                            message: format!("event {}: the values of the {rows} row(s) it fills are not one JSON array per column: {err}", e.id),
                        })?;
                    if let Some((c, l)) = lists.iter().find(|(_, l)| l.len() as i64 != rows) {
                        return Err(ApplyError::BadRequest {
                            message: format!(
                                "event {}: column {c} has {} value(s) for the {rows} row(s) the update fills",
                                e.id,
                                l.len()
                            ),
                        });
                    }
                    let each = "(select json_object_agg(j.key, j.value -> m.i) from json_each($2::text::json) j)";
                    let set: Vec<String> = cols
                        .iter()
                        .map(|c| assignment(meta, c, "r", each))
                        .collect();
                    let n = tx
                        .execute(
                            &format!(
                                "update {table} t set {}
                                   from (select t2.ctid as tid, (row_number() over () - 1)::int as i
                                           from {table} t2, json_populate_record(null::{table}, $1::text::json) k
                                          where {} limit {rows}) m,
                                        json_populate_record(null::{table}, {each}) r
                                  where t.ctid = m.tid",
                                set.join(", "),
                                same(&[])
                            ),
                            &[&old, &d],
                        )
                        .await
                        .map_err(pg(&context))?;
                    check_matched(&context, rows, n as i64)?;
                    continue;
                }
                let apply = |leave_out: Vec<String>| {
                    let one = format!(
                        "(select t2.ctid from {table} t2, json_populate_record(null::{table}, $1::text::json) k where {} limit 1)",
                        same(&leave_out)
                    );
                    async move {
                        if e.op == Op::Delete {
                            tx.execute(
                                &format!("delete from {table} t where t.ctid = {one}"),
                                &[&old],
                            )
                            .await
                        } else {
                            tx.execute(
                                &format!(
                                    "update {table} t set {set} from json_populate_record(null::{table}, $2::text::json) r where t.ctid = {one}"
                                ),
                                &[&old, &d],
                            )
                            .await
                        }
                    }
                };
                let mut n = apply(Vec::new()).await.map_err(pg(&context))?;
                // A column the target filled itself (a volatile default or an identity
                // column added) holds its own values until the source's arrive, queued
                // after the schema change: rows written meanwhile hold the source's, and
                // are found without those columns. (Once those values arrived the row
                // is found with them: this is only asked when it is not.)
                let leave_out: Vec<String> = self_filled
                    .iter()
                    .filter(|c| names.contains(c))
                    .cloned()
                    .collect();
                if n == 0 && !leave_out.is_empty() {
                    tracing::debug!(event = e.id, table, columns = ?leave_out, "row not found with the columns the target filled itself: found without them");
                    n = apply(leave_out).await.map_err(pg(&context))?;
                }
                // Removed already by the target's own ON DELETE CASCADE (no replica mode).
                if n == 0 && e.op == Op::Delete && tolerate_missing {
                    continue;
                }
                check_matched(&context, 1, n as i64)?;
            }
        }
    }
    Ok(())
}

/// Applies a run of a keyless table's deletes, or of its updates, in one statement reading
/// the table once: each old row's columns that the target's table has, as one text (every
/// column's text, so NULLs and types without `=` compare too, as one row at a time does),
/// matched by hash with the table's rows, as many rows of each as the run names. A keyless
/// table is a multiset: when every old row of the run is found among the rows before it,
/// one at a time would have found each too, and ends with the same rows (each takes one
/// row equal to its old row, and gives one equal to its new row). Only for a run of more
/// than one event whose old rows name the same columns, none of which leads an index of
/// the target's table (then one row at a time goes through the index). `false` when it
/// did not apply: not such a run, or the rows found were not the rows named (then rolled
/// back, for one row at a time to name the one missing or find it otherwise).
#[allow(clippy::too_many_arguments)]
async fn apply_alike(
    tx: &deadpool_postgres::Transaction<'_>,
    meta: &TableMeta,
    cols: &[String],
    table: &str,
    target_columns: &[String],
    indexed: &[String],
    events: &[&Event],
    context: &str,
) -> Result<bool, ApplyError> {
    let op = events[0].op;
    if events.len() < 2
        || !matches!(op, Op::Delete | Op::Update)
        || op == Op::Update && cols.is_empty()
        || events.iter().any(|e| e.op != op)
        || meta.soft_delete_column.is_some()
        || meta.synced_at_column.is_some()
    {
        return Ok(false);
    }
    let mut names: Option<Vec<String>> = None;
    let (mut olds, mut news) = (String::from("["), String::from("["));
    for e in events {
        let Some(k) = e.key.as_deref() else {
            return Ok(false);
        };
        let Ok(these) = crate::wire::object_keys(k) else {
            return Ok(false);
        };
        match &names {
            Some(n) if *n != these => return Ok(false),
            Some(_) => {}
            None => names = Some(these),
        }
        if olds.len() > 1 {
            olds.push(',');
            news.push(',');
        }
        olds.push_str(k.get());
        if op == Op::Update {
            // The values a volatile default gave go one row at a time (`filled_rows`).
            match e.data.as_deref() {
                Some(d) if !fills(e) => news.push_str(d.get()),
                _ => return Ok(false),
            }
        }
    }
    olds.push(']');
    news.push(']');
    let common: Vec<&String> = names
        .iter()
        .flatten()
        .filter(|n| target_columns.contains(n))
        .collect();
    if common.is_empty() || common.iter().any(|n| indexed.contains(n)) {
        return Ok(false);
    }
    let text = |alias: &str| {
        let cols: Vec<String> = common
            .iter()
            .map(|c| format!("{alias}.{}::text", quote_ident(c)))
            .collect();
        format!("row({})::text", cols.join(", "))
    };
    let sql = if op == Op::Delete {
        format!(
            "with x as (select {} as key, count(*) as n
                          from json_populate_recordset(null::{table}, $1::text::json) k group by 1),
                  m as (select t2.ctid as tid, row_number() over (partition by x.key) as rn, x.n
                          from {table} t2 join x on {} = x.key)
             delete from {table} t using m where t.ctid = m.tid and m.rn <= m.n",
            text("k"),
            text("t2")
        )
    } else {
        let set: Vec<String> = cols
            .iter()
            .map(|c| assignment(meta, c, "r", "x.data"))
            .collect();
        format!(
            "with x as (select o.i, d.value as data, {key} as key,
                               row_number() over (partition by {key} order by o.i) as rn
                          from json_array_elements($1::text::json) with ordinality o(value, i)
                          join json_array_elements($2::text::json) with ordinality d(value, i) on d.i = o.i,
                               json_populate_record(null::{table}, o.value) k),
                  m as (select t2.ctid as tid, y.key, row_number() over (partition by y.key) as rn
                          from {table} t2 join (select distinct x.key from x) y on {} = y.key)
             update {table} t set {}
               from m join x on x.key = m.key and x.rn = m.rn,
                    json_populate_record(null::{table}, x.data) r
              where t.ctid = m.tid",
            text("t2"),
            set.join(", "),
            key = text("k"),
        )
    };
    tx.batch_execute("savepoint pgteleport_alike")
        .await
        .map_err(pg(context))?;
    let n = if op == Op::Delete {
        tx.execute(&sql, &[&olds]).await
    } else {
        tx.execute(&sql, &[&olds, &news]).await
    }
    .map_err(pg(context))?;
    let done = n as usize == events.len();
    tx.batch_execute(if done {
        "release savepoint pgteleport_alike"
    } else {
        "rollback to savepoint pgteleport_alike; release savepoint pgteleport_alike"
    })
    .await
    .map_err(pg(context))?;
    Ok(done)
}

/// Whether `e` is an update queued with the values a volatile default gave a keyless
/// table's existing rows ([`filled_rows`]).
fn fills(e: &Event) -> bool {
    e.key
        .as_deref()
        .is_some_and(|k| matches!(filled_rows(e, k), Ok(Some(_))))
}

/// For an update queued with the values a volatile default gave a keyless table's
/// existing rows (its old row has member `""`, the number of rows equal in every other
/// column, and none of the columns its data sets), that number. (A key change of a table
/// with a `DEFERRABLE` key numbers its statement in member `""` too, but its data gives
/// the key its old row names.)
fn filled_rows(
    e: &Event,
    old_row: &serde_json::value::RawValue,
) -> Result<Option<i64>, ApplyError> {
    if e.op != Op::Update {
        return Ok(None);
    }
    let (Ok(names), Some(Ok(set))) = (
        crate::wire::object_keys(old_row),
        e.data.as_deref().map(crate::wire::object_keys),
    ) else {
        return Ok(None);
    };
    if set.is_empty() || set.iter().any(|c| names.contains(c)) {
        return Ok(None);
    }
    let Some(n) = crate::wire::object_texts(old_row, &[String::new()]) else {
        return Ok(None);
    };
    match n.first() {
        Some(Some(n)) => n.parse::<i64>().map(Some).map_err(|_| ApplyError::BadRequest {
            message: format!(
                "event {}: member \"\" of the old row (the number of rows the update fills) is not a number: {n}",
                e.id
            ),
        }),
        _ => Ok(None),
    }
}

/// SQL for the names of the columns of relation `rel` (an SQL expression) whose values the
/// table computed for each row when they were added: a default without a stored "missing"
/// value (a volatile one, or given at the table's creation), or an identity column, as a
/// `text[]`.
fn self_filled_columns_sql(rel: &str) -> String {
    format!(
        "array(select a.attname::text from pg_catalog.pg_attribute a
                where a.attrelid = {rel} and a.attnum > 0 and not a.attisdropped
                  and not a.atthasmissing and (a.atthasdef or a.attidentity <> '') and a.attgenerated = '')"
    )
}

/// SQL for the names of the columns of relation `rel` (an SQL expression) that lead one of
/// its valid, whole-table btree indexes, as a `text[]`.
fn indexed_columns_sql(rel: &str) -> String {
    format!(
        "array(select distinct a.attname::text
                 from pg_catalog.pg_index i
                 join pg_catalog.pg_class ic on ic.oid = i.indexrelid
                 join pg_catalog.pg_am am on am.oid = ic.relam
                 join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
                where i.indrelid = {rel} and i.indisvalid and i.indpred is null and am.amname = 'btree')"
    )
}

/// SQL for the names of the columns of relation `rel` (an SQL expression), as a `text[]`.
fn column_names_sql(rel: &str) -> String {
    format!(
        "array(select a.attname::text from pg_catalog.pg_attribute a
                where a.attrelid = {rel} and a.attnum > 0 and not a.attisdropped)"
    )
}

/// Whether each event of `run` carries its whole old row as its key image, written by a
/// trigger made while the table had no key: a value of every one of the target table's
/// `columns` — or of target columns only, one of them not in the batch's `key` (a key image
/// names its key's columns only): the target's table may have a column the image cannot
/// know (added there first, or by a version applied ahead of its event).
fn whole_old_rows(run: &[&Event], columns: &[String], key: &[String]) -> bool {
    run.iter().all(|e| {
        e.key.as_deref().is_some_and(|k| {
            crate::wire::object_keys(k).is_ok_and(|names| {
                columns.iter().all(|c| names.iter().any(|n| n == c))
                    || names.iter().all(|n| columns.contains(n))
                        && names.iter().any(|n| !key.contains(n))
            })
        })
    })
}

fn check_matched(context: &str, wanted: i64, matched: i64) -> Result<(), ApplyError> {
    if wanted == matched {
        Ok(())
    } else {
        Err(ApplyError::Failed {
            message: format!(
                "{context}: {wanted} row(s) named by the source but {matched} found on the target — \
                 the target has diverged (rows changed or removed outside replication); \
                 compare the table and re-run the initial load for it"
            ),
        })
    }
}

fn column_list(cols: &[String], prefix: &str) -> String {
    cols.iter()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_match(key: &[String], left: &str, right: &str) -> String {
    key.iter()
        .map(|k| format!("{left}.{q} = {right}.{q}", q = quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The value of column `c`: from the populated record `rec`, or for a json/jsonb column
/// cast from its text in the image `image` (the record would turn a JSON `null` into NULL).
/// `"c" = <its value>` for an UPDATE's SET list: [`value`] of `c`.
fn assignment(meta: &TableMeta, c: &str, rec: &str, image: &str) -> String {
    format!("{} = {}", quote_ident(c), value(meta, c, rec, image))
}

fn value(meta: &TableMeta, c: &str, rec: &str, image: &str) -> String {
    match meta.json_columns.iter().find(|(n, _)| n == c) {
        Some((_, ty)) if ty == "json" || ty == "jsonb" => {
            format!("(({image}) ->> {})::{ty}", ddlwatcher::quote_literal(c))
        }
        _ => format!("{rec}.{}", quote_ident(c)),
    }
}

/// The synced-at assignment (`, "col" = now()`) of a mirror that has one.
fn synced_at_set(meta: &TableMeta) -> String {
    meta.synced_at_column
        .as_deref()
        .map(|c| format!(", {} = now()", quote_ident(c)))
        .unwrap_or_default()
}

fn insert_sql(meta: &TableMeta, columns: &[String], table: &str) -> String {
    let mut cols = column_list(columns, "");
    let mut values: Vec<String> = columns.iter().map(|c| value(meta, c, "r", "e.j")).collect();
    if let Some(c) = &meta.synced_at_column {
        cols.push_str(&format!(", {}", quote_ident(c)));
        values.push("now()".into());
    }
    // With soft deletes the target keeps deleted rows: an insert of such a key again
    // revives it with the new values.
    let revive = match &meta.soft_delete_column {
        Some(soft) if !meta.key.is_empty() => {
            let mut set: Vec<String> = columns
                .iter()
                .chain(meta.synced_at_column.iter())
                .filter(|c| !meta.key.contains(c))
                .map(|c| format!("{0} = excluded.{0}", quote_ident(c)))
                .collect();
            set.push(format!("{} = false", quote_ident(soft)));
            format!(
                " on conflict ({}) do update set {}",
                column_list(&meta.key, ""),
                set.join(", ")
            )
        }
        _ => String::new(),
    };
    format!(
        // The source's identity values are kept, also for GENERATED ALWAYS columns.
        "insert into {table} ({cols}) overriding system value select {} from json_array_elements($1::text::json) as e(j),
                json_populate_record(null::{table}, e.j) as r{revive}",
        values.join(", ")
    )
}

/// Returns (rows named, rows matched). The last image of each key wins (row images are
/// complete, so the last one is the row's state after the run). An update that writes key
/// columns only (their values unchanged: the key did not change) has nothing to set — a
/// column changed that the target does not get (an excluded one) — but its rows must be
/// there all the same: the statement counts them, so a row missing fails the run as
/// diverged instead of passing unseen (and a row trigger made before a key change, which
/// calls an update of a column only the new key has no key change, is seen).
fn update_sql(meta: &TableMeta, columns: &[String], table: &str) -> String {
    let set: Vec<String> = columns
        .iter()
        .filter(|c| !meta.key.contains(c) && !meta.identity_always.contains(c))
        .map(|c| assignment(meta, c, "r", "r.pgteleport_image"))
        .collect();
    let rkey = column_list(&meta.key, "r.");
    let r = format!(
        "with r as (select distinct on ({rkey}) r.*, e.j as pgteleport_image
                      from (select * from json_array_elements($1::text::json) with ordinality limit $2) as e(j, n),
                           json_populate_record(null::{table}, e.j) as r
                     order by {rkey}, e.n desc)"
    );
    let cond = key_match(&meta.key, "t", "r");
    let same = identity_unchanged(meta, columns, "r");
    if set.is_empty() {
        return format!(
            "{r} select (select count(*) from r),
                    (select count(*) from r where exists (select from {table} as t where {cond}{same}))"
        );
    }
    format!(
        "{r}, u as (update {table} as t set {set}{synced} from r where {cond}{same} returning 1)
         select (select count(*) from r), (select count(*) from u)",
        set = set.join(", "),
        synced = synced_at_set(meta),
    )
}

/// ` and t."c" is not distinct from r."c"` for each identity column `GENERATED ALWAYS` on
/// the target among `columns`: no UPDATE may set it, so the row must already hold the
/// source's value — a row whose value changed on the source (`SET c = DEFAULT`) does not
/// match, and the run fails as diverged rather than leaving the old value in place.
fn identity_unchanged(meta: &TableMeta, columns: &[String], r: &str) -> String {
    identity_unchanged_where(meta, columns, r, |_| None)
}

/// [`identity_unchanged`], each check only where `shipped(column)` (an SQL condition, when
/// some row images may lack the column) holds.
fn identity_unchanged_where(
    meta: &TableMeta,
    columns: &[String],
    r: &str,
    shipped: impl Fn(&str) -> Option<String>,
) -> String {
    meta.identity_always
        .iter()
        .filter(|c| columns.contains(c) && !meta.key.contains(c))
        .map(|c| {
            let same = format!("t.{0} is not distinct from {r}.{0}", quote_ident(c));
            match shipped(c) {
                Some(cond) => format!(" and (not {cond} or {same})"),
                None => format!(" and {same}"),
            }
        })
        .collect()
}

/// `unnest($1::text[], …) as u(c0, …)` over `n` columns, and each column cast to its
/// type: `u.c0::"pg_catalog"."int4"`. Types are named by schema and internal name, without
/// a modifier (`bpchar`, not `character`, which means `character(1)`): the insert or update
/// then coerces to the column's modifier as an assignment, which refuses an over-long value
/// instead of cutting it.
fn unnest_arrays(tys: &[&str]) -> (String, Vec<String>) {
    let params: Vec<String> = (1..=tys.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..tys.len()).map(|i| format!("c{i}")).collect();
    let from = format!("unnest({}) as u({})", params.join(", "), aliases.join(", "));
    let casts = tys
        .iter()
        .enumerate()
        .map(|(i, t)| format!("u.c{i}::{t}"))
        .collect();
    (from, casts)
}

fn insert_arrays_sql(columns: &[String], tys: &[&str], table: &str) -> String {
    let (from, casts) = unnest_arrays(tys);
    format!(
        "insert into {table} ({}) overriding system value select {} from {from}",
        column_list(columns, ""),
        casts.join(", ")
    )
}

/// Returns (rows named, rows matched) of a run with one row per key ([`last_per_key`]):
/// the statement joins it with the table directly, without sorting it.
fn update_arrays_sql(
    meta: &TableMeta,
    columns: &[String],
    tys: &[&str],
    table: &str,
) -> Option<String> {
    let keys: Vec<usize> = key_positions(meta, columns)?;
    let (from, casts) = unnest_arrays(tys);
    let identity = |c: &String| meta.identity_always.contains(c);
    let set: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|(i, c)| !keys.contains(i) && !identity(c))
        .map(|(i, c)| format!("{} = {}", quote_ident(c), casts[i]))
        .collect();
    if set.is_empty() || keys.is_empty() {
        return None;
    }
    let mut cond: Vec<String> = keys
        .iter()
        .map(|&i| format!("t.{} = {}", quote_ident(&columns[i]), casts[i]))
        .collect();
    // See identity_unchanged().
    cond.extend(
        columns
            .iter()
            .enumerate()
            .filter(|(i, c)| !keys.contains(i) && identity(c))
            .map(|(i, c)| format!("t.{} is not distinct from {}", quote_ident(c), casts[i])),
    );
    Some(format!(
        "with upd as (update {table} as t set {set} from {from} where {cond} returning 1)
         select ${n}::pg_catalog.int8, count(*) from upd",
        set = set.join(", "),
        cond = cond.join(" and "),
        n = tys.len() + 1,
    ))
}

/// The position of each key column among `columns`; `None` when one is missing.
fn key_positions(meta: &TableMeta, columns: &[String]) -> Option<Vec<usize>> {
    meta.key
        .iter()
        .map(|k| columns.iter().position(|c| c == k))
        .collect()
}

/// The rows of an update run, one per key — the last: row images are complete, so the
/// last one is the row's state after the run — in their order. (An UPDATE … FROM that
/// matches a row twice updates it with either.)
fn last_per_key(arrays: Arrays, key: &[usize]) -> Arrays {
    let rows = arrays.first().map_or(0, Vec::len);
    let keep: Vec<bool> = {
        let mut last: HashMap<Vec<Option<&str>>, usize> = HashMap::with_capacity(rows);
        let keys = (0..rows).map(|i| key.iter().map(|&c| arrays[c][i].as_deref()).collect());
        for (i, k) in keys.enumerate() {
            last.insert(k, i);
        }
        if last.len() == rows {
            return arrays;
        }
        let mut keep = vec![false; rows];
        for i in last.into_values() {
            keep[i] = true;
        }
        keep
    };
    arrays
        .into_iter()
        .map(|a| {
            a.into_iter()
                .zip(&keep)
                .filter_map(|(v, &k)| k.then_some(v))
                .collect()
        })
        .collect()
}

fn update_key_sql(meta: &TableMeta, columns: &[String], table: &str) -> String {
    let set: Vec<String> = columns
        .iter()
        .filter(|c| !meta.identity_always.contains(c) || meta.key.contains(c))
        .map(|c| assignment(meta, c, "r", "$1::text::json"))
        .collect();
    format!(
        "update {table} as t set {set}{synced}
           from json_populate_record(null::{table}, $1::text::json) as r,
                json_populate_record(null::{table}, $2::text::json) as k
          where {cond}{same}",
        set = set.join(", "),
        synced = synced_at_set(meta),
        cond = key_match(&meta.key, "t", "k"),
        same = identity_unchanged(meta, columns, "r"),
    )
}

/// Every column of `sets`, each once, in the order first seen.
fn union_of<'a>(sets: impl Iterator<Item = &'a [String]>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in sets.flatten() {
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
    out
}

/// The key changes of one statement on a table with a DEFERRABLE key, as one UPDATE joined
/// on the old keys (`$1`: `[{"k": old key, "d": new image}, …]`): the rows are matched as
/// they were before the statement, and uniqueness is checked at its end. `columns` is
/// every column some row writes: a row whose image lacks one (a row over 2 KB ships only
/// the columns that changed) keeps its value. Returns (rows named, rows matched).
fn update_keys_sql(meta: &TableMeta, columns: &[String], table: &str) -> String {
    let shipped = |c: &str| {
        format!(
            "(p.j -> 'd') -> {} is not null",
            ddlwatcher::quote_literal(c)
        )
    };
    let set: Vec<String> = columns
        .iter()
        .filter(|c| !meta.identity_always.contains(c) || meta.key.contains(c))
        .map(|c| {
            format!(
                "{0} = case when {1} then {2} else t.{0} end",
                quote_ident(c),
                shipped(c),
                value(meta, c, "r", "p.j -> 'd'")
            )
        })
        .collect();
    let same = identity_unchanged_where(meta, columns, "r", |c| Some(shipped(c)));
    format!(
        "with p as (select e.j from json_array_elements($1::text::json) as e(j)),
              u as (update {table} as t set {set}{synced}
                      from p, json_populate_record(null::{table}, p.j -> 'd') as r,
                           json_populate_record(null::{table}, p.j -> 'k') as k
                     where {cond}{same} returning 1)
         select (select count(*) from p), (select count(*) from u)",
        set = set.join(", "),
        synced = synced_at_set(meta),
        cond = key_match(&meta.key, "t", "k"),
    )
}

fn delete_sql(meta: &TableMeta, table: &str) -> String {
    let remove = match &meta.soft_delete_column {
        Some(soft) => format!(
            "update {table} as t set {} = true{} from k",
            quote_ident(soft),
            synced_at_set(meta)
        ),
        None => format!("delete from {table} as t using k"),
    };
    format!(
        "with k as (select * from json_populate_recordset(null::{table}, $1::text::json) limit $2),
              d as ({remove} where {cond} returning 1)
         select (select count(*) from k), (select count(*) from d)",
        cond = key_match(&meta.key, "t", "k"),
    )
}

/// The pure parts of applying a run, for the micro-benchmarks (`benches/apply.rs`).
#[doc(hidden)]
pub mod bench_api {
    use super::*;

    /// The insert, update and delete statements of runs over `columns` of `table`.
    pub fn statements(
        meta: &TableMeta,
        columns: &[String],
        table: &str,
    ) -> (String, String, String) {
        (
            insert_sql(meta, columns, table),
            update_sql(meta, columns, table),
            delete_sql(meta, table),
        )
    }

    /// The parameter of an insert or update run: its row images as one JSON array.
    pub fn images(events: &[&Event]) -> String {
        run_parameter(Kind::Insert, events).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TableMeta {
        TableMeta {
            oid: None,
            soft_delete_column: None,
            synced_at_column: None,
            schema: "public".into(),
            name: "Order Lines".into(),
            key: vec!["order".into(), "line".into()],
            columns: vec!["order".into(), "line".into(), "qty".into()],
            generated: vec![],
            json_columns: vec![],
            key_deferrable: false,
            identity_always: Vec::new(),
        }
    }

    fn ev(id: i64, op: Op, table: u32, key: Option<&str>, data: Option<&str>) -> Event {
        let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_string()).unwrap();
        Event {
            id,
            op,
            table,
            txid: None,
            key: key.map(raw),
            data: data.map(raw),
        }
    }

    /// A version renamed `a` to `b` (then `b` to `c`) and dropped `d` of table 7: a row
    /// written before names them as they were; the target's table lacks those names now
    /// but has `a` again (added since) for table 8.
    #[test]
    fn rows_written_before_a_rename_or_drop_name_the_columns_as_they_are_now() {
        let target = |oid: u32, cols: &[&str]| TargetColumns {
            types: cols
                .iter()
                .map(|c| (c.to_string(), "int".to_string()))
                .collect(),
            identity_always: Vec::new(),
            composite: HashMap::new(),
            json: HashMap::new(),
            enums: HashMap::new(),
            oid,
        };
        let changes: Vec<ColumnChange> = vec![
            (3, 7, "a".into(), Some("b".into())),
            (3, 7, "d".into(), None),
            (4, 7, "b".into(), Some("c".into())),
            (4, 8, "a".into(), Some("z".into())),
        ];
        let cols: Vec<String> = ["id", "a", "d", "x"].map(String::from).to_vec();
        let e = ev(
            1,
            Op::Update,
            0,
            Some(r#"{"id":1,"a":2}"#),
            Some(r#"{"id":1,"a":5,"d":"gone","x":1}"#),
        );
        let (events, cols2) =
            as_changed_since(&changes, &target(7, &["id", "c", "x"]), &cols, &[&e])
                .unwrap()
                .expect("renamed");
        assert_eq!(cols2, ["id", "c", "x"]);
        assert_eq!(
            events[0].data.as_ref().unwrap().get(),
            r#"{"id":1,"c":5,"x":1}"#
        );
        assert_eq!(events[0].key.as_ref().unwrap().get(), r#"{"id":1,"c":2}"#);
        // A name the table has (a column added under it since): kept as written.
        assert!(
            as_changed_since(&changes, &target(8, &["id", "a", "d", "x"]), &cols, &[&e])
                .unwrap()
                .is_none()
        );
        // Another table's changes: nothing.
        assert!(
            as_changed_since(&changes, &target(9, &["id"]), &cols, &[&e])
                .unwrap()
                .is_none()
        );
        // A new name the image has already: left as written (the statement says which).
        let both = ev(2, Op::Insert, 0, None, Some(r#"{"id":2,"a":1,"c":2}"#));
        let cols: Vec<String> = ["id", "a", "c"].map(String::from).to_vec();
        assert!(
            as_changed_since(&changes, &target(7, &["id", "c"]), &cols, &[&both])
                .unwrap()
                .is_none()
        );
    }

    fn simple(name: &str) -> TableMeta {
        TableMeta {
            oid: None,
            soft_delete_column: None,
            synced_at_column: None,
            schema: "app".into(),
            name: name.into(),
            key: vec!["id".into()],
            columns: vec!["id".into(), "v".into()],
            generated: vec![],
            json_columns: vec![],
            key_deferrable: false,
            identity_always: Vec::new(),
        }
    }

    fn plan_of(events: &[Event], reorderable: &[bool]) -> Plan {
        let refs: Vec<&Event> = events.iter().collect();
        let columns: Vec<Columns> = refs
            .iter()
            .map(|e| match &e.data {
                Some(d) => crate::wire::object_keys(d).unwrap().into(),
                None => Vec::new().into(),
            })
            .collect();
        plan_runs(
            &refs,
            &columns,
            &[simple("a"), simple("b")],
            reorderable,
            1000,
        )
    }

    /// Key changes: one by one, except those of one statement on a table with a
    /// DEFERRABLE key (numbered in the old key's member ""), which form one run.
    #[test]
    fn key_changes_of_one_statement_form_one_run_under_a_deferrable_key() {
        let change = |id: i64, stmt: &str, old: i32| {
            ev(
                id,
                Op::Update,
                0,
                Some(&format!(r#"{{ "id" : {old}, "" : "{stmt}" }}"#)),
                Some(&format!(r#"{{"id":{},"v":"x"}}"#, old + 1)),
            )
        };
        let events = [
            change(1, "1", 1),
            change(2, "1", 2),
            change(3, "1", 3),
            change(4, "2", 9),
            change(5, "2", 8),
        ];
        let refs: Vec<&Event> = events.iter().collect();
        let columns: Vec<Columns> = refs
            .iter()
            .map(|e| {
                crate::wire::object_keys(e.data.as_deref().unwrap())
                    .unwrap()
                    .into()
            })
            .collect();
        let deferrable = TableMeta {
            key_deferrable: true,
            ..simple("a")
        };
        let plan = plan_runs(&refs, &columns, &[deferrable], &[], 1000);
        assert_eq!(plan.runs, vec![vec![0, 1, 2], vec![3, 4]]);
        let plan = plan_runs(&refs, &columns, &[simple("a")], &[], 1000);
        assert_eq!(plan.runs.len(), 5, "one by one without a deferrable key");
    }

    /// Transactions of "insert into a, update b, delete from a": across transactions the
    /// rows of each kind form one run each; each row keeps its own order.
    #[test]
    fn runs_span_transactions_and_keep_each_rows_order() {
        let mut events = Vec::new();
        for i in 0..5 {
            events.push(ev(
                events.len() as i64,
                Op::Insert,
                0,
                None,
                Some(&format!(r#"{{"id":{i},"v":1}}"#)),
            ));
            events.push(ev(
                events.len() as i64,
                Op::Update,
                1,
                None,
                Some(&format!(r#"{{"id":{},"v":{i}}}"#, i % 2)),
            ));
            if i > 0 {
                events.push(ev(
                    events.len() as i64,
                    Op::Delete,
                    0,
                    Some(&format!(r#"{{"id":{}}}"#, i - 1)),
                    None,
                ));
            }
        }
        let plan = plan_of(&events, &[true, true]);
        assert!(plan.reordered);
        assert_eq!(
            plan.runs,
            vec![
                vec![0, 2, 5, 8, 11],
                vec![1, 3, 6, 9, 12],
                vec![4, 7, 10, 13]
            ]
        );
        // In source order: one run per statement.
        let ordered = plan_of(&events, &[]);
        assert!(!ordered.reordered);
        assert_eq!(ordered.runs.len(), events.len());
    }

    /// A row deleted and inserted again: the second insert cannot join the first run.
    #[test]
    fn a_row_inserted_again_after_its_delete_starts_a_later_run() {
        let events = vec![
            ev(0, Op::Insert, 0, None, Some(r#"{"id":1,"v":1}"#)),
            ev(1, Op::Delete, 0, Some(r#"{"id":1}"#), None),
            ev(2, Op::Insert, 0, None, Some(r#"{"id":2,"v":1}"#)),
            ev(3, Op::Insert, 0, None, Some(r#"{"id":1,"v":2}"#)),
            ev(4, Op::Update, 0, None, Some(r#"{"id":2,"v":3}"#)),
        ];
        let plan = plan_of(&events, &[true, true]);
        assert_eq!(plan.runs, vec![vec![0, 2], vec![1], vec![3], vec![4]]);
    }

    /// A key change, a truncate and tables not reorderable are barriers: nothing after them
    /// joins a run before them.
    #[test]
    fn barriers_close_earlier_runs() {
        let events = vec![
            ev(0, Op::Insert, 0, None, Some(r#"{"id":1,"v":1}"#)),
            ev(
                1,
                Op::Update,
                0,
                Some(r#"{"id":7}"#),
                Some(r#"{"id":8,"v":1}"#),
            ),
            ev(2, Op::Insert, 0, None, Some(r#"{"id":2,"v":1}"#)),
            ev(3, Op::Truncate, 1, None, None),
            ev(4, Op::Insert, 0, None, Some(r#"{"id":3,"v":1}"#)),
            ev(5, Op::Insert, 1, None, Some(r#"{"id":1,"v":1}"#)),
            ev(6, Op::Insert, 1, None, Some(r#"{"id":2,"v":1}"#)),
            ev(7, Op::Insert, 0, None, Some(r#"{"id":4,"v":1}"#)),
        ];
        // Table b (1) is not reorderable: its inserts run in order, between a's.
        let plan = plan_of(&events, &[true, false]);
        assert_eq!(
            plan.runs,
            vec![
                vec![0],
                vec![1],
                vec![2],
                vec![3],
                vec![4],
                vec![5, 6],
                vec![7]
            ]
        );
        assert!(!plan.reordered);
    }

    #[test]
    fn array_updates_join_by_key_and_keep_the_last_row_of_each() {
        let t = qualified("copy", "Order Lines");
        // Columns in another order than the table's: qty, order, line.
        let cols: Vec<String> = ["qty", "order", "line"].map(String::from).to_vec();
        let tys = ["pg_catalog.int4", "pg_catalog.int8", "pg_catalog.int4"];
        let upd = update_arrays_sql(&meta(), &cols, &tys, &t).unwrap();
        assert!(
            upd.contains("set \"qty\" = u.c0::pg_catalog.int4 from"),
            "{upd}"
        );
        assert!(
            upd.contains(
                "where t.\"order\" = u.c1::pg_catalog.int8 and t.\"line\" = u.c2::pg_catalog.int4"
            ),
            "{upd}"
        );
        assert!(
            upd.contains("select $4::pg_catalog.int8, count(*)"),
            "{upd}"
        );
        let key_only: Vec<String> = ["order", "line"].map(String::from).to_vec();
        assert_eq!(update_arrays_sql(&meta(), &key_only, &tys[1..], &t), None);
        let col = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        let arrays = vec![
            col(&["1", "2", "3", "4", "5"]),
            col(&["7", "7", "8", "7", "7"]),
            col(&["1", "2", "1", "1", "2"]),
        ];
        assert_eq!(
            last_per_key(arrays.clone(), &[1, 2]),
            vec![
                col(&["3", "4", "5"]),
                col(&["8", "7", "7"]),
                col(&["1", "1", "2"])
            ],
            "the last row of each key (order, line), in run order"
        );
        let distinct = vec![col(&["1", "2"]), col(&["7", "7"]), col(&["1", "2"])];
        assert_eq!(last_per_key(distinct.clone(), &[1, 2]), distinct);
    }

    #[test]
    fn statements_quote_every_identifier() {
        let t = qualified("copy", "Order Lines");
        let ins = insert_sql(&meta(), &meta().columns, &t);
        assert!(
            ins.starts_with("insert into \"copy\".\"Order Lines\" (\"order\", \"line\", \"qty\")"),
            "{ins}"
        );
        let upd = update_sql(&meta(), &meta().columns, &t);
        assert!(upd.contains("\"qty\" = r.\"qty\""), "{upd}");
        assert!(
            !upd.contains("\"order\" = r.\"order\","),
            "key columns are not set: {upd}"
        );
        assert!(
            upd.contains("t.\"order\" = r.\"order\" and t.\"line\" = r.\"line\""),
            "{upd}"
        );
        let del = delete_sql(&meta(), &t);
        assert!(del.contains("t.\"order\" = k.\"order\""), "{del}");
    }

    #[test]
    fn key_only_table_update_counts_its_rows() {
        let mut m = meta();
        m.columns.truncate(2);
        // Nothing to set, but the rows are counted.
        let check = update_sql(&m, &m.columns, "x");
        assert!(!check.contains("update "), "{check}");
        assert!(
            check.contains("exists (select from x as t where"),
            "{check}"
        );
        assert!(update_key_sql(&m, &m.columns, "x").contains("\"line\" = r.\"line\""));
    }

    #[test]
    fn json_array_joins_raw_objects() {
        assert_eq!(
            json_array(["{\"a\":1}", "{}"].into_iter()),
            "[{\"a\":1},{}]"
        );
        assert_eq!(json_array(std::iter::empty()), "[]");
    }
}
