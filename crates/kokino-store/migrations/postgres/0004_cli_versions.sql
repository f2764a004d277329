-- Each distinct `--version` answer per CLI type, as the environment doctor saw it, with the
-- agents of that type at the time (a JSON array of agent ids). Equivalent to
-- migrations/sqlite/0004_cli_versions.sql; conventions as in 0001_init.sql.
CREATE TABLE cli_versions (
    cli_type      TEXT COLLATE "C" NOT NULL,
    version       TEXT COLLATE "C" NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_seen_at  TIMESTAMPTZ NOT NULL,
    agents        JSONB       NOT NULL,
    PRIMARY KEY (cli_type, version)
);
