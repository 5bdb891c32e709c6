//! The diff between two catalog snapshots, as the DDL that turns the target from the first
//! into the second. Objects are matched by OID (tables, types) and attribute number
//! (columns), so renames come out as renames, not as drop + create.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::{
    qualified, quote_ident, quote_literal, Column, Partition, Table, TypeDef, TypeKind,
};
use crate::ddl::{self, type_sql, SchemaMap};

/// A snapshot of the replicated part of the source catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub tables: Vec<Table>,
    pub types: Vec<TypeDef>,
    #[serde(default)]
    pub functions: Vec<crate::catalog::Function>,
    #[serde(default)]
    pub views: Vec<crate::catalog::View>,
    /// Sequences not owned by an identity column (those come with their table).
    #[serde(default)]
    pub sequences: Vec<crate::catalog::Sequence>,
    /// Collations of user schemas that the tables' columns use.
    #[serde(default)]
    pub collations: Vec<crate::catalog::Collation>,
}

impl Catalog {
    /// The distinct schemas of the tables.
    pub fn schemas(&self) -> Vec<String> {
        schemas_of(&self.tables)
    }

    /// The sequences of other schemas that the tables' defaults draw from, as (schema,
    /// name): their positions follow the source's like those of the replicated schemas.
    pub fn sequences_outside(&self) -> Vec<(String, String)> {
        let schemas = self.schemas();
        self.sequences
            .iter()
            .filter(|q| !schemas.contains(&q.schema))
            .map(|q| (q.schema.clone(), q.name.clone()))
            .collect()
    }
}

fn schemas_of(tables: &[Table]) -> Vec<String> {
    tables
        .iter()
        .map(|t| t.schema.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// One DDL statement for the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub sql: String,
    /// False for statements PostgreSQL refuses to run, or whose result cannot be used,
    /// inside the transaction block of a batch (`ALTER TYPE … ADD VALUE`): they are run
    /// in their own transaction first, and are written to be repeatable.
    pub transactional: bool,
    /// Constraint additions: recorded as a version of their own after the rows of new
    /// tables are queued, so a foreign key never meets a parent whose rows are still on
    /// their way.
    #[serde(default)]
    pub after_rows: bool,
    /// The source OIDs of the tables the statement changes (none for other objects).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<u32>,
    /// Set by the source instance as it sends the statement: one of `tables` no longer
    /// exists on the source. Its rows are not sent any more (they cannot be described), so
    /// the target's rows of it are stale and may not take the change (a key over rows
    /// whose duplicates the source deleted, NOT NULL over rows it updated): the target
    /// leaves the statement out if it fails — a later version drops the table.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub table_dropped_since: bool,
    /// The target table (schema, name) whose rows the statement deletes — a partition's
    /// range, when the partition was detached or dropped. An initial load whose snapshot
    /// saw the version's transaction copied the table without those rows and with any
    /// that came back since (the partition attached again, another one for its range):
    /// the target leaves such a statement out for that table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes_rows_of: Option<(String, String)>,
}

impl Statement {
    fn tx(sql: String) -> Self {
        Self {
            sql,
            transactional: true,
            after_rows: false,
            tables: Vec::new(),
            table_dropped_since: false,
            deletes_rows_of: None,
        }
    }

    /// A statement that changes table `oid` (of the source).
    fn on(oid: u32, sql: String) -> Self {
        Self {
            tables: vec![oid],
            ..Self::tx(sql)
        }
    }
}

/// Marks the statements of `out` as changing table `oid` (of the source).
fn changing(out: &mut [Statement], oid: u32) {
    for s in out {
        s.tables.push(oid);
    }
}

/// The name a dropped object is moved to while a new one takes its name: `name__dropped_OID`,
/// its name part shortened to fit PostgreSQL's 63 bytes.
fn away_name(name: &str, oid: u32) -> String {
    moved_name(name, "dropped", oid)
}

/// `name__WHY_OID`, its name part shortened to fit PostgreSQL's 63 bytes: a name no object
/// of the source has (a transient one, or one on its way to be dropped).
fn moved_name(name: &str, why: &str, oid: u32) -> String {
    let suffix = format!("__{why}_{oid}");
    let mut keep = name.len().min(63 - suffix.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &name[..keep])
}

/// The keyword ALTER and DROP take for a type: `domain` or `type`.
fn type_keyword(kind: &TypeKind) -> &'static str {
    if matches!(kind, TypeKind::Domain { .. }) {
        "domain"
    } else {
        "type"
    }
}

/// The leaf partitions of a partitioned table in both catalogs that `new` no longer has:
/// (the table in `old`, the partition).
pub fn partitions_gone<'a>(old: &'a Catalog, new: &Catalog) -> Vec<(&'a Table, &'a Partition)> {
    let now: BTreeMap<u32, &Table> = new.tables.iter().map(|t| (t.oid, t)).collect();
    old.tables
        .iter()
        .filter_map(|o| Some((o, now.get(&o.oid)?)))
        .flat_map(|(o, n)| {
            o.partitions
                .iter()
                .filter(|p| !n.partitions.iter().any(|q| q.oid == p.oid))
                .map(move |p| (o, p))
        })
        .collect()
}

/// `DELETE`s of the rows of partitions gone (see [`partitions_gone`]) from their
/// partitioned table on the target, by the partition's constraint.
fn partition_deletes(old: &Catalog, new: &Catalog, map: &SchemaMap) -> Vec<Statement> {
    partitions_gone(old, new)
        .into_iter()
        .map(|(t, p)| {
            let (schema, name) = map.table_parts(&t.schema, &t.name);
            Statement {
                deletes_rows_of: Some((schema.to_string(), name.to_string())),
                ..Statement::on(
                    t.oid,
                    format!(
                        "delete from {} where {}",
                        map.table(&t.schema, &t.name),
                        p.constraint
                    ),
                )
            }
        })
        .collect()
}

