//! The ddlwatcher loop (diffing mode, no superuser): notices schema changes by diffing the
//! catalog, records the DDL that replays them on each target as a new schema version, and
//! puts a schema event into the queue where the change belongs in the stream. New tables get
//! their capture trigger (and the rows they already hold) at once.
//!
//! A cheap fingerprint of the catalog rows (OIDs and xmins of relations, attributes, indexes, types,
//! enum labels, constraints, functions, collations) is compared first; the full model is read only
//! when it moved.

use std::collections::{BTreeMap, BTreeSet};

use ddlwatcher::{diff, quote_ident, Catalog, SchemaMap, Statement, TargetExpression};
use tokio_postgres::Client;

use crate::capture;
use crate::config::Config;
use crate::db;
use crate::exclusion::Exclusions;
use crate::stage::{Progress, Step, StepError};

pub struct Watcher {
    config: Config,
    schema: String,
    targets: Vec<(String, TargetExpression, SchemaMap)>,
    fingerprint: Option<String>,
    /// Per target, whose sequence positions follow the source's (from the last catalog read).
    sequences: std::collections::BTreeMap<String, SequenceScope>,
    /// Sequence positions last queued, per target.
    sent: std::collections::BTreeMap<String, std::collections::BTreeMap<(String, String), i64>>,
    /// Columns whose values were queued already (one queueing serves every target).
    backfilled: std::collections::BTreeSet<(u32, i16)>,
    /// Capture triggers found not firing at the last look (reported when this changes).
    silent: std::collections::BTreeSet<capture::SilentTrigger>,
    /// The file node of every ordinary table, read at the start of the last look (diffing
    /// mode; `None` before the first): a table whose file node is the same was not
    /// rewritten since, so a type change of its columns kept their values (a `USING`
    /// expression always rewrites) and needs no check.
    filenodes: Option<FileNodes>,
}

