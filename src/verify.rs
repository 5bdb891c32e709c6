//! `pgteleport verify`: compares the source's and the target's tables of one target.
//!
//! Each table is cut into chunks of `chunk_rows` rows by primary-key ranges (bounds taken
//! from the source; each side selects a chunk's rows through its primary-key index). For
//! each chunk: row count and an order-independent checksum (sum of `hashtext` of each row's
//! text) on both sides. Only the chunks that differ are compared row by row, by primary
//! key, naming the missing, extra and changed keys (never the row values); their rows are
//! compared together, so a key that one side's collation sorts into another chunk is still
//! matched with itself. Online: it first waits until the target has applied every
//! transaction committed before the check began, and re-checks differing chunks a few times
//! after catching up again, so changes still in flight are not reported as differences.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ddlwatcher::{quote_ident, quote_literal, Catalog, TargetExpression};
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
    /// Key-range chunks compared, and those whose count or checksum differed.
    pub chunks: usize,
    pub differing_chunks: usize,
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
    chunk_rows: i64,
) -> anyhow::Result<Vec<TableReport>> {
    anyhow::ensure!(chunk_rows > 0, "--chunk-rows must be at least 1");
    let t = config
        .targets
        .get(target)
        .ok_or_else(|| anyhow::anyhow!("target `{target}` is not in the config's targets"))?;
    let src = db::connect(&config.database, "verify").await?;
    let dst = db::connect(target_db, "verify").await?;
    let expr = TargetExpression::parse(&t.target_expression).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tables = Catalog::read(&src, &expr, &config.internal_schema)
        .await?
        .tables;
    catch_up(&src, &config.internal_schema, target, within).await?;
    let exclusions = crate::exclusion::Exclusions::read(
        &src,
        &quote_ident(&config.internal_schema),
        target,
        &t.exclude_columns,
    )
    .await?;
    let names = t.schema_map(&tables);
    let mut reports = Vec::new();
    for table in &tables {
        let Some(key) = table.replica_key().map(<[String]>::to_vec) else {
            anyhow::bail!(
                "table {} has no primary key; verify compares by primary key",
                table.qualified()
            );
        };
        let target_name = names.table(&table.schema, &table.name);
        // A table's own rows: not those of its inheritance children (tables of their own,
        // compared as such), on either side; a partitioned table's are its partitions'.
        let own = |name: &str| ddlwatcher::ddl::own_rows(table, name);
        let source_rows = own(&table.qualified());
        let source_key = KeyColumns::read(&src, &table.qualified(), &key).await?;
        let target_key = KeyColumns::read(&dst, &target_name, &key).await?;
        let chunks = source_key.chunks(&src, &source_rows, chunk_rows).await?;
        let mut report = TableReport {
            table: table.qualified(),
            source_rows: 0,
            target_rows: 0,
            missing: vec![],
            extra: vec![],
            changed: vec![],
            chunks: chunks.len(),
            differing_chunks: 0,
        };
        // Excluded columns never reached the target, and its soft-delete and synced-at
        // columns are its own: rows are compared by the columns both sides share, and rows
        // marked deleted do not count on the target.
        let mut shared = table.clone();
        let excluded = exclusions.strip_table(&mut shared);
        let row = if excluded.is_empty()
            && t.soft_delete_col_name.is_none()
            && t.synced_at_col_name.is_none()
        {
            // The whole row (`x` alone would be a column of that name, if the table has one).
            "x.*".to_string()
        } else {
            let cols: Vec<String> = shared
                .columns
                .iter()
                .map(|c| format!("x.{}", quote_ident(&c.name)))
                .collect();
            format!("row({})", cols.join(", "))
        };
        let live = t
            .soft_delete_col_name
            .as_deref()
            .map(|c| format!(" and not x.{}", quote_ident(c)))
            .unwrap_or_default();
        let sides = Sides {
            src: &src,
            dst: &dst,
            source: source_rows,
            target: own(&target_name),
            source_key,
            target_key,
            row,
            live,
        };
        let mut differing = Vec::new();
        for chunk in &chunks {
            let (a, b) = sides.summaries(chunk).await?;
            report.source_rows += a.0;
            report.target_rows += b.0;
            if a != b {
                differing.push((chunk, a, b));
            }
        }
        // Still in flight? Let the target catch up with what committed since, then look again.
        for _ in 0..2 {
            if differing.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            catch_up(&src, &config.internal_schema, target, within).await?;
            let mut still = Vec::new();
            for (chunk, a0, b0) in differing {
                let (a, b) = sides.summaries(chunk).await?;
                report.source_rows += a.0 - a0.0;
                report.target_rows += b.0 - b0.0;
                if a != b {
                    still.push((chunk, a, b));
                }
            }
            differing = still;
        }
        report.differing_chunks = differing.len();
        let (mut left, mut right) = (BTreeMap::new(), BTreeMap::new());
        for (chunk, _, _) in &differing {
            left.extend(
                hashes(
                    sides.src,
                    &sides.source,
                    &key,
                    &sides.source_key.range(chunk),
                    &sides.row,
                )
                .await?,
            );
            right.extend(
                hashes(
                    sides.dst,
                    &sides.target,
                    &key,
                    &sides.target_range(chunk),
                    &sides.row,
                )
                .await?,
            );
        }
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

/// One table on both sides.
struct Sides<'a> {
    src: &'a Client,
    dst: &'a Client,
    source: String,
    target: String,
    source_key: KeyColumns,
    target_key: KeyColumns,
    /// What a row is compared as: `x`, or `row(x.a, …)` of the shared columns.
    row: String,
    /// ` and not x.<soft-delete column>` on the target, or empty.
    live: String,
}

impl Sides<'_> {
    /// The target's rows of `chunk`: by key range, and live (not marked deleted).
    fn target_range(&self, chunk: &Chunk) -> String {
        format!("{}{}", self.target_key.range(chunk), self.live)
    }

    /// (rows, checksum) of a chunk on the source and on the target.
    async fn summaries(&self, chunk: &Chunk) -> anyhow::Result<((i64, i64), (i64, i64))> {
        Ok((
            summary(
                self.src,
                &self.source,
                &self.source_key.range(chunk),
                &self.row,
            )
            .await?,
            summary(self.dst, &self.target, &self.target_range(chunk), &self.row).await?,
        ))
    }
}

