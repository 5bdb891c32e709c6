//! Source-side installation: the queue schema and the row triggers.

use std::collections::{BTreeMap, BTreeSet};

use ddlwatcher::{qualified, quote_ident, snapshot, Catalog, Table, TargetExpression};
use tokio_postgres::Client;

use crate::config::Config;
use crate::db;

/// Versioned SQL of the source side, in order.
pub const SOURCE_SQL: &[(i32, &str)] = &[
    (1, include_str!("../sql/source_001_queue.sql")),
    (2, include_str!("../sql/source_002_event_triggers.sql")),
    (3, include_str!("../sql/source_003_capture.sql")),
    (4, include_str!("../sql/source_004_operations.sql")),
    (5, include_str!("../sql/source_005_alerts.sql")),
    (6, include_str!("../sql/source_006_table_rows.sql")),
    (7, include_str!("../sql/source_007_snapshot.sql")),
    (8, include_str!("../sql/source_008_mirrors.sql")),
    (9, include_str!("../sql/source_009_partitions.sql")),
    (10, include_str!("../sql/source_010_excluded_columns.sql")),
    (
        11,
        include_str!("../sql/source_011_partition_maintenance.sql"),
    ),
    (12, include_str!("../sql/source_012_deferrable_keys.sql")),
    (
        13,
        include_str!("../sql/source_013_capture_without_search_path.sql"),
    ),
    (
        14,
        include_str!("../sql/source_014_key_image_after_a_rename.sql"),
    ),
    (15, include_str!("../sql/source_015_type_change_checks.sql")),
    (
        16,
        include_str!("../sql/source_016_inheritance_children.sql"),
    ),
    (17, include_str!("../sql/source_017_capture_forms.sql")),
    (
        18,
        include_str!("../sql/source_018_reattached_partitions.sql"),
    ),
    (
        19,
        include_str!("../sql/source_019_version_transactions.sql"),
    ),
    (20, include_str!("../sql/source_020_form_attributes.sql")),
    (21, include_str!("../sql/source_021_json_null_updates.sql")),
];

/// Registers a target (mirror) in `target_state`, state SETUP, its batches starting after
/// the current snapshot; nothing when it is registered already. `$1`: the name.
pub fn register_target_sql(schema: &str) -> String {
    format!(
        "insert into {schema}.target_state (target, last_snapshot) values ($1, pg_current_snapshot())
         on conflict (target) do nothing"
    )
}

/// The row trigger's name on every replicated table.
pub const TRIGGER_NAME: &str = "pgteleport_capture";

/// The TRUNCATE trigger's name on every replicated table.
pub const TRUNCATE_TRIGGER_NAME: &str = "pgteleport_truncate";

/// Why installation failed. Each names the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("installing schema `{schema}` failed: {} — the role needs CREATE on the database (GRANT CREATE ON DATABASE … TO …)", db::describe(.source))]
    Schema {
        schema: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("reading the catalog for target `{target}` failed: {}", db::describe_read(.source))]
    Catalog {
        target: String,
        #[source]
        source: ddlwatcher::ReadError,
    },
    #[error("table {table} (target `{target}`) has neither a primary key nor a unique index on NOT NULL columns; add one (ALTER TABLE … ADD PRIMARY KEY …, or a unique index and ALTER TABLE … REPLICA IDENTITY USING INDEX …) or exclude the table from target_expression, or set `keyless_tables: true` to replicate it by full-row identity (updates and deletes then find their rows through an index of the target table that leads with one of its columns, else by reading the table, once per run of them)")]
    NoPrimaryKey { table: String, target: String },
    #[error("cannot install the capture trigger on {table}: {}{hint}", db::describe(.source))]
    Trigger {
        table: String,
        hint: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("target `{target}`: exclude_columns names column `{column}` of {table}, which has no such column (and never had one that pgteleport excluded) — correct the name; a column renamed before pgteleport first saw it cannot be recognised by its old name")]
    ExcludedColumn {
        target: String,
        table: String,
        column: String,
    },
    #[error("recording target `{target}` failed: {}", db::describe(.source))]
    TargetState {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("use_event_triggers: true, but role `{role}` may not create event triggers ({}) — on PostgreSQL 15 only a superuser may; run the source instance as one, or set use_event_triggers: false: the ddlwatcher then replicates schema changes by diffing the catalog, without superuser", db::describe(.source))]
    EventTriggers {
        role: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("target `{target}`: rename_tables: {message}")]
    Rename { target: String, message: String },
    #[error("target `{target}`: target_expression `{expression}` is invalid: {message}")]
    Expression {
        target: String,
        expression: String,
        message: String,
    },
}

