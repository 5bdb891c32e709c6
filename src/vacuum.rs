//! The vacuum: rotates the queue's event tables and empties old ones with TRUNCATE once every
//! batch that could read them is acknowledged (design invariant 5), and forgets old batches.
//!
//! Rule: writers are moved from table k to k+1 by a transaction that then takes an xid, X.
//! Every transaction that could still insert into k had its xid assigned before X (the
//! capture trigger runs after the row write, which assigned the xid, and reads the current
//! table after that), so its xid is below X. So k is done once, for every target, the oldest
//! unacknowledged snapshot's xmin is at least X: every transaction below X has finished and
//! is in an acknowledged batch. (Not a snapshot's xmax: that is the latest *completed* xid
//! + 1, and a transaction still running can hold an xid at or above it.)

use std::time::Duration;

use ddlwatcher::quote_ident;
use tokio_postgres::Client;

use crate::config::Config;
use crate::stage::{Progress, Step, StepError};

pub struct Vacuum {
    schema: String,
    rotation: Duration,
    /// Acknowledged batches kept for inspection, per target.
    keep_batches: i64,
}

/// The state of the queue's tables, for status and tests.
#[derive(Debug, Clone)]
pub struct QueueState {
    pub current: i64,
    /// (index, done, rows)
    pub tables: Vec<(i32, bool, i64)>,
}

impl Vacuum {
    pub fn new(config: &Config) -> Self {
        Self {
            schema: quote_ident(&config.internal_schema),
            rotation: config.processing_intervals.rotation(),
            keep_batches: 1000,
        }
    }

    /// Truncates every old table that is done; returns how many it emptied.
    async fn truncate_done(&self, client: &mut Client) -> Result<u32, StepError> {
        let s = &self.schema;
        let current: i64 = client
            .query_one(
                &format!("select last_value % 3 from {s}.queue_rotation"),
                &[],
            )
            .await
            .map_err(StepError::db("reading the current queue table"))?
            .get(0);
        // A switch never recorded (crash between setval and commit), or recorded by the old
        // rule: this statement's own xid is above every writer's that saw the old table.
        client
            .execute(
                &format!(
                    "update {s}.queue_table
                        set switched = pg_current_snapshot(), switched_xid = pg_current_xact_id(),
                            switched_at = coalesce(switched_at, clock_timestamp())
                      where idx <> $1 and not done and switched_xid is null"
                ),
                &[&(current as i32)],
            )
            .await
            .map_err(StepError::db("recording a queue switch"))?;
        // Tables whose every writer is visible in each target's fully acknowledged snapshot.
        let ready = client
            .query(
                &format!(
                    "select q.idx from {s}.queue_table q
                      where q.idx <> $1 and not q.done and q.switched_xid is not null
                        and not exists (
                            select 1 from {s}.target_state t
                             where t.state <> 'TERMINATED' and pg_snapshot_xmin(coalesce(
                                       (select b.snap_from from {s}.batch b
                                         where b.target = t.target and b.acked_at is null
                                         order by b.seq limit 1),
                                       t.last_snapshot)) < q.switched_xid)"
                ),
                &[&(current as i32)],
            )
            .await
            .map_err(StepError::db("checking queue tables"))?;
        let mut emptied = 0;
        for r in ready {
            let idx: i32 = r.get(0);
            let tx = client.transaction().await.map_err(StepError::db("begin"))?;
            tx.batch_execute(&format!(
                "set local lock_timeout = '2s';
                 truncate {s}.{};
                 update {s}.queue_table set done = true, switched = null, switched_xid = null where idx = {idx};",
                quote_ident(&format!("event_{idx}"))
            ))
            .await
            .map_err(StepError::db(format!("truncating event_{idx}")))?;
            tx.commit().await.map_err(StepError::db("commit"))?;
            tracing::debug!(table = idx, "queue table emptied");
            emptied += 1;
        }
        Ok(emptied)
    }

