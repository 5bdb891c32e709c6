//! The batcher: cuts the queue into batches of whole transactions (PgQ's tick rule).
//!
//! Each step takes a snapshot `now` and, per target, makes batches of the events whose
//! transaction is visible in `now` but not in the target's last snapshot. A transaction that
//! began before one tick and commits after it is therefore in exactly one batch, whole. When
//! the interval holds more than `max_events_per_batch` events, it is split between
//! transactions (never inside one), ordered by each transaction's last event id: a
//! transaction that waited on another's row lock has its later events after all of the
//! other's, so this order respects every row conflict.

use ddlwatcher::{quote_ident, TargetExpression};
use tokio_postgres::Client;

use crate::config::Config;
use crate::stage::{Progress, Step, StepError};

/// SQL condition selecting the events of an unsplit batch row `b`'s (`txids` null)
/// transactions from the queue `e`: visible in `snap_to` and not in `snap_from`.
const BATCH_TXNS_CONDITION: &str = "e.ev_txid >= pg_snapshot_xmin(b.snap_from)
    and e.ev_txid < pg_snapshot_xmax(b.snap_to)
    and pg_visible_in_snapshot(e.ev_txid, b.snap_to)
    and not pg_visible_in_snapshot(e.ev_txid, b.snap_from)";

/// The target's events among them: its schema and sequence events, and the row events of
/// the tables of `filter` (see [`filter_condition`]).
fn target_condition(filter: &str) -> String {
    format!(
        "case when e.ev_op in ('S', 'Q') then e.ev_table::text = b.target else {} end",
        filter_condition(filter)
    )
}

/// The target's schema and sequence events, and the row events of every table.
const TARGET_CONDITION_UNFILTERED: &str =
    "(e.ev_op not in ('S', 'Q') or e.ev_table::text = b.target)";

/// Whether a row event `e` is of a table of `filter`, the regular expression over
/// `schema.table` recorded with each batch ([`TargetExpression::to_regex`]). A filter of
/// that form is matched as the globs it came from, with LIKE on the name columns: per
/// event about half the cost of the regular expression over the joined names (measured
/// on a batch cut of 500 000 events: 200 ms against 410 ms). Any other filter is matched
/// as the regular expression (`b.filter`).
///
/// [`TargetExpression::to_regex`]: ddlwatcher::TargetExpression::to_regex
pub fn filter_condition(filter: &str) -> String {
    match globs_of_regex(filter) {
        Some(globs) => {
            let alternatives: Vec<String> = globs
                .iter()
                .map(|(schema, table)| {
                    format!(
                        "({} and {})",
                        like_condition("e.ev_schema", schema),
                        like_condition("e.ev_table", table)
                    )
                })
                .collect();
            format!("({})", alternatives.join(" or "))
        }
        None => "(e.ev_schema::text || '.' || e.ev_table::text) ~ b.filter".into(),
    }
}

/// `column like pattern`, or what it comes to without a LIKE: `true` for `%` (the name
/// columns are never null), `=` for a pattern without wildcards (the common
/// `target_expression: "public.*"` then costs an event one name comparison).
fn like_condition(column: &str, pattern: &str) -> String {
    if pattern == "%" {
        "true".into()
    } else if !pattern.contains(['%', '_', '\\']) {
        format!("{column} = {}", ddlwatcher::quote_literal(pattern))
    } else {
        format!("{column} like {}", ddlwatcher::quote_literal(pattern))
    }
}