/// What installation found: the catalog each target replicates.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    pub catalogs: BTreeMap<String, Catalog>,
    /// In event-trigger mode, the event trigger's catalog snapshot (`ddl_snapshot.id`)
    /// these catalogs are: triggers are installed from them only while no later snapshot
    /// exists. The event trigger makes a table's trigger again at once when its key
    /// changes; a watcher that read an earlier snapshot made it again after that from the
    /// older catalog — writers then captured rows with a key the table no longer had,
    /// after the change's schema event, until the watcher's next pass.
    pub snapshot: Option<i64>,
}

/// Installs (or upgrades) the internal schema, then a capture trigger on every table matching
/// a target's `target_expression`, and registers each target. Idempotent.
pub async fn install(client: &mut Client, config: &Config) -> Result<Installed, InstallError> {
    // Installs by several processes at once (an instance and the initial snapshots of its
    // mirrors) run one after the other: a `create or replace` of a function or trigger
    // another transaction replaces at the same moment fails ("tuple concurrently updated").
    lock_installs(client, &config.internal_schema, true).await?;
    let installed = install_locked(client, config).await;
    lock_installs(client, &config.internal_schema, false).await?;
    installed
}

/// Takes (`lock`) or releases the session advisory lock that serialises installs into one
/// internal schema: two that put triggers on a new table at once (an initial load's and
/// the ddlwatcher's after a look) both found none and one failed ("trigger already exists").
async fn lock_installs(client: &Client, schema: &str, lock: bool) -> Result<(), InstallError> {
    db::session_lock(client, db::INSTALL_LOCK, schema, lock)
        .await
        .map_err(|source| InstallError::Schema {
            schema: schema.to_string(),
            source,
        })
}

/// The functions the replicated tables use (`used_by`: their defaults, checks, generated
/// columns and indexes, directly or through other bodies) that call a function of a user
/// schema by a bare name without setting a `search_path` of their own: on the target such
/// a name is looked up through the applier's connection. A bare call is read as the catalog
/// snapshot reads one (`ddlwatcher::snapshot::bare_names_sql`, quoted names too); names
/// that PostgreSQL's own functions have (`lower(`, `coalesce(`) are not counted. Returns
/// each function's signature and the names it calls that way, `, `-separated.
pub async fn bare_calls(
    client: &impl tokio_postgres::GenericClient,
    catalog: &Catalog,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let oids: Vec<u32> = catalog
        .functions
        .iter()
        .filter(|f| !f.used_by.is_empty())
        .map(|f| f.oid)
        .collect();
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "select p.oid::pg_catalog.regprocedure::text,
                pg_catalog.string_agg(m.name, ', ' order by m.name)
           from pg_catalog.pg_proc p
           cross join lateral ({bare}) m
          where p.oid = any($1::pg_catalog.oid[])
            and {lang} and not {own_path}
            and exists (select 1 from pg_catalog.pg_proc q
                          join pg_catalog.pg_namespace n on n.oid = q.pronamespace
                         where q.proname = m.name
                           and n.nspname not in ('pg_catalog', 'information_schema')
                           and n.nspname not like 'pg\\_%')
            and not exists (select 1 from pg_catalog.pg_proc c
                             where c.proname = m.name
                               and c.pronamespace = 'pg_catalog'::pg_catalog.regnamespace)
          group by p.oid
          order by 1",
        bare = snapshot::bare_names_sql("p.prosrc"),
        lang = snapshot::body_is_read_sql("p"),
        own_path = snapshot::own_search_path_sql("p"),
    );
    let rows = client.query(&sql, &[&oids]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn install_locked(client: &mut Client, config: &Config) -> Result<Installed, InstallError> {
    let schema = &config.internal_schema;
    db::migrate(client, schema, "source", SOURCE_SQL)
        .await
        .map_err(|source| InstallError::Schema {
            schema: schema.clone(),
            source,
        })?;
    let mut installed = Installed::default();
    for (name, target) in &config.targets {
        let expr = TargetExpression::parse(&target.target_expression).map_err(|e| {
            InstallError::Expression {
                target: name.clone(),
                expression: target.target_expression.clone(),
                message: e.to_string(),
            }
        })?;
        // Read again a few times when a schema change committing meanwhile spoils the read.
        let mut tries = 0;
        let catalog = loop {
            match Catalog::read(&*client, &expr, schema).await {
                Err(e) if crate::watcher::read_again(&e, &mut tries).await => {}
                read => {
                    break read.map_err(|source| InstallError::Catalog {
                        target: name.clone(),
                        source,
                    })?
                }
            }
        };
        if catalog.tables.is_empty() {
            tracing::warn!(target = %name, expression = %expr.as_str(), "target_expression matches no table yet");
        }
        match bare_calls(&*client, &catalog).await {
            Ok(found) => {
                for (function, calls) in found {
                    tracing::warn!(target = %name, %function, %calls,
                        "a function the replicated tables use calls these by a bare name and sets no search_path of its own: \
                         on the target they are looked up in the applier's search_path, and batches hold if they are not found there. \
                         Give the function its own (ALTER FUNCTION … SET search_path = …) or the target's connection the writers' \
                         (database.options.options: \"-c search_path=…\")");
                }
            }
            Err(e) => tracing::debug!(error = %db::describe(&e), "looking for bare calls failed"),
        }
        // A destination name must not be one another replicated table keeps.
        let tables = catalog
            .tables
            .iter()
            .map(|t| (t.schema.as_str(), t.name.as_str()));
        if let Some((from, to)) = crate::config::rename_onto_kept(&target.renames(), tables) {
            return Err(InstallError::Rename {
                target: name.clone(),
                message: format!(
                    "{}.{} is renamed to {}.{}, the name table {} keeps on the target: rename that one too, or choose another destination",
                    from.0, from.1, to.0, to.1, ddlwatcher::qualified(&to.0, &to.1)
                ),
            });
        }
        // An excluded column that fits no column of an existing table, now or before, is
        // refused at start: the column it meant would replicate.
        let excluded = crate::exclusion::Exclusions::read(
            &*client,
            &quote_ident(schema),
            name,
            &target.exclude_columns,
        )
        .await
        .map_err(|source| InstallError::TargetState {
            target: name.clone(),
            source,
        })?;
        if let Some((table, column)) = excluded.unmatched(&catalog).into_iter().next() {
            return Err(InstallError::ExcludedColumn {
                target: name.clone(),
                table,
                column,
            });
        }
        // A table without a key is refused at start, before anything is installed.
        if let Some(t) = catalog
            .tables
            .iter()
            .find(|t| refused_without_key(config, t))
        {
            return Err(InstallError::NoPrimaryKey {
                table: t.qualified(),
                target: name.clone(),
            });
        }
        installed.catalogs.insert(name.clone(), catalog);
    }
    install_tables(client, config, &installed).await?;
    install_ddl_capture(client, config)
        .await
        .map_err(|source| match source.code() {
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                InstallError::EventTriggers {
                    role: config.database.username.clone(),
                    source,
                }
            }
            _ => InstallError::Schema {
                schema: schema.clone(),
                source,
            },
        })?;
    Ok(installed)
}

