-- One row per shadow execution: both legs' outcomes, answers, latencies and errors, and the
-- comparison of the answers. Equivalent to migrations/sqlite/0005_shadow_results.sql;
-- conventions as in 0001_init.sql.
CREATE TABLE shadow_results (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id            TEXT COLLATE "C" NOT NULL,
    execution_id        TEXT COLLATE "C" NOT NULL,
    primary_mode        TEXT        NOT NULL CHECK (primary_mode IN ('tmux', 'headless')),
    tmux_success        BOOLEAN     NOT NULL,
    headless_success    BOOLEAN     NOT NULL,
    tmux_response       TEXT,
    headless_response   TEXT,
    tmux_error          TEXT,
    headless_error      TEXT,
    tmux_latency_ms     BIGINT      NOT NULL,
    headless_latency_ms BIGINT      NOT NULL,
    similarity          DOUBLE PRECISION,
    matched             BOOLEAN,
    diff                TEXT,
    created_at          TIMESTAMPTZ NOT NULL
);

CREATE INDEX shadow_results_created ON shadow_results (created_at);
CREATE INDEX shadow_results_agent ON shadow_results (agent_id, created_at);
