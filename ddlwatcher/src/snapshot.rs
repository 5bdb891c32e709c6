//! Reading the catalog model: one SQL query returns the whole [`Catalog`] as JSON.
//!
//! The same text serves twice. The replicator runs it as a query (diffing mode, install,
//! load, verify, check), and the source installs it as the function `catalog_snapshot` that
//! the event trigger calls inside the DDL's own transaction (event-trigger mode), so both
//! modes see the catalog through one implementation. The query returns every table whose
//! `schema.table` matches a regular expression (a superset filter); [`Catalog::restrict`]
//! then keeps one target's tables (by its `target_expression`), the user types they reach,
//! and the functions, views and sequences of their schemas.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use tokio_postgres::GenericClient;

use crate::catalog::{base_type_sql, key_index_sql, TypeDef, TypeKind, TypeRef, FIRST_USER_OID};
use crate::{Catalog, TargetExpression};

/// `TypeRef` as JSON (serde's form) for the type `oid` with typmod `typmod` (SQL expressions).
/// An array decides by its element; built-in types are printed by `format_type`.
fn type_ref_json(oid: &str, typmod: &str) -> String {
    format!(
        "(select case
                   when re.oid is not null and re.oid < {FIRST_USER_OID}
                     or re.oid is null and rt.oid < {FIRST_USER_OID}
                     then json_build_object('Builtin', pg_catalog.format_type(rt.oid, {typmod}))
                   when re.oid is not null
                     then json_build_object('User', json_build_object('oid', re.oid::int8,
                            'schema', ren.nspname::text, 'name', re.typname::text, 'dims', 1))
                   else json_build_object('User', json_build_object('oid', rt.oid::int8,
                            'schema', rtn.nspname::text, 'name', rt.typname::text, 'dims', 0))
                 end
            from pg_catalog.pg_type rt
            join pg_catalog.pg_namespace rtn on rtn.oid = rt.typnamespace
            left join pg_catalog.pg_type re on re.oid = rt.typelem and rt.typcategory = 'A'
            left join pg_catalog.pg_namespace ren on ren.oid = re.typnamespace
           where rt.oid = {oid})"
    )
}

/// The user type (if any) a column of type `oid` depends on: an array's element, or itself.
fn user_type_sql(oid: &str) -> String {
    format!(
        "(select case when re.oid is not null then case when re.oid >= {FIRST_USER_OID} then re.oid end
                      when rt.oid >= {FIRST_USER_OID} then rt.oid end
            from pg_catalog.pg_type rt
            left join pg_catalog.pg_type re on re.oid = rt.typelem and rt.typcategory = 'A'
           where rt.oid = {oid})"
    )
}

/// The extension that owns the object `oid` of catalog `class`, if any.
fn extension_sql(class: &str, oid: &str) -> String {
    format!(
        "(select x.extname::text from pg_catalog.pg_depend d
            join pg_catalog.pg_extension x on x.oid = d.refobjid
           where d.classid = '{class}'::pg_catalog.regclass and d.objid = {oid} and d.deptype = 'e'
             and d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
           limit 1)"
    )
}

/// Key columns of index `index` (an SQL expression) in key order, as a JSON array.
fn index_columns_json(index: &str) -> String {
    format!(
        "(select json_agg(ca.attname::text order by ck.ord)
            from pg_catalog.pg_index ci
            cross join lateral unnest(ci.indkey) with ordinality as ck(attnum, ord)
            join pg_catalog.pg_attribute ca on ca.attrelid = ci.indrelid and ca.attnum = ck.attnum
           where ci.indexrelid = {index})"
    )
}

