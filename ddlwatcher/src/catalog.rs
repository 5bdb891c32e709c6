//! The catalog model: replicated tables with their columns, keys, indexes and the user types
//! they use, read from `pg_catalog` (never `information_schema`, which hides objects the role
//! has no rights on).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::TargetExpression;

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

/// Reads the functions and procedures of `schemas` (not those an extension owns).
pub async fn introspect_functions<C: GenericClient>(
    client: &C,
    schemas: &[String],
) -> Result<Vec<Function>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select p.oid, n.nspname::text, p.proname::text, pg_catalog.pg_get_function_identity_arguments(p.oid),
                    p.prokind = 'p', pg_catalog.pg_get_functiondef(p.oid)
               from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
              where n.nspname = any($1) and p.prokind in ('f', 'p')
                and not exists (select 1 from pg_catalog.pg_depend d
                                 where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
              order by p.oid",
            &[&schemas],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Function {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            identity_args: r.get(3),
            is_procedure: r.get(4),
            definition: r.get(5),
        })
        .collect())
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

/// Reads the sequences of `schemas`, those that serial and identity columns own included.
pub async fn introspect_sequences<C: GenericClient>(
    client: &C,
    schemas: &[String],
) -> Result<Vec<Sequence>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select c.oid, n.nspname::text, c.relname::text, pg_catalog.format_type(s.seqtypid, null),
                    s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle
               from pg_catalog.pg_sequence s
               join pg_catalog.pg_class c on c.oid = s.seqrelid
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              where n.nspname = any($1)
                and not exists (select 1 from pg_catalog.pg_depend d
                                 where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = c.oid and d.deptype = 'i')
              order by c.oid",
            &[&schemas],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Sequence {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            data_type: r.get(3),
            start: r.get(4),
            increment: r.get(5),
            min: r.get(6),
            max: r.get(7),
            cache: r.get(8),
            cycle: r.get(9),
        })
        .collect())
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

/// Reads the (plain) views of `schemas`, in creation (OID) order.
pub async fn introspect_views<C: GenericClient>(
    client: &C,
    schemas: &[String],
) -> Result<Vec<View>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select c.oid, n.nspname::text, c.relname::text, pg_catalog.pg_get_viewdef(c.oid)
               from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              where n.nspname = any($1) and c.relkind = 'v'
                and not exists (select 1 from pg_catalog.pg_depend d
                                 where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
              order by c.oid",
            &[&schemas],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| View {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            definition: r
                .get::<_, String>(3)
                .trim()
                .trim_end_matches(';')
                .to_string(),
        })
        .collect())
}

/// A table constraint as `pg_get_constraintdef` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub name: String,
    /// `f`, `u`, `c` or `x` (pg_constraint.contype).
    pub kind: char,
    pub definition: String,
}

/// A user-defined type a table depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeDef {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub kind: TypeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypeKind {
    /// Labels in their sort order.
    Enum(Vec<String>),
    /// Attributes in order.
    Composite(Vec<(String, TypeRef)>),
    Domain {
        base: TypeRef,
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

/// Reads the ordinary and partitioned tables matching `expr` from `pg_catalog`, ordered by
/// schema and name. System schemas and `exclude_schema` (the replicator's own) are skipped.
pub async fn introspect_tables<C: GenericClient>(
    client: &C,
    expr: &TargetExpression,
    exclude_schema: &str,
) -> Result<Vec<Table>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select c.oid, n.nspname::text, c.relname::text
               from pg_catalog.pg_class c
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              where c.relkind in ('r', 'p')
                and not c.relispartition
                and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
                and n.nspname not like 'pg_temp_%' and n.nspname not like 'pg_toast_temp_%'
                and n.nspname <> $1
              order by 2, 3",
            &[&exclude_schema],
        )
        .await?;
    let mut tables = Vec::new();
    for row in rows {
        let schema: String = row.get(1);
        let name: String = row.get(2);
        if !expr.matches(&schema, &name) {
            continue;
        }
        let oid: u32 = row.get(0);
        tables.push(describe_table(client, oid, schema, name).await?);
    }
    Ok(tables)
}

const TYPE_REF_COLUMNS: &str = "
    pg_catalog.format_type(t.oid, $TYPMOD),
    t.oid, tn.nspname::text, t.typname::text,
    coalesce(e.oid, 0::oid), coalesce(en.nspname::text, ''), coalesce(e.typname::text, ''), t.typndims";