/// The event triggers' names (database-wide, so they carry the internal schema's name):
/// `ddl_command_end`, `sql_drop`, `table_rewrite`.
fn event_trigger_names(schema: &str) -> [String; 3] {
    [
        format!("{schema}_ddl_command_end"),
        format!("{schema}_sql_drop"),
        format!("{schema}_table_rewrite"),
    ]
}

/// Installs the catalog query as `catalog_snapshot`, records what the event trigger needs
/// (the targets' tables, `keyless_tables`), and creates the event triggers when
/// `use_event_triggers` is set (drops them when it is not).
async fn install_ddl_capture(
    client: &mut Client,
    config: &Config,
) -> Result<(), tokio_postgres::Error> {
    let schema = &config.internal_schema;
    let s = quote_ident(schema);
    let regexes: Vec<String> = config
        .targets
        .values()
        .filter_map(|t| TargetExpression::parse(&t.target_expression).ok())
        .map(|e| format!("({})", e.to_regex()))
        .collect();
    let filter = (!regexes.is_empty()).then(|| regexes.join("|"));
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "create or replace function {s}.catalog_snapshot(filter text, internal name) returns json
         language sql stable set search_path = pg_catalog, pg_temp set jit = off as $pgteleport_catalog$ {} $pgteleport_catalog$",
        ddlwatcher::catalog_sql()
    ))
    .await?;
    tx.execute(
        &format!(
            // Only when it changes: the row is locked by every DDL transaction until it
            // ends (it numbers them), and an initial load installs too.
            "update {s}.ddl_clock set filter = $1, keyless = $2,
                    n = greatest(n, (select coalesce(max(version), 0) from {s}.ddl))
              where filter is distinct from $1 or keyless is distinct from $2
                 or n < (select coalesce(max(version), 0) from {s}.ddl)"
        ),
        &[&filter, &config.keyless_tables],
    )
    .await?;
    let names = event_trigger_names(schema);
    let existing: i64 = tx
        .query_one(
            "select count(*) from pg_catalog.pg_event_trigger where evtname = any($1)",
            &[&names.as_slice()],
        )
        .await?
        .get(0);
    let [end, drop, rewrite] = names.map(|n| quote_ident(&n));
    if config.use_event_triggers {
        if existing < 3 {
            tx.batch_execute(&format!(
                "drop event trigger if exists {end}; drop event trigger if exists {drop};
                 drop event trigger if exists {rewrite};
                 create event trigger {end} on ddl_command_end execute function {s}.on_ddl();
                 create event trigger {drop} on sql_drop execute function {s}.on_ddl();
                 create event trigger {rewrite} on table_rewrite execute function {s}.on_table_rewrite();"
            ))
            .await?;
            tracing::info!(%schema, "event triggers installed: schema changes are recorded in their own transactions");
        }
    } else if existing > 0 {
        tx.batch_execute(&format!(
            "drop event trigger if exists {end}; drop event trigger if exists {drop};
             drop event trigger if exists {rewrite};"
        ))
        .await?;
        tracing::info!(%schema, "event triggers removed (use_event_triggers: false): the ddlwatcher diffs the catalog");
    }
    tx.commit().await
}