fn build_sql() -> String {
    let column = format!(
        "json_build_object(
            'attnum', a.attnum,
            'name', a.attname::text,
            'type_name', pg_catalog.format_type(a.atttypid, a.atttypmod),
            'type_ref', {type_ref},
            'not_null', a.attnotnull,
            'generated', a.attgenerated <> '',
            'expression', pg_catalog.pg_get_expr(d.adbin, d.adrelid),
            'identity', nullif(a.attidentity, '')::text,
            'sequence', case when a.atthasdef or a.attidentity <> '' then
                          (select json_build_array(sn.nspname::text, s.relname::text)
                             from pg_catalog.pg_depend dep
                             join pg_catalog.pg_class s on s.oid = dep.objid
                             join pg_catalog.pg_namespace sn on sn.oid = s.relnamespace
                            where dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                              and dep.refobjid = a.attrelid and dep.refobjsubid = a.attnum
                              and dep.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                              and dep.deptype in ('a', 'i') and s.relkind = 'S'
                            order by s.oid limit 1) end,
            'text_form', coalesce((select bt.typcategory = 'A' or bt.oid in ('pg_catalog.json'::pg_catalog.regtype,
                                          'pg_catalog.jsonb'::pg_catalog.regtype, 'pg_catalog.xml'::pg_catalog.regtype)
                                     from pg_catalog.pg_type bt where bt.oid = {base}), false),
            'collation', {collation})",
        collation = collation_sql("a.attcollation", "a.atttypid"),
        type_ref = type_ref_json("a.atttypid", "a.atttypmod"),
        base = base_type_sql("a.atttypid"),
    );
    let table = format!(
        "json_build_object(
            'oid', r.oid::int8, 'schema', r.schema, 'name', r.name,
            'columns', coalesce((select json_agg({column} order by a.attnum)
                                   from pg_catalog.pg_attribute a
                                   left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
                                  where a.attrelid = r.oid and a.attnum > 0 and not a.attisdropped), '[]'),
            'primary_key', {pk},
            'primary_key_deferrable', (select case when k.condeferrable then k.condeferred end
                                         from pg_catalog.pg_constraint k where k.conrelid = r.oid and k.contype = 'p'),
            'primary_key_name', (select k.conname::text from pg_catalog.pg_constraint k
                                  where k.conrelid = r.oid and k.contype = 'p'),
            'unique_key', case when not exists (select 1 from pg_catalog.pg_index i where i.indrelid = r.oid and i.indisprimary)
                               then {unique} end,
            'indexes', coalesce((select json_agg(json_build_object(
                                   'name', c.relname::text, 'unique', i.indisunique, 'method', am.amname::text,
                                   'columns', case when i.indexprs is null and i.indpred is null
                                                   then coalesce({idx_cols}, '[]') end,
                                   'definition', pg_catalog.pg_get_indexdef(i.indexrelid),
                                   'object', i.indexrelid::pg_catalog.int8 || ' ' || coalesce(c.reloptions::text, '')) order by c.relname::text)
                                   from pg_catalog.pg_index i
                                   join pg_catalog.pg_class c on c.oid = i.indexrelid
                                   join pg_catalog.pg_am am on am.oid = c.relam
                                  -- Valid ones only: a concurrent build in progress or failed (its
                                  -- index left invalid) is not the table's index (yet).
                                  where i.indrelid = r.oid and not i.indisprimary and i.indisvalid
                                    -- Not an index backing a constraint of this table (a foreign key
                                    -- names the index it refers to in conindid too).
                                    and not exists (select 1 from pg_catalog.pg_constraint k
                                                     where k.conindid = i.indexrelid and k.conrelid = r.oid
                                                       and k.contype in ('p', 'u', 'x'))), '[]'),
            'constraints', coalesce((select json_agg(json_build_object(
                                       'name', k.conname::text, 'kind', k.contype::text,
                                       'definition', pg_catalog.pg_get_constraintdef(k.oid),
                                       'object', k.oid::pg_catalog.int8 || ' ' || k.convalidated || ' '
                                                 || k.condeferrable || ' ' || k.condeferred) order by k.conname::text)
                                       from pg_catalog.pg_constraint k
                                      where k.conrelid = r.oid and k.contype in ('f', 'u', 'c', 'x')), '[]'),
            'partitions', coalesce((select json_agg(json_build_object(
                                      'oid', pt.relid::int8, 'schema', pn.nspname::text, 'name', pc.relname::text,
                                      'constraint', pg_catalog.pg_get_partition_constraintdef(pt.relid)) order by pt.relid)
                                      from pg_catalog.pg_partition_tree(r.oid) pt
                                      join pg_catalog.pg_class pc on pc.oid = pt.relid
                                      join pg_catalog.pg_namespace pn on pn.oid = pc.relnamespace
                                     where pt.isleaf and pt.relid <> r.oid), '[]'))",
        pk = index_columns_json(
            "(select i.indexrelid from pg_catalog.pg_index i where i.indrelid = r.oid and i.indisprimary)"
        ),
        unique = index_columns_json(&key_index_sql("r.oid")),
        idx_cols = index_columns_json("i.indexrelid"),
    );
    let type_def = format!(
        "json_build_object('oid', t.oid::int8, 'schema', n.nspname::text, 'name', t.typname::text, 'kind',
            case when {ext} is not null then json_build_object('Extension', {ext})
                 when t.typtype = 'e' then json_build_object('Enum', coalesce(
                      (select json_agg(l.enumlabel::text order by l.enumsortorder)
                         from pg_catalog.pg_enum l where l.enumtypid = t.oid), '[]'))
                 when t.typtype = 'c' then json_build_object('Composite', coalesce(
                      (select json_agg(case when c.c is null then json_build_array(a.attname::text, {attr_ref}, a.attnum)
                                            else json_build_array(a.attname::text, {attr_ref}, a.attnum, c.c) end
                                       order by a.attnum)
                         from pg_catalog.pg_attribute a
                         cross join lateral (select {attr_collation} as c) c
                        where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped), '[]'))
                 when t.typtype = 'd' then json_build_object('Domain', json_build_object(
                      'base', {base_ref}, 'collation', {domain_collation}, 'not_null', t.typnotnull, 'default', t.typdefault,
                      'checks', coalesce((select json_agg(pg_catalog.pg_get_constraintdef(k.oid) order by k.conname::text)
                                            from pg_catalog.pg_constraint k
                                           where k.contypid = t.oid and k.contype = 'c'), '[]')))
                 else to_json('External'::text) end)",
        ext = extension_sql("pg_catalog.pg_type", "t.oid"),
        attr_ref = type_ref_json("a.atttypid", "a.atttypmod"),
        base_ref = type_ref_json("t.typbasetype", "t.typtypmod"),
        attr_collation = collation_sql("a.attcollation", "a.atttypid"),
        domain_collation = collation_sql("t.typcollation", "t.typbasetype"),
    );
    format!(
        "with recursive
         rel as (
             select c.oid, n.nspname::text as schema, c.relname::text as name
               from pg_catalog.pg_class c
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              where c.relkind in ('r', 'p') and not c.relispartition
                and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
                and n.nspname not like 'pg_temp_%' and n.nspname not like 'pg_toast_temp_%'
                and n.nspname <> $2
                and (n.nspname::text || '.' || c.relname::text) ~ $1),
         schemas as (select distinct schema from rel),
         -- What the tables' defaults, checks and indexes depend on (their pg_depend rows),
         -- and which of the three depends.
         deps(ref, refclass, rel, dependent) as materialized (
             select d.refobjid, d.refclassid, ad.adrelid, d.classid
               from pg_catalog.pg_attrdef ad
               join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                and d.objid = ad.oid
              where ad.adrelid in (select oid from rel)
           union all
             select d.refobjid, d.refclassid, k.conrelid, d.classid
               from pg_catalog.pg_constraint k
               join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
                and d.objid = k.oid
              where k.conrelid in (select oid from rel)
           union all
             select d.refobjid, d.refclassid, i.indrelid, d.classid
               from pg_catalog.pg_index i
               join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                and d.objid = i.indexrelid
              where i.indrelid in (select oid from rel)),
         -- The functions the tables' defaults, checks, generated columns and indexes call.
         direct(proc, rel) as (
             select distinct ref, rel from deps where refclass = 'pg_catalog.pg_proc'::pg_catalog.regclass),
         -- The functions whose bodies those functions, and the functions of the tables'
         -- schemas, call — through any number of calls: pairs of (where the search
         -- started, a function reached; each start reaches itself).
         roots(oid) as materialized (
             select p.oid
               from pg_catalog.pg_proc p
               join pg_catalog.pg_namespace n on n.oid = p.pronamespace
              where n.nspname::text in (select schema from schemas)
           union
             select proc from direct),
         -- What each function of a user schema names in its body (read once per function;
         -- a join in the recursion below, which the planner then estimates sanely).
         named(caller, proc) as materialized (
             select p.oid, q.proc
               from pg_catalog.pg_proc p
               cross join lateral ({named}) q
              where p.pronamespace not in ('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace)),
         reach(root, proc) as (
             select oid, oid from roots
           union
             select r.root, d.proc from reach r join named d on d.caller = r.proc),
         -- Each function a table needs, and the table: what its defaults, checks, generated
         -- columns and indexes call, and what the bodies of those and of its schema's
         -- functions call (a direct call is a start that reaches itself).
         calls(proc, rel) as (
             select r.proc, d.rel from reach r join direct d on d.proc = r.root
           union
             select r.proc, t.oid
               from reach r
               join pg_catalog.pg_proc p on p.oid = r.root
               join pg_catalog.pg_namespace n on n.oid = p.pronamespace
               join rel t on t.schema = n.nspname::text
              where r.proc <> r.root),
         -- The sequences the tables' defaults draw from.
         draws(seq, rel) as (
             select d.ref, d.rel
               from deps d
               join pg_catalog.pg_class sc on sc.oid = d.ref and sc.relkind = 'S'
              where d.dependent = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                and d.refclass = 'pg_catalog.pg_class'::pg_catalog.regclass),
         -- The types the tables' columns use, and every enum, domain and free-standing
         -- composite type of the tables' schemas (as their functions and views are: a
         -- type no column uses any more stays on the target, and a function may take it),
         -- with what those types are made of.
         used(oid) as (
             select {col_type}
               from pg_catalog.pg_attribute a
              where a.attrelid in (select oid from rel) and a.attnum > 0 and not a.attisdropped
           union
             select t.oid
               from pg_catalog.pg_type t
               join pg_catalog.pg_namespace n on n.oid = t.typnamespace
              where n.nspname::text in (select schema from schemas)
                and (t.typtype in ('e', 'd')
                     or t.typtype = 'c' and exists (select 1 from pg_catalog.pg_class c
                                                     where c.oid = t.typrelid and c.relkind = 'c'))
                and {type_ext} is null
           union
             select dep.oid
               from used u
               join pg_catalog.pg_type t on t.oid = u.oid
               cross join lateral (
                   select {attr_type} as oid
                     from pg_catalog.pg_attribute a
                    where t.typtype = 'c' and a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped
                   union all
                   select {base_type} where t.typtype = 'd') dep
              where dep.oid is not null and {type_ext} is null)
         select json_build_object(
             'tables', coalesce((select json_agg({table} order by r.schema, r.name) from rel r), '[]'),
             'types', coalesce((select json_agg({type_def} order by t.oid)
                                  from pg_catalog.pg_type t
                                  join pg_catalog.pg_namespace n on n.oid = t.typnamespace
                                 where t.oid in (select oid from used where oid is not null)), '[]'),
             'functions', coalesce((select json_agg(json_build_object(
                                  'oid', p.oid::int8, 'schema', n.nspname::text, 'name', p.proname::text,
                                  'identity_args', pg_catalog.pg_get_function_identity_arguments(p.oid),
                                  'is_procedure', p.prokind = 'p',
                                  'definition', pg_catalog.pg_get_functiondef(p.oid),
                                  'used_by', coalesce((select json_agg(distinct c.rel::int8) from calls c
                                                        where c.proc = p.oid), '[]')) order by p.oid)
                                  from pg_catalog.pg_proc p
                                  join pg_catalog.pg_namespace n on n.oid = p.pronamespace
                                 where (n.nspname::text in (select schema from schemas)
                                        or p.oid in (select proc from calls)
                                           and n.nspname not in ('pg_catalog', 'information_schema'))
                                   and p.prokind in ('f', 'p') and {proc_ext} is null), '[]'),
             'views', coalesce((select json_agg(json_build_object(
                                  'oid', c.oid::int8, 'schema', n.nspname::text, 'name', c.relname::text,
                                  'definition', pg_catalog.pg_get_viewdef(c.oid)) order by c.oid)
                                  from pg_catalog.pg_class c
                                  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                                 where n.nspname::text in (select schema from schemas) and c.relkind = 'v'
                                   and {view_ext} is null), '[]'),
             'sequences', coalesce((select json_agg(json_build_object(
                                  'oid', c.oid::int8, 'schema', n.nspname::text, 'name', c.relname::text,
                                  'data_type', pg_catalog.format_type(s.seqtypid, null),
                                  'start', s.seqstart, 'increment', s.seqincrement, 'min', s.seqmin,
                                  'max', s.seqmax, 'cache', s.seqcache, 'cycle', s.seqcycle,
                                  'used_by', coalesce((select json_agg(distinct w.rel::int8) from draws w
                                                        where w.seq = c.oid), '[]')) order by c.oid)
                                  from pg_catalog.pg_sequence s
                                  join pg_catalog.pg_class c on c.oid = s.seqrelid
                                  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                                 where (n.nspname::text in (select schema from schemas)
                                        or c.oid in (select seq from draws))
                                   and not exists (select 1 from pg_catalog.pg_depend d
                                                    where d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                                      and d.objid = c.oid and d.deptype = 'i')), '[]'),
             'collations', coalesce((select json_agg(json_build_object(
                                  'oid', co.oid::int8, 'schema', cn.nspname::text, 'name', co.collname::text,
                                  'qualified', pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname),
                                  'provider', co.collprovider, 'deterministic', co.collisdeterministic,
                                  'locale', case when co.collprovider = 'i'
                                                 then coalesce(j.j ->> 'colllocale', j.j ->> 'colliculocale', j.j ->> 'collcollate') end,
                                  'lc_collate', case when co.collprovider = 'c' then j.j ->> 'collcollate' end,
                                  'lc_ctype', case when co.collprovider = 'c' then j.j ->> 'collctype' end) order by co.oid)
                                  from pg_catalog.pg_collation co
                                  join pg_catalog.pg_namespace cn on cn.oid = co.collnamespace
                                  cross join lateral (select pg_catalog.to_jsonb(co.*) as j) j
                                 where co.oid >= {FIRST_USER_OID} and {coll_ext} is null
                                   and (co.oid in (select a.attcollation from pg_catalog.pg_attribute a
                                                    where a.attrelid in (select oid from rel) and a.attnum > 0
                                                      and not a.attisdropped)
                                        -- and those of the types' attributes and domains
                                        or co.oid in (select coalesce(a.attcollation, t.typcollation)
                                                        from pg_catalog.pg_type t
                                                        left join pg_catalog.pg_attribute a
                                                          on t.typtype = 'c' and a.attrelid = t.typrelid
                                                         and a.attnum > 0 and not a.attisdropped
                                                       where t.oid in (select oid from used)))), '[]'))",
        col_type = user_type_sql("a.atttypid"),
        attr_type = user_type_sql("a.atttypid"),
        base_type = user_type_sql("t.typbasetype"),
        type_ext = extension_sql("pg_catalog.pg_type", "t.oid"),
        proc_ext = extension_sql("pg_catalog.pg_proc", "p.oid"),
        named = named_in_body_sql(),
        view_ext = extension_sql("pg_catalog.pg_class", "c.oid"),
        // Collations of user schemas that columns use: the provider's own fields are read
        // from the row as JSON (their names differ between PostgreSQL versions).
        coll_ext = extension_sql("pg_catalog.pg_collation", "co.oid"),
    )
}

