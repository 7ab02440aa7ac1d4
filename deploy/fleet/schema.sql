-- tokenproxy fleet mode (SPEC §3.1): the tables, and a role with the least rights it needs.
--
-- tokenproxy creates these tables itself when its role may; a DBA who would rather not grant
-- CREATE runs this once as the database owner instead:
--
--   psql -v role=tokenproxy -v database=tokenproxy -d tokenproxy -f schema.sql
--
-- The role then needs only to log in, read and write the rows, and use advisory locks and
-- LISTEN/NOTIFY (which need no grant). It never deletes (logout writes an empty token set).

CREATE TABLE IF NOT EXISTS tokenproxy_tokens (
    name text PRIMARY KEY,
    version bigint NOT NULL,
    key_id text NOT NULL,
    sealed bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS tokenproxy_schema (version integer NOT NULL);
INSERT INTO tokenproxy_schema (version) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM tokenproxy_schema);

REVOKE ALL ON tokenproxy_tokens, tokenproxy_schema FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO :"role";
GRANT USAGE ON SCHEMA public TO :"role";
GRANT SELECT, INSERT, UPDATE ON tokenproxy_tokens TO :"role";
GRANT SELECT ON tokenproxy_schema TO :"role";