/// Tables' oids and their file nodes (`pg_class.relfilenode`), in two arrays.
#[derive(Default)]
struct FileNodes {
    oids: Vec<u32>,
    nodes: Vec<i64>,
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
                    t.schema_map(&[]),
                )
            })
            .collect();
        Self {
            config: config.clone(),
            schema: quote_ident(&config.internal_schema),
            targets,
            fingerprint: None,
            sequences: Default::default(),
            sent: Default::default(),
            backfilled: Default::default(),
            silent: Default::default(),
            filenodes: None,
        }
    }

    /// Reports capture triggers that stopped firing for ordinary writes (an error per
    /// trigger, with the fix), and those that fire again — once each time, not at every
    /// look. Nothing is re-enabled here: whoever disabled one may have meant it.
    async fn check_capture_triggers(&mut self, client: &Client) -> Result<(), StepError> {
        let now: std::collections::BTreeSet<_> =
            capture::silent_triggers(client, &self.config.internal_schema)
                .await
                .map_err(StepError::db("reading the capture triggers' state"))?
                .into_iter()
                .collect();
        for t in now.difference(&self.silent) {
            tracing::error!(table = %t.table, trigger = %t.trigger, state = t.state,
                "capture trigger is {}: changes to the table do not replicate — {}", t.state, t.fix());
        }
        for t in self.silent.difference(&now) {
            tracing::warn!(table = %t.table, trigger = %t.trigger,
                "capture trigger fires again; changes made while it was {} did not replicate: compare with `pgteleport verify`", t.state);
        }
        self.silent = now;
        Ok(())
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
                     -- An index turning valid (CREATE INDEX CONCURRENTLY) changes only this row.
                     (select string_agg(indexrelid::text || ':' || xmin::text, ',' order by indexrelid)
                        from pg_catalog.pg_index where indrelid in (select oid from rels)),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from pg_catalog.pg_enum),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from pg_catalog.pg_constraint
                       where connamespace in (select oid from user_ns)),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from pg_catalog.pg_proc
                       where pronamespace in (select oid from user_ns)),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from pg_catalog.pg_collation
                       where collnamespace in (select oid from user_ns)),
                     (select string_agg(oid::text || ':' || xmin::text, ',' order by oid) from user_ns)))",
                &[&self.config.internal_schema],
            )
            .await
            .map_err(StepError::db("fingerprinting the catalog"))?;
        Ok(row.get(0))
    }

    /// Diffs one target's live catalog against its last snapshot and records a new schema
    /// version when the DDL is not empty (diffing mode). Returns whether it recorded one,
    /// the constraint additions to record after the new tables' rows, and the catalog.
    async fn diff_target(
        &mut self,
        client: &mut Client,
        target: &str,
        expr: &TargetExpression,
        names: &SchemaMap,
    ) -> Result<(bool, Vec<Statement>, Catalog), StepError> {
        let new = Catalog::read(&*client, expr, &self.config.internal_schema)
            .await
            .map_err(read_error)?;
        let tx = client.transaction().await.map_err(StepError::db("begin"))?;
        let excluded = self.exclusions(&tx, target, &new).await?;
        let mut recorded = false;
        let mut deferred = Vec::new();
        if let Some(change) = self.advance(&tx, target, &new, names, &excluded).await? {
            self.remake_triggers(&tx, &change.before, &new).await?;
            let (later, now): (Vec<_>, Vec<_>) =
                change.statements.into_iter().partition(|st| st.after_rows);
            let (checks, rewritten) = self
                .type_checks(&tx, target, &change.retyped, &change.map)
                .await?;
            if !now.is_empty() {
                let written = self.written_since_retyped(&tx, rewritten).await?;
                if written.is_empty() {
                    record_checked_version(&tx, &self.schema, target, None, &now, &checks).await?;
                } else {
                    // Rows written between a type change and this look reached the target
                    // before its schema event, under the type of before — which may have
                    // kept less of them (a numeric's scale, a timestamp's precision). Their
                    // values follow the event as the source has them, and the checks come
                    // after them, in a version of their own.
                    record_version(&tx, &self.schema, target, None, &now).await?;
                    for (t, columns) in &written {
                        let n = queue_values(
                            &tx,
                            &self.schema,
                            t,
                            t.replica_key(),
                            columns,
                            Some(WRITTEN_SINCE_REWRITE),
                        )
                        .await?;
                        tracing::info!(table = %t.qualified(), rows = n, "queued again the retyped values of rows written between the type change and the look");
                    }
                    record_checked_version(&tx, &self.schema, target, None, &[], &checks).await?;
                }
                recorded = true;
            }
            self.resync_partitions(&tx, &change.gone).await?;
            self.resend_written_to_gone(&tx, &change.before, &new)
                .await?;
            self.backfill(&tx, change.added).await?;
            if !change.after_backfill.is_empty() {
                record_version(&tx, &self.schema, target, None, &change.after_backfill).await?;
            }
            deferred = later;
        }
        tx.commit().await.map_err(StepError::db("commit"))?;
        Ok((recorded, deferred, new))
    }

    /// Makes the row trigger of every captured table whose trigger arguments (key columns,
    /// columns in text form) changed from `before` to `after` again, in the transaction that
    /// records the change's schema version, before it. Its lock waits for the writers that
    /// still use the trigger made before — their rows then precede the schema event, where
    /// the applier matches them on the key of before — and writers after the event use the
    /// new one. (Left to [`capture::install_tables`] after the commit, a writer open across
    /// it had its rows, captured with the old key, follow the event: an update of a column
    /// only the new key has was matched on its new value, and held for good.) Tables new to
    /// replication are left to `install_tables`, which queues the rows they hold.
    async fn remake_triggers(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        before: &[ddlwatcher::Table],
        after: &Catalog,
    ) -> Result<(), StepError> {
        let s = &self.schema;
        let json = |tables: &[ddlwatcher::Table]| {
            serde_json::to_string(tables).map_err(|e| StepError::Fatal(e.to_string()))
        };
        let changed: Vec<ddlwatcher::Table> = after
            .tables
            .iter()
            .filter(|t| before.iter().any(|b| b.oid == t.oid && b != *t))
            .cloned()
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let n: i64 = tx
            .query_one(
                &format!(
                    "select count({s}.capture_table((n.t ->> 'oid')::oid, a.args, false))
                       from pg_catalog.jsonb_array_elements($1::text::jsonb) as n(t)
                       join pg_catalog.jsonb_array_elements($2::text::jsonb) as o(t) on o.t -> 'oid' = n.t -> 'oid'
                      cross join lateral (select {s}.capture_args(n.t) as args) as a
                      where a.args is distinct from {s}.capture_args(o.t)
                        and exists (select from pg_catalog.pg_trigger g
                                     where g.tgrelid = (n.t ->> 'oid')::oid and g.tgname = $3)"
                ),
                &[&json(&changed)?, &json(before)?, &capture::TRIGGER_NAME],
            )
            .await
            .map_err(StepError::db("making the row triggers of changed tables again"))?
            .get(0);
        if n > 0 {
            tracing::debug!(
                tables = n,
                "row triggers made again with the schema version"
            );
        }
        // Events of these tables from here on are written knowing their columns as the look
        // found them; those before, the columns of the look before (a text column renamed
        // or added since, made json later, must not be read as a json column the trigger
        // did not know).
        // A record at every change (also one that keeps the names: a column added, written
        // and renamed to the name of one dropped meanwhile), which closes the window of
        // events written before it (`resend_written_to_gone`).
        for t in &changed {
            capture::record_form(tx, s, t, true)
                .await
                .map_err(StepError::db(format!(
                    "recording the columns of {} the row trigger knows",
                    t.qualified()
                )))?;
        }
        Ok(())
    }

    /// Diffing mode: records again the columns of each table that has more attributes
    /// than when they were last recorded while its catalog is as it was — a column added,
    /// written and dropped again since — so the transmitter leaves that column out of the
    /// events written before ([`capture::record_form`], `Tables::known`). Its values need no
    /// sending: the column is gone. A table whose columns are not those of `catalogs` now
    /// (changed after the look's catalog read: a column added then would be taken for a
    /// gone one, and its values written meanwhile left out) is left to the next look, as is
    /// one locked by a schema change for long; `false` then, and the next step looks again.
    async fn record_grown(
        &self,
        client: &mut Client,
        catalogs: &BTreeMap<String, Catalog>,
    ) -> Result<bool, StepError> {
        let s = &self.schema;
        let mut tables: BTreeMap<u32, &ddlwatcher::Table> = BTreeMap::new();
        for t in catalogs.values().flat_map(|c| c.tables.iter()) {
            tables.insert(t.oid, t);
        }
        if tables.is_empty() {
            return Ok(true);
        }
        let oids: Vec<u32> = tables.keys().copied().collect();
        let grown: Vec<(u32, String)> = client
            .query(
                &format!(
                    "select t.oid, pg_catalog.format('%I.%I', n.nspname, c.relname)
                       from pg_catalog.unnest($1::pg_catalog.oid[]) as t(oid)
                       join pg_catalog.pg_class c on c.oid = t.oid
                       join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                      where c.relnatts > (select f.natts from {s}.capture_form f
                                           where f.relid = t.oid order by f.from_ev desc limit 1)"
                ),
                &[&oids],
            )
            .await
            .map_err(StepError::db("reading which tables grew attributes"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut complete = true;
        for (oid, name) in grown {
            let t = tables[&oid];
            let what = format!("recording the columns of {} again", t.qualified());
            let tx = client.transaction().await.map_err(StepError::db("begin"))?;
            // Under the lock no schema change of the table commits until the record is made:
            // the columns it names are the table's for every event before its number.
            let locked = tx
                .batch_execute(&format!(
                    "set local lock_timeout = '2s'; lock table {name} in access share mode"
                ))
                .await;
            if let Err(e) = locked {
                if crate::db::classify(&e) == crate::db::ErrorClass::Permanent {
                    return Err(StepError::db(what)(e));
                }
                tracing::debug!(table = %t.qualified(), error = %crate::db::describe(&e), "not recorded again now: left to the next look");
                complete = false;
                continue;
            }
            let mut by_attnum: Vec<&ddlwatcher::catalog::Column> = t.columns.iter().collect();
            by_attnum.sort_by_key(|c| c.attnum);
            let names: Vec<&str> = by_attnum.iter().map(|c| c.name.as_str()).collect();
            let same: bool = tx
                .query_one(
                    "select pg_catalog.to_regclass($2) = $1::pg_catalog.oid
                        and array(select a.attname::text from pg_catalog.pg_attribute a
                                   where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
                                   order by a.attnum) = $3::text[]",
                    &[&oid, &name, &names],
                )
                .await
                .map_err(StepError::db(what.clone()))?
                .get::<_, Option<bool>>(0)
                .unwrap_or(false);
            if !same {
                tracing::debug!(table = %t.qualified(), "changed since the look's catalog read: its columns are left to the next look");
                complete = false;
                continue;
            }
            capture::record_form(&tx, s, t, true)
                .await
                .map_err(StepError::db(what))?;
            tx.commit().await.map_err(StepError::db("commit"))?;
            tracing::debug!(table = %t.qualified(), "a column was added since the columns were recorded: recorded again");
        }
        Ok(complete)
    }

    /// Diffing mode: rows written between the last look and this one under a column that
    /// neither catalog has — added and renamed or dropped again meanwhile (`ADD new_x`,
    /// fill it, `DROP x`, `RENAME new_x TO x`) — are queued again, all their columns as
    /// they are now, after the schema event (in the look's transaction, under a SHARE lock).
    /// The target never has such a column; the transmitter leaves it out of those events
    /// (`Tables::known`, the window between this look's record of the table's columns and
    /// the one before), and their values arrive with these. So are rows whose events hold
    /// a JSON `null` in a json/jsonb column the row trigger did not know (added or renamed
    /// since: its values are in their JSON form, where `null` is SQL NULL as well). Tables
    /// with a key only (rows are found by it; a key renamed within the window finds none).
    async fn resend_written_to_gone(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        before: &[ddlwatcher::Table],
        after: &Catalog,
    ) -> Result<(), StepError> {
        let s = &self.schema;
        for t in &after.tables {
            let Some(old) = before.iter().find(|b| b.oid == t.oid && *b != t) else {
                continue;
            };
            let known: Vec<&str> = old
                .columns
                .iter()
                .chain(&t.columns)
                .map(|c| c.name.as_str())
                .collect();
            let what = format!(
                "finding rows of {} written under columns gone since",
                t.qualified()
            );
            // From the record of the columns the last look found (the latest that names
            // them; a start in between — the instance down meanwhile — made one more), else
            // the one before this look's, to this look's record.
            let old_names: Vec<&str> = old.columns.iter().map(|c| c.name.as_str()).collect();
            let window = tx
                .query_one(
                    &format!(
                        "with l as (select max(f.from_ev) as to_ev from {s}.capture_form f where f.relid = $1)
                         select coalesce((select max(f.from_ev) from {s}.capture_form f, l
                                           where f.relid = $1 and f.from_ev < l.to_ev and f.columns = $2::text[]),
                                         (select f.from_ev from {s}.capture_form f where f.relid = $1
                                           order by f.from_ev desc offset 1 limit 1)),
                                l.to_ev
                           from l"
                    ),
                    &[&t.oid, &old_names],
                )
                .await
                .map_err(StepError::db(what.clone()))?;
            let (Some(from), Some(to)): (Option<i64>, Option<i64>) = (window.get(0), window.get(1))
            else {
                continue;
            };
            // The json/jsonb columns the window's events hold in their JSON form (the
            // transmitter's `json_form_windows`): a JSON `null` there cannot be told from
            // SQL NULL, so those rows are sent again too (their value in its text form now).
            let unknown_json: Vec<String> = tx
                .query_one(
                    &format!(
                        "select coalesce(array(select j from pg_catalog.unnest(
                                    (select f.json from {s}.capture_form f where f.relid = $1 and f.from_ev = $3)) j
                                  where j <> all(coalesce((select f.json from {s}.capture_form f where f.relid = $1 and f.from_ev = $2), '{{}}'))),
                                '{{}}')"
                    ),
                    &[&t.oid, &from, &to],
                )
                .await
                .map_err(StepError::db(what.clone()))?
                .get(0);
            // Events of the window that name a column neither catalog has.
            let gone = format!(
                "e.ev_relid = {oid} and e.ev_op in ('I', 'U') and e.ev_id > {from} and e.ev_id < {to}
                 and exists (select from pg_catalog.jsonb_object_keys(e.ev_data::pg_catalog.jsonb) k
                              where k <> all(array[{known}]::text[]))",
                oid = t.oid,
                known = known
                    .iter()
                    .map(|k| ddlwatcher::quote_literal(k))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            // Rows holding a JSON null now in such a json column: an update from SQL NULL to
            // it wrote no event at all (the trigger saw the same image).
            let json_null = unknown_json
                .iter()
                .map(|j| format!("t.{}::text = 'null'", quote_ident(j)))
                .collect::<Vec<_>>()
                .join(" or ");
            let json_null = if json_null.is_empty() {
                "false".to_string()
            } else {
                json_null
            };
            // Whether any: the SHARE lock below would wait for writers open across the look.
            let any: bool = tx
                .query_one(
                    &format!(
                        "select exists (select 1 from {s}.event e where {gone})
                             or exists (select 1 from {} t where {json_null})",
                        t.qualified()
                    ),
                    &[],
                )
                .await
                .map_err(StepError::db(what.clone()))?
                .get(0);
            if !any {
                continue;
            }
            let Some(key) = t.replica_key() else {
                // A keyless table: its rows are told apart by their values only. A column
                // added since the last look (added, filled from one dropped, renamed to its
                // name: the retype by copy) holds the table's own values on the target once
                // its version is applied: its values are queued again for every row, per
                // set of rows alike in the other columns (rows written meanwhile that name
                // it are found without it: `DdlState::columns_added`).
                let added: Vec<ddlwatcher::catalog::Column> = t
                    .columns
                    .iter()
                    .filter(|c| !c.generated && !old.columns.iter().any(|o| o.attnum == c.attnum))
                    .cloned()
                    .collect();
                if !added.is_empty() {
                    let n = queue_values(tx, s, t, None, &added, None).await?;
                    tracing::info!(table = %t.qualified(), events = n,
                        "queued again the values of a keyless table's columns added since the last look, written under a column gone since");
                }
                continue;
            };
            let written = format!(
                "(({t_key}) in (select {r_key} from {s}.event e
                                 cross join lateral pg_catalog.jsonb_populate_record(null::{q}, e.ev_data::pg_catalog.jsonb) r
                                where {gone})
                  or {json_null})",
                t_key = key.iter().map(|k| format!("t.{}", quote_ident(k))).collect::<Vec<_>>().join(", "),
                r_key = key.iter().map(|k| format!("r.{}", quote_ident(k))).collect::<Vec<_>>().join(", "),
                q = t.qualified(),
            );
            let columns: Vec<ddlwatcher::catalog::Column> =
                t.columns.iter().filter(|c| !c.generated).cloned().collect();
            let n = queue_values(tx, s, t, Some(key), &columns, Some(&written)).await?;
            if n > 0 {
                tracing::info!(table = %t.qualified(), rows = n,
                    "queued again rows written under a column added and renamed or dropped again before this look, or with a JSON null in a json column the row trigger did not know");
            }
        }
        Ok(())
    }

    /// For each replicated column whose type changed (`retyped`, tables named on the target
    /// by `map`): a check, run on the target right after the change, that its values are
    /// the source's ([`ddlwatcher::ddl::values_check`]) — the target casts the old values,
    /// while the source may have computed them with `USING` (no catalog shows it). The
    /// source's values are checksummed here, under a SHARE lock (writers wait for the
    /// scan): in the transaction that records the version, so at the very place of its
    /// schema event.
    async fn type_checks(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        target: &str,
        retyped: &ColumnsOf,
        map: &SchemaMap,
    ) -> Result<(Vec<ddlwatcher::ddl::RowsCheck>, ColumnsOf), StepError> {
        let mut rewritten = Vec::new();
        if retyped.is_empty() {
            return Ok((Vec::new(), rewritten));
        }
        let soft_delete = self.soft_delete(target);
        let canonical: Vec<String> = ddlwatcher::ddl::CANONICAL_SETTINGS
            .iter()
            .map(|(name, value)| format!("set local {name} = {}", ddlwatcher::quote_literal(value)))
            .collect();
        let mut out = Vec::new();
        for (t, columns) in retyped {
            let what = format!("checksumming the retyped columns of {}", t.qualified());
            if !self.rewritten(tx, t).await? {
                tracing::debug!(table = %t.qualified(), "type change without a rewrite: values kept, not checked");
                continue;
            }
            tx.batch_execute(&format!(
                "lock table {} in share mode; savepoint pgteleport_checksum; {};",
                t.qualified(),
                canonical.join("; ")
            ))
            .await
            .map_err(StepError::db(what.clone()))?;
            for c in columns {
                let row = tx
                    .query_one(
                        &ddlwatcher::ddl::values_checksum_sql(
                            &ddlwatcher::ddl::own_rows(t, &t.qualified()),
                            &c.name,
                            None,
                        ),
                        &[],
                    )
                    .await
                    .map_err(StepError::db(what.clone()))?;
                out.push(ddlwatcher::ddl::values_check(
                    t,
                    map,
                    &c.name,
                    soft_delete,
                    row.get(0),
                    row.get(1),
                ));
            }
            // The settings as they were (the lock stays: taken before the savepoint).
            tx.batch_execute("rollback to savepoint pgteleport_checksum")
                .await
                .map_err(StepError::db(what))?;
            rewritten.push((t.clone(), columns.clone()));
        }
        Ok((out, rewritten))
    }

    /// Of the tables `rewritten` by a type change, those with rows written since the rewrite
    /// ([`WRITTEN_SINCE_REWRITE`]), with their retyped columns.
    async fn written_since_retyped(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        rewritten: ColumnsOf,
    ) -> Result<ColumnsOf, StepError> {
        let mut out = Vec::new();
        for (t, columns) in rewritten {
            let row = tx
                .query_one(
                    &format!(
                        "select exists (select from {} t join pg_catalog.pg_class c on c.oid = t.tableoid where {WRITTEN_SINCE_REWRITE})",
                        ddlwatcher::ddl::own_rows(&t, &t.qualified())
                    ),
                    &[],
                )
                .await
                .map_err(StepError::db(format!(
                    "reading whether rows of {} were written since its type change",
                    t.qualified()
                )))?;
            if row.get::<_, bool>(0) {
                out.push((t, columns));
            }
        }
        Ok(out)
    }

    /// Whether `table` (or a partition of it) was rewritten since the last look began: its
    /// file node changed, or is not known (the first look). A rewrite still running shows
    /// at the next look, with its catalog change.
    async fn rewritten(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        table: &ddlwatcher::Table,
    ) -> Result<bool, StepError> {
        let Some(before) = &self.filenodes else {
            return Ok(true);
        };
        let row = tx
            .query_one(
                "select coalesce(pg_catalog.bool_or(p.node is distinct from c.relfilenode::int8), true)
                   from (select $1::oid as relid
                         union select relid from pg_catalog.pg_partition_tree($1::oid)) as t
                   join pg_catalog.pg_class c on c.oid = t.relid and c.relkind = 'r'
                   left join unnest($2::oid[], $3::int8[]) as p(oid, node) on p.oid = c.oid",
                &[&table.oid, &before.oids, &before.nodes],
            )
            .await
            .map_err(StepError::db(format!(
                "reading whether {} was rewritten",
                table.qualified()
            )))?;
        Ok(row.get(0))
    }

    /// The file node of every ordinary table: [`Watcher::filenodes`].
    async fn read_filenodes(&self, client: &Client) -> Result<FileNodes, StepError> {
        let rows = client
            .query(
                "select oid, relfilenode::int8 from pg_catalog.pg_class where relkind = 'r'",
                &[],
            )
            .await
            .map_err(StepError::db("reading the tables' file nodes"))?;
        Ok(FileNodes {
            oids: rows.iter().map(|r| r.get(0)).collect(),
            nodes: rows.iter().map(|r| r.get(1)).collect(),
        })
    }

    /// The column that marks `target`'s deleted rows, if it keeps them (`soft_delete_col_name`).
    fn soft_delete(&self, target: &str) -> Option<&str> {
        self.config
            .targets
            .get(target)
            .and_then(|t| t.soft_delete_col_name.as_deref())
    }

    /// Event-trigger mode's [`Watcher::type_checks`]: the checksums the event trigger took in
    /// the DDL's transaction (`stored`) of the columns `change` retyped, as checks of the
    /// target's columns. A retyped column without one was not rewritten (its values kept,
    /// byte for byte) or could not be read by the trigger (it warned then).
    fn snapshot_checks(
        &self,
        target: &str,
        change: &Change,
        stored: &[StoredChecksum],
    ) -> Vec<ddlwatcher::ddl::RowsCheck> {
        let soft_delete = self.soft_delete(target);
        change
            .retyped
            .iter()
            .flat_map(|(t, columns)| columns.iter().map(move |c| (t, c)))
            .filter_map(|(t, c)| {
                let sum = stored
                    .iter()
                    .find(|s| s.oid == t.oid && s.attnum == c.attnum)?;
                Some(ddlwatcher::ddl::values_check(
                    t,
                    &change.map,
                    &c.name,
                    soft_delete,
                    sum.rows,
                    sum.sum,
                ))
            })
            .collect()
    }

    /// Records what `catalog` shows of `target`'s excluded columns; returns them all.
    async fn exclusions(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        target: &str,
        catalog: &Catalog,
    ) -> Result<Exclusions, StepError> {
        let configured = self
            .config
            .targets
            .get(target)
            .map(|t| t.exclude_columns.clone())
            .unwrap_or_default();
        Exclusions::record(tx, &self.schema, target, &configured, catalog)
            .await
            .map_err(StepError::db("recording the excluded columns"))
    }

    /// Stores `new` as `target`'s catalog snapshot; returns the DDL from the previous one
    /// (both without the `excluded` columns), with the columns it adds with a default
    /// (`None` when there was no previous one, or nothing changed).
    async fn advance(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        target: &str,
        new: &Catalog,
        names: &SchemaMap,
        excluded: &Exclusions,
    ) -> Result<Option<Change>, StepError> {
        let s = &self.schema;
        self.sequences
            .insert(target.to_string(), SequenceScope::of(new));
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
        if old.as_ref() == Some(new) {
            return Ok(None);
        }
        let change = old.map(|old| Change {
            before: old.tables.clone(),
            ..change_between(&old, new, names, excluded)
        });
        let json = serde_json::to_string(new).map_err(|e| StepError::Fatal(e.to_string()))?;
        tx.execute(
            &format!(
                "insert into {s}.schema_snapshot (target, catalog) values ($1, $2::text::jsonb)
                 on conflict (target) do update set catalog = excluded.catalog, taken_at = clock_timestamp()"
            ),
            &[&target, &json],
        )
        .await
        .map_err(StepError::db("storing the catalog snapshot"))?;
        Ok(change)
    }

    /// Diffing mode: queues again, after the schema event that deletes the rows of partitions
    /// gone from a partitioned table (by the partition's constraint), the rows that table
    /// holds now in that range — those a default partition took after a DETACH, before this
    /// look; none else. Under a SHARE lock on the table, so no write falls in between; only
    /// rows of partitions whose rows are on the target (known ones).
    async fn resync_partitions(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        gone: &GonePartitions,
    ) -> Result<(), StepError> {
        let s = &self.schema;
        for (table, partition) in gone {
            let what = format!(
                "queueing the rows of {} that partition {}.{} left",
                table.qualified(),
                partition.schema,
                partition.name
            );
            tx.batch_execute(&format!("lock table {} in share mode", table.qualified()))
                .await
                .map_err(StepError::db(what.clone()))?;
            let json = serde_json::to_string(table).map_err(|e| StepError::Fatal(e.to_string()))?;
            let filter = format!(
                "({}) and pgteleport_row.tableoid in (select k.relid from {s}.known_partition k)",
                partition.constraint
            );
            let n: i64 = tx
                .query_one(
                    &format!("select {s}.queue_rows($1, $2, $3, $1, {s}.capture_args($4::text::jsonb), $5)"),
                    &[&table.oid, &table.schema, &table.name, &json, &filter],
                )
                .await
                .map_err(StepError::db(what))?
                .get(0);
            if n > 0 {
                tracing::info!(table = %table.qualified(), partition = %partition.name, rows = n,
                    "queued again the rows another partition holds in the range of a partition gone");
            }
        }
        Ok(())
    }

    /// Takes in again each known partition whose row trigger is another clone than the one
    /// recorded at the last look: it was detached and attached again since — PostgreSQL
    /// drops the clone at DETACH and makes a new one at ATTACH — so rows changed in between
    /// had no trigger, while the catalog looks as before. In one transaction per partition,
    /// under its lock (writers wait): a truncate of its range for the partitioned table
    /// (the target deletes what it holds there), its rows queued as inserts, the clone
    /// recorded. Then records the clone of the partitions that have none recorded (known
    /// before source version 18, which records it when it takes a partition in).
    /// `catalogs`: this look's, which describe the partitioned tables.
    async fn retake_reattached(
        &self,
        client: &mut Client,
        catalogs: &BTreeMap<String, Catalog>,
    ) -> Result<(), StepError> {
        let s = &self.schema;
        let other_clone = format!(
            "select k.relid, k.root, g.oid, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
               from {s}.known_partition k
               join pg_catalog.pg_trigger g on g.tgrelid = k.relid and g.tgname = $1
               join pg_catalog.pg_class c on c.oid = k.relid
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              where k.clone <> g.oid and ($2::pg_catalog.oid is null or k.relid = $2)"
        );
        let context = "reading which partitions were attached again";
        let rows = client
            .query(&other_clone, &[&capture::TRIGGER_NAME, &None::<u32>])
            .await
            .map_err(StepError::db(context))?;
        for r in rows {
            let (relid, root, partition): (u32, u32, String) = (r.get(0), r.get(1), r.get(3));
            let Some(table) = catalogs
                .values()
                .flat_map(|c| c.tables.iter())
                .find(|t| t.oid == root)
            else {
                continue;
            };
            let what = format!("taking in again partition {partition}, attached again");
            let tx = client.transaction().await.map_err(StepError::db("begin"))?;
            tx.batch_execute(&format!("lock table {partition} in share mode"))
                .await
                .map_err(StepError::db(what.clone()))?;
            // Again under the lock.
            let Some(now) = tx
                .query_opt(&other_clone, &[&capture::TRIGGER_NAME, &Some(relid)])
                .await
                .map_err(StepError::db(what.clone()))?
            else {
                continue;
            };
            let clone: u32 = now.get(2);
            let json = serde_json::to_string(table).map_err(|e| StepError::Fatal(e.to_string()))?;
            tx.execute(
                &format!(
                    "select {s}.enqueue('T', $1, $2, $3, null::json,
                                        json_build_object('where', pg_catalog.pg_get_partition_constraintdef($4)))"
                ),
                &[&table.schema, &table.name, &root, &relid],
            )
            .await
            .map_err(StepError::db(what.clone()))?;
            let n: i64 = tx
                .query_one(
                    &format!("select {s}.queue_rows($1, $2, $3, $4, {s}.capture_args($5::text::jsonb), null)"),
                    &[&relid, &table.schema, &table.name, &root, &json],
                )
                .await
                .map_err(StepError::db(what.clone()))?
                .get(0);
            tx.execute(
                &format!("update {s}.known_partition set clone = $2 where relid = $1"),
                &[&relid, &clone],
            )
            .await
            .map_err(StepError::db(what.clone()))?;
            tx.commit().await.map_err(StepError::db(what))?;
            tracing::info!(table = %table.qualified(), %partition, rows = n,
                "partition detached and attached again since the last look: its range emptied on the target and its rows queued again");
        }
        client
            .execute(
                &format!(
                    "update {s}.known_partition k set clone = g.oid
                       from pg_catalog.pg_trigger g
                      where g.tgrelid = k.relid and g.tgname = $1 and k.clone is null"
                ),
                &[&capture::TRIGGER_NAME],
            )
            .await
            .map_err(StepError::db(
                "recording the row trigger of each known partition",
            ))?;
        Ok(())
    }

    /// Queues, after the schema event just recorded, an update of every existing row with
    /// its values of each column the diff found added with a *volatile* default
    /// (`gen_random_uuid()`, `clock_timestamp()`, …): PostgreSQL computed one per row when
    /// the column was added (the table was rewritten: no stored "missing" value), and the
    /// target, adding the column, would compute others. Non-volatile defaults are the same
    /// on both sides. A keyless table's rows are named by their other columns, the rows
    /// equal in them together (the applier sets one value on each).
    async fn backfill(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        added: AddedColumns,
    ) -> Result<(), StepError> {
        let s = &self.schema;
        for (mut table, added) in added {
            let mut volatile = Vec::new();
            for c in added {
                if self.backfilled.contains(&(table.oid, c.attnum)) {
                    continue;
                }
                let row = tx
                    .query_opt(
                        "select not a.atthasmissing and (a.attidentity <> '' or exists (select 1 from pg_catalog.pg_attrdef d
                                                                  where d.adrelid = a.attrelid and d.adnum = a.attnum))
                           from pg_catalog.pg_attribute a
                          where a.attrelid = $1 and a.attnum = $2 and not a.attisdropped",
                        &[&table.oid, &c.attnum],
                    )
                    .await
                    .map_err(StepError::db("reading how a new column was filled"))?;
                if row.is_some_and(|r| r.get::<_, bool>(0)) {
                    self.backfilled.insert((table.oid, c.attnum));
                    volatile.push(c);
                }
            }
            if volatile.is_empty() {
                continue;
            }
            // The names the table and its columns have now, which the target has at the
            // values' place in the stream: the catalog may be older (event-trigger mode
            // processes snapshots after the fact; a rename may have followed).
            let now = tx
                .query_opt(
                    "select n.nspname::text, c.relname::text,
                            array(select a.attnum from pg_catalog.pg_attribute a
                                   where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped order by a.attnum),
                            array(select a.attname::text from pg_catalog.pg_attribute a
                                   where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped order by a.attnum)
                       from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                      where c.oid = $1",
                    &[&table.oid],
                )
                .await
                .map_err(StepError::db("reading the names of a table with new columns"))?;
            let Some(now) = now else { continue };
            let numbers: Vec<i16> = now.get(2);
            let names: Vec<String> = now.get(3);
            let name_now = |attnum: i16, name: &str| {
                numbers
                    .iter()
                    .position(|&n| n == attnum)
                    .map_or_else(|| name.to_string(), |i| names[i].clone())
            };
            let renamed = |name: &String| {
                table
                    .columns
                    .iter()
                    .find(|c| &c.name == name)
                    .map_or_else(|| name.clone(), |c| name_now(c.attnum, name))
            };
            let key: Option<Vec<String>> = table
                .primary_key
                .as_ref()
                .or(table.unique_key.as_ref())
                .map(|k| k.iter().map(renamed).collect());
            for c in volatile.iter_mut().chain(table.columns.iter_mut()) {
                c.name = name_now(c.attnum, &c.name);
            }
            (table.schema, table.name) = (now.get(0), now.get(1));
            let n = queue_values(tx, s, &table, key.as_deref(), &volatile, None).await?;
            tracing::info!(table = %table.qualified(), rows = n, columns = volatile.len(), "queued the values a volatile default gave existing rows");
        }
        Ok(())
    }

    /// Turns the catalog snapshots the event trigger stored (in commit order) into one
    /// schema version per target, numbered as the snapshot: the trigger already queued
    /// its schema events at the DDL's place in the stream. Every statement goes into that
    /// version, constraint additions last: the new tables' rows were captured from their
    /// creation on. Returns the last catalog of each target, if there was a snapshot.
    async fn process_snapshots(
        &mut self,
        client: &mut Client,
    ) -> Result<Option<(BTreeMap<String, Catalog>, i64)>, StepError> {
        let s = self.schema.clone();
        let rows = client
            .query(
                &format!(
                    "select id, catalog::text, checks::text from {s}.ddl_snapshot
                      where id > (select processed from {s}.ddl_clock) order by id"
                ),
                &[],
            )
            .await
            .map_err(StepError::db("reading stored catalog snapshots"))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut latest = BTreeMap::new();
        let mut last = 0;
        for r in rows {
            let id: i64 = r.get(0);
            last = id;
            let full = Catalog::from_snapshot(&r.get::<_, String>(1)).map_err(|e| {
                StepError::Fatal(format!("stored catalog snapshot {id} is unreadable: {e}"))
            })?;
            let stored: Vec<StoredChecksum> = match r.get::<_, Option<String>>(2) {
                Some(text) => serde_json::from_str(&text).map_err(|e| {
                    StepError::Fatal(format!(
                        "the checksums of stored catalog snapshot {id} are unreadable: {e}"
                    ))
                })?,
                None => Vec::new(),
            };
            let tx = client.transaction().await.map_err(StepError::db("begin"))?;
            for (target, expr, names) in self.targets.clone() {
                let new = full.restrict(&expr);
                let excluded = self.exclusions(&tx, &target, &new).await?;
                // The schema event is at the DDL's place: no partition's rows to re-queue.
                let mut change = self
                    .advance(&tx, &target, &new, &names, &excluded)
                    .await?
                    .unwrap_or_default();
                change.statements.sort_by_key(|st| st.after_rows);
                record_version(&tx, &s, &target, Some(id), &change.statements).await?;
                let checks = self.snapshot_checks(&target, &change, &stored);
                if !checks.is_empty() {
                    attach_checks(&tx, &s, &target, id, &checks).await?;
                }
                self.backfill(&tx, change.added).await?;
                if !change.after_backfill.is_empty() {
                    record_version(&tx, &s, &target, None, &change.after_backfill).await?;
                }
                latest.insert(target, new);
            }
            tx.execute(&format!("update {s}.ddl_clock set processed = $1"), &[&id])
                .await
                .map_err(StepError::db("recording a processed snapshot"))?;
            tx.execute(
                &format!("delete from {s}.ddl_snapshot where id < $1"),
                &[&id],
            )
            .await
            .map_err(StepError::db("removing processed snapshots"))?;
            tx.commit().await.map_err(StepError::db("commit"))?;
        }
        Ok(Some((latest, last)))
    }
}