/// An identifier as a regular expression matched it (`m[1]`) turned into the name it
/// stands for: a quoted one unquoted, an unquoted one folded to lower case.
fn ident_sql(m: &str) -> String {
    format!(
        "case when {m} like '\"%' then pg_catalog.replace(pg_catalog.substr({m}, 2, pg_catalog.length({m}) - 2), '\"\"', '\"') \
         else pg_catalog.lower({m}) end"
    )
}

/// An identifier, quoted or not, as a regular expression.
const IDENT_RE: &str = r#"("(?:[^"]|"")+"|[[:alpha:]_][[:alnum:]_$]*)"#;

/// Whether the function row `p` (of `pg_proc`) has a body this module reads for the names it
/// calls: SQL or PL/pgSQL.
pub fn body_is_read_sql(p: &str) -> String {
    format!("{p}.prolang in (select l.oid from pg_catalog.pg_language l where l.lanname in ('sql', 'plpgsql'))")
}

/// Whether the function row `p` (of `pg_proc`) sets its own `search_path`; never null.
pub fn own_search_path_sql(p: &str) -> String {
    format!("coalesce(pg_catalog.array_to_string({p}.proconfig, ' '), '') like '%search_path=%'")
}

/// The names `body` (an SQL text expression: a function's source, or null) calls by a bare
/// name, `name(`, quoted or not, as the names they stand for; one column, `name`, each once.
/// Qualified calls (`util.f(`) are not among them.
pub fn bare_names_sql(body: &str) -> String {
    format!(
        r#"select distinct {bare} as name
             from pg_catalog.regexp_matches({body},
                      '(?:{IDENT_RE}[[:space:]]*\.)?[[:space:]]*{IDENT_RE}[[:space:]]*\(', 'g') m
            where m[1] is null"#,
        bare = ident_sql("m[2]"),
    )
}

