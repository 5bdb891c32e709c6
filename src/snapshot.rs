//! The initial snapshot of a mirror (`do_initial_snapshot`): the instance runs the initial
//! load itself while the mirror is SNAPSHOT, and stops it when the mirror is paused or
//! terminated. The load is resumable, so a resume or a restart continues where it stopped:
//! finished tables and ranges are not copied again, a half-copied range is redone.

use std::time::Duration;

use ddlwatcher::quote_ident;
use tokio_postgres::Client;

use crate::config::Config;
use crate::mirror::{self, MirrorError, State};
use crate::stage::{Progress, Step, StepError};

/// How often the mirror's state is read while the load runs.
const WATCH: Duration = Duration::from_millis(250);

/// Runs one mirror's initial snapshot.
pub struct Snapshotter {
    config: Config,
    schema: String,
    target: String,
}

impl Snapshotter {
    pub fn new(config: &Config, target: &str) -> Self {
        Self {
            config: config.clone(),
            schema: quote_ident(&config.internal_schema),
            target: target.to_string(),
        }
    }
}

fn mirror_err(e: MirrorError) -> StepError {
    StepError::Other(e.to_string())
}

impl Step for Snapshotter {
    fn name(&self) -> String {
        format!("snapshot {}", self.target)
    }

    async fn step(&mut self, client: &mut Client) -> Result<Progress, StepError> {
        let (s, name) = (self.schema.clone(), self.target.clone());
        let (state, pending) = mirror::status(client, &s, &name)
            .await
            .map_err(mirror_err)?;
        if !pending {
            return Ok(Progress::Idle);
        }
        match state {
            State::Setup | State::Running => {
                mirror::advance(client, &s, &name, state, State::Snapshot, None)
                    .await
                    .map_err(mirror_err)?;
                return Ok(Progress::Busy);
            }
            State::Pausing => {
                // Steps run one at a time: no load runs now.
                mirror::advance(
                    client,
                    &s,
                    &name,
                    State::Pausing,
                    State::Paused,
                    Some("paused during the initial snapshot; a resume continues it"),
                )
                .await
                .map_err(mirror_err)?;
                return Ok(Progress::Idle);
            }
            State::Snapshot => {}
            _ => return Ok(Progress::Idle),
        }
        let target = self
            .config
            .targets
            .get(&name)
            .ok_or_else(|| StepError::Fatal(format!("mirror `{name}` is not in the config")))?;
        tracing::info!(mirror = %name, "initial snapshot running");
        let load = crate::load::run(&self.config, target.snapshot_options(&name));
        let mut load = std::pin::pin!(load);
        let result = loop {
            tokio::select! {
                r = &mut load => break r,
                _ = tokio::time::sleep(WATCH) => {
                    let (now, _) = mirror::status(client, &s, &name).await.map_err(mirror_err)?;
                    if now != State::Snapshot {
                        // Dropping the load stops its copies; their transactions roll back.
                        tracing::info!(mirror = %name, state = %now, "initial snapshot stopped; it continues where it stopped when the mirror resumes");
                        return Ok(Progress::Busy);
                    }
                }
            }
        };
        match result {
            Ok(summary) => {
                tracing::info!(mirror = %name, %summary, "initial snapshot done");
                mirror::finish_snapshot(client, &s, &name)
                    .await
                    .map_err(mirror_err)?;
                Ok(Progress::Busy)
            }
            Err(e) if e.needs_action() => {
                let reason = format!("initial snapshot: {e}");
                mirror::fail(client, &s, &name, &reason).await;
                tracing::error!(mirror = %name, error = %e, "initial snapshot refused; the mirror is FAILED (fix it, then resume)");
                Ok(Progress::Idle)
            }
            Err(e) => Err(StepError::Other(format!("initial snapshot: {e}"))),
        }
    }
}