/// What changed for a target from catalog snapshot `old` to `new` (`names`: its schema map).
/// Snapshots are stored whole: the excluded columns leave both sides here, so a column
/// excluded later (by taking an excluded name) changes nothing.
fn change_between(
    old: &Catalog,
    new: &Catalog,
    names: &SchemaMap,
    excluded: &Exclusions,
) -> Change {
    let (old, new) = (excluded.strip(old), excluded.strip(new));
    let (old, new) = (&old, &new);
    let mut all = old.tables.clone();
    all.extend(new.tables.iter().cloned());
    let map = SchemaMap {
        replicated: SchemaMap::new(None, &all).replicated,
        ..names.clone()
    };
    let gone = ddlwatcher::diff::partitions_gone(old, new)
        .into_iter()
        .filter_map(|(t, p)| {
            let now = new.tables.iter().find(|n| n.oid == t.oid)?;
            Some((now.clone(), p.clone()))
        })
        .collect();
    let added = added_with_default(old, new);
    let retyped = retyped(old, new);
    let mut statements = diff(old, new, &map);
    // An identity column GENERATED ALWAYS added to a table with a key: the target
    // takes it BY DEFAULT until the backfill has written the source's values.
    let mut after_backfill = Vec::new();
    for (t, cols) in &added {
        if t.replica_key().is_none() {
            continue;
        }
        for c in cols.iter().filter(|c| c.identity == Some('a')) {
            let alter = |how: &str| Statement {
                sql: format!(
                    "alter table {} alter column {} set generated {how}",
                    map.table(&t.schema, &t.name),
                    quote_ident(&c.name)
                ),
                transactional: true,
                after_rows: false,
                tables: vec![t.oid],
                table_dropped_since: false,
                deletes_rows_of: None,
            };
            statements.push(alter("by default"));
            after_backfill.push(alter("always"));
        }
    }
    Change {
        statements,
        added,
        gone,
        after_backfill,
        before: Vec::new(),
        retyped,
        map,
    }
}