/// The (schema, table) LIKE patterns of a regular expression written by
/// `TargetExpression::to_regex` — `^(S\.T|…)$`, where `.*` is a glob's `*`, `.` its `?`,
/// `\c` a literal `c`, and the first `\.` of each alternative separates schema from table
/// (a schema glob holds no dot) — or `None` for anything else.
fn globs_of_regex(filter: &str) -> Option<Vec<(String, String)>> {
    let body = filter.strip_prefix("^(")?.strip_suffix(")$")?;
    let mut out = Vec::new();
    // The alternative being read: its schema pattern once its separator was read.
    let (mut schema, mut like): (Option<String>, String) = (None, String::new());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' => out.push((schema.take()?, std::mem::take(&mut like))),
            '\\' => match chars.next()? {
                '.' if schema.is_none() => schema = Some(std::mem::take(&mut like)),
                c => {
                    if matches!(c, '%' | '_' | '\\') {
                        like.push('\\');
                    }
                    like.push(c);
                }
            },
            '.' if chars.peek() == Some(&'*') => {
                chars.next();
                like.push('%');
            }
            '.' => like.push('_'),
            '_' => like.push_str("\\_"),
            c if c.is_ascii_alphanumeric() || !c.is_ascii() => like.push(c),
            _ => return None,
        }
    }
    out.push((schema?, like));
    if out.iter().any(|(s, t)| s.is_empty() || t.is_empty()) {
        return None;
    }
    Some(out)
}

/// The events of one batch, as a subquery of queue rows, from the batch's bounds passed as
/// parameters ([`BatchBounds::params`]): `$1` snap_from, `$2` snap_to, `$3` filter, `$4`
/// target, `$5` the txids of a batch split between transactions (else null). As constants
/// of the statement's plan they bound an index scan of `ev_txid` (joined with the batch
/// row, the planner scanned every queued event for each batch, and a split batch's txid
/// array was detoasted for each row: both grew with the queue).
///
/// With `filter` (the batch's, as `$3` holds it), the target's events; without, the row
/// events of every table in the batch's transactions: exact when every table among them
/// matches the filter — the transmitter checks that per table first, which spares
/// matching each event.
pub fn batch_events_sql(s: &str, filter: Option<&str>) -> String {
    let target = match filter {
        Some(f) => target_condition(f),
        None => TARGET_CONDITION_UNFILTERED.to_string(),
    };
    format!(
        "(select e.* from {s}.event e,
                 (select $1::text::pg_snapshot as snap_from, $2::text::pg_snapshot as snap_to,
                         $3::text as filter, $4::text as target) b
           where {BATCH_TXNS_CONDITION}
             and {target}
             and ($5::text[] is null or e.ev_txid = any($5::text[]::xid8[])))"
    )
}

/// A batch's bounds, read from its row in the queue's `batch` table.
pub struct BatchBounds {
    pub snap_from: String,
    pub snap_to: String,
    pub filter: String,
    pub target: String,
    pub txids: Option<Vec<String>>,
}

impl BatchBounds {
    pub async fn read(
        client: &Client,
        prepared: &crate::db::Prepared,
        schema: &str,
        target: &str,
        seq: i64,
    ) -> Result<Self, StepError> {
        let context = format!("reading batch {seq}");
        let st = prepared
            .get(
                client,
                &format!(
                    "select snap_from::text, snap_to::text, filter, txids::text[]
                       from {schema}.batch where target = $1 and seq = $2"
                ),
                &context,
            )
            .await?;
        let row = client
            .query_one(&st, &[&target, &seq])
            .await
            .map_err(StepError::db(context))?;
        Ok(Self {
            snap_from: row.get(0),
            snap_to: row.get(1),
            filter: row.get(2),
            target: target.to_string(),
            txids: row.get(3),
        })
    }

    /// The parameters of [`batch_events_sql`].
    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [
            &self.snap_from,
            &self.snap_to,
            &self.filter,
            &self.target,
            &self.txids,
        ]
    }
}

/// Cuts batches for every target of the instance.
pub struct Batcher {
    schema: String,
    targets: Vec<(String, String)>,
    max_events: i64,
    /// Targets with their own `max_batch_size`.
    max_per_target: Vec<(String, i64)>,
    /// Transmitters to wake when their target got a batch.
    wakes: Vec<(String, std::sync::Arc<tokio::sync::Notify>)>,
    /// Its statements other than the queue read, prepared on the connection.
    prepared: crate::db::Prepared,
}

