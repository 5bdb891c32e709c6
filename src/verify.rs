//! `pgteleport verify`: compares the source's and the target's tables of one target.
//!
//! For each table: row count and an order-independent checksum (sum of `hashtext` of each
//! row's text, with the target's schema renamed by `apply_schema`); when they differ, a
//! row-level comparison by primary key names the missing, extra and changed keys (never the
//! row values). Online: it first waits until the target has applied every transaction
//! committed before the check began, and re-checks a differing table a few times, so
//! changes still in flight are not reported as differences.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ddlwatcher::{introspect_tables, qualified, quote_ident, TargetExpression};
use tokio_postgres::Client;

use crate::config::{Config, Database};
use crate::db;

/// The result of one table's comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    pub source_rows: i64,
    pub target_rows: i64,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub changed: Vec<String>,
}

impl TableReport {
    pub fn equal(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.changed.is_empty()
            && self.source_rows == self.target_rows
    }
}

/// Compares every table of `target`, connecting to the target database with `target_db`.
pub async fn verify(
    config: &Config,
    target: &str,
    target_db: &Database,
    within: Duration,
) -> anyhow::Result<Vec<TableReport>> {
    let t = config
        .targets
        .get(target)
        .ok_or_else(|| anyhow::anyhow!("target `{target}` is not in the config's targets"))?;
    let src = db::connect(&config.database, "verify").await?;
    let dst = db::connect(target_db, "verify").await?;
    let expr = TargetExpression::parse(&t.target_expression).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tables = introspect_tables(&src, &expr, &config.internal_schema).await?;
    catch_up(&src, &config.internal_schema, target, within).await?;
    let mut reports = Vec::new();
    for table in &tables {
        let Some(key) = table.replica_key().map(<[String]>::to_vec) else {
            anyhow::bail!(
                "table {} has no primary key; verify compares by primary key",
                table.qualified()
            );
        };
        let target_name = qualified(
            t.apply_schema.as_deref().unwrap_or(&table.schema),
            &table.name,
        );
        let mut attempt = 0;
        let report = loop {
            attempt += 1;
            let r = compare(&src, &dst, &table.qualified(), &target_name, &key).await?;
            if r.equal() || attempt >= 3 {
                break r;
            }
            // Still in flight? Let the target catch up with what committed since, then look again.
            tokio::time::sleep(Duration::from_millis(500)).await;
            catch_up(&src, &config.internal_schema, target, within).await?;
        };
        reports.push(report);
    }
    Ok(reports)
}

/// Waits until every transaction committed before now is in an acknowledged batch.
async fn catch_up(
    src: &Client,
    schema: &str,
    target: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let s = quote_ident(schema);
    let now: String = src
        .query_one("select pg_current_snapshot()::text", &[])
        .await?
        .get(0);
    let deadline = Instant::now() + within;
    loop {
        let caught: bool = src
            .query_one(
                &format!(
                    "select pg_snapshot_xmin(t.last_snapshot) >= pg_snapshot_xmax($2::text::pg_snapshot)
                        and not exists (select 1 from {s}.batch b where b.target = t.target and b.acked_at is null
                                          and pg_snapshot_xmin(b.snap_from) < pg_snapshot_xmax($2::text::pg_snapshot))
                       from {s}.target_state t where t.target = $1"
                ),
                &[&target, &now],
            )
            .await?
            .get(0);
        if caught {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("target `{target}` did not catch up with the source within {within:?}; is replication running? (see `pgteleport status`)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn summary(c: &Client, table: &str) -> anyhow::Result<(i64, i64)> {
    let r = c
        .query_one(
            &format!(
                "select count(*), coalesce(sum(hashtext(x::text)::int8), 0)::int8 from {table} x"
            ),
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

async fn hashes(c: &Client, table: &str, key: &[String]) -> anyhow::Result<BTreeMap<String, i32>> {
    let k = key
        .iter()
        .map(|c| format!("x.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = c
        .query(
            &format!("select row({k})::text, hashtext(x::text) from {table} x"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn compare(
    src: &Client,
    dst: &Client,
    source: &str,
    target: &str,
    key: &[String],
) -> anyhow::Result<TableReport> {
    let (a, b) = (summary(src, source).await?, summary(dst, target).await?);
    let mut report = TableReport {
        table: source.to_string(),
        source_rows: a.0,
        target_rows: b.0,
        missing: vec![],
        extra: vec![],
        changed: vec![],
    };
    if a == b {
        return Ok(report);
    }
    let (left, right) = (
        hashes(src, source, key).await?,
        hashes(dst, target, key).await?,
    );
    for (k, h) in &left {
        match right.get(k) {
            None => report.missing.push(k.clone()),
            Some(o) if o != h => report.changed.push(k.clone()),
            _ => {}
        }
    }
    report.extra = right
        .keys()
        .filter(|k| !left.contains_key(*k))
        .cloned()
        .collect();
    Ok(report)
}

/// A readable report; keys only, never row values.
pub fn render(reports: &[TableReport]) -> String {
    let mut out = String::new();
    for r in reports {
        if r.equal() {
            let _ = writeln!(out, "  equal    {} ({} rows)", r.table, r.source_rows);
            continue;
        }
        let _ = writeln!(
            out,
            "  DIFFER   {}: source {} rows, target {} rows; {} missing, {} extra, {} changed on the target",
            r.table,
            r.source_rows,
            r.target_rows,
            r.missing.len(),
            r.extra.len(),
            r.changed.len()
        );
        for (what, keys) in [
            ("missing", &r.missing),
            ("extra", &r.extra),
            ("changed", &r.changed),
        ] {
            if !keys.is_empty() {
                let shown: Vec<&str> = keys.iter().take(10).map(String::as_str).collect();
                let _ = writeln!(
                    out,
                    "           {what} keys: {}{}",
                    shown.join(" "),
                    if keys.len() > 10 { " …" } else { "" }
                );
            }
        }
    }
    out
}
