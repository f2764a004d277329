-- Indexes for the SLO and metrics queries: they read finished executions by finish time, and
-- events by time and type. Without them every status call would scan whole tables.
CREATE INDEX executions_finished ON executions (finished_at, outcome);
CREATE INDEX executions_cli_finished ON executions (cli_type, finished_at);
