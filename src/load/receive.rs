//! Target side of the initial load: create missing objects, take COPY streams, build keys
//! and indexes after the data, and record each table's load snapshot.

use bytes::Bytes;
use ddlwatcher::ddl::{self, SchemaMap};
use ddlwatcher::{qualified, quote_ident, Table};
use futures_util::SinkExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::applier::{pg, Applier, ApplyError};
use crate::db;
use crate::wire::{
    CopyHeader, ForeignKeysAdded, LoadFinish, LoadForeignKeys, LoadPrepare, LoadStart,
    LoadTableState,
};

/// Gives the columns of an existing target table (empty, or to be emptied: `--truncate`)
/// the built-in types the source's have, where they differ — a schema version not applied
/// yet (the stream held at it) leaves them behind, and the copy would not fit. The table is
/// emptied first (the load empties it again under its snapshot); the old values need no cast.
async fn retype_lagging_columns(
    tx: &deadpool_postgres::Transaction<'_>,
    t: &ddlwatcher::Table,
    map: &ddlwatcher::SchemaMap,
    name: &str,
) -> Result<(), ApplyError> {
    let on_target: std::collections::HashMap<String, String> = tx
        .query(
            "select a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a
              where a.attrelid = pg_catalog.to_regclass($1) and a.attnum > 0 and not a.attisdropped",
            &[&name],
        )
        .await
        .map_err(pg(&format!("reading the columns of {name}")))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let alters: Vec<String> = t
        .columns
        .iter()
        .filter(|c| !c.generated && matches!(c.type_ref, ddlwatcher::TypeRef::Builtin(_)))
        .filter(|c| on_target.get(&c.name).is_some_and(|ty| *ty != c.type_name))
        .map(|c| {
            format!(
                "alter column {} type {} using null",
                ddlwatcher::quote_ident(&c.name),
                ddl::type_sql(&c.type_ref, map)
            )
        })
        .collect();
    if alters.is_empty() {
        return Ok(());
    }
    tracing::warn!(table = %name, columns = ?alters, "the target table's column types lag behind the source's (a schema version not applied yet): emptied and retyped for the copy");
    tx.batch_execute(&format!(
        "truncate only {name}; alter table {name} {}",
        alters.join(", ")
    ))
    .await
    .map_err(pg(&format!(
        "retyping the columns of {name} to the source's"
    )))
}

/// Most `maintenance_work_mem` (kB) for building a loaded table's keys and indexes.
const INDEX_BUILD_MEMORY_KB: i64 = 1024 * 1024;

/// `maintenance_work_mem` (kB) that lets the keys of `rows` rows be sorted in memory — also
/// when a parallel build splits it between its participants — capped at
/// [`INDEX_BUILD_MEMORY_KB`]. Memory a sort does not need is never taken.
fn index_build_memory_kb(rows: i64) -> i64 {
    // A sorted key of a few columns costs about 64 bytes (tuple, SortTuple, palloc header);
    // twice that leaves room for wider keys and for the split between participants.
    (rows.saturating_mul(128) / 1024).clamp(64 * 1024, INDEX_BUILD_MEMORY_KB)
}

fn map_for(apply_schema: &Option<String>, tables: &[Table]) -> SchemaMap {
    SchemaMap::new(apply_schema.clone(), tables)
}

fn target_of(apply_schema: &Option<String>, schema: &str) -> String {
    apply_schema.clone().unwrap_or_else(|| schema.to_string())
}

