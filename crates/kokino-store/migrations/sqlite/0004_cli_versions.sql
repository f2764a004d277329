-- Each distinct `--version` answer per CLI type, as the environment doctor saw it, with the
-- agents of that type at the time (a JSON array of agent ids).
CREATE TABLE cli_versions (
    cli_type      TEXT NOT NULL,
    version       TEXT NOT NULL,
    first_seen_at TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,
    agents        TEXT NOT NULL CHECK (json_valid(agents)),
    PRIMARY KEY (cli_type, version)
) STRICT;
