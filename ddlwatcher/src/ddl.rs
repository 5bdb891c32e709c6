//! DDL text that creates the model's objects on a target, with every identifier quoted and
//! schemas renamed by a [`SchemaMap`] (teleport's `apply_schema`). Pure: tested without a
//! database.
//!
//! Expressions (defaults, generation expressions, domain checks) are copied as the source's
//! catalog prints them; rewriting schema names inside expressions needs a parser and arrives
//! with the DDL issue (pg_query).

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{
    qualified, quote_ident, quote_literal, Column, Constraint, Index, Sequence, Table, TypeDef,
    TypeKind, TypeRef, View,
};

/// Renames the replicated schemas to `apply_schema`, when set, and single tables to their
/// destination (a mirror's table mappings).
#[derive(Debug, Clone, Default)]
pub struct SchemaMap {
    pub apply_schema: Option<String>,
    pub replicated: BTreeSet<String>,
    /// Source (schema, table) → target (schema, table); only tables named differently.
    pub tables: BTreeMap<(String, String), (String, String)>,
}

impl SchemaMap {
    pub fn new(apply_schema: Option<String>, tables: &[Table]) -> Self {
        Self {
            apply_schema,
            replicated: tables.iter().map(|t| t.schema.clone()).collect(),
            tables: BTreeMap::new(),
        }
    }

    /// With these tables renamed (source → destination, each `(schema, table)`).
    pub fn with_renames(mut self, renames: BTreeMap<(String, String), (String, String)>) -> Self {
        self.tables = renames;
        self
    }

    /// Nothing is renamed: statements and expressions keep their text.
    pub fn is_identity(&self) -> bool {
        self.apply_schema.is_none() && self.tables.is_empty()
    }

    /// The target schema and name of the source table `schema.name`.
    pub fn table_parts<'a>(&'a self, schema: &'a str, name: &'a str) -> (&'a str, &'a str) {
        match self.tables.get(&(schema.to_string(), name.to_string())) {
            Some((s, n)) => (s, n),
            None => (self.map(schema), name),
        }
    }

    /// The target name of the source table `schema.name`, quoted and qualified.
    pub fn table(&self, schema: &str, name: &str) -> String {
        let (s, n) = self.table_parts(schema, name);
        qualified(s, n)
    }

    /// The source table `t` as the target knows it: its schema and name, the index
    /// definitions naming it and the foreign keys naming a renamed table, re-targeted (what
    /// the initial load sends).
    pub fn renamed(&self, t: &Table) -> Table {
        let mut out = t.clone();
        let (s, n) = self.table_parts(&t.schema, &t.name);
        (out.schema, out.name) = (s.to_string(), n.to_string());
        if self.tables.is_empty() {
            return out;
        }
        let only_renames = SchemaMap::default().with_renames(self.tables.clone());
        if self
            .tables
            .contains_key(&(t.schema.clone(), t.name.clone()))
        {
            // Its key takes the target's default name (see `primary_key`).
            out.primary_key_name = None;
            for i in &mut out.indexes {
                if let Ok(sql) = crate::retarget::statement(&i.definition, &only_renames) {
                    i.definition = sql;
                }
            }
        }
        for c in out.constraints.iter_mut().filter(|c| c.kind == 'f') {
            if let Ok(def) = crate::retarget::constraint(&c.definition, &only_renames) {
                c.definition = def;
            }
        }
        out
    }

    /// The target schema of an object in source schema `schema`.
    pub fn map<'a>(&'a self, schema: &'a str) -> &'a str {
        match &self.apply_schema {
            Some(s) if self.replicated.contains(schema) => s,
            _ => schema,
        }
    }

    /// The target schemas to create.
    pub fn target_schemas(&self) -> BTreeSet<String> {
        self.replicated
            .iter()
            .map(|s| self.map(s).to_string())
            .collect()
    }
}

/// The type's name on the target.
pub fn type_sql(t: &TypeRef, map: &SchemaMap) -> String {
    match t {
        TypeRef::Builtin(s) => s.clone(),
        TypeRef::User {
            schema, name, dims, ..
        } => {
            let mut s = qualified(map.map(schema), name);
            for _ in 0..*dims {
                s.push_str("[]");
            }
            s
        }
    }
}