impl Applier {
    /// Which of the tables of `msg` an earlier run of this load finished (see
    /// [`LoadDone`](crate::wire::LoadDone)).
    pub async fn load_done(
        &self,
        msg: &crate::wire::LoadDone,
    ) -> Result<Vec<(String, String)>, ApplyError> {
        let s = &self.schema;
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "select schema_name, table_name, source_oid from {s}.load_table
                      where source = $1 and target = $2 and state = 'done'"
                ),
                &[&msg.source, &msg.target],
            )
            .await
            .map_err(pg("reading load state"))?;
        let done: std::collections::HashSet<(String, String)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let done_oids: std::collections::HashSet<u32> = rows
            .iter()
            .filter_map(|r| r.get::<_, Option<u32>>(2))
            .collect();
        let oid = |i: usize| msg.oids.get(i).copied();
        Ok(msg
            .tables
            .iter()
            .enumerate()
            .filter(|(i, (schema, name))| {
                done.contains(&(target_of(&msg.apply_schema, schema), name.clone()))
                    || oid(*i).is_some_and(|o| done_oids.contains(&o))
            })
            .map(|(_, t)| t.clone())
            .collect())
    }

    /// The statements of no table (types and their labels, schemas, functions…) of the
    /// versions up to the load's catalog that the target has neither applied nor taken in
    /// an earlier load, run before the load creates what it lacks from that catalog: the
    /// objects it has already — also those an earlier, unfinished run of the load created
    /// from an older catalog (an enum whose labels were renamed or added since: the copy
    /// holds the new ones) — take them; one it creates after holds them already. A label
    /// added here (`ADD VALUE`, which batches run on its own) is usable once the prepare
    /// commits, before the copy. A statement that finds its work done is left out; one that
    /// fails otherwise (a type still in use by a table the stream has not changed yet) is
    /// left to the stream. Returns the version through which every such statement is taken
    /// (`ddl_applied.objects_through`: the stream leaves them out up to it — run again, an
    /// old label's addition would add back a label renamed since), and whether any ran.
    async fn take_object_versions(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        msg: &LoadPrepare,
    ) -> Result<Option<(i64, bool)>, ApplyError> {
        let s = &self.schema;
        let Some(upto) = msg.schema_version else {
            return Ok(None);
        };
        let row = tx
            .query_opt(
                &format!("select version, objects_through from {s}.ddl_applied where source = $1 and target = $2"),
                &[&msg.source, &msg.target],
            )
            .await
            .map_err(pg("reading the schema version applied"))?;
        let done = row.map_or(0, |r| {
            r.get::<_, i64>(0)
                .max(r.get::<_, Option<i64>>(1).unwrap_or(0))
        });
        let mut through = upto;
        let mut ran = false;
        for v in msg
            .ddl
            .iter()
            .filter(|v| v.version > done && v.version <= upto)
        {
            for st in v
                .statements
                .iter()
                .filter(|st| crate::applier::of_no_table(st))
            {
                ran = true;
                if let Err(e) = crate::applier::run_statement(tx, v.version, st, &[], true).await {
                    tracing::info!(version = v.version, error = %e, "schema statement of no table not taken before the load; left to the stream");
                    through = through.min(v.version - 1);
                }
            }
        }
        Ok(Some((through.max(done), ran)))
    }

    /// The tables of `msg` the target has already and loads now (not finished by an earlier
    /// run, not refused for their rows, not made again below) take the changes of them that
    /// the schema versions up to the load's catalog make and the target has not applied
    /// (the stream held behind them, or the tables are there without it): the copy has the
    /// catalog's shape. They are emptied first (the load empties them anyway; a retyping
    /// needs no old values). Statements of other tables are left to the stream, those of
    /// no table were taken before ([`Self::take_object_versions`]). Returns the
    /// source OIDs of those tables: the stream leaves those versions out for them.
    async fn take_versions_before_load(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        msg: &LoadPrepare,
        map: &SchemaMap,
    ) -> Result<Vec<u32>, ApplyError> {
        let s = &self.schema;
        let Some(upto) = msg.schema_version else {
            return Ok(Vec::new());
        };
        let applied: i64 = tx
            .query_opt(
                &format!("select version from {s}.ddl_applied where source = $1 and target = $2"),
                &[&msg.source, &msg.target],
            )
            .await
            .map_err(pg("reading the schema version applied"))?
            .map(|r| r.get(0))
            .unwrap_or(0);
        let versions: Vec<_> = msg
            .ddl
            .iter()
            .filter(|v| v.version > applied && v.version <= upto)
            .collect();
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let mut behind = Vec::new();
        // Those of `behind` that take their versions' statements.
        let mut take = Vec::new();
        let mut names = Vec::new();
        for t in &msg.tables {
            let schema = map.map(&t.schema).to_string();
            // The name it has on the target: a pending version may rename it (a table
            // the target has under its old name takes the versions, the rename with them,
            // rather than be left stale beside a new one the load would create).
            let mut current = t.name.clone();
            let former = former_name(&versions, t.oid, &t.name);
            if former != t.name {
                // There under its old name only, and not one a load registered (an earlier
                // run's, whose state decides).
                let there: bool = tx
                    .query_one(
                        &format!(
                            "select pg_catalog.to_regclass($6) is null
                                    and pg_catalog.to_regclass($1) is not null
                                    and not exists (select from {s}.load_table
                                                     where source = $2 and target = $3
                                                       and schema_name = $4 and table_name = $5)"
                        ),
                        &[
                            &qualified(&schema, &former),
                            &msg.source,
                            &msg.target,
                            &schema,
                            &former,
                            &qualified(&schema, &t.name),
                        ],
                    )
                    .await
                    .map_err(pg("looking up a table"))?
                    .get(0);
                if there {
                    current = former;
                }
            }
            let name = qualified(&schema, &current);
            let row = tx
                .query_one(
                    &format!(
                        "select pg_catalog.to_regclass($1) is not null,
                                (select state <> 'done' and not created_by_load from {s}.load_table
                                  where source = $2 and target = $3 and schema_name = $4 and table_name = $5)"
                    ),
                    &[&name, &msg.source, &msg.target, &schema, &current],
                )
                .await
                .map_err(pg("looking up a table"))?;
            let (exists, unfinished): (bool, Option<bool>) = (row.get(0), row.get(1));
            // Loaded now: registered and unfinished (not one the load created: made again),
            // or not registered yet and empty or to be emptied.
            let loads = exists
                && match unfinished {
                    Some(u) => u,
                    None => {
                        msg.replaces(t)
                            || !tx
                                .query_one(&format!("select exists (select 1 from {name})"), &[])
                                .await
                                .map_err(pg(&format!("reading {name}")))?
                                .get::<_, bool>(0)
                    }
                };
            if loads {
                behind.push(t.oid);
                // A table whose creation is among these versions did not come from the
                // stream: it was made by hand (or by another tool), in its own shape —
                // the source's as it is now, if the copy is to fit. Running the versions
                // that create it and shape it since would make it twice (a second
                // primary key). It takes none; the stream leaves them out for it too.
                let made_by_them = versions.iter().any(|v| {
                    v.statements
                        .iter()
                        .any(|st| st.tables.contains(&t.oid) && st.sql.starts_with("create table "))
                });
                if made_by_them {
                    tracing::info!(table = %name, "target table made outside replication before the versions that create it arrived: it takes none of them; the copy fills it as it is");
                } else {
                    take.push(t.oid);
                }
                names.push(name);
            } else if exists && current != t.name {
                // Holding rows under its old name: the load would make a second table.
                return Err(ApplyError::Conflict {
                    message: format!(
                        "target table {name} (called {} on the source now) already holds rows; the initial load \
                         never doubles rows: re-run with --truncate to replace them, or empty it yourself",
                        qualified(&schema, &t.name)
                    ),
                });
            }
        }
        if behind.is_empty() {
            return Ok(Vec::new());
        }
        tx.batch_execute(&format!("truncate only {}", names.join(", ")))
            .await
            .map_err(pg(&format!(
                "emptying {} before its schema catches up",
                names.join(", ")
            )))?;
        for v in versions {
            for st in v.statements.iter().filter(|st| st.transactional) {
                // Statements of no table were taken before (`take_object_versions`).
                let ours = !st.tables.is_empty() && st.tables.iter().all(|oid| take.contains(oid));
                if !ours || st.deletes_rows_of.is_some() {
                    continue;
                }
                crate::applier::run_statement(tx, v.version, st, &[], true).await?;
            }
            tracing::info!(version = v.version, tables = %names.join(", "), "schema version taken by tables before their load");
        }
        Ok(behind)
    }

    /// Creates missing schemas, types and tables; registers the tables to load; refuses
    /// tables that hold rows unless `truncate` (nothing is changed then). Also returns
    /// whether the target runs with `wal_level = minimal`: then a table created or emptied
    /// in the transaction that fills it is written without WAL.
    pub async fn load_prepare(
        &self,
        msg: &LoadPrepare,
    ) -> Result<(Vec<LoadTableState>, bool), ApplyError> {
        let map = map_for(&msg.apply_schema, &msg.tables);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // The applied position's lock, which every batch of this source takes first: a batch
        // being applied finishes before the tables appear, and the next one sees them
        // registered (and waits for the load) rather than meeting them empty.
        let s = &self.schema;
        tx.execute(
            &format!("insert into {s}.applied (source, target, seq) values ($1, $2, 0) on conflict do nothing"),
            &[&msg.source, &msg.target],
        )
        .await
        .map_err(pg("registering the source"))?;
        tx.execute(
            &format!("select 1 from {s}.applied where source = $1 and target = $2 for update"),
            &[&msg.source, &msg.target],
        )
        .await
        .map_err(pg("locking the applied position"))?;
        let replicated = map.target_schemas();
        for schema in &replicated {
            tx.batch_execute(&format!(
                "create schema if not exists {}",
                quote_ident(schema)
            ))
            .await
            .map_err(pg(&format!(
                "creating schema {schema} (the target role needs CREATE on the database)"
            )))?;
            // A schema that exists already may belong to someone else: say what to grant.
            let row = tx
                .query_one(
                    "select current_user::text, pg_catalog.pg_get_userbyid(n.nspowner)::text,
                            has_schema_privilege(n.oid, 'USAGE'), has_schema_privilege(n.oid, 'CREATE')
                       from pg_catalog.pg_namespace n where n.nspname = $1",
                    &[schema],
                )
                .await
                .map_err(pg(&format!("reading the rights on schema {schema}")))?;
            let (me, owner, usage, create): (String, String, bool, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if !usage || !create {
                return Err(ApplyError::Failed {
                    message: format!(
                        "role `{me}` may not create tables in schema `{schema}` (owned by `{owner}`): \
                         GRANT USAGE, CREATE ON SCHEMA {q} TO {m}, or ALTER SCHEMA {q} OWNER TO {m}",
                        q = quote_ident(schema),
                        m = quote_ident(&me),
                    ),
                });
            }
        }
        // Schemas of types, collations and functions outside the replicated ones (a table
        // may use a type of a shared schema, or a default call a function of one): created
        // when missing, as the schema diff does.
        let others: std::collections::BTreeSet<&str> = msg
            .types
            .iter()
            .map(|t| map.map(&t.schema))
            .chain(msg.collations.iter().map(|c| map.map(&c.schema)))
            .chain(msg.functions.iter().map(|f| map.map(&f.schema)))
            .chain(msg.sequences.iter().map(|q| map.map(&q.schema)))
            .filter(|s| !replicated.contains(*s))
            .collect();
        for schema in others {
            tx.batch_execute(&format!(
                "create schema if not exists {}",
                quote_ident(schema)
            ))
            .await
            .map_err(pg(&format!(
                "creating schema {schema}, which holds types, collations, functions or sequences the tables use (the target role \
                 needs CREATE on the database, or create the schema first)"
            )))?;
        }
        // Versions of types and other objects of no table first: what is created from the
        // catalog below holds them already.
        let objects = self.take_object_versions(&tx, msg).await?;
        // Whether this load creates types or tables (from a catalog at `schema_version`).
        let mut created_any = objects.is_some_and(|(_, ran)| ran);
        for t in &msg.types {
            let name = qualified(map.map(&t.schema), &t.name);
            let exists: bool = tx
                .query_one("select to_regtype($1) is not null", &[&name])
                .await
                .map_err(pg("looking up a type"))?
                .get(0);
            if exists {
                continue;
            }
            created_any = true;
            match ddl::create_type(t, &map) {
                Some(sql) => tx.batch_execute(&sql).await.map_err(pg(&format!("creating type {name}")))?,
                None => {
                    return Err(ApplyError::Failed {
                        message: format!(
                            "type {name} is missing on the target and cannot be created by pgteleport \
                             (it belongs to an extension or is a base type): create it (CREATE EXTENSION …) first"
                        ),
                    })
                }
            }
        }
        // Collations before the tables whose columns use them. One the target cannot create
        // (an ICU locale its PostgreSQL lacks) is left out with a warning: the table naming
        // it fails next, with the collation's name in the error.
        for c in &msg.collations {
            if let Err(error) = attempt(&tx, &c.create_sql(&map)).await? {
                tracing::warn!(collation = %qualified(map.map(&c.schema), &c.name), %error,
                    "collation not created on the target; create it by hand");
            }
        }
        // Sequences before the tables (defaults draw from them; their positions follow the
        // source's with the batches).
        for q in &msg.sequences {
            if let Err(error) = attempt(&tx, &ddl::create_sequence(q, &map)).await? {
                tracing::warn!(sequence = %qualified(map.map(&q.schema), &q.name), %error, "sequence not created on the target; create it by hand");
            }
        }
        // Functions before the tables (defaults, checks and generated columns may call
        // them), bodies unchecked as pg_dump restores them (a body may name a table created
        // below). One the target cannot create is left out with a warning naming it: what
        // needs it fails next, with the function's name in the error.
        if !msg.functions.is_empty() {
            tx.batch_execute("set local check_function_bodies = off")
                .await
                .map_err(pg("set check_function_bodies"))?;
        }
        for f in &msg.functions {
            let sql = ddlwatcher::retarget::if_needed(f.definition.clone(), &map);
            if let Err(error) = attempt(&tx, &sql).await? {
                tracing::warn!(function = %qualified(map.map(&f.schema), &f.name), %error,
                    "function not created on the target; create it by hand");
            }
        }
        // Before anything reads the tables' load state (a table taken as behind is emptied).
        for t in &msg.tables {
            let target_schema = map.map(&t.schema).to_string();
            // Registered under another name, done: the stream renamed it since (or moved
            // it to another schema) — its record follows it, found by its source OID.
            tx.execute(
                &format!(
                    "update {s}.load_table l set schema_name = $3, table_name = $4
                      where l.source = $1 and l.target = $2 and l.source_oid = $5 and l.state = 'done'
                        and (l.schema_name, l.table_name) <> ($3, $4)
                        and pg_catalog.to_regclass(pg_catalog.format('%I.%I', l.schema_name, l.table_name)) is null
                        and not exists (select from {s}.load_table o
                                         where o.source = $1 and o.target = $2
                                           and o.schema_name = $3 and o.table_name = $4)"
                ),
                &[&msg.source, &msg.target, &target_schema, &t.name, &t.oid],
            )
            .await
            .map_err(pg("following a renamed table's load state"))?;
        }
        // Tables to copy again (`--copy-again`: the way to copy one whose values differ):
        // their records go, and each is taken as a table that holds rows to replace.
        if !msg.again.is_empty() {
            let (schemas, names): (Vec<String>, Vec<String>) = msg
                .again
                .iter()
                .map(|(schema, name)| (map.map(schema).to_string(), name.clone()))
                .unzip();
            for table in ["load_range", "load_table"] {
                tx.execute(
                    &format!(
                        "delete from {s}.{table}
                          where source = $1 and target = $2
                            and (schema_name, table_name) in
                                (select * from rows from (pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[])))"
                    ),
                    &[&msg.source, &msg.target, &schemas, &names],
                )
                .await
                .map_err(pg("clearing the records of tables to copy again"))?;
            }
        }
        let behind = self.take_versions_before_load(&tx, msg, &map).await?;
        let mut states = Vec::new();
        let mut refused = Vec::new();
        for t in &msg.tables {
            let target_schema = map.map(&t.schema).to_string();
            let name = qualified(&target_schema, &t.name);
            let mut exists: bool = tx
                .query_one("select to_regclass($1) is not null", &[&name])
                .await
                .map_err(pg("looking up a table"))?
                .get(0);
            // Its load state (state, created by the load), if registered.
            let registered: Option<(String, bool)> = tx
                .query_opt(
                    &format!(
                        "select state, created_by_load from {s}.load_table
                          where source = $1 and target = $2 and schema_name = $3 and table_name = $4"
                    ),
                    &[&msg.source, &msg.target, &target_schema, &t.name],
                )
                .await
                .map_err(pg("reading load state"))?
                .map(|r| (r.get(0), r.get(1)));
            // A table an earlier run of the load created and did not finish is made again
            // from this catalog: its copy restarts from scratch anyway, and the source's
            // schema may have changed since (the new copy would not fit the old shape).
            // Its views go with it and are made again below; nothing else refers to it yet
            // (the load's foreign keys come after every table is done).
            let remake = exists
                && registered
                    .as_ref()
                    .is_some_and(|(state, by_load)| *by_load && state != "done");
            if remake {
                tx.batch_execute(&format!("drop table {name} cascade"))
                    .await
                    .map_err(pg(&format!(
                        "dropping {name}, created by an unfinished load, to make it again"
                    )))?;
                tracing::info!(table = %name, "table created by an unfinished load made again from the source's catalog as it is now");
                exists = false;
            }
            let mut created = false;
            if !exists {
                for seq in ddl::create_sequences(t, &map) {
                    tx.batch_execute(&seq)
                        .await
                        .map_err(pg(&format!("creating a sequence for {name}")))?;
                }
                tx.batch_execute(&ddl::create_table(t, &map))
                    .await
                    .map_err(pg(&format!("creating table {name}")))?;
                created = true;
                created_any = true;
            }
            let state = match registered {
                Some((state, _)) => state,
                None => {
                    let has_rows: bool = tx
                        .query_one(&format!("select exists (select 1 from {name})"), &[])
                        .await
                        .map_err(pg(&format!("reading {name}")))?
                        .get(0);
                    if has_rows && !msg.replaces(t) {
                        refused.push(name.clone());
                    } else if !created {
                        retype_lagging_columns(&tx, t, &map, &name).await?;
                    }
                    tx.execute(
                        &format!(
                            "insert into {s}.load_table (source, target, schema_name, table_name, state, created_by_load)
                             values ($1, $2, $3, $4, 'pending', $5)"
                        ),
                        &[&msg.source, &msg.target, &target_schema, &t.name, &created],
                    )
                    .await
                    .map_err(pg("registering a table to load"))?;
                    "pending".to_string()
                }
            };
            // The source table (its events may name it as it was called before), and for
            // a table created now the schema version its catalog holds.
            tx.execute(
                &format!(
                    "update {s}.load_table set source_oid = $5, at_version = case when $7 then $6 else at_version end
                      where source = $1 and target = $2 and schema_name = $3 and table_name = $4"
                ),
                &[&msg.source, &msg.target, &target_schema, &t.name, &t.oid, &msg.schema_version,
                  &(created || behind.contains(&t.oid))],
            )
            .await
            .map_err(pg("recording the source table and schema version of a table to load"))?;
            states.push(LoadTableState {
                schema: t.schema.clone(),
                name: t.name.clone(),
                state,
            });
        }
        // Tables an earlier run did not finish that this one does not load (renamed or
        // dropped on the source since, or no longer matched): their unfinished mark would
        // hold every batch. One the load created goes with it; one that existed before
        // stays as the unfinished copy left it, with a warning.
        let listed: Vec<(String, String)> = msg
            .tables
            .iter()
            .map(|t| (map.map(&t.schema).to_string(), t.name.clone()))
            .collect();
        let unfinished = tx
            .query(
                &format!(
                    "select schema_name, table_name, created_by_load from {s}.load_table
                      where source = $1 and target = $2 and state <> 'done'"
                ),
                &[&msg.source, &msg.target],
            )
            .await
            .map_err(pg("reading unfinished loads"))?;
        for r in unfinished {
            let (schema, table, created): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
            if listed.contains(&(schema.clone(), table.clone())) {
                continue;
            }
            let name = qualified(&schema, &table);
            if created {
                tx.batch_execute(&format!("drop table if exists {name} cascade"))
                    .await
                    .map_err(pg(&format!(
                        "dropping {name}, created by an unfinished load and not loaded any more"
                    )))?;
                tracing::info!(table = %name, "table created by an unfinished load that this one does not load (renamed or dropped on the source) dropped");
            } else {
                tracing::warn!(table = %name, "table an unfinished load was copying is not loaded any more (renamed or dropped on the source): left as that copy left it");
            }
            for t in ["load_range", "load_table"] {
                tx.execute(
                    &format!(
                        "delete from {s}.{t} where source = $1 and target = $2 and schema_name = $3 and table_name = $4"
                    ),
                    &[&msg.source, &msg.target, &schema, &table],
                )
                .await
                .map_err(pg("forgetting an unfinished load"))?;
            }
        }
        if let (true, Some(version), Some((through, _))) = (
            created_any || !behind.is_empty(),
            msg.schema_version,
            objects,
        ) {
            tx.execute(
                &format!(
                    "insert into {s}.ddl_applied (source, target, version, loaded_version, objects_through) values ($1, $2, 0, $3, $4)
                     on conflict (source, target) do update
                        set loaded_version = greatest({s}.ddl_applied.loaded_version, excluded.loaded_version),
                            objects_through = greatest({s}.ddl_applied.objects_through, excluded.objects_through)"
                ),
                &[&msg.source, &msg.target, &version, &through],
            )
            .await
            .map_err(pg("recording the schema version the load's objects were created at"))?;
        }
        if !refused.is_empty() {
            return Err(ApplyError::Conflict {
                message: format!(
                    "target table(s) {} already hold rows; the initial load never doubles rows: \
                     re-run with --truncate to replace them, or empty them yourself",
                    refused.join(", ")
                ),
            });
        }
        // Views last, in creation order (one may read another); CREATE OR REPLACE keeps one
        // the target has. One it cannot create (it reads a schema that is not replicated)
        // is left out with a warning; any later schema change re-creates every view.
        for v in &msg.views {
            let name = qualified(map.map(&v.schema), &v.name);
            let sql = ddlwatcher::retarget::if_needed(ddl::create_view(v, &map, true), &map);
            if let Err(error) = attempt(&tx, &sql).await? {
                tracing::warn!(view = %name, %error, "view not created on the target; create it by hand");
            }
        }
        let wal_level_minimal: bool = tx
            .query_one(
                "select pg_catalog.current_setting('wal_level') = 'minimal'",
                &[],
            )
            .await
            .map_err(pg("reading wal_level"))?
            .get(0);
        tx.commit().await.map_err(pg("commit"))?;
        Ok((states, wal_level_minimal))
    }

    /// Marks the tables as being copied under `snapshot` and empties them.
    pub async fn load_start(&self, msg: &LoadStart) -> Result<(), ApplyError> {
        let s = &self.schema;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let mut names = Vec::new();
        for (schema, table) in &msg.tables {
            let target_schema = target_of(&msg.apply_schema, schema);
            let n = tx
                .execute(
                    &format!(
                        "update {s}.load_table set state = 'copying', snapshot = $5, rows = 0, started_at = clock_timestamp(), finished_at = null
                          where source = $1 and target = $2 and schema_name = $3 and table_name = $4 and state <> 'done'"
                    ),
                    &[&msg.source, &msg.target, &target_schema, table, &msg.snapshot],
                )
                .await
                .map_err(pg("starting a table's load"))?;
            if n != 1 {
                return Err(ApplyError::Conflict {
                    message: format!(
                        "table {} is not prepared for loading (or already done)",
                        qualified(&target_schema, table)
                    ),
                });
            }
            tx.execute(
                &format!(
                    "delete from {s}.load_range where source = $1 and target = $2 and schema_name = $3 and table_name = $4"
                ),
                &[&msg.source, &msg.target, &target_schema, table],
            )
            .await
            .map_err(pg("forgetting earlier ranges"))?;
            names.push(qualified(&target_schema, table));
        }
        // One statement for all: tables of the load that reference each other by foreign
        // keys can only be emptied together.
        if !names.is_empty() {
            let list = names.join(", ");
            tx.batch_execute(&format!("truncate {list}"))
                .await
                .map_err(pg(&format!(
                    "emptying {list} (the target role needs TRUNCATE on them, or to own them; a table this \
                     run does not copy — outside the load, complete, or not named by --copy-again — that \
                     references one of them by a foreign key must be emptied or its key dropped first, or \
                     named by --copy-again too). Re-run the load when fixed: live batches wait for it"
                )))?;
        }
        tx.commit().await.map_err(pg("commit"))?;
        Ok(())
    }

    /// Copies one range from the request body, exactly once (rows and range mark commit
    /// together). Returns the rows copied, or `None` when the range was done before.
    pub async fn load_copy(
        &self,
        header: &CopyHeader,
        body: Incoming,
    ) -> Result<Option<u64>, ApplyError> {
        let s = &self.schema;
        let target_schema = target_of(&header.apply_schema, &header.schema);
        let name = qualified(&target_schema, &header.table);
        let format = match header.format.as_str() {
            "binary" => "binary",
            "text" => "text",
            other => {
                return Err(ApplyError::BadRequest {
                    message: format!("copy format `{other}` is not binary or text"),
                })
            }
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        if self.replica_role {
            tx.batch_execute("set local session_replication_role = replica")
                .await
                .map_err(pg("setting session_replication_role"))?;
        }
        let row = tx
            .query_opt(
                &format!(
                    "select t.state, t.snapshot, coalesce(t.created_by_load, false),
                            exists (select 1 from {s}.load_range r
                                     where (r.source, r.target, r.schema_name, r.table_name) = (t.source, t.target, t.schema_name, t.table_name)
                                       and r.range_no = $5 and r.snapshot = t.snapshot)
                       from {s}.load_table t
                      where t.source = $1 and t.target = $2 and t.schema_name = $3 and t.table_name = $4"
                ),
                &[&header.source, &header.target, &target_schema, &header.table, &header.range],
            )
            .await
            .map_err(pg("reading load state"))?;
        let Some(row) = row else {
            return Err(ApplyError::Conflict {
                message: format!("table {name} is not being loaded"),
            });
        };
        let (state, snapshot, created, done): (String, Option<String>, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if state != "copying" || snapshot.as_deref() != Some(header.snapshot.as_str()) {
            return Err(ApplyError::Conflict {
                message: format!("table {name} is not being loaded under this snapshot (state {state}); restart the load"),
            });
        }
        if done {
            return Ok(None);
        }
        let cols = header
            .columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        // A whole table the load created: emptied (a half-copied earlier attempt was rolled
        // back anyway) and filled in this transaction, so its rows are written frozen and,
        // under wal_level = minimal, without WAL.
        let freeze = header.whole && created;
        if freeze {
            tx.batch_execute(&format!("truncate only {name}"))
                .await
                .map_err(pg(&format!("emptying {name} before its copy")))?;
        }
        let sink = tx
            .copy_in::<_, Bytes>(&format!(
                "copy {name} ({cols}) from stdin (format {format}{})",
                if freeze { ", freeze" } else { "" }
            ))
            .await
            .map_err(pg(&format!("starting COPY into {name}")))?;
        let mut sink = std::pin::pin!(sink);
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApplyError::Unavailable {
                message: format!("the COPY stream for {name} broke off: {e}"),
            })?;
            if let Ok(data) = frame.into_data() {
                // Fed, not sent: the sink joins small frames and forwards large ones
                // without waiting for each to be written (finish flushes the rest).
                sink.feed(data)
                    .await
                    .map_err(pg(&format!("COPY into {name}")))?;
            }
        }
        let rows = sink
            .as_mut()
            .finish()
            .await
            .map_err(pg(&format!("COPY into {name}")))?;
        tx.execute(
            &format!(
                "insert into {s}.load_range (source, target, schema_name, table_name, range_no, snapshot, rows)
                 values ($1, $2, $3, $4, $5, $6, $7)"
            ),
            &[&header.source, &header.target, &target_schema, &header.table, &header.range, &header.snapshot, &(rows as i64)],
        )
        .await
        .map_err(pg("recording a copied range"))?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(Some(rows))
    }

    /// Checks every range arrived, builds the primary key and indexes of a table the load
    /// created, and marks the table done. Returns its rows.
    pub async fn load_finish(&self, msg: &LoadFinish) -> Result<i64, ApplyError> {
        let s = &self.schema;
        let map = map_for(&msg.apply_schema, std::slice::from_ref(&msg.table));
        let target_schema = map.map(&msg.table.schema).to_string();
        let name = qualified(&target_schema, &msg.table.name);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let row = tx
            .query_one(
                &format!(
                    "select count(*), coalesce(sum(rows), 0)::int8,
                            (select created_by_load from {s}.load_table
                              where source = $1 and target = $2 and schema_name = $3 and table_name = $4)
                       from {s}.load_range
                      where source = $1 and target = $2 and schema_name = $3 and table_name = $4 and snapshot = $5"
                ),
                &[&msg.source, &msg.target, &target_schema, &msg.table.name, &msg.snapshot],
            )
            .await
            .map_err(pg("counting copied ranges"))?;
        let (ranges, rows, created): (i64, i64, Option<bool>) =
            (row.get(0), row.get(1), row.get(2));
        if ranges != msg.ranges as i64 {
            return Err(ApplyError::Conflict {
                message: format!(
                    "table {name}: {ranges} of {} ranges arrived; re-run the load",
                    msg.ranges
                ),
            });
        }
        let started = std::time::Instant::now();
        if created == Some(true) {
            // Lets a large table's keys be sorted in memory rather than in temporary files
            // (at 512 MB the 10 M keys of pgbench_accounts still spilled to tapes in a
            // parallel build); never lowers the server's own setting.
            tx.execute(
                "select pg_catalog.set_config('maintenance_work_mem',
                        greatest(pg_catalog.pg_size_bytes(pg_catalog.current_setting('maintenance_work_mem')) / 1024, $1)::text || 'kB', true)",
                &[&index_build_memory_kb(rows)],
            )
            .await
            .map_err(pg("raising maintenance_work_mem for the index builds"))?;
            let has_pk: bool = tx
                .query_one(
                    "select exists (select 1 from pg_catalog.pg_index where indrelid = $1::text::regclass and indisprimary)",
                    &[&name],
                )
                .await
                .map_err(pg("reading indexes"))?
                .get(0);
            if !has_pk {
                if let Some(sql) = ddl::primary_key(&msg.table, &map) {
                    tx.batch_execute(&sql)
                        .await
                        .map_err(pg(&format!("adding the primary key of {name}")))?;
                }
            }
            for index in &msg.table.indexes {
                let exists: bool = tx
                    .query_one(
                        "select to_regclass($1) is not null",
                        &[&qualified(&target_schema, &index.name)],
                    )
                    .await
                    .map_err(pg("reading indexes"))?
                    .get(0);
                if exists {
                    continue;
                }
                match ddl::create_index(&msg.table, index, &map) {
                    Some(sql) => tx
                        .batch_execute(&sql)
                        .await
                        .map_err(pg(&format!("creating index {} on {name}", index.name)))?,
                    None => {
                        tracing::warn!(table = %name, index = %index.name, "expression or partial index not created under apply_schema; create it by hand")
                    }
                }
            }
            // Unique, check and exclusion constraints (foreign keys come once every table is
            // loaded: `load_foreign_keys`; the tables they refer to may be on their way). One
            // the target cannot create — a check calling a function the load does not
            // create, an operator class of an extension it lacks — is left out with a
            // warning naming it, as an expression index is: the rows are what was asked for.
            for c in msg.table.constraints.iter().filter(|c| c.kind != 'f') {
                let exists = has_constraint(&tx, &name, &c.name).await?;
                if exists {
                    continue;
                }
                let sql =
                    ddlwatcher::retarget::if_needed(ddl::add_constraint(&msg.table, c, &map), &map);
                if let Err(error) = attempt(&tx, &sql).await? {
                    tracing::warn!(table = %name, constraint = %c.name, definition = %c.definition, %error,
                        "constraint not created on the target; create it by hand");
                }
            }
        }
        tx.execute(
            &format!(
                "update {s}.load_table set state = 'done', rows = $5, finished_at = clock_timestamp()
                  where source = $1 and target = $2 and schema_name = $3 and table_name = $4"
            ),
            &[&msg.source, &msg.target, &target_schema, &msg.table.name, &rows],
        )
        .await
        .map_err(pg("marking the table loaded"))?;
        tx.commit().await.map_err(pg("commit"))?;
        tracing::info!(table = %name, rows, ms = started.elapsed().as_millis() as u64, "keys and indexes built; table loaded");
        // Planner statistics for the new rows, off the load's critical path (the last
        // table's finish would otherwise wait for it); autovacuum would do it later anyway.
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let result = match pool.get().await {
                Ok(c) => c
                    .batch_execute(&format!("analyze {name}"))
                    .await
                    .map_err(|e| db::describe(&e)),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => tracing::debug!(table = %name, "analyzed after its load"),
                Err(e) => {
                    tracing::warn!(table = %name, error = %e, "ANALYZE after the load failed; autovacuum will analyze it later")
                }
            }
        });
        Ok(rows)
    }
}

