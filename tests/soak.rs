//! A random soak of schema changes under concurrent writers, in both DDL modes: a seeded
//! generator alters, renames, retypes, keys and drops tables and columns (and enums,
//! indexes, constraints) of schema `app` while writers insert, update and delete in
//! whatever tables and columns exist at the moment; at the end the target must hold the
//! same tables, columns, keys, indexes, constraints and rows as the source, with no batch
//! held.
//!
//! Not in CI (a round is not repeatable, and the soak still finds failures now and then): a
//! short fixed-seed round is `a_short_random_schema_soak_ends_equal`, the long one
//! `bash bench/schema_soak.sh` (`SOAK_SEED=N`, `SOAK_STEPS=N`, `SOAK_ROUNDS=N`,
//! `SOAK_MODES="diffing events"`, `SOAK_KEEP_QUEUE=1` to keep every event in the source's
//! queue for a look afterwards, `SOAK_LOAD=1` to start the target without the tables and
//! run an initial load at a random step, beside the changes and the writers). A failure
//! prints the seed and every step taken.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::*;
use ddlwatcher::quote_ident;
use fastrand::Rng;
use tokio_postgres::Client;

/// A column as the source catalog has it now.
#[derive(Clone, Debug)]
struct Col {
    name: String,
    ty: String,
    key: bool,
}

/// A table of schema `app` as the source catalog has it now.
#[derive(Clone, Debug)]
struct Table {
    name: String,
    cols: Vec<Col>,
    has_key: bool,
}

impl Table {
    /// The column the writers address rows by: the first one (made `id int`; it may be
    /// renamed or widened, never dropped).
    fn id(&self) -> &Col {
        &self.cols[0]
    }

    fn others(&self) -> Vec<&Col> {
        self.cols[1..].iter().collect()
    }
}

/// The types columns are made with, and what each may be changed to (every value the
/// writers write casts).
const TYPES: &[(&str, &[&str])] = &[
    ("integer", &["bigint", "numeric", "text"]),
    ("bigint", &["numeric", "text"]),
    ("numeric", &["text", "double precision"]),
    ("double precision", &["numeric", "text"]),
    ("text", &["character varying(60)"]),
    ("character varying(60)", &["text"]),
    ("timestamp with time zone", &["timestamp without time zone"]),
    ("timestamp without time zone", &["timestamp with time zone"]),
    ("jsonb", &["text", "json"]),
    ("json", &["jsonb"]),
    ("boolean", &["text"]),
    ("integer[]", &["bigint[]", "text"]),
    ("bigint[]", &["text"]),
    ("uuid", &["text"]),
    ("app.mood", &["text"]),
];

/// Reads the tables of `app` (ordinary ones; partitions have none here).
async fn tables(c: &Client) -> Result<Vec<Table>> {
    let rows = c
        .query(
            "select c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                    coalesce(a.attnum = any(i.indkey::int2[]), false), i.indrelid is not null
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
               join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
               left join pg_index i on i.indrelid = c.oid and i.indisprimary
              where n.nspname = 'app' and c.relkind = 'r'
              order by c.relname, a.attnum",
            &[],
        )
        .await?;
    let mut out: Vec<Table> = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let col = Col {
            name: r.get(1),
            ty: r.get(2),
            key: r.get(3),
        };
        match out.last_mut() {
            Some(t) if t.name == name => t.cols.push(col),
            _ => out.push(Table {
                name,
                cols: vec![col],
                has_key: r.get(4),
            }),
        }
    }
    Ok(out)
}