/// `CREATE TYPE`/`CREATE DOMAIN` for a user type; `None` for types that must already exist
/// (an extension's types).
pub fn create_type(def: &TypeDef, map: &SchemaMap) -> Option<String> {
    let name = qualified(map.map(&def.schema), &def.name);
    match &def.kind {
        TypeKind::Enum(labels) => Some(format!(
            "create type {name} as enum ({})",
            labels
                .iter()
                .map(|l| quote_literal(l))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        TypeKind::Composite(attrs) => Some(format!(
            "create type {name} as ({})",
            attrs
                .iter()
                .map(|a| {
                    format!(
                        "{} {}{}",
                        quote_ident(&a.name),
                        type_sql(&a.type_ref, map),
                        collate(&a.collation)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        )),
        TypeKind::Domain {
            base,
            collation,
            not_null,
            default,
            checks,
        } => {
            let mut s = format!(
                "create domain {name} as {}{}",
                type_sql(base, map),
                collate(collation)
            );
            if let Some(d) = default {
                s.push_str(&format!(" default {d}"));
            }
            if *not_null {
                s.push_str(" not null");
            }
            for c in checks {
                s.push(' ');
                s.push_str(c);
            }
            Some(s)
        }
        TypeKind::Extension(ext) => Some(format!(
            "create extension if not exists {} schema {}",
            quote_ident(ext),
            quote_ident(map.map(&def.schema))
        )),
        TypeKind::External => None,
    }
    .map(|sql| crate::retarget::if_needed(sql, map))
}

/// `CREATE SEQUENCE` statements for `serial`-style defaults of the table.
pub fn create_sequences(table: &Table, map: &SchemaMap) -> Vec<String> {
    table
        .columns
        .iter()
        .filter(|c| c.identity.is_none())
        .filter_map(|c| c.sequence.as_ref())
        .map(|(s, n)| format!("create sequence if not exists {}", qualified(map.map(s), n)))
        .collect()
}

/// `CREATE SEQUENCE` of a sequence no column owns, with its options (before the tables,
/// whose defaults may draw from it).
pub fn create_sequence(q: &Sequence, map: &SchemaMap) -> String {
    format!(
        "create sequence if not exists {} {}",
        qualified(map.map(&q.schema), &q.name),
        q.options()
    )
}

/// `ALTER TABLE … ADD CONSTRAINT` (unique, check, exclusion or foreign key). Names of the
/// source schema inside the definition are left for the caller to rename
/// ([`crate::retarget::if_needed`]), once, with the rest of its statements.
pub fn add_constraint(table: &Table, c: &Constraint, map: &SchemaMap) -> String {
    format!(
        "alter table {} add constraint {} {}",
        map.table(&table.schema, &table.name),
        quote_ident(&c.name),
        c.definition
    )
}

/// `CREATE [OR REPLACE] VIEW`; names inside its query are left for the caller to rename, as
/// in [`add_constraint`].
pub fn create_view(v: &View, map: &SchemaMap, or_replace: bool) -> String {
    format!(
        "create {}view {} as {}",
        if or_replace { "or replace " } else { "" },
        qualified(map.map(&v.schema), &v.name),
        v.definition
    )
}

/// ` collate …` for a column with a collation of its own, else nothing.
pub fn collate_clause(c: &Column) -> String {
    collate(&c.collation)
}

/// ` collate …` for a collation other than the type's (an attribute's, a domain's), else
/// nothing.
pub fn collate(collation: &Option<String>) -> String {
    collation
        .as_ref()
        .map(|x| format!(" collate {x}"))
        .unwrap_or_default()
}

/// A column definition: name, type, generation, identity or default, NOT NULL (for
/// `CREATE TABLE` and `ADD COLUMN`).
pub fn column_sql(c: &Column, map: &SchemaMap) -> String {
    let mut s = format!(
        "{} {}{}",
        quote_ident(&c.name),
        type_sql(&c.type_ref, map),
        collate_clause(c)
    );
    if c.generated {
        if let Some(e) = &c.expression {
            s.push_str(&format!(" generated always as ({e}) stored"));
        }
    } else if c.identity.is_some() {
        // By default, so that the applier may write the source's values.
        s.push_str(" generated by default as identity");
    } else if let Some((seq_schema, seq)) = &c.sequence {
        s.push_str(&format!(
            " default nextval({}::regclass)",
            quote_literal(&qualified(map.map(seq_schema), seq))
        ));
    } else if let Some(e) = &c.expression {
        s.push_str(&format!(" default {e}"));
    }
    if c.not_null {
        s.push_str(" not null");
    }
    s
}

/// `CREATE TABLE` with columns, types, defaults, identity, generated columns and NOT NULL;
/// the primary key and indexes come after the data ([`primary_key`], [`create_index`]).
pub fn create_table(table: &Table, map: &SchemaMap) -> String {
    let cols: Vec<String> = table.columns.iter().map(|c| column_sql(c, map)).collect();
    let sql = format!(
        "create table {} ({})",
        map.table(&table.schema, &table.name),
        cols.join(", ")
    );
    // Expressions (defaults, generated columns) may name the source schema: the parser
    // renames those references.
    crate::retarget::if_needed(sql, map)
}

/// `ALTER TABLE … ADD CONSTRAINT … PRIMARY KEY`, under the source key's name: a key named
/// apart from its table (a custom name, or a table renamed since) keeps that name on the
/// target. PostgreSQL's default name when a snapshot did not record it, or when the table
/// goes to a name of its own (a mirror's table mapping: the source's name would be the
/// source table's, and may be another table's there).
pub fn primary_key(table: &Table, map: &SchemaMap) -> Option<String> {
    table.primary_key.as_ref().map(|k| {
        format!(
            "alter table {} add {}primary key ({}){}",
            map.table(&table.schema, &table.name),
            primary_key_name(table, map)
                .map_or_else(String::new, |n| format!("constraint {} ", quote_ident(n))),
            k.iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            match table.primary_key_deferrable {
                None => "",
                Some(false) => " deferrable initially immediate",
                Some(true) => " deferrable initially deferred",
            }
        )
    })
}

/// The name the table's primary key has on the target: the source's, unless the table is
/// mapped to a name of its own (see [`primary_key`]).
pub fn primary_key_name<'a>(table: &'a Table, map: &SchemaMap) -> Option<&'a str> {
    let mapped = map
        .tables
        .contains_key(&(table.schema.clone(), table.name.clone()));
    table.primary_key_name.as_deref().filter(|_| !mapped)
}

/// Drops the target table's primary key, whatever its name there: targets made before keys
/// took the source's name have PostgreSQL's default, `<table>_pkey` at the time the table
/// was created.
pub fn drop_primary_key(table: &Table, map: &SchemaMap) -> String {
    on_primary_key(table, map, None, |rel| {
        format!("'alter table %s drop constraint %I', {rel}, k")
    })
}

/// Gives the target table's primary key, whatever its name there, the name `name`.
pub fn rename_primary_key(table: &Table, map: &SchemaMap, name: &str) -> String {
    let name = quote_literal(name);
    on_primary_key(table, map, Some(&format!("k <> {name}")), |rel| {
        format!("'alter table %s rename constraint %I to %I', {rel}, k, {name}")
    })
}

/// A `DO` block (`ALTER TABLE` takes no expression for a name) that reads the name `k` of
/// the target table's primary key and, when it has one (and `condition` holds), runs the
/// statement `pg_catalog.format(<format_args(the table's name as a literal)>)`.
fn on_primary_key(
    table: &Table,
    map: &SchemaMap,
    condition: Option<&str>,
    format_args: impl Fn(&str) -> String,
) -> String {
    let rel = quote_literal(&map.table(&table.schema, &table.name));
    do_block(&format!(
        "declare k pg_catalog.name; begin \
         select c.conname into k from pg_catalog.pg_constraint c \
          where c.conrelid = {rel}::pg_catalog.regclass and c.contype = 'p'; \
         if k is not null{} then \
           execute pg_catalog.format({}); \
         end if; end",
        condition.map_or_else(String::new, |c| format!(" and {c}")),
        format_args(&rel)
    ))
}

/// Drops the check of domain `name` (quoted and qualified) whose definition is
/// `definition`, whatever its name on the target (the catalog model keeps no names of
/// domain checks, and the target named them itself): a `DO` block finds it.
pub fn drop_domain_check(name: &str, definition: &str) -> String {
    let domain = quote_literal(name);
    do_block(&format!(
        "declare k pg_catalog.name; begin \
         for k in select c.conname from pg_catalog.pg_constraint c \
                   where c.contypid = {domain}::pg_catalog.regtype \
                     and pg_catalog.pg_get_constraintdef(c.oid) = {} loop \
           execute pg_catalog.format('alter domain %s drop constraint %I', {domain}, k); \
         end loop; end",
        quote_literal(definition)
    ))
}

/// Where an enum label is added: after (or, for the first label, before) a neighbour,
/// named as the source has it and found by its place (`offset`, from 0 in sort order)
/// when the target does not have that name.
pub struct LabelPlace<'a> {
    pub after: bool,
    pub neighbour: &'a str,
    pub offset: usize,
}

/// Adds `label` to enum `name` (quoted and qualified) unless it is there. The target runs
/// it before the batch's transaction (a new label cannot be used in the transaction that
/// adds it), while the versions before it in the batch are not applied yet: a neighbour
/// renamed by one of those still has its old name there, in the same place (renames keep
/// places; earlier additions run before this one, in order) — found by that place.
pub fn add_enum_label(name: &str, label: &str, place: Option<LabelPlace<'_>>) -> String {
    let typ = quote_literal(name);
    let Some(p) = place else {
        return format!(
            "alter type {name} add value if not exists {}",
            quote_literal(label)
        );
    };
    do_block(&format!(
        "declare n pg_catalog.text; begin \
         select coalesce((select e.enumlabel::pg_catalog.text from pg_catalog.pg_enum e \
                           where e.enumtypid = {typ}::pg_catalog.regtype and e.enumlabel = {neighbour}), \
                         (select e.enumlabel::pg_catalog.text from pg_catalog.pg_enum e \
                           where e.enumtypid = {typ}::pg_catalog.regtype \
                           order by e.enumsortorder offset {offset} limit 1)) into n; \
         if n is null then \
           execute pg_catalog.format('alter type %s add value if not exists %L', {typ}, {label}); \
         else \
           execute pg_catalog.format('alter type %s add value if not exists %L {side} %L', {typ}, {label}, n); \
         end if; end",
        neighbour = quote_literal(p.neighbour),
        offset = p.offset,
        label = quote_literal(label),
        side = if p.after { "after" } else { "before" },
    ))
}

/// Settings under which a value's text is the same on every server: values checksummed on
/// the source and on the target are printed under them.
pub const CANONICAL_SETTINGS: [(&str, &str); 5] = [
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
];

/// `name` (table `table` as one side names it, quoted and qualified) as a relation to read
/// the table's own rows from: `ONLY`, so an inheritance parent's children (tables of their
/// own) are left out — but for a partitioned table, whose rows are its partitions'.
pub fn own_rows(table: &Table, name: &str) -> String {
    if table.partitions.is_empty() {
        format!("only {name}")
    } else {
        name.to_string()
    }
}

/// The rows of `table` (quoted and qualified; [`own_rows`]) where `filter` holds, and the sum of the
/// `hashtext` of `column`'s text in each: `select <rows>, <sum> from …`, to be run under
/// [`CANONICAL_SETTINGS`].
pub fn values_checksum_sql(table: &str, column: &str, filter: Option<&str>) -> String {
    format!(
        "select pg_catalog.count(*)::pg_catalog.int8, \
         coalesce(pg_catalog.sum(pg_catalog.hashtext(t.{}::pg_catalog.text)::pg_catalog.int8), 0)::pg_catalog.int8 \
         from {table} as t{}",
        quote_ident(column),
        filter.map_or_else(String::new, |f| format!(" where {f}"))
    )
}

/// A check of a table's rows on the target: `sql` fails unless they are the source's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowsCheck {
    /// The table as the target names it.
    pub schema: String,
    pub table: String,
    pub sql: String,
    /// The table's OID on the source: a table dropped there before the check was sent
    /// had its events skipped, and the check is left out with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<u32>,
}

/// A [`RowsCheck`] that fails unless the target's `column` of `table` (as the target names
/// it) holds what the source's held when its type changed: `rows` rows and the checksum
/// `sum` ([`values_checksum_sql`]). The target casts the old values to the new type; a
/// source `ALTER … TYPE … USING` computed them otherwise (`USING n / 2.0`), which no
/// catalog shows. Rows whose `soft_delete` column is set (a mirror that keeps deleted
/// rows) are left out.
pub fn values_check(
    table: &Table,
    map: &SchemaMap,
    column: &str,
    soft_delete: Option<&str>,
    rows: i64,
    sum: i64,
) -> RowsCheck {
    let target = map.table(&table.schema, &table.name);
    let filter = soft_delete.map(|c| format!("not coalesce(t.{}, false)", quote_ident(c)));
    let saved: Vec<String> = CANONICAL_SETTINGS
        .iter()
        .map(|(name, _)| format!("pg_catalog.current_setting({})", quote_literal(name)))
        .collect();
    // `set_config` of each setting, to the value `value(its index, its canonical value)`.
    let set = |value: &dyn Fn(usize, &str) -> String| {
        CANONICAL_SETTINGS
            .iter()
            .enumerate()
            .map(|(i, (name, v))| {
                format!(
                    "pg_catalog.set_config({}, {}, true)",
                    quote_literal(name),
                    value(i, v)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let canonical = set(&|_, v| quote_literal(v));
    let restore = set(&|i, _| format!("saved[{}]", i + 1));
    let generated = table
        .columns
        .iter()
        .any(|c| c.name == column && c.generated);
    let (message, next_time) = if generated {
        (
            "after the type change of generated column %s of %s the target's values differ from the source's \
             (%s rows there, %s on the source): rows written between the change and the ddlwatcher's look \
             were computed in the new type on the source, in the old one on the target",
            "next time, write no row of the table between such a change and the ddlwatcher's look, or \
             use event triggers (use_event_triggers), which place the change exactly",
        )
    } else {
        (
            "after the type change of column %s of %s the target's values differ from the source's \
             (%s rows there, %s on the source): the source's ALTER TABLE … ALTER COLUMN … TYPE computed \
             them with a USING expression, which the target cannot know (it casts the old values)",
            "next time, run such a change on the target first",
        )
    };
    let copy = "copy the table again: run the initial load of this target again naming it \
                (`-mode initial-load -load-target NAME --copy-again SCHEMA.TABLE`, its source name; \
                the stream goes on past this point for a table copied since)";
    let hint = if generated {
        format!("{copy}; {next_time}")
    } else {
        format!(
            "{copy}. Running the source's ALTER … TYPE … USING on {target} is right only if no row of \
             it was written between the change and this point; {next_time}"
        )
    };
    let body = format!(
        "declare n pg_catalog.int8; h pg_catalog.int8; saved pg_catalog.text[] := array[{saved}]; begin \
         perform {canonical}; \
         {checksum} into n, h; \
         perform {restore}; \
         if n <> {rows} or h <> {sum} then \
           raise exception using message = pg_catalog.format({message}, {column_lit}, {table_lit}, n, {rows}), hint = {hint}; \
         end if; end",
        saved = saved.join(", "),
        checksum = values_checksum_sql(&own_rows(table, &target), column, filter.as_deref()),
        message = quote_literal(message),
        column_lit = quote_literal(&quote_ident(column)),
        table_lit = quote_literal(&target),
        hint = quote_literal(&hint),
    );
    let (schema, name) = map.table_parts(&table.schema, &table.name);
    RowsCheck {
        schema: schema.to_string(),
        table: name.to_string(),
        sql: do_block(&body),
        oid: Some(table.oid),
    }
}

/// `DO $tag$ body $tag$` with a tag the body does not contain (object names are any text).
pub(crate) fn do_block(body: &str) -> String {
    let mut tag = String::from("$pgteleport$");
    while body.contains(&tag) {
        tag.insert(tag.len() - 1, '_');
    }
    format!("do {tag} {body} {tag}")
}

/// `CREATE INDEX` on the target; `None` when the schema is renamed and the index has
/// expressions or a predicate (those need the parser of the DDL issue).
pub fn create_index(table: &Table, index: &Index, map: &SchemaMap) -> Option<String> {
    if map.table_parts(&table.schema, &table.name) == (table.schema.as_str(), table.name.as_str()) {
        return Some(index.definition.clone());
    }
    if let Ok(sql) = crate::retarget::statement(&index.definition, map) {
        return Some(sql);
    }
    let cols = index.columns.as_ref()?;
    Some(format!(
        "create {}index {} on {} using {} ({})",
        if index.unique { "unique " } else { "" },
        quote_ident(&index.name),
        map.table(&table.schema, &table.name),
        quote_ident(&index.method),
        cols.iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Column;

    fn col(name: &str, t: TypeRef) -> Column {
        Column {
            attnum: 0,
            name: name.into(),
            type_name: String::new(),
            type_ref: t,
            not_null: false,
            generated: false,
            expression: None,
            identity: None,
            sequence: None,
            text_form: false,
            collation: None,
        }
    }

    fn table() -> Table {
        let mut id = col("id", TypeRef::Builtin("bigint".into()));
        id.not_null = true;
        id.sequence = Some(("app".into(), "t_id_seq".into()));
        let mut total = col("Total", TypeRef::Builtin("numeric(12,2)".into()));
        total.generated = true;
        total.expression = Some("(qty * 2)".into());
        let mood = col(
            "mood",
            TypeRef::User {
                oid: 20000,
                schema: "app".into(),
                name: "mood".into(),
                dims: 1,
            },
        );
        Table {
            oid: 1,
            schema: "app".into(),
            name: "t x".into(),
            columns: vec![
                id,
                col("qty", TypeRef::Builtin("integer".into())),
                total,
                mood,
            ],
            primary_key: Some(vec!["id".into()]),
            unique_key: None,
            primary_key_deferrable: None,
            primary_key_name: None,
            constraints: vec![],
            partitions: vec![],
            indexes: vec![Index {
                object: None,
                name: "t_qty".into(),
                unique: false,
                method: "btree".into(),
                columns: Some(vec!["qty".into()]),
                definition: "CREATE INDEX t_qty ON app.\"t x\" USING btree (qty)".into(),
            }],
        }
    }

    #[test]
    fn table_ddl_maps_schema_and_quotes() {
        let t = table();
        let map = SchemaMap::new(Some("copy".into()), std::slice::from_ref(&t));
        let sql = create_table(&t, &map);
        assert_eq!(
            sql,
            "create table \"copy\".\"t x\" (\"id\" bigint default nextval('\"copy\".\"t_id_seq\"'::regclass) not null, \
             \"qty\" integer, \"Total\" numeric(12,2) generated always as ((qty * 2)) stored, \"mood\" \"copy\".\"mood\"[])"
        );
        assert_eq!(
            create_sequences(&t, &map),
            vec!["create sequence if not exists \"copy\".\"t_id_seq\""]
        );
        assert_eq!(
            primary_key(&t, &map).unwrap(),
            "alter table \"copy\".\"t x\" add primary key (\"id\")"
        );
        // Under the source key's name when the snapshot has it (a table renamed keeps it).
        let named = Table {
            primary_key_name: Some("t_Old\"pkey".into()),
            ..t.clone()
        };
        assert_eq!(
            primary_key(&named, &map).unwrap(),
            "alter table \"copy\".\"t x\" add constraint \"t_Old\"\"pkey\" primary key (\"id\")"
        );
        // A table mapped to a name of its own gets PostgreSQL's default name for its key.
        let mut mapped = map.clone();
        mapped.tables.insert(
            (named.schema.clone(), named.name.clone()),
            ("archive".into(), "t_v2".into()),
        );
        assert_eq!(
            primary_key(&named, &mapped).unwrap(),
            "alter table \"archive\".\"t_v2\" add primary key (\"id\")"
        );
        assert_eq!(
            create_index(&t, &t.indexes[0], &map).unwrap(),
            "CREATE INDEX t_qty ON copy.\"t x\" USING btree (qty)"
        );
        let same = SchemaMap::new(None, std::slice::from_ref(&t));
        assert_eq!(
            create_index(&t, &t.indexes[0], &same).unwrap(),
            t.indexes[0].definition
        );
    }

    #[test]
    fn type_ddl() {
        let map = SchemaMap::new(Some("copy".into()), &[table()]);
        let e = TypeDef {
            oid: 1,
            schema: "app".into(),
            name: "mood".into(),
            kind: TypeKind::Enum(vec!["sad".into(), "it's ok".into()]),
        };
        assert_eq!(
            create_type(&e, &map).unwrap(),
            "create type \"copy\".\"mood\" as enum ('sad', 'it''s ok')"
        );
        let c = TypeDef {
            oid: 2,
            schema: "other".into(),
            name: "pair".into(),
            kind: TypeKind::Composite(vec![crate::catalog::Attribute {
                name: "a".into(),
                type_ref: TypeRef::Builtin("text".into()),
                attnum: Some(1),
                collation: Some("pg_catalog.\"C\"".into()),
            }]),
        };
        assert_eq!(
            create_type(&c, &map).unwrap(),
            "create type \"other\".\"pair\" as (\"a\" text collate pg_catalog.\"C\")"
        );
        let d = TypeDef {
            oid: 3,
            schema: "app".into(),
            name: "pos".into(),
            kind: TypeKind::Domain {
                base: TypeRef::Builtin("integer".into()),
                collation: None,
                not_null: true,
                default: None,
                checks: vec!["CHECK (VALUE > 0)".into()],
            },
        };
        assert_eq!(
            create_type(&d, &map).unwrap(),
            "create domain \"copy\".\"pos\" as integer not null CHECK (VALUE > 0)"
        );
    }
}