/// Whether `table` is refused for having no key (`keyless_tables` is off).
fn refused_without_key(config: &Config, table: &Table) -> bool {
    table.replica_key().is_none() && !config.keyless_tables
}

/// Installs a capture trigger on each of `installed`'s tables that lacks one (queueing the
/// rows a table new to replication already holds) and registers each target. The caller
/// read the tables (the ddlwatcher passes those it just diffed).
pub async fn install_tables(
    client: &mut Client,
    config: &Config,
    installed: &Installed,
) -> Result<(), InstallError> {
    lock_installs(client, &config.internal_schema, true).await?;
    let done = install_tables_locked(client, config, installed).await;
    lock_installs(client, &config.internal_schema, false).await?;
    done
}

async fn install_tables_locked(
    client: &mut Client,
    config: &Config,
    installed: &Installed,
) -> Result<(), InstallError> {
    let mut all: BTreeMap<u32, Table> = BTreeMap::new();
    let mut refused = None;
    let mut keyless: BTreeMap<u32, (Table, String)> = BTreeMap::new();
    for (name, catalog) in &installed.catalogs {
        for t in &catalog.tables {
            if refused_without_key(config, t) {
                keyless.insert(t.oid, (t.clone(), name.clone()));
                continue;
            }
            all.insert(t.oid, t.clone());
        }
    }
    if !keyless.is_empty() {
        // Refused (reported below, after the other tables' triggers), except that a table
        // that lost its key keeps a row trigger, made again without key columns: its
        // changes then carry whole old rows, which the target can apply, instead of a key
        // the table no longer has.
        let oids: Vec<u32> = keyless.keys().copied().collect();
        let captured: Vec<u32> = client
            .query(
                "select distinct tgrelid from pg_catalog.pg_trigger where tgname = $1 and tgrelid = any($2)",
                &[&TRIGGER_NAME, &oids],
            )
            .await
            .map_err(|source| InstallError::Schema {
                schema: config.internal_schema.clone(),
                source,
            })?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (oid, (t, target)) in keyless {
            if captured.contains(&oid) {
                all.insert(oid, t.clone());
            }
            refused.get_or_insert(InstallError::NoPrimaryKey {
                table: t.qualified(),
                target,
            });
        }
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match install_triggers(client, config, &all, installed).await {
            Ok(Some(gone)) => {
                let t = all.remove(&gone).expect("installed from this map");
                tracing::info!(table = %t.qualified(), "table dropped since the catalog was read: no capture trigger for it");
                attempt -= 1;
            }
            Err(
                InstallError::Trigger { source, .. } | InstallError::TargetState { source, .. },
            ) if attempt < 5 && db::classify(&source) == db::ErrorClass::Retryable => {
                tracing::info!(attempt, error = %db::describe(&source), "installing triggers: retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
            }
            r => {
                r?;
                break;
            }
        }
    }
    tracing::info!(
        tables = all.len(),
        targets = config.targets.len(),
        "capture installed"
    );
    refused.map_or(Ok(()), Err)
}

/// Installs the capture triggers of `all` in one transaction; `Some(oid)` (nothing done)
/// when the table `oid` was dropped since the catalog was read.
async fn install_triggers(
    client: &mut Client,
    config: &Config,
    all: &BTreeMap<u32, Table>,
    installed: &Installed,
) -> Result<Option<u32>, InstallError> {
    let schema = &config.internal_schema;
    let schema_error = |source| InstallError::Schema {
        schema: schema.clone(),
        source,
    };
    // Triggers and cursors in one transaction: the cursor's snapshot is taken while the new
    // triggers' locks keep writers out, so no change can fall between capture and cursor.
    let tx = client.transaction().await.map_err(schema_error)?;
    if let Some(id) = installed.snapshot {
        // Locked: a schema change's event trigger waits for this transaction (it counts
        // on the same row), and makes its tables' triggers again from its own snapshot.
        let n: i64 = tx
            .query_one(
                &format!("select n from {}.ddl_clock for update", quote_ident(schema)),
                &[],
            )
            .await
            .map_err(schema_error)?
            .get(0);
        if n > id {
            tracing::debug!(
                snapshot = id,
                latest = n,
                "a later schema change exists: triggers are installed from its snapshot"
            );
            return Ok(None);
        }
    }
    // After the first install (a catalog snapshot exists), a table that gets its trigger
    // now is new to replication: the rows it holds are queued as inserts in this same
    // transaction, while the trigger's lock keeps writers out, so none is lost or doubled.
    let copy_existing: bool = tx
        .query_one(
            &format!(
                "select exists (select 1 from {}.schema_snapshot)",
                quote_ident(schema)
            ),
            &[],
        )
        .await
        .map_err(schema_error)?
        .get(0);
    for t in all.values() {
        match install_trigger(&tx, t, schema, copy_existing).await {
            Ok(Some(n)) if copy_existing => {
                tracing::info!(table = %t.qualified(), rows = n, "new table captured with the rows it already held");
            }
            Ok(_) => {}
            Err(e) => {
                // A table dropped since the catalog was read: the install is made again
                // without it (its drop is the next look's, or its event trigger's, to
                // replicate).
                tx.rollback().await.map_err(schema_error)?;
                let exists: bool = client
                    .query_one(
                        "select exists (select from pg_catalog.pg_class where oid = $1)",
                        &[&t.oid],
                    )
                    .await
                    .map_err(schema_error)?
                    .get(0);
                return if exists { Err(e) } else { Ok(Some(t.oid)) };
            }
        }
        if !config.use_event_triggers {
            record_form(&tx, &quote_ident(schema), t, false)
                .await
                .map_err(schema_error)?;
        }
    }
    for name in config.targets.keys() {
        tx.execute(&register_target_sql(&quote_ident(schema)), &[name])
            .await
            .map_err(|source| InstallError::TargetState {
                target: name.clone(),
                source,
            })?;
        // The ddlwatcher's baseline: schema changes from here on are replicated. Read only
        // when the target has none yet (the watcher keeps it current afterwards).
        let has_baseline: bool = tx
            .query_one(
                &format!(
                    "select exists (select 1 from {}.schema_snapshot where target = $1)",
                    quote_ident(schema)
                ),
                &[name],
            )
            .await
            .map_err(|source| InstallError::TargetState {
                target: name.clone(),
                source,
            })?
            .get(0);
        let catalog = installed.catalogs.get(name).cloned().unwrap_or_default();
        // Excluded columns by number from here on (the config names them).
        crate::exclusion::Exclusions::record(
            &tx,
            &quote_ident(schema),
            name,
            &config.targets[name].exclude_columns,
            &catalog,
        )
        .await
        .map_err(|source| InstallError::TargetState {
            target: name.clone(),
            source,
        })?;
        if has_baseline {
            continue;
        }
        let catalog = serde_json::to_string(&catalog).expect("serialisable");
        tx.execute(
            &format!(
                "insert into {}.schema_snapshot (target, catalog) values ($1, $2::text::jsonb) on conflict (target) do nothing",
                quote_ident(schema)
            ),
            &[name, &catalog],
        )
        .await
        .map_err(|source| InstallError::TargetState {
            target: name.clone(),
            source,
        })?;
    }
    tx.commit().await.map_err(|source| InstallError::Schema {
        schema: schema.clone(),
        source,
    })?;
    Ok(None)
}

/// Puts the capture triggers on `table` through the source's `capture_table` (one
/// implementation for install, the ddlwatcher and the event trigger). Returns the rows
/// queued, or `None` when the row trigger was already right.
async fn install_trigger(
    tx: &tokio_postgres::Transaction<'_>,
    table: &Table,
    schema: &str,
    copy_rows: bool,
) -> Result<Option<i64>, InstallError> {
    let s = quote_ident(schema);
    let json = serde_json::to_string(table).expect("serialisable");
    let n: i64 = tx
        .query_one(
            &format!("select {s}.capture_table($1, {s}.capture_args($2::text::jsonb), $3)"),
            &[&table.oid, &json, &copy_rows],
        )
        .await
        .map_err(|source| trigger_error(table, source))?
        .get(0);
    Ok((n >= 0).then_some(n))
}

/// Records that events of `table` from the next one on are written by a row trigger that
/// knows its columns as `table` has them (`capture_form`, version 17), unless the latest
/// record says so already. Diffing mode only, where the trigger is made again at the
/// ddlwatcher's look, not at the schema change: between the two, a json/jsonb column the
/// trigger does not know yet travels in its JSON form, which the transmitter turns into
/// its text form ([`crate::transmitter`]). Called where the trigger is made, after it (its
/// lock keeps writers out: every event before the number is the earlier trigger's), and
/// at each look that changes the table. `schema` is quoted.
pub async fn record_form(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &Table,
    always: bool,
) -> Result<(), tokio_postgres::Error> {
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    let attnums: Vec<i16> = table.columns.iter().map(|c| c.attnum).collect();
    let text_form: Vec<bool> = table.columns.iter().map(|c| c.text_form).collect();
    let s = schema;
    let row = tx
        .query_opt(
            &format!(
                "with c as (
                     select coalesce(array_agg(c.name order by c.ord), '{{}}') as columns,
                            coalesce(array_agg(c.name order by c.ord) filter (where c.json), '{{}}') as json
                       from (select c.name, c.ord,
                                    c.text_form and coalesce({base} in ('pg_catalog.json'::pg_catalog.regtype,
                                                                        'pg_catalog.jsonb'::pg_catalog.regtype), false) as json
                               from rows from (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::int2[]), pg_catalog.unnest($4::bool[]))
                                    with ordinality as c(name, attnum, text_form, ord)
                               left join pg_catalog.pg_attribute a
                                      on a.attrelid = $1 and a.attnum = c.attnum and not a.attisdropped) c)
                 select pg_catalog.nextval({seq}::pg_catalog.regclass), c.columns, c.json from c
                  where $5 or not exists (select from (select f.columns, f.json from {s}.capture_form f
                                                        where f.relid = $1 order by f.from_ev desc limit 1) l
                                           where l.columns = c.columns and l.json = c.json)",
                base = ddlwatcher::base_type_sql("a.atttypid"),
                seq = ddlwatcher::quote_literal(&format!("{s}.event_id_seq")),
            ),
            &[&table.oid, &names, &attnums, &text_form, &always],
        )
        .await?;
    let Some(row) = row else {
        return Ok(());
    };
    // The rotation read after the number: a writer whose event number is below it read the
    // rotation before, so its event is in this rotation's queue table or an earlier one.
    let (from, columns, json): (i64, Vec<String>, Vec<String>) =
        (row.get(0), row.get(1), row.get(2));
    tx.execute(
        &format!(
            "insert into {s}.capture_form (relid, from_ev, rotation, columns, json, natts)
             values ($1, $2, coalesce(pg_catalog.pg_sequence_last_value({rot}::pg_catalog.regclass), 0), $3, $4,
                     (select c.relnatts from pg_catalog.pg_class c where c.oid = $1))",
            rot = ddlwatcher::quote_literal(&format!("{s}.queue_rotation")),
        ),
        &[&table.oid, &from, &columns, &json],
    )
    .await?;
    Ok(())
}