impl Batcher {
    pub fn new(config: &Config) -> Self {
        let targets = config
            .targets
            .iter()
            .map(|(name, t)| {
                let expr = TargetExpression::parse(&t.target_expression).expect("validated config");
                (name.clone(), expr.to_regex())
            })
            .collect();
        Self {
            schema: quote_ident(&config.internal_schema),
            targets,
            max_events: config.max_events_per_batch as i64,
            max_per_target: config
                .targets
                .iter()
                .filter_map(|(n, t)| t.max_batch_size.map(|m| (n.clone(), m as i64)))
                .collect(),
            wakes: Vec::new(),
            prepared: Default::default(),
        }
    }

    /// Wakes `wake` whenever a batch for `target` is cut.
    pub fn wake_on_batch(&mut self, target: &str, wake: std::sync::Arc<tokio::sync::Notify>) {
        self.wakes.push((target.to_string(), wake));
    }

    /// Makes the batches of one target up to a fresh snapshot; returns how many it made.
    pub async fn cut(
        &self,
        client: &mut Client,
        target: &str,
        filter: &str,
    ) -> Result<u64, StepError> {
        let s = &self.schema;
        let tx = client.transaction().await.map_err(StepError::db("begin"))?;
        let st = self.prepared.get(
            &tx,
            &format!("select next_seq, last_snapshot::text, state from {s}.target_state where target = $1 for update"),
            "reading target state",
        )
        .await?;
        let row = tx
            .query_opt(&st, &[&target])
            .await
            .map_err(StepError::db("reading target state"))?
            .ok_or_else(|| {
                StepError::Fatal(format!(
                    "target `{target}` is not registered in {s}.target_state"
                ))
            })?;
        let mut next_seq: i64 = row.get(0);
        let from: String = row.get(1);
        if row.get::<_, &str>(2) == "TERMINATED" {
            return Ok(0); // a terminated mirror gets no more batches
        }
        // With the snapshot, the count's settings for this transaction: the interval's
        // events read through the txid index, in its order, grouped by transaction as they
        // come without sorting them (a backlog of 500 000 events: 190 ms against 290 ms with
        // the bitmap scan and sort the planner picks, its estimates taken while the queue
        // table was nearly empty).
        let st = self
            .prepared
            .get(
                &tx,
                "select pg_current_snapshot()::text,
                        set_config('enable_bitmapscan', 'off', true), set_config('work_mem', '32MB', true)",
                "taking a snapshot",
            )
            .await?;
        let now: String = tx
            .query_one(&st, &[])
            .await
            .map_err(StepError::db("taking a snapshot"))?
            .get(0);
        let txns = tx
            .query(
                &format!(
                    "select e.ev_txid::text, count(*), max(e.ev_id)
                       from {s}.event e,
                            (select $1::text::pg_snapshot as snap_from, $2::text::pg_snapshot as snap_to,
                                    $3::text as filter, $4::text as target) b
                      where {BATCH_TXNS_CONDITION} and {condition}
                      group by e.ev_txid
                      order by 3",
                    condition = target_condition(filter)
                ),
                &[&from, &now, &filter, &target],
            )
            .await
            .map_err(StepError::db("counting new events"))?;
        let total: i64 = txns.iter().map(|r| r.get::<_, i64>(1)).sum();
        let mut made = 0;
        let max_events = self
            .max_per_target
            .iter()
            .find(|(t, _)| t == target)
            .map_or(self.max_events, |(_, m)| *m);
        if total > 0 {
            // Group whole transactions into batches of at most max_events (one transaction
            // larger than that makes a batch of its own).
            let mut groups: Vec<(Vec<String>, i64)> = vec![(Vec::new(), 0)];
            for r in &txns {
                let n: i64 = r.get(1);
                let last = groups.last_mut().expect("non-empty");
                if last.1 > 0 && last.1 + n > max_events {
                    groups.push((Vec::new(), 0));
                }
                let last = groups.last_mut().expect("non-empty");
                last.0.push(r.get(0));
                last.1 += n;
            }
            let split = groups.len() > 1;
            let st = self.prepared.get(
                &tx,
                &format!(
                    "insert into {s}.batch (target, seq, snap_from, snap_to, txids, filter, events)
                     values ($1, $2, $3::text::pg_snapshot, $4::text::pg_snapshot, $5::text[]::xid8[], $6, $7)"
                ),
                "recording a batch",
            )
            .await?;
            for (txids, events) in groups {
                let txids: Option<Vec<String>> = split.then_some(txids);
                tx.execute(
                    &st,
                    &[&target, &next_seq, &from, &now, &txids, &filter, &events],
                )
                .await
                .map_err(StepError::db("recording a batch"))?;
                tracing::debug!(target, batch_seq = next_seq, events, "batch cut");
                next_seq += 1;
                made += 1;
            }
        }
        let st = self.prepared.get(
            &tx,
            &format!(
                "update {s}.target_state set next_seq = $2, last_snapshot = $3::text::pg_snapshot where target = $1"
            ),
            "advancing the target cursor",
        )
        .await?;
        tx.execute(&st, &[&target, &next_seq, &now])
            .await
            .map_err(StepError::db("advancing the target cursor"))?;
        tx.commit().await.map_err(StepError::db("commit"))?;
        Ok(made)
    }
}

