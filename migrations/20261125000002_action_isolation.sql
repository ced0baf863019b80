-- Per-action isolation (per-execution or pooled), pool settings, idempotency.
ALTER TABLE actions
    ADD COLUMN isolation TEXT CHECK (isolation IN ('per-execution', 'pooled')),
    ADD COLUMN pool JSONB,
    ADD COLUMN idempotent BOOLEAN NOT NULL DEFAULT false;
