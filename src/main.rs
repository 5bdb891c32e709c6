//! The pgteleport binary: parse, configure logging, run, report.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pgteleport::cli::{normalize_args, Cli, Command, Mode};
use pgteleport::config::{Config, LogFormat};
use pgteleport::{capture, check, db, demo, instance};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args()));
    let code = match command(cli).and_then(|command| runtime(&command).block_on(run(command))) {
        Ok(code) => code,
        Err(e) => {
            // Reaches Sentry too when configured (scrubbed of values and secrets).
            tracing::error!(error = %format!("{e:#}"), "pgteleport failed");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    };
    pgteleport::telemetry::flush();
    code
}

fn init_logging(format: LogFormat, sentry: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGTELEPORT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(sentry.then(pgteleport::telemetry::layer))
        .try_init();
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    let sentry = pgteleport::telemetry::init(&config);
    init_logging(config.log_format, sentry);
    Ok(config)
}

/// The runtime for `command`. An initial load gets one thread per COPY stream: each
/// stream's rows pass between its source connection and its HTTP request many times a
/// second, and on one thread they do so without waking another (the load process used a
/// quarter less CPU in `bench/initial_load.sh`).
fn runtime(command: &Command) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Load { load, .. } = command {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(load.workers.clamp(1, cpus));
    }
    builder.enable_all().build().expect("tokio runtime")
}

