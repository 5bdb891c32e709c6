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
/// the tables of `filter` (a regular expression over `schema.table`).
const TARGET_CONDITION: &str = "case when e.ev_op in ('S', 'Q') then e.ev_table::text = b.target
             else (e.ev_schema::text || '.' || e.ev_table::text) ~ b.filter end";

/// [`TARGET_CONDITION`] without the table filter: the target's schema and sequence events,
/// and the row events of every table.
const TARGET_CONDITION_UNFILTERED: &str =
    "(e.ev_op not in ('S', 'Q') or e.ev_table::text = b.target)";

/// The events of one batch, as a subquery of queue rows, from the batch's bounds passed as
/// parameters ([`BatchBounds::params`]): `$1` snap_from, `$2` snap_to, `$3` filter, `$4`
/// target, `$5` the txids of a batch split between transactions (else null). As constants
/// of the statement's plan they bound an index scan of `ev_txid` (joined with the batch
/// row, the planner scanned every queued event for each batch, and a split batch's txid
/// array was detoasted for each row: both grew with the queue).
///
/// Without `filtered`, the row events of every table in the batch's transactions: exact
/// when every table among them matches the filter — the transmitter checks that per table
/// first, which spares a regular expression per event.
pub fn batch_events_sql(s: &str, filtered: bool) -> String {
    let target = if filtered {
        TARGET_CONDITION
    } else {
        TARGET_CONDITION_UNFILTERED
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
        schema: &str,
        target: &str,
        seq: i64,
    ) -> Result<Self, StepError> {
        let row = client
            .query_one(
                &format!(
                    "select snap_from::text, snap_to::text, filter, txids::text[]
                       from {schema}.batch where target = $1 and seq = $2"
                ),
                &[&target, &seq],
            )
            .await
            .map_err(StepError::db(format!("reading batch {seq}")))?;
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
        let row = tx
            .query_opt(
                &format!("select next_seq, last_snapshot::text, state from {s}.target_state where target = $1 for update"),
                &[&target],
            )
            .await
            .map_err(StepError::db("reading target state"))?
            .ok_or_else(|| StepError::Fatal(format!("target `{target}` is not registered in {s}.target_state")))?;
        let mut next_seq: i64 = row.get(0);
        let from: String = row.get(1);
        if row.get::<_, &str>(2) == "TERMINATED" {
            return Ok(0); // a terminated mirror gets no more batches
        }
        let now: String = tx
            .query_one("select pg_current_snapshot()::text", &[])
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
                      where {BATCH_TXNS_CONDITION} and {TARGET_CONDITION}
                      group by e.ev_txid
                      order by 3"
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
            for (txids, events) in groups {
                let txids: Option<Vec<String>> = split.then_some(txids);
                tx.execute(
                    &format!(
                        "insert into {s}.batch (target, seq, snap_from, snap_to, txids, filter, events)
                         values ($1, $2, $3::text::pg_snapshot, $4::text::pg_snapshot, $5::text[]::xid8[], $6, $7)"
                    ),
                    &[&target, &next_seq, &from, &now, &txids, &filter, &events],
                )
                .await
                .map_err(StepError::db("recording a batch"))?;
                tracing::debug!(target, batch_seq = next_seq, events, "batch cut");
                next_seq += 1;
                made += 1;
            }
        }
        tx.execute(
            &format!(
                "update {s}.target_state set next_seq = $2, last_snapshot = $3::text::pg_snapshot where target = $1"
            ),
            &[&target, &next_seq, &now],
        )
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
