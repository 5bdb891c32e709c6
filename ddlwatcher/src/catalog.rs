//! The catalog model: replicated tables with their columns, keys, indexes and the user types
//! they use, read from `pg_catalog` (never `information_schema`, which hides objects the role
//! has no rights on).

use serde::{Deserialize, Serialize};
/// OIDs below this are built into PostgreSQL (`FirstNormalObjectId`).
pub const FIRST_USER_OID: u32 = 16384;

/// A column's type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypeRef {
    /// A built-in type, as `format_type` prints it with typmods (`numeric(12,2)`, `text[]`).
    Builtin(String),
    /// A user-defined type (enum, composite, domain, or an extension's type), possibly an
    /// array of it (`dims` > 0).
    User {
        oid: u32,
        schema: String,
        name: String,
        dims: u8,
    },
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Attribute number: stable across renames, so a rename diffs as a rename.
    #[serde(default)]
    pub attnum: i16,
    pub name: String,
    /// The type as `format_type` prints it on the source (for messages).
    pub type_name: String,
    pub type_ref: TypeRef,
    pub not_null: bool,
    /// Stored generated column: computed on the target, never written by the applier.
    pub generated: bool,
    /// Generation expression of a generated column, or the default expression.
    #[serde(default)]
    pub expression: Option<String>,
    /// `a` (always) or `d` (by default) for identity columns.
    #[serde(default)]
    pub identity: Option<char>,
    /// The sequence a `serial`-style default draws from (`nextval`), if any.
    #[serde(default)]
    pub sequence: Option<(String, String)>,
    /// Captured as its text form rather than its JSON form: the type (or a domain's base
    /// type) is an array (JSON arrays lose non-default bounds), json/jsonb (a JSON `null`
    /// must stay apart from SQL NULL) or xml (its JSON form drops the XML declaration).
    #[serde(default)]
    pub text_form: bool,
    /// The column's collation when it is not its type's, qualified and quoted: one of
    /// PostgreSQL's own (`pg_catalog."C"`, `pg_catalog."und-x-icu"`, …) or one created in a
    /// user's schema (then also in [`crate::Catalog::collations`], created on the target).
    #[serde(default)]
    pub collation: Option<String>,
}

/// A collation created in a user's schema that a replicated column uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `quote_ident(schema) || '.' || quote_ident(name)`, as [`Column::collation`] names it.
    pub qualified: String,
    /// `i` (ICU) or `c` (libc).
    pub provider: char,
    pub deterministic: bool,
    /// ICU: the locale; libc: `LC_COLLATE` and `LC_CTYPE`.
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub lc_collate: Option<String>,
    #[serde(default)]
    pub lc_ctype: Option<String>,
}

impl Collation {
    /// `CREATE COLLATION IF NOT EXISTS` with the source's provider, locale and
    /// determinism, in the collation's target schema.
    pub fn create_sql(&self, map: &crate::SchemaMap) -> String {
        let mut options = vec![format!(
            "provider = {}",
            if self.provider == 'i' { "icu" } else { "libc" }
        )];
        for (key, value) in [
            ("locale", &self.locale),
            ("lc_collate", &self.lc_collate),
            ("lc_ctype", &self.lc_ctype),
        ] {
            if let Some(v) = value {
                options.push(format!("{key} = {}", quote_literal(v)));
            }
        }
        if !self.deterministic {
            options.push("deterministic = false".into());
        }
        format!(
            "create collation if not exists {} ({})",
            qualified(map.map(&self.schema), &self.name),
            options.join(", ")
        )
    }
}

/// A secondary index (the primary key is kept in [`Table::primary_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub name: String,
    pub unique: bool,
    pub method: String,
    /// Plain column index: its columns. `None` for expression or partial indexes.
    pub columns: Option<Vec<String>>,
    /// `pg_get_indexdef` text on the source (valid verbatim when the schema is unchanged).
    pub definition: String,
    /// The index as an object: [`Constraint::object`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// One table, as capture, load and apply see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Primary key columns in key order; `None` when the table has no primary key.
    pub primary_key: Option<Vec<String>>,
    /// A primary key declared `DEFERRABLE`: `Some(true)` when `INITIALLY DEFERRED`. One
    /// statement may then move keys through each other (a swap, `SET id = id + 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key_deferrable: Option<bool>,
    /// The primary key constraint's name (`None` in snapshots taken before it was
    /// recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key_name: Option<String>,
    /// Without a primary key: the columns of the replica identity index, or else of the
    /// first unique index on NOT NULL columns (no expressions, no predicate).
    #[serde(default)]
    pub unique_key: Option<Vec<String>>,
    #[serde(default)]
    pub indexes: Vec<Index>,
    /// Foreign key, unique, check and exclusion constraints (the primary key and NOT NULL
    /// are kept apart).
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// A partitioned table's leaf partitions (those that hold its rows), at any depth.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<Partition>,
}

