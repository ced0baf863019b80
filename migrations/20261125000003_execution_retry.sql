-- An idempotent execution whose agent or container died is requeued once as a new execution.
ALTER TABLE executions ADD COLUMN retry_of BIGINT REFERENCES executions(id) ON DELETE SET NULL;
