//! Mirrors: each target of a source instance is a mirror with a state, kept in
//! `target_state` so that it survives restarts. The transmitter obeys it (a paused mirror's
//! batches wait, its queue grows); the REST API and `pgteleport mirror` change it.
//!
//! | state | the transmitter | pause | resume | terminate |
//! |---|---|---|---|---|
//! | SETUP | reconciles with the target, then RUNNING | PAUSING | — | TERMINATING |
//! | SNAPSHOT | nothing: the instance runs the initial load (`do_initial_snapshot`), then RUNNING | PAUSING | — | TERMINATING |
//! | RUNNING | ships batches | PAUSING | — | TERMINATING |
//! | PAUSING | finishes the batch in flight (or stops the load), then PAUSED | — | RUNNING¹ | TERMINATING |
//! | PAUSED | ships nothing; batches are still cut | — | RUNNING¹ | TERMINATING |
//! | FAILED | ships nothing (the reason is kept) | PAUSING | SETUP | TERMINATING |
//! | TERMINATING | drops the mirror's unshipped batches, then TERMINATED | 409 | 409 | — |
//! | TERMINATED | nothing: no batches are cut, the queue is not kept for it | 409 | 409 | — |
//!
//! "—" changes nothing (the request is answered with the state as it is). ¹ SNAPSHOT while
//! the initial snapshot is unfinished: the load resumes where it stopped (finished tables
//! and ranges are not copied again).

use tokio_postgres::Client;

/// A mirror's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Setup,
    Snapshot,
    Running,
    Pausing,
    Paused,
    Terminating,
    Terminated,
    Failed,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Setup,
        State::Snapshot,
        State::Running,
        State::Pausing,
        State::Paused,
        State::Terminating,
        State::Terminated,
        State::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Setup => "SETUP",
            State::Snapshot => "SNAPSHOT",
            State::Running => "RUNNING",
            State::Pausing => "PAUSING",
            State::Paused => "PAUSED",
            State::Terminating => "TERMINATING",
            State::Terminated => "TERMINATED",
            State::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A requested change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Terminate,
}

impl Action {
    /// `pause`, `resume`, `terminate`, or PeerDB's `requestedFlowState` values
    /// `STATUS_PAUSED`, `STATUS_RUNNING`, `STATUS_TERMINATED` (any case).
    pub fn parse(s: &str) -> Option<Action> {
        match s.to_ascii_lowercase().as_str() {
            "pause" | "paused" | "status_paused" => Some(Action::Pause),
            "resume" | "running" | "status_running" => Some(Action::Resume),
            "terminate" | "terminated" | "status_terminated" => Some(Action::Terminate),
            _ => None,
        }
    }
}

