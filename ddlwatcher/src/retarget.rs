//! Re-targets SQL text to `apply_schema` through PostgreSQL's own parser (pg_query): the
//! statement is parsed, every schema-qualified reference to a replicated schema (relations,
//! types, functions) is renamed in the tree, and the tree is printed back. Never string
//! replacement: a schema name inside a string literal or a column named like a schema is
//! left alone.

use pg_query::protobuf::{self, RangeVar};
use pg_query::NodeEnum;

use crate::catalog::quote_ident;
use crate::ddl::SchemaMap;

/// Why a text could not be re-targeted.
#[derive(Debug, thiserror::Error)]
pub enum RetargetError {
    #[error("cannot parse `{sql}`: {message}")]
    Parse { sql: String, message: String },
    #[error("`{sql}`: a {node} cannot be re-targeted yet")]
    Unsupported { sql: String, node: String },
}

/// Re-targets a whole statement (or several).
pub fn statement(sql: &str, map: &SchemaMap) -> Result<String, RetargetError> {
    if map.is_identity() {
        return Ok(sql.to_string());
    }
    let err = |e: pg_query::Error| RetargetError::Parse {
        sql: sql.to_string(),
        message: e.to_string(),
    };
    let mut parsed = pg_query::parse(sql).map_err(err)?;
    for raw in parsed.protobuf.stmts.iter_mut() {
        if let Some(n) = raw.stmt.as_mut() {
            walk(n, map).map_err(|node| RetargetError::Unsupported {
                sql: sql.to_string(),
                node,
            })?;
        }
    }
    pg_query::deparse(&parsed.protobuf).map_err(err)
}

/// Re-targets `sql` when it may name a replicated schema (the names pgteleport generates
/// are already the target's; expressions copied from the source may not be). Keeps the text
/// when the parser cannot re-target it: its own names are already right.
pub fn if_needed(sql: String, map: &SchemaMap) -> String {
    let schema_named =
        map.apply_schema.is_some() && map.replicated.iter().any(|s| sql.contains(s.as_str()));
    let table_named = map.tables.keys().any(|(_, t)| sql.contains(t.as_str()));
    if !schema_named && !table_named {
        return sql;
    }
    statement(&sql, map).unwrap_or(sql)
}

/// Re-targets one constraint definition as `pg_get_constraintdef` prints it (a foreign
/// key names the table it refers to).
pub fn constraint(definition: &str, map: &SchemaMap) -> Result<String, RetargetError> {
    if map.is_identity() {
        return Ok(definition.to_string());
    }
    const PREFIX: &str = "ALTER TABLE pgteleport_t ADD CONSTRAINT pgteleport_c ";
    let printed = statement(&format!("{PREFIX}{definition}"), map)?;
    printed
        .strip_prefix(PREFIX)
        .map(str::to_string)
        .ok_or_else(|| RetargetError::Parse {
            sql: definition.to_string(),
            message: format!("unexpected deparse `{printed}`"),
        })
}

/// Re-targets one expression (a default, a generation expression, a check).
pub fn expression(expr: &str, map: &SchemaMap) -> Result<String, RetargetError> {
    if map.is_identity() {
        return Ok(expr.to_string());
    }
    let printed = statement(&format!("SELECT {expr}"), map)?;
    // The deparser prints the statement it was given: `SELECT <expression>`.
    printed
        .strip_prefix("SELECT ")
        .map(str::to_string)
        .ok_or_else(|| RetargetError::Parse {
            sql: expr.to_string(),
            message: format!("unexpected deparse `{printed}`"),
        })
}

/// A `DELETE FROM table WHERE condition` for text that must be one SQL condition (a
/// partition's constraint, received from the source): parsed, refused unless it is one
/// statement with that shape, and re-targeted.
pub fn delete_where(
    table: &str,
    condition: &str,
    map: &SchemaMap,
) -> Result<String, RetargetError> {
    let sql = format!("DELETE FROM {table} WHERE ({condition})");
    let parsed = pg_query::parse(&sql).map_err(|e| RetargetError::Parse {
        sql: sql.clone(),
        message: e.to_string(),
    })?;
    let one_delete = parsed.protobuf.stmts.len() == 1
        && matches!(
            parsed.protobuf.stmts[0].stmt.as_ref().and_then(|n| n.node.as_ref()),
            Some(NodeEnum::DeleteStmt(d)) if d.using_clause.is_empty() && d.returning_list.is_empty() && d.with_clause.is_none()
        );
    if !one_delete {
        return Err(RetargetError::Parse {
            sql,
            message: "not one condition".into(),
        });
    }
    if map.is_identity() {
        return Ok(sql);
    }
    // The table's name is the target's already: only the condition is re-targeted.
    Ok(format!(
        "DELETE FROM {table} WHERE {}",
        expression(condition, map)?
    ))
}

type Walk = Result<(), String>;

fn walk(node: &mut protobuf::Node, map: &SchemaMap) -> Walk {
    match node.node.as_mut() {
        Some(n) => walk_enum(n, map),
        None => Ok(()),
    }
}

fn all(nodes: &mut [protobuf::Node], map: &SchemaMap) -> Walk {
    nodes.iter_mut().try_for_each(|n| walk(n, map))
}

fn opt(node: &mut Option<Box<protobuf::Node>>, map: &SchemaMap) -> Walk {
    match node.as_mut() {
        Some(n) => walk(n, map),
        None => Ok(()),
    }
}

fn range_var(r: &mut Option<RangeVar>, map: &SchemaMap) {
    if let Some(r) = r.as_mut() {
        rename(r, map);
    }
}

/// A schema-qualified relation: its schema mapped, or the table renamed.
fn rename(r: &mut RangeVar, map: &SchemaMap) {
    if !r.schemaname.is_empty() {
        let (s, n) = map.table_parts(&r.schemaname, &r.relname);
        (r.schemaname, r.relname) = (s.to_string(), n.to_string());
    }
}

/// A qualified name list (`schema.name`): renames the schema part.
fn names(list: &mut [protobuf::Node], map: &SchemaMap) {
    if list.len() >= 2 {
        if let Some(NodeEnum::String(s)) = list[0].node.as_mut() {
            s.sval = map.map(&s.sval).to_string();
        }
    }
}

fn type_name(t: &mut Option<protobuf::TypeName>, map: &SchemaMap) {
    if let Some(t) = t.as_mut() {
        names(&mut t.names, map);
    }
}

/// Splits a possibly quoted `schema.name` as PostgreSQL reads a regclass literal, and
/// returns it with the schema renamed (quoted again), or `None` when unqualified.
fn regclass_literal(text: &str, map: &SchemaMap) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', _) => quoted = !quoted,
            ('.', false) => parts.push(std::mem::take(&mut cur)),
            (c, true) => cur.push(c),
            (c, false) => cur.extend(c.to_lowercase()),
        }
    }
    parts.push(cur);
    if parts.len() != 2 {
        return None;
    }
    Some(crate::catalog::qualified(map.map(&parts[0]), &parts[1]))
}

fn with(w: &mut Option<protobuf::WithClause>, map: &SchemaMap) -> Walk {
    match w.as_mut() {
        Some(w) => all(&mut w.ctes, map),
        None => Ok(()),
    }
}

/// A function's string body (`AS '…'`): `LANGUAGE sql` is SQL, re-targeted like any
/// statement when it names a replicated schema; `LANGUAGE plpgsql` goes through
/// [`plpgsql_body`]. Bodies in other languages, and bodies that cannot be re-targeted
/// safely, are left as written.
fn sql_function_body(options: &mut [protobuf::Node], map: &SchemaMap) -> Walk {
    let string = |n: &protobuf::Node| match n.node.as_ref() {
        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
        _ => None,
    };
    let language = options.iter().find_map(|o| match o.node.as_ref() {
        Some(NodeEnum::DefElem(d)) if d.defname == "language" => d.arg.as_deref().and_then(string),
        _ => None,
    });
    let retarget: fn(String, &SchemaMap) -> String = match language.as_deref() {
        Some("sql") => if_needed,
        Some("plpgsql") => plpgsql_body,
        _ => return Ok(()),
    };
    for o in options.iter_mut() {
        let Some(NodeEnum::DefElem(d)) = o.node.as_mut() else {
            continue;
        };
        if d.defname != "as" {
            continue;
        }
        if let Some(NodeEnum::List(l)) = d.arg.as_mut().and_then(|a| a.node.as_mut()) {
            if let [body] = l.items.as_mut_slice() {
                if let Some(NodeEnum::String(s)) = body.node.as_mut() {
                    // Verbatim unless it names a replicated schema (or cannot be parsed).
                    s.sval = retarget(std::mem::take(&mut s.sval), map);
                }
            }
        }
    }
    Ok(())
}

