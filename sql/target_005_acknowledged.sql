-- pgteleport target, version 5: the last batch acknowledged to each source, written after
-- the batch's own transaction (which commits without waiting for its WAL to reach disk)
-- by a transaction that does wait: its commit flushes the WAL up to and past the batch's,
-- so a position is made durable before any answer reports it, while the next batch
-- already applies.
create table if not exists acknowledged (
    source text   not null,
    target text   not null,
    seq    bigint not null,
    acknowledged_at timestamptz not null default clock_timestamp(),
    primary key (source, target)
);
