-- Agent leases: which broker instance may run an agent, for how long, under which fencing token
-- (see src/postgres/leases.rs). Equivalent to migrations/sqlite/0006_leases.sql; conventions as
-- in 0001_init.sql. Times in this table come from the database's clock, never a broker's.
--
-- No foreign key to agents, and rows are never deleted: the token must never go back, also when
-- an agent is deleted and registered again, or a stale holder's old token could become valid.
CREATE TABLE agent_leases (
    agent_id    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner       TEXT COLLATE "C" NOT NULL,
    token       BIGINT      NOT NULL CHECK (token >= 1),
    expires_at  TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL
);

-- The broker instance that ran an execution: after a restart an instance cleans up its own
-- `running` executions, and a broker that takes an expired lease over finds the other's.
ALTER TABLE executions ADD COLUMN instance_id TEXT COLLATE "C";
CREATE INDEX executions_state_instance ON executions (state, instance_id);