impl Applier {
    /// The load's last step: the foreign keys of the tables it created, once every table is
    /// loaded (a key added earlier would meet a table whose rows are still on their way).
    /// Each is added `NOT VALID`, then validated: a key whose rows refer to rows the target
    /// lacks (a table outside the load that is behind, or not replicated) stays `NOT VALID`
    /// — enforced for new rows — with a warning saying how to validate it later; one the
    /// target cannot add (it refers to a table that is not there) is left out with a
    /// warning. Neither stops the load: the rows are what was asked for. Repeatable: keys
    /// the target has are left alone.
    pub async fn load_foreign_keys(
        &self,
        msg: &LoadForeignKeys,
    ) -> Result<ForeignKeysAdded, ApplyError> {
        let s = &self.schema;
        let map = map_for(&msg.apply_schema, &msg.tables);
        let mut client = self.client().await?;
        let mut out = ForeignKeysAdded::default();
        for t in &msg.tables {
            let keys: Vec<_> = t.constraints.iter().filter(|c| c.kind == 'f').collect();
            if keys.is_empty() {
                continue;
            }
            let target_schema = map.map(&t.schema).to_string();
            let name = qualified(&target_schema, &t.name);
            let created: bool = client
                .query_one(
                    &format!(
                        "select coalesce((select created_by_load and state = 'done' from {s}.load_table
                                           where source = $1 and target = $2 and schema_name = $3 and table_name = $4), false)"
                    ),
                    &[&msg.source, &msg.target, &target_schema, &t.name],
                )
                .await
                .map_err(pg("reading load state"))?
                .get(0);
            if !created {
                continue;
            }
            for c in keys {
                // A transaction per key: its locks (both tables, against writes) end with
                // it, not with the last key's validation.
                let tx = client.transaction().await.map_err(pg("begin"))?;
                let exists = has_constraint(&tx, &name, &c.name).await?;
                if exists {
                    continue;
                }
                let label = format!("{name}.{}", quote_ident(&c.name));
                let valid = !c.definition.ends_with(" NOT VALID");
                let mut sql = ddl::add_constraint(t, c, &map);
                if valid {
                    sql.push_str(" not valid");
                }
                let sql = ddlwatcher::retarget::if_needed(sql, &map);
                if let Err(error) = attempt_past_deadlocks(&tx, &sql).await? {
                    tracing::warn!(table = %name, constraint = %c.name, definition = %c.definition, %error,
                        "foreign key not created on the target; create it by hand");
                    out.failed.push(format!("{label}: {error}"));
                    continue;
                }
                if !valid {
                    tx.commit().await.map_err(pg("commit"))?;
                    out.not_valid_as_on_source.push(label);
                    continue;
                }
                let validate = format!(
                    "alter table {name} validate constraint {}",
                    quote_ident(&c.name)
                );
                match attempt_past_deadlocks(&tx, &validate).await? {
                    Ok(()) => out.added.push(label),
                    Err(error) => {
                        tracing::warn!(table = %name, constraint = %c.name, %error,
                            "foreign key added NOT VALID: rows it refers to are missing on the target; \
                             run `{validate}` once they have arrived");
                        out.not_validated.push(format!("{label}: {error}"));
                    }
                }
                tx.commit().await.map_err(pg("commit"))?;
            }
        }
        self.forget_foreign_keys();
        Ok(out)
    }
}

