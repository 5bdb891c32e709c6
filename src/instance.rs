//! One running instance: source stages, target server, or both, as the config says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::applier::Applier;
use crate::batcher::Batcher;
use crate::capture;
use crate::config::Config;
use crate::db;
use crate::server::Server;
use crate::stage;
use crate::transmitter::Transmitter;
use crate::vacuum::Vacuum;

/// Why an instance could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Connect(#[from] db::ConnectError),
    #[error("another pgteleport instance named `{name}` is already running against database `{database}`; stop it first (two instances would ship the same batches)")]
    AlreadyRunning { name: String, database: String },
    #[error("taking the instance lock failed: {}", db::describe(.0))]
    Lock(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Install(#[from] capture::InstallError),
    #[error("target setup failed: {0}")]
    Target(#[from] crate::applier::ApplyError),
    #[error("cannot listen on {address}: {source} — is another process using the port?")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{stage}: {message}")]
    Stage { stage: String, message: String },
    #[error("the instance lock connection to the source database was lost; stopping so that a restarted instance can take over cleanly")]
    LockLost,
}

/// A started instance.
pub struct Running {
    /// Address the HTTP server listens on, if it has one.
    pub local_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: JoinSet<(String, Result<(), InstanceError>)>,
}

/// Advisory lock class for "one instance per name".
const LOCK_CLASS: i32 = 7418;

impl Running {
    /// Stops every stage and waits for them (up to 10 s), naming any that did not stop.
    pub async fn shutdown(mut self) -> Result<(), InstanceError> {
        self.shutdown.cancel();
        self.join(Duration::from_secs(10)).await
    }

    /// Simulates a crash: aborts every task at whatever point it is, without cleanup.
    pub fn kill(mut self) {
        self.tasks.abort_all();
        self.shutdown.cancel();
    }

    /// Runs until `stop` is cancelled or a stage fails; then shuts down.
    pub async fn wait(mut self, stop: CancellationToken) -> Result<(), InstanceError> {
        let first = tokio::select! {
            _ = stop.cancelled() => Ok(()),
            r = self.tasks.join_next() => match r {
                Some(Ok((_, r))) => r,
                Some(Err(e)) => Err(InstanceError::Stage { stage: "task".into(), message: e.to_string() }),
                None => Ok(()),
            },
        };
        self.shutdown.cancel();
        let rest = self.join(Duration::from_secs(10)).await;
        first.and(rest)
    }

    async fn join(&mut self, limit: Duration) -> Result<(), InstanceError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut result = Ok(());
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(None) => return result,
                Ok(Some(Ok((_, Err(e))))) => {
                    if result.is_ok() {
                        result = Err(e)
                    }
                }
                Ok(Some(_)) => {}
                Err(_) => {
                    tracing::error!(
                        tasks = self.tasks.len(),
                        "tasks did not stop within {limit:?}; aborting them"
                    );
                    self.tasks.abort_all();
                    return result;
                }
            }
        }
    }
}

/// Connects, installs, binds, and spawns every stage of the instance.
pub async fn start(config: Config) -> Result<Running, InstanceError> {
    let roles = config.roles();
    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<(String, Result<(), InstanceError>)> = JoinSet::new();
    let mut lock_client: Option<Client> = None;

    if roles.source {
        let mut client = db::connect(&config.database, "instance lock").await?;
        let got: bool = client
            .query_one(
                "select pg_try_advisory_lock($1, hashtext($2))",
                &[&LOCK_CLASS, &config.database.name],
            )
            .await
            .map_err(InstanceError::Lock)?
            .get(0);
        if !got {
            return Err(InstanceError::AlreadyRunning {
                name: config.database.name.clone(),
                database: config.database.database.clone(),
            });
        }
        capture::install(&mut client, &config).await?;
        lock_client = Some(client);
    }
    if let Some(client) = lock_client.take() {
        // Holds the session (and so the advisory lock) for the life of the instance.
        let token = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => {
                        // Released before shutdown returns: an instance started right after
                        // (a restart) finds the name free, rather than racing the closing
                        // connection.
                        let _ = client.batch_execute("select pg_advisory_unlock_all()").await;
                        return ("instance lock".to_string(), Ok(()));
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                if client.is_closed() {
                    return ("instance lock".to_string(), Err(InstanceError::LockLost));
                }
            }
        });
    }

    let applier = if roles.target {
        Some(Arc::new(Applier::connect(&config).await?))
    } else {
        None
    };

    // Notified by the REST API when a mirror was created: the pipeline restarts with it.
    let reload = Arc::new(tokio::sync::Notify::new());
    let mut local_addr = None;
    if let Some(server) = &config.server {
        let address = format!("{}:{}", server.hostname, server.port);
        let listener =
            TcpListener::bind(&address)
                .await
                .map_err(|source| InstanceError::Listen {
                    address: address.clone(),
                    source,
                })?;
        local_addr = listener.local_addr().ok();
        tracing::info!(address = ?local_addr, accepts_batches = roles.target, "http server listening");
        let tls = crate::tls::acceptor(server).map_err(|e| InstanceError::Stage {
            stage: "server".into(),
            message: e.to_string(),
        })?;
        let api = crate::api::Api::new(&config).with_reload(reload.clone());
        let srv = Arc::new(Server::new(server, applier.clone()).with_api(api));
        let token = shutdown.clone();
        tasks.spawn(async move {
            srv.run(listener, tls, token).await;
            ("server".to_string(), Ok(()))
        });
    }

    if roles.source {
        // The first start's errors (a mirror's TLS settings, …) fail the start itself.
        let token = shutdown.child_token();
        let mut stages: Tasks = JoinSet::new();
        start_pipeline(&config, &mut stages, &token, true).await?;
        let config = config.clone();
        let shutdown = shutdown.clone();
        let reload = reload.clone();
        tasks.spawn(async move {
            let r = supervise(config, reload, shutdown, stages, token).await;
            ("pipeline".to_string(), r)
        });
    }
    Ok(Running {
        local_addr,
        shutdown,
        tasks,
    })
}

