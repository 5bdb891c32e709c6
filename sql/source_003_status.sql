-- pgteleport source, version 3: the last transmit error per target, for `pgteleport status`.
alter table target_state add column if not exists last_error text;
alter table target_state add column if not exists last_error_at timestamptz;