/// The state `action` leads to from `from`: `Ok(None)` when it changes nothing, `Err` when
/// it is not allowed (a terminated mirror stays terminated).
pub fn next(from: State, action: Action) -> Result<Option<State>, String> {
    use Action::*;
    use State::*;
    match (from, action) {
        (Terminating | Terminated, Terminate) => Ok(None),
        (Terminating | Terminated, _) => Err(format!(
            "the mirror is {from}: a terminated mirror cannot be paused or resumed"
        )),
        (_, Terminate) => Ok(Some(Terminating)),
        (Pausing | Paused, Pause) => Ok(None),
        (_, Pause) => Ok(Some(Pausing)),
        (Pausing | Paused, Resume) => Ok(Some(Running)),
        (Failed, Resume) => Ok(Some(Setup)),
        (_, Resume) => Ok(None),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("no mirror named `{0}` (GET /api/v1/mirrors/list names them)")]
    Unknown(String),
    #[error("mirror `{name}`: {message}")]
    Conflict { name: String, message: String },
    #[error("{context}: {}", crate::db::describe(.source))]
    Db {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

fn db(context: &str) -> impl FnOnce(tokio_postgres::Error) -> MirrorError + '_ {
    move |source| MirrorError::Db {
        context: context.to_string(),
        source,
    }
}

/// Applies `action` to mirror `name`; returns the state after it and whether it changed.
pub async fn change(
    client: &mut Client,
    schema: &str,
    name: &str,
    action: Action,
    reason: Option<&str>,
) -> Result<(State, bool), MirrorError> {
    let tx = client.transaction().await.map_err(db("begin"))?;
    let row = tx
        .query_opt(
            &format!("select state, snapshot is not distinct from 'pending' from {schema}.target_state where target = $1 for update"),
            &[&name],
        )
        .await
        .map_err(db("reading the mirror's state"))?
        .ok_or_else(|| MirrorError::Unknown(name.to_string()))?;
    let from = State::parse(row.get(0)).unwrap_or(State::Failed);
    let snapshot_pending: bool = row.get(1);
    let to = next(from, action).map_err(|message| MirrorError::Conflict {
        name: name.to_string(),
        message,
    })?;
    // A resumed mirror whose initial snapshot is unfinished goes back to it.
    let to = match to {
        Some(State::Running) if snapshot_pending => Some(State::Snapshot),
        other => other,
    };
    let Some(to) = to else {
        return Ok((from, false));
    };
    set_in(&tx, schema, name, to, reason).await?;
    tx.commit().await.map_err(db("commit"))?;
    tracing::info!(mirror = name, from = %from, to = %to, "mirror state changed");
    Ok((to, true))
}

async fn set_in(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    name: &str,
    to: State,
    reason: Option<&str>,
) -> Result<(), MirrorError> {
    tx.execute(
        &format!(
            "update {schema}.target_state set state = $2, state_reason = $3, state_changed_at = clock_timestamp() where target = $1"
        ),
        &[&name, &to.as_str(), &reason],
    )
    .await
    .map_err(db("recording the mirror's state"))?;
    Ok(())
}

/// Moves mirror `name` from `from` to `to` if it is still in `from` (the transmitter's own
/// transitions must not overwrite a state an operator set meanwhile). Returns whether it
/// moved.
pub async fn advance(
    client: &Client,
    schema: &str,
    name: &str,
    from: State,
    to: State,
    reason: Option<&str>,
) -> Result<bool, MirrorError> {
    let n = client
        .execute(
            &format!(
                "update {schema}.target_state set state = $3, state_reason = $4, state_changed_at = clock_timestamp()
                  where target = $1 and state = $2"
            ),
            &[&name, &from.as_str(), &to.as_str(), &reason],
        )
        .await
        .map_err(db("recording the mirror's state"))?;
    if n == 1 {
        tracing::info!(mirror = name, from = %from, to = %to, reason, "mirror state changed");
    }
    Ok(n == 1)
}

/// Marks mirror `name` FAILED with `reason`, whatever its state (unless terminated).
pub async fn fail(client: &Client, schema: &str, name: &str, reason: &str) {
    let r = client
        .execute(
            &format!(
                "update {schema}.target_state set state = 'FAILED', state_reason = $2, state_changed_at = clock_timestamp()
                  where target = $1 and state not in ('TERMINATING', 'TERMINATED')"
            ),
            &[&name, &reason],
        )
        .await;
    if let Err(e) = r {
        tracing::warn!(mirror = name, error = %crate::db::describe(&e), "could not record the mirror as FAILED");
    }
}

/// What the REST API, `/metrics`, the alerts and `pgteleport status` report of a mirror.
#[derive(Debug, Clone)]
pub struct Figures {
    pub name: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub state_changed_at: String,
    /// Batches cut so far.
    pub made: i64,
    pub acked: i64,
    pub acked_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Consecutive failed transmits.
    pub failures: i64,
    /// The newest schema version made for the mirror, and the one its target acknowledged.
    pub ddl_version: i64,
    pub ddl_acked: i64,
    /// Batches cut and not yet acknowledged, and their events.
    pub pending: i64,
    pub queued_events: i64,
    /// Age of the oldest unacknowledged batch (None when there is none).
    pub oldest_seconds: Option<f64>,
    /// Minutes since transmits started failing (0 when the last one succeeded).
    pub failing_minutes: f64,
}

impl Figures {
    /// The lag: the oldest unacknowledged batch's age, 0 when all are acknowledged.
    pub fn lag_seconds(&self) -> f64 {
        self.oldest_seconds.unwrap_or(0.0)
    }
}

/// The figures of every mirror, or of the one named, in one query.
pub async fn figures(
    client: &Client,
    schema: &str,
    name: Option<&str>,
) -> Result<Vec<Figures>, tokio_postgres::Error> {
    let s = schema;
    let rows = client
        .query(
            &format!(
                "select t.target, t.state, t.state_reason, t.state_changed_at::text, t.next_seq - 1, t.acked_seq,
                        t.acked_at::text, t.last_error, t.last_error_at::text, t.failures,
                        (select coalesce(max(d.version), 0) from {s}.ddl d where d.target = t.target), t.acked_ddl,
                        p.batches, p.events, p.oldest,
                        case when t.failures > 0 and t.last_error_at is not null
                             then extract(epoch from clock_timestamp() - t.last_error_at) / 60 else 0 end::float8
                   from {s}.target_state t
                   cross join lateral (
                        select count(*) as batches, coalesce(sum(b.events), 0)::int8 as events,
                               extract(epoch from clock_timestamp() - min(b.created_at))::float8 as oldest
                          from {s}.batch b where b.target = t.target and b.acked_at is null) p
                  where $1::text is null or t.target = $1
                  order by t.target"
            ),
            &[&name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Figures {
            name: r.get(0),
            state: r.get(1),
            state_reason: r.get(2),
            state_changed_at: r.get(3),
            made: r.get(4),
            acked: r.get(5),
            acked_at: r.get(6),
            last_error: r.get(7),
            last_error_at: r.get(8),
            failures: r.get(9),
            ddl_version: r.get(10),
            ddl_acked: r.get(11),
            pending: r.get(12),
            queued_events: r.get(13),
            oldest_seconds: r.get(14),
            failing_minutes: r.get(15),
        })
        .collect())
}

/// Rows per table of a mirror, as its target acknowledged them: (schema, table, inserts,
/// updates, deletes, truncates).
pub async fn rows_per_table(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Vec<(String, String, [i64; 4])>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "select schema_name, table_name, inserts, updates, deletes, truncates
                   from {schema}.table_rows where target = $1 order by schema_name, table_name"
            ),
            &[&name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), [r.get(2), r.get(3), r.get(4), r.get(5)]))
        .collect())
}

