//! Command line: teleport's single-dash flags and the modern forms side by side.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// pgteleport — PostgreSQL to PostgreSQL replication with triggers: no superuser, no
/// replication slot, no wal_level=logical.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Configuration file (YAML). Teleport's `-config FILE` works too.
    #[arg(long, short = 'c', global = false)]
    pub config: Option<PathBuf>,
    /// `replication` (default) or `initial-load`.
    #[arg(long, value_enum, default_value_t = Mode::Replication)]
    pub mode: Mode,
    /// Target to load with `-mode initial-load`.
    #[arg(long)]
    pub load_target: Option<String>,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options of the initial load.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Replace the rows of target tables that are not empty (otherwise they are refused).
    #[arg(long)]
    pub truncate: bool,
    /// Copy these tables again though they are complete on the target (a load finished
    /// them, or the stream made them), replacing their rows: `schema.table` patterns of
    /// source names, as in target_expression (`app.orders,app.item_*`).
    #[arg(long, value_name = "PATTERNS")]
    pub copy_again: Option<String>,
    /// Parallel COPY streams (default: half the CPUs, at least 1; a table's keys are built
    /// while the next table is copied).
    #[arg(long, default_value_t = crate::load::default_workers())]
    pub workers: usize,
    /// Heap megabytes per ctid range of a large table.
    #[arg(long, default_value_t = 64)]
    pub range_mb: u64,
    /// `auto`: whole tables when the target runs with wal_level = minimal (filled without
    /// WAL), ctid ranges otherwise; `ranges` or `whole` to choose.
    #[arg(long, value_enum, default_value_t = crate::load::Split::Auto)]
    pub split: crate::load::Split,
    /// Plain log lines instead of a progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Seconds to wait for a lock before the snapshot (a table to copy, or one a view reads,
    /// locked by a schema change not committed yet; a table that needs its capture trigger
    /// behind a write left open; the ddlwatcher's look) before stopping with a message.
    #[arg(long, default_value_t = 60)]
    pub lock_wait: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Replication,
    InitialLoad,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an instance (source, target or both, as the config says).
    Run {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Initial load of one target (same as `-mode initial-load -load-target NAME`).
    Load {
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// The target (a key of `targets`) to load.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Validate a config and test its connections, with a readable report.
    Check {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Where each target stands: batches made and acknowledged, pending events, schema
    /// versions, the last transmit error; and what this instance applied as a target.
    Status {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Compare the source's and a target's tables (counts, checksums, then keys of differing
    /// rows); exits 3 when they differ.
    Verify {
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// The target (a key of `targets`).
        #[arg(long)]
        target: String,
        /// The target instance's config file (for its database connection; its password
        /// from the file or PGTELEPORT_TARGET_DATABASE__PASSWORD).
        #[arg(long)]
        target_config: PathBuf,
        /// Seconds to wait for the target to catch up before comparing.
        #[arg(long, default_value_t = 60)]
        within: u64,
        /// Rows per key-range chunk compared by checksum.
        #[arg(long, default_value_t = 100_000)]
        chunk_rows: i64,
    },
    /// Install the queue schema and triggers on the source, then exit.
    Install {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Remove every trigger and the internal schema from this instance's database.
    Uninstall {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Mirrors through the source instance's REST API: list, status, pause, resume,
    /// terminate.
    Mirror {
        #[command(subcommand)]
        action: MirrorCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Peers (named connections) through the REST API: list, create.
    Peer {
        #[command(subcommand)]
        action: PeerCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Demo: two throwaway clusters, a live workload, replicated; Ctrl-C to stop.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Workload transactions per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
    },
}

/// Where the REST API is (the password comes from PGTELEPORT_API_PASSWORD or the config).
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The API's base URL, e.g. http://127.0.0.1:3000 (env PGTELEPORT_API_URL).
    #[arg(long, global = true, env = "PGTELEPORT_API_URL")]
    pub api: Option<String>,
    /// The source instance's config: its `server` section locates the API.
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    /// Root certificate (PEM) to verify an https API with.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Every mirror with its state.
    List,
    /// One mirror's state, queue, lag and last error.
    Status { name: String },
    /// Stop shipping (the queue grows; batches wait).
    Pause { name: String },
    /// Ship again.
    Resume { name: String },
    /// End the mirror for good (its unshipped batches are dropped).
    Terminate { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Every peer (passwords are never shown).
    List,
    /// Create (or with --allow-update change) a PostgreSQL peer; its connection is checked
    /// first. The password comes from PGTELEPORT_PEER_PASSWORD.
    Create {
        name: String,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 5432)]
        port: u16,
        #[arg(long)]
        user: String,
        #[arg(long)]
        database: String,
        #[arg(long)]
        sslmode: Option<String>,
        /// A libpq-style connection option, KEY=VALUE (repeatable).
        #[arg(long = "option")]
        options: Vec<String>,
        /// Replace a peer of this name that has another definition.
        #[arg(long)]
        allow_update: bool,
    },
}

/// Rewrites teleport's single-dash long flags (`-config x`, `-mode=y`) to `--config x`.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    const LONG: &[&str] = &[
        "config",
        "mode",
        "load-target",
        "duration",
        "rate",
        "truncate",
        "copy-again",
        "workers",
        "range-mb",
        "split",
        "target",
        "no-progress",
        "target-config",
        "within",
        "chunk-rows",
        "lock-wait",
    ];
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i > 0 && a.starts_with('-') && !a.starts_with("--") {
                let name = a[1..].split('=').next().unwrap_or("");
                if LONG.contains(&name) {
                    return format!("-{a}");
                }
            }
            a
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(normalize_args(args.iter().map(|s| s.to_string()))).unwrap()
    }

    #[test]
    fn teleport_flags_work() {
        let c = parse(&[
            "pgteleport",
            "-config",
            "s.yml",
            "-mode",
            "initial-load",
            "-load-target",
            "a",
        ]);
        assert_eq!(c.config, Some(PathBuf::from("s.yml")));
        assert_eq!(c.mode, Mode::InitialLoad);
        assert_eq!(c.load_target.as_deref(), Some("a"));
        let c = parse(&["pgteleport", "-config=s.yml"]);
        assert_eq!(c.config, Some(PathBuf::from("s.yml")));
        let c = parse(&["pgteleport", "--config", "s.yml"]);
        assert_eq!(c.config, Some(PathBuf::from("s.yml")));
        assert_eq!(c.mode, Mode::Replication);
        let c = parse(&["pgteleport", "-c", "s.yml"]);
        assert_eq!(c.config, Some(PathBuf::from("s.yml")));
        let c = parse(&[
            "pgteleport",
            "verify",
            "-config",
            "s.yml",
            "-target",
            "t",
            "-target-config",
            "t.yml",
            "-within",
            "5",
        ]);
        match c.command {
            Some(Command::Verify {
                target_config,
                within,
                ..
            }) => {
                assert_eq!((target_config, within), (PathBuf::from("t.yml"), 5));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subcommands_parse() {
        assert!(matches!(
            parse(&["pgteleport", "check", "--config", "x"]).command,
            Some(Command::Check { .. })
        ));
        assert!(matches!(
            parse(&["pgteleport", "check", "-config", "x"]).command,
            Some(Command::Check { .. })
        ));
        assert!(matches!(
            parse(&["pgteleport", "demo", "--duration", "5"]).command,
            Some(Command::Demo {
                duration: Some(5),
                ..
            })
        ));
    }

    #[test]
    fn api_subcommands_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        match parse(&[
            "pgteleport",
            "mirror",
            "pause",
            "m1",
            "--api",
            "http://h:1",
            "--json",
        ])
        .command
        {
            Some(Command::Mirror {
                action: MirrorCommand::Pause { name },
                api,
            }) => {
                assert_eq!(name, "m1");
                assert_eq!(api.api.as_deref(), Some("http://h:1"));
                assert!(api.json);
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "pgteleport",
            "peer",
            "create",
            "p",
            "--host",
            "h",
            "--user",
            "u",
            "--database",
            "d",
            "--option",
            "connect_timeout=5",
            "-c",
            "s.yml",
        ])
        .command
        {
            Some(Command::Peer {
                action:
                    PeerCommand::Create {
                        name,
                        port,
                        options,
                        ..
                    },
                api,
            }) => {
                assert_eq!((name.as_str(), port), ("p", 5432));
                assert_eq!(options, vec!["connect_timeout=5".to_string()]);
                assert_eq!(api.config.as_deref(), Some(std::path::Path::new("s.yml")));
            }
            other => panic!("{other:?}"),
        }
    }
}
