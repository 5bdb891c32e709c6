//! The transmitter: ships a target's batches in sequence over HTTP and records the
//! acknowledged position, which lets the vacuum rotate the queue.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ddlwatcher::quote_ident;
use futures_util::stream::FuturesOrdered;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::value::RawValue;
use tokio_postgres::Client;

use crate::batcher::{batch_events_sql, BatchBounds};
use crate::config::{Config, Secret, Target};
use crate::stage::{Progress, Step, StepError};
use crate::wire::{self, Batch, DdlVersion, Event, Op, TableMeta};

/// Request bodies: small ones whole, batches streamed.
type ReqBody = crate::tls::Body;

/// Error kinds (`pgteleport_errors_total`): the target could not be reached or gave no
/// answer in time; it answered with an error (a held batch, a refusal).
const UNREACHABLE: &str = "target_unreachable";
const REFUSED: &str = "target_error";

/// Ships the batches of one target.
pub struct Transmitter {
    schema: String,
    source: String,
    target: String,
    apply_schema: Option<String>,
    /// The mirror's soft-delete and synced-at columns, set on every table it ships.
    soft_delete_column: Option<String>,
    synced_at_column: Option<String>,
    /// Columns that never leave the source, per `schema.table`.
    exclude: std::collections::BTreeMap<String, Vec<String>>,
    /// Tables written under another name: source (schema, table) → target's.
    renames: crate::config::Renames,
    base_url: String,
    token: Option<Secret>,
    timeout: Duration,
    http: crate::tls::HttpClient,
    /// Events per segment of a streamed batch.
    segment_events: usize,
    /// Whether the target's position was read since (re)start (or since a failed request).
    reconciled: AtomicBool,
    /// The target asked to wait (logged once).
    waiting: AtomicBool,
    /// The schema version the target reported applied in its last answer.
    acked_ddl: std::sync::atomic::AtomicI64,
    /// Notified by the batcher when it cut a batch: sent at once, not at the next interval.
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// The per-batch statements other than the queue reads, prepared on the connection.
    prepared: crate::db::Prepared,
    /// Whether `target_state` may hold an error to clear (unknown at start: yes).
    error_recorded: AtomicBool,
    /// Diffing mode: row images written before the ddlwatcher's look may hold a json column
    /// the row trigger did not know yet, in its JSON form ([`Tables::json_form`]).
    diffing: bool,
}

