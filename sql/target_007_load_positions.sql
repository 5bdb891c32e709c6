-- pgteleport target, version 7: where an initial load stood in the schema stream. A load
-- creates the tables (and types) it lacks from the source's catalog as it is at a schema
-- version boundary (`at_version`): the versions up to it may still be on their way (made
-- before the load, not applied yet) and must not run again on what it created — they would
-- add a column twice or rename one that has its new name, and hold the stream for good.
-- `source_oid` names the table as the versions' statements do.
alter table load_table add column if not exists source_oid oid;
alter table load_table add column if not exists at_version bigint;
-- The last version held by a catalog a load created tables or types from (statements of
-- no table up to it that find their work done are left out).
alter table ddl_applied add column if not exists loaded_version bigint;