fn trigger_error(table: &Table, source: tokio_postgres::Error) -> InstallError {
    let hint = if source.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        format!(
            " — the role must own the table or have the TRIGGER privilege on it (GRANT TRIGGER ON {} TO …)",
            table.qualified()
        )
    } else {
        String::new()
    };
    InstallError::Trigger {
        table: table.qualified(),
        hint,
        source,
    }
}

/// A capture trigger that does not fire for ordinary writes: its table's changes (or its
/// TRUNCATEs) reach no target while it stays so.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SilentTrigger {
    /// The table, qualified and quoted.
    pub table: String,
    /// The trigger's name.
    pub trigger: String,
    /// `disabled`, or `replica only` (ENABLE REPLICA: it fires only under
    /// `session_replication_role = replica`).
    pub state: &'static str,
}

impl SilentTrigger {
    /// What to do about it.
    pub fn fix(&self) -> String {
        format!(
            "ALTER TABLE {} ENABLE TRIGGER {}, then compare the table with `pgteleport verify` \
             (changes made meanwhile did not replicate) and re-run its initial load if they differ",
            self.table,
            quote_ident(&self.trigger)
        )
    }
}

/// The capture triggers (of the internal schema `schema`, unquoted) that do not fire for
/// ordinary writes — disabled (`ALTER TABLE … DISABLE TRIGGER`, by hand or by a restore's
/// `--disable-triggers`) or set to fire in replica mode only — partitions' own included.
pub async fn silent_triggers(
    client: &Client,
    schema: &str,
) -> Result<Vec<SilentTrigger>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select pg_catalog.format('%I.%I', n.nspname, c.relname), t.tgname::text, t.tgenabled = 'R'
               from pg_catalog.pg_trigger t
               join pg_catalog.pg_class c on c.oid = t.tgrelid
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
               join pg_catalog.pg_proc p on p.oid = t.tgfoid
               join pg_catalog.pg_namespace pn on pn.oid = p.pronamespace
              where pn.nspname = $1 and t.tgname in ($2, $3) and t.tgenabled not in ('O', 'A')
              order by 1, 2",
            &[&schema, &TRIGGER_NAME, &TRUNCATE_TRIGGER_NAME],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SilentTrigger {
            table: r.get(0),
            trigger: r.get(1),
            state: if r.get::<_, bool>(2) {
                "replica only"
            } else {
                "disabled"
            },
        })
        .collect())
}

