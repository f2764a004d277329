-- Circuit breaker states and fallback overrides, so that both survive a restart; equivalent to
-- migrations/sqlite/0002_breakers_fallback.sql. Conventions as in 0001_init.sql.

-- One row per breaker. The store keeps the breaker's snapshot as opaque JSON: the state machine
-- and its fields belong to kokino-core, and a new field there needs no migration here. JSONB
-- rejects malformed JSON on write, which SQLite needs a json_valid() check for.
CREATE TABLE circuit_states (
    scope      TEXT COLLATE "C" NOT NULL CHECK (scope IN ('agent', 'cli')),
    key        TEXT COLLATE "C" NOT NULL,
    snapshot   JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, key)
);

-- One row per override: a disabled CLI type ('cli', its wire name) or an agent forced to tmux
-- ('agent', its id). An agent's row is plain text rather than a foreign key, like conversations:
-- the override is the operator's statement and outlives a re-registration.
CREATE TABLE fallback_overrides (
    kind   TEXT COLLATE "C" NOT NULL CHECK (kind IN ('cli', 'agent')),
    key    TEXT COLLATE "C" NOT NULL,
    reason TEXT        NOT NULL,
    since  TIMESTAMPTZ NOT NULL,
    auto   BOOLEAN     NOT NULL,
    PRIMARY KEY (kind, key)
);
