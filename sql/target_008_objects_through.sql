-- pgteleport target, version 8: the schema version through which the target's objects of
-- no table (types and their enum labels, schemas, functions) hold every version, because an
-- initial load's prepare took those versions' statements or created the objects from its
-- catalog. The stream leaves such statements out up to it: run again on what holds them, an
-- old label's addition would add back a label renamed since.
alter table ddl_applied add column if not exists objects_through bigint;