/// Removes every capture trigger and the internal schema. Returns the tables it touched.
pub async fn uninstall(
    client: &mut Client,
    schema: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // First, so that dropping the capture triggers records no schema change.
    for name in event_trigger_names(schema) {
        tx.batch_execute(&format!(
            "drop event trigger if exists {}",
            quote_ident(&name)
        ))
        .await?;
    }
    // Each trigger on its own table: those PostgreSQL cloned onto partitions go with the
    // partitioned table's (dropping one directly is refused).
    let rows = tx
        .query(
            "select n.nspname::text, c.relname::text, t.tgname::text
               from pg_catalog.pg_trigger t
               join pg_catalog.pg_class c on c.oid = t.tgrelid
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
               join pg_catalog.pg_proc p on p.oid = t.tgfoid
               join pg_catalog.pg_namespace pn on pn.oid = p.pronamespace
              where t.tgname in ($1, $3, 'pgteleport_statement') and pn.nspname = $2
                and p.proname in ('capture_row', 'capture_row_numbered', 'capture_truncate', 'count_statement')
                and t.tgparentid = 0",
            &[&TRIGGER_NAME, &schema, &TRUNCATE_TRIGGER_NAME],
        )
        .await?;
    let mut touched = BTreeSet::new();
    for r in rows {
        let (s, t, name): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        tx.batch_execute(&format!(
            "drop trigger if exists {} on {}",
            quote_ident(&name),
            qualified(&s, &t)
        ))
        .await?;
        touched.insert(qualified(&s, &t));
    }
    tx.batch_execute(&format!(
        "drop schema if exists {} cascade",
        quote_ident(schema)
    ))
    .await?;
    tx.commit().await?;
    Ok(touched.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::SOURCE_SQL;
    use serde_json::Value;

    /// The latest definition of function `name` among the source migrations.
    fn latest(name: &str) -> String {
        latest_before(i32::MAX, name)
    }

    /// The latest definition of function `name` among the source migrations before `version`.
    fn latest_before(version: i32, name: &str) -> String {
        let head = format!("create or replace function {name}()");
        let sql = SOURCE_SQL
            .iter()
            .rev()
            .filter(|(v, _)| *v < version)
            .find_map(|(_, s)| s.find(&head).map(|i| &s[i..]))
            .unwrap_or_else(|| panic!("no migration defines {name}"));
        sql[..sql.find("$$;").expect("function body ends") + 3].to_string()
    }

    /// capture_row_numbered (tables with a DEFERRABLE key) is capture_row plus the block
    /// that numbers statements: a change to one must be made to the other.
    #[test]
    fn the_numbered_row_trigger_is_the_row_trigger_plus_its_block() {
        let numbered = latest("capture_row_numbered");
        let begin = numbered
            .find("        -- numbered: begin\n")
            .expect("block begins");
        let end_marker = "        -- numbered: end\n";
        let end = numbered.find(end_marker).expect("block ends") + end_marker.len();
        let without = format!("{}{}", &numbered[..begin], &numbered[end..]);
        assert_eq!(
            without.replace("capture_row_numbered()", "capture_row()"),
            latest("capture_row")
        );
    }

    /// The row triggers are SECURITY DEFINER functions without `SET search_path` (version
    /// 13): nothing they use may be found through a writer's search_path, where a writer's
    /// own schema or temporary table would come first.
    #[test]
    fn the_row_triggers_find_nothing_through_the_search_path() {
        const SCHEMA: &str = "internal schema";
        for name in ["capture_row", "capture_row_numbered"] {
            let sql = crate::db::with_schema(&latest(name), SCHEMA);
            assert!(!sql.contains("search_path"), "{name} sets search_path");
            let found = found_through_search_path(&sql, SCHEMA);
            assert!(
                found.is_empty(),
                "{name} finds through the search_path: {found:#?}"
            );
        }
        // The check sees what version 12's capture_row (with its SET clause) left to the
        // search_path.
        let found = found_through_search_path(&latest_before(13, "capture_row"), SCHEMA);
        for what in [
            "function to_json",
            "function format",
            "operator =",
            "operator ->>",
            "operator %",
            "type json",
            "type text",
            "type char",
            "relation event_0",
            "relation known_partition",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(&format!("{what} in"))),
                "{what} not found in {found:#?}"
            );
        }
    }

    /// What PL/pgSQL function `sql` looks up through the search_path: functions, operators
    /// and types not qualified with pg_catalog, relations not qualified with `schema`, and
    /// a simple CASE (it looks `=` up by name); IS DISTINCT FROM, IN, LIKE and the like show
    /// as operators without schema. Format strings of `format(…)` are checked as SQL too.
    fn found_through_search_path(sql: &str, schema: &str) -> Vec<String> {
        let tree = pg_query::parse_plpgsql(sql).expect("the function parses");
        let mut texts = Vec::new();
        statements_of(&tree, &mut texts);
        assert!(texts.len() > 20, "too few statements found: {texts:#?}");
        let mut found = Vec::new();
        while let Some(text) = texts.pop() {
            let parsed = pg_query::parse(&text).unwrap_or_else(|e| panic!("`{text}`: {e}"));
            let tree = serde_json::to_value(&parsed.protobuf).expect("serialises");
            unqualified(&tree, schema, &text, &mut found, &mut texts);
        }
        found
    }

    /// The SQL texts of a PL/pgSQL parse tree: statements, expressions (as SELECTs) and
    /// variable types (as casts).
    fn statements_of(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (key, x) in m {
                    if key == "PLpgSQL_expr" {
                        let q = x["query"].as_str().expect("query text");
                        out.push(match x["parseMode"].as_i64().unwrap_or(0) {
                            0 => q.to_string(),
                            3 => format!("select {}", &q[q.find(":=").expect("assignment") + 2..]),
                            _ => format!("select {q}"),
                        });
                    } else if key == "PLpgSQL_type" {
                        let t = x["typname"].as_str().expect("type name");
                        out.push(format!("select null::{t}"));
                    } else {
                        statements_of(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| statements_of(x, out)),
            _ => {}
        }
    }

    /// The types PostgreSQL 15's grammar names by keyword (`int`, `boolean`, `varchar`, …).
    const KEYWORD_TYPES_15: &[&str] = &[
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "numeric",
        "bool",
        "bpchar",
        "varchar",
        "bit",
        "varbit",
        "timestamp",
        "timestamptz",
        "time",
        "timetz",
        "interval",
    ];

    /// The strings of a name list (`[{"node": {"String": {"sval": …}}}, …]`).
    fn names(v: &Value) -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["node"]["String"]["sval"].as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn unqualified(
        v: &Value,
        schema: &str,
        text: &str,
        found: &mut Vec<String>,
        more: &mut Vec<String>,
    ) {
        let check = |what: &str, list: &Value| {
            let n = names(list);
            (!(n.len() == 2 && n[0] == "pg_catalog"))
                .then(|| format!("{what} {} in `{text}`", n.join(".")))
        };
        match v {
            Value::Object(m) => {
                if m.contains_key("funcname") {
                    found.extend(check("function", &m["funcname"]));
                    let n = names(&m["funcname"]);
                    let first = &m["args"][0]["node"]["AConst"]["val"]["Sval"]["sval"];
                    if n.last().map(String::as_str) == Some("format") {
                        if let Some(f) = first.as_str() {
                            more.push(
                                f.replace("%I", "x")
                                    .replace("%L", "null")
                                    .replace("%s", "x"),
                            );
                        }
                    }
                }
                if m.contains_key("typmods") && m.contains_key("names") {
                    found.extend(check("type", &m["names"]));
                    // The parser (PostgreSQL 17's) names the types its grammar has keywords
                    // for with pg_catalog; PostgreSQL 15's grammar has no keyword `json`.
                    let written = m["location"]
                        .as_u64()
                        .and_then(|at| text.get(at as usize..))
                        .unwrap_or("");
                    let n = names(&m["names"]);
                    if !written.starts_with("pg_catalog.")
                        && n.len() == 2
                        && !KEYWORD_TYPES_15.contains(&n[1].as_str())
                    {
                        found.push(format!("type {} in `{text}`", n[1]));
                    }
                }
                if m.contains_key("relname")
                    && m["schemaname"].as_str() != Some(schema)
                    && m["schemaname"].as_str() != Some("pg_catalog")
                {
                    found.push(format!(
                        "relation {} in `{text}`",
                        m["relname"].as_str().unwrap_or("?")
                    ));
                }
                for (key, x) in m {
                    found.extend(match key.as_str() {
                        "AExpr" => check("operator", &x["name"]),
                        "SubLink" if !names(&x["oper_name"]).is_empty() => {
                            check("operator", &x["oper_name"])
                        }
                        "use_op" if !names(x).is_empty() => check("operator", x),
                        "collname" => check("collation", x),
                        "CaseExpr" if !x["arg"].is_null() => {
                            Some(format!("simple CASE in `{text}`"))
                        }
                        _ => None,
                    });
                }
                for x in m.values() {
                    unqualified(x, schema, text, found, more);
                }
            }
            Value::Array(a) => a
                .iter()
                .for_each(|x| unqualified(x, schema, text, found, more)),
            _ => {}
        }
    }
}
