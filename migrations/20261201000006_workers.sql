-- Long-lived workers: agents an operator starts on any image, enrolled through the API with a
-- token of role `worker`; actions without `container:` are routed to them.
CREATE TABLE workers (
    name            TEXT PRIMARY KEY,
    -- The agent id of its current enrollment (its job queue's suffix); new at each one.
    agent_id        TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('online', 'draining', 'offline')),
    runtimes        JSONB NOT NULL,
    labels          JSONB NOT NULL,
    concurrency     INTEGER NOT NULL CHECK (concurrency > 0),
    agent_version   TEXT NOT NULL,
    agent_sha256    TEXT NOT NULL,
    image           TEXT,
    -- The token it enrolled with.
    token_id        BIGINT,
    registered_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The worker an execution was routed to (then controller_id stays NULL: no controller owns
-- it, any server's router supervises it through the worker's heartbeats), and why a requested
-- execution still waits (no capable worker online).
ALTER TABLE executions ADD COLUMN worker_name TEXT;
ALTER TABLE executions ADD COLUMN waiting_reason TEXT;
CREATE INDEX executions_worker_live ON executions (worker_name)
    WHERE worker_name IS NOT NULL AND status IN ('scheduled', 'running');

-- An action's `worker_selector:` (labels a worker must carry), for actions without an image.
ALTER TABLE actions ADD COLUMN worker_selector JSONB;

-- Tokens of role `worker`: a long-lived worker's, which enrolls it and downloads pack files.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('viewer', 'executor', 'editor', 'admin', 'worker'));

-- An action's `runtime_version:` (a semver constraint on the worker's runtime version) and
-- `required_worker_runtimes:` (runtimes a worker must also have).
ALTER TABLE actions ADD COLUMN runtime_version TEXT;
ALTER TABLE actions ADD COLUMN required_worker_runtimes TEXT[] NOT NULL DEFAULT '{}';