/// The state of mirror `name`, and whether its initial snapshot is still to be done.
pub async fn status(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<(State, bool), MirrorError> {
    let row = client
        .query_opt(
            &format!("select state, snapshot is not distinct from 'pending' from {schema}.target_state where target = $1"),
            &[&name],
        )
        .await
        .map_err(db("reading the mirror's state"))?
        .ok_or_else(|| MirrorError::Unknown(name.to_string()))?;
    Ok((
        State::parse(row.get(0)).unwrap_or(State::Failed),
        row.get(1),
    ))
}

/// Asks for mirror `name`'s initial snapshot unless it has one (pending or done).
pub async fn request_snapshot(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<(), MirrorError> {
    client
        .execute(
            &format!("update {schema}.target_state set snapshot = 'pending' where target = $1 and snapshot is null"),
            &[&name],
        )
        .await
        .map_err(db("recording the requested snapshot"))?;
    Ok(())
}

/// Records mirror `name`'s initial snapshot complete and moves it SNAPSHOT → RUNNING.
pub async fn finish_snapshot(
    client: &mut Client,
    schema: &str,
    name: &str,
) -> Result<(), MirrorError> {
    let tx = client.transaction().await.map_err(db("begin"))?;
    tx.execute(
        &format!("update {schema}.target_state set snapshot = 'done' where target = $1"),
        &[&name],
    )
    .await
    .map_err(db("recording the finished snapshot"))?;
    let n = tx
        .execute(
            &format!(
                "update {schema}.target_state set state = 'RUNNING', state_reason = null, state_changed_at = clock_timestamp()
                  where target = $1 and state = 'SNAPSHOT'"
            ),
            &[&name],
        )
        .await
        .map_err(db("recording the mirror's state"))?;
    tx.commit().await.map_err(db("commit"))?;
    if n == 1 {
        tracing::info!(
            mirror = name,
            from = "SNAPSHOT",
            to = "RUNNING",
            "mirror state changed"
        );
    }
    Ok(())
}

/// Ends a TERMINATING mirror: forgets its unshipped batches (nothing holds the queue for
/// it any more) and marks it TERMINATED.
pub async fn finish_termination(
    client: &mut Client,
    schema: &str,
    name: &str,
) -> Result<(), MirrorError> {
    let tx = client.transaction().await.map_err(db("begin"))?;
    let n = tx
        .execute(
            &format!("delete from {schema}.batch where target = $1 and acked_at is null"),
            &[&name],
        )
        .await
        .map_err(db("dropping a terminated mirror's batches"))?;
    tx.execute(
        &format!(
            "update {schema}.target_state set state = 'TERMINATED', state_changed_at = clock_timestamp()
              where target = $1 and state = 'TERMINATING'"
        ),
        &[&name],
    )
    .await
    .map_err(db("recording the mirror's state"))?;
    tx.commit().await.map_err(db("commit"))?;
    tracing::info!(mirror = name, dropped_batches = n, "mirror terminated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_parses_back() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("running"), None);
    }

    #[test]
    fn transitions() {
        use State::*;
        assert_eq!(next(Running, Action::Pause), Ok(Some(Pausing)));
        assert_eq!(next(Snapshot, Action::Pause), Ok(Some(Pausing)));
        assert_eq!(next(Paused, Action::Pause), Ok(None));
        assert_eq!(next(Paused, Action::Resume), Ok(Some(Running)));
        assert_eq!(next(Running, Action::Resume), Ok(None));
        assert_eq!(next(Failed, Action::Resume), Ok(Some(Setup)));
        assert_eq!(next(Paused, Action::Terminate), Ok(Some(Terminating)));
        assert_eq!(next(Terminated, Action::Terminate), Ok(None));
        assert!(next(Terminated, Action::Resume).is_err());
        assert!(next(Terminating, Action::Pause).is_err());
        assert_eq!(Action::parse("STATUS_PAUSED"), Some(Action::Pause));
        assert_eq!(Action::parse("resume"), Some(Action::Resume));
        assert_eq!(Action::parse("stop"), None);
    }
}

/// A mirror created through the REST API, as stored (`mirror.definition`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definition {
    /// The destination: a PGTELEPORT peer (a target instance).
    pub destination_name: String,
    /// Source tables, `schema.table` (on the target under the same name unless renamed).
    pub tables: Vec<String>,
    #[serde(default)]
    pub do_initial_snapshot: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_max_parallel_workers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_delete_col_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at_col_name: Option<String>,
    /// Columns left out, per `schema.table`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub exclude: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<usize>,
    /// Tables written under another name: `schema.table` → `schema.table` on the target.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub renames: std::collections::BTreeMap<String, String>,
}

/// The mirrors stored in the database, as targets (with their destination peer's endpoint
/// and token). A mirror whose peer is gone or unusable is left out, with a warning.
pub async fn stored_targets(
    client: &Client,
    schema: &str,
) -> Result<Vec<(String, crate::config::Target)>, MirrorError> {
    let rows = client
        .query(
            &format!(
                "select m.name, m.definition, p.config from {schema}.mirror m
                   left join {schema}.peer p on p.name = m.definition ->> 'destinationName' and p.kind = 'pgteleport'
                  order by m.name"
            ),
            &[],
        )
        .await
        .map_err(db("reading mirrors"))?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let definition: serde_json::Value = r.get(1);
        let peer: Option<serde_json::Value> = r.get(2);
        match target_of(&definition, peer.as_ref()) {
            Ok(t) => out.push((name, t)),
            Err(m) => tracing::warn!(mirror = %name, "mirror not started: {m}"),
        }
    }
    Ok(out)
}

