-- pgteleport target, version 4: statements the applied events took (runs of rows, schema
-- and sequence steps), beside the events: how well batches are applied set-wise.
alter table applied add column if not exists runs bigint not null default 0;