/// A target's answer that is not success.
#[derive(Debug)]
enum Refusal {
    /// The target applied up to `applied`.
    Position { applied: i64 },
    /// Try again later (held, unavailable, network); the kind of error for the metrics.
    Retry(&'static str, String),
    /// The target asks to wait (an initial load is running there).
    Wait(String),
    /// Reading the batch on the source failed.
    Source(StepError),
}

impl Transmitter {
    /// What the batcher notifies after cutting a batch for this target.
    pub fn waker(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    pub fn new(config: &Config, name: &str, target: &Target) -> Result<Self, crate::tls::TlsError> {
        let (base_url, connector) = crate::tls::https_connector(&target.endpoint)?;
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            schema: quote_ident(&config.internal_schema),
            source: config.database.name.clone(),
            target: name.to_string(),
            apply_schema: target.apply_schema.clone(),
            soft_delete_column: target.soft_delete_col_name.clone(),
            synced_at_column: target.synced_at_col_name.clone(),
            exclude: target.exclude_columns.clone(),
            renames: target.renames(),
            base_url,
            token: target.auth_token.clone(),
            timeout: Duration::from_secs(target.endpoint.timeout_seconds),
            http,
            segment_events: config.batch_size,
            reconciled: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            acked_ddl: std::sync::atomic::AtomicI64::new(-1),
            wake: Default::default(),
            prepared: Default::default(),
            error_recorded: AtomicBool::new(true),
            diffing: !config.use_event_triggers,
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        zstd: bool,
        body: ReqBody,
    ) -> Result<Request<ReqBody>, String> {
        let token = self.token.as_ref().map(|t| t.expose());
        let mut req = crate::tls::request(&self.base_url, token, method, path);
        if zstd {
            req = req.header("content-encoding", "zstd");
        }
        req.body(body).map_err(|e| e.to_string())
    }

    async fn send(&self, method: Method, path: &str) -> Result<(StatusCode, Bytes), String> {
        let req = self.request(method, path, false, crate::tls::empty())?;
        match tokio::time::timeout(self.timeout, crate::tls::exchange(&self.http, req)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", self.timeout.as_secs())),
        }
    }

    /// What the target says of its apply of this source's batches (see [`TargetAccount`]).
    fn account(&self) -> TargetAccount {
        TargetAccount {
            http: self.http.clone(),
            base: self.base_url.clone(),
            token: self.token.as_ref().map(|t| t.expose().to_string()),
            target: self.target.clone(),
            ours: crate::stage::batches_of(&self.source, &self.target),
        }
    }

    /// Asks the target how far it applied.
    async fn position(&self) -> Result<i64, String> {
        let path = format!("/v1/position/{}/{}", self.source, self.target);
        let (status, body) = self.send(Method::GET, &path).await?;
        if status != StatusCode::OK {
            return Err(format!(
                "position request answered {status}: {}",
                error_message(&body)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("position answer: {e}"))?;
        v.get("applied_seq")
            .and_then(|s| s.as_i64())
            .ok_or_else(|| "position answer lacks applied_seq".to_string())
    }

    /// Marks every batch up to `applied` acknowledged. Refuses when the target claims
    /// batches this source never made (it was restored, or the source reinstalled).
    async fn acknowledge(&self, client: &Client, applied: i64) -> Result<(), StepError> {
        let s = &self.schema;
        let context = "reading target state";
        let st = self
            .prepared
            .get(
                client,
                &format!("select next_seq from {s}.target_state where target = $1"),
                context,
            )
            .await?;
        let next: i64 = client
            .query_one(&st, &[&self.target])
            .await
            .map_err(StepError::db(context))?
            .get(0);
        if applied >= next {
            return Err(StepError::Fatal(format!(
                "target `{}` says it applied batch {applied} from source `{}`, but this source has only made batches up to {}; \
                 the source's queue was reinstalled or the target belongs to another source with the same name — \
                 reset the target's position (delete its row in teleport.applied) after checking the data",
                self.target,
                self.source,
                next - 1
            )));
        }
        let context = "recording the acknowledged position";
        let st = self
            .prepared
            .get(
                client,
                &format!(
                    "with a as (update {s}.batch set acked_at = clock_timestamp()
                                 where target = $1 and seq <= $2 and acked_at is null)
                     update {s}.target_state set acked_seq = greatest(acked_seq, $2), acked_at = clock_timestamp()
                      where target = $1"
                ),
                context,
            )
            .await?;
        client
            .execute(&st, &[&self.target, &applied])
            .await
            .map_err(StepError::db(context))?;
        Ok(())
    }

    /// The tables the row events of batch `seq` refer to, described from the source
    /// catalog, and the index of each (captured schema, name, oid) among them; `None` for
    /// a table dropped since (its events are skipped; the drop reaches the target as a
    /// schema change).
    async fn batch_tables(
        &self,
        client: &Client,
        seq: i64,
        bounds: &BatchBounds,
    ) -> Result<Tables, StepError> {
        let s = &self.schema;
        // Every table in the batch's transactions, and whether the filter takes it: the
        // regular expression runs once per table here, not once per event. Grouped by the
        // name columns themselves, cast to text once per table (grouping by the casts sorted
        // text made for each event: 6.6–7.7 ms against 5.6–6.3 ms for 10 000 events).
        let all = client
            .query(
                &format!(
                    "select g.*, (g.s || '.' || g.t) ~ $3::text
                       from (select e.ev_schema::text as s, e.ev_table::text as t, coalesce(e.ev_relid, 0::oid),
                                    count(*) filter (where e.ev_op = 'I'), count(*) filter (where e.ev_op = 'U'),
                                    count(*) filter (where e.ev_op = 'D'), count(*) filter (where e.ev_op = 'T')
                               from {events} e
                              where e.ev_op not in ('S', 'Q')
                              group by e.ev_schema, e.ev_table, coalesce(e.ev_relid, 0::oid)) g",
                    events = batch_events_sql(s, None)
                ),
                &bounds.params(),
            )
            .await
            .map_err(StepError::db(format!("reading the tables of batch {seq}")))?;
        let filtered = all.iter().any(|r| !r.get::<_, bool>(7));
        let (rows, other): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.get::<_, bool>(7));
        // Names are what the target has at this point of the stream; key and columns
        // come from the catalog by oid.
        let names: Vec<(String, String, u32)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let described = self.describe(client, &names).await?;
        let mut tables = Tables {
            filtered,
            ..Default::default()
        };
        // Events of other tables are skipped when read unfiltered (they are not read at
        // all when some table is filtered out).
        for r in &other {
            tables.index.insert((r.get(0), r.get(1), r.get(2)), None);
        }
        for r in &rows {
            tables.rows.schemas.push(r.get(0));
            tables.rows.names.push(r.get(1));
            for (i, column) in tables.rows.counts.iter_mut().enumerate() {
                column.push(r.get(3 + i));
            }
        }
        for (n, meta) in names.into_iter().zip(described) {
            match meta {
                Some((mut m, mut excluded)) => {
                    // By the names the config gives under the captured table name (the
                    // current name's are in `excluded` already).
                    if let Some(cols) = self.exclude.get(&format!("{}.{}", m.schema, m.name)) {
                        excluded.extend(cols.iter().cloned());
                    }
                    let excluded: Vec<String> = excluded.into_iter().collect();
                    if let Some(c) = excluded.iter().find(|c| m.key.contains(c)) {
                        return Err(StepError::Fatal(format!(
                            "mirror `{}` excludes column `{c}` of {}.{}, which is in its key: key columns must replicate; \
                             remove it from exclude_columns",
                            self.target, m.schema, m.name
                        )));
                    }
                    m.columns.retain(|c| !excluded.contains(c));
                    m.generated.retain(|c| !excluded.contains(c));
                    m.json_columns.retain(|(c, _)| !excluded.contains(c));
                    if let Some((schema, name)) = self.renames.get(&(n.0.clone(), n.1.clone())) {
                        (m.schema, m.name) = (schema.clone(), name.clone());
                    }
                    m.oid = (n.2 != 0).then_some(n.2);
                    tables.relids.push(n.2);
                    tables.index.insert(n, Some(tables.metas.len() as u32));
                    tables.metas.push(m);
                    tables.excluded.push(excluded);
                }
                None => {
                    tracing::debug!(table = %format!("{}.{}", n.0, n.1), "skipping events of a table dropped on the source");
                    tables.index.insert(n, None);
                }
            }
        }
        if self.diffing {
            (tables.json_form, tables.known) = self.json_forms(client, &tables).await?;
        }
        Ok(tables)
    }

    /// For each table of `tables` whose row images may hold a json/jsonb column in its JSON
    /// form (diffing mode): from which event on, which columns ([`Tables::json_form`]).
    /// Also the columns each window of records knew ([`Tables::known`]).
    async fn json_forms(
        &self,
        client: &Client,
        tables: &Tables,
    ) -> Result<(Windows, HashMap<u32, Vec<(i64, i64, Vec<String>)>>), StepError> {
        let s = &self.schema;
        let context = "reading the columns the row triggers knew";
        let st = self
            .prepared
            .get(
                client,
                &format!(
                    "select f.relid, f.from_ev, f.columns, f.json from {s}.capture_form f
                      where f.relid = any($1) order by f.relid, f.from_ev"
                ),
                context,
            )
            .await?;
        let rows = client
            .query(&st, &[&tables.relids])
            .await
            .map_err(StepError::db(context))?;
        let mut forms: HashMap<u32, Vec<Form>> = HashMap::new();
        for r in rows {
            forms
                .entry(r.get(0))
                .or_default()
                .push((r.get(1), r.get(2), r.get(3)));
        }
        let mut out = HashMap::new();
        let mut known = HashMap::new();
        for (i, (meta, relid)) in tables.metas.iter().zip(&tables.relids).enumerate() {
            let Some(forms) = forms.get(relid) else {
                continue;
            };
            let now: Vec<String> = meta.json_columns.iter().map(|(c, _)| c.clone()).collect();
            let windows = json_form_windows(forms, &now);
            if windows.iter().any(|(_, c)| !c.is_empty()) {
                out.insert(i as u32, windows);
            }
            known.insert(i as u32, known_windows(forms));
        }
        Ok((out, known))
    }

    /// Reads batch `seq` from the queue and writes it as segments into `out` as it reads:
    /// memory holds one segment, whatever the batch's size. Returns (events, bytes sent).
    async fn produce(
        &self,
        client: &Client,
        seq: i64,
        bounds: &BatchBounds,
        tables: Tables,
        ddl: Vec<DdlVersion>,
        out: Frames,
    ) -> Result<(usize, usize), StepError> {
        let Frames { tx: out, patience } = out;
        let s = &self.schema;
        let rows = client
            .query_raw(
                &format!(
                    "select e.ev_id, e.ev_op, e.ev_schema::text, e.ev_table::text, e.ev_key::text,
                            case when e.ev_op = 'S' then {checked} else e.ev_data::text end,
                            e.ev_time, e.ev_txid,
                            coalesce(e.ev_relid, 0::oid)
                       from {events} e
                      order by e.ev_id",
                    events = batch_events_sql(s, tables.filtered.then_some(bounds.filter.as_str())),
                    checked = SCHEMA_EVENT_CHECKS_KEPT,
                ),
                bounds.params(),
            )
            .await
            .map_err(StepError::db(format!("reading batch {seq}")))?;
        let mut rows = std::pin::pin!(rows);
        let encoding = |e: std::io::Error| StepError::Other(format!("encoding batch {seq}: {e}"));
        let mut writer = wire::SegmentWriter::new(true).map_err(encoding)?;
        let emit = |bytes: Bytes| {
            let out = out.clone();
            async move {
                if bytes.is_empty() {
                    return Ok(0);
                }
                let n = bytes.len();
                match tokio::time::timeout(patience, out.send(Ok(Frame::data(bytes)))).await {
                    Ok(Ok(())) => Ok(n),
                    Ok(Err(_)) => Err(StepError::Other(format!(
                        "target `{}` stopped reading batch {seq}",
                        self.target
                    ))),
                    Err(_) => Err(StepError::Other(format!(
                        "target `{}` read nothing of batch {seq} for {} s",
                        self.target,
                        patience.as_secs()
                    ))),
                }
            }
        };
        let segment = |part: u32, ddl: Vec<DdlVersion>| Batch {
            version: wire::FORMAT_VERSION,
            part,
            last: false,
            source: self.source.clone(),
            target: self.target.clone(),
            seq,
            apply_schema: self.apply_schema.clone(),
            captured_at_us: None,
            tables: tables.metas.clone(),
            events: Vec::new(),
            ddl,
        };
        let mut current = segment(0, ddl);
        let (mut events, mut sent, mut payload) = (0usize, 0usize, 0usize);
        // A full segment goes out when the next event arrives, or as the last one: a batch
        // that fills its segments exactly sends no empty last part.
        let mut full = false;
        while let Some(r) = rows
            .try_next()
            .await
            .map_err(StepError::db(format!("reading batch {seq}")))?
        {
            if full {
                let next = segment(current.part + 1, Vec::new());
                let done = std::mem::replace(&mut current, next);
                let bytes = writer.push(&done).map_err(encoding)?;
                drop(done);
                sent += emit(bytes).await?;
                (full, payload) = (false, 0);
            }
            let op_code: i8 = r.get(1);
            let op = Op::from_code(op_code).ok_or_else(|| {
                StepError::Fatal(format!(
                    "event {} has unknown op {}",
                    r.get::<_, i64>(0),
                    op_code
                ))
            })?;
            let table = if op.is_stream_wide() {
                0
            } else {
                let key = (
                    r.get::<_, String>(2),
                    r.get::<_, String>(3),
                    r.get::<_, u32>(8),
                );
                match tables.index.get(&key) {
                    Some(Some(i)) => *i,
                    Some(None) => continue,
                    None => {
                        return Err(StepError::Other(format!(
                            "batch {seq} changed while being read (table {}.{} appeared); reading it again",
                            key.0, key.1
                        )))
                    }
                }
            };
            // A truncate's data is a partition's condition, not a row image.
            let excluded: &[String] = if op.is_stream_wide() || op == wire::Op::Truncate {
                &[]
            } else {
                &tables.excluded[table as usize]
            };
            let id: i64 = r.get(0);
            // Columns whose JSON strings are in their JSON form, not their text form (a
            // new image only: old ones are always in JSON form).
            let json_form: &[String] = match op {
                Op::Insert | Op::Update => tables.json_form(table, id),
                _ => &[],
            };
            // Columns the row image may name (a new image in a closed window of records).
            let known: Option<&[String]> = match op {
                Op::Insert | Op::Update => tables.known(table, id),
                _ => None,
            };
            // So for a keyless table's old row (whole): a column gone since, which the
            // target never has, would make the applier wait for a schema version to add it
            // ([`crate::applier`] applies pending ones first for an old row naming a
            // column the target's table lacks).
            let known_old: Option<&[String]> = match op {
                Op::Update | Op::Delete if tables.metas[table as usize].key.is_empty() => {
                    tables.known(table, id)
                }
                _ => None,
            };
            let raw = |v: Option<String>,
                       json_form: &[String],
                       known: Option<&[String]>|
             -> Result<Option<Box<RawValue>>, StepError> {
                v.map(|s| {
                    let s = if excluded.is_empty() && json_form.is_empty() && known.is_none() {
                        s
                    } else {
                        wire::object_edited(&s, |k, v| {
                            if excluded.iter().any(|x| x == k)
                                // Member "" of an old row is a count, not a column.
                                || known.is_some_and(|known| {
                                    !k.is_empty() && !known.iter().any(|c| c == k)
                                })
                            {
                                wire::Edit::Drop
                            } else if json_form.iter().any(|x| x == k) && v.get() != "null" {
                                // The text form: the JSON text (of a json column, as written:
                                // `to_json` puts it in the image as it is), as a string. A
                                // JSON `null` cannot be told from SQL NULL here.
                                wire::Edit::Replace(
                                    serde_json::to_string(v.get()).expect("a string serialises"),
                                )
                            } else {
                                wire::Edit::Keep
                            }
                        })
                        .map_err(|e| StepError::Other(format!("event json: {e}")))?
                    };
                    RawValue::from_string(s)
                        .map_err(|e| StepError::Other(format!("event json: {e}")))
                })
                .transpose()
            };
            // Binary timestamptz: cheaper than computing epoch microseconds per row in SQL
            // (a numeric expression).
            let ts = micros_since_epoch(r.get(6));
            if current.part == 0 {
                current.captured_at_us = Some(current.captured_at_us.map_or(ts, |c| c.min(ts)));
            }
            let Xid8(txid) = r.get(7);
            let event = Event {
                id,
                op,
                table,
                txid: Some(txid),
                key: raw(r.get(4), &[], known_old)?,
                data: raw(r.get(5), json_form, known)?,
            };
            payload += event.key.as_ref().map_or(0, |k| k.get().len())
                + event.data.as_ref().map_or(0, |d| d.get().len());
            current.events.push(event);
            events += 1;
            full = current.events.len() >= self.segment_events || payload >= SEGMENT_BYTES;
        }
        current.last = true;
        let bytes = writer.push(&current).map_err(encoding)?;
        drop(current);
        sent += emit(bytes).await?;
        let tail = writer.finish().map_err(encoding)?;
        sent += emit(tail).await?;
        Ok((events, sent))
    }

    /// Schema versions the target has not acknowledged yet.
    async fn pending_ddl(&self, client: &Client) -> Result<Vec<DdlVersion>, StepError> {
        let s = &self.schema;
        let context = "reading pending schema changes";
        let st = self
            .prepared
            .get(
                client,
                &format!(
                    "select {VERSION_COLUMNS} from {s}.ddl d
                      where d.target = $1 and d.version > (select acked_ddl from {s}.target_state where target = $1)
                      order by d.version"
                ),
                context,
            )
            .await?;
        let rows = client
            .query(&st, &[&self.target])
            .await
            .map_err(StepError::db(context))?;
        let mut versions = rows
            .iter()
            .map(version_of)
            .collect::<Result<Vec<_>, String>>()
            .map_err(StepError::Fatal)?;
        // Statements that change a table dropped since: its events are skipped (see
        // `batch_tables`), so the target may leave them out when its stale rows refuse them.
        let mut oids: Vec<u32> = versions
            .iter()
            .flat_map(|v| v.statements.iter().flat_map(|st| st.tables.iter().copied()))
            .collect();
        if oids.is_empty() {
            return Ok(versions);
        }
        oids.sort_unstable();
        oids.dedup();
        let context = "reading which tables of pending schema changes were dropped";
        let gone: Vec<u32> = client
            .query(
                "select o from pg_catalog.unnest($1::pg_catalog.oid[]) o
                  where not exists (select 1 from pg_catalog.pg_class c where c.oid = o)",
                &[&oids],
            )
            .await
            .map_err(StepError::db(context))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for st in versions.iter_mut().flat_map(|v| v.statements.iter_mut()) {
            st.table_dropped_since = st.tables.iter().any(|o| gone.contains(o));
        }
        Ok(versions)
    }

    /// Key and writable columns of the batch's tables, from the source catalog by oid;
    /// `None` for a table that no longer exists.
    async fn describe(
        &self,
        client: &Client,
        names: &[(String, String, u32)],
    ) -> Result<Vec<Option<(TableMeta, BTreeSet<String>)>>, StepError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.schema;
        let oids: Vec<u32> = names.iter().map(|n| n.2).collect();
        let context = "describing the batch's tables";
        let sql = format!("select c.oid,
                        array(select a.attname::text from pg_catalog.pg_attribute a
                               where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                                 and a.attgenerated = '' order by a.attnum),
                        {},
                        array(select a.attname::text from pg_catalog.pg_attribute a
                               where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                                 and a.attgenerated <> '' order by a.attnum),
                        array(select a.attname::text || ':' || bt.oid::regtype::text
                                from pg_catalog.pg_attribute a, lateral (select {} as oid) bt
                               where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                                 and bt.oid in ('json'::regtype, 'jsonb'::regtype) order by a.attnum),
                        n.nspname::text || '.' || c.relname::text,
                        array(select x.name from {s}.excluded_column e
                                left join pg_catalog.pg_attribute a
                                       on a.attrelid = e.relid and a.attnum = e.attnum and not a.attisdropped
                               cross join lateral unnest(e.names || a.attname::text) x(name)
                               where e.target = $2 and e.relid = c.oid and x.name is not null),
                        -- (A foreign key of the table to itself names the key's index too.)
                        coalesce((select k.condeferrable from pg_catalog.pg_constraint k
                                   where k.conrelid = c.oid and k.conindid = {key} and k.contype in ('p', 'u')), false)
                   from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                  where c.oid = any($1)",
                    ddlwatcher::key_columns_sql("c.oid"),
                    ddlwatcher::base_type_sql("a.atttypid"),
                    key = ddlwatcher::key_index_sql("c.oid"),
                );
        let st = self.prepared.get(client, &sql, context).await?;
        let rows = client
            .query(&st, &[&oids, &self.target])
            .await
            .map_err(StepError::db(context))?;
        /// Writable columns, key, generated columns, json columns (`name:type`), the
        /// names to strip from the row images, whether the key is deferrable.
        type Described = (
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            BTreeSet<String>,
            bool,
        );
        let mut found: HashMap<u32, Described> = HashMap::new();
        for r in rows {
            // Excluded: every name of a column excluded by number, and the columns the
            // config names under the table's current name (not recorded yet when added
            // since the ddlwatcher last looked).
            let mut excluded: BTreeSet<String> = r.get::<_, Vec<String>>(6).into_iter().collect();
            if let Some(cols) = self.exclude.get(&r.get::<_, String>(5)) {
                excluded.extend(cols.iter().cloned());
            }
            found.insert(
                r.get(0),
                (r.get(1), r.get(2), r.get(3), r.get(4), excluded, r.get(7)),
            );
        }
        names
            .iter()
            .map(|(schema, name, oid)| {
                // Not removed: a table renamed within the batch is here under each of
                // its names, with one oid.
                let Some((columns, key, generated, json, excluded, key_deferrable)) =
                    found.get(oid).cloned()
                else {
                    return Ok(None);
                };
                Ok(Some((
                    TableMeta {
                        oid: None,
                        soft_delete_column: self.soft_delete_column.clone(),
                        synced_at_column: self.synced_at_column.clone(),
                        schema: schema.clone(),
                        name: name.clone(),
                        columns,
                        key,
                        generated,
                        json_columns: json
                            .iter()
                            .filter_map(|s| {
                                s.rsplit_once(':')
                                    .map(|(n, t)| (n.to_string(), t.to_string()))
                            })
                            .collect(),
                        key_deferrable,
                        identity_always: Vec::new(),
                    },
                    excluded,
                )))
            })
            .collect()
    }

    /// Streams batch `seq` to the target; Ok(applied position) on success. `sent` hears
    /// when the whole body is out; `patience` bounds each wait on the target (a batch sent
    /// behind another waits for that one's apply too).
    async fn transmit(
        &self,
        client: &Client,
        seq: i64,
        sent: tokio::sync::oneshot::Sender<()>,
        patience: Duration,
    ) -> Result<(i64, RowCounts), Refusal> {
        // One read of the batch's bounds serves both queries of its events.
        let bounds = BatchBounds::read(client, &self.prepared, &self.schema, &self.target, seq)
            .await
            .map_err(Refusal::Source)?;
        let mut tables = self
            .batch_tables(client, seq, &bounds)
            .await
            .map_err(Refusal::Source)?;
        let ddl = self.pending_ddl(client).await.map_err(Refusal::Source)?;
        // Counted once the target acknowledges the batch; producing it does not need them.
        let rows = std::mem::take(&mut tables.rows);
        let started = std::time::Instant::now();
        let (frames, mut body) = tokio::sync::mpsc::channel(4);
        let out = Frames {
            tx: frames.clone(),
            patience,
        };
        let producer = self.produce(client, seq, &bounds, tables, ddl, out);
        // The request starts with the first segment, not before: the queue query may take
        // a while to return its first row (sorting a huge batch), and the target abandons a
        // body that stays silent for its read timeout.
        let request = async {
            let first = body.recv().await;
            let rest = futures_util::stream::unfold(body, |mut rx| async move {
                rx.recv().await.map(|frame| (frame, rx))
            });
            let body = futures_util::stream::iter(first).chain(rest);
            let req = self.request(
                Method::POST,
                "/v1/batches",
                true,
                StreamBody::new(body).boxed_unsync(),
            )?;
            self.http
                .request(req)
                .await
                .map_err(|e| crate::db::error_chain(&e))
        };
        let mut producer = std::pin::pin!(producer);
        let mut request = std::pin::pin!(request);
        // The body is written while the target applies it; once it is all sent, the answer
        // must come within the timeout. If the source side fails, the body is cut off so
        // the target rolls back (it would also refuse a body without its last part).
        let (response, counts) = tokio::select! {
            r = &mut request => (r, None),
            p = &mut producer => match p {
                Ok(counts) => {
                    drop(frames);
                    let _ = sent.send(());
                    match tokio::time::timeout(patience, &mut request).await {
                        Ok(r) => (r, Some(counts)),
                        Err(_) => {
                            let asked = format!(
                                "target `{}` sent no answer within {} s after batch {seq} (endpoint.timeout_seconds)",
                                self.target,
                                patience.as_secs()
                            );
                            let message = match tokio::time::timeout(Duration::from_secs(5), self.account().ask(&asked)).await {
                                Ok((_, m)) => m,
                                Err(_) => format!("{asked}; its stall report did not come within 5 s: see its log and /metrics (stage `applier`)"),
                            };
                            return Err(Refusal::Retry(UNREACHABLE, message))
                        }
                    }
                }
                Err(e) => {
                    let _ = frames.try_send(Err(std::io::Error::other("the source failed")));
                    return Err(Refusal::Source(e));
                }
            },
        };
        let response = response.map_err(|e| {
            Refusal::Retry(
                UNREACHABLE,
                format!("target `{}` at {}: {e}", self.target, self.base_url),
            )
        })?;
        let status = response.status();
        let answer = tokio::time::timeout(patience, response.into_body().collect())
            .await
            .map_err(|_| {
                Refusal::Retry(
                    UNREACHABLE,
                    format!("target `{}`: the answer stalled", self.target),
                )
            })?
            .map_err(|e| {
                Refusal::Retry(
                    UNREACHABLE,
                    format!("target `{}`: reading the answer: {e}", self.target),
                )
            })?
            .to_bytes();
        let v: serde_json::Value =
            serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null);
        let applied = v.get("applied_seq").and_then(|s| s.as_i64());
        match (status, applied) {
            (StatusCode::OK, Some(a)) => {
                if let Some(d) = v.get("ddl_version").and_then(|d| d.as_i64()) {
                    self.acked_ddl.store(d, Ordering::Relaxed);
                }
                let (events, bytes) = counts.unwrap_or_default();
                tracing::info!(
                    target = %self.target,
                    batch_seq = seq,
                    events,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    status = v.get("status").and_then(|s| s.as_str()).unwrap_or(""),
                    "batch acknowledged"
                );
                Ok((a, rows))
            }
            (StatusCode::CONFLICT, Some(a)) => Err(Refusal::Position { applied: a }),
            (StatusCode::LOCKED, _) => Err(Refusal::Wait(error_message(&answer))),
            _ => Err(Refusal::Retry(
                REFUSED,
                format!(
                    "target `{}` answered {status} to batch {seq}: {}",
                    self.target,
                    error_message(&answer)
                ),
            )),
        }
    }
}

/// A full transaction id (`xid8`), read in binary: eight bytes, big-endian.
struct Xid8(u64);

impl<'a> tokio_postgres::types::FromSql<'a> for Xid8 {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw
            .try_into()
            .map_err(|_| format!("an xid8 has 8 bytes, not {}", raw.len()))?;
        Ok(Xid8(u64::from_be_bytes(bytes)))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        ty.name() == "xid8"
    }
}

