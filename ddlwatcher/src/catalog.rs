//! The catalog model: replicated tables with their columns and primary keys.

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::TargetExpression;

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The type as `format_type` prints it, typmods included (`numeric(12,2)`).
    pub type_name: String,
    pub not_null: bool,
    /// Stored generated column: computed on the target, never written by the applier.
    pub generated: bool,
}

/// One table, as the capture and the applier see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Primary key columns in key order; `None` when the table has no primary key.
    pub primary_key: Option<Vec<String>>,
}

impl Table {
    /// `"schema"."name"`, quoted.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
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

/// Reads columns and primary key of one table by OID.
pub async fn describe_table<C: GenericClient>(
    client: &C,
    oid: u32,
    schema: String,
    name: String,
) -> Result<Table, tokio_postgres::Error> {
    let cols = client
        .query(
            "select a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
                    a.attnotnull, a.attgenerated <> ''
               from pg_catalog.pg_attribute a
              where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
              order by a.attnum",
            &[&oid],
        )
        .await?;
    let columns = cols
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
            generated: r.get(3),
        })
        .collect();
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
    Ok(Table {
        oid,
        schema,
        name,
        columns,
        primary_key,
    })
}

/// Quotes a string literal for SQL text (standard_conforming_strings on, PostgreSQL's default
/// since 9.1). Prefer bind parameters; this is for DDL, which takes none.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
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
    }
}