/// SQL for a schema event's data: `{"version": <version>}`, and `"checks": <checks>` when
/// that (JSON text, or null) is not null — what the applier reads ([`crate::applier`]'s
/// `schema_checks`). `version` and `checks` are SQL expressions (parameters).
fn schema_event_data(version: &str, checks: &str) -> String {
    format!(
        "case when {checks}::text::json is null then json_build_object('version', {version}::int8)
              else json_build_object('version', {version}::int8, 'checks', {checks}::text::json) end"
    )
}

/// A checksum the event trigger took of a column whose type changed, in the DDL's
/// transaction (`ddl_snapshot.checks`).
#[derive(serde::Deserialize)]
struct StoredChecksum {
    /// The table.
    oid: u32,
    /// The column.
    attnum: i16,
    rows: i64,
    sum: i64,
}

/// Puts `checks` into `target`'s schema event of version `version`, which the event trigger
/// queued in the DDL's transaction (with the version only) and no batch has been sent with
/// yet: the transmitter waits for its snapshot to be processed.
async fn attach_checks(
    tx: &tokio_postgres::Transaction<'_>,
    s: &str,
    target: &str,
    version: i64,
    checks: &[ddlwatcher::ddl::RowsCheck],
) -> Result<(), StepError> {
    let json = serde_json::to_string(checks).map_err(|e| StepError::Fatal(e.to_string()))?;
    let n = tx
        .execute(
            &format!(
                "update {s}.event e
                    set ev_data = {}
                  where e.ev_txid = (select d.txid from {s}.ddl_snapshot d where d.id = $2)
                    and e.ev_op = 'S' and e.ev_table = $1::text::name
                    and (e.ev_data ->> 'version')::int8 = $2",
                schema_event_data("$2", "$3")
            ),
            &[&target, &version, &json],
        )
        .await
        .map_err(StepError::db(
            "adding the checks of a type change to its schema event",
        ))?;
    if n == 0 {
        // A target registered after the DDL: it had no event queued, and copies the table.
        tracing::debug!(
            target,
            version,
            "no schema event to carry the type change's checks"
        );
    }
    Ok(())
}

