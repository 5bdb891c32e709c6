//! pgteleport: trigger-based PostgreSQL → PostgreSQL replication without superuser,
//! replication slots or `wal_level=logical`.
//!
//! Source side: [`capture`] installs the queue and row triggers, [`batcher`] cuts ordered
//! batches of whole transactions, [`transmitter`] ships them, [`vacuum`] keeps the queue
//! small. Target side: [`server`] receives, [`applier`] applies exactly once.

pub mod alerts;
pub mod api;
pub mod apicli;
pub mod applier;
pub mod batcher;
pub mod capture;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod demo;
pub mod exclusion;
#[doc(hidden)]
pub mod fuzzing;
pub mod instance;
pub mod load;
pub mod mirror;
pub mod server;
pub mod snapshot;
pub mod stage;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod transmitter;
pub mod vacuum;
pub mod verify;
pub mod watcher;
pub mod wire;