type Tasks = JoinSet<(String, Result<(), InstanceError>)>;

fn stage_err(stage: String) -> impl FnOnce(String) -> InstanceError {
    move |message| InstanceError::Stage { stage, message }
}

/// Runs the source pipeline: the config's targets and the mirrors stored in the database
/// (created through the REST API). When `reload` is notified (a mirror was created), the
/// stages stop and start again with the mirrors as they are now; batches in flight are
/// safe (a batch is applied exactly once, whatever stops).
async fn supervise(
    config: Config,
    reload: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    mut stages: Tasks,
    mut token: CancellationToken,
) -> Result<(), InstanceError> {
    loop {
        let outcome = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            _ = reload.notified() => Some(Ok(())),
            r = stages.join_next() => Some(match r {
                Some(Ok((_, r))) => r,
                Some(Err(e)) => Err(InstanceError::Stage { stage: "task".into(), message: e.to_string() }),
                None => Ok(()),
            }),
        };
        token.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, stages.join_next()).await {}
        stages.abort_all();
        match outcome {
            None => return Ok(()),
            Some(Err(e)) => return Err(e),
            Some(Ok(())) => tracing::info!("mirrors changed: the pipeline restarts with them"),
        }
        token = shutdown.child_token();
        stages = JoinSet::new();
        start_pipeline(&config, &mut stages, &token, false).await?;
    }
}

/// Installs capture for every mirror (config targets and stored ones) and spawns the
/// source stages. `installed`: the instance's start installed the config's targets a moment
/// ago (an install reads every target's catalog, ~0.1 s), so only stored mirrors need it.
async fn start_pipeline(
    config: &Config,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
    installed: bool,
) -> Result<(), InstanceError> {
    let mut client = db::connect(&config.database, "pipeline").await?;
    let stored_too = crate::mirror::with_stored(config, &client)
        .await
        .map_err(|e| stage_err("mirrors".into())(e.to_string()))?;
    if !installed || stored_too.targets.len() > config.targets.len() {
        capture::install(&mut client, &stored_too).await?;
    }
    let config = stored_too;
    let schema = ddlwatcher::quote_ident(&config.internal_schema);
    for (name, _) in config.targets.iter().filter(|(_, t)| t.do_initial_snapshot) {
        crate::mirror::request_snapshot(&client, &schema, name)
            .await
            .map_err(|e| stage_err(format!("snapshot {name}"))(e.to_string()))?;
    }
    drop(client);
    let iv = config.processing_intervals.clone();
    let db = config.database.clone();
    let mut batcher = Batcher::new(&config);
    let mut transmitters = Vec::new();
    for (name, target) in &config.targets {
        let t = Transmitter::new(&config, name, target)
            .map_err(|e| stage_err(format!("transmitter {name}"))(e.to_string()))?;
        batcher.wake_on_batch(name, t.waker());
        transmitters.push(t);
    }
    // Each stage's interval, and how long one of its steps may run before it is reported.
    let every = |interval: Duration| (interval, iv.stall_report());
    spawn_stage(tasks, batcher, db.clone(), every(iv.batcher()), shutdown);
    spawn_stage(
        tasks,
        Vacuum::new(&config),
        db.clone(),
        every(iv.vacuum()),
        shutdown,
    );
    spawn_stage(
        tasks,
        crate::watcher::Watcher::new(&config),
        db.clone(),
        every(Duration::from_millis(iv.ddlwatcher)),
        shutdown,
    );
    for t in transmitters {
        spawn_stage(tasks, t, db.clone(), every(iv.transmitter()), shutdown);
    }
    for (name, _) in config.targets.iter().filter(|(_, t)| t.do_initial_snapshot) {
        spawn_stage(
            tasks,
            crate::snapshot::Snapshotter::new(&config, name),
            db.clone(),
            every(Duration::from_millis(500)),
            shutdown,
        );
    }
    spawn_stage(
        tasks,
        crate::alerts::Alerter::new(&config),
        db.clone(),
        every(Duration::from_millis(iv.alerts)),
        shutdown,
    );
    Ok(())
}

fn spawn_stage<S: stage::Step + Send + 'static>(
    tasks: &mut Tasks,
    s: S,
    db: crate::config::Database,
    (interval, stall_report): (Duration, Duration),
    shutdown: &CancellationToken,
) {
    let name = s.name();
    let token = shutdown.clone();
    tasks.spawn(async move {
        let r = stage::run(s, db, interval, stall_report, token)
            .await
            .map_err(|e| InstanceError::Stage {
                stage: name.clone(),
                message: e.to_string(),
            });
        (name, r)
    });
}