/// What a new catalog snapshot changed for one target.
#[derive(Default)]
struct Change {
    /// The DDL from the previous snapshot.
    statements: Vec<Statement>,
    /// Columns added with a default (or as identity columns): [`Watcher::backfill`].
    added: AddedColumns,
    /// Partitions gone: [`Watcher::resync_partitions`].
    gone: GonePartitions,
    /// Recorded as a version of its own after the backfill: identity columns back to
    /// GENERATED ALWAYS.
    after_backfill: Vec<Statement>,
    /// The previous snapshot's tables (whole): [`Watcher::remake_triggers`].
    before: Vec<ddlwatcher::Table>,
    /// Columns whose type changed: [`Watcher::type_checks`].
    retyped: ColumnsOf,
    /// The target's names of the tables (the schema map the statements were made with).
    map: SchemaMap,
}

/// Partitions detached or dropped: the partitioned table (in the new catalog), the partition.
type GonePartitions = Vec<(ddlwatcher::Table, ddlwatcher::Partition)>;

/// Columns a diff adds with a default, per table of the new catalog.
type AddedColumns = ColumnsOf;

/// Some columns of tables of the new catalog, per table.
type ColumnsOf = Vec<(ddlwatcher::Table, Vec<ddlwatcher::catalog::Column>)>;

