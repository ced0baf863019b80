-- Each controller's secret, from which it derives every agent's event key (HMAC-SHA256 of the
-- secret and the agent id): kept here so each incarnation of a controller can check the events
-- of agents an earlier one started. Only servers (which hold the database's credentials) read it.
CREATE TABLE controller_secrets (
    controller_id TEXT PRIMARY KEY,
    agent_secret BYTEA NOT NULL CHECK (length(agent_secret) >= 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
