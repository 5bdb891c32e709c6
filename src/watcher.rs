//! The ddlwatcher loop (diffing mode, no superuser): notices schema changes by diffing the
//! catalog, records the DDL that replays them on each target as a new schema version, and
//! puts a schema event into the queue where the change belongs in the stream. New tables get
//! their capture trigger (and the rows they already hold) at once.
//!
//! A cheap fingerprint of the catalog rows (OIDs and xmins of relations, attributes, types, functions,
//! enum labels, constraints, functions) is compared first; the full model is read only when it moved.

use std::collections::BTreeSet;

use ddlwatcher::{diff, quote_ident, Catalog, SchemaMap, Statement, TargetExpression};
use tokio_postgres::Client;

use crate::capture;
use crate::config::Config;
use crate::stage::{Progress, Step, StepError};

pub struct Watcher {
    config: Config,
    schema: String,
    targets: Vec<(String, TargetExpression, Option<String>)>,
    fingerprint: Option<String>,
    /// Replicated schemas per target (from the last catalog read).
    schemas: std::collections::BTreeMap<String, Vec<String>>,
    /// Sequence positions last queued, per target.
    sent: std::collections::BTreeMap<String, std::collections::BTreeMap<(String, String), i64>>,
}

impl Watcher {
    pub fn new(config: &Config) -> Self {
        let targets = config
            .targets
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    TargetExpression::parse(&t.target_expression).expect("validated config"),
                    t.apply_schema.clone(),
                )
            })
            .collect();
        Self {
            config: config.clone(),
            schema: quote_ident(&config.internal_schema),
            targets,
            fingerprint: None,
            schemas: Default::default(),
            sent: Default::default(),
        }
    }

    async fn fingerprint(&self, client: &Client) -> Result<String, StepError> {
        let row = client
            .query_one(
                "with user_ns as (
                     select oid, xmin from pg_catalog.pg_namespace
                      where nspname not in ('pg_catalog', 'information_schema', 'pg_toast', $1)
                        and nspname not like 'pg_temp_%' and nspname not like 'pg_toast_temp_%'),
                 rels as (select oid, xmin from pg_catalog.pg_class where relnamespace in (select oid from user_ns))
                 select md5(concat_ws('|',
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from rels),
                     (select string_agg(a.attrelid::text || '.' || a.attnum::text || ':' || a.xmin::text, ',' order by a.attrelid, a.attnum)
                        from pg_catalog.pg_attribute a where a.attrelid in (select oid from rels) and a.attnum > 0),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from pg_catalog.pg_type
                       where typnamespace in (select oid from user_ns)),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from pg_catalog.pg_enum),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from pg_catalog.pg_constraint
                       where connamespace in (select oid from user_ns)),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from pg_catalog.pg_proc
                       where pronamespace in (select oid from user_ns)),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from user_ns)))",
                &[&self.config.internal_schema],
            )
            .await
            .map_err(StepError::db("fingerprinting the catalog"))?;
        Ok(row.get(0))
    }

    /// Diffs one target's catalog against its last snapshot and records a new schema
    /// version when the DDL is not empty. Returns whether it recorded one.
    async fn diff_target(
        &mut self,
        client: &mut Client,
        target: &str,
        expr: &TargetExpression,
        apply_schema: &Option<String>,
    ) -> Result<(bool, Vec<Statement>, Catalog), StepError> {
        let s = &self.schema;
        let new = Catalog::read(&*client, expr, &self.config.internal_schema)
            .await
            .map_err(|e| match e {
                ddlwatcher::ReadError::Db(e) => StepError::db("reading the catalog")(e),
                other => StepError::Fatal(other.to_string()),
            })?;
        self.schemas.insert(target.to_string(), new.schemas());
        let new_json = serde_json::to_string(&new).map_err(|e| StepError::Fatal(e.to_string()))?;
        let tx = client.transaction().await.map_err(StepError::db("begin"))?;
        let old = tx
            .query_opt(
                &format!(
                    "select catalog::text from {s}.schema_snapshot where target = $1 for update"
                ),
                &[&target],
            )
            .await
            .map_err(StepError::db("reading the last catalog snapshot"))?;
        let old: Option<Catalog> = match old {
            Some(r) => Some(serde_json::from_str(&r.get::<_, String>(0)).map_err(|e| {
                StepError::Fatal(format!("stored catalog snapshot is unreadable: {e}"))
            })?),
            None => None,
        };
        let mut recorded = false;
        let mut deferred = Vec::new();
        if let Some(old) = &old {
            if *old == new {
                return Ok((false, deferred, new));
            }
            let mut all = old.tables.clone();
            all.extend(new.tables.iter().cloned());
            let map = SchemaMap::new(apply_schema.clone(), &all);
            let (later, now): (Vec<_>, Vec<_>) = diff(old, &new, &map)
                .into_iter()
                .partition(|st| st.after_rows);
            if !now.is_empty() {
                record_version(&tx, s, target, &now).await?;
                recorded = true;
            }
            deferred = later;
        }
        tx.execute(
            &format!(
                "insert into {s}.schema_snapshot (target, catalog) values ($1, $2::text::jsonb)
                 on conflict (target) do update set catalog = excluded.catalog, taken_at = clock_timestamp()"
            ),
            &[&target, &new_json],
        )
        .await
        .map_err(StepError::db("storing the catalog snapshot"))?;
        tx.commit().await.map_err(StepError::db("commit"))?;
        Ok((recorded, deferred, new))
    }
}

