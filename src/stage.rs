//! The loop every pipeline stage runs: one step per interval, shutdown first, reconnect on a
//! lost connection, back off on errors, never skip work.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::Database;
use crate::db;

/// What a stage step reports.
pub enum Progress {
    /// Did work; run again at once.
    Busy,
    /// Nothing to do; wait for the interval.
    Idle,
}

/// An error from one step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{context}: {}", db::describe(.source))]
    Db {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Other(String),
    /// The other side (a target) failed: its kind (for the metrics) and message.
    #[error("{1}")]
    Remote(&'static str, String),
    /// Stops the instance: continuing would be wrong.
    #[error("{0}")]
    Fatal(String),
    /// Not an error: the other side asks to come back after this long.
    #[error("{1}")]
    Wait(Duration, String),
}

impl StepError {
    /// The kind of error, as `/metrics` counts it.
    pub fn kind(&self) -> &'static str {
        match self {
            StepError::Db { .. } => "database",
            StepError::Other(_) => "other",
            StepError::Remote(kind, _) => kind,
            StepError::Fatal(_) => "fatal",
            StepError::Wait(..) => "wait",
        }
    }

    pub fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StepError {
        let context = context.into();
        move |source| StepError::Db { context, source }
    }
}

/// One pipeline stage.
pub trait Step {
    /// Name for logs and the shutdown report.
    fn name(&self) -> String;
    /// One unit of work on `client`.
    fn step(
        &mut self,
        client: &mut Client,
    ) -> impl std::future::Future<Output = Result<Progress, StepError>> + Send;
    /// Called after each (re)connection, before the first step on it: statements prepared on
    /// an earlier connection are gone.
    fn connected(&self) {}
    /// Wakes the stage from an idle wait before its interval is over (another stage made
    /// work for it).
    fn wake(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// What the step waits for when its connection is idle (the step waits outside the
    /// database): the transmitter asks the target about its batches' apply.
    fn elsewhere(&self) -> Option<Elsewhere> {
        None
    }
}

/// An account of what a step waits for outside its database, for its stall report: whether
/// a session holds it up (a lock), and a sentence; `None` when there is nothing to add.
pub type Elsewhere = std::sync::Arc<
    dyn Fn() -> futures_util::future::BoxFuture<'static, Option<(bool, String)>> + Send + Sync,
>;

/// Runs `stage` until `shutdown`, stepping every `interval`. Returns an error only for
/// [`StepError::Fatal`]; everything else is logged and retried with capped backoff. A step
/// that runs longer than `stall_report` is reported ([`watched`]).
pub async fn run<S: Step + Send>(
    mut stage: S,
    database: Database,
    interval: Duration,
    stall_report: Duration,
    shutdown: CancellationToken,
) -> Result<(), StepError> {
    let name = stage.name();
    let elsewhere = stage.elsewhere();
    let mut client: Option<Client> = None;
    // The backend of `client`, for the stall reports (0: unknown).
    let pid = std::sync::atomic::AtomicI32::new(0);
    let mut failures: u32 = 0;
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            let connected = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                c = db::connect(&database, &name) => c,
            };
            match connected {
                Ok(c) => {
                    stage.connected();
                    let backend = c.query_one("select pg_backend_pid()", &[]).await;
                    pid.store(backend.map_or(0, |r| r.get(0)), Ordering::Relaxed);
                    client = Some(c);
                }
                Err(e) => {
                    failures += 1;
                    count_error(&name, "connect");
                    tracing::warn!(stage = %name, error = %e, "cannot connect; retrying");
                    if sleep_or_shutdown(backoff(interval, failures), &shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        let outcome = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            r = watched_with(
                &name,
                stall_report,
                || describe_step(&database, &pid, elsewhere.as_ref()),
                stage.step(c),
            ) => r,
        };
        let wait = match outcome {
            Ok(Progress::Busy) => {
                failures = 0;
                continue;
            }
            Ok(Progress::Idle) => {
                failures = 0;
                if let Some(wake) = stage.wake() {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(interval) => {}
                    }
                    continue;
                }
                interval
            }
            Err(StepError::Wait(d, m)) => {
                tracing::debug!(stage = %name, reason = %m, "waiting");
                d
            }
            Err(StepError::Fatal(m)) => {
                count_error(&name, "fatal");
                tracing::error!(stage = %name, error = %m, "stage stopped");
                return Err(StepError::Fatal(m));
            }
            Err(e) => {
                failures += 1;
                count_error(&name, e.kind());
                tracing::warn!(stage = %name, error = %e, failures, "step failed; retrying");
                backoff(interval, failures)
            }
        };
        if sleep_or_shutdown(wait, &shutdown).await {
            return Ok(());
        }
    }
}

