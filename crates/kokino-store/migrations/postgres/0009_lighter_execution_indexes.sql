-- Fewer index pages written per execution. Equivalent to
-- migrations/sqlite/0009_lighter_execution_indexes.sql; conventions as in 0001_init.sql.
--
-- Every index of `executions` is written when a run begins and again when it finishes, and each
-- costs WAL and a page to write back. Three of those writes served no query:
--
-- * `executions_state` is the first column of `executions_state_instance`, which answers every
--   query on `state` (all of them ask for `state = 'running'`, some with the instance);
-- * the two indexes on `finished_at` held a NULL entry for every running execution, added when
--   it began and moved when it finished, though every query that reads them asks for
--   `finished_at >= $1`, which no NULL satisfies. As partial indexes of finished executions
--   they are written once, when a run finishes.
DROP INDEX executions_state;
DROP INDEX executions_finished;
DROP INDEX executions_cli_finished;
CREATE INDEX executions_finished ON executions (finished_at, outcome)
    WHERE finished_at IS NOT NULL;
CREATE INDEX executions_cli_finished ON executions (cli_type, finished_at)
    WHERE finished_at IS NOT NULL;