/// The statements that make a target holding `old` hold `new`.
pub fn diff(old: &Catalog, new: &Catalog, map: &SchemaMap) -> Vec<Statement> {
    let mut out = Vec::new();
    let old_types: BTreeMap<u32, &TypeDef> = old.types.iter().map(|t| (t.oid, t)).collect();
    let new_types: BTreeMap<u32, &TypeDef> = new.types.iter().map(|t| (t.oid, t)).collect();
    let old_tables: BTreeMap<u32, &Table> = old.tables.iter().map(|t| (t.oid, t)).collect();
    let new_tables: BTreeMap<u32, &Table> = new.tables.iter().map(|t| (t.oid, t)).collect();
    let old_seq: BTreeMap<u32, &crate::catalog::Sequence> =
        old.sequences.iter().map(|q| (q.oid, q)).collect();
    let new_seq: BTreeMap<u32, &crate::catalog::Sequence> =
        new.sequences.iter().map(|q| (q.oid, q)).collect();

    // Partitions detached or dropped take their rows out of the partitioned table: first,
    // while the target still has the old shape that the old constraint names.
    out.extend(partition_deletes(old, new, map));

    // Schemas of new objects.
    let known: BTreeSet<&str> = old
        .tables
        .iter()
        .map(|t| t.schema.as_str())
        .chain(old.types.iter().map(|t| t.schema.as_str()))
        .chain(old.collations.iter().map(|c| c.schema.as_str()))
        .chain(old.functions.iter().map(|f| f.schema.as_str()))
        .chain(old.sequences.iter().map(|q| q.schema.as_str()))
        .collect();
    let mut schemas = BTreeSet::new();
    for s in new
        .tables
        .iter()
        .map(|t| &t.schema)
        .chain(new.types.iter().map(|t| &t.schema))
        .chain(new.collations.iter().map(|c| &c.schema))
        .chain(new.functions.iter().map(|f| &f.schema))
        .chain(new.sequences.iter().map(|q| &q.schema))
    {
        if !known.contains(s.as_str()) {
            schemas.insert(map.map(s).to_string());
        }
    }
    for s in schemas {
        out.push(Statement::tx(format!(
            "create schema if not exists {}",
            quote_ident(&s)
        )));
    }

    // A dropped object whose name a new one takes (dropped and created again between two
    // diffs) is renamed out of the way first and dropped under that name at the end: the
    // old one may still be in use on the target until later statements change its users.
    let mut renamed_away: BTreeMap<u32, String> = BTreeMap::new();
    for o in &old.types {
        let taken = new
            .types
            .iter()
            .any(|t| t.oid != o.oid && t.schema == o.schema && t.name == o.name);
        if taken && !new_types.contains_key(&o.oid) && o.kind != TypeKind::External {
            let away = away_name(&o.name, o.oid);
            out.push(Statement::tx(format!(
                "alter {} {} rename to {}",
                type_keyword(&o.kind),
                qualified(map.map(&o.schema), &o.name),
                quote_ident(&away)
            )));
            renamed_away.insert(o.oid, away);
        }
    }
    for o in &old.sequences {
        let taken = new
            .sequences
            .iter()
            .any(|q| q.oid != o.oid && q.schema == o.schema && q.name == o.name);
        if taken && !new_seq.contains_key(&o.oid) {
            let away = away_name(&o.name, o.oid);
            out.push(Statement::tx(format!(
                "alter sequence {} rename to {}",
                qualified(map.map(&o.schema), &o.name),
                quote_ident(&away)
            )));
            renamed_away.insert(o.oid, away);
        }
    }

    // Collations columns use: new ones, renames (PostgreSQL cannot change a collation's
    // locale; a new one comes with a new OID). One no column uses any more stays on the
    // target, where other columns may use it.
    let old_coll: BTreeMap<u32, &crate::catalog::Collation> =
        old.collations.iter().map(|c| (c.oid, c)).collect();
    for c in &new.collations {
        match old_coll.get(&c.oid) {
            None => out.push(Statement::tx(c.create_sql(map))),
            Some(o) if o.name != c.name || o.schema != c.schema => {
                out.push(Statement::tx(format!(
                    "alter collation {} rename to {}",
                    qualified(map.map(&o.schema), &o.name),
                    quote_ident(&c.name)
                )))
            }
            Some(_) => {}
        }
    }

    // Types: new ones (in dependency order), renames, new enum labels.
    for t in &new.types {
        match old_types.get(&t.oid) {
            None => {
                if let Some(sql) = ddl::create_type(t, map) {
                    out.push(Statement::tx(sql));
                }
            }
            Some(o) => {
                if o.name != t.name || o.schema != t.schema {
                    out.push(Statement::tx(format!(
                        "alter type {} rename to {}",
                        qualified(map.map(&o.schema), &o.name),
                        quote_ident(&t.name)
                    )));
                }
                let name = qualified(map.map(&t.schema), &t.name);
                match (&o.kind, &t.kind) {
                    (TypeKind::Composite(before), TypeKind::Composite(after)) => {
                        out.extend(attribute_changes(&name, before, after, map));
                    }
                    (TypeKind::Domain { .. }, TypeKind::Domain { .. }) => {
                        out.extend(
                            domain_changes(&name, &o.kind, &t.kind)
                                .into_iter()
                                .map(Statement::tx),
                        );
                    }
                    (TypeKind::Enum(before), TypeKind::Enum(after)) => {
                        let renamed = enum_renames(before, after);
                        for (from, to) in &renamed {
                            out.push(Statement::tx(format!(
                                "alter type {name} rename value {} to {}",
                                quote_literal(from),
                                quote_literal(to)
                            )));
                        }
                        for (i, label) in after.iter().enumerate() {
                            if before.contains(label) || renamed.iter().any(|(_, to)| to == label) {
                                continue;
                            }
                            // Place it where the source has it: after its predecessor
                            // (every label before it in `after` is on the target when
                            // this runs, the predecessor at place i - 1), or before the
                            // next one.
                            let place = match i.checked_sub(1) {
                                Some(p) => Some(ddl::LabelPlace {
                                    after: true,
                                    neighbour: &after[p],
                                    offset: p,
                                }),
                                None if after.len() > 1 => Some(ddl::LabelPlace {
                                    after: false,
                                    neighbour: &after[1],
                                    offset: 0,
                                }),
                                None => None,
                            };
                            out.push(Statement {
                                transactional: false,
                                ..Statement::tx(ddl::add_enum_label(&name, label, place))
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    // Sequences before tables (defaults draw from them).
    for q in &new.sequences {
        let name = qualified(map.map(&q.schema), &q.name);
        match old_seq.get(&q.oid) {
            None => out.push(Statement::tx(ddl::create_sequence(q, map))),
            Some(o) => {
                if o.name != q.name {
                    out.push(Statement::tx(format!(
                        "alter sequence {} rename to {}",
                        qualified(map.map(&o.schema), &o.name),
                        quote_ident(&q.name)
                    )));
                }
                if o.options() != q.options() {
                    out.push(Statement::tx(format!(
                        "alter sequence {name} {}",
                        q.options()
                    )));
                }
            }
        }
    }

    // Functions (tables' defaults and indexes may call them): new or changed ones are
    // created or replaced; a renamed or re-signatured one is dropped and created.
    let old_fn: BTreeMap<u32, &crate::catalog::Function> =
        old.functions.iter().map(|f| (f.oid, f)).collect();
    let new_fn: BTreeMap<u32, &crate::catalog::Function> =
        new.functions.iter().map(|f| (f.oid, f)).collect();
    for f in &new.functions {
        match old_fn.get(&f.oid) {
            Some(o) if o.definition == f.definition => {}
            Some(o)
                if o.name != f.name
                    || o.schema != f.schema
                    || o.identity_args != f.identity_args =>
            {
                out.push(Statement::tx(o.drop_sql(map)));
                out.push(Statement::tx(f.definition.clone()));
            }
            _ => out.push(Statement::tx(f.definition.clone())),
        }
    }

    // Constraints dropped or changed on surviving tables go first (under the tables' names
    // before any rename): a foreign key may point at a table dropped below, or at a column
    // about to change. Changed and new ones are added after every new table exists.
    let mut add_constraints = Vec::new();
    for t in &new.tables {
        let (start, start_added) = (out.len(), add_constraints.len());
        let surviving = old_tables.get(&t.oid);
        let before: BTreeMap<&str, &crate::catalog::Constraint> = surviving
            .map(|o| o.constraints.iter().map(|c| (c.name.as_str(), c)).collect())
            .unwrap_or_default();
        let after: BTreeMap<&str, &crate::catalog::Constraint> =
            t.constraints.iter().map(|c| (c.name.as_str(), c)).collect();
        // Renamed: one gone and one new of the same kind and definition — renamed on the
        // target too, not dropped and added (a unique key's index built again, a foreign
        // key checked again over the whole table).
        let renamed = renames(&before, &after, |b, a| {
            b.kind == a.kind && (b.definition == a.definition || same_object(&b.object, &a.object))
        });
        let changed = |b: &crate::catalog::Constraint, a: &crate::catalog::Constraint| {
            redefined((&b.definition, &b.object), (&a.definition, &a.object))
        };
        if let Some(o) = surviving {
            let old_name = map.table(&o.schema, &o.name);
            for (n, c) in &before {
                if let Some((_, to)) = renamed.iter().find(|(from, _)| from == n) {
                    out.push(Statement::tx(format!(
                        "alter table {old_name} rename constraint {} to {}",
                        quote_ident(n),
                        quote_ident(to)
                    )));
                } else if after.get(n).is_none_or(|a| changed(c, a)) {
                    out.push(Statement::tx(format!(
                        "alter table {old_name} drop constraint if exists {}",
                        quote_ident(n)
                    )));
                }
            }
        }
        for (n, c) in &after {
            if renamed.iter().any(|(_, to)| to == n) {
                continue;
            }
            if before.get(n).is_none_or(|b| changed(b, c)) {
                add_constraints.push(Statement::tx(ddl::add_constraint(t, c, map)));
            }
        }
        changing(&mut out[start..], t.oid);
        changing(&mut add_constraints[start_added..], t.oid);
    }

    // Dropped tables next, in one statement (one may reference another): a new or renamed
    // table may take a dropped one's name, and a new index its index's name. Foreign keys
    // of surviving tables that pointed at them went above (CASCADE is not used).
    // The statement names the tables it drops (their source OIDs): a statement of no
    // table is one about types and other objects, which an initial load may take ahead.
    let (oids, dropped): (Vec<u32>, Vec<String>) = old
        .tables
        .iter()
        .filter(|o| !new_tables.contains_key(&o.oid))
        .map(|o| (o.oid, map.table(&o.schema, &o.name)))
        .unzip();
    if !dropped.is_empty() {
        out.push(Statement {
            tables: oids,
            ..Statement::tx(format!("drop table if exists {}", dropped.join(", ")))
        });
    }

    // Table renames, so later statements can name the table by its new name. A table
    // whose name another one takes (names swapped through a third) is renamed out of the
    // way first.
    let mut moving: BTreeMap<u32, String> = BTreeMap::new();
    for t in &new.tables {
        let Some(o) = old_tables.get(&t.oid) else {
            continue;
        };
        let before = map.table_parts(&o.schema, &o.name);
        let taken = new.tables.iter().any(|n| {
            n.oid != o.oid
                && old_tables.contains_key(&n.oid)
                && map.table_parts(&n.schema, &n.name) == before
        });
        if taken && map.table_parts(&t.schema, &t.name) != before {
            let away = moved_name(before.1, "moving", o.oid);
            out.push(Statement::tx(format!(
                "alter table {} rename to {}",
                qualified(before.0, before.1),
                quote_ident(&away)
            )));
            moving.insert(o.oid, away);
        }
    }
    for t in &new.tables {
        if let Some(o) = old_tables.get(&t.oid) {
            // A table the target knows under another name (rename_tables) takes the
            // destination of its new name: the source's new name unless that is mapped too.
            let (before, after) = (
                map.table_parts(&o.schema, &o.name),
                map.table_parts(&t.schema, &t.name),
            );
            let from = moving.get(&o.oid).map_or(before.1, |s| s.as_str());
            if from != after.1 {
                out.push(Statement::on(
                    t.oid,
                    format!(
                        "alter table {} rename to {}",
                        qualified(before.0, from),
                        quote_ident(after.1)
                    ),
                ));
            }
        }
    }

    // New tables, with their key and indexes (no data yet: the copy of a new table's
    // existing rows follows through the initial load path).
    for t in &new.tables {
        if old_tables.contains_key(&t.oid) {
            continue;
        }
        let start = out.len();
        for seq in ddl::create_sequences(t, map) {
            out.push(Statement::tx(seq));
        }
        out.push(Statement::tx(ddl::create_table(t, map)));
        if let Some(pk) = ddl::primary_key(t, map) {
            out.push(Statement::tx(pk));
        }
        for i in &t.indexes {
            if let Some(sql) = ddl::create_index(t, i, map) {
                out.push(Statement::tx(sql));
            }
        }
        changing(&mut out[start..], t.oid);
    }

    // Column changes of surviving tables.
    let mut dropped_columns = Vec::new();
    for t in &new.tables {
        let Some(o) = old_tables.get(&t.oid) else {
            continue;
        };
        let start = out.len();
        let name = map.table(&t.schema, &t.name);
        let before: BTreeMap<i16, &Column> = o.columns.iter().map(|c| (c.attnum, c)).collect();
        let after: BTreeMap<i16, &Column> = t.columns.iter().map(|c| (c.attnum, c)).collect();
        let current = columns_out_of_the_way(&name, &before, &after, &mut out);
        for (n, c) in &after {
            match before.get(n) {
                None => out.push(Statement::tx(format!(
                    "alter table {name} add column {}",
                    ddl::column_sql(c, map)
                ))),
                Some(b) => {
                    if current[n] != c.name {
                        out.push(Statement::tx(format!(
                            "alter table {name} rename column {} to {}",
                            quote_ident(&current[n]),
                            quote_ident(&c.name)
                        )));
                    }
                    let col = quote_ident(&c.name);
                    // A generated column made plain (its values kept).
                    if b.generated && !c.generated {
                        out.push(Statement::tx(format!(
                            "alter table {name} alter column {col} drop expression"
                        )));
                    }
                    let (bt, ct) = (type_sql(&b.type_ref, map), type_sql(&c.type_ref, map));
                    // The type, then the collation in a statement of its own: the parser that
                    // re-targets statements prints `COLLATE` after `USING`, where it would
                    // belong to the USING expression instead of the column. A generated
                    // column takes no USING: it is computed again.
                    let using = if c.generated {
                        String::new()
                    } else {
                        format!(" using {col}::{ct}")
                    };
                    let collation_changed = b.collation != c.collation;
                    if bt != ct {
                        out.push(Statement::tx(format!(
                            "alter table {name} alter column {col} type {ct}{using}"
                        )));
                    }
                    if collation_changed || bt != ct && c.collation.is_some() {
                        out.push(Statement::tx(format!(
                            "alter table {name} alter column {col} type {ct}{}",
                            ddl::collate_clause(c)
                        )));
                    }
                    // Identity dropped, or added to the column (BY DEFAULT on the target, as
                    // for every identity column there: the applier writes the source's
                    // values; a switch between ALWAYS and BY DEFAULT changes nothing there).
                    if b.identity.is_some() && c.identity.is_none() {
                        out.push(Statement::tx(format!(
                            "alter table {name} alter column {col} drop identity if exists"
                        )));
                    }
                    // A generated column's expression is no default.
                    let default_before = if b.generated { &None } else { &b.expression };
                    if b.identity.is_none() && c.identity.is_some() {
                        if default_before.is_some() {
                            out.push(Statement::tx(format!(
                                "alter table {name} alter column {col} drop default"
                            )));
                        }
                        out.push(Statement::tx(format!(
                            "alter table {name} alter column {col} add generated by default as identity"
                        )));
                    }
                    if *default_before != c.expression && !c.generated && c.identity.is_none() {
                        out.push(Statement::tx(match &c.expression {
                            Some(e) => {
                                format!("alter table {name} alter column {col} set default {e}")
                            }
                            None => format!("alter table {name} alter column {col} drop default"),
                        }));
                    }
                    if b.not_null != c.not_null {
                        out.push(Statement::tx(format!(
                            "alter table {name} alter column {col} {} not null",
                            if c.not_null { "set" } else { "drop" }
                        )));
                    }
                }
            }
        }
        for n in before.keys() {
            if !after.contains_key(n) {
                dropped_columns.push(Statement::on(
                    t.oid,
                    format!(
                        "alter table {name} drop column if exists {}",
                        quote_ident(&current[n])
                    ),
                ));
            }
        }
        // Primary key. Its columns compared by number: a key column renamed (above) takes
        // the key with it — dropping and adding the key would rebuild its index for nothing,
        // and drop a constraint by a name the target's may not have.
        let renamed = |cols: &Option<Vec<String>>| {
            cols.as_ref().map(|cols| {
                cols.iter()
                    .map(|c| {
                        o.columns
                            .iter()
                            .find(|b| &b.name == c)
                            .and_then(|b| after.get(&b.attnum))
                            .map_or_else(|| c.clone(), |a| a.name.clone())
                    })
                    .collect::<Vec<_>>()
            })
        };
        if renamed(&o.primary_key) != t.primary_key
            || o.primary_key_deferrable != t.primary_key_deferrable
        {
            if o.primary_key.is_some() {
                // Whatever its name on the target: older targets have the default one.
                out.push(Statement::tx(ddl::drop_primary_key(t, map)));
            }
            if let Some(pk) = ddl::primary_key(t, map) {
                out.push(Statement::tx(pk));
            }
        } else if let (Some(_), Some(before), Some(after)) = (
            &t.primary_key,
            &o.primary_key_name,
            ddl::primary_key_name(t, map),
        ) {
            if before != after {
                // `ALTER TABLE … RENAME CONSTRAINT` or `ALTER INDEX … RENAME` of the key.
                out.push(Statement::tx(ddl::rename_primary_key(t, map, after)));
            }
        }
        // Indexes by name.
        let old_idx: BTreeMap<&str, _> = o.indexes.iter().map(|i| (i.name.as_str(), i)).collect();
        let new_idx: BTreeMap<&str, _> = t.indexes.iter().map(|i| (i.name.as_str(), i)).collect();
        // Renamed: the same definition but for the name — renamed, not built again.
        let renamed = renames(&old_idx, &new_idx, |b, a| {
            same_object(&b.object, &a.object)
                || b.unique == a.unique
                    && b.method == a.method
                    && without_name(&b.definition, &b.name) == without_name(&a.definition, &a.name)
        });
        let changed = |b: &crate::catalog::Index, a: &crate::catalog::Index| {
            redefined((&b.definition, &b.object), (&a.definition, &a.object))
        };
        let schema = map.table_parts(&t.schema, &t.name).0;
        for (from, to) in &renamed {
            out.push(Statement::tx(format!(
                "alter index {} rename to {}",
                qualified(schema, from),
                quote_ident(to)
            )));
        }
        for (n, i) in &old_idx {
            if renamed.iter().any(|(from, _)| from == n) {
                continue;
            }
            if new_idx.get(n).is_none_or(|ni| changed(i, ni)) {
                out.push(Statement::tx(format!(
                    "drop index if exists {}",
                    qualified(map.table_parts(&t.schema, &t.name).0, n)
                )));
            }
        }
        for (n, i) in &new_idx {
            if renamed.iter().any(|(_, to)| to == n) {
                continue;
            }
            if old_idx.get(n).is_none_or(|oi| changed(oi, i)) {
                if let Some(sql) = ddl::create_index(t, i, map) {
                    out.push(Statement::tx(sql));
                }
            }
        }
        changing(&mut out[start..], t.oid);
    }
    out.extend(dropped_columns);
    out.extend(add_constraints.into_iter().map(|mut s: Statement| {
        s.after_rows = true;
        s
    }));

    // Dropped types, functions and sequences (under the name they were moved to, if any).
    for o in old.types.iter().rev() {
        if !new_types.contains_key(&o.oid) && o.kind != TypeKind::External {
            let name = renamed_away.get(&o.oid).unwrap_or(&o.name);
            out.push(Statement::tx(format!(
                "drop {} if exists {}",
                type_keyword(&o.kind),
                qualified(map.map(&o.schema), name)
            )));
        }
    }
    for o in &old.functions {
        // A function dropped and created again with the same signature was replaced above.
        // One of a schema that is not replicated (it came because a table called it) stays
        // on the target, where other objects may call it.
        let recreated = new.functions.iter().any(|f| {
            f.schema == o.schema && f.name == o.name && f.identity_args == o.identity_args
        });
        if !new_fn.contains_key(&o.oid) && !recreated && map.replicated.contains(&o.schema) {
            out.push(Statement::tx(o.drop_sql(map)));
        }
    }
    for o in &old.sequences {
        // One of a schema that is not replicated (a table's default drew from it) stays.
        if !new_seq.contains_key(&o.oid) && map.replicated.contains(&o.schema) {
            let name = renamed_away.get(&o.oid).unwrap_or(&o.name);
            out.push(Statement::tx(format!(
                "drop sequence if exists {}",
                qualified(map.map(&o.schema), name)
            )));
        }
    }
    // Views depend on the columns they read: when anything changes, every view is dropped
    // first and created again last (in creation order), from the new definitions.
    if !out.is_empty() || old.views != new.views {
        let drops: Vec<Statement> = old
            .views
            .iter()
            .rev()
            .map(|v| {
                Statement::tx(format!(
                    "drop view if exists {}",
                    qualified(map.map(&v.schema), &v.name)
                ))
            })
            .collect();
        out.splice(0..0, drops);
        for v in &new.views {
            out.push(Statement::tx(ddl::create_view(v, map, false)));
        }
    }
    // Expressions inside (defaults, index expressions, checks) may name the source schema:
    // the parser renames those references.
    for st in &mut out {
        st.sql = crate::retarget::if_needed(std::mem::take(&mut st.sql), map);
    }
    out
}

/// Enum labels renamed from `before` to `after` (both in sort order). PostgreSQL never drops
/// a label, and a renamed one keeps its place: each label gone stands where a new one does,
/// between the same labels both lists hold, and they pair in order there. (A gap that
/// also gained labels — added beside a rename within one diffing interval — pairs its
/// first new ones.)
fn enum_renames(before: &[String], after: &[String]) -> Vec<(String, String)> {
    let gaps = |labels: &[String], other: &[String]| {
        let mut out: Vec<Vec<String>> = vec![Vec::new()];
        for l in labels {
            if other.contains(l) {
                out.push(Vec::new());
            } else if let Some(gap) = out.last_mut() {
                gap.push(l.clone());
            }
        }
        out
    };
    gaps(before, after)
        .into_iter()
        .zip(gaps(after, before))
        .flat_map(|(gone, new)| gone.into_iter().zip(new))
        .collect()
}

/// The statements that turn composite type `name`'s attributes `before` into `after`:
/// dropped, renamed (by attribute number), retyped (which PostgreSQL allows only while no
/// column uses the type), added. Snapshots taken before attribute numbers were recorded
/// compare by name.
fn attribute_changes(
    name: &str,
    before: &[crate::catalog::Attribute],
    after: &[crate::catalog::Attribute],
    map: &SchemaMap,
) -> Vec<Statement> {
    let numbered = before.iter().chain(after).all(|a| a.attnum.is_some());
    let same = |b: &crate::catalog::Attribute, a: &crate::catalog::Attribute| {
        if numbered {
            b.attnum == a.attnum
        } else {
            b.name == a.name
        }
    };
    let mut out = Vec::new();
    for b in before.iter().filter(|b| !after.iter().any(|a| same(b, a))) {
        out.push(format!(
            "alter type {name} drop attribute if exists {}",
            quote_ident(&b.name)
        ));
    }
    for a in after {
        let Some(b) = before.iter().find(|b| same(b, a)) else {
            out.push(format!(
                "alter type {name} add attribute {} {}{}",
                quote_ident(&a.name),
                type_sql(&a.type_ref, map),
                ddl::collate(&a.collation)
            ));
            continue;
        };
        if b.name != a.name {
            out.push(format!(
                "alter type {name} rename attribute {} to {}",
                quote_ident(&b.name),
                quote_ident(&a.name)
            ));
        }
        let (bt, at) = (type_sql(&b.type_ref, map), type_sql(&a.type_ref, map));
        // Without COLLATE, the type's own collation (a collation dropped).
        let alter = format!(
            "alter type {name} alter attribute {} type {at}{}",
            quote_ident(&a.name),
            ddl::collate(&a.collation)
        );
        if bt != at {
            out.push(alter);
        } else if b.collation != a.collation {
            // The collation alone: PostgreSQL allows it only while no column uses the type
            // (0A000 otherwise), as on the source. Snapshots taken before attributes'
            // collations were recorded say none: on a type columns use, the target keeps
            // the one it has. (Re-targeted here: the parser leaves a DO block's body alone.)
            out.push(ddl::do_block(&format!(
                "begin {}; exception when feature_not_supported then null; end",
                crate::retarget::if_needed(alter, map)
            )));
        }
    }
    out.into_iter().map(Statement::tx).collect()
}

/// The statements that turn domain `name`'s NOT NULL, default and checks as `before` has
/// them into `after`'s (nothing unless both are domains).
fn domain_changes(name: &str, before: &TypeKind, after: &TypeKind) -> Vec<String> {
    let (
        TypeKind::Domain {
            not_null: not_null_before,
            default: default_before,
            checks: checks_before,
            ..
        },
        TypeKind::Domain {
            not_null,
            default,
            checks,
            ..
        },
    ) = (before, after)
    else {
        return Vec::new();
    };
    let mut out: Vec<String> = checks_before
        .iter()
        .filter(|c| !checks.contains(c))
        .map(|c| ddl::drop_domain_check(name, c))
        .collect();
    if default_before != default {
        out.push(match default {
            Some(d) => format!("alter domain {name} set default {d}"),
            None => format!("alter domain {name} drop default"),
        });
    }
    if not_null_before != not_null {
        out.push(format!(
            "alter domain {name} {} not null",
            if *not_null { "set" } else { "drop" }
        ));
    }
    for c in checks.iter().filter(|c| !checks_before.contains(c)) {
        out.push(format!("alter domain {name} add {c}"));
    }
    out
}

/// The columns of table `name` (by attribute number, `before` and `after` a change) renamed
/// or dropped whose name another column takes — names swapped, a column renamed into a
/// dropped one's name or added under it — renamed out of the way first (statements into
/// `out`); each renamed column is then renamed from there, each dropped one dropped there.
/// Returns the name each column of `before` has after that.
fn columns_out_of_the_way(
    name: &str,
    before: &BTreeMap<i16, &Column>,
    after: &BTreeMap<i16, &Column>,
    out: &mut Vec<Statement>,
) -> BTreeMap<i16, String> {
    let mut current: BTreeMap<i16, String> =
        before.iter().map(|(n, b)| (*n, b.name.clone())).collect();
    for (n, b) in before {
        let keeps = after.get(n).is_some_and(|c| c.name == b.name);
        if keeps || !after.iter().any(|(m, c)| m != n && c.name == b.name) {
            continue;
        }
        let mut away = moved_name(&b.name, "moving", *n as u32);
        while before
            .values()
            .chain(after.values())
            .any(|c| c.name == away)
        {
            away.push('_');
        }
        out.push(Statement::tx(format!(
            "alter table {name} rename column {} to {}",
            quote_ident(&b.name),
            quote_ident(&away)
        )));
        current.insert(*n, away);
    }
    current
}

/// Whether an index or constraint of two snapshots is the same catalog object in the same
/// state ([`crate::catalog::Constraint::object`]): its definition changed by renames only.
fn same_object(before: &Option<String>, after: &Option<String>) -> bool {
    before.is_some() && before == after
}

/// Whether an index or constraint of the same name in two snapshots (its definition and
/// [`crate::catalog::Constraint::object`]) must be made again: its definition changed, and
/// not by renames of the same object.
fn redefined(before: (&str, &Option<String>), after: (&str, &Option<String>)) -> bool {
    before.0 != after.0 && !same_object(before.1, after.1)
}

/// Objects renamed between two name-keyed maps: each one gone from `before` paired with the
/// first one new in `after` that `same` holds for, each used once.
fn renames<'a, T>(
    before: &BTreeMap<&'a str, &T>,
    after: &BTreeMap<&'a str, &T>,
    same: impl Fn(&T, &T) -> bool,
) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (from, b) in before.iter().filter(|(n, _)| !after.contains_key(*n)) {
        let to = after.iter().find(|(n, a)| {
            !before.contains_key(*n) && !out.iter().any(|(_, t)| t == *n) && same(b, a)
        });
        if let Some((to, _)) = to {
            out.push((from, to));
        }
    }
    out
}

/// An index's definition (`pg_get_indexdef`) without its own name; unchanged when the name
/// is not found where it belongs (the definitions then differ, and nothing is taken as a
/// rename).
fn without_name(definition: &str, name: &str) -> String {
    for spelled in [name.to_string(), quote_ident(name)] {
        let named = format!(" INDEX {spelled} ON ");
        if let Some(at) = definition.find(&named) {
            return format!(
                "{} INDEX ON {}",
                &definition[..at],
                &definition[at + named.len()..]
            );
        }
    }
    definition.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, TypeRef};

    fn col(attnum: i16, name: &str, t: &str) -> Column {
        Column {
            attnum,
            name: name.into(),
            type_name: t.into(),
            type_ref: TypeRef::Builtin(t.into()),
            not_null: false,
            generated: false,
            expression: None,
            identity: None,
            sequence: None,
            text_form: false,
            collation: None,
        }
    }

    fn table(oid: u32, name: &str, cols: Vec<Column>) -> Table {
        Table {
            oid,
            schema: "app".into(),
            name: name.into(),
            columns: cols,
            primary_key: Some(vec!["id".into()]),
            unique_key: None,
            primary_key_deferrable: None,
            primary_key_name: None,
            indexes: vec![],
            constraints: vec![],
            partitions: vec![],
        }
    }

    fn sqls(old: &Catalog, new: &Catalog) -> Vec<String> {
        let map = SchemaMap {
            apply_schema: Some("copy".into()),
            replicated: ["app".to_string()].into(),
            tables: Default::default(),
        };
        diff(old, new, &map).into_iter().map(|s| s.sql).collect()
    }

    #[test]
    fn enum_labels_renamed_keep_their_place() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pairs = |b: &[&str], a: &[&str]| {
            enum_renames(&l(b), &l(a))
                .into_iter()
                .map(|(x, y)| format!("{x}>{y}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(&["a", "b", "c"], &["a", "x", "c"]), ["b>x"]);
        assert_eq!(pairs(&["a", "b", "c"], &["y", "b", "z"]), ["a>y", "c>z"]);
        // Added only: no rename.
        assert!(pairs(&["a", "b"], &["a", "n", "b", "m"]).is_empty());
        // A rename beside a label added after it, in one interval.
        assert_eq!(pairs(&["a", "b"], &["a", "x", "n"]), ["b>x"]);
        assert!(pairs(&["a"], &["a"]).is_empty());
    }

    #[test]
    fn renamed_indexes_and_constraints_are_renamed() {
        let idx = |name: &str, def: &str| crate::catalog::Index {
            object: None,
            name: name.into(),
            unique: false,
            method: "btree".into(),
            columns: Some(vec!["v".into()]),
            definition: def.into(),
        };
        let check = |name: &str, def: &str| crate::catalog::Constraint {
            object: None,
            name: name.into(),
            kind: 'c',
            definition: def.into(),
        };
        let cat = |indexes: Vec<crate::catalog::Index>, constraints| Catalog {
            tables: vec![Table {
                indexes,
                constraints,
                ..table(1, "t", vec![col(1, "id", "int4"), col(2, "v", "int4")])
            }],
            ..Default::default()
        };
        let old = cat(
            vec![
                idx("t_v", "CREATE INDEX t_v ON app.t USING btree (v)"),
                idx(
                    "t_w",
                    "CREATE INDEX t_w ON app.t USING btree (v) WHERE (v > 0)",
                ),
            ],
            vec![
                check("t_v_check", "CHECK ((v > 0))"),
                check("t_v_small", "CHECK ((v < 10))"),
            ],
        );
        let new = cat(
            vec![
                idx("By V", "CREATE INDEX \"By V\" ON app.t USING btree (v)"),
                // Renamed and changed: built again.
                idx(
                    "t_w2",
                    "CREATE INDEX t_w2 ON app.t USING btree (v) WHERE (v > 1)",
                ),
            ],
            vec![
                check("t_v_positive", "CHECK ((v > 0))"),
                check("t_v_smaller", "CHECK ((v < 5))"),
            ],
        );
        assert_eq!(
            sqls(&old, &new),
            [
                "alter table \"copy\".\"t\" rename constraint \"t_v_check\" to \"t_v_positive\"",
                "alter table \"copy\".\"t\" drop constraint if exists \"t_v_small\"",
                "alter index \"copy\".\"t_v\" rename to \"By V\"",
                "drop index if exists \"copy\".\"t_w\"",
                "CREATE INDEX t_w2 ON copy.t USING btree (v) WHERE v > 1",
                "alter table \"copy\".\"t\" add constraint \"t_v_smaller\" CHECK ((v < 5))",
            ]
        );
    }

    #[test]
    fn indexes_and_constraints_of_renamed_columns_stay_unless_their_state_changed() {
        let idx = |name: &str, def: &str, object: &str| crate::catalog::Index {
            object: Some(object.into()),
            name: name.into(),
            unique: false,
            method: "btree".into(),
            columns: None,
            definition: def.into(),
        };
        let con = |name: &str, def: &str, object: &str| crate::catalog::Constraint {
            object: Some(object.into()),
            name: name.into(),
            kind: 'c',
            definition: def.into(),
        };
        let cat = |v: &str, indexes: Vec<crate::catalog::Index>, constraints| Catalog {
            tables: vec![Table {
                indexes,
                constraints,
                ..table(1, "t", vec![col(1, "id", "int4"), col(2, v, "int4")])
            }],
            ..Default::default()
        };
        let old = cat(
            "v",
            vec![
                idx("t_v", "CREATE INDEX t_v ON app.t USING btree (v)", "10 "),
                idx(
                    "t_l",
                    "CREATE INDEX t_l ON app.t USING btree (lower(v))",
                    "11 ",
                ),
            ],
            vec![
                con("t_v_check", "CHECK ((v > 0))", "20 true false false"),
                con(
                    "t_v_small",
                    "CHECK ((v < 10)) NOT VALID",
                    "21 false false false",
                ),
            ],
        );
        let new = cat(
            "w",
            vec![
                // The same index: the column's rename carries it along on the target too.
                idx("t_v", "CREATE INDEX t_v ON app.t USING btree (w)", "10 "),
                // The same, renamed as well.
                idx(
                    "t_lw",
                    "CREATE INDEX t_lw ON app.t USING btree (lower(w))",
                    "11 ",
                ),
            ],
            vec![
                con("t_v_check", "CHECK ((w > 0))", "20 true false false"),
                // Validated since: added again, validated.
                con("t_v_small", "CHECK ((w < 10))", "21 true false false"),
            ],
        );
        assert_eq!(
            sqls(&old, &new),
            [
                "alter table \"copy\".\"t\" drop constraint if exists \"t_v_small\"",
                "alter table \"copy\".\"t\" rename column \"v\" to \"w\"",
                "alter index \"copy\".\"t_l\" rename to \"t_lw\"",
                "alter table \"copy\".\"t\" add constraint \"t_v_small\" CHECK ((w < 10))",
            ]
        );
        // Snapshots from before `object` was recorded: compared by definition, as then.
        let strip = |mut c: Catalog| {
            for t in &mut c.tables {
                t.indexes.iter_mut().for_each(|i| i.object = None);
                t.constraints.iter_mut().for_each(|c| c.object = None);
            }
            c
        };
        assert!(sqls(&strip(old), &new)
            .iter()
            .any(|s| s == "drop index if exists \"copy\".\"t_v\""));
    }

    #[test]
    fn columns_whose_names_are_taken_move_out_of_the_way_first() {
        let cat = |cols: Vec<Column>| Catalog {
            tables: vec![table(1, "t", cols)],
            ..Default::default()
        };
        // a and b swapped; x dropped, y renamed to x; z dropped and added again.
        let old = cat(vec![
            col(1, "id", "int4"),
            col(2, "a", "int4"),
            col(3, "b", "int4"),
            col(4, "x", "int4"),
            col(5, "y", "int4"),
            col(6, "z", "int4"),
        ]);
        let new = cat(vec![
            col(1, "id", "int4"),
            col(2, "b", "int4"),
            col(3, "a", "int4"),
            col(5, "x", "int4"),
            col(7, "z", "int4"),
        ]);
        let t = "alter table \"copy\".\"t\"";
        assert_eq!(
            sqls(&old, &new),
            [
                format!("{t} rename column \"a\" to \"a__moving_2\""),
                format!("{t} rename column \"b\" to \"b__moving_3\""),
                format!("{t} rename column \"x\" to \"x__moving_4\""),
                format!("{t} rename column \"z\" to \"z__moving_6\""),
                format!("{t} rename column \"a__moving_2\" to \"b\""),
                format!("{t} rename column \"b__moving_3\" to \"a\""),
                format!("{t} rename column \"y\" to \"x\""),
                format!("{t} add column \"z\" int4"),
                format!("{t} drop column if exists \"x__moving_4\""),
                format!("{t} drop column if exists \"z__moving_6\""),
            ]
        );
    }

    #[test]
    fn partitions_gone_delete_their_rows_first() {
        let part = |oid: u32, name: &str, mood: &str| Partition {
            oid,
            schema: "app".into(),
            name: name.into(),
            constraint: format!("((m IS NOT NULL) AND (m = '{mood}'::app.mood))"),
        };
        let with = |parts: Vec<Partition>, cols: Vec<Column>| Catalog {
            tables: vec![Table {
                partitions: parts,
                ..table(1, "p", cols)
            }],
            ..Default::default()
        };
        let old = with(
            vec![part(10, "p_a", "a"), part(11, "p_b", "b")],
            vec![col(1, "id", "integer")],
        );
        // p_b detached or dropped, a column added in the same look.
        let new = with(
            vec![part(10, "p_a", "a"), part(12, "p_c", "c")],
            vec![col(1, "id", "integer"), col(2, "n", "integer")],
        );
        let out = sqls(&old, &new);
        assert_eq!(
            out[0], "DELETE FROM copy.p WHERE m IS NOT NULL AND m = 'b'::copy.mood",
            "{out:?}"
        );
        assert_eq!(out.len(), 2, "{out:?}");
        // The partitioned table dropped with its partitions: nothing to delete.
        let gone = Catalog::default();
        assert!(!sqls(&old, &gone).iter().any(|s| s.starts_with("DELETE")));
    }

    #[test]
    fn a_renamed_table_is_named_by_its_destination() {
        let catalog = |cols: Vec<Column>, indexes: Vec<crate::catalog::Index>| Catalog {
            tables: vec![
                Table {
                    indexes,
                    ..table(1, "orders", cols)
                },
                table(2, "lines", vec![col(1, "id", "integer")]),
            ],
            types: vec![],
            functions: vec![],
            views: vec![],
            sequences: vec![],
            collations: vec![],
        };
        let old = catalog(vec![col(1, "id", "integer")], vec![]);
        let index = crate::catalog::Index {
            object: None,
            name: "orders_note".into(),
            definition: "CREATE INDEX orders_note ON app.orders USING btree (note)".into(),
            unique: false,
            method: "btree".into(),
            columns: Some(vec!["note".into()]),
        };
        let new = catalog(
            vec![col(1, "id", "integer"), col(2, "note", "text")],
            vec![index],
        );
        let map = SchemaMap::default().with_renames(
            [(
                ("app".to_string(), "orders".to_string()),
                ("archive".to_string(), "orders_2026".to_string()),
            )]
            .into(),
        );
        let sqls: Vec<String> = diff(&old, &new, &map).into_iter().map(|s| s.sql).collect();
        assert_eq!(
            sqls,
            vec![
                // Printed back by the parser: the text names a renamed table's source name.
                "ALTER TABLE archive.orders_2026 ADD COLUMN note text",
                "CREATE INDEX orders_note ON archive.orders_2026 USING btree (note)",
            ]
        );
    }

    #[test]
    fn a_type_and_collation_change_is_two_statements_that_survive_retargeting() {
        let with = |d: Column, e: Column| {
            catalog(vec![table(1, "t", vec![col(1, "id", "integer"), d, e])])
        };
        let old = with(col(2, "d", "text"), col(3, "e", "text"));
        let new = with(
            Column {
                collation: Some(r#"pg_catalog."POSIX""#.into()),
                ..col(2, "d", "character varying(10)")
            },
            Column {
                collation: Some("app.ci".into()),
                ..col(3, "e", "text")
            },
        );
        assert_eq!(
            sqls(&old, &new),
            [
                r#"alter table "copy"."t" alter column "d" type character varying(10) using "d"::character varying(10)"#,
                r#"alter table "copy"."t" alter column "d" type character varying(10) collate pg_catalog."POSIX""#,
                // Names the source schema: re-targeted by the parser.
                "ALTER TABLE copy.t ALTER COLUMN e TYPE text COLLATE copy.ci",
            ]
        );
        // Back to the type's own collation: one statement without COLLATE.
        assert_eq!(
            sqls(
                &new,
                &with(col(2, "d", "character varying(10)"), col(3, "e", "text"))
            ),
            [
                r#"alter table "copy"."t" alter column "d" type character varying(10)"#,
                r#"alter table "copy"."t" alter column "e" type text"#,
            ]
        );
    }

    #[test]
    fn nothing_changed_gives_nothing() {
        let c = Catalog {
            tables: vec![table(1, "t", vec![col(1, "id", "integer")])],
            types: vec![],
            functions: vec![],
            views: vec![],
            sequences: vec![],
            collations: vec![],
        };
        assert!(sqls(&c, &c).is_empty());
    }

    #[test]
    fn columns_added_renamed_retyped_dropped() {
        let old = Catalog {
            tables: vec![table(
                1,
                "t",
                vec![
                    col(1, "id", "integer"),
                    col(2, "a", "integer"),
                    col(3, "gone", "text"),
                ],
            )],
            types: vec![],
            functions: vec![],
            views: vec![],
            sequences: vec![],
            collations: vec![],
        };
        let mut b = col(2, "b", "bigint");
        b.not_null = true;
        let new = Catalog {
            tables: vec![table(
                1,
                "t2",
                vec![
                    col(1, "id", "integer"),
                    b,
                    col(4, "c", "character varying(10)"),
                ],
            )],
            types: vec![],
            functions: vec![],
            views: vec![],
            sequences: vec![],
            collations: vec![],
        };
        assert_eq!(
            sqls(&old, &new),
            vec![
                "alter table \"copy\".\"t\" rename to \"t2\"",
                "alter table \"copy\".\"t2\" rename column \"a\" to \"b\"",
                "alter table \"copy\".\"t2\" alter column \"b\" type bigint using \"b\"::bigint",
                "alter table \"copy\".\"t2\" alter column \"b\" set not null",
                "alter table \"copy\".\"t2\" add column \"c\" character varying(10)",
                "alter table \"copy\".\"t2\" drop column if exists \"gone\"",
            ]
        );
        // Each names the table it changes (by its source OID), a new table's too, and a
        // dropped table's drop the table it drops (not a statement of no table, which an
        // initial load may take ahead of the stream).
        let mut new = new;
        new.tables
            .push(table(7, "n", vec![col(1, "id", "integer")]));
        let st = diff(&old, &new, &same_schema());
        assert!(st
            .iter()
            .all(|s| s.tables == [if s.sql.contains("\"n\"") { 7 } else { 1 }]));
        new.tables.clear();
        let st = diff(&old, &new, &same_schema());
        assert!(
            st.len() == 1 && st[0].sql.starts_with("drop table") && st[0].tables == [1],
            "{st:?}"
        );
    }

    #[test]
    fn a_key_column_renamed_keeps_the_key_and_a_moved_or_renamed_key_keeps_its_name() {
        let cat = |t: Table| Catalog {
            tables: vec![t],
            ..Default::default()
        };
        // Renamed: the key goes with the column (no drop and add, no index rebuilt).
        let old = cat(table(
            1,
            "t",
            vec![col(1, "id", "int4"), col(2, "v", "int4")],
        ));
        let new = cat(Table {
            primary_key: Some(vec!["k".into()]),
            ..table(1, "t", vec![col(1, "k", "int4"), col(2, "v", "int4")])
        });
        assert_eq!(
            sqls(&old, &new),
            ["alter table \"copy\".\"t\" rename column \"id\" to \"k\""]
        );
        // Moved to another column: the target's key dropped whatever its name there (older
        // targets have the default one), the new one added under the source's name.
        let old = cat(Table {
            primary_key_name: Some("t_old_pkey".into()),
            ..table(1, "t", vec![col(1, "id", "int4"), col(2, "v", "int4")])
        });
        let new = cat(Table {
            primary_key: Some(vec!["v".into()]),
            primary_key_name: Some("t_v_key".into()),
            ..table(1, "t", vec![col(1, "id", "int4"), col(2, "v", "int4")])
        });
        let out = sqls(&old, &new);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("do $pgteleport$ ") && out[0].ends_with(" $pgteleport$"));
        assert!(out[0].contains("'\"copy\".\"t\"'::pg_catalog.regclass and c.contype = 'p'"));
        assert!(out[0].contains("'alter table %s drop constraint %I'"));
        assert_eq!(
            out[1],
            "alter table \"copy\".\"t\" add constraint \"t_v_key\" primary key (\"v\")"
        );
        // Renamed: renamed on the target (whatever its name there), nothing rebuilt.
        let renamed = cat(Table {
            primary_key_name: Some("t_$pgteleport$'key".into()),
            ..new.tables[0].clone()
        });
        let out = sqls(&new, &renamed);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].starts_with("do $pgteleport_$ ") && out[0].ends_with(" $pgteleport_$"));
        assert!(out[0].contains("k <> 't_$pgteleport$''key'"), "{}", out[0]);
        assert!(sqls(&renamed, &renamed).is_empty());
    }

    #[test]
    fn new_and_dropped_tables_and_enum_values() {
        let mood = |labels: &[&str]| TypeDef {
            oid: 50,
            schema: "app".into(),
            name: "mood".into(),
            kind: TypeKind::Enum(labels.iter().map(|s| s.to_string()).collect()),
        };
        let old = Catalog {
            tables: vec![table(1, "old", vec![col(1, "id", "integer")])],
            types: vec![mood(&["sad", "happy"])],
            functions: vec![],
            views: vec![],
            sequences: vec![],
            collations: vec![],
        };
        let new = Catalog {
            tables: vec![table(2, "fresh", vec![col(1, "id", "integer")])],
            types: vec![mood(&["sad", "ok", "happy"])],
            functions: vec![],
            views: vec![],
            sequences: vec![],
            collations: vec![],
        };
        let map = SchemaMap {
            apply_schema: Some("copy".into()),
            replicated: ["app".to_string()].into(),
            tables: Default::default(),
        };
        let d = diff(&old, &new, &map);
        // After 'sad', found by name or else by its place (the first label).
        assert!(
            d[0].sql
                .contains("add value if not exists %L after %L', '\"copy\".\"mood\"', 'ok', n)")
                && d[0].sql.contains("e.enumlabel = 'sad'")
                && d[0].sql.contains("offset 0 limit 1"),
            "{}",
            d[0].sql
        );
        assert!(!d[0].transactional);
        let rest: Vec<&str> = d[1..].iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(
            rest,
            vec![
                "drop table if exists \"copy\".\"old\"",
                "create table \"copy\".\"fresh\" (\"id\" integer)",
                "alter table \"copy\".\"fresh\" add primary key (\"id\")",
            ]
        );
    }

    fn catalog(tables: Vec<Table>) -> Catalog {
        Catalog {
            tables,
            types: vec![],
            functions: vec![],
            views: vec![],
            sequences: vec![],
            collations: vec![],
        }
    }

    fn same_schema() -> SchemaMap {
        SchemaMap {
            apply_schema: None,
            replicated: ["app".to_string()].into(),
            tables: Default::default(),
        }
    }

    /// Dropped and created again between two diffs: the old table goes first, and a foreign
    /// key pointing at it before that (no CASCADE on the target).
    #[test]
    fn a_table_dropped_and_created_again_is_dropped_before_it_is_created() {
        let mut child = table(
            3,
            "child",
            vec![col(1, "id", "integer"), col(2, "n_id", "integer")],
        );
        child.constraints = vec![crate::catalog::Constraint {
            object: None,
            name: "child_n_fk".into(),
            kind: 'f',
            definition: "FOREIGN KEY (n_id) REFERENCES app.n(id)".into(),
        }];
        let old = catalog(vec![
            table(1, "n", vec![col(1, "id", "integer")]),
            child.clone(),
        ]);
        child.constraints.clear();
        let new = catalog(vec![table(2, "n", vec![col(1, "id", "integer")]), child]);
        let sql: Vec<String> = diff(&old, &new, &same_schema())
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(
            sql,
            vec![
                "alter table \"app\".\"child\" drop constraint if exists \"child_n_fk\"",
                "drop table if exists \"app\".\"n\"",
                "create table \"app\".\"n\" (\"id\" integer)",
                "alter table \"app\".\"n\" add primary key (\"id\")",
            ]
        );
    }

    /// A type and a sequence dropped and created again under their names: the old ones are
    /// moved out of the way, the new ones created, the old ones dropped at the end. A
    /// function dropped and created again with its signature is replaced, not dropped.
    #[test]
    fn types_sequences_and_functions_dropped_and_created_again_keep_the_new_ones() {
        let mood = |oid: u32, labels: &[&str]| TypeDef {
            oid,
            schema: "app".into(),
            name: "mood".into(),
            kind: TypeKind::Enum(labels.iter().map(|s| s.to_string()).collect()),
        };
        let seq = |oid: u32| crate::catalog::Sequence {
            oid,
            schema: "app".into(),
            name: "s".into(),
            data_type: "bigint".into(),
            start: 1,
            increment: 1,
            min: 1,
            max: i64::MAX,
            cache: 1,
            cycle: false,
            used_by: vec![],
        };
        let f = |oid: u32, body: &str| {
            crate::catalog::Function {
            oid,
            schema: "app".into(),
            name: "f".into(),
            identity_args: "x integer".into(),
            is_procedure: false,
            definition: format!("CREATE OR REPLACE FUNCTION app.f(x integer) RETURNS integer LANGUAGE sql AS $$select {body}$$"),
            used_by: vec![],
        }
        };
        let mut old = catalog(vec![]);
        old.types = vec![mood(50, &["a"])];
        old.sequences = vec![seq(60)];
        old.functions = vec![f(70, "x")];
        let mut new = catalog(vec![]);
        new.types = vec![mood(51, &["b", "c"])];
        new.sequences = vec![seq(61)];
        new.functions = vec![f(71, "x + 1")];
        let sql: Vec<String> = diff(&old, &new, &same_schema())
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(
            sql[0],
            "alter type \"app\".\"mood\" rename to \"mood__dropped_50\""
        );
        assert_eq!(
            sql[1],
            "alter sequence \"app\".\"s\" rename to \"s__dropped_60\""
        );
        assert!(
            sql[2].starts_with("create type \"app\".\"mood\""),
            "{sql:?}"
        );
        assert!(
            sql[3].starts_with("create sequence if not exists \"app\".\"s\""),
            "{sql:?}"
        );
        assert!(sql[4].contains("select x + 1"), "{sql:?}");
        assert_eq!(
            &sql[5..],
            &[
                "drop type if exists \"app\".\"mood__dropped_50\"",
                "drop sequence if exists \"app\".\"s__dropped_60\"",
            ]
        );
    }

    #[test]
    fn names_moved_out_of_the_way_fit_in_63_bytes() {
        let long = "é".repeat(40);
        let away = away_name(&long, 4_000_000_000);
        assert!(away.len() <= 63, "{away}");
        assert!(away.ends_with("__dropped_4000000000"));
        assert_eq!(away_name("t", 7), "t__dropped_7");
    }
}