/// A function's own `SET search_path TO 'app', 'pg_catalog'`: each replicated schema in
/// it becomes the schema it is written to, so that the names the body leaves bare find on
/// the target what they find on the source.
fn search_path_setting(options: &mut [protobuf::Node], map: &SchemaMap) {
    for o in options.iter_mut() {
        let Some(NodeEnum::DefElem(d)) = o.node.as_mut() else {
            continue;
        };
        let Some(NodeEnum::VariableSetStmt(v)) = d.arg.as_mut().and_then(|a| a.node.as_mut())
        else {
            continue;
        };
        if d.defname != "set" || !v.name.eq_ignore_ascii_case("search_path") {
            continue;
        }
        for a in v.args.iter_mut() {
            if let Some(NodeEnum::AConst(c)) = a.node.as_mut() {
                if let Some(protobuf::a_const::Val::Sval(s)) = c.val.as_mut() {
                    s.sval = map.map(&s.sval).to_string();
                }
            }
        }
    }
}

/// The name and the new name of the table an `ALTER TABLE … RENAME TO …` statement
/// renames (its schema stays); `None` for any other statement.
pub fn table_rename(sql: &str) -> Option<(String, String)> {
    let parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::RenameStmt(r))
            if r.rename_type == protobuf::ObjectType::ObjectTable as i32 =>
        {
            Some((r.relation.as_ref()?.relname.clone(), r.newname.clone()))
        }
        _ => None,
    }
}

/// The schema-qualified relation (table, index, sequence, view) an `ALTER … RENAME TO`
/// statement renames: ((schema, name), (schema, new name)), unquoted; `None` for any other
/// statement or an unqualified name.
pub fn relation_renamed(sql: &str) -> Option<((String, String), (String, String))> {
    use protobuf::ObjectType as O;
    let parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    match raw.stmt.as_ref()?.node.as_ref()? {
        NodeEnum::RenameStmt(r)
            if [
                O::ObjectTable,
                O::ObjectIndex,
                O::ObjectSequence,
                O::ObjectView,
            ]
            .iter()
            .any(|k| r.rename_type == *k as i32) =>
        {
            let rel = r.relation.as_ref()?;
            (!rel.schemaname.is_empty()).then(|| {
                (
                    (rel.schemaname.clone(), rel.relname.clone()),
                    (rel.schemaname.clone(), r.newname.clone()),
                )
            })
        }
        _ => None,
    }
}

/// What a rename statement renames: see [`renamed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renamed {
    /// A table, index, sequence or view: its name and its new one (in its schema), each
    /// as written, each part quoted.
    Relation { from: String, to: String },
    /// A type or domain, as a relation.
    Type { from: String, to: String },
    /// A column (`RENAME COLUMN`) of `of`, a table as written.
    Column {
        of: String,
        from: String,
        to: String,
    },
    /// A constraint (`RENAME CONSTRAINT`) of table `of`.
    Constraint {
        of: String,
        from: String,
        to: String,
    },
    /// An attribute (`RENAME ATTRIBUTE`) of composite type `of`.
    Attribute {
        of: String,
        from: String,
        to: String,
    },
    /// An enum label (`RENAME VALUE`) of type `of`.
    Label {
        of: String,
        from: String,
        to: String,
    },
}

/// What statement `sql` renames, when it is one rename of a table, index, sequence, view,
/// type, column, constraint, attribute or enum label; `None` for any other statement.
pub fn renamed(sql: &str) -> Option<Renamed> {
    use protobuf::ObjectType as O;
    let names = name_list;
    let parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    match raw.stmt.as_ref()?.node.as_ref()? {
        NodeEnum::RenameStmt(r) => {
            let kind = O::try_from(r.rename_type).ok()?;
            let (from, to) = (r.subname.clone(), r.newname.clone());
            match kind {
                O::ObjectTable | O::ObjectIndex | O::ObjectSequence | O::ObjectView => {
                    let rel = r.relation.as_ref()?;
                    let mut to_rel = rel.clone();
                    to_rel.relname = r.newname.clone();
                    Some(Renamed::Relation {
                        from: relation_name(&r.relation)?,
                        to: relation_name(&Some(to_rel))?,
                    })
                }
                O::ObjectType | O::ObjectDomain => {
                    let list = match r.object.as_ref()?.node.as_ref()? {
                        NodeEnum::List(l) => l.items.as_slice(),
                        NodeEnum::TypeName(t) => t.names.as_slice(),
                        _ => return None,
                    };
                    let (from, to) = names(list, &r.newname)?;
                    Some(Renamed::Type { from, to })
                }
                O::ObjectColumn => Some(Renamed::Column {
                    of: relation_name(&r.relation)?,
                    from,
                    to,
                }),
                O::ObjectTabconstraint => Some(Renamed::Constraint {
                    of: relation_name(&r.relation)?,
                    from,
                    to,
                }),
                O::ObjectAttribute => Some(Renamed::Attribute {
                    of: relation_name(&r.relation)?,
                    from,
                    to,
                }),
                _ => None,
            }
        }
        NodeEnum::AlterEnumStmt(a) if !a.old_val.is_empty() => Some(Renamed::Label {
            of: names(&a.type_name, "")?.0,
            from: a.old_val.clone(),
            to: a.new_val.clone(),
        }),
        _ => None,
    }
}

/// The table a `CREATE TABLE` statement creates, as written (each part quoted); `None` for
/// any other statement.
pub fn table_created(sql: &str) -> Option<String> {
    let parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::CreateStmt(c)) => relation_name(&c.relation),
        _ => None,
    }
}