/// The functions the function `p` calls in its body (SQL or PL/pgSQL); one column, `proc`:
/// - by a schema-qualified name (`util.norm(…)`, `"Util"."Norm" (…)`);
/// - by a bare name, when `p` fixes its own `search_path` (`SET search_path = util, …`,
///   as SECURITY DEFINER functions should): the function of that name in the first schema
///   of the path that has one (pg_catalog's own left out);
/// - what a `BEGIN ATOMIC` body depends on.
///
/// A name in a comment or a string literal counts too (the function then comes along
/// unneeded); a bare name in a function without its own `search_path` is resolved through
/// the caller's when it runs, and is not seen.
fn named_in_body_sql() -> String {
    let lang = body_is_read_sql("p");
    format!(
        r#"select q.oid as proc
       from pg_catalog.regexp_matches(case when {lang} then p.prosrc end,
                '{IDENT_RE}[[:space:]]*\.[[:space:]]*{IDENT_RE}[[:space:]]*\(', 'g') m
       join pg_catalog.pg_namespace qn on qn.nspname = {schema}
       join pg_catalog.pg_proc q on q.pronamespace = qn.oid and q.proname = {name}
      where qn.nspname not in ('pg_catalog', 'information_schema')
     union
     select f.oid
       from (select distinct on (b.name) q.oid, b.name
               from ({bare}) b
               join (select {path_schema} as schema, s.pos
                       from pg_catalog.unnest(p.proconfig) c(setting)
                       cross join lateral pg_catalog.regexp_matches(pg_catalog.substr(c.setting, 13),
                                '("(?:[^"]|"")*"|[^,[:space:]]+)', 'g') with ordinality s(m, pos)
                      where c.setting like 'search_path=%') sp on true
               join pg_catalog.pg_namespace sn on sn.nspname = sp.schema
               join pg_catalog.pg_proc q on q.pronamespace = sn.oid and q.proname = b.name
              where sn.nspname not in ('pg_catalog', 'information_schema')
              order by b.name, sp.pos) f
     union
     select d.refobjid
       from pg_catalog.pg_depend d
      where d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass and d.objid = p.oid
        and d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass"#,
        schema = ident_sql("m[1]"),
        name = ident_sql("m[2]"),
        bare = bare_names_sql(&format!(
            "case when {lang} and {} then p.prosrc end",
            own_search_path_sql("p")
        )),
        path_schema = ident_sql("s.m[1]"),
    )
}