fn type_ref(row: &tokio_postgres::Row, at: usize) -> TypeRef {
    let formatted: String = row.get(at);
    let oid: u32 = row.get(at + 1);
    let elem: u32 = row.get(at + 4);
    if elem != 0 {
        // An array: its element decides.
        if elem < FIRST_USER_OID {
            return TypeRef::Builtin(formatted);
        }
        return TypeRef::User {
            oid: elem,
            schema: row.get(at + 5),
            name: row.get(at + 6),
            dims: 1,
        };
    }
    if oid < FIRST_USER_OID {
        TypeRef::Builtin(formatted)
    } else {
        TypeRef::User {
            oid,
            schema: row.get(at + 2),
            name: row.get(at + 3),
            dims: 0,
        }
    }
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

/// Reads columns, primary key and indexes of one table by OID.
pub async fn describe_table<C: GenericClient>(
    client: &C,
    oid: u32,
    schema: String,
    name: String,
) -> Result<Table, tokio_postgres::Error> {
    let sql = format!(
        "select a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
                a.attnotnull, a.attgenerated <> '', pg_catalog.pg_get_expr(d.adbin, d.adrelid),
                nullif(a.attidentity, '')::text,
                sn.nspname::text, s.relname::text, a.attnum,
                coalesce((select bt.typcategory = 'A' or bt.oid in ('pg_catalog.json'::pg_catalog.regtype,
                            'pg_catalog.jsonb'::pg_catalog.regtype, 'pg_catalog.xml'::pg_catalog.regtype)
                   from pg_catalog.pg_type bt where bt.oid = {}), false),
                {}
           from pg_catalog.pg_attribute a
           join pg_catalog.pg_type t on t.oid = a.atttypid
           join pg_catalog.pg_namespace tn on tn.oid = t.typnamespace
           left join pg_catalog.pg_type e on e.oid = t.typelem and t.typcategory = 'A'
           left join pg_catalog.pg_namespace en on en.oid = e.typnamespace
           left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
           left join pg_catalog.pg_depend dep on dep.refobjid = a.attrelid and dep.refobjsubid = a.attnum
                and dep.classid = 'pg_catalog.pg_class'::regclass and dep.deptype in ('a', 'i')
           left join pg_catalog.pg_class s on s.oid = dep.objid and s.relkind = 'S'
           left join pg_catalog.pg_namespace sn on sn.oid = s.relnamespace
          where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
          order by a.attnum",
        base_type_sql("a.atttypid"),
        TYPE_REF_COLUMNS.replace("$TYPMOD", "a.atttypmod")
    );
    let cols = client.query(&sql, &[&oid]).await?;
    let mut columns: Vec<Column> = Vec::new();
    for r in &cols {
        let name: String = r.get(0);
        if columns.last().is_some_and(|c| c.name == name) {
            continue; // a second dependency row for the same column
        }
        let identity: Option<String> = r.get(5);
        let seq_schema: Option<String> = r.get(6);
        let seq_name: Option<String> = r.get(7);
        columns.push(Column {
            name,
            type_name: r.get(1),
            not_null: r.get(2),
            generated: r.get(3),
            expression: r.get(4),
            identity: identity.and_then(|s| s.chars().next()),
            sequence: seq_schema.zip(seq_name),
            attnum: r.get(8),
            text_form: r.get(9),
            type_ref: type_ref(r, 10),
        });
    }
    let unique = client
        .query(
            &format!(
                "select a.attname::text
                   from pg_catalog.pg_index i
                   cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
                   join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                  where i.indexrelid = {}
                  order by k.ord",
                key_index_sql("$1")
            ),
            &[&oid],
        )
        .await?;
    let pk = client
        .query(
            "select a.attname::text
               from pg_catalog.pg_index i
               cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
               join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
              where i.indrelid = $1 and i.indisprimary
              order by k.ord",
            &[&oid],
        )
        .await?;
    let primary_key = if pk.is_empty() {
        None
    } else {
        Some(pk.iter().map(|r| r.get(0)).collect())
    };
    let unique_key = if primary_key.is_some() || unique.is_empty() {
        None
    } else {
        Some(unique.iter().map(|r| r.get(0)).collect())
    };
    let idx = client
        .query(
            "select c.relname::text, i.indisunique, am.amname::text,
                    case when i.indexprs is null and i.indpred is null then
                         array(select a.attname::text from unnest(i.indkey) with ordinality k(attnum, ord)
                                 join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                                order by k.ord) end,
                    pg_catalog.pg_get_indexdef(i.indexrelid)
               from pg_catalog.pg_index i
               join pg_catalog.pg_class c on c.oid = i.indexrelid
               join pg_catalog.pg_am am on am.oid = c.relam
              where i.indrelid = $1 and not i.indisprimary
                and not exists (select 1 from pg_catalog.pg_constraint k where k.conindid = i.indexrelid)
              order by 1",
            &[&oid],
        )
        .await?;
    let indexes = idx
        .iter()
        .map(|r| Index {
            name: r.get(0),
            unique: r.get(1),
            method: r.get(2),
            columns: r.get(3),
            definition: r.get(4),
        })
        .collect();
    let cons = client
        .query(
            "select conname::text, contype::text, pg_catalog.pg_get_constraintdef(oid)
               from pg_catalog.pg_constraint
              where conrelid = $1 and contype in ('f', 'u', 'c', 'x')
              order by 1",
            &[&oid],
        )
        .await?;
    let constraints = cons
        .iter()
        .map(|r| Constraint {
            name: r.get(0),
            kind: r.get::<_, String>(1).chars().next().unwrap_or('c'),
            definition: r.get(2),
        })
        .collect();
    Ok(Table {
        oid,
        schema,
        name,
        columns,
        primary_key,
        unique_key,
        indexes,
        constraints,
    })
}

/// Reads the user-defined types the tables use, and the types those use, ordered so that
/// each comes after the types it depends on.
pub async fn introspect_types<C: GenericClient>(
    client: &C,
    tables: &[Table],
) -> Result<Vec<TypeDef>, tokio_postgres::Error> {
    let mut pending: Vec<u32> = Vec::new();
    for t in tables {
        for c in &t.columns {
            if let TypeRef::User { oid, .. } = c.type_ref {
                pending.push(oid);
            }
        }
    }
    let mut found: BTreeMap<u32, TypeDef> = BTreeMap::new();
    let mut deps: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    while let Some(oid) = pending.pop() {
        if found.contains_key(&oid) {
            continue;
        }
        let row = client
            .query_one(
                "select n.nspname::text, t.typname::text, t.typtype::text, t.typrelid,
                        t.typnotnull, t.typdefault,
                        (select x.extname::text from pg_catalog.pg_depend d
                           join pg_catalog.pg_extension x on x.oid = d.refobjid
                          where d.classid = 'pg_catalog.pg_type'::regclass and d.objid = t.oid and d.deptype = 'e'
                            and d.refclassid = 'pg_catalog.pg_extension'::regclass)
                   from pg_catalog.pg_type t join pg_catalog.pg_namespace n on n.oid = t.typnamespace
                  where t.oid = $1",
                &[&oid],
            )
            .await?;
        let (schema, name, typtype): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let relid: u32 = row.get(3);
        let extension: Option<String> = row.get(6);
        let mut my_deps = Vec::new();
        let kind = if let Some(ext) = extension {
            TypeKind::Extension(ext)
        } else {
            match typtype.as_str() {
                "e" => {
                    let labels = client
                        .query(
                            "select enumlabel::text from pg_catalog.pg_enum where enumtypid = $1 order by enumsortorder",
                            &[&oid],
                        )
                        .await?;
                    TypeKind::Enum(labels.iter().map(|r| r.get(0)).collect())
                }
                "c" => {
                    let sql = format!(
                        "select a.attname::text, {}
                           from pg_catalog.pg_attribute a
                           join pg_catalog.pg_type t on t.oid = a.atttypid
                           join pg_catalog.pg_namespace tn on tn.oid = t.typnamespace
                           left join pg_catalog.pg_type e on e.oid = t.typelem and t.typcategory = 'A'
                           left join pg_catalog.pg_namespace en on en.oid = e.typnamespace
                          where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped order by a.attnum",
                        TYPE_REF_COLUMNS.replace("$TYPMOD", "a.atttypmod")
                    );
                    let attrs = client.query(&sql, &[&relid]).await?;
                    let attrs: Vec<(String, TypeRef)> =
                        attrs.iter().map(|r| (r.get(0), type_ref(r, 1))).collect();
                    for (_, t) in &attrs {
                        if let TypeRef::User { oid, .. } = t {
                            my_deps.push(*oid);
                        }
                    }
                    TypeKind::Composite(attrs)
                }
                "d" => {
                    let sql = format!(
                        "select {}, (select coalesce(array_agg(pg_catalog.pg_get_constraintdef(c.oid) order by c.conname), '{{}}')
                                       from pg_catalog.pg_constraint c where c.contypid = d.oid and c.contype = 'c')
                           from pg_catalog.pg_type d
                           join pg_catalog.pg_type t on t.oid = d.typbasetype
                           join pg_catalog.pg_namespace tn on tn.oid = t.typnamespace
                           left join pg_catalog.pg_type e on e.oid = t.typelem and t.typcategory = 'A'
                           left join pg_catalog.pg_namespace en on en.oid = e.typnamespace
                          where d.oid = $1",
                        TYPE_REF_COLUMNS.replace("$TYPMOD", "d.typtypmod")
                    );
                    let r = client.query_one(&sql, &[&oid]).await?;
                    let base_ref = type_ref(&r, 0);
                    if let TypeRef::User { oid, .. } = base_ref {
                        my_deps.push(oid);
                    }
                    TypeKind::Domain {
                        base: base_ref,
                        not_null: row.get(4),
                        default: row.get(5),
                        checks: r.get(8),
                    }
                }
                _ => TypeKind::External,
            }
        };
        pending.extend(my_deps.iter().copied());
        deps.insert(oid, my_deps);
        found.insert(
            oid,
            TypeDef {
                oid,
                schema,
                name,
                kind,
            },
        );
    }
    // Dependencies first.
    let mut ordered = Vec::new();
    let mut done: BTreeSet<u32> = BTreeSet::new();
    fn visit(
        oid: u32,
        deps: &BTreeMap<u32, Vec<u32>>,
        done: &mut BTreeSet<u32>,
        out: &mut Vec<u32>,
    ) {
        if !done.insert(oid) {
            return;
        }
        for d in deps.get(&oid).into_iter().flatten() {
            visit(*d, deps, done, out);
        }
        out.push(oid);
    }
    for oid in found.keys() {
        visit(*oid, &deps, &mut done, &mut ordered);
    }
    Ok(ordered
        .into_iter()
        .filter_map(|o| found.remove(&o))
        .collect())
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
}
