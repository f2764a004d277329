-- One row per shadow execution: both legs' outcomes, answers, latencies and errors, and the
-- comparison of the answers.
CREATE TABLE shadow_results (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id           TEXT    NOT NULL,
    execution_id       TEXT    NOT NULL,
    primary_mode       TEXT    NOT NULL CHECK (primary_mode IN ('tmux', 'headless')),
    tmux_success       INTEGER NOT NULL CHECK (tmux_success IN (0, 1)),
    headless_success   INTEGER NOT NULL CHECK (headless_success IN (0, 1)),
    tmux_response      TEXT,
    headless_response  TEXT,
    tmux_error         TEXT,
    headless_error     TEXT,
    tmux_latency_ms    INTEGER NOT NULL,
    headless_latency_ms INTEGER NOT NULL,
    similarity         REAL,
    matched            INTEGER CHECK (matched IN (0, 1)),
    diff               TEXT,
    created_at         TEXT    NOT NULL
) STRICT;

CREATE INDEX shadow_results_created ON shadow_results (created_at);
CREATE INDEX shadow_results_agent ON shadow_results (agent_id, created_at);
