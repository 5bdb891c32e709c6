//! The loop every pipeline stage runs: one step per interval, shutdown first, reconnect on a
//! lost connection, back off on errors, never skip work.

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
}

/// Runs `stage` until `shutdown`, stepping every `interval`. Returns an error only for
/// [`StepError::Fatal`]; everything else is logged and retried with capped backoff.
pub async fn run<S: Step + Send>(
    mut stage: S,
    database: Database,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(), StepError> {
    let name = stage.name();
    let mut client: Option<Client> = None;
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
            r = stage.step(c) => r,
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
