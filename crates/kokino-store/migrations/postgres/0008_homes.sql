-- Brokers and agent homes (several machines): which broker runs each agent's CLIs, and where
-- each broker can be reached. Equivalent to migrations/sqlite/0008_homes.sql; conventions as in
-- 0001_init.sql. `expires_at` comes from the database's clock, never a broker's.
--
-- A broker is alive while its row is unexpired; it renews the row every quarter of its ttl and
-- expires it when it stops cleanly (drain).
CREATE TABLE brokers (
    instance_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    url         TEXT        NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL
);

-- The home of an agent: the broker that holds its working directory and its CLI session files.
-- No foreign key to agents or brokers: a home may name a broker that has not started yet (the
-- operator's choice at registration) or one that is gone (failover reads exactly that).
-- `generation` grows by one at every change, so a reader can tell a move it has not seen yet.
CREATE TABLE agent_homes (
    agent_id    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    portable    BOOLEAN     NOT NULL DEFAULT FALSE,
    generation  BIGINT      NOT NULL CHECK (generation >= 1),
    changed_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX agent_homes_instance ON agent_homes (instance_id);
