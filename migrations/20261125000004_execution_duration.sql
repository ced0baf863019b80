-- How long the action's process ran, as the agent measured it.
ALTER TABLE executions ADD COLUMN duration_ms BIGINT;