/// The catalog query: `$1` is a regular expression on `schema.table` selecting the tables,
/// `$2` the replicator's own schema (never replicated). Returns one `json` value.
pub fn catalog_sql() -> &'static str {
    static SQL: LazyLock<String> = LazyLock::new(build_sql);
    &SQL
}

/// Why a catalog read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error("the catalog snapshot does not match this version's model: {0}")]
    Model(#[from] serde_json::Error),
}

impl ReadError {
    /// Whether a schema change committed while the catalog was read may explain the
    /// failure (worth reading again): PostgreSQL's printing functions (`format_type`,
    /// `pg_get_indexdef`, `pg_get_expr`…) read the latest catalog, not the query's snapshot,
    /// and give NULL for an object dropped meanwhile (the model refuses it) or fail
    /// ("cache lookup failed for attribute …", an internal error).
    pub fn is_concurrent_change(&self) -> bool {
        match self {
            ReadError::Model(_) => true,
            ReadError::Db(e) => e.as_db_error().is_some_and(|d| {
                *d.code() == tokio_postgres::error::SqlState::INTERNAL_ERROR
                    && d.message().starts_with("cache lookup failed")
            }),
        }
    }
}

impl Catalog {
    /// Reads the catalog of the tables `expr` selects (and the types, functions, views and
    /// sequences around them), `internal` (the replicator's schema) excluded. Use a
    /// connection with `jit = off` (as `pgteleport`'s own are): on a database with many
    /// functions the query's estimated cost passes `jit_above_cost`, and compiling it takes
    /// longer than running it.
    pub async fn read<C: GenericClient>(
        client: &C,
        expr: &TargetExpression,
        internal: &str,
    ) -> Result<Self, ReadError> {
        let row = client
            .query_one(
                &format!("select ({})::text", catalog_sql()),
                &[&expr.to_regex(), &internal],
            )
            .await?;
        Ok(Self::from_snapshot(&row.get::<_, String>(0))?.restrict(expr))
    }

