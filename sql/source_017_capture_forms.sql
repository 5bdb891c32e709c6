-- pgteleport source, version 17: which columns a row trigger knew. In diffing mode the row
-- trigger is made again only at the ddlwatcher's look, so between a schema change and the
-- look it writes row images by the arguments it was made with: a json/jsonb column added
-- or renamed since is in its JSON form, not its text form — the same JSON either way,
-- except for a top-level JSON string (`'"text"'`), which the applier would read as the
-- text of a JSON value. Each time the trigger is made, and at each look that changes a
-- table, the source records the table's columns from that event on (the event number,
-- taken under the trigger's lock when it is made, so every row image before it is the
-- earlier trigger's); the transmitter turns a JSON string of a json/jsonb column that the
-- columns recorded before the event did not have into its text form.
create table capture_form (
    relid    oid not null,
    -- Events of the table from this number on were written knowing `columns`.
    from_ev  bigint not null,
    -- The queue rotation at that time: events before `from_ev` are in queue tables of this
    -- rotation or earlier (the vacuum forgets a record when they are all emptied).
    rotation bigint not null,
    columns  text[] not null,
    -- Those of `columns` that are json or jsonb (also domains over them).
    json     text[] not null,
    primary key (relid, from_ev)
);
