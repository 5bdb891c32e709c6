-- pgteleport source, version 19: the source transaction of each schema version. A version
-- whose statements delete rows (a partition detached or dropped takes its range out of the
-- partitioned table) must not do so on a target table that an initial load copied under a
-- snapshot which saw that transaction: the copy holds the rows as they were after it (the
-- partition attached again, or another one for its range). The target compares the two.
-- In event-trigger mode the version's transaction is the DDL's (`ddl_snapshot.txid`); a
-- version the ddlwatcher makes and queues itself is its own transaction's (the default).
-- Versions recorded before this one stay without (null: their statements run as before).
alter table ddl add column if not exists txid xid8;
alter table ddl alter column txid set default pg_current_xact_id();