/// A step that has run past its stage's `stall_report`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Stall {
    pub stage: String,
    /// How long the step has run.
    pub seconds: f64,
    /// Whether its connection waits for a lock another session holds.
    pub blocked: bool,
    /// What it waits for, as logged.
    pub detail: String,
}

/// The steps running past their `stall_report` now, by a number of each watched step (two
/// batches of two sources may be applied at once).
static STALLS: std::sync::Mutex<std::collections::BTreeMap<u64, (tokio::time::Instant, Stall)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
static WATCHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The steps running past their `stall_report` now (`/metrics`, alerts).
pub fn stalls() -> Vec<Stall> {
    STALLS
        .lock()
        .map(|s| {
            s.values()
                .map(|(started, stall)| Stall {
                    seconds: started.elapsed().as_secs_f64(),
                    ..stall.clone()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// [`stalls`], one per stage and kind (blocked or not): the longest — two batches may be
/// applied at once.
pub fn longest_stalls() -> Vec<Stall> {
    let mut longest: std::collections::BTreeMap<(String, bool), Stall> = Default::default();
    for stall in stalls() {
        let key = (stall.stage.clone(), stall.blocked);
        match longest.get(&key) {
            Some(l) if l.seconds >= stall.seconds => {}
            _ => {
                longest.insert(key, stall);
            }
        }
    }
    longest.into_values().collect()
}

/// A watched step's entry in [`STALLS`], removed when the step ends or is dropped (a
/// shutdown, a batch whose sender went away).
struct Watch {
    id: u64,
    reported: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.reported {
            if let Ok(mut s) = STALLS.lock() {
                s.remove(&self.id);
            }
        }
    }
}

/// Runs `work`, a step of stage `name` on the connection of backend `pid` (0 while
/// unknown: `work` may set it once it has its connection). Once it has run
/// `after`, and each `after` again, says what that backend waits for: a lock, and then the
/// sessions that hold it (pid, user, application, state, how long their transaction has
/// been open — never their query, which may hold secrets), or nothing in the database.
/// A step can wait for good behind a transaction left open (a diffing look printing a
/// view over a table an uncommitted `ALTER` holds, say): this names the session to end.
pub async fn watched<T>(
    name: &str,
    database: &Database,
    pid: &std::sync::atomic::AtomicI32,
    after: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    watched_with(name, after, || describe_backend(database, pid), work).await
}

/// [`watched`] with the account of what the step waits for given by `describe`: (whether
/// it waits for a lock another session holds, a sentence saying what and who). The initial
/// load's sender asks the target's report, the step's database work being done there.
pub async fn watched_with<T, D, F>(
    name: &str,
    after: Duration,
    mut describe: D,
    work: impl std::future::Future<Output = T>,
) -> T
where
    D: FnMut() -> F,
    F: std::future::Future<Output = (bool, String)>,
{
    tokio::pin!(work);
    let mut watch = Watch {
        id: WATCHED.fetch_add(1, Ordering::Relaxed),
        reported: false,
    };
    let started = tokio::time::Instant::now();
    let mut next = started + after;
    let out = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tokio::time::sleep_until(next) => {}
        }
        let describe = tokio::time::timeout(Duration::from_secs(10), describe());
        tokio::pin!(describe);
        let (blocked, detail) = tokio::select! {
            r = &mut work => break r,
            d = &mut describe => d.unwrap_or_else(|_| {
                (false, "what it waits for could not be read within 10 s".into())
            }),
        };
        let seconds = started.elapsed().as_secs_f64();
        if blocked {
            tracing::warn!(stage = %name, seconds = %format_args!("{seconds:.1}"), "a step waits: {detail}");
        } else {
            tracing::info!(stage = %name, seconds = %format_args!("{seconds:.1}"), "a step runs long: {detail}");
        }
        if let Ok(mut s) = STALLS.lock() {
            let stall = Stall {
                stage: name.to_string(),
                seconds,
                blocked,
                detail,
            };
            s.insert(watch.id, (started, stall));
        }
        watch.reported = true;
        next += after;
    };
    if watch.reported {
        tracing::info!(
            stage = %name,
            seconds = %format_args!("{:.1}", started.elapsed().as_secs_f64()),
            "the long step is done"
        );
    }
    out
}

tokio::task_local! {
    /// The backend of the connection the watched work ([`watched_here`]) runs on, set by
    /// whatever takes that connection (`Applier::client`).
    pub(crate) static BACKEND: std::sync::Arc<std::sync::atomic::AtomicI32>;
}

/// [`watched`] for work that takes its connection itself: the backend is noted when it
/// does (see [`BACKEND`]).
pub(crate) async fn watched_here<T>(
    name: &str,
    database: &Database,
    after: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    BACKEND
        .scope(pid.clone(), watched(name, database, &pid, after, work))
        .await
}

/// What a backend waits for, from `pg_stat_activity`.
pub(crate) struct Wait {
    /// `wait_event_type` and `wait_event`: `Lock`/`relation`, `Client`/`ClientRead`…
    pub kind: Option<String>,
    pub event: Option<String>,
    /// The sessions holding the lock it waits for, each as "pid N (user …, application …,
    /// state, transaction open N s)" — never their query, which may hold secrets. Columns
    /// of other roles' sessions but pid, user and application read NULL without
    /// `pg_read_all_stats`: said as "not visible".
    pub holders: Vec<String>,
}

impl Wait {
    /// Backend `pid`'s wait, read on `client`; `None` when it is gone.
    pub(crate) async fn of(
        client: &Client,
        pid: i32,
    ) -> Result<Option<Wait>, tokio_postgres::Error> {
        let rows = client
            .query(
                "select a.wait_event_type, a.wait_event, b.pid, b.usename::text, b.application_name,
                        b.state, extract(epoch from clock_timestamp() - b.xact_start)::float8
                   from pg_stat_activity a
                   left join lateral unnest(pg_blocking_pids(a.pid)) h(pid) on true
                   left join pg_stat_activity b on b.pid = h.pid
                  where a.pid = $1
                  order by b.pid",
                &[&pid],
            )
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let holders = rows
            .iter()
            .filter_map(|r| {
                let holder: i32 = r.get::<_, Option<i32>>(2)?;
                let user: Option<String> = r.get(3);
                let app: Option<String> = r.get(4);
                let state: Option<String> = r.get(5);
                let open: Option<f64> = r.get(6);
                let mut s = format!(
                    "pid {holder} (user {}",
                    user.as_deref().unwrap_or("not visible")
                );
                if let Some(app) = app.filter(|a| !a.is_empty()) {
                    s.push_str(&format!(", application {app}"));
                }
                match (state, open) {
                    (Some(state), Some(open)) => {
                        s.push_str(&format!(", {state}, transaction open {open:.0} s)"))
                    }
                    (Some(state), None) => s.push_str(&format!(", {state})")),
                    _ => s.push_str(", state not visible to this role)"),
                }
                Some(s)
            })
            .collect();
        Ok(Some(Wait {
            kind: first.get(0),
            event: first.get(1),
            holders,
        }))
    }

    /// Whether it waits for a lock.
    pub(crate) fn blocked(&self) -> bool {
        self.kind.as_deref() == Some("Lock")
    }

    /// "a relation lock held by pid N (…)", for a backend that waits for a lock.
    pub(crate) fn lock(&self) -> String {
        let what = self.event.as_deref().unwrap_or_default();
        if self.holders.is_empty() {
            format!("a {what} lock")
        } else {
            format!("a {what} lock held by {}", self.holders.join(", "))
        }
    }
}

/// What the backend of `pid` (0: not known yet) waits for: (whether it waits for a lock,
/// a sentence saying what and who holds it).
pub(crate) async fn describe_backend(
    database: &Database,
    pid: &std::sync::atomic::AtomicI32,
) -> (bool, String) {
    let seen = describe_wait(database, pid).await;
    (seen.blocked, seen.detail)
}

/// [`describe_backend`], and when the connection is idle (the step waits outside the
/// database) what `elsewhere` says.
async fn describe_step(
    database: &Database,
    pid: &std::sync::atomic::AtomicI32,
    elsewhere: Option<&Elsewhere>,
) -> (bool, String) {
    let seen = describe_wait(database, pid).await;
    if let (true, Some(elsewhere)) = (seen.idle, elsewhere) {
        if let Some((blocked, there)) = elsewhere().await {
            return (
                blocked,
                format!("its connection (pid {}) is idle: {there}", seen.pid),
            );
        }
    }
    (seen.blocked, seen.detail)
}

/// What a backend was seen waiting for.
struct Seen {
    pid: i32,
    /// It waits for a lock.
    blocked: bool,
    /// It waits for its client: the step waits outside the database.
    idle: bool,
    detail: String,
}

/// What backend `pid` waits for, read on a connection of its own.
async fn describe_wait(database: &Database, pid: &std::sync::atomic::AtomicI32) -> Seen {
    let pid = pid.load(Ordering::Relaxed);
    let seen = |blocked: bool, idle: bool, detail: String| Seen {
        pid,
        blocked,
        idle,
        detail,
    };
    if pid == 0 {
        return seen(false, false, "its connection's backend is unknown".into());
    }
    let client = match db::connect(database, "stall report").await {
        Ok(c) => c,
        Err(e) => return seen(false, false, format!("cannot look at its connection: {e}")),
    };
    let wait = match Wait::of(&client, pid).await {
        Ok(Some(w)) => w,
        Ok(None) => {
            return seen(
                false,
                false,
                format!("its backend (pid {pid}) is gone from pg_stat_activity"),
            )
        }
        Err(e) => {
            return seen(
                false,
                false,
                format!("cannot read pg_stat_activity: {}", db::describe(&e)),
            )
        }
    };
    if wait.blocked() {
        let end = if wait.holders.is_empty() {
            ""
        } else {
            " — end that transaction (or wait for it) and the step goes on"
        };
        return seen(
            true,
            false,
            format!("its connection (pid {pid}) waits for {}{end}", wait.lock()),
        );
    }
    match wait.kind.as_deref() {
        Some("Client") => seen(
            false,
            true,
            format!(
                "its connection (pid {pid}) is idle: the step waits outside the database \
                 (for the target's answer, say)"
            ),
        ),
        Some(k) => seen(
            false,
            false,
            format!(
                "its connection (pid {pid}) is working (wait event {k}/{})",
                wait.event.unwrap_or_default()
            ),
        ),
        None => seen(
            false,
            false,
            format!("its connection (pid {pid}) is working"),
        ),
    }
}

/// How a target's stall reports name the batches of `source` for `target` it applies:
/// the start of each one's detail, followed by its number.
pub(crate) fn batches_of(source: &str, target: &str) -> String {
    format!("source `{source}`, target `{target}`, batch ")
}

/// What a target says about a request of ours it has not answered yet (`asked`: "the
/// target … has not answered …"): its stall reports (`GET /v1/stalls`) that `ours` picks,
/// the blocked first, the longest first among them. `what` names the work looked for there
/// ("step of the load", "apply of this source's batches").
pub(crate) async fn target_account(
    http: &crate::tls::HttpClient,
    base: &str,
    token: Option<&str>,
    asked: &str,
    what: &str,
    ours: impl Fn(&Stall) -> bool,
) -> (bool, String) {
    let stalls = async {
        let req = crate::tls::request(base, token, hyper::Method::GET, "/v1/stalls")
            .body(crate::tls::empty())
            .map_err(|e| e.to_string())?;
        let (status, bytes) = crate::tls::exchange(http, req).await?;
        if status != hyper::StatusCode::OK {
            let older = if status == hyper::StatusCode::NOT_FOUND {
                " (a target older than this instance)"
            } else {
                ""
            };
            return Err(format!("{status}{older}"));
        }
        #[derive(serde::Deserialize)]
        struct Stalls {
            stalls: Vec<Stall>,
        }
        serde_json::from_slice::<Stalls>(&bytes)
            .map(|s| s.stalls)
            .map_err(|e| format!("unreadable answer: {e}"))
    };
    match stalls.await {
        Err(e) => (
            false,
            format!("{asked}; its stall report could not be read ({e}): see its log"),
        ),
        Ok(stalls) => {
            let mut ours: Vec<Stall> = stalls.into_iter().filter(|s| ours(s)).collect();
            ours.sort_by(|a, b| {
                b.blocked
                    .cmp(&a.blocked)
                    .then(b.seconds.total_cmp(&a.seconds))
            });
            match ours.first() {
                None => (
                    false,
                    format!(
                        "{asked}, and reports no {what} running long there: its answer is on \
                         the way (or the network holds it)"
                    ),
                ),
                Some(s) => (
                    s.blocked,
                    format!("{asked}; there, for {:.0} s, {}", s.seconds, s.detail),
                ),
            }
        }
    }
}

/// Failed steps since the process started, by stage and kind of error.
static ERRORS: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

pub fn count_error(stage: &str, kind: &'static str) {
    if let Ok(mut errors) = ERRORS.lock() {
        *errors.entry((stage.to_string(), kind)).or_default() += 1;
    }
}

/// (stage, kind, count) of the failed steps since the process started (`/metrics`).
pub fn error_counts() -> Vec<(String, &'static str, u64)> {
    ERRORS
        .lock()
        .map(|e| e.iter().map(|((s, k), n)| (s.clone(), *k, *n)).collect())
        .unwrap_or_default()
}

/// Capped exponential backoff with ±25 % jitter.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let base = base.max(Duration::from_millis(50));
    let exp = base.saturating_mul(1u32 << failures.min(10));
    let capped = exp.min(Duration::from_secs(30));
    let jitter = 0.75 + fastrand::f64() * 0.5;
    capped.mul_f64(jitter)
}

/// Sleeps; returns true when shutdown came first.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step reported as stalled and then dropped before it ended (a shutdown, a batch
    /// whose sender went away) leaves no stall behind in `/metrics` or the alerts.
    #[tokio::test]
    async fn a_dropped_step_leaves_no_stall() {
        let database: Database = serde_json::from_value(serde_json::json!(
            {"name": "x", "database": "d", "username": "u"}
        ))
        .expect("a database config");
        // Backend unknown (0): the report needs no connection.
        let pid = std::sync::atomic::AtomicI32::new(0);
        let step = watched(
            "stall-test",
            &database,
            &pid,
            Duration::from_millis(10),
            std::future::pending::<()>(),
        );
        let ran = tokio::time::timeout(Duration::from_millis(200), step).await;
        assert!(ran.is_err(), "the step never ends");
        assert!(
            !stalls().iter().any(|s| s.stage == "stall-test"),
            "{:?}",
            stalls()
        );
        // And while it runs, it is there.
        let step = watched(
            "stall-test",
            &database,
            &pid,
            Duration::from_millis(10),
            tokio::time::sleep(Duration::from_millis(200)),
        );
        let seen = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stalls().into_iter().find(|s| s.stage == "stall-test")
        };
        let ((), seen) = tokio::join!(step, seen);
        let seen = seen.expect("reported while it runs");
        assert!(!seen.blocked && seen.seconds >= 0.09, "{seen:?}");
        assert!(!stalls().iter().any(|s| s.stage == "stall-test"));
    }
}
