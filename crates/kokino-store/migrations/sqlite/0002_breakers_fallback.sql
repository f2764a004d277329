-- Circuit breaker states and fallback overrides, so that both survive a restart
-- (behavior.md: "State changes are persisted and survive a restart"; fallback is "persisted").
--
-- Conventions as in 0001_init.sql: fixed-width RFC 3339 UTC timestamps with milliseconds, JSON as
-- TEXT, booleans as INTEGER 0/1, STRICT tables.

-- One row per breaker. The store keeps the breaker's snapshot as opaque JSON: the state machine
-- and its fields belong to kokino-core, and a new field there needs no migration here.
CREATE TABLE circuit_states (
    scope      TEXT NOT NULL CHECK (scope IN ('agent', 'cli')),
    key        TEXT NOT NULL,
    snapshot   TEXT NOT NULL CHECK (json_valid(snapshot)),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;

-- One row per override: a disabled CLI type ('cli', its wire name) or an agent forced to tmux
-- ('agent', its id). An agent's row is plain text rather than a foreign key, like conversations:
-- the override is the operator's statement and outlives a re-registration.
CREATE TABLE fallback_overrides (
    kind   TEXT    NOT NULL CHECK (kind IN ('cli', 'agent')),
    key    TEXT    NOT NULL,
    reason TEXT    NOT NULL,
    since  TEXT    NOT NULL,
    auto   INTEGER NOT NULL CHECK (auto IN (0, 1)),
    PRIMARY KEY (kind, key)
) STRICT;