    /// Parses the JSON the catalog query (or the stored snapshot of an event trigger) gave.
    pub fn from_snapshot(json: &str) -> Result<Self, serde_json::Error> {
        let mut c: Catalog = serde_json::from_str(json)?;
        for v in &mut c.views {
            v.definition = v.definition.trim().trim_end_matches(';').to_string();
        }
        c.types = order_types(std::mem::take(&mut c.types));
        Ok(c)
    }

    /// What one target replicates of this snapshot: the tables `expr` matches, the user
    /// types and collations they reach, the functions, views and sequences of their
    /// schemas, the functions of other schemas that their defaults, checks, generated
    /// columns and indexes call (and those that the bodies of these and of the schemas'
    /// functions call), and the sequences of other schemas their defaults draw from.
    pub fn restrict(&self, expr: &TargetExpression) -> Self {
        let tables: Vec<_> = self
            .tables
            .iter()
            .filter(|t| expr.matches(&t.schema, &t.name))
            .cloned()
            .collect();
        let by_oid: BTreeMap<u32, &TypeDef> = self.types.iter().map(|t| (t.oid, t)).collect();
        let schemas: BTreeSet<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
        let mut reached = BTreeSet::new();
        // The types the columns use, and the enums, composite types and domains of the
        // tables' schemas (kept when no column uses them any more, like the schemas'
        // functions: one of those may take them).
        let mut pending: Vec<u32> = tables
            .iter()
            .flat_map(|t| t.columns.iter())
            .filter_map(|c| user_oid(&c.type_ref))
            .chain(
                self.types
                    .iter()
                    .filter(|t| {
                        schemas.contains(t.schema.as_str())
                            && matches!(
                                t.kind,
                                TypeKind::Enum(_)
                                    | TypeKind::Composite(_)
                                    | TypeKind::Domain { .. }
                            )
                    })
                    .map(|t| t.oid),
            )
            .collect();
        while let Some(oid) = pending.pop() {
            if reached.insert(oid) {
                if let Some(t) = by_oid.get(&oid) {
                    pending.extend(type_deps(t));
                }
            }
        }
        let oids: BTreeSet<u32> = tables.iter().map(|t| t.oid).collect();
        // An object of the tables' schemas, or one of another schema that a table uses.
        let kept = |schema: &str, used_by: &[u32]| {
            schemas.contains(schema) || used_by.iter().any(|oid| oids.contains(oid))
        };
        Catalog {
            types: self
                .types
                .iter()
                .filter(|t| reached.contains(&t.oid))
                .cloned()
                .collect(),
            functions: self
                .functions
                .iter()
                .filter(|f| kept(&f.schema, &f.used_by))
                .cloned()
                .collect(),
            views: self
                .views
                .iter()
                .filter(|v| schemas.contains(v.schema.as_str()))
                .cloned()
                .collect(),
            sequences: self
                .sequences
                .iter()
                .filter(|s| kept(&s.schema, &s.used_by))
                .cloned()
                .collect(),
            collations: self
                .collations
                .iter()
                .filter(|c| {
                    let used = Some(c.qualified.as_str());
                    tables
                        .iter()
                        .flat_map(|t| t.columns.iter())
                        .any(|col| col.collation.as_deref() == used)
                        || reached
                            .iter()
                            .filter_map(|oid| by_oid.get(oid))
                            .any(|t| type_collations(t).any(|x| x == used))
                })
                .cloned()
                .collect(),
            tables,
        }
    }
}