/// The subcommand, or what the teleport-style flags (`-config`, `-mode`) ask for.
fn command(cli: Cli) -> anyhow::Result<Command> {
    Ok(match (cli.command, cli.config) {
        (Some(c), _) => c,
        (None, Some(config)) => match cli.mode {
            Mode::InitialLoad => Command::Load {
                config,
                target: cli.load_target.ok_or_else(|| {
                    anyhow::anyhow!(
                        "-mode initial-load needs -load-target NAME (a key of `targets`)"
                    )
                })?,
                load: cli.load,
            },
            Mode::Replication => Command::Run { config },
        },
        (None, None) => {
            anyhow::bail!("nothing to do: give `-config FILE` (or a subcommand; see --help)")
        }
    })
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = load_config(&config)?;
            let running = instance::start(config).await?;
            let stop = CancellationToken::new();
            let s = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown requested");
                s.cancel();
            });
            running.wait(stop).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load {
            config,
            target,
            load,
        } => {
            let config = load_config(&config)?;
            let opts = pgteleport::load::LoadOptions {
                target,
                truncate: load.truncate,
                copy_again: load
                    .copy_again
                    .as_deref()
                    .map(ddlwatcher::TargetExpression::parse)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--copy-again: {e}"))?,
                workers: load.workers,
                range_bytes: load.range_mb.max(1) << 20,
                split: load.split,
                progress: load.no_progress.then_some(false),
                lock_wait: std::time::Duration::from_secs(load.lock_wait),
            };
            let summary = pgteleport::load::run(&config, opts).await?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let config = load_config(&config)?;
            let report = check::check(&config).await;
            print!("{}", report.text);
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Status { config } => {
            let config = load_config(&config)?;
            print!("{}", pgteleport::status::status(&config).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            config,
            target,
            target_config,
            within,
            chunk_rows,
        } => {
            let config = load_config(&config)?;
            let target_cfg = Config::load_verify_target(&target_config)?;
            let reports = pgteleport::verify::verify(
                &config,
                &target,
                &target_cfg.database,
                Duration::from_secs(within),
                chunk_rows,
            )
            .await?;
            print!("{}", pgteleport::verify::render(&reports));
            let differ = reports.iter().filter(|r| !r.equal()).count();
            if differ > 0 {
                println!("{differ} of {} table(s) differ", reports.len());
                return Ok(ExitCode::from(3));
            }
            println!("{} table(s) equal", reports.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Install { config } => {
            let config = load_config(&config)?;
            let mut client = db::connect(&config.database, "install").await?;
            let installed = capture::install(&mut client, &config).await?;
            for (target, catalog) in installed.catalogs {
                println!(
                    "target `{target}`: {} table(s) captured",
                    catalog.tables.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall { config } => {
            let config = load_config(&config)?;
            let mut client = db::connect(&config.database, "uninstall").await?;
            let tables = capture::uninstall(&mut client, &config.internal_schema).await?;
            println!(
                "removed schema `{}` and the capture trigger of {} table(s)",
                config.internal_schema,
                tables.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Mirror { action, api } => {
            use pgteleport::apicli;
            use pgteleport::cli::MirrorCommand;
            let target =
                apicli::ApiTarget::resolve(api.api.as_deref(), api.config.as_deref(), api.ca_cert)?;
            let post = hyper::Method::POST;
            let (v, text): (serde_json::Value, fn(&serde_json::Value) -> String) = match action {
                MirrorCommand::List => (
                    target
                        .call(hyper::Method::GET, "/api/v1/mirrors/list", None)
                        .await?,
                    apicli::render_mirrors,
                ),
                MirrorCommand::Status { name } => (
                    target
                        .call(
                            post,
                            "/api/v1/mirrors/status",
                            Some(serde_json::json!({"flowJobName": name, "includeFlowInfo": true})),
                        )
                        .await?,
                    apicli::render_status,
                ),
                MirrorCommand::Pause { name } => (
                    change(&target, &name, "STATUS_PAUSED").await?,
                    render_change,
                ),
                MirrorCommand::Resume { name } => (
                    change(&target, &name, "STATUS_RUNNING").await?,
                    render_change,
                ),
                MirrorCommand::Terminate { name } => (
                    change(&target, &name, "STATUS_TERMINATED").await?,
                    render_change,
                ),
            };
            if api.json {
                println!("{v:#}");
            } else {
                print!("{}", text(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Peer { action, api } => {
            use pgteleport::apicli;
            use pgteleport::cli::PeerCommand;
            let target =
                apicli::ApiTarget::resolve(api.api.as_deref(), api.config.as_deref(), api.ca_cert)?;
            let (v, text): (serde_json::Value, fn(&serde_json::Value) -> String) = match action {
                PeerCommand::List => (
                    target
                        .call(hyper::Method::GET, "/api/v1/peers/list", None)
                        .await?,
                    apicli::render_peers,
                ),
                PeerCommand::Create {
                    name,
                    host,
                    port,
                    user,
                    database,
                    sslmode,
                    options,
                    allow_update,
                } => {
                    let password = std::env::var("PGTELEPORT_PEER_PASSWORD").ok();
                    let body = apicli::postgres_peer(
                        &name,
                        &host,
                        port,
                        &user,
                        password,
                        &database,
                        sslmode,
                        &options,
                        allow_update,
                    )?;
                    (
                        target
                            .call(hyper::Method::POST, "/api/v1/peers/create", Some(body))
                            .await?,
                        |v| {
                            format!(
                                "peer {}: {}\n",
                                v["name"].as_str().unwrap_or("?"),
                                v["status"].as_str().unwrap_or("?")
                            )
                        },
                    )
                }
            };
            if api.json {
                println!("{v:#}");
            } else {
                print!("{}", text(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { duration, rate } => {
            if std::env::var_os("PGTELEPORT_LOG").is_none() {
                // keep the demo's own output readable
                std::env::set_var("PGTELEPORT_LOG", "warn");
            }
            init_logging(LogFormat::Text, false);
            demo::run(duration.map(Duration::from_secs), rate).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn change(
    target: &pgteleport::apicli::ApiTarget,
    name: &str,
    requested: &str,
) -> anyhow::Result<serde_json::Value> {
    target
        .call(
            hyper::Method::POST,
            "/api/v1/mirrors/state_change",
            Some(serde_json::json!({"flowJobName": name, "requestedFlowState": requested})),
        )
        .await
}

fn render_change(v: &serde_json::Value) -> String {
    format!(
        "mirror {}: {}{}\n",
        v["flowJobName"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        if v["changed"] == serde_json::Value::Bool(false) {
            " (unchanged)"
        } else {
            ""
        }
    )
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