    /// Moves writers to the next table when it is empty and the current one is old enough.
    async fn rotate(&self, client: &mut Client) -> Result<bool, StepError> {
        let s = &self.schema;
        let row = client
            .query_one(
                &format!(
                    "select r.last_value, n.done, coalesce(extract(epoch from clock_timestamp() - c.switched_at_prev)::float8, 1e9::float8)
                       from {s}.queue_rotation r
                       join {s}.queue_table n on n.idx = (r.last_value + 1) % 3
                       cross join lateral (select max(switched_at) as switched_at_prev from {s}.queue_table) c"
                ),
                &[],
            )
            .await
            .map_err(StepError::db("reading queue rotation"))?;
        let (last, next_done, age): (i64, bool, f64) = (row.get(0), row.get(1), row.get(2));
        if !next_done || age * 1000.0 < self.rotation.as_millis() as f64 {
            return Ok(false);
        }
        let cur = last % 3;
        let has_rows: bool = client
            .query_one(
                &format!(
                    "select exists (select 1 from {s}.{})",
                    quote_ident(&format!("event_{cur}"))
                ),
                &[],
            )
            .await
            .map_err(StepError::db("checking the current queue table"))?
            .get(0);
        if !has_rows {
            return Ok(false);
        }
        let tx = client.transaction().await.map_err(StepError::db("begin"))?;
        // setval is not transactional: writers see the new table at once. The snapshot is
        // taken by the next statement, after it.
        let seq = format!("{s}.queue_rotation");
        tx.execute(
            "select setval($1::text::regclass, $2::int8)",
            &[&seq, &(last + 1)],
        )
        .await
        .map_err(StepError::db("switching queue tables"))?;
        tx.execute(
            &format!(
                "update {s}.queue_table set switched = pg_current_snapshot(), switched_xid = pg_current_xact_id(),
                        switched_at = clock_timestamp(), done = false
                  where idx = $1"
            ),
            &[&(cur as i32)],
        )
        .await
        .map_err(StepError::db("recording a queue switch"))?;
        tx.execute(
            &format!("update {s}.queue_table set done = false where idx = $1"),
            &[&(((cur + 1) % 3) as i32)],
        )
        .await
        .map_err(StepError::db("recording a queue switch"))?;
        tx.commit().await.map_err(StepError::db("commit"))?;
        tracing::debug!(from = cur, to = (cur + 1) % 3, "queue rotated");
        Ok(true)
    }

    /// Forgets the records of which columns a row trigger knew (`capture_form`) that no
    /// event in the queue needs: a record followed by a later one of its table once every
    /// event before that later one is gone — they are in queue tables of its rotation or
    /// earlier, emptied when the rotation moved on three times, or moved on and no table
    /// but the current one holds events — and the records of tables dropped since (their
    /// events are skipped).
    async fn forget_forms(&self, client: &Client) -> Result<(), StepError> {
        let s = &self.schema;
        let gone = "(r.cur >= g.rotation + 3 or (r.cur > g.rotation and r.emptied))";
        client
            .execute(
                &format!(
                    "with r as (select coalesce(pg_catalog.pg_sequence_last_value({rot}::pg_catalog.regclass), 0) as cur,
                                       not exists (select from {s}.queue_table q
                                                    where not q.done
                                                      and q.idx <> coalesce(pg_catalog.pg_sequence_last_value({rot}::pg_catalog.regclass), 0) % 3) as emptied)
                     delete from {s}.capture_form f using r
                      where exists (select from {s}.capture_form g
                                     where g.relid = f.relid and g.from_ev > f.from_ev and {gone})
                         or not exists (select from pg_catalog.pg_class c where c.oid = f.relid)",
                    rot = ddlwatcher::quote_literal(&format!("{s}.queue_rotation")),
                ),
                &[],
            )
            .await
            .map_err(StepError::db("forgetting the columns row triggers knew"))?;
        Ok(())
    }

    /// Forgets acknowledged batches beyond the most recent ones.
    async fn forget_batches(&self, client: &Client) -> Result<(), StepError> {
        let s = &self.schema;
        client
            .execute(
                &format!(
                    "delete from {s}.batch b using {s}.target_state t
                      where b.target = t.target and b.acked_at is not null and b.seq <= t.acked_seq - $1"
                ),
                &[&self.keep_batches],
            )
            .await
            .map_err(StepError::db("forgetting acknowledged batches"))?;
        Ok(())
    }
}

/// Size of the queue tables in bytes (every target's events). `schema` is the quoted
/// internal schema.
pub async fn queue_bytes(client: &Client, schema: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            &format!(
                "select (pg_catalog.pg_total_relation_size({}) + pg_catalog.pg_total_relation_size({})
                         + pg_catalog.pg_total_relation_size({}))::int8",
                ddlwatcher::quote_literal(&format!("{schema}.event_0")),
                ddlwatcher::quote_literal(&format!("{schema}.event_1")),
                ddlwatcher::quote_literal(&format!("{schema}.event_2")),
            ),
            &[],
        )
        .await?
        .get(0))
}

/// Reads the queue's state (for status output and tests).
pub async fn queue_state(
    client: &Client,
    schema: &str,
) -> Result<QueueState, tokio_postgres::Error> {
    let s = quote_ident(schema);
    let current: i64 = client
        .query_one(
            &format!("select last_value % 3 from {s}.queue_rotation"),
            &[],
        )
        .await?
        .get(0);
    let rows = client
        .query(
            &format!(
                "select q.idx, q.done,
                        case q.idx when 0 then (select count(*) from {s}.event_0)
                                   when 1 then (select count(*) from {s}.event_1)
                                   else (select count(*) from {s}.event_2) end
                   from {s}.queue_table q order by q.idx"
            ),
            &[],
        )
        .await?;
    Ok(QueueState {
        current,
        tables: rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    })
}

impl Step for Vacuum {
    fn name(&self) -> String {
        "vacuum".into()
    }

    async fn step(&mut self, client: &mut Client) -> Result<Progress, StepError> {
        if self.truncate_done(client).await? > 0 {
            self.forget_forms(client).await?;
        }
        self.rotate(client).await?;
        self.forget_batches(client).await?;
        Ok(Progress::Idle)
    }
}
