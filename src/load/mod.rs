//! Initial load (`-mode initial-load -load-target NAME`): copies existing rows consistently
//! with the live stream.
//!
//! The source exports one REPEATABLE READ snapshot; workers import it and stream
//! `COPY … TO STDOUT` (binary when every column has a built-in type) of each table, split
//! into ctid ranges, through HTTP into `COPY … FROM STDIN` on the target. The target records
//! the snapshot per table; live batches wait until every table is done and then skip the
//! events of transactions visible in it — those rows are in the copy.

pub mod receive;
pub mod send;

pub use send::{default_workers, run, LoadError, LoadOptions, Split, Summary, DEFAULT_LOCK_WAIT};
