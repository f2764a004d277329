-- Kokino's initial PostgreSQL schema, equivalent to migrations/sqlite/0001_init.sql.
--
-- Conventions (see src/postgres.rs for the reasons):
-- * Timestamps are TIMESTAMPTZ. The store truncates every time to the millisecond before writing
--   it, so a value read back equals what SQLite would return for the same write.
-- * JSON values (env, extra args, metadata) are JSONB: the database rejects malformed JSON on
--   write, and a later query may look inside without a migration.
-- * Booleans are BOOLEAN; integers are BIGINT because SQLite's INTEGER is 64 bits wide and the
--   domain types are i64.
-- * Identifiers are TEXT rather than UUID: callers choose turn and execution ids, and looking up
--   an id that is not a UUID must answer "not found", not fail on a cast.
-- * Keys that are ordered or grouped by (agent ids, conversation ids, breaker and fallback keys)
--   use the "C" collation, so that ORDER BY compares bytes exactly like SQLite's BINARY collation,
--   whatever the database's default collation is.
-- The migration numbers follow migrations/sqlite so that a later change (for example the
-- agent_leases table of multi-broker operation) can land under the same number in both
-- directories.

CREATE TABLE agents (
    agent_id       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    type           TEXT        NOT NULL,
    comm_mode      TEXT        NOT NULL,
    cwd            TEXT,
    model          TEXT,
    role           TEXT,
    system_prompt  TEXT,
    timeout_ms     BIGINT,
    max_memory_mb  BIGINT,
    env            JSONB       NOT NULL DEFAULT '{}',
    -- BINARY is a keyword in PostgreSQL, so the column name is quoted wherever it appears.
    "binary"       TEXT,
    extra_args     JSONB       NOT NULL DEFAULT '[]',
    metadata       JSONB       NOT NULL DEFAULT '{}',
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);

-- A conversation keeps its agent id as plain text rather than a foreign key: deleting an agent
-- without purge leaves its history readable.
CREATE TABLE conversations (
    conversation_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    agent_id        TEXT COLLATE "C" NOT NULL,
    cli_type        TEXT        NOT NULL,
    session_id      TEXT,
    status          TEXT        NOT NULL CHECK (status IN ('active', 'ended')),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE INDEX conversations_agent_created ON conversations (agent_id, created_at);

-- At most one session per agent. It disappears with its agent and with its conversation.
CREATE TABLE sessions (
    agent_id            TEXT COLLATE "C" NOT NULL PRIMARY KEY
                             REFERENCES agents (agent_id) ON DELETE CASCADE,
    conversation_id     TEXT COLLATE "C" NOT NULL
                             REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    cli_session_id      TEXT,
    cli_session_started BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at          TIMESTAMPTZ NOT NULL,
    last_activity_at    TIMESTAMPTZ NOT NULL
);

CREATE INDEX sessions_conversation ON sessions (conversation_id);
CREATE INDEX sessions_last_activity ON sessions (last_activity_at);

CREATE TABLE turns (
    turn_id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    conversation_id TEXT COLLATE "C" NOT NULL
                         REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    seq             BIGINT      NOT NULL CHECK (seq >= 1),
    role            TEXT        NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content         TEXT        NOT NULL,
    metadata        JSONB       NOT NULL DEFAULT 'null',
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (conversation_id, seq)
);

-- The turn ids are plain text rather than foreign keys: turns only ever disappear together with
-- their conversation, which removes its executions too.
CREATE TABLE executions (
    execution_id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    agent_id              TEXT COLLATE "C" NOT NULL,
    conversation_id       TEXT COLLATE "C" NOT NULL
                               REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    cli_type              TEXT COLLATE "C" NOT NULL,
    mode                  TEXT        NOT NULL,
    state                 TEXT        NOT NULL CHECK (state IN ('running', 'finished')),
    outcome               TEXT,
    pid                   BIGINT,
    pid_start_time        BIGINT,
    cli_session_id        TEXT,
    exit_code             BIGINT,
    error_message         TEXT,
    duration_ms           BIGINT,
    input_tokens          BIGINT,
    output_tokens         BIGINT,
    cache_read_tokens     BIGINT,
    cache_creation_tokens BIGINT,
    cost_usd              DOUBLE PRECISION,
    num_turns             BIGINT,
    peak_rss_mb           DOUBLE PRECISION,
    user_turn_id          TEXT,
    result_turn_id        TEXT,
    started_at            TIMESTAMPTZ NOT NULL,
    finished_at           TIMESTAMPTZ
);

CREATE INDEX executions_state ON executions (state);
CREATE INDEX executions_agent_started ON executions (agent_id, started_at);
CREATE INDEX executions_conversation ON executions (conversation_id);

-- An identity column never hands out an id twice, like SQLite's AUTOINCREMENT, so event ids keep
-- growing even after retention deleted the newest rows.
CREATE TABLE events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type        TEXT COLLATE "C" NOT NULL,
    agent_id    TEXT COLLATE "C",
    cli_type    TEXT COLLATE "C",
    duration_ms BIGINT,
    success     BOOLEAN,
    metadata    JSONB       NOT NULL DEFAULT 'null',
    at          TIMESTAMPTZ NOT NULL
);

CREATE INDEX events_type_at ON events (type, at);
CREATE INDEX events_agent_at ON events (agent_id, at);
CREATE INDEX events_at ON events (at);