/// A chunk: rows with `lower <= key < upper` (no bound: open); bounds are key values in
/// their text form, one per key column.
struct Chunk {
    lower: Option<Vec<String>>,
    upper: Option<Vec<String>>,
}

/// A table's primary key on one side: how to compare a row's key with a bound.
struct KeyColumns {
    /// `x.col`, in key order.
    exprs: Vec<String>,
    /// The column types, to cast the bounds' text back.
    types: Vec<String>,
}

impl KeyColumns {
    async fn read(c: &Client, table: &str, key: &[String]) -> anyhow::Result<Self> {
        let rows = c
            .query(
                "select a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
                   from pg_catalog.pg_attribute a
                  where a.attrelid = $1::text::regclass and a.attname = any($2) and not a.attisdropped",
                &[&table, &key],
            )
            .await
            .map_err(|e| anyhow::anyhow!("reading the key of {table}: {}", db::describe(&e)))?;
        let mut exprs = Vec::new();
        let mut types = Vec::new();
        for k in key {
            let r = rows
                .iter()
                .find(|r| r.get::<_, &str>(0) == k)
                .ok_or_else(|| anyhow::anyhow!("table {table} has no key column {k}"))?;
            exprs.push(format!("x.{}", quote_ident(k)));
            types.push(r.get(1));
        }
        Ok(Self { exprs, types })
    }

    /// Cuts the table into chunks of `rows` rows by key (read on the source).
    async fn chunks(&self, c: &Client, table: &str, rows: i64) -> anyhow::Result<Vec<Chunk>> {
        let keys = self.exprs.join(", ");
        let texts = (1..=self.exprs.len())
            .map(|i| format!("k{i}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let aliased = self
            .exprs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} as k{}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let bounds = c
            .query(
                &format!(
                    "select array[{texts}] from (select {aliased}, row_number() over (order by {keys}) as rn from {table} x) s
                      where rn % $1 = 0 order by rn"
                ),
                &[&rows],
            )
            .await
            .map_err(|e| anyhow::anyhow!("cutting {table} into chunks: {}", db::describe(&e)))?;
        let bounds: Vec<Vec<String>> = bounds.iter().map(|r| r.get(0)).collect();
        let mut chunks = Vec::with_capacity(bounds.len() + 1);
        let mut lower = None;
        for b in bounds {
            chunks.push(Chunk {
                lower: lower.take(),
                upper: Some(b.clone()),
            });
            lower = Some(b);
        }
        chunks.push(Chunk { lower, upper: None });
        Ok(chunks)
    }

    /// The condition selecting a chunk's rows of `x`.
    fn range(&self, chunk: &Chunk) -> String {
        let row = |values: &[String]| {
            let v = values
                .iter()
                .zip(&self.types)
                .map(|(v, t)| format!("{}::{t}", quote_literal(v)))
                .collect::<Vec<_>>()
                .join(", ");
            format!("row({v})")
        };
        let keys = format!("row({})", self.exprs.join(", "));
        let mut parts = vec!["true".to_string()];
        if let Some(l) = &chunk.lower {
            parts.push(format!("{keys} >= {}", row(l)));
        }
        if let Some(u) = &chunk.upper {
            parts.push(format!("{keys} < {}", row(u)));
        }
        parts.join(" and ")
    }
}

async fn summary(c: &Client, table: &str, range: &str, row: &str) -> anyhow::Result<(i64, i64)> {
    let r = c
        .query_one(
            &format!(
                "select count(*), coalesce(sum(hashtext(({row})::text)::int8), 0)::int8 from {table} x where {range}"
            ),
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("checksumming {table}: {}", db::describe(&e)))?;
    Ok((r.get(0), r.get(1)))
}

async fn hashes(
    c: &Client,
    table: &str,
    key: &[String],
    range: &str,
    row: &str,
) -> anyhow::Result<BTreeMap<String, i32>> {
    let k = key
        .iter()
        .map(|c| format!("x.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = c
        .query(
            &format!("select row({k})::text, hashtext(({row})::text) from {table} x where {range}"),
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("comparing rows of {table}: {}", db::describe(&e)))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A readable report; keys only, never row values.
pub fn render(reports: &[TableReport]) -> String {
    let mut out = String::new();
    for r in reports {
        if r.equal() {
            let _ = writeln!(
                out,
                "  equal    {} ({} rows, {} chunk(s))",
                r.table, r.source_rows, r.chunks
            );
            continue;
        }
        let _ = writeln!(
            out,
            "  DIFFER   {}: source {} rows, target {} rows; {} of {} chunk(s) differ: {} missing, {} extra, {} changed on the target",
            r.table,
            r.source_rows,
            r.target_rows,
            r.differing_chunks,
            r.chunks,
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