/// Microseconds since the Unix epoch (negative before it).
fn micros_since_epoch(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// Where a batch's segments go, and how long each may wait to be read.
struct Frames {
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    patience: Duration,
}

/// The tables of one batch.
#[derive(Default)]
struct Tables {
    metas: Vec<TableMeta>,
    /// The captured table's oid of each of `metas`.
    relids: Vec<u32>,
    index: HashMap<(String, String, u32), Option<u32>>,
    /// Diffing mode, per table (index in `metas`) whose row images may hold json/jsonb
    /// columns the row trigger did not know (in their JSON form): from each event number
    /// on, those columns ([`json_form_windows`]); ascending.
    json_form: Windows,
    /// Diffing mode, per table with records: the windows between two records (from, to,
    /// the columns either record names). A member of a row image in such a window that
    /// neither names was a column added and renamed or dropped again before the look that
    /// closed the window — the target never has it; the look queued that row's values
    /// again after its schema event (`Watcher::resend_written_to_gone`), so the member
    /// is left out ([`Tables::known`]). The open window after the last record is not
    /// listed: its look has not come yet.
    known: HashMap<u32, Vec<(i64, i64, Vec<String>)>>,
    rows: RowCounts,
    /// Per table (as `metas`), the columns stripped from its row images.
    excluded: Vec<Vec<String>>,
    /// Some table of the batch's transactions is not the target's: its events are read
    /// with the filter (else without, and every table is the target's).
    filtered: bool,
}

impl Tables {
    /// The columns event `id` of table `table` may name, when it lies in a closed window
    /// of records ([`Tables::known`]): a member it names beyond them is left out.
    fn known(&self, table: u32, id: i64) -> Option<&[String]> {
        let windows = self.known.get(&table)?;
        let i = windows.partition_point(|(from, _, _)| *from <= id);
        let (_, to, known) = windows.get(i.checked_sub(1)?)?;
        (id < *to).then_some(&known[..])
    }

    /// The json/jsonb columns that event `id` of table `table` (index in `metas`) holds in
    /// their JSON form.
    fn json_form(&self, table: u32, id: i64) -> &[String] {
        let Some(windows) = self.json_form.get(&table) else {
            return &[];
        };
        match windows.partition_point(|(from, _)| *from <= id) {
            0 => &[],
            i => &windows[i - 1].1,
        }
    }
}

/// The columns of a stored schema version (`ddl d`) that [`version_of`] reads.
pub(crate) const VERSION_COLUMNS: &str = "d.version, d.statements::text, d.txid";

/// A stored schema version, read by [`VERSION_COLUMNS`].
pub(crate) fn version_of(r: &tokio_postgres::Row) -> Result<DdlVersion, String> {
    let version: i64 = r.get(0);
    Ok(DdlVersion {
        version,
        txid: r.get::<_, Option<Xid8>>(2).map(|Xid8(t)| t),
        statements: serde_json::from_str(r.get::<_, &str>(1))
            .map_err(|e| format!("stored schema version {version} is unreadable: {e}"))?,
    })
}

/// A record of `capture_form`: from which event on, the columns, the json/jsonb ones.
type Form = (i64, Vec<String>, Vec<String>);

/// Per table (index in `metas`): from each event number on, columns ([`json_form_windows`]).
type Windows = HashMap<u32, Vec<(i64, Vec<String>)>>;

/// The closed windows between consecutive records (ascending): from, to (the next
/// record's event), and the columns either record names.
fn known_windows(forms: &[Form]) -> Vec<(i64, i64, Vec<String>)> {
    forms
        .windows(2)
        .map(|w| {
            let mut known = w[0].1.clone();
            known.extend(w[1].1.iter().filter(|c| !w[0].1.contains(c)).cloned());
            (w[0].0, w[1].0, known)
        })
        .collect()
}

/// From the records of which columns a table's row trigger knew (`capture_form`: from
/// which event on, the columns, the json/jsonb ones among them; ascending), for each, the
/// json/jsonb columns whose values the events from it on (to the next) hold in their JSON
/// form: the json/jsonb columns the next record names (`now`, the table's json/jsonb
/// columns, for the last) that the record does not name. Those columns were added or
/// renamed since the record, while the trigger's arguments named the columns in text form
/// it knew; a column the record names was no json column when the trigger was made
/// (else it would name it in text form) or is named in text form, and keeps its value.
fn json_form_windows(forms: &[Form], now: &[String]) -> Vec<(i64, Vec<String>)> {
    forms
        .iter()
        .enumerate()
        .map(|(i, (from, known, _))| {
            let json = forms.get(i + 1).map_or(now, |next| &next.2[..]);
            let unknown = json
                .iter()
                .filter(|c| !known.contains(c))
                .cloned()
                .collect();
            (*from, unknown)
        })
        .collect()
}

/// Row events per table of one batch: inserts, updates, deletes, truncates (columns).
#[derive(Default, Clone)]
struct RowCounts {
    schemas: Vec<String>,
    names: Vec<String>,
    counts: [Vec<i64>; 4],
}

/// Largest row-image payload per segment (a single larger event makes its own segment).
const SEGMENT_BYTES: usize = 8 << 20;

impl Step for Transmitter {
    fn name(&self) -> String {
        format!("transmitter {}", self.target)
    }

    fn wake(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Some(self.wake.clone())
    }

    fn connected(&self) {
        self.prepared.clear();
    }

    fn elsewhere(&self) -> Option<crate::stage::Elsewhere> {
        let account = self.account();
        Some(std::sync::Arc::new(move || {
            let account = account.clone();
            Box::pin(async move {
                let asked = format!("the target `{}` has not answered yet", account.target);
                Some(account.ask(&asked).await)
            })
        }))
    }

    async fn step(&mut self, client: &mut Client) -> Result<Progress, StepError> {
        use crate::mirror::{self, State};
        let s = self.schema.clone();
        let mirror_err = |e: mirror::MirrorError| StepError::Other(e.to_string());
        let (state, snapshot_pending) = mirror::status(client, &s, &self.target)
            .await
            .map_err(mirror_err)?;
        match state {
            State::Paused | State::Failed | State::Terminated => return Ok(Progress::Idle),
            // The snapshot stage runs the initial load and moves the mirror on; batches
            // wait in the queue (the target would refuse them while the load runs).
            State::Setup | State::Snapshot | State::Pausing if snapshot_pending => {
                return Ok(Progress::Idle)
            }
            State::Snapshot => return Ok(Progress::Idle),
            State::Pausing => {
                // Steps run one at a time: no batch is in flight now.
                mirror::advance(
                    client,
                    &s,
                    &self.target,
                    State::Pausing,
                    State::Paused,
                    None,
                )
                .await
                .map_err(mirror_err)?;
                return Ok(Progress::Idle);
            }
            State::Terminating => {
                mirror::finish_termination(client, &s, &self.target)
                    .await
                    .map_err(mirror_err)?;
                return Ok(Progress::Idle);
            }
            State::Setup | State::Running => {}
        }
        let result = self.ship(client, state).await;
        if let Err(StepError::Fatal(m)) = &result {
            mirror::fail(client, &s, &self.target, m).await;
        }
        result
    }
}

/// The means to ask a target what holds up its apply of this source's batches: its stall
/// reports of stage `applier` that name them.
#[derive(Clone)]
struct TargetAccount {
    http: crate::tls::HttpClient,
    base: String,
    token: Option<String>,
    target: String,
    /// The start of the detail of a report about one of this source's batches.
    ours: String,
}

impl TargetAccount {
    /// `asked`: what the target has not answered ("the target … has not answered yet").
    async fn ask(&self, asked: &str) -> (bool, String) {
        crate::stage::target_account(
            &self.http,
            &self.base,
            self.token.as_deref(),
            asked,
            "apply of this source's batches",
            |s| s.stage == "applier" && s.detail.starts_with(&self.ours),
        )
        .await
    }
}

/// Batches in flight at once: the next batch is read, encoded, sent and decoded on the
/// target while the target applies the one before it (it waits for that one's commit on the
/// target's position lock, so batches still apply one at a time, in order).
const WINDOW: usize = 2;

/// Batches shipped per step at most: the mirror's state (a pause) is read between steps.
const BATCHES_PER_STEP: usize = 32;

/// What settling one batch's answer leaves the pump to do.
enum Flow {
    /// Go on with the next batch.
    Next,
    /// End the step (the target is elsewhere than expected; the next step starts afresh).
    Stop,
}

/// A batch's answer: the applied position and the batch's rows per table, or why not.
type Shipped = Result<(i64, RowCounts), Refusal>;

type Pending<'a, T> = Option<Pin<Box<dyn Future<Output = T> + Send + 'a>>>;

impl Transmitter {
    /// Reconciles with the target after a (re)start, then ships the next batches.
    async fn ship(
        &mut self,
        client: &mut Client,
        state: crate::mirror::State,
    ) -> Result<Progress, StepError> {
        use crate::mirror::{self, State};
        if !self.reconciled.load(Ordering::Relaxed) {
            let applied = match self.position().await {
                Ok(a) => a,
                Err(e) => {
                    let m = format!("target `{}` at {}: {e}", self.target, self.base_url);
                    self.record_error(client, Some(&m)).await;
                    return Err(StepError::Remote(UNREACHABLE, m));
                }
            };
            self.acknowledge(client, applied).await?;
            self.reconciled.store(true, Ordering::Relaxed);
        }
        if state == State::Setup {
            mirror::advance(
                client,
                &self.schema,
                &self.target,
                State::Setup,
                State::Running,
                None,
            )
            .await
            .map_err(|e| StepError::Other(e.to_string()))?;
        }
        self.pump(client).await
    }

    /// The first unacknowledged batch after `after`. None while a catalog snapshot of the
    /// event trigger waits to become schema versions: a batch may hold its schema event.
    async fn next_batch(&self, client: &Client, after: i64) -> Result<Option<i64>, StepError> {
        let s = &self.schema;
        let context = "finding the next batch";
        let st = self
            .prepared
            .get(
                client,
                &format!(
                    "select seq from {s}.batch where target = $1 and acked_at is null and seq > $2
                        and not exists (select 1 from {s}.ddl_snapshot d where d.id > (select processed from {s}.ddl_clock))
                      order by seq limit 1"
                ),
                context,
            )
            .await?;
        let row = client
            .query_opt(&st, &[&self.target, &after])
            .await
            .map_err(StepError::db(context))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Ships the unacknowledged batches in order, up to [`BATCHES_PER_STEP`], [`WINDOW`] at
    /// a time. Answers are settled in order; the first that is not success ends the step
    /// and drops the requests behind it (the target refuses or rolls them back: each batch
    /// applies only right after its predecessor).
    async fn pump(&self, client: &Client) -> Result<Progress, StepError> {
        let Some(first) = self.next_batch(client, 0).await? else {
            return Ok(Progress::Idle);
        };
        let start = |seq: i64, patience: Duration| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let fut = async move { (seq, self.transmit(client, seq, tx, patience).await) };
            (fut, rx)
        };
        let mut inflight = FuturesOrdered::new();
        let (fut, rx) = start(first, self.timeout);
        inflight.push_back(fut);
        // The last started batch's body is still being sent.
        let mut sending = Some(rx);
        let (mut last, mut started, mut exhausted) = (first, 1usize, false);
        let mut arrived: VecDeque<(i64, Shipped)> = VecDeque::new();
        let mut settling: Pending<'_, Result<Flow, StepError>> = None;
        let mut finding: Pending<'_, Result<Option<i64>, StepError>> = None;
        // Everything pending is polled together: the requests in flight read from the same
        // connection the settling and finding queries use.
        loop {
            tokio::select! {
                Some(r) = inflight.next(), if !inflight.is_empty() => arrived.push_back(r),
                r = async { sending.as_mut().expect("guarded").await }, if sending.is_some() => {
                    sending = None;
                    // A body not sent whole: that batch failed; its answer ends the step.
                    exhausted |= r.is_err();
                }
                r = async { settling.as_mut().expect("guarded").await }, if settling.is_some() => {
                    settling = None;
                    match r? {
                        Flow::Next => {}
                        Flow::Stop => return Ok(Progress::Busy),
                    }
                }
                r = async { finding.as_mut().expect("guarded").await }, if finding.is_some() => {
                    finding = None;
                    match r? {
                        Some(seq) => {
                            // Its answer may wait for the apply of the batch ahead of it.
                            let patience = self.timeout * (inflight.len() as u32 + 1);
                            let (fut, rx) = start(seq, patience);
                            inflight.push_back(fut);
                            sending = Some(rx);
                            (last, started) = (seq, started + 1);
                        }
                        None => exhausted = true,
                    }
                }
                else => break,
            }
            if settling.is_none() {
                if let Some((seq, r)) = arrived.pop_front() {
                    settling = Some(Box::pin(self.settle(client, seq, r)));
                }
            }
            if finding.is_none()
                && sending.is_none()
                && !exhausted
                && inflight.len() < WINDOW
                && started < BATCHES_PER_STEP
            {
                finding = Some(Box::pin(self.next_batch(client, last)));
            }
        }
        Ok(Progress::Busy)
    }

    /// Acts on the answer to batch `seq`; answers come here in batch order.
    async fn settle(&self, client: &Client, seq: i64, result: Shipped) -> Result<Flow, StepError> {
        let s = &self.schema;
        match result {
            Ok((applied, rows)) => {
                self.waiting.store(false, Ordering::Relaxed);
                self.acknowledge(client, applied).await?;
                self.count_rows(client, &rows).await?;
                self.record_error(client, None).await;
                let ddl = self.acked_ddl.load(Ordering::Relaxed);
                if ddl >= 0 {
                    let context = "recording the applied schema version";
                    let st = self
                        .prepared
                        .get(
                            client,
                            &format!("update {s}.target_state set acked_ddl = greatest(acked_ddl, $2) where target = $1"),
                            context,
                        )
                        .await?;
                    client
                        .execute(&st, &[&self.target, &ddl])
                        .await
                        .map_err(StepError::db(context))?;
                }
                Ok(Flow::Next)
            }
            Err(Refusal::Position { applied }) => {
                tracing::info!(target = %self.target, batch_seq = seq, applied, "target is at another position; resynchronising");
                self.acknowledge(client, applied).await?;
                if applied < seq - 1 {
                    // Batch seq − 1 was acknowledged. A batch sent behind it can be refused
                    // before that one committed: ask again before calling it a regression.
                    let now = self
                        .position()
                        .await
                        .map_err(|e| StepError::Other(format!("target `{}`: {e}", self.target)))?;
                    if now < seq - 1 {
                        return Err(StepError::Fatal(format!(
                            "target `{}` has applied only up to batch {now}, but this source already saw batch {} acknowledged; \
                             the target database was restored from an older state — re-run the initial load for it",
                            self.target,
                            seq - 1
                        )));
                    }
                    self.acknowledge(client, now).await?;
                }
                Ok(Flow::Stop)
            }
            Err(Refusal::Wait(m)) => {
                if !self.waiting.swap(true, Ordering::Relaxed) {
                    tracing::info!(target = %self.target, batch_seq = seq, reason = %m, "target asks to wait; batches resume after it");
                }
                Err(StepError::Wait(Duration::from_secs(1), m))
            }
            Err(Refusal::Source(e)) => Err(e),
            Err(Refusal::Retry(kind, m)) => {
                self.reconciled.store(false, Ordering::Relaxed);
                self.record_error(client, Some(&m)).await;
                Err(StepError::Remote(kind, m))
            }
        }
    }
}

impl Transmitter {
    /// Adds an applied batch's rows to the mirror's rows per table (`table_rows`).
    /// A name can come twice (a table dropped and created again under it within the batch):
    /// its counts are summed first — one upsert may not touch a row twice.
    async fn count_rows(&self, client: &Client, rows: &RowCounts) -> Result<(), StepError> {
        if rows.names.is_empty() {
            return Ok(());
        }
        let [i, u, d, t] = &rows.counts;
        let context = "counting the batch's rows per table";
        let st = self
            .prepared
            .get(
                client,
                &format!(
                    "insert into {s}.table_rows as r (target, schema_name, table_name, inserts, updates, deletes, truncates)
                     select $1, u.s, u.t, sum(u.i), sum(u.u), sum(u.d), sum(u.x)
                       from unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) as u(s, t, i, u, d, x)
                      group by u.s, u.t
                     on conflict (target, schema_name, table_name) do update
                        set inserts = r.inserts + excluded.inserts, updates = r.updates + excluded.updates,
                            deletes = r.deletes + excluded.deletes, truncates = r.truncates + excluded.truncates",
                    s = self.schema
                ),
                context,
            )
            .await?;
        client
            .execute(&st, &[&self.target, &rows.schemas, &rows.names, i, u, d, t])
            .await
            .map_err(StepError::db(context))?;
        Ok(())
    }

    /// Keeps the last transmit error (or clears it) for `pgteleport status`. Best effort:
    /// the error is logged either way.
    async fn record_error(&self, client: &Client, message: Option<&str>) {
        // After a success nothing is recorded: the next success has nothing to clear.
        if message.is_none() && !self.error_recorded.load(Ordering::Relaxed) {
            return;
        }
        // The time is that of the first failure with this message; `failures` counts them.
        let sql = format!(
            "update {}.target_state
                set last_error_at = case when $2::text is null then null
                                         when last_error is distinct from $2 then clock_timestamp()
                                         else last_error_at end,
                    last_error = $2,
                    failures = case when $2::text is null then 0 else failures + 1 end
              where target = $1 and (last_error is not null or $2::text is not null)",
            self.schema
        );
        match client.execute(&sql, &[&self.target, &message]).await {
            Ok(_) => self
                .error_recorded
                .store(message.is_some(), Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "could not record the transmit error"),
        }
    }
}

fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
    }
}

/// A schema event's data (`e.ev_data`) without the checks of rows ([`ddlwatcher::ddl::RowsCheck`])
/// of tables dropped on the source since: their events are skipped (see `batch_tables`),
/// so the target's rows cannot match the source's at the event — the check would hold the
/// stream for good over a table about to be dropped.
const SCHEMA_EVENT_CHECKS_KEPT: &str = "case when pg_catalog.jsonb_typeof(e.ev_data::pg_catalog.jsonb -> 'checks') = 'array' then
        (select pg_catalog.jsonb_set(e.ev_data::pg_catalog.jsonb, '{checks}',
                    coalesce(pg_catalog.jsonb_agg(c.v order by c.n), '[]'::pg_catalog.jsonb))::text
           from pg_catalog.jsonb_array_elements(e.ev_data::pg_catalog.jsonb -> 'checks') with ordinality as c(v, n)
          where not (c.v ? 'oid')
             or exists (select 1 from pg_catalog.pg_class r where r.oid = (c.v ->> 'oid')::pg_catalog.oid))
   else e.ev_data::text end";

#[cfg(test)]
mod tests {
    use super::*;

    /// Records at events 10 (`id`, `a`), 20 (`id`, `a`, `b` json, `c` text — the trigger
    /// was made again knowing `b`) and 30 (`c` retyped to json): events before 20 hold `b`
    /// in its JSON form (added, not known), but not `c` (known as a text column then).
    /// After 30 the table's json columns now: `d` added since.
    #[test]
    fn json_columns_a_trigger_did_not_know_are_read_per_event() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let forms: Vec<Form> = vec![
            (10, v(&["id", "a"]), v(&[])),
            (20, v(&["id", "a", "b", "c"]), v(&["b"])),
            (30, v(&["id", "a", "b", "c"]), v(&["b", "c"])),
        ];
        let windows = json_form_windows(&forms, &v(&["b", "c", "d"]));
        assert_eq!(windows, [(10, v(&["b"])), (20, v(&[])), (30, v(&["d"]))]);
        let tables = Tables {
            json_form: [(0u32, windows)].into_iter().collect(),
            ..Default::default()
        };
        assert!(tables.json_form(0, 5).is_empty(), "before any record");
        assert_eq!(tables.json_form(0, 11), ["b"]);
        assert_eq!(tables.json_form(0, 19), ["b"]);
        assert!(tables.json_form(0, 21).is_empty());
        assert_eq!(tables.json_form(0, 31), ["d"]);
        assert!(tables.json_form(1, 31).is_empty(), "another table");
    }

    /// Records at 10 (`id`, `x`) and 20 (`id`, `x`, `kept` — `x` retyped by copy through
    /// `new_x` meanwhile): an event between them may name `id`, `x`, `kept`, not `new_x`;
    /// events before the first record and after the last (whose look has not come) are
    /// left as they are.
    #[test]
    fn columns_gone_within_a_window_of_records_are_known_per_event() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let forms: Vec<Form> = vec![
            (10, v(&["id", "x"]), v(&[])),
            (20, v(&["id", "kept", "x"]), v(&[])),
        ];
        let tables = Tables {
            known: [(0u32, known_windows(&forms))].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(tables.known(0, 5), None, "before any record");
        assert_eq!(tables.known(0, 15), Some(&v(&["id", "x", "kept"])[..]));
        assert_eq!(tables.known(0, 25), None, "the open window");
        assert_eq!(tables.known(1, 15), None, "another table");
        assert!(known_windows(&forms[..1]).is_empty());
    }
}
