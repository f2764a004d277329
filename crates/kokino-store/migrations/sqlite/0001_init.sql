-- Kokino's initial SQLite schema.
--
-- Conventions (see src/sqlite.rs for the reasons):
-- * Timestamps are TEXT in RFC 3339, UTC, millisecond precision, always the same width
--   ('2025-01-31T12:34:56.789Z'), so that text order is time order and indexes on them work.
-- * JSON values (env, extra args, metadata) are TEXT holding serialised JSON.
-- * Booleans are INTEGER 0/1.
-- * Tables are STRICT so that a value of the wrong type is rejected on write instead of being
--   silently stored and failing later on read.
-- Later migrations add shadow_results, fallback_overrides, circuit_states and cli_versions.

CREATE TABLE agents (
    agent_id       TEXT    NOT NULL PRIMARY KEY,
    type           TEXT    NOT NULL,
    comm_mode      TEXT    NOT NULL,
    cwd            TEXT,
    model          TEXT,
    role           TEXT,
    system_prompt  TEXT,
    timeout_ms     INTEGER,
    max_memory_mb  INTEGER,
    env            TEXT    NOT NULL DEFAULT '{}',
    binary         TEXT,
    extra_args     TEXT    NOT NULL DEFAULT '[]',
    metadata       TEXT    NOT NULL DEFAULT '{}',
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL
) STRICT;

-- A conversation keeps its agent id as plain text rather than a foreign key: deleting an agent
-- without purge leaves its history readable.
CREATE TABLE conversations (
    conversation_id TEXT NOT NULL PRIMARY KEY,
    agent_id        TEXT NOT NULL,
    cli_type        TEXT NOT NULL,
    session_id      TEXT,
    status          TEXT NOT NULL CHECK (status IN ('active', 'ended')),
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
) STRICT;

CREATE INDEX conversations_agent_created ON conversations (agent_id, created_at);

-- At most one session per agent. It disappears with its agent and with its conversation.
CREATE TABLE sessions (
    agent_id            TEXT    NOT NULL PRIMARY KEY
                                REFERENCES agents (agent_id) ON DELETE CASCADE,
    conversation_id     TEXT    NOT NULL
                                REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    cli_session_id      TEXT,
    cli_session_started INTEGER NOT NULL DEFAULT 0 CHECK (cli_session_started IN (0, 1)),
    created_at          TEXT    NOT NULL,
    last_activity_at    TEXT    NOT NULL
) STRICT;

CREATE INDEX sessions_conversation ON sessions (conversation_id);
CREATE INDEX sessions_last_activity ON sessions (last_activity_at);

CREATE TABLE turns (
    turn_id         TEXT    NOT NULL PRIMARY KEY,
    conversation_id TEXT    NOT NULL
                            REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL CHECK (seq >= 1),
    role            TEXT    NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL DEFAULT 'null',
    created_at      TEXT    NOT NULL,
    UNIQUE (conversation_id, seq)
) STRICT;

-- The turn ids are plain text rather than foreign keys: turns only ever disappear together with
-- their conversation, which removes its executions too.
CREATE TABLE executions (
    execution_id          TEXT    NOT NULL PRIMARY KEY,
    agent_id              TEXT    NOT NULL,
    conversation_id       TEXT    NOT NULL
                                  REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    cli_type              TEXT    NOT NULL,
    mode                  TEXT    NOT NULL,
    state                 TEXT    NOT NULL CHECK (state IN ('running', 'finished')),
    outcome               TEXT,
    pid                   INTEGER,
    pid_start_time        INTEGER,
    cli_session_id        TEXT,
    exit_code             INTEGER,
    error_message         TEXT,
    duration_ms           INTEGER,
    input_tokens          INTEGER,
    output_tokens         INTEGER,
    cache_read_tokens     INTEGER,
    cache_creation_tokens INTEGER,
    cost_usd              REAL,
    num_turns             INTEGER,
    peak_rss_mb           REAL,
    user_turn_id          TEXT,
    result_turn_id        TEXT,
    started_at            TEXT    NOT NULL,
    finished_at           TEXT
) STRICT;

CREATE INDEX executions_state ON executions (state);
CREATE INDEX executions_agent_started ON executions (agent_id, started_at);
CREATE INDEX executions_conversation ON executions (conversation_id);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    type        TEXT    NOT NULL,
    agent_id    TEXT,
    cli_type    TEXT,
    duration_ms INTEGER,
    success     INTEGER CHECK (success IN (0, 1)),
    metadata    TEXT    NOT NULL DEFAULT 'null',
    at          TEXT    NOT NULL
) STRICT;

CREATE INDEX events_type_at ON events (type, at);
CREATE INDEX events_agent_at ON events (agent_id, at);
CREATE INDEX events_at ON events (at);
