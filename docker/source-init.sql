-- Source database of docker-compose.yml. The postgres image runs this once, on an empty data
-- directory, as the superuser, connected to POSTGRES_DB (shop). It sets up what
-- `pgteleport demo` sets up on its source cluster: an ordinary role (no SUPERUSER,
-- REPLICATION, CREATEROLE or CREATEDB) with CREATE and CONNECT on a database the superuser
-- owns, and a schema and a table that role owns (so it may put capture triggers on it).
--
-- The role's password comes from the container's environment (psql 15's \getenv), so it is
-- written in no file: SHOP_REPLICATOR_PASSWORD, set by docker-compose.yml.

\set ON_ERROR_STOP on

\getenv replicator_password SHOP_REPLICATOR_PASSWORD
\if :{?replicator_password}
\else
\set replicator_password ''
\endif
SELECT :'replicator_password' = '' AS replicator_password_missing \gset
\if :replicator_password_missing
DO $$ BEGIN RAISE EXCEPTION 'SHOP_REPLICATOR_PASSWORD is not set (see docker/README.md)'; END $$;
\endif

CREATE ROLE shop_replicator LOGIN NOSUPERUSER NOREPLICATION NOCREATEROLE NOCREATEDB
    PASSWORD :'replicator_password';
\unset replicator_password

-- CREATE: pgteleport creates its internal schema (`teleport`) in this database.
GRANT CREATE, CONNECT ON DATABASE shop TO shop_replicator;

-- Created as the role, so the role owns them.
SET ROLE shop_replicator;

CREATE SCHEMA shop;

CREATE TABLE shop.customer (
    id      bigint PRIMARY KEY,
    name    text NOT NULL,
    balance numeric(14,2) NOT NULL DEFAULT 0
);

RESET ROLE;