/// A literal (or expression) of type `ty`, null now and then.
fn value(rng: &mut Rng, ty: &str, nullable: bool) -> String {
    if nullable && rng.u8(..10) == 0 {
        return "null".into();
    }
    let n = rng.i32(-1000..100_000);
    match ty {
        "integer" | "bigint" | "smallint" => n.to_string(),
        "numeric" => format!("{n}.{}", rng.u16(..1000)),
        "double precision" => format!("{n}.5"),
        "text" | "character varying(60)" => {
            // Now and then a character PostgreSQL's text forms escape.
            let odd = ["", "'' quote", " \\ back", " \"dq\"", " é ü", " {x,y}"][rng.usize(..6)];
            format!("'s{n}{odd}'")
        }
        "timestamp with time zone" => {
            format!("timestamptz '2026-01-01 00:00:00+00' + interval '{n} seconds'")
        }
        "timestamp without time zone" => {
            format!("timestamp '2026-01-01' + interval '{n} seconds'")
        }
        // Top-level strings too: one that spells JSON, and one that does not (the text
        // form of a json value must not be mistaken for its JSON form).
        "jsonb" | "json" => match n % 4 {
            0 => format!("'\"{n}\"'"),
            1 => format!("'\"v{n}\"'"),
            _ => format!("'{{\"k\": {n}, \"s\": \"v{n}\"}}'"),
        },
        "boolean" => (n % 2 == 0).to_string(),
        "integer[]" | "bigint[]" => format!("'{{{n},{}}}'", n / 3),
        "uuid" => "gen_random_uuid()".into(),
        "app.mood" => {
            "(select l from unnest(enum_range(null::app.mood)) l order by random() limit 1)".into()
        }
        _ => "null".into(),
    }
}

/// A write to `t`: an insert (an id from a small range, so updates and deletes find rows),
/// an update of one column, or a delete.
fn write(rng: &mut Rng, t: &Table) -> String {
    let table = format!("app.{}", quote_ident(&t.name));
    let id = rng.i32(1..150);
    let idc = quote_ident(&t.id().name);
    match rng.u8(..10) {
        0..=4 => {
            let cols: Vec<&Col> = t.others().into_iter().filter(|_| rng.bool()).collect();
            let names: Vec<String> = std::iter::once(idc.clone())
                .chain(cols.iter().map(|c| quote_ident(&c.name)))
                .collect();
            let values: Vec<String> = std::iter::once(id.to_string())
                .chain(cols.iter().map(|c| value(rng, &c.ty, !c.key)))
                .collect();
            format!(
                "insert into {table} ({}) values ({}) on conflict do nothing",
                names.join(", "),
                values.join(", ")
            )
        }
        5..=7 => match rng.choice(&t.others()) {
            Some(c) => format!(
                "update {table} set {} = {} where {idc} = {id}",
                quote_ident(&c.name),
                value(rng, &c.ty, !c.key)
            ),
            None => format!("update {table} set {idc} = {idc} where {idc} = {id}"),
        },
        _ => format!("delete from {table} where {idc} = {id}"),
    }
}