impl Step for Batcher {
    fn name(&self) -> String {
        "batcher".into()
    }

    fn connected(&self) {
        self.prepared.clear();
    }

    async fn step(&mut self, client: &mut Client) -> Result<Progress, StepError> {
        for (target, filter) in &self.targets {
            if self.cut(client, target, filter).await? > 0 {
                for (_, wake) in self.wakes.iter().filter(|(t, _)| t == target) {
                    wake.notify_one();
                }
            }
        }
        Ok(Progress::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddlwatcher::TargetExpression;

    fn globs(expression: &str) -> Option<Vec<(String, String)>> {
        globs_of_regex(&TargetExpression::parse(expression).unwrap().to_regex())
    }

    #[test]
    fn filters_of_target_expressions_become_like_patterns() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(s, t)| (s.to_string(), t.to_string()))
                .collect()
        };
        assert_eq!(globs("public.*"), Some(pairs(&[("public", "%")])));
        assert_eq!(
            globs("app.order_?, s?.a.b*, x.100%"),
            Some(pairs(&[
                ("app", "order\\__"),
                ("s_", "a.b%"),
                ("x", "100\\%")
            ]))
        );
        assert_eq!(globs("a\\b.c|d"), Some(pairs(&[("a\\\\b", "c|d")])));
        assert_eq!(globs("é.ü*"), Some(pairs(&[("é", "ü%")])));
    }

    #[test]
    fn a_pattern_without_wildcards_is_an_equality_and_a_lone_percent_no_condition() {
        let regex = |e: &str| TargetExpression::parse(e).unwrap().to_regex();
        assert_eq!(
            filter_condition(&regex("public.*")),
            "((e.ev_schema = 'public' and true))"
        );
        assert_eq!(
            filter_condition(&regex("app.order_?, s?.a.b*")),
            "((e.ev_schema = 'app' and e.ev_table like 'order\\__') or (e.ev_schema like 's_' and e.ev_table like 'a.b%'))"
        );
    }

    #[test]
    fn other_filters_stay_regular_expressions() {
        for filter in [
            "",
            "^()$",
            "^(a)$",
            "^(a\\.b",
            "a\\.b",
            "^(a\\.[bc])$",
            "^(a\\.b+)$",
            "^(a\\.b|)$",
        ] {
            assert_eq!(globs_of_regex(filter), None, "{filter}");
            assert!(filter_condition(filter).ends_with("~ b.filter"), "{filter}");
        }
    }
}