/// A leaf partition of a partitioned table: not a table of the model (its rows are the
/// partitioned table's), but its rows leave with it when it is detached or dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `pg_get_partition_constraintdef`: the condition its rows meet, its ancestors' with
    /// its own, on the partitioned table's columns.
    pub constraint: String,
}

/// A function or procedure in a replicated schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `pg_get_function_identity_arguments`, for DROP.
    pub identity_args: String,
    pub is_procedure: bool,
    /// `pg_get_functiondef`: a complete `CREATE OR REPLACE …`.
    pub definition: String,
    /// The tables whose defaults, checks, generated columns or indexes call it, or whose
    /// schema's functions (or those functions' callees) call it by a qualified name in
    /// their bodies: how a function of a schema that is not replicated comes with them.
    #[serde(default)]
    pub used_by: Vec<u32>,
}

impl Function {
    pub fn drop_sql(&self, map: &crate::SchemaMap) -> String {
        format!(
            "drop {} if exists {}({})",
            if self.is_procedure {
                "procedure"
            } else {
                "function"
            },
            qualified(map.map(&self.schema), &self.name),
            self.identity_args
        )
    }
}

/// A sequence in a replicated schema (its definition; values follow with the data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub data_type: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    /// The tables whose defaults draw from it: how a sequence of a schema that is not
    /// replicated comes with them.
    #[serde(default)]
    pub used_by: Vec<u32>,
}

impl Sequence {
    /// The options clause shared by CREATE and ALTER.
    pub fn options(&self) -> String {
        format!(
            "as {} increment by {} minvalue {} maxvalue {} start with {} cache {} {}",
            self.data_type,
            self.increment,
            self.min,
            self.max,
            self.start,
            self.cache,
            if self.cycle { "cycle" } else { "no cycle" }
        )
    }
}

/// A view in a replicated schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `pg_get_viewdef`: the query.
    pub definition: String,
}

/// A table constraint as `pg_get_constraintdef` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub name: String,
    /// `f`, `u`, `c` or `x` (pg_constraint.contype).
    pub kind: char,
    pub definition: String,
    /// The catalog object (its oid) and what of it may change in place (an index's storage
    /// options; a constraint's validation and deferrability). Equal in two snapshots: the
    /// same object, its definition changed by renames only (of its columns, its table or
    /// the table it refers to) — which the target's renames carry along as the source's
    /// did. `None` in snapshots taken before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// A user-defined type a table depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeDef {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub kind: TypeKind,
}