/// One schema change on the current tables, or `None` when the one drawn does not apply.
fn change(rng: &mut Rng, ts: &[Table], n: u64, event_triggers: bool) -> Option<String> {
    let t = rng.choice(ts);
    let kind = if ts.len() < 2 { 0 } else { rng.u8(..22) };
    if kind == 0 {
        let key = if rng.u8(..5) == 0 { "" } else { " primary key" };
        let (ty, _) = rng.choice(TYPES)?;
        return Some(format!(
            "create table app.t{n} (id int{key}, a text, b {ty});
             insert into app.t{n} (id, a) select g, 'first ' || g from generate_series(1, 30) g"
        ));
    }
    let t = t?;
    let table = format!("app.{}", quote_ident(&t.name));
    let col = rng.choice(&t.others()).copied();
    Some(match kind {
        1 if ts.len() > 3 => format!("drop table {table}"),
        2 => format!("alter table {table} rename to r{n}"),
        3..=5 => {
            let (ty, _) = rng.choice(TYPES)?;
            let constant = match *ty {
                "uuid" => "'00000000-0000-0000-0000-000000000001'".to_string(),
                "app.mood" => "'ok'".to_string(),
                _ => value(rng, ty, false),
            };
            let default = match rng.u8(..6) {
                0 if *ty == "uuid" => " default gen_random_uuid()".to_string(),
                0 if ty.starts_with("timestamp") => " default clock_timestamp()".to_string(),
                1 => format!(" default {constant}"),
                2 => format!(" not null default {constant}"),
                _ => String::new(),
            };
            format!("alter table {table} add column c{n} {ty}{default}")
        }
        6 => format!("alter table {table} drop column {}", quote_ident(&col?.name)),
        7 | 8 => {
            // Any column, the key's included; now and then into a name just freed.
            let c = rng.choice(&t.cols)?;
            format!("alter table {table} rename column {} to k{n}", quote_ident(&c.name))
        }
        9 | 10 => {
            let c = col?;
            let (_, to) = TYPES.iter().find(|(ty, _)| *ty == c.ty)?;
            let to = rng.choice(to.iter())?;
            format!(
                "alter table {table} alter column {} type {to}",
                quote_ident(&c.name)
            )
        }
        11 => {
            let to = match t.id().ty.as_str() {
                "integer" => "bigint",
                "bigint" => "numeric",
                _ => return None,
            };
            format!(
                "alter table {table} alter column {} type {to}",
                quote_ident(&t.id().name)
            )
        }
        12 => {
            let c = col?;
            if rng.bool() {
                format!(
                    "update {table} set {c} = {v} where {c} is null; alter table {table} alter column {c} set not null",
                    c = quote_ident(&c.name),
                    v = value(rng, &c.ty, false)
                )
            } else {
                format!("alter table {table} alter column {} drop not null", quote_ident(&c.name))
            }
        }
        13 => {
            let c = col?;
            let v = value(rng, &c.ty, false);
            if v.contains("select") || v.contains("gen_random") {
                format!("alter table {table} alter column {} drop default", quote_ident(&c.name))
            } else {
                format!("alter table {table} alter column {} set default {v}", quote_ident(&c.name))
            }
        }
        14 => {
            let c = col?;
            if c.ty.ends_with("[]") || c.ty.starts_with("json") {
                return None;
            }
            let unique = if rng.u8(..3) == 0 { "unique " } else { "" };
            format!("create {unique}index i{n} on {table} ({})", quote_ident(&c.name))
        }
        15 => "drop index if exists app.i".to_string() + &rng.u64(..n.max(1)).to_string(),
        16 => {
            let c = col?;
            format!(
                "alter table {table} add constraint ck{n} check ({} is not null or {} is null)",
                quote_ident(&c.name),
                quote_ident(&t.id().name)
            )
        }
        17 => format!(
            "do $$ declare c text; begin
               select conname into c from pg_constraint where conrelid = '{table}'::regclass and contype in ('c', 'u') order by random() limit 1;
               if c is not null then execute format('alter table {table} drop constraint %I', c); end if; end $$"
        ),
        18 => format!("alter type app.mood add value 'm{n}'"),
        19 if event_triggers => {
            // Diffing mode cannot place a renamed label among rows written with both names
            // within one look (README).
            format!(
                "do $$ declare l text; begin
                   select enumlabel into l from pg_enum where enumtypid = 'app.mood'::regtype order by random() limit 1;
                   execute format('alter type app.mood rename value %L to %L', l, 'v{n}'); end $$"
            )
        }
        // Diffing mode: rows written under a dropped key before the watcher's look, with
        // duplicates of it, cannot be told apart on the target (README).
        20 if t.has_key && event_triggers => format!(
            "do $$ declare c text; begin
               select conname into c from pg_constraint where conrelid = '{table}'::regclass and contype = 'p';
               execute format('alter table {table} drop constraint %I', c); end $$"
        ),
        20 | 21 if !t.has_key => format!(
            "delete from {table} a using {table} b where a.ctid < b.ctid and a.{id} = b.{id};
             delete from {table} where {id} is null;
             alter table {table} add primary key ({id})",
            id = quote_ident(&t.id().name)
        ),
        _ => return None,
    })
}