/// The columns of tables in both catalogs that `new` has and `old` had not (by attribute
/// number), with a default (not generated), or identity columns: candidates for
/// [`Watcher::backfill`].
fn added_with_default(old: &Catalog, new: &Catalog) -> AddedColumns {
    columns_where(old, new, |c, o| {
        (c.expression.is_some() && !c.generated && c.identity.is_none() || c.identity.is_some())
            && !o.columns.iter().any(|b| b.attnum == c.attnum)
    })
}

/// The columns of tables in both catalogs whose type changed (by attribute number).
/// Generated ones too: PostgreSQL casts their stored values (it computes them again only
/// for rows written afterwards), and rows written between the change and the watcher's
/// look were computed in the new type on the source, in the old one on the target.
fn retyped(old: &Catalog, new: &Catalog) -> ColumnsOf {
    columns_where(old, new, |c, o| {
        o.columns
            .iter()
            .any(|b| b.attnum == c.attnum && b.type_name != c.type_name)
    })
}

/// Per table in both catalogs, the columns of `new`'s that `keep` takes (given the table
/// as `old` has it); tables with none are left out.
fn columns_where(
    old: &Catalog,
    new: &Catalog,
    keep: impl Fn(&ddlwatcher::catalog::Column, &ddlwatcher::Table) -> bool,
) -> ColumnsOf {
    let before: BTreeMap<u32, &ddlwatcher::Table> = old.tables.iter().map(|t| (t.oid, t)).collect();
    new.tables
        .iter()
        .filter_map(|t| {
            let o = before.get(&t.oid)?;
            let kept: Vec<ddlwatcher::catalog::Column> =
                t.columns.iter().filter(|c| keep(c, o)).cloned().collect();
            (!kept.is_empty()).then(|| (t.clone(), kept))
        })
        .collect()
}

/// The sequences of one target whose positions follow the source's: those of the
/// replicated schemas, and those of other schemas that its tables' defaults draw from.
struct SequenceScope {
    schemas: Vec<String>,
    outside: Vec<(String, String)>,
}

impl SequenceScope {
    fn of(catalog: &Catalog) -> Self {
        Self {
            schemas: catalog.schemas(),
            outside: catalog.sequences_outside(),
        }
    }
}

fn read_error(e: ddlwatcher::ReadError) -> StepError {
    match e {
        ddlwatcher::ReadError::Db(e) => StepError::db("reading the catalog")(e),
        // Retried, not fatal: a schema change committed while the catalog was read makes
        // its printing functions (which read the latest catalog) give NULL for an object
        // dropped meanwhile. One that stays is reported at every try.
        other => StepError::Other(other.to_string()),
    }
}