fn user_oid(t: &TypeRef) -> Option<u32> {
    match t {
        TypeRef::User { oid, .. } => Some(*oid),
        TypeRef::Builtin(_) => None,
    }
}

/// A collation (`coll`, an expression of its OID) other than the type's (`of_type`, an
/// expression of the type's OID), as `schema.name` quoted, or NULL: PostgreSQL's own and
/// those of user schemas (not of an extension).
fn collation_sql(coll: &str, of_type: &str) -> String {
    format!(
        "(select pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname)
            from pg_catalog.pg_collation co
            join pg_catalog.pg_namespace cn on cn.oid = co.collnamespace
           where co.oid = {coll}
             and (cn.nspname = 'pg_catalog' or co.oid >= {FIRST_USER_OID} and {coll_ext} is null)
             and co.oid <> (select ct.typcollation from pg_catalog.pg_type ct where ct.oid = {of_type}))",
        coll_ext = extension_sql("pg_catalog.pg_collation", "co.oid"),
    )
}

/// The collations a type definition names (its attributes', a domain's).
fn type_collations(t: &TypeDef) -> impl Iterator<Item = Option<&str>> {
    let (attrs, domain) = match &t.kind {
        TypeKind::Composite(attrs) => (attrs.as_slice(), None),
        TypeKind::Domain { collation, .. } => (&[][..], collation.as_deref()),
        _ => (&[][..], None),
    };
    attrs
        .iter()
        .map(|a| a.collation.as_deref())
        .chain(std::iter::once(domain))
        .filter(Option::is_some)
}

