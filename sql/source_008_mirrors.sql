-- pgteleport source, version 8: mirrors created through the REST API
-- (POST /api/v1/flows/cdc/create). The definition names its destination peer (a pgteleport
-- target instance, in `peer`), its tables and options; the instance runs it as it runs a
-- target of its config file, and a restart runs it again.
create table if not exists mirror (
    name       text primary key,
    definition jsonb not null,
    created_at timestamptz not null default clock_timestamp()
);