impl Watcher {
    /// Queues the positions of the sequences that moved since the last time, so the
    /// target's sequences follow the source's (never behind it at the stream position).
    async fn sync_sequences(&mut self, client: &Client) -> Result<(), StepError> {
        for (target, schemas) in &self.schemas {
            let rows = client
                .query(
                    "select schemaname::text, sequencename::text, last_value from pg_catalog.pg_sequences
                      where schemaname = any($1) and last_value is not null",
                    &[schemas],
                )
                .await
                .map_err(StepError::db("reading sequence positions"))?;
            let sent = self.sent.entry(target.clone()).or_default();
            let moved: Vec<(String, String, i64)> = rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i64>(2),
                    )
                })
                .filter(|(s, n, v)| sent.get(&(s.clone(), n.clone())) != Some(v))
                .collect();
            if moved.is_empty() {
                continue;
            }
            let data = serde_json::json!({ "sequences": moved }).to_string();
            client
                .execute(
                    &format!(
                        "select {}.enqueue('Q', '', $1, 0, null, $2::text::json)",
                        self.schema
                    ),
                    &[target, &data],
                )
                .await
                .map_err(StepError::db("queueing sequence positions"))?;
            for (s, n, v) in moved {
                sent.insert((s, n), v);
            }
        }
        Ok(())
    }
}

/// Records a schema version and its schema event, in the caller's transaction.
async fn record_version(
    tx: &tokio_postgres::Transaction<'_>,
    s: &str,
    target: &str,
    statements: &[Statement],
) -> Result<i64, StepError> {
    let version: i64 = tx
        .query_one(
            &format!("select coalesce(max(version), 0) + 1 from {s}.ddl where target = $1"),
            &[&target],
        )
        .await
        .map_err(StepError::db("numbering a schema version"))?
        .get(0);
    let json = serde_json::to_string(statements).map_err(|e| StepError::Fatal(e.to_string()))?;
    tx.execute(
        &format!(
            "insert into {s}.ddl (target, version, statements) values ($1, $2, $3::text::jsonb)"
        ),
        &[&target, &version, &json],
    )
    .await
    .map_err(StepError::db("recording a schema version"))?;
    tx.execute(
        &format!(
            "select {s}.enqueue('S', '', $1, 0, null, json_build_object('version', $2::int8))"
        ),
        &[&target, &version],
    )
    .await
    .map_err(StepError::db("queueing a schema event"))?;
    tracing::info!(
        target,
        version,
        statements = statements.len(),
        "schema change recorded"
    );
    for st in statements {
        tracing::debug!(target, version, sql = %st.sql, "schema statement");
    }
    Ok(version)
}

impl Step for Watcher {
    fn name(&self) -> String {
        "ddlwatcher".into()
    }

    async fn step(&mut self, client: &mut Client) -> Result<Progress, StepError> {
        let fp = self.fingerprint(client).await?;
        tracing::trace!(fingerprint = %fp, "catalog fingerprint");
        if self.fingerprint.as_deref() == Some(fp.as_str()) {
            self.sync_sequences(client).await?;
            return Ok(Progress::Idle);
        }
        let mut seen = BTreeSet::new();
        let mut deferred = Vec::new();
        let mut installed = capture::Installed::default();
        for (target, expr, apply_schema) in self.targets.clone() {
            let (recorded, later, catalog) = self
                .diff_target(client, &target, &expr, &apply_schema)
                .await?;
            installed.catalogs.insert(target.clone(), catalog);
            if recorded {
                seen.insert(target.clone());
            }
            if !later.is_empty() {
                deferred.push((target, later));
            }
        }
        // Triggers for new tables (their rows come along); a table without a primary key
        // is reported and retried, the other changes are recorded all the same.
        capture::install_tables(client, &self.config, &installed)
            .await
            .map_err(|e| StepError::Other(format!("installing capture on changed tables: {e}")))?;
        // Constraint additions after the new tables' rows, in a version of their own.
        for (target, statements) in deferred {
            let tx = client.transaction().await.map_err(StepError::db("begin"))?;
            record_version(&tx, &self.schema, &target, &statements).await?;
            tx.commit().await.map_err(StepError::db("commit"))?;
            seen.insert(target);
        }
        self.fingerprint = Some(fp);
        // After the schema versions, so a new sequence exists before its position arrives.
        self.sync_sequences(client).await?;
        Ok(if seen.is_empty() {
            Progress::Idle
        } else {
            Progress::Busy
        })
    }
}
