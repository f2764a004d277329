-- Brokers and agent homes (several machines): which broker runs each agent's CLIs, and where
-- each broker can be reached. Conventions as in 0001_init.sql. On SQLite there is one machine,
-- so these rows only ever name the one broker; the tables exist so that the store's contract
-- is the same on both backends.
CREATE TABLE brokers (
    instance_id TEXT NOT NULL PRIMARY KEY,
    url         TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    started_at  TEXT NOT NULL
) STRICT;

-- The home of an agent. No foreign keys: see migrations/postgres/0008_homes.sql.
CREATE TABLE agent_homes (
    agent_id    TEXT    NOT NULL PRIMARY KEY,
    instance_id TEXT    NOT NULL,
    portable    INTEGER NOT NULL DEFAULT 0 CHECK (portable IN (0, 1)),
    generation  INTEGER NOT NULL CHECK (generation >= 1),
    changed_at  TEXT    NOT NULL
) STRICT;
CREATE INDEX agent_homes_instance ON agent_homes (instance_id);