/// The tables a `DROP TABLE` statement drops, as written (each part quoted); empty for any
/// other statement.
pub fn tables_dropped(sql: &str) -> Vec<String> {
    let Ok(parsed) = pg_query::parse(sql) else {
        return Vec::new();
    };
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Vec::new();
    };
    match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::DropStmt(d))
            if d.remove_type == protobuf::ObjectType::ObjectTable as i32 =>
        {
            d.objects
                .iter()
                .filter_map(|o| match o.node.as_ref()? {
                    NodeEnum::List(l) => {
                        let parts: Vec<String> = l
                            .items
                            .iter()
                            .filter_map(|i| match i.node.as_ref()? {
                                NodeEnum::String(s) => Some(quote_ident(&s.sval)),
                                _ => None,
                            })
                            .collect();
                        (!parts.is_empty()).then(|| parts.join("."))
                    }
                    _ => None,
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The type (its name as written, each part quoted), old and new label of an
/// `ALTER TYPE … RENAME VALUE` statement; `None` for any other statement.
pub fn enum_label_rename(sql: &str) -> Option<(String, String, String)> {
    let parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let Some(NodeEnum::AlterEnumStmt(a)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
        return None;
    };
    if a.old_val.is_empty() {
        return None;
    }
    let name: Vec<String> = a
        .type_name
        .iter()
        .filter_map(|n| match n.node.as_ref()? {
            NodeEnum::String(s) => Some(crate::quote_ident(&s.sval)),
            _ => None,
        })
        .collect();
    Some((name.join("."), a.old_val.clone(), a.new_val.clone()))
}

/// The columns statement `sql` renames or drops, each as (the table, quoted and qualified
/// as written, the column's name, its new name — `None` when dropped): `ALTER TABLE … RENAME
/// COLUMN a TO b`, `ALTER TABLE … DROP COLUMN c[, DROP COLUMN d]`. Nothing for other
/// statements.
pub fn column_renames_and_drops(sql: &str) -> Vec<(String, String, Option<String>)> {
    let Ok(parsed) = pg_query::parse(sql) else {
        return Vec::new();
    };
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Vec::new();
    };
    let table = relation_name;
    match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::RenameStmt(r))
            if r.rename_type == protobuf::ObjectType::ObjectColumn as i32 =>
        {
            table(&r.relation)
                .map(|t| vec![(t, r.subname.clone(), Some(r.newname.clone()))])
                .unwrap_or_default()
        }
        Some(NodeEnum::AlterTableStmt(a)) => {
            let Some(t) = table(&a.relation) else {
                return Vec::new();
            };
            a.cmds
                .iter()
                .filter_map(|c| match c.node.as_ref()? {
                    NodeEnum::AlterTableCmd(c)
                        if c.subtype == protobuf::AlterTableType::AtDropColumn as i32 =>
                    {
                        Some((t.clone(), c.name.clone(), None))
                    }
                    _ => None,
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The columns statement `sql` adds, each as (the table, quoted and qualified as written,
/// the column's name): `ALTER TABLE … ADD COLUMN c …[, ADD COLUMN d …]`. Nothing for other
/// statements.
pub fn columns_added(sql: &str) -> Vec<(String, String)> {
    let Ok(parsed) = pg_query::parse(sql) else {
        return Vec::new();
    };
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Vec::new();
    };
    let Some(NodeEnum::AlterTableStmt(a)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
        return Vec::new();
    };
    let Some(t) = relation_name(&a.relation) else {
        return Vec::new();
    };
    a.cmds
        .iter()
        .filter_map(|c| match c.node.as_ref()? {
            NodeEnum::AlterTableCmd(c)
                if c.subtype == protobuf::AlterTableType::AtAddColumn as i32 =>
            {
                match c.def.as_ref()?.node.as_ref()? {
                    NodeEnum::ColumnDef(d) => Some((t.clone(), d.colname.clone())),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// A statement that adds one column — `ALTER TABLE t ADD COLUMN c …`, nothing else — made
/// to add it to `onto` instead (a relation name, each part quoted, as `pg_temp.probe`):
/// (the table as written, each part quoted; the column; the statement on `onto`). `None`
/// for any other statement.
pub fn column_added_onto(sql: &str, onto: (&str, &str)) -> Option<(String, String, String)> {
    let mut parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_mut_slice() else {
        return None;
    };
    let Some(NodeEnum::AlterTableStmt(a)) = raw.stmt.as_mut().and_then(|n| n.node.as_mut()) else {
        return None;
    };
    let [cmd] = a.cmds.as_slice() else {
        return None;
    };
    let column = match cmd.node.as_ref()? {
        NodeEnum::AlterTableCmd(c) if c.subtype == protobuf::AlterTableType::AtAddColumn as i32 => {
            match c.def.as_ref()?.node.as_ref()? {
                NodeEnum::ColumnDef(d) => d.colname.clone(),
                _ => return None,
            }
        }
        _ => return None,
    };
    let table = relation_name(&a.relation)?;
    let relation = a.relation.as_mut()?;
    relation.schemaname = onto.0.to_string();
    relation.relname = onto.1.to_string();
    let probe = pg_query::deparse(&parsed.protobuf).ok()?;
    Some((table, column, probe))
}

/// A statement that changes table `table` (as written, each part quoted) — `ALTER TABLE` of
/// it, or a rename of one of its columns or constraints — made to change `onto` (schema,
/// name) instead: a later step of a migration replayed on a probe. `None` for any other
/// statement, or one of another table.
pub fn altered_onto(sql: &str, table: &str, onto: (&str, &str)) -> Option<String> {
    use protobuf::ObjectType as O;
    let mut parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_mut_slice() else {
        return None;
    };
    let relation = match raw.stmt.as_mut().and_then(|n| n.node.as_mut())? {
        NodeEnum::AlterTableStmt(a) if a.objtype == O::ObjectTable as i32 => &mut a.relation,
        // (a constraint's rename says no relation type)
        NodeEnum::RenameStmt(r)
            if r.rename_type == O::ObjectColumn as i32
                && r.relation_type == O::ObjectTable as i32
                || r.rename_type == O::ObjectTabconstraint as i32 =>
        {
            &mut r.relation
        }
        _ => return None,
    };
    if relation_name(relation)? != table {
        return None;
    }
    let r = relation.as_mut()?;
    (r.schemaname, r.relname) = (onto.0.to_string(), onto.1.to_string());
    pg_query::deparse(&parsed.protobuf).ok()
}

/// The table an `ALTER TABLE` statement changes, as written, each part quoted. `None` for
/// any other statement.
pub fn altered_table(sql: &str) -> Option<String> {
    let parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    match raw.stmt.as_ref()?.node.as_ref()? {
        NodeEnum::AlterTableStmt(a) if a.objtype == protobuf::ObjectType::ObjectTable as i32 => {
            relation_name(&a.relation)
        }
        _ => None,
    }
}

/// An `ALTER TABLE` statement with the columns of `renames` (old name, new name) called by
/// their new names: each unqualified identifier of an old name (the commands' columns and
/// those of their expressions: `ALTER COLUMN c TYPE t USING c::t`, a check) — a statement
/// of the stream run on a table whose columns the target renamed first. `None` for any
/// other statement, or when no name changes.
pub fn columns_renamed(sql: &str, renames: &[(String, String)]) -> Option<String> {
    altered_table(sql)?;
    let scanned = pg_query::scan(sql).ok()?;
    let tokens = scanned.tokens;
    let text = |t: &protobuf::ScanToken| sql.get(t.start as usize..t.end as usize).unwrap_or("");
    let dot = |i: Option<usize>| {
        i.and_then(|i| tokens.get(i))
            .is_some_and(|t| text(t) == ".")
    };
    let mut edits = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let raw = text(t);
        let name = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(q) => q.replace("\"\"", "\""),
            None if t.keyword_kind == 0
                && (raw.starts_with(|c: char| c.is_alphabetic()) || raw.starts_with('_')) =>
            {
                raw.to_lowercase()
            }
            None => continue,
        };
        if dot(i.checked_sub(1)) || dot(Some(i + 1)) {
            continue;
        }
        if let Some((_, new)) = renames.iter().find(|(old, _)| *old == name) {
            edits.push((t.start as usize, t.end as usize, quote_ident(new)));
        }
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = sql.to_string();
    for (start, end, with) in edits.into_iter().rev() {
        out.replace_range(start..end, &with);
    }
    Some(out)
}

/// What a statement makes on a table that a probe can make too: see [`object_made_onto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// `CREATE [UNIQUE] INDEX name ON table …`.
    Index,
    /// `ALTER TABLE table ADD CONSTRAINT name …` (check, unique, primary key, exclusion,
    /// foreign key).
    Constraint,
}

/// One index or constraint a statement makes, and the statement made to make it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeOnto {
    pub made: Made,
    /// The table as written, each part quoted.
    pub table: String,
    /// The index's or constraint's name.
    pub name: String,
    /// The statement on the other table, the object under the other name.
    pub probe: String,
    /// The other table as the probe's statement writes it (in the table's schema), each
    /// part quoted.
    pub probe_table: String,
}

/// A statement that makes one named index (`CREATE [UNIQUE] INDEX name ON table …`) or one
/// named constraint (`ALTER TABLE table ADD CONSTRAINT name …`), nothing else, made to make
/// it on table `onto` of the table's schema under the name `as_name`. `None` for any other
/// statement.
pub fn object_made_onto(sql: &str, onto: &str, as_name: &str) -> Option<MadeOnto> {
    let mut parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_mut_slice() else {
        return None;
    };
    let (made, relation, name) = match raw.stmt.as_mut().and_then(|n| n.node.as_mut())? {
        NodeEnum::IndexStmt(i) if !i.idxname.is_empty() => {
            let name = std::mem::replace(&mut i.idxname, as_name.to_string());
            (Made::Index, &mut i.relation, name)
        }
        NodeEnum::AlterTableStmt(a) => {
            let [cmd] = a.cmds.as_mut_slice() else {
                return None;
            };
            let name = match cmd.node.as_mut()? {
                NodeEnum::AlterTableCmd(c)
                    if c.subtype == protobuf::AlterTableType::AtAddConstraint as i32 =>
                {
                    match c.def.as_mut()?.node.as_mut()? {
                        NodeEnum::Constraint(k) if !k.conname.is_empty() => {
                            std::mem::replace(&mut k.conname, as_name.to_string())
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            };
            (Made::Constraint, &mut a.relation, name)
        }
        _ => return None,
    };
    let (table, probe_table) = renamed_relation(relation, onto)?;
    let probe = pg_query::deparse(&parsed.protobuf).ok()?;
    Some(MadeOnto {
        made,
        table,
        name,
        probe,
        probe_table,
    })
}

/// What kind of object [`object_made_as`] found made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadeKind {
    /// `CREATE TYPE … AS ENUM`, `CREATE TYPE … AS (…)` or `CREATE DOMAIN`.
    Type,
    /// `CREATE VIEW`.
    View,
    /// `CREATE TABLE`.
    Table,
}

/// A table, type or view a statement makes, and the statement made to make it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeAs {
    pub kind: MadeKind,
    /// The object's name as written, each part quoted.
    pub name: String,
    /// The statement making it under the other name, in the same schema.
    pub probe: String,
    /// The other name as the probe's statement writes it, each part quoted.
    pub probe_name: String,
    /// A table's (schema, name) as written, unquoted, when qualified.
    pub table: Option<(String, String)>,
}

/// A statement that makes one table, type (enum, composite, domain) or view (not `OR
/// REPLACE`), nothing else, made to make it under the name `as_name` in the same schema.
/// `None` for any other statement.
pub fn object_made_as(sql: &str, as_name: &str) -> Option<MadeAs> {
    // A name list (`schema`, `name`): the name replaced; (as written, as made).
    fn renamed(list: &mut [protobuf::Node], as_name: &str) -> Option<(String, String)> {
        let names = name_list(list, as_name)?;
        match list.last_mut()?.node.as_mut()? {
            NodeEnum::String(s) => s.sval = as_name.to_string(),
            _ => return None,
        }
        Some(names)
    }
    let mut parsed = pg_query::parse(sql).ok()?;
    let [raw] = parsed.protobuf.stmts.as_mut_slice() else {
        return None;
    };
    let mut table = None;
    let (kind, (name, probe_name)) = match raw.stmt.as_mut().and_then(|n| n.node.as_mut())? {
        NodeEnum::CreateEnumStmt(e) => (MadeKind::Type, renamed(&mut e.type_name, as_name)?),
        NodeEnum::CreateDomainStmt(d) => (MadeKind::Type, renamed(&mut d.domainname, as_name)?),
        NodeEnum::CompositeTypeStmt(c) => {
            (MadeKind::Type, renamed_relation(&mut c.typevar, as_name)?)
        }
        NodeEnum::ViewStmt(v) if !v.replace => {
            (MadeKind::View, renamed_relation(&mut v.view, as_name)?)
        }
        NodeEnum::CreateStmt(c) => {
            table = c
                .relation
                .as_ref()
                .filter(|r| !r.schemaname.is_empty())
                .map(|r| (r.schemaname.clone(), r.relname.clone()));
            (MadeKind::Table, renamed_relation(&mut c.relation, as_name)?)
        }
        _ => return None,
    };
    let probe = pg_query::deparse(&parsed.protobuf).ok()?;
    Some(MadeAs {
        kind,
        name,
        probe,
        probe_name,
        table,
    })
}

/// A name list (`schema`, `name`) as written, and with its last part `last` instead, each
/// part quoted.
fn name_list(list: &[protobuf::Node], last: &str) -> Option<(String, String)> {
    let mut parts = list
        .iter()
        .map(|n| match n.node.as_ref()? {
            NodeEnum::String(s) => Some(quote_ident(&s.sval)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let written = parts.join(".");
    *parts.last_mut()? = quote_ident(last);
    Some((written, parts.join(".")))
}

/// A relation renamed `as_name` in its schema: (its name as written, as made), each part
/// quoted.
fn renamed_relation(r: &mut Option<RangeVar>, as_name: &str) -> Option<(String, String)> {
    let written = relation_name(r)?;
    let r = r.as_mut()?;
    r.relname = as_name.to_string();
    let made = relation_name(&Some(r.clone()))?;
    Some((written, made))
}

/// A relation's name as written, each part quoted.
fn relation_name(r: &Option<RangeVar>) -> Option<String> {
    r.as_ref().map(|r| {
        if r.schemaname.is_empty() {
            quote_ident(&r.relname)
        } else {
            format!("{}.{}", quote_ident(&r.schemaname), quote_ident(&r.relname))
        }
    })
}

/// A PL/pgSQL body has no deparser: PostgreSQL's own SQL scanner finds each identifier
/// token naming a replicated schema that qualifies a name (`app.t`, `"app".f(…)`,
/// `app.t%rowtype`) and only those tokens are rewritten; string literals (dynamic SQL
/// included), comments and everything else keep their bytes. When such a name is also used
/// unqualified in the body (a variable, an alias, a block label), `app.x` might not be a
/// schema reference: the body is then left as written, with a warning.
pub fn plpgsql_body(body: String, map: &SchemaMap) -> String {
    if map.apply_schema.is_none() || !map.replicated.iter().any(|s| body.contains(s.as_str())) {
        return body;
    }
    let Ok(scanned) = pg_query::scan(&body) else {
        return body;
    };
    let tokens = scanned.tokens;
    let text = |t: &protobuf::ScanToken| body.get(t.start as usize..t.end as usize).unwrap_or("");
    let is = |i: usize, s: &str| tokens.get(i).is_some_and(|t| text(t) == s);
    // The name an identifier token stands for (keywords too: a schema may be called so).
    let name = |t: &protobuf::ScanToken| -> Option<String> {
        let raw = text(t);
        if let Some(q) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            return Some(q.replace("\"\"", "\""));
        }
        (raw.chars().next()?.is_alphabetic() || raw.starts_with('_')).then(|| raw.to_lowercase())
    };
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let Some(n) = name(t) else { continue };
        if !map.replicated.contains(&n) {
            continue;
        }
        let qualifies = is(i + 1, ".") && !(i > 0 && is(i - 1, "."));
        if !qualifies {
            tracing::warn!(schema = %n, "a PL/pgSQL body uses the name of a replicated schema unqualified (a variable, alias or label?): copied as written, not re-targeted to apply_schema");
            return body;
        }
        edits.push((t.start as usize, t.end as usize, ident(map.map(&n))));
    }
    let mut out = body.clone();
    for (start, end, with) in edits.into_iter().rev() {
        out.replace_range(start..end, &with);
    }
    out
}

/// An identifier as PostgreSQL would print it: bare when it is a plain lower-case name and
/// no keyword (the scanner says), quoted otherwise.
fn ident(name: &str) -> String {
    let plain = name.chars().enumerate().all(|(i, c)| {
        c == '_' || c.is_ascii_lowercase() || (i > 0 && (c.is_ascii_digit() || c == '$'))
    });
    let keyword = pg_query::scan(name)
        .map(|s| s.tokens.len() != 1 || s.tokens[0].keyword_kind != 0)
        .unwrap_or(true);
    if plain && !name.is_empty() && !keyword {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

fn select(s: &mut protobuf::SelectStmt, map: &SchemaMap) -> Walk {
    if s.into_clause.is_some() || !s.locking_clause.is_empty() || !s.window_clause.is_empty() {
        return Err("SELECT with INTO, locking or WINDOW".into());
    }
    all(&mut s.distinct_clause, map)?;
    all(&mut s.target_list, map)?;
    all(&mut s.from_clause, map)?;
    opt(&mut s.where_clause, map)?;
    all(&mut s.group_clause, map)?;
    opt(&mut s.having_clause, map)?;
    all(&mut s.values_lists, map)?;
    all(&mut s.sort_clause, map)?;
    opt(&mut s.limit_offset, map)?;
    opt(&mut s.limit_count, map)?;
    with(&mut s.with_clause, map)?;
    if let Some(l) = s.larg.as_mut() {
        select(l, map)?;
    }
    if let Some(r) = s.rarg.as_mut() {
        select(r, map)?;
    }
    Ok(())
}

fn walk_enum(n: &mut NodeEnum, map: &SchemaMap) -> Walk {
    match n {
        NodeEnum::RangeVar(r) => {
            rename(r, map);
            Ok(())
        }
        NodeEnum::TypeName(t) => {
            names(&mut t.names, map);
            Ok(())
        }
        NodeEnum::SelectStmt(s) => select(s, map),
        NodeEnum::InsertStmt(s) => {
            range_var(&mut s.relation, map);
            with(&mut s.with_clause, map)?;
            opt(&mut s.select_stmt, map)?;
            if let Some(c) = s.on_conflict_clause.as_mut() {
                all(&mut c.target_list, map)?;
                opt(&mut c.where_clause, map)?;
            }
            all(&mut s.returning_list, map)
        }
        NodeEnum::UpdateStmt(s) => {
            range_var(&mut s.relation, map);
            with(&mut s.with_clause, map)?;
            all(&mut s.target_list, map)?;
            all(&mut s.from_clause, map)?;
            opt(&mut s.where_clause, map)?;
            all(&mut s.returning_list, map)
        }
        NodeEnum::DeleteStmt(s) => {
            range_var(&mut s.relation, map);
            with(&mut s.with_clause, map)?;
            all(&mut s.using_clause, map)?;
            opt(&mut s.where_clause, map)?;
            all(&mut s.returning_list, map)
        }
        NodeEnum::ViewStmt(v) => {
            range_var(&mut v.view, map);
            opt(&mut v.query, map)
        }
        NodeEnum::JoinExpr(j) => {
            opt(&mut j.larg, map)?;
            opt(&mut j.rarg, map)?;
            opt(&mut j.quals, map)
        }
        NodeEnum::RangeSubselect(r) => opt(&mut r.subquery, map),
        NodeEnum::RangeFunction(r) => all(&mut r.functions, map),
        NodeEnum::SubLink(l) => {
            opt(&mut l.testexpr, map)?;
            opt(&mut l.subselect, map)
        }
        NodeEnum::SortBy(b) => opt(&mut b.node, map),
        NodeEnum::CommonTableExpr(c) => opt(&mut c.ctequery, map),
        NodeEnum::List(l) => all(&mut l.items, map),
        NodeEnum::ResTarget(r) => opt(&mut r.val, map),
        NodeEnum::FuncCall(f) => {
            names(&mut f.funcname, map);
            all(&mut f.args, map)?;
            opt(&mut f.agg_filter, map)
        }
        NodeEnum::TypeCast(c) => {
            type_name(&mut c.type_name, map);
            // `'schema.name'::regclass` names a relation inside a literal (sequence
            // defaults print this way): rename the schema of that name too.
            let is_regclass = c.type_name.as_ref().is_some_and(|t| {
                t.names
                    .last()
                    .and_then(|n| n.node.as_ref())
                    .is_some_and(|n| matches!(n, NodeEnum::String(s) if s.sval == "regclass"))
            });
            if is_regclass {
                if let Some(NodeEnum::AConst(a)) = c.arg.as_mut().and_then(|a| a.node.as_mut()) {
                    if let Some(pg_query::protobuf::a_const::Val::Sval(s)) = a.val.as_mut() {
                        if let Some(renamed) = regclass_literal(&s.sval, map) {
                            s.sval = renamed;
                        }
                    }
                }
                return Ok(());
            }
            opt(&mut c.arg, map)
        }
        NodeEnum::AExpr(a) => {
            names(&mut a.name, map);
            opt(&mut a.lexpr, map)?;
            opt(&mut a.rexpr, map)
        }
        NodeEnum::BoolExpr(b) => all(&mut b.args, map),
        NodeEnum::NullTest(t) => opt(&mut t.arg, map),
        NodeEnum::BooleanTest(t) => opt(&mut t.arg, map),
        NodeEnum::CaseExpr(c) => {
            opt(&mut c.arg, map)?;
            all(&mut c.args, map)?;
            opt(&mut c.defresult, map)
        }
        NodeEnum::CaseWhen(w) => {
            opt(&mut w.expr, map)?;
            opt(&mut w.result, map)
        }
        NodeEnum::CoalesceExpr(c) => all(&mut c.args, map),
        NodeEnum::MinMaxExpr(m) => all(&mut m.args, map),
        NodeEnum::RowExpr(r) => all(&mut r.args, map),
        NodeEnum::AArrayExpr(a) => all(&mut a.elements, map),
        NodeEnum::CollateClause(c) => {
            names(&mut c.collname, map);
            opt(&mut c.arg, map)
        }
        NodeEnum::NullIfExpr(_) => Err("NULLIF".into()),
        NodeEnum::ColumnRef(_)
        | NodeEnum::AConst(_)
        | NodeEnum::ParamRef(_)
        | NodeEnum::SqlvalueFunction(_)
        | NodeEnum::String(_)
        | NodeEnum::Integer(_)
        | NodeEnum::Float(_)
        | NodeEnum::Boolean(_)
        | NodeEnum::AStar(_) => Ok(()),
        NodeEnum::IndexStmt(i) => {
            range_var(&mut i.relation, map);
            all(&mut i.index_params, map)?;
            opt(&mut i.where_clause, map)
        }
        NodeEnum::IndexElem(e) => opt(&mut e.expr, map),
        NodeEnum::CreateStmt(c) => {
            range_var(&mut c.relation, map);
            all(&mut c.table_elts, map)?;
            all(&mut c.constraints, map)
        }
        NodeEnum::ColumnDef(c) => {
            type_name(&mut c.type_name, map);
            if let Some(cc) = c.coll_clause.as_mut() {
                names(&mut cc.collname, map);
            }
            opt(&mut c.raw_default, map)?;
            all(&mut c.constraints, map)
        }
        NodeEnum::Constraint(c) => {
            range_var(&mut c.pktable, map);
            opt(&mut c.raw_expr, map)?;
            opt(&mut c.where_clause, map)
        }
        NodeEnum::AlterTableStmt(a) => {
            range_var(&mut a.relation, map);
            all(&mut a.cmds, map)
        }
        NodeEnum::AlterTableCmd(c) => opt(&mut c.def, map),
        NodeEnum::CreateFunctionStmt(f) => {
            names(&mut f.funcname, map);
            all(&mut f.parameters, map)?;
            type_name(&mut f.return_type, map);
            sql_function_body(&mut f.options, map)?;
            search_path_setting(&mut f.options, map);
            // A SQL-standard body (BEGIN ATOMIC … END, or RETURN …) is parsed already.
            opt(&mut f.sql_body, map)
        }
        NodeEnum::FunctionParameter(p) => {
            type_name(&mut p.arg_type, map);
            opt(&mut p.defexpr, map)
        }
        NodeEnum::CreateDomainStmt(d) => {
            names(&mut d.domainname, map);
            type_name(&mut d.type_name, map);
            all(&mut d.constraints, map)
        }
        other => {
            Err(format!("{:?}", std::mem::discriminant(other))
                .replace("Discriminant", "node kind "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> SchemaMap {
        SchemaMap {
            apply_schema: Some("mirror".into()),
            replicated: ["app".to_string()].into(),
            tables: Default::default(),
        }
    }

    #[test]
    fn a_partition_condition_becomes_one_delete_and_nothing_else() {
        let c = "((m IS NOT NULL) AND (m = 'a'::app.mood))";
        assert_eq!(
            delete_where("\"mirror\".\"p\"", c, &map()).unwrap(),
            "DELETE FROM \"mirror\".\"p\" WHERE m IS NOT NULL AND m = 'a'::mirror.mood"
        );
        assert_eq!(
            delete_where("\"app\".\"p\"", "(k >= 1)", &SchemaMap::default()).unwrap(),
            "DELETE FROM \"app\".\"p\" WHERE ((k >= 1))"
        );
        for bad in [
            "true); drop table app.p; select (1",
            "true) returning *, (1",
            "k > 1) using app.q where (true",
            "",
        ] {
            assert!(
                delete_where("\"app\".\"p\"", bad, &SchemaMap::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn functional_index_is_retargeted_by_the_parser() {
        let out = statement(
            "CREATE INDEX t_lower ON app.t USING btree (lower(v), app.norm(w))",
            &map(),
        )
        .unwrap();
        assert_eq!(
            out,
            "CREATE INDEX t_lower ON mirror.t USING btree (lower(v), mirror.norm(w))"
        );
        let out = statement(
            "CREATE UNIQUE INDEX p ON app.t USING btree (a) WHERE (b > 'app.x'::text)",
            &map(),
        )
        .unwrap();
        assert_eq!(
            out,
            "CREATE UNIQUE INDEX p ON mirror.t USING btree (a) WHERE b > 'app.x'::text"
        );
    }

    #[test]
    fn expressions_keep_literals_and_other_schemas() {
        assert_eq!(
            expression("'app.value'::app.mood", &map()).unwrap(),
            "'app.value'::mirror.mood"
        );
        assert_eq!(
            expression("other.f(app.g(1))", &map()).unwrap(),
            "other.f(mirror.g(1))"
        );
        assert_eq!(expression("now()", &map()).unwrap(), "now()");
        let same = SchemaMap::default();
        assert_eq!(expression("app.g(1)", &same).unwrap(), "app.g(1)");
    }

    #[test]
    fn collations_of_the_replicated_schema_are_retargeted() {
        assert_eq!(
            statement(
                r#"create table app.t (a text collate "app"."ci", b text collate pg_catalog."C", c text collate other.x)"#,
                &map()
            )
            .unwrap(),
            r#"CREATE TABLE mirror.t (a text COLLATE mirror.ci, b text COLLATE pg_catalog."C", c text COLLATE other.x)"#
        );
        assert_eq!(
            statement(
                "alter table app.t alter column a type text collate app.ci",
                &map()
            )
            .unwrap(),
            "ALTER TABLE mirror.t ALTER COLUMN a TYPE text COLLATE mirror.ci"
        );
        // The deparser prints COLLATE after USING, where it belongs to the USING expression
        // (the diff therefore never writes both in one statement).
        assert_eq!(
            statement(
                "alter table app.t alter column a type text collate app.ci using a::text",
                &map()
            )
            .unwrap(),
            "ALTER TABLE mirror.t ALTER COLUMN a TYPE text USING a::text COLLATE mirror.ci"
        );
        assert_eq!(
            expression("lower(a) collate app.ci", &map()).unwrap(),
            "lower(a) COLLATE mirror.ci"
        );
    }

    #[test]
    fn function_signature_is_retargeted() {
        let out = statement(
            "CREATE OR REPLACE FUNCTION app.score(x app.mood, y integer DEFAULT 1)\n RETURNS app.pair\n LANGUAGE sql\nAS $function$select row(1, 'app.t')::app.pair$function$",
            &map(),
        )
        .unwrap();
        assert!(out.starts_with("CREATE OR REPLACE FUNCTION mirror.score(x mirror.mood, y int = 1) RETURNS mirror.pair"), "{out}");
        assert!(
            out.contains("'app.t'") && out.contains("::mirror.pair"),
            "a SQL body is re-targeted by the parser, its literals kept: {out}"
        );
        let out = statement(
            "CREATE FUNCTION app.bump(k int) RETURNS void LANGUAGE sql AS $$ insert into app.log select k, now() from app.t where id = k; update app.t set n = n + 1 where id = k $$",
            &map(),
        )
        .unwrap();
        assert!(
            out.contains("INSERT INTO mirror.log")
                && out.contains("FROM mirror.t")
                && out.contains("UPDATE mirror.t"),
            "{out}"
        );
        let out = statement(
            "CREATE FUNCTION app.n() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM app.t; END",
            &map(),
        )
        .unwrap();
        assert!(out.contains("FROM mirror.t"), "{out}");
        // PL/pgSQL bodies: their qualified names, token by token.
        let out = statement(
            "CREATE FUNCTION app.p() RETURNS int LANGUAGE plpgsql AS $$ begin return (select count(*) from app.t); end $$",
            &map(),
        )
        .unwrap();
        assert!(out.contains("from mirror.t"), "{out}");
        // The function's own search_path: the replicated schema is the target's.
        let out = statement(
            "CREATE OR REPLACE FUNCTION app.q()\n RETURNS integer\n LANGUAGE plpgsql\n SET search_path TO 'app', 'pg_catalog', 'Other', ''\nAS $function$ begin return g(); end $function$",
            &map(),
        )
        .unwrap();
        assert!(
            out.contains(r#"SET search_path TO mirror, pg_catalog, "Other", ''"#),
            "{out}"
        );
        let out = statement(
            "CREATE FUNCTION app.q() RETURNS int LANGUAGE sql SET work_mem = '64MB' SET search_path = app AS 'select 1'",
            &map(),
        )
        .unwrap();
        assert!(
            out.contains(r#"work_mem TO "64MB""#) && out.contains("search_path TO mirror AS"),
            "{out}"
        );
    }

    #[test]
    fn unsupported_nodes_are_reported() {
        assert!(matches!(
            statement("SELECT 1 FROM app.t FOR UPDATE", &map()),
            Err(RetargetError::Unsupported { .. })
        ));
    }

    #[test]
    fn a_column_added_is_made_onto_another_table() {
        let (table, column, probe) = column_added_onto(
            r#"alter table "app"."T x" add column "c d" integer default 7 not null"#,
            ("pg_temp", "probe"),
        )
        .expect("one column added");
        assert_eq!(
            table,
            format!("{}.{}", quote_ident("app"), quote_ident("T x"))
        );
        assert_eq!(column, "c d");
        assert!(probe.contains("pg_temp.probe"), "{probe}");
        assert!(
            probe.contains(r#"ADD COLUMN "c d" int DEFAULT 7 NOT NULL"#),
            "{probe}"
        );
        assert!(!probe.contains("T x"), "{probe}");
        for other in [
            "alter table app.t add column a int, add column b int",
            "alter table app.t drop column a",
            "alter table app.t alter column a type bigint",
            "create table app.t (a int)",
            "not sql at all",
        ] {
            assert!(
                column_added_onto(other, ("pg_temp", "probe")).is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn a_later_change_of_a_table_is_made_onto_another_table() {
        let table = format!("{}.{}", quote_ident("app"), quote_ident("T x"));
        let onto = ("pg_temp", "probe");
        for (sql, kept) in [
            (
                r#"alter table "app"."T x" alter column "c d" type varchar(60)"#,
                "ALTER COLUMN \"c d\" TYPE varchar(60)",
            ),
            (
                r#"alter table "app"."T x" rename column "c d" to e"#,
                "RENAME COLUMN \"c d\" TO e",
            ),
            (
                r#"alter table "app"."T x" rename constraint k to k2"#,
                "RENAME CONSTRAINT k TO k2",
            ),
        ] {
            let moved = altered_onto(sql, &table, onto).expect(sql);
            assert!(moved.contains("pg_temp.probe"), "{moved}");
            assert!(moved.contains(kept), "{moved}");
            assert!(!moved.contains("T x"), "{moved}");
        }
        for other in [
            r#"alter table "app"."other" alter column a type bigint"#,
            r#"alter table "app"."T x" rename to y"#,
            r#"alter index "app"."T x" rename to y"#,
            r#"create index on "app"."T x" (a)"#,
            "not sql at all",
        ] {
            assert!(altered_onto(other, &table, onto).is_none(), "{other}");
        }
    }

    #[test]
    fn columns_renamed_since_are_called_by_their_new_names() {
        let renames = [("id".to_string(), "k 55".to_string())];
        assert_eq!(
            columns_renamed(
                r#"alter table "app"."id" alter column "id" type bigint using "id"::bigint"#,
                &renames
            )
            .as_deref(),
            Some(r#"alter table "app"."id" alter column "k 55" type bigint using "k 55"::bigint"#)
        );
        assert_eq!(
            columns_renamed(
                "ALTER TABLE app.t ADD CONSTRAINT c CHECK (id > 0 AND other > 0)",
                &renames
            )
            .as_deref(),
            Some(r#"ALTER TABLE app.t ADD CONSTRAINT c CHECK ("k 55" > 0 AND other > 0)"#)
        );
        assert_eq!(
            columns_renamed("alter table app.t alter column x type text", &renames),
            None
        );
        assert_eq!(
            columns_renamed("create index on app.t (id)", &renames),
            None
        );
        assert_eq!(
            altered_table("ALTER TABLE app.t ADD COLUMN c int").as_deref(),
            Some(r#""app"."t""#)
        );
    }

    #[test]
    fn an_index_or_constraint_made_is_made_onto_another_table() {
        let onto = "probe";
        let i = object_made_onto(
            r#"CREATE UNIQUE INDEX "i x" ON ONLY "app"."T x" USING btree (lower(v)) WHERE (v > 'a')"#,
            onto,
            "probe_object",
        )
        .expect("one index made");
        assert_eq!(
            (
                i.made,
                i.table.as_str(),
                i.probe_table.as_str(),
                i.name.as_str()
            ),
            (Made::Index, r#""app"."T x""#, r#""app"."probe""#, "i x")
        );
        assert!(
            i.probe.contains("probe_object ON ONLY app.probe"),
            "{}",
            i.probe
        );
        assert!(
            i.probe.contains("lower(v)") && i.probe.contains("WHERE"),
            "{}",
            i.probe
        );
        let c = object_made_onto(
            r#"alter table "app"."c" add constraint "c fk" foreign key (t_id) references app.t(id)"#,
            onto,
            "probe_object",
        )
        .expect("one constraint made");
        assert_eq!(
            (c.made, c.table.as_str(), c.name.as_str()),
            (Made::Constraint, r#""app"."c""#, "c fk")
        );
        assert!(
            c.probe
                .contains("app.probe ADD CONSTRAINT probe_object FOREIGN KEY")
                && c.probe.contains("REFERENCES app.t"),
            "{}",
            c.probe
        );
        let unqualified =
            object_made_onto("alter table t add constraint k check (v > 0)", onto, "p")
                .expect("one constraint made");
        assert_eq!(
            (unqualified.table.as_str(), unqualified.probe_table.as_str()),
            (r#""t""#, r#""probe""#)
        );
        assert!(unqualified
            .probe
            .contains("ALTER TABLE probe ADD CONSTRAINT p CHECK"));
        for other in [
            "create index on app.t (v)",
            "alter table app.t add check (v > 0)",
            "alter table app.t add constraint a check (v > 0), add constraint b check (v < 9)",
            "alter table app.t add column a int",
            "alter table app.t drop constraint a",
            "not sql at all",
        ] {
            assert!(object_made_onto(other, onto, "p").is_none(), "{other}");
        }
    }

    #[test]
    fn a_type_or_view_made_is_made_under_another_name() {
        let cases = [
            (
                r#"create type "app"."mo.od" as enum ('a', 'b')"#,
                MadeKind::Type,
                r#""app"."mo.od""#,
                "AS ENUM ('a', 'b')",
            ),
            (
                r#"create type "app"."pair" as ("x" integer, "y" text)"#,
                MadeKind::Type,
                r#""app"."pair""#,
                "AS (x int, y text)",
            ),
            (
                r#"create domain "app"."pos" as integer not null CHECK (VALUE > 0)"#,
                MadeKind::Type,
                r#""app"."pos""#,
                "CHECK (value > 0)",
            ),
            (
                "create view app.v as select id from app.t",
                MadeKind::View,
                r#""app"."v""#,
                "AS SELECT id FROM app.t",
            ),
            (
                r#"create table "app"."t" ("id" integer not null, "v" text collate "C")"#,
                MadeKind::Table,
                r#""app"."t""#,
                r#"(id int NOT NULL, v text COLLATE "C")"#,
            ),
        ];
        for (sql, kind, name, body) in cases {
            let m = object_made_as(sql, "probe").unwrap_or_else(|| panic!("{sql}"));
            assert_eq!((m.kind, m.name.as_str()), (kind, name), "{sql}");
            assert_eq!(m.probe_name, r#""app"."probe""#, "{sql}");
            assert!(m.probe.contains("app.probe"), "{}", m.probe);
            assert!(m.probe.contains(body), "{}", m.probe);
        }
        for other in [
            "create or replace view app.v as select 1",
            "create table app.t as select 1",
            "create type app.r as range (subtype = int4)",
            "not sql at all",
        ] {
            assert!(object_made_as(other, "probe").is_none(), "{other}");
        }
    }

    #[test]
    fn relation_renames_are_read_unquoted() {
        assert_eq!(
            relation_renamed(r#"alter table "app"."T x" rename to "u""#),
            Some((("app".into(), "T x".into()), ("app".into(), "u".into())))
        );
        assert_eq!(relation_renamed("alter table t rename to u"), None);
        assert_eq!(
            relation_renamed("alter table app.t rename column a to b"),
            None
        );
    }

    #[test]
    fn renames_are_read() {
        let q = |s: &str| s.to_string();
        let cases = [
            (
                r#"alter table "app"."t" rename to "t 2""#,
                Renamed::Relation {
                    from: q(r#""app"."t""#),
                    to: q(r#""app"."t 2""#),
                },
            ),
            (
                r#"alter index "app"."t_v" rename to "t_w""#,
                Renamed::Relation {
                    from: q(r#""app"."t_v""#),
                    to: q(r#""app"."t_w""#),
                },
            ),
            (
                r#"alter type "app"."mood" rename to "feeling""#,
                Renamed::Type {
                    from: q(r#""app"."mood""#),
                    to: q(r#""app"."feeling""#),
                },
            ),
            (
                r#"alter domain "app"."pos" rename to "positive""#,
                Renamed::Type {
                    from: q(r#""app"."pos""#),
                    to: q(r#""app"."positive""#),
                },
            ),
            (
                r#"alter table "app"."t" rename column "v" to "w""#,
                Renamed::Column {
                    of: q(r#""app"."t""#),
                    from: q("v"),
                    to: q("w"),
                },
            ),
            (
                r#"alter table "app"."t" rename constraint "c" to "d""#,
                Renamed::Constraint {
                    of: q(r#""app"."t""#),
                    from: q("c"),
                    to: q("d"),
                },
            ),
            (
                r#"alter type "app"."pair" rename attribute "x" to "y""#,
                Renamed::Attribute {
                    of: q(r#""app"."pair""#),
                    from: q("x"),
                    to: q("y"),
                },
            ),
            (
                r#"alter type "app"."mood" rename value 'sad' to 'blue'"#,
                Renamed::Label {
                    of: q(r#""app"."mood""#),
                    from: q("sad"),
                    to: q("blue"),
                },
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(renamed(sql), Some(want), "{sql}");
        }
        for other in [
            "alter table app.t add column a int",
            "alter schema app rename to b",
            "alter type app.mood add value 'x'",
            "not sql",
        ] {
            assert_eq!(renamed(other), None, "{other}");
        }
    }

    #[test]
    fn tables_dropped_are_read() {
        assert_eq!(
            tables_dropped(r#"drop table if exists "app"."T x", app.u cascade"#),
            [
                format!("{}.{}", quote_ident("app"), quote_ident("T x")),
                format!("{}.{}", quote_ident("app"), quote_ident("u"))
            ]
        );
        assert_eq!(tables_dropped("drop table t"), [quote_ident("t")]);
        assert!(tables_dropped("drop view app.t").is_empty());
        assert!(tables_dropped("drop index app.i").is_empty());
        assert!(tables_dropped("not sql at all").is_empty());
    }

    #[test]
    fn tables_created_are_read() {
        assert_eq!(
            table_created(r#"create table "app"."T x" ("id" int not null)"#),
            Some(format!("{}.{}", quote_ident("app"), quote_ident("T x")))
        );
        assert_eq!(
            table_created("create unlogged table t (id int) partition by range (id)"),
            Some(quote_ident("t"))
        );
        assert_eq!(
            table_created("create table app.p partition of app.t for values from (1) to (2)"),
            Some(format!("{}.{}", quote_ident("app"), quote_ident("p")))
        );
        assert_eq!(table_created("create index i on app.t (id)"), None);
        assert_eq!(table_created("create table app.t as select 1"), None);
        assert_eq!(table_created("not sql at all"), None);
    }

    #[test]
    fn column_renames_and_drops_are_read() {
        assert_eq!(
            column_renames_and_drops(r#"ALTER TABLE app."T" RENAME COLUMN "a b" TO c"#),
            [(
                format!("{}.{}", quote_ident("app"), quote_ident("T")),
                "a b".to_string(),
                Some("c".to_string())
            )]
        );
        assert_eq!(
            column_renames_and_drops("alter table only app.t drop column x, drop column if exists y cascade, add column z int"),
            [
                (format!("{}.{}", quote_ident("app"), quote_ident("t")), "x".to_string(), None),
                (format!("{}.{}", quote_ident("app"), quote_ident("t")), "y".to_string(), None)
            ]
        );
        assert!(column_renames_and_drops("alter table app.t rename to u").is_empty());
        assert!(column_renames_and_drops("alter table app.t rename constraint k to l").is_empty());
        assert!(column_renames_and_drops("alter table app.t add column z int").is_empty());
        assert!(column_renames_and_drops("not sql at all").is_empty());
    }

    #[test]
    fn columns_added_are_read() {
        let t = format!("{}.{}", quote_ident("app"), quote_ident("T"));
        assert_eq!(
            columns_added(
                r#"alter table app."T" drop column x, add column "x" text, add column if not exists y int default 1"#
            ),
            [(t.clone(), "x".to_string()), (t, "y".to_string())]
        );
        assert!(columns_added("alter table app.t drop column x").is_empty());
        assert!(columns_added("create table app.t (x int)").is_empty());
        assert!(columns_added("not sql").is_empty());
    }

    #[test]
    fn regclass_literals_are_renamed() {
        assert_eq!(
            expression("nextval('app.ticket_seq'::regclass)", &map()).unwrap(),
            "nextval('\"mirror\".\"ticket_seq\"'::regclass)"
        );
        assert_eq!(
            expression("nextval('\"app\".\"Seq\"'::regclass)", &map()).unwrap(),
            "nextval('\"mirror\".\"Seq\"'::regclass)"
        );
        assert_eq!(
            expression("nextval('plain'::regclass)", &map()).unwrap(),
            "nextval('plain'::regclass)"
        );
    }

    #[test]
    fn views_are_retargeted() {
        let out = statement(
            "CREATE VIEW app.v AS SELECT t.id, 'app.t' AS label FROM app.t JOIN other.u ON u.id = t.id \
             WHERE t.id IN (SELECT id FROM app.w) UNION SELECT 1, 'x' FROM app.f(2)",
            &map(),
        )
        .unwrap();
        assert_eq!(
            out,
            "CREATE VIEW mirror.v AS SELECT t.id, 'app.t' AS label FROM mirror.t JOIN other.u ON u.id = t.id \
             WHERE t.id IN (SELECT id FROM mirror.w) UNION SELECT 1, 'x' FROM mirror.f(2)"
        );
    }

    #[test]
    fn plpgsql_bodies_are_retargeted_token_by_token() {
        let body = "
declare n int; r app.t%rowtype;
begin
  select count(*) into n from app.t where note = 'app.t'; -- app.t in a comment
  insert into \"app\".log values (x);
  n := n + App.twice(x);
  execute 'select 1 from app.t';
  return n;
end";
        assert_eq!(
            plpgsql_body(body.to_string(), &map()),
            "
declare n int; r mirror.t%rowtype;
begin
  select count(*) into n from mirror.t where note = 'app.t'; -- app.t in a comment
  insert into mirror.log values (x);
  n := n + mirror.twice(x);
  execute 'select 1 from app.t';
  return n;
end"
        );
        // Through the statement walker, as the diff emits it.
        let out = statement(
            "CREATE FUNCTION app.f(x int) RETURNS int LANGUAGE plpgsql AS $$begin return app.g(x); end$$",
            &map(),
        )
        .unwrap();
        assert!(
            out.contains("mirror.f(") && out.contains("mirror.g(x)"),
            "{out}"
        );
        let quoted = SchemaMap {
            apply_schema: Some("Mirror Image".into()),
            replicated: ["app".to_string()].into(),
            tables: Default::default(),
        };
        assert_eq!(
            plpgsql_body("begin return app.g(1); end".into(), &quoted),
            "begin return \"Mirror Image\".g(1); end"
        );
        let keyword = SchemaMap {
            apply_schema: Some("select".into()),
            replicated: ["app".to_string()].into(),
            tables: Default::default(),
        };
        assert_eq!(
            plpgsql_body("begin return app.g(1); end".into(), &keyword),
            "begin return \"select\".g(1); end"
        );
    }

    #[test]
    fn plpgsql_bodies_using_the_schema_name_otherwise_are_kept() {
        for body in [
            "declare app record; begin select * into app from app.t; return app.id; end",
            "begin return (select app.id from app.t app); end",
            "<<app>> declare n int; begin return app.n; end",
        ] {
            assert_eq!(plpgsql_body(body.to_string(), &map()), body);
        }
    }

    fn renames() -> SchemaMap {
        SchemaMap::default().with_renames(
            [(
                ("app".to_string(), "orders".to_string()),
                ("copy".to_string(), "orders_v2".to_string()),
            )]
            .into(),
        )
    }

    #[test]
    fn renamed_tables_are_renamed_where_statements_name_them() {
        let m = renames();
        assert_eq!(
            statement("CREATE INDEX o_a ON app.orders USING btree (a)", &m).unwrap(),
            "CREATE INDEX o_a ON copy.orders_v2 USING btree (a)"
        );
        // Other tables, and a column or literal of the same name, stay.
        assert_eq!(
            if_needed(
                "ALTER TABLE app.lines ADD CONSTRAINT f FOREIGN KEY (o) REFERENCES app.orders(id)"
                    .to_string(),
                &m
            ),
            "ALTER TABLE app.lines ADD CONSTRAINT f FOREIGN KEY (o) REFERENCES copy.orders_v2 (id)"
        );
        assert_eq!(
            if_needed(
                "CREATE VIEW app.v AS SELECT orders FROM app.orders JOIN other.orders USING (id) WHERE note = 'app.orders'"
                    .to_string(),
                &m
            ),
            "CREATE VIEW app.v AS SELECT orders FROM copy.orders_v2 JOIN other.orders USING (id) WHERE note = 'app.orders'"
        );
        // Text that cannot name the table is not parsed at all.
        assert_eq!(
            if_needed("drop table app.lines".to_string(), &m),
            "drop table app.lines"
        );
        // A foreign key's definition alone (what the initial load sends).
        assert_eq!(
            constraint(
                "FOREIGN KEY (o) REFERENCES app.orders(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED NOT VALID",
                &m
            )
            .unwrap(),
            "FOREIGN KEY (o) REFERENCES copy.orders_v2 (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED NOT VALID"
        );
        assert_eq!(
            constraint("FOREIGN KEY (o) REFERENCES app.other(id)", &m).unwrap(),
            "FOREIGN KEY (o) REFERENCES app.other (id)"
        );
    }

    #[test]
    fn enum_label_renames_are_read() {
        assert_eq!(
            enum_label_rename(r#"alter type "app"."Mood" rename value 'it''s' to 'v 2'"#),
            Some((r#""app"."Mood""#.into(), "it's".into(), "v 2".into()))
        );
        assert_eq!(enum_label_rename("alter type app.mood add value 'x'"), None);
        assert_eq!(enum_label_rename("alter table app.t rename to u"), None);
        assert_eq!(enum_label_rename("not sql"), None);
    }

    #[test]
    fn table_renames_are_read() {
        assert_eq!(
            table_rename(r#"alter table "app"."R x" rename to "r2""#),
            Some(("R x".into(), "r2".into()))
        );
        assert_eq!(table_rename("alter table app.t rename column a to b"), None);
        assert_eq!(table_rename("alter index app.i rename to j"), None);
        assert_eq!(table_rename("not sql"), None);
    }
}
