-- pgteleport target, version 6: schema versions applied before their schema event, kept
-- across batches. A version is applied early when a row needs it (a row inserted that only
-- a widened key allows); the rows up to its schema event were captured by the row trigger
-- made before the change and are matched on the key the target had then. The event may come
-- in a later batch: `early` holds {"versions": [...], "keys": {"table": [key columns]}} until
-- it does (null when none).
alter table ddl_applied add column if not exists early jsonb;