impl Watcher {
    /// Queues the positions of the sequences that moved since the last time, so the
    /// target's sequences follow the source's (never behind it at the stream position).
    async fn sync_sequences(&mut self, client: &Client) -> Result<(), StepError> {
        for (target, scope) in &self.sequences {
            let schemas = &scope.schemas;
            let (outside_schemas, outside_names): (Vec<&str>, Vec<&str>) = scope
                .outside
                .iter()
                .map(|(s, n)| (s.as_str(), n.as_str()))
                .unzip();
            let rows = client
                .query(
                    "select schemaname::text, sequencename::text, last_value from pg_catalog.pg_sequences
                      where (schemaname = any($1)
                             or (schemaname::text, sequencename::text) in (select * from unnest($2::text[], $3::text[])))
                        and last_value is not null",
                    &[schemas, &outside_schemas, &outside_names],
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
            let (outside, moved): (Vec<_>, Vec<_>) = moved
                .into_iter()
                .partition(|(s, _, _)| !schemas.contains(s));
            let data = serde_json::json!({ "sequences": moved, "outside": outside }).to_string();
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
            for (s, n, v) in moved.into_iter().chain(outside) {
                sent.insert((s, n), v);
            }
        }
        Ok(())
    }
}

/// Records a schema version, in the caller's transaction. Without a number (diffing mode)
/// it takes the next one from the source's counter, shared with the event trigger so that
/// numbers grow across mode switches, and queues its schema event here; with one (a
/// snapshot's), the event trigger queued the event.
async fn record_version(
    tx: &tokio_postgres::Transaction<'_>,
    s: &str,
    target: &str,
    version: Option<i64>,
    statements: &[Statement],
) -> Result<i64, StepError> {
    record_checked_version(tx, s, target, version, statements, &[]).await
}

/// [`record_version`] with checks of rows (SQL that fails when the target's rows are not
/// the source's: [`Watcher::type_checks`]) carried by its schema event, where the applier
/// runs them — wherever the version itself was applied (a row may need it earlier).
async fn record_checked_version(
    tx: &tokio_postgres::Transaction<'_>,
    s: &str,
    target: &str,
    version: Option<i64>,
    statements: &[Statement],
    checks: &[ddlwatcher::ddl::RowsCheck],
) -> Result<i64, StepError> {
    let queued = version.is_some();
    let checks_json = if checks.is_empty() {
        None
    } else {
        Some(serde_json::to_string(checks).map_err(|e| StepError::Fatal(e.to_string()))?)
    };
    let version: i64 = match version {
        Some(v) => v,
        None => tx
            .query_one(
                &format!("update {s}.ddl_clock set n = n + 1 returning n"),
                &[],
            )
            .await
            .map_err(StepError::db("numbering a schema version"))?
            .get(0),
    };
    let json = serde_json::to_string(statements).map_err(|e| StepError::Fatal(e.to_string()))?;
    // The version's source transaction: the DDL's when its event trigger queued the
    // schema event, else this one (the column's default).
    tx.execute(
        &format!(
            "insert into {s}.ddl (target, version, statements, txid)
             values ($1, $2, $3::text::jsonb,
                     coalesce((select d.txid from {s}.ddl_snapshot d where $4 and d.id = $2), pg_catalog.pg_current_xact_id()))"
        ),
        &[&target, &version, &json, &queued],
    )
    .await
    .map_err(StepError::db("recording a schema version"))?;
    if !queued {
        tx.execute(
            &format!(
                "select {s}.enqueue('S', '', $1, 0, null, {})",
                schema_event_data("$2", "$3")
            ),
            &[&target, &version, &checks_json],
        )
        .await
        .map_err(StepError::db("queueing a schema event"))?;
    }
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
        self.check_capture_triggers(client).await?;
        // Snapshots stored by the event trigger (also those left from an earlier run in
        // event-trigger mode): the transmitter sends no batch before they are versions.
        // Under the looks' lock: an initial load makes them too (`schema_position`).
        lock_looks(client, &self.config.internal_schema, true).await?;
        let processed = self.process_snapshots(client).await;
        lock_looks(client, &self.config.internal_schema, false).await?;
        if let Some((catalogs, snapshot)) = processed? {
            let installed = capture::Installed {
                catalogs,
                snapshot: Some(snapshot),
            };
            capture::install_tables(client, &self.config, &installed)
                .await
                .map_err(|e| {
                    StepError::Other(format!("installing capture on changed tables: {e}"))
                })?;
            self.sync_sequences(client).await?;
            return Ok(Progress::Busy);
        }
        if self.config.use_event_triggers {
            if self.sequences.is_empty() {
                for (target, expr, _) in &self.targets {
                    let c = Catalog::read(&*client, expr, &self.config.internal_schema)
                        .await
                        .map_err(read_error)?;
                    self.sequences.insert(target.clone(), SequenceScope::of(&c));
                }
            }
            self.sync_sequences(client).await?;
            return Ok(Progress::Idle);
        }
        let fp = self.fingerprint(client).await?;
        tracing::trace!(fingerprint = %fp, "catalog fingerprint");
        if self.fingerprint.as_deref() == Some(fp.as_str()) {
            self.sync_sequences(client).await?;
            return Ok(Progress::Idle);
        }
        // One look at a time per internal schema (an initial load takes its position under
        // the same lock: `schema_position`).
        lock_looks(client, &self.config.internal_schema, true).await?;
        let looked = self.look(client, fp).await;
        lock_looks(client, &self.config.internal_schema, false).await?;
        looked
    }
}

/// Takes (`lock`) or releases the session advisory lock that serialises the looks of
/// diffing mode into one internal schema (re-entrant within a session).
async fn lock_looks(client: &Client, internal: &str, lock: bool) -> Result<(), StepError> {
    db::session_lock(client, db::LOOK_LOCK, internal, lock)
        .await
        .map_err(StepError::db("locking the ddlwatcher's look"))
}

/// Takes the looks' lock as [`lock_looks`], waiting at most `within`: a look holds it while
/// it waits for a table's lock itself (behind a transaction left open), and an initial
/// load waiting for it says so rather than hang.
async fn lock_looks_within(
    client: &Client,
    internal: &str,
    within: std::time::Duration,
) -> Result<(), StepError> {
    if db::session_lock_within(client, db::LOOK_LOCK, internal, within)
        .await
        .map_err(StepError::db("locking the ddlwatcher's look"))?
    {
        return Ok(());
    }
    let why = match look_holder(client, internal).await {
        Some(why) => why,
        None => "likely waiting for a table's lock behind a transaction left open (see \
                 pg_stat_activity and pg_locks)"
            .to_string(),
    };
    Err(StepError::Other(format!(
        "a look of the ddlwatcher (of the running instance) has held its lock for over {} s — \
         {why}: end that transaction, then run the load again",
        within.as_secs()
    )))
}

/// The session holding the looks' lock of `internal` and what it waits for ("its session,
/// pid N, waits for a relation lock held by pid M (…)"); `None` when that cannot be read.
async fn look_holder(client: &Client, internal: &str) -> Option<String> {
    let pid = db::session_lock_holder(client, db::LOOK_LOCK, internal)
        .await
        .ok()??;
    let wait = crate::stage::Wait::of(client, pid).await.ok()??;
    Some(if wait.blocked() {
        format!("its session, pid {pid}, waits for {}", wait.lock())
    } else {
        format!("its session is pid {pid}, which waits for no lock now")
    })
}

/// Where an initial load of `target` stands in the schema stream: the catalog it creates
/// tables from and the last schema version that catalog includes — the target leaves the
/// versions up to it out for the tables (and types, functions…) the load creates, which
/// hold them already. In event-trigger mode the DDL's own transaction numbers its version,
/// so the catalog and the counter read under one snapshot agree. In diffing mode a look is
/// made first (changes since the last one become a version), and the catalog is the one
/// it stored, read under the lock that keeps other looks out.
/// Whether a catalog read that failed with `e` is worth making again: a schema change
/// committed meanwhile spoiled it (an object it printed was dropped, see
/// [`ReadError::is_concurrent_change`](ddlwatcher::ReadError::is_concurrent_change)). Five
/// tries, counted in `tries`, 100 ms apart (waited here).
pub(crate) async fn read_again(e: &ddlwatcher::ReadError, tries: &mut u32) -> bool {
    if !e.is_concurrent_change() || *tries >= 5 {
        return false;
    }
    *tries += 1;
    tracing::debug!(error = %e, "catalog unreadable under a schema change; reading it again");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    true
}