/// The target a stored mirror runs as.
pub fn target_of(
    definition: &serde_json::Value,
    peer: Option<&serde_json::Value>,
) -> Result<crate::config::Target, String> {
    let d: Definition = serde_json::from_value(definition.clone())
        .map_err(|e| format!("unreadable definition: {e}"))?;
    let peer = peer.ok_or_else(|| {
        format!(
            "its destination peer `{}` is not a PGTELEPORT peer (any more)",
            d.destination_name
        )
    })?;
    let endpoint: crate::config::Endpoint =
        serde_json::from_value(peer.get("endpoint").cloned().unwrap_or_default())
            .map_err(|e| format!("peer `{}`: endpoint: {e}", d.destination_name))?;
    let auth_token = peer
        .get("auth_token")
        .and_then(|t| t.as_str())
        .map(|t| crate::config::Secret::new(t.to_string()));
    Ok(crate::config::Target {
        target_expression: d.tables.join(","),
        endpoint,
        apply_schema: None,
        auth_token,
        do_initial_snapshot: d.do_initial_snapshot,
        snapshot_workers: d.snapshot_max_parallel_workers,
        snapshot_range_kb: None,
        snapshot_truncate: false,
        soft_delete_col_name: d.soft_delete_col_name,
        synced_at_col_name: d.synced_at_col_name,
        exclude_columns: d.exclude,
        max_batch_size: d.max_batch_size,
        rename_tables: d.renames,
    })
}

/// `config` with the mirrors stored in the database added to its targets (a name the
/// config file uses keeps the file's definition).
pub async fn with_stored(
    config: &crate::config::Config,
    client: &Client,
) -> Result<crate::config::Config, MirrorError> {
    let mut merged = config.clone();
    let schema = ddlwatcher::quote_ident(&config.internal_schema);
    for (name, target) in stored_targets(client, &schema).await? {
        merged.targets.entry(name).or_insert(target);
    }
    Ok(merged)
}
