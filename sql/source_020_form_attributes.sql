-- pgteleport source, version 20: the number of attributes a table had (`pg_class.relnatts`,
-- dropped columns included) when its columns were recorded. In diffing mode a column added,
-- written and dropped again between two looks leaves the table's catalog as it was — no
-- version, no new record — while the events written meanwhile name it: the target has no
-- such column and held them. The look sees the number grown, records the columns again,
-- and the transmitter leaves the gone column out of the events before that record.
alter table capture_form add column if not exists natts int2;