/// An attribute of a composite type: stored as `[name, type]` or, since attribute numbers
/// are recorded, `[name, type, attnum]`, and `[name, type, attnum, collation]` for one with
/// a collation of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "AttributeRepr", into = "AttributeRepr")]
pub struct Attribute {
    pub name: String,
    pub type_ref: TypeRef,
    /// Stable across renames, so a rename diffs as a rename (`None` in snapshots taken
    /// before it was recorded).
    pub attnum: Option<i16>,
    /// A collation other than its type's, as [`Column::collation`] (`None` in snapshots
    /// taken before it was recorded).
    pub collation: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum AttributeRepr {
    Collated(String, TypeRef, i16, String),
    Numbered(String, TypeRef, i16),
    Plain(String, TypeRef),
}

impl From<AttributeRepr> for Attribute {
    fn from(r: AttributeRepr) -> Self {
        let (name, type_ref, attnum, collation) = match r {
            AttributeRepr::Collated(name, type_ref, attnum, c) => {
                (name, type_ref, Some(attnum), Some(c))
            }
            AttributeRepr::Numbered(name, type_ref, attnum) => (name, type_ref, Some(attnum), None),
            AttributeRepr::Plain(name, type_ref) => (name, type_ref, None, None),
        };
        Self {
            name,
            type_ref,
            attnum,
            collation,
        }
    }
}

impl From<Attribute> for AttributeRepr {
    fn from(a: Attribute) -> Self {
        match (a.attnum, a.collation) {
            (Some(n), Some(c)) => Self::Collated(a.name, a.type_ref, n, c),
            (Some(n), None) => Self::Numbered(a.name, a.type_ref, n),
            (None, _) => Self::Plain(a.name, a.type_ref),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypeKind {
    /// Labels in their sort order.
    Enum(Vec<String>),
    /// Attributes in order.
    Composite(Vec<Attribute>),
    Domain {
        base: TypeRef,
        /// A collation other than the base type's, as [`Column::collation`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        collation: Option<String>,
        not_null: bool,
        default: Option<String>,
        /// `CHECK (…)` constraint texts.
        checks: Vec<String>,
    },
    /// A type an extension brings: the extension is created (it must be available and
    /// trusted, or the target role allowed to create it).
    Extension(String),
    /// Another kind (range, base type): must already exist on the target.
    External,
}

impl Table {
    /// `"schema"."name"`, quoted.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// The columns that identify a row for replication: the primary key, else the unique key.
    pub fn replica_key(&self) -> Option<&[String]> {
        self.primary_key.as_deref().or(self.unique_key.as_deref())
    }

    /// Removes the columns with attribute numbers in `attnums`, the generated columns
    /// computed from them, and the indexes and constraints that mention any of them.
    /// Returns the columns removed (the generated ones too: their values derive from the
    /// removed ones).
    pub fn remove_columns(&mut self, attnums: &std::collections::BTreeSet<i16>) -> Vec<Column> {
        let mut removed: Vec<Column> = Vec::new();
        self.columns.retain(|c| {
            let out = attnums.contains(&c.attnum);
            if out {
                removed.push(c.clone());
            }
            !out
        });
        if removed.is_empty() {
            return removed;
        }
        let names: Vec<String> = removed.iter().map(|c| c.name.clone()).collect();
        self.columns.retain(|c| {
            let derived = c.generated
                && c.expression
                    .as_deref()
                    .is_some_and(|e| names.iter().any(|n| mentions(e, n)));
            if derived {
                removed.push(c.clone());
            }
            !derived
        });
        let names: Vec<String> = removed.iter().map(|c| c.name.clone()).collect();
        let any = |text: &str| names.iter().any(|n| mentions(text, n));
        self.indexes.retain(|i| match &i.columns {
            Some(cols) => !cols.iter().any(|c| names.contains(c)),
            None => !any(&i.definition),
        });
        self.constraints.retain(|c| !any(&c.definition));
        removed
    }

    /// Columns the applier and the loader write (generated ones excluded).
    pub fn writable_columns(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| !c.generated)
            .map(|c| c.name.clone())
            .collect()
    }
}

/// Quotes an identifier for SQL text, always (so case and reserved words survive).
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Whether SQL text (an expression or definition as PostgreSQL prints it) mentions the
/// identifier `name`: quoted, or bare with no identifier character on either side. May
/// say yes for a string literal or another object's identifier of that spelling.
pub fn mentions(text: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    if text.contains(&quote_ident(name)) {
        return true;
    }
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Quotes a string literal for SQL text (standard_conforming_strings on, PostgreSQL's default
/// since 9.1). Prefer bind parameters; this is for DDL, which takes none.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// SQL for the OID of the index that identifies rows of relation `rel` (an SQL expression):
/// the primary key, else the replica identity index, else the first unique index whose
/// columns are all NOT NULL (no expressions, no predicate). NULL when there is none.
pub fn key_index_sql(rel: &str) -> String {
    format!(
        "(select i.indexrelid from pg_catalog.pg_index i
           where i.indrelid = {rel} and i.indisunique and i.indisvalid and i.indexprs is null and i.indpred is null
             and (i.indisprimary or i.indisreplident or not exists (
                  select 1 from pg_catalog.pg_attribute a
                   where a.attrelid = i.indrelid and a.attnum = any(i.indkey) and not a.attnotnull))
           order by i.indisprimary desc, i.indisreplident desc, i.indexrelid
           limit 1)"
    )
}

/// SQL for the names of the columns of the index [`key_index_sql`] finds for relation `rel`
/// (an SQL expression), in key order, as a `text[]`; empty when there is none.
pub fn key_columns_sql(rel: &str) -> String {
    format!(
        "array(select a.attname::text
                 from pg_catalog.pg_index i
                cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
                 join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                where i.indexrelid = {} order by k.ord)",
        key_index_sql(rel)
    )
}

/// SQL of the base type (through any number of domains) of the type whose OID `typ` is.
pub fn base_type_sql(typ: &str) -> String {
    format!(
        "(with recursive b(oid, typtype, typbasetype) as (
                select t.oid, t.typtype, t.typbasetype from pg_catalog.pg_type t where t.oid = {typ}
              union all
                select t.oid, t.typtype, t.typbasetype from pg_catalog.pg_type t join b on t.oid = b.typbasetype where b.typtype = 'd')
          select b.oid from b where b.typtype <> 'd')"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("Mixed Case"), "\"Mixed Case\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("s", "t"), "\"s\".\"t\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    fn col(attnum: i16, name: &str, generated: Option<&str>) -> Column {
        Column {
            attnum,
            name: name.into(),
            type_name: "text".into(),
            type_ref: TypeRef::Builtin("text".into()),
            not_null: false,
            generated: generated.is_some(),
            expression: generated.map(String::from),
            identity: None,
            sequence: None,
            text_form: false,
            collation: None,
        }
    }