/// Whether table `table` (qualified) has a constraint named `name`.
async fn has_constraint(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    name: &str,
) -> Result<bool, ApplyError> {
    Ok(tx
        .query_one(
            "select exists (select 1 from pg_catalog.pg_constraint
                             where conrelid = $1::text::regclass and conname = $2)",
            &[&table, &name],
        )
        .await
        .map_err(pg("reading constraints"))?
        .get(0))
}

/// [`attempt`], again when it was chosen to break a deadlock: adding a foreign key locks
/// both tables against writes, and the applier may be writing them in the other order.
async fn attempt_past_deadlocks(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
) -> Result<Result<(), Refused>, ApplyError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt(tx, sql).await? {
            Err(e) if e.deadlock && tries < 5 => {
                tracing::debug!(sql, error = %e, "deadlock; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200 * tries)).await;
            }
            outcome => return Ok(outcome),
        }
    }
}

/// The name table `oid` (called `name` on the source now) had before the table renames
/// of `versions` (`ALTER TABLE … RENAME TO`, statements of that table only), read back from
/// the last; `name` when none renames it.
fn former_name(versions: &[&crate::wire::DdlVersion], oid: u32, name: &str) -> String {
    let mut current = name.to_string();
    for st in versions
        .iter()
        .rev()
        .flat_map(|v| v.statements.iter().rev())
        .filter(|st| st.tables == [oid])
    {
        if let Some((from, to)) = ddlwatcher::retarget::table_rename(&st.sql) {
            if to == current {
                current = from;
            }
        }
    }
    current
}

/// Why the target refused a statement [`attempt`] ran.
#[derive(Debug)]
struct Refused {
    message: String,
    deadlock: bool,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs `sql` under a savepoint: `Ok(Err(why))` when it failed (rolled back to the
/// savepoint, the transaction goes on) — for what the target may be unable to create and
/// the load leaves out with a warning.
async fn attempt(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
) -> Result<Result<(), Refused>, ApplyError> {
    tx.batch_execute("savepoint pgteleport_attempt")
        .await
        .map_err(pg("savepoint"))?;
    let (outcome, end) = match tx.batch_execute(sql).await {
        Ok(()) => (Ok(()), "release savepoint pgteleport_attempt"),
        Err(e) => (
            Err(Refused {
                message: db::describe(&e),
                deadlock: e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED),
            }),
            "rollback to savepoint pgteleport_attempt",
        ),
    };
    tx.batch_execute(end).await.map_err(pg("savepoint"))?;
    Ok(outcome)
}