pub async fn schema_position(
    client: &mut Client,
    config: &Config,
    target: &str,
    lock_wait: std::time::Duration,
) -> Result<(Catalog, i64), StepError> {
    let s = quote_ident(&config.internal_schema);
    let expr = config
        .targets
        .get(target)
        .map(|t| TargetExpression::parse(&t.target_expression))
        .transpose()
        .map_err(|e| StepError::Fatal(format!("target {target}: {e}")))?
        .ok_or_else(|| StepError::Fatal(format!("unknown target {target}")))?;
    if config.use_event_triggers {
        let mut unreadable = 0;
        loop {
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(StepError::db("begin"))?;
            let row = tx
                .query_one(&format!("select n, processed from {s}.ddl_clock"), &[])
                .await
                .map_err(StepError::db("reading the schema version counter"))?;
            let (n, processed): (i64, i64) = (row.get(0), row.get(1));
            let catalog = match Catalog::read(&tx, &expr, &config.internal_schema).await {
                Ok(c) => c,
                // Under a snapshot older than a schema change committed since, the
                // catalog's printing functions (`format_type`, `pg_get_indexdef`…), which
                // read the latest catalog, give NULL for an object dropped meanwhile, or
                // fail: read again a few times before saying so.
                Err(e) if read_again(&e, &mut unreadable).await => continue,
                Err(e) => return Err(read_error(e)),
            };
            tx.commit().await.map_err(StepError::db("commit"))?;
            if processed >= n {
                return Ok((catalog, n));
            }
            // Catalog snapshots the event trigger stored and no instance has made versions
            // of yet (it is not running, or not there yet): made now, so that the load can
            // send a table the target has already the changes it needs (`pending_versions`).
            lock_looks_within(client, &config.internal_schema, lock_wait).await?;
            let made = Watcher::new(config).step(client).await;
            lock_looks(client, &config.internal_schema, false).await?;
            if matches!(made?, Progress::Idle) {
                // None to make (the counter also counts diffing mode's versions).
                return Ok((catalog, n));
            }
        }
    }
    lock_looks_within(client, &config.internal_schema, lock_wait).await?;
    let position = async {
        Watcher::new(config).step(client).await?;
        let row = client
            .query_one(
                &format!(
                    "select (select catalog::text from {s}.schema_snapshot where target = $1),
                            (select n from {s}.ddl_clock)"
                ),
                &[&target],
            )
            .await
            .map_err(StepError::db("reading the last catalog snapshot"))?;
        let catalog = match row.get::<_, Option<String>>(0) {
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                StepError::Fatal(format!("stored catalog snapshot is unreadable: {e}"))
            })?,
            None => Catalog::read(&*client, &expr, &config.internal_schema)
                .await
                .map_err(read_error)?,
        };
        Ok::<_, StepError>((catalog, row.get::<_, i64>(1)))
    }
    .await;
    lock_looks(client, &config.internal_schema, false).await?;
    position
}

impl Watcher {
    /// One look of diffing mode (under [`lock_looks`]): each target's catalog diffed against
    /// its last snapshot, versions recorded, triggers and rows brought along.
    async fn look(&mut self, client: &mut Client, fp: String) -> Result<Progress, StepError> {
        // Before the catalogs: a rewrite after this read shows at the next look.
        let filenodes = self.read_filenodes(client).await?;
        let mut seen = BTreeSet::new();
        let mut deferred = Vec::new();
        let mut installed = capture::Installed::default();
        for (target, expr, names) in self.targets.clone() {
            let (recorded, later, catalog) =
                self.diff_target(client, &target, &expr, &names).await?;
            installed.catalogs.insert(target.clone(), catalog);
            if recorded {
                seen.insert(target.clone());
            }
            if !later.is_empty() {
                deferred.push((target, later));
            }
        }
        let grown_recorded = self.record_grown(client, &installed.catalogs).await?;
        // Triggers for new tables (their rows come along); a table without a primary key
        // is reported and retried, the other changes are recorded all the same.
        capture::install_tables(client, &self.config, &installed)
            .await
            .map_err(|e| StepError::Other(format!("installing capture on changed tables: {e}")))?;
        self.retake_reattached(client, &installed.catalogs).await?;
        // Constraint additions after the new tables' rows, in a version of their own.
        for (target, statements) in deferred {
            let tx = client.transaction().await.map_err(StepError::db("begin"))?;
            record_version(&tx, &self.schema, &target, None, &statements).await?;
            tx.commit().await.map_err(StepError::db("commit"))?;
            seen.insert(target);
        }
        // A table left to the next look: it comes at the next step, catalog changed or not.
        self.fingerprint = grown_recorded.then_some(fp);
        self.filenodes = Some(filenodes);
        // After the schema versions, so a new sequence exists before its position arrives.
        self.sync_sequences(client).await?;
        Ok(if seen.is_empty() {
            Progress::Idle
        } else {
            Progress::Busy
        })
    }
}

/// SQL over a row `t` and its table's catalog row `c` (a partition's own): whether the row
/// was written after its table was last rewritten. A rewrite (`ALTER COLUMN … TYPE`) writes
/// every row anew in its transaction, and the catalog row with it, a command later (its
/// file node): a row of another transaction, or of a later command of that one, was
/// written since. A later change to the catalog row (another `ALTER TABLE`, a `GRANT`)
/// makes every row look written since: more rows, never fewer.
const WRITTEN_SINCE_REWRITE: &str =
    "(t.xmin::text <> c.xmin::text or t.cmin::text::int8 > c.cmin::text::int8)";

/// Queues an update of rows of `table` (its names as they are now) with their values of
/// `columns`: by its `key`, or for a keyless table one update per set of rows equal but for
/// those columns (their old row: those other columns and member `""`, the number of rows;
/// their data: one array of values per column, a value per row — the applier sets one on
/// each). Rows only where `written` holds (SQL over `t`, the row), when given; for a
/// keyless table, the whole of each set with such a row. The table is locked against
/// writes first: a row changed after the read but committed before this transaction would
/// be applied before them on the target. Returns the number of events queued.
async fn queue_values(
    tx: &tokio_postgres::Transaction<'_>,
    s: &str,
    table: &ddlwatcher::Table,
    key: Option<&[String]>,
    columns: &[ddlwatcher::catalog::Column],
    written: Option<&str>,
) -> Result<u64, StepError> {
    let qualified = table.qualified();
    tx.batch_execute(&format!("lock table {qualified} in share mode"))
        .await
        .map_err(StepError::db(format!(
            "locking {qualified} to queue values of its rows"
        )))?;
    let rows = ddlwatcher::ddl::own_rows(table, &qualified);
    // The rows with their table's catalog row (a partition's own), which `written` reads.
    let from = format!("{rows} t join pg_catalog.pg_class c on c.oid = t.tableoid");
    let n = match key {
        Some(key) => {
            let value = |name: &str, text_form: bool| {
                let col = format!("t.{}", quote_ident(name));
                let v = if text_form {
                    format!("to_json({col}::text)")
                } else {
                    col
                };
                format!("{}, {v}", ddlwatcher::quote_literal(name))
            };
            let pairs: Vec<String> = key
                .iter()
                .map(|k| {
                    let text_form =
                        table.columns.iter().any(|c| &c.name == k && c.text_form);
                    value(k, text_form)
                })
                .chain(columns.iter().map(|c| value(&c.name, c.text_form)))
                .collect();
            tx.execute(
                &format!(
                    "select {s}.enqueue('U', $1, $2, $3::oid, null, json_build_object({})) from {from} where {}",
                    pairs.join(", "),
                    written.unwrap_or("true"),
                ),
                &[&table.schema, &table.name, &table.oid],
            )
            .await
        }
        None => {
            // The old row is as the row trigger writes a keyless table's (whole), less
            // `columns`.
            let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
            let aggregates: Vec<String> = columns
                .iter()
                .map(|c| {
                    let col = format!("(x.r).{}", quote_ident(&c.name));
                    let v = if c.text_form {
                        format!("({col})::text")
                    } else {
                        col
                    };
                    format!("{}, json_agg({v})", ddlwatcher::quote_literal(&c.name))
                })
                .collect();
            tx.execute(
                &format!(
                    "select {s}.enqueue('U', $1, $2, $3::oid,
                             (select json_object_agg(m.key, m.value)
                                from (select '' as key, to_json(g.n) as value
                                      union all
                                      select j.key, j.value from json_each(g.rest::json) j) m),
                             g.d)
                       from (select x.rest, count(*) as n, json_build_object({}) as d
                               from (select t as r,
                                            (select json_object_agg(j.key, j.value) from json_each(to_json(t)) j
                                              where j.key <> all($4::text[]))::text as rest,
                                            {} as w
                                       from {from}) x
                              group by x.rest
                             having bool_or(x.w)) g",
                    aggregates.join(", "),
                    written.unwrap_or("true"),
                ),
                &[&table.schema, &table.name, &table.oid, &names],
            )
            .await
        }
    }
    .map_err(StepError::db(format!(
        "queueing values of {qualified}'s rows"
    )))?;
    Ok(n)
}
