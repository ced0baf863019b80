-- Idempotency keys of POST /api/v1/executions (the IETF httpapi Idempotency-Key draft): the
-- first request with a key claims it (the primary key makes the first writer win), then
-- stores the execution it created and the answer it gave in the same transaction as the
-- execution; a retry with the same key and body gets that answer again.

CREATE TABLE idempotency_keys (
    key                 TEXT PRIMARY KEY,
    -- sha256 (hex) of the request body's canonical JSON.
    fingerprint         TEXT NOT NULL,
    -- A fresh token per claim, so a request whose abandoned claim was taken over cannot
    -- complete it.
    claim               TEXT NOT NULL,
    -- NULL while the first request is still being processed.
    execution_id        BIGINT REFERENCES executions(id) ON DELETE CASCADE,
    response_status     INTEGER,
    -- JSON, not JSONB: a `\u0000` in a parameter stays an escape (jsonb refuses it).
    response_body       JSON,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((execution_id IS NULL) = (response_body IS NULL))
);

-- Expired keys are deleted oldest first.
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