    #[test]
    fn mentions_finds_whole_identifiers_only() {
        assert!(mentions("CHECK ((secret <> 'x'::text))", "secret"));
        assert!(mentions("upper(\"Secret Col\")", "Secret Col"));
        assert!(!mentions("CHECK ((secrets <> ''::text))", "secret"));
        assert!(!mentions("CHECK ((my_secret <> ''::text))", "secret"));
        assert!(mentions("(a + b)", "a"));
        assert!(!mentions("(ab + ba)", "a"));
    }

    #[test]
    fn removing_a_column_takes_what_derives_from_it() {
        let mut t = Table {
            oid: 1,
            schema: "app".into(),
            name: "p".into(),
            columns: vec![
                col(1, "id", None),
                col(2, "secret", None),
                col(3, "h", Some("md5(secret)")),
                col(4, "note", None),
                col(5, "n2", Some("upper(note)")),
            ],
            primary_key: Some(vec!["id".into()]),
            unique_key: None,
            primary_key_deferrable: None,
            primary_key_name: None,
            indexes: vec![
                Index {
                    object: None,
                    name: "p_secret".into(),
                    unique: false,
                    method: "btree".into(),
                    columns: Some(vec!["secret".into()]),
                    definition: "CREATE INDEX p_secret ON app.p USING btree (secret)".into(),
                },
                Index {
                    object: None,
                    name: "p_h".into(),
                    unique: false,
                    method: "btree".into(),
                    columns: None,
                    definition: "CREATE INDEX p_h ON app.p USING btree (lower(h))".into(),
                },
                Index {
                    object: None,
                    name: "p_note".into(),
                    unique: false,
                    method: "btree".into(),
                    columns: Some(vec!["note".into()]),
                    definition: "CREATE INDEX p_note ON app.p USING btree (note)".into(),
                },
            ],
            constraints: vec![
                Constraint {
                    object: None,
                    name: "c1".into(),
                    kind: 'c',
                    definition: "CHECK ((secret <> ''::text))".into(),
                },
                Constraint {
                    object: None,
                    name: "c2".into(),
                    kind: 'c',
                    definition: "CHECK ((note <> ''::text))".into(),
                },
            ],
            partitions: vec![],
        };
        let removed = t.remove_columns(&[2].into_iter().collect());
        let names: Vec<&str> = removed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["secret", "h"]);
        let left: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(left, ["id", "note", "n2"]);
        let idx: Vec<&str> = t.indexes.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(idx, ["p_note"]);
        assert_eq!(t.constraints.len(), 1);
        assert_eq!(t.constraints[0].name, "c2");
        assert!(t.remove_columns(&[9].into_iter().collect()).is_empty());
    }

    #[test]
    fn collations_are_created_with_their_provider_locale_and_determinism() {
        let ci = Collation {
            oid: 16500,
            schema: "app".into(),
            name: "Ci".into(),
            qualified: r#"app."Ci""#.into(),
            provider: 'i',
            deterministic: false,
            locale: Some("und-u-ks-level2".into()),
            lc_collate: None,
            lc_ctype: None,
        };
        let map = crate::SchemaMap::new(Some("copy".into()), &[]);
        let map = crate::SchemaMap {
            replicated: ["app".to_string()].into(),
            ..map
        };
        assert_eq!(
            ci.create_sql(&map),
            r#"create collation if not exists "copy"."Ci" (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"#
        );
        let libc = Collation {
            provider: 'c',
            deterministic: true,
            locale: None,
            lc_collate: Some("fr_FR.utf8".into()),
            lc_ctype: Some("fr_FR.utf8".into()),
            ..ci
        };
        assert_eq!(
            libc.create_sql(&crate::SchemaMap::default()),
            r#"create collation if not exists "app"."Ci" (provider = libc, lc_collate = 'fr_FR.utf8', lc_ctype = 'fr_FR.utf8')"#
        );
    }
}