/// The schema part of change `sql` that a migration run on both sides would run on the
/// target first (tables, columns, indexes and checks made; columns retyped; with `renames`,
/// columns and tables renamed); `None` for the others (drops, keys, labels).
fn target_first(sql: &str, renames: bool) -> Option<&str> {
    if sql.starts_with("create table ") {
        return sql.split(';').next();
    }
    let kinds: &[&str] = if renames {
        &[
            " add column ",
            " add constraint ",
            " type ",
            " rename column ",
            " rename to ",
        ]
    } else {
        &[" add column ", " add constraint ", " type "]
    };
    let additive = sql.starts_with("create index ")
        || sql.starts_with("create unique index ")
        || sql.starts_with("alter table ") && kinds.iter().any(|k| sql.contains(k));
    (additive && !sql.contains(';')).then_some(sql)
}

/// Whether a retype run on the target first lets rows written before the source's retype
/// be found: a keyless table's old row images hold json, jsonb and array values in their
/// JSON form (`"x"` is the string `x`, `{1,2}` is `[1, 2]`), which a target column already
/// text does not hold (a limit the README states: "A change made on the target too"). True
/// for any other statement.
fn casts_as_captured(ddl: &str, ts: &[Table]) -> bool {
    let Some((head, to)) = ddl.split_once(" type ") else {
        return true;
    };
    let from = ts.iter().find_map(|t| {
        let prefix = format!("alter table app.{} alter column ", quote_ident(&t.name));
        let column = head.strip_prefix(&prefix)?;
        t.cols
            .iter()
            .find(|c| quote_ident(&c.name) == column)
            .map(|c| c.ty.as_str())
    });
    let textual = ["text", "character varying(60)"].contains(&to);
    !(textual && matches!(from, Some("jsonb" | "json" | "integer[]" | "bigint[]")))
}

struct Soak {
    seed: u64,
    steps: usize,
    event_triggers: bool,
    /// One step in `target_first` (none when 0) runs its change on the target first, as a
    /// migration run on both sides, the target first; renames too with `renames_first`.
    target_first: u8,
    renames_first: bool,
    /// The target starts without the tables; an initial load runs at a random step, beside
    /// the schema changes and the writers, and is run again until it succeeds.
    load: bool,
}