/// The user types a type definition uses.
fn type_deps(t: &TypeDef) -> Vec<u32> {
    match &t.kind {
        TypeKind::Composite(attrs) => attrs.iter().filter_map(|a| user_oid(&a.type_ref)).collect(),
        TypeKind::Domain { base, .. } => user_oid(base).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Orders types so that each comes after the types it uses (depth first, by OID).
fn order_types(types: Vec<TypeDef>) -> Vec<TypeDef> {
    let mut found: BTreeMap<u32, TypeDef> = types.into_iter().map(|t| (t.oid, t)).collect();
    let deps: BTreeMap<u32, Vec<u32>> = found.iter().map(|(o, t)| (*o, type_deps(t))).collect();
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
    let mut ordered = Vec::new();
    let mut done = BTreeSet::new();
    for oid in found.keys() {
        visit(*oid, &deps, &mut done, &mut ordered);
    }
    ordered
        .into_iter()
        .filter_map(|o| found.remove(&o))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, Table};

    fn user(oid: u32, name: &str) -> TypeRef {
        TypeRef::User {
            oid,
            schema: "app".into(),
            name: name.into(),
            dims: 0,
        }
    }

    fn table(oid: u32, schema: &str, name: &str, typ: TypeRef) -> Table {
        Table {
            oid,
            schema: schema.into(),
            name: name.into(),
            columns: vec![Column {
                attnum: 1,
                name: "c".into(),
                type_name: "x".into(),
                type_ref: typ,
                not_null: false,
                generated: false,
                expression: None,
                identity: None,
                sequence: None,
                text_form: false,
                collation: None,
            }],
            primary_key: None,
            unique_key: None,
            primary_key_deferrable: None,
            primary_key_name: None,
            indexes: vec![],
            constraints: vec![],
            partitions: vec![],
        }
    }

    #[test]
    fn restrict_keeps_reached_types_in_dependency_order() {
        let snapshot = serde_json::json!({
            "tables": [table(1, "app", "a", user(30, "dom")), table(2, "other", "b", user(40, "e2"))],
            "types": [
                {"oid": 30, "schema": "app", "name": "dom", "kind": {"Domain": {"base": user(20, "comp"), "not_null": false, "default": null, "checks": []}}},
                {"oid": 20, "schema": "app", "name": "comp", "kind": {"Composite": [["f", user(10, "mood")]]}},
                {"oid": 10, "schema": "app", "name": "mood", "kind": {"Enum": ["a", "b"]}},
                {"oid": 40, "schema": "other", "name": "e2", "kind": "External"}
            ],
            "functions": [], "views": [{"oid": 5, "schema": "app", "name": "v", "definition": " SELECT 1;\n"}],
            "sequences": []
        })
        .to_string();
        let c = Catalog::from_snapshot(&snapshot).unwrap();
        assert_eq!(c.views[0].definition, "SELECT 1");
        let order: Vec<u32> = c.types.iter().map(|t| t.oid).collect();
        assert_eq!(order, vec![10, 20, 30, 40]);
        let r = c.restrict(&TargetExpression::parse("app.*").unwrap());
        assert_eq!(r.tables.len(), 1);
        let order: Vec<u32> = r.types.iter().map(|t| t.oid).collect();
        assert_eq!(order, vec![10, 20, 30]);
        assert_eq!(r.views.len(), 1);
        let r = c.restrict(&TargetExpression::parse("other.*").unwrap());
        assert_eq!(r.types.iter().map(|t| t.oid).collect::<Vec<_>>(), vec![40]);
        assert!(r.views.is_empty());
    }
}
