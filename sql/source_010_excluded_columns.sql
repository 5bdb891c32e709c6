-- pgteleport source, version 10: excluded columns remembered by table oid and attribute
-- number, with every name each has had. `exclude_columns` names columns; a column excluded
-- once stays excluded when it is renamed (and its table with it): the ddlwatcher leaves it
-- out of the schema changes it replicates, the transmitter strips each of its names from
-- the row images (images queued before a rename carry the old name).
create table if not exists excluded_column (
    target text not null,
    relid  oid not null,
    attnum int2 not null,
    names  text[] not null,
    primary key (target, relid, attnum)
);
