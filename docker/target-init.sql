-- Target database of docker-compose.yml. The postgres image runs this once, on an empty data
-- directory, as the superuser, connected to POSTGRES_DB (shop). It sets up what
-- `pgteleport demo` sets up on its target cluster: an ordinary role (no SUPERUSER,
-- REPLICATION, CREATEROLE or CREATEDB) with CREATE and CONNECT on a database the superuser
-- owns, the right to set session_replication_role, and the same (empty) table as the
-- source, owned by that role.
--
-- The role's password comes from the container's environment (psql 15's \getenv), so it is
-- written in no file: SHOP_APPLIER_PASSWORD, set by docker-compose.yml.

\set ON_ERROR_STOP on

\getenv applier_password SHOP_APPLIER_PASSWORD
\if :{?applier_password}
\else
\set applier_password ''
\endif
SELECT :'applier_password' = '' AS applier_password_missing \gset
\if :applier_password_missing
DO $$ BEGIN RAISE EXCEPTION 'SHOP_APPLIER_PASSWORD is not set (see docker/README.md)'; END $$;
\endif

CREATE ROLE shop_applier LOGIN NOSUPERUSER NOREPLICATION NOCREATEROLE NOCREATEDB
    PASSWORD :'applier_password';
\unset applier_password

-- CREATE: pgteleport creates its internal schema (`teleport`) in this database, and schema
-- changes replicated from the source create objects here.
GRANT CREATE, CONNECT ON DATABASE shop TO shop_applier;

-- PostgreSQL 15+: lets the applier run with session_replication_role = replica, so target
-- triggers and foreign-key actions stay quiet (they already ran on the source). Without it
-- pgteleport still works and logs a warning at start.
GRANT SET ON PARAMETER session_replication_role TO shop_applier;

-- The tables that exist on the source when the source instance first starts are its
-- baseline: pgteleport replicates their changes from then on but does not create them here,
-- so the table is created here too, identical and empty, as `pgteleport demo` does. (Rows
-- already in a source table at that moment need the initial load: see docker/README.md.
-- Tables created on the source later are created here by pgteleport.)
SET ROLE shop_applier;

CREATE SCHEMA shop;

CREATE TABLE shop.customer (
    id      bigint PRIMARY KEY,
    name    text NOT NULL,
    balance numeric(14,2) NOT NULL DEFAULT 0
);

RESET ROLE;
