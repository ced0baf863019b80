-- Packs, actions, executions (with their live log chunks) and the agents that reported in.

CREATE TABLE packs (
    id              BIGSERIAL PRIMARY KEY,
    ref             TEXT NOT NULL UNIQUE,
    label           TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    version         TEXT NOT NULL DEFAULT '',
    -- The normalized, uncompressed tar of the pack's files (what the controller injects).
    archive         BYTEA NOT NULL,
    archive_sha256  TEXT NOT NULL,
    registered_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE actions (
    id                  BIGSERIAL PRIMARY KEY,
    pack_id             BIGINT NOT NULL REFERENCES packs(id) ON DELETE CASCADE,
    ref                 TEXT NOT NULL UNIQUE,
    label               TEXT NOT NULL DEFAULT '',
    description         TEXT NOT NULL DEFAULT '',
    runner_type         TEXT NOT NULL,
    runtime             TEXT NOT NULL,
    entry_point         TEXT NOT NULL,
    entry_point_path    TEXT NOT NULL,
    parameters_schema   JSONB NOT NULL DEFAULT '{}'::jsonb,
    secret_parameters   TEXT[] NOT NULL DEFAULT '{}',
    parameter_delivery  TEXT NOT NULL,
    parameter_format    TEXT NOT NULL,
    timeout_seconds     BIGINT NOT NULL,
    container           JSONB,
    enabled             BOOLEAN NOT NULL DEFAULT true
);

CREATE TABLE executions (
    id                  BIGSERIAL PRIMARY KEY,
    action_ref          TEXT NOT NULL,
    action_id           BIGINT REFERENCES actions(id) ON DELETE SET NULL,
    status              TEXT NOT NULL CHECK (status IN
                          ('requested', 'scheduled', 'running', 'succeeded', 'failed',
                           'timeout', 'canceled', 'abandoned')),
    -- Validated parameters with defaults, secrets included: never returned unmasked by the API.
    parameters          JSONB NOT NULL DEFAULT '{}'::jsonb,
    secret_parameters   TEXT[] NOT NULL DEFAULT '{}',
    image               TEXT,
    container_id        TEXT,
    agent_id            TEXT,
    exit_code           INTEGER,
    signal              INTEGER,
    stdout              TEXT NOT NULL DEFAULT '',
    stderr              TEXT NOT NULL DEFAULT '',
    stdout_truncated    BOOLEAN NOT NULL DEFAULT false,
    stderr_truncated    BOOLEAN NOT NULL DEFAULT false,
    result              JSONB,
    error               TEXT,
    failure_kind        TEXT,
    cancel_requested    BOOLEAN NOT NULL DEFAULT false,
    requested_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    scheduled_at        TIMESTAMPTZ,
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ
);

CREATE INDEX executions_live_idx ON executions (status, id)
    WHERE status IN ('requested', 'scheduled', 'running');
CREATE INDEX executions_action_idx ON executions (action_ref, id DESC);

CREATE TABLE execution_logs (
    execution_id    BIGINT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    stream          TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    data            TEXT NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, seq)
);

CREATE TABLE agents (
    id                  TEXT PRIMARY KEY,
    protocol_version    INTEGER NOT NULL,
    agent_version       TEXT NOT NULL,
    agent_sha256        TEXT NOT NULL DEFAULT '',
    mode                TEXT NOT NULL DEFAULT '',
    image               TEXT,
    runtimes            JSONB NOT NULL DEFAULT '[]'::jsonb,
    registered_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    deregistered_at     TIMESTAMPTZ
);
