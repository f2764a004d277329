-- Agent leases: which broker instance may run an agent, for how long, under which fencing token
-- (see src/sqlite/leases.rs). Conventions as in 0001_init.sql.
--
-- No foreign key to agents, and rows are never deleted: the token must never go back, also when
-- an agent is deleted and registered again, or a stale holder's old token could become valid.
CREATE TABLE agent_leases (
    agent_id    TEXT    NOT NULL PRIMARY KEY,
    owner       TEXT    NOT NULL,
    token       INTEGER NOT NULL CHECK (token >= 1),
    expires_at  TEXT    NOT NULL,
    acquired_at TEXT    NOT NULL
) STRICT;

-- The broker instance that ran an execution: after a restart an instance cleans up its own
-- `running` executions, and a broker that takes an expired lease over finds the other's.
ALTER TABLE executions ADD COLUMN instance_id TEXT;
CREATE INDEX executions_state_instance ON executions (state, instance_id);