/// Runs the initial load until it succeeds (a re-run resumes; a schema change while it
/// starts makes it give up after its own tries), at most `tries` times; every failure's
/// message is kept in `log`.
async fn load_until_done(
    config: pgteleport::config::Config,
    tries: usize,
    log: Arc<std::sync::Mutex<Vec<String>>>,
) -> Result<()> {
    let options = load_options();
    for n in 1..=tries {
        match pgteleport::load::run(&config, options.clone()).await {
            Ok(summary) => {
                log.lock()
                    .unwrap()
                    .push(format!("load {n}: done, {summary}"));
                return Ok(());
            }
            Err(e) => {
                log.lock().unwrap().push(format!("load {n}: failed: {e:#}"));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    bail!("the initial load failed {tries} times")
}

/// The soak's initial load: two streams, 1 MB ranges.
fn load_options() -> pgteleport::load::LoadOptions {
    pgteleport::load::LoadOptions {
        target: "t1".into(),
        truncate: false,
        copy_again: None,
        workers: 2,
        range_bytes: 1 << 20,
        split: Default::default(),
        progress: Some(false),
        lock_wait: pgteleport::load::DEFAULT_LOCK_WAIT,
    }
}

/// The load run again once source and target are equal: every table is complete on the
/// target (the first load's, or made by the stream since, renamed or not), so it copies
/// nothing, and the tables stay equal.
async fn load_again_copies_nothing(
    config: pgteleport::config::Config,
    src: &Client,
    dst: &Client,
    log: &mut Vec<String>,
) -> Result<()> {
    let summary = pgteleport::load::run(&config, load_options())
        .await
        .context("the load run again once the tables were equal")?;
    println!("soak: load again: {summary}");
    log.push(format!("load again: {summary}"));
    if summary.tables != 0 || summary.rows != 0 {
        bail!("the load run again once the tables were equal copied {summary}: every table was complete on the target");
    }
    settle(src, dst, false).await
}

async fn run(s: &Soak) -> Result<()> {
    let schema = "create schema app;
         create type app.mood as enum ('sad', 'ok', 'happy');
         create table app.t1 (id int primary key, a text, b int);
         create table app.t2 (id int primary key, a text, m app.mood, j jsonb);
         create table app.t3 (id int, a text, b numeric);
         insert into app.t1 select g, 'a' || g, g from generate_series(1, 50) g;";
    let p = if s.load {
        Pair::new2(
            &format!(
                "{schema}
                 insert into app.t2 select g, 'b' || g, 'ok', '{{\"a\": 1}}' from generate_series(1, 3000) g;
                 insert into app.t3 select g % 100, 'c' || g, g from generate_series(1, 3000) g;"
            ),
            "",
        )
        .await?
    } else {
        Pair::new(schema).await?
    };
    let extra = p.ddl_mode(s.event_triggers).await?;
    let target = p.start_target(0).await?;
    let port = target.local_addr.expect("target listens").port();
    let extra = format!("{extra}keyless_tables: true\n");
    let mut config = p.source_config(port, "app.*", &extra)?;
    if std::env::var_os("SOAK_KEEP_QUEUE").is_some() {
        // For a look at a failed round: the queue keeps every event (no vacuum).
        config.processing_intervals.vacuum = 24 * 3600 * 1000;
    }
    let source = pgteleport::instance::start(config).await?;
    let (src, dst) = (p.src().await?, p.dst().await?);

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (stop, writes) = (stop.clone(), writes.clone());
        let c = p.src().await?;
        let mut rng = Rng::with_seed(s.seed ^ ((w + 1) * 0x9e37_79b9));
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ts = match tables(&c).await {
                    Ok(ts) => ts,
                    Err(_) => continue,
                };
                let Some(t) = rng.choice(&ts) else {
                    continue;
                };
                let stmts: Vec<String> = (0..rng.usize(1..4)).map(|_| write(&mut rng, t)).collect();
                // One transaction; a statement the DDL of the moment refuses rolls it back.
                if c.batch_execute(&stmts.join("; ")).await.is_ok() {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let mut rng = Rng::with_seed(s.seed);
    let mut log = Vec::new();
    // Its own generator: the steps stay those of the seed without a load.
    let load_step = Rng::with_seed(s.seed ^ 0x10ad).u64(s.steps as u64 / 4..=s.steps as u64 / 2);
    let load_log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = None;
    for step in 0..s.steps as u64 {
        if s.load && step == load_step {
            log.push(format!("{step}: initial load starts"));
            let config = p.source_config(port, "app.*", &extra)?;
            load = Some(tokio::spawn(load_until_done(config, 10, load_log.clone())));
        }
        let ts = tables(&src).await?;
        let Some(sql) = change(&mut rng, &ts, step, s.event_triggers) else {
            continue;
        };
        // Its own generator: the steps stay those of the seed.
        let mut first = Rng::with_seed(s.seed ^ step ^ 0xf125);
        // A migration run on the target first commits there once it has run on the
        // source, and is rolled back when it fails there (a check the source's rows break).
        let mut first_open = false;
        if let Some(ddl) = target_first(&sql, s.renames_first)
            .filter(|_| s.target_first > 0 && first.u8(..s.target_first) == 0)
        {
            // (the column's type on either side: the target's may lag behind or run ahead)
            let takes = casts_as_captured(ddl, &ts) && casts_as_captured(ddl, &tables(&dst).await?);
            let outcome = if !takes {
                "source" // left to the source: rows written before it would not take it
            } else if dst.batch_execute(&format!("begin; {ddl}")).await.is_ok() {
                first_open = true;
                "ok    "
            } else {
                dst.batch_execute("rollback").await?;
                "failed"
            };
            log.push(format!(
                "{step}: {outcome} on the target first: {}",
                ddl.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
        // Now and then the change shares its transaction with writes to its table.
        let sql = match (rng.u8(..3), rng.choice(&ts)) {
            (0, Some(t)) => {
                let before = write(&mut rng, t);
                format!("{before}; {sql}")
            }
            _ => sql,
        };
        let outcome = src.batch_execute(&sql).await;
        log.push(format!(
            "{step}: {} {}",
            if outcome.is_ok() { "ok    " } else { "failed" },
            sql.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
        if first_open {
            dst.batch_execute(if outcome.is_ok() {
                "commit"
            } else {
                "rollback"
            })
            .await?;
            if outcome.is_err() {
                log.push(format!(
                    "{step}: undone on the target (failed on the source)"
                ));
            }
        }
        if outcome.is_ok() && !s.event_triggers {
            // Diffing mode sees the net effect of one look: let it see each change (its
            // limit, README), or go on after a while (a change it has no eye for).
            let done: f64 = src
                .query_one("select extract(epoch from clock_timestamp())::float8", &[])
                .await?
                .get(0);
            let _ = wait_for("the watcher's look", Duration::from_secs(2), || async {
                let at: f64 = src
                    .query_one(
                        "select coalesce(extract(epoch from max(taken_at)), 0)::float8 from teleport.schema_snapshot",
                        &[],
                    )
                    .await?
                    .get(0);
                Ok(at > done)
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(20..200))).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let loaded = match load {
        Some(load) => load.await?,
        None => Ok(()),
    };
    for line in load_log.lock().unwrap().drain(..) {
        println!("soak: {line}");
        log.push(line);
    }
    let outcome = match loaded {
        Ok(()) => match settle(&src, &dst, s.target_first > 0).await {
            Ok(()) if s.load => {
                let config = p.source_config(port, "app.*", &extra)?;
                load_again_copies_nothing(config, &src, &dst, &mut log).await
            }
            other => other,
        },
        Err(e) => Err(e),
    };
    let result = match outcome {
        Ok(()) => Ok(()),
        Err(e) => {
            p.keep();
            let error = last_error(&src).await.unwrap_or_default();
            Err(e.context(format!(
                "seed {} ({} mode{}, databases {} and {}), {} write transactions; last transmit error: {error}\nsteps:\n{}",
                s.seed,
                if s.event_triggers { "event-trigger" } else { "diffing" },
                if s.load { ", initial load" } else { "" },
                p.src_db,
                p.dst_db,
                writes.load(Ordering::Relaxed),
                log.join("\n")
            )))
        }
    };
    source.shutdown().await?;
    target.shutdown().await?;
    result
}

/// Waits until the target has the source's schema and rows of `app`, and nothing held.
/// Waits until every table of `app` holds the same rows on both sides, each column compared
/// by name (a column added on the target first may stand elsewhere in its column order).
async fn wait_equal_by_name(src: &Client, dst: &Client, within: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut diff = None;
        for t in tables(src).await? {
            let cols: Vec<String> = t.cols.iter().map(|c| quote_ident(&c.name)).collect();
            let sql = format!(
                "select row({})::text from app.{} order by 1",
                cols.join(", "),
                quote_ident(&t.name)
            );
            let a = texts(src, &sql).await?;
            match texts(dst, &sql).await {
                Ok(b) if a == b => {}
                Ok(b) => {
                    diff = Some(format!(
                        "app.{}: source {} rows, target {} rows",
                        t.name,
                        a.len(),
                        b.len()
                    ));
                    break;
                }
                Err(e) => {
                    diff = Some(format!("app.{} on the target: {e}", t.name));
                    break;
                }
            }
        }
        match diff {
            None => return Ok(()),
            Some(d) if std::time::Instant::now() > deadline => {
                bail!("tables equal (by column name) within {within:?}: still differ ({d})")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `by_name`: the tables' rows compared column by column name ([`wait_equal_by_name`]).
async fn settle(src: &Client, dst: &Client, by_name: bool) -> Result<()> {
    let within = Duration::from_secs(60);
    // A target far behind (keyless rows are matched one at a time) may take longer than
    // `within` to catch up: waited for while its applied position moves.
    let mut applied = -1;
    let mut since = std::time::Instant::now();
    loop {
        let (a, b) = (shape(src, &["app"]).await, shape(dst, &["app"]).await);
        if matches!((a, b), (Ok(a), Ok(b)) if a == b) {
            break;
        }
        let now: i64 = dst
            .query_one(
                "select coalesce(max(seq), 0)::int8 from teleport.applied",
                &[],
            )
            .await
            .map_or(applied, |r| r.get(0));
        if now != applied {
            (applied, since) = (now, std::time::Instant::now());
        } else if since.elapsed() > within {
            bail!(
                "the target's schema to equal the source's: not reached, and no batch applied for {within:?} (at batch {applied})\n{}",
                diff_report(src, dst).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let names: Vec<String> = tables(src)
        .await?
        .into_iter()
        .map(|t| format!("app.{}", quote_ident(&t.name)))
        .collect();
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let equal = || async {
        if by_name {
            wait_equal_by_name(src, dst, within).await
        } else {
            wait_equal(src, dst, &names, within).await
        }
    };
    equal().await?;
    // Equal tables may come from a load at the end, with the stream still to resume
    // after it (its last error set until the next batch is applied).
    let mut error = last_error(src).await?;
    let since = std::time::Instant::now();
    while !error.is_empty() && since.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(200)).await;
        error = last_error(src).await?;
    }
    if !error.is_empty() {
        bail!("equal, but the last transmit error is still set after {within:?}: {error}");
    }
    // And still equal once the stream has run.
    equal().await?;
    let (a, b) = (shape(src, &["app"]).await?, shape(dst, &["app"]).await?);
    if a != b {
        bail!(
            "the stream after the load changed the target's schema: {}",
            diff_report(src, dst).await
        );
    }
    Ok(())
}

async fn diff_report(src: &Client, dst: &Client) -> String {
    let (a, b) = (
        shape(src, &["app"]).await.unwrap_or_default(),
        shape(dst, &["app"]).await.unwrap_or_default(),
    );
    let only_src: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
    let only_dst: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
    format!("only on the source: {only_src:#?}\nonly on the target: {only_dst:#?}")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn soak(default_seed: u64, default_steps: usize, default_rounds: usize) -> Result<()> {
    let first_seed = env_or("SOAK_SEED", default_seed);
    let steps = env_or("SOAK_STEPS", default_steps);
    let rounds = env_or("SOAK_ROUNDS", default_rounds);
    let modes = std::env::var("SOAK_MODES").unwrap_or_else(|_| "diffing events".into());
    let load = std::env::var_os("SOAK_LOAD").is_some_and(|v| v == "1");
    let target_first = env_or("SOAK_TARGET_FIRST", 0u8);
    let renames_first = std::env::var_os("SOAK_TARGET_FIRST_RENAMES").is_some_and(|v| v == "1");
    for round in 0..rounds as u64 {
        for mode in modes.split_whitespace() {
            let s = Soak {
                seed: first_seed + round,
                steps,
                event_triggers: mode == "events",
                load,
                target_first,
                renames_first,
            };
            println!(
                "soak: seed {} {mode}{}, {steps} steps",
                s.seed,
                if load { " with an initial load" } else { "" }
            );
            run(&s).await?;
        }
    }
    Ok(())
}

/// A short round, seed fixed (`cargo nextest run --run-ignored only -E 'test(short_random)'`).
/// Not in CI: the writers race the changes, so a round is not repeatable, and it still
/// fails now and then on what the soak has found and not yet fixed (the note of session 24).
#[tokio::test]
#[ignore = "not repeatable yet: bash bench/schema_soak.sh"]
async fn a_short_random_schema_soak_ends_equal() -> Result<()> {
    soak(1, 30, 1).await
}

/// The long soak: `bash bench/schema_soak.sh`.
#[tokio::test]
#[ignore = "long: bash bench/schema_soak.sh"]
async fn schema_soak() -> Result<()> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    soak(seed, 80, 5).await
}
