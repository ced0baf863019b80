-- Several controllers on one database: each registers itself and heartbeats; every live
-- execution is owned by one controller under a lease with a fencing epoch.

CREATE TABLE controllers (
    id                  TEXT PRIMARY KEY,
    docker_host         TEXT NOT NULL DEFAULT '',
    engine_version      TEXT NOT NULL DEFAULT '',
    architecture        TEXT NOT NULL DEFAULT '',
    capacity            INTEGER NOT NULL DEFAULT 0,
    events_queue        TEXT NOT NULL DEFAULT '',
    -- Bumped at each start: a controller's incarnation.
    incarnation         BIGINT NOT NULL DEFAULT 1,
    started_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set by a clean shutdown.
    stopped_at          TIMESTAMPTZ,
    -- Set when a surviving controller took over this one's executions.
    lost_at             TIMESTAMPTZ,
    -- The controller's own checks ({"message_queue": "ok", "docker": "..."}) and details.
    checks              JSONB NOT NULL DEFAULT '{}'::jsonb,
    details             JSONB NOT NULL DEFAULT '{}'::jsonb
);

ALTER TABLE executions
    ADD COLUMN controller_id TEXT,
    -- Incremented whenever ownership changes (claim, take-over); a controller's writes carry
    -- the epoch it claimed with, so a write of a former owner changes nothing.
    ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0,
    -- When the container (or warm container) was chosen: the base of the start deadline.
    ADD COLUMN placed_at TIMESTAMPTZ,
    -- Renewed by the agent's heartbeats while the action runs.
    ADD COLUMN lease_expires_at TIMESTAMPTZ;

CREATE INDEX executions_owner_live_idx ON executions (controller_id, id)
    WHERE status IN ('scheduled', 'running');

-- A cancel is a flag plus a notification on `attune_execution_cancel` ("<id>"), which the
-- owning controller acts on, whichever server took the API call.
CREATE FUNCTION attune_notify_execution_cancel() RETURNS trigger AS $$
BEGIN
    IF NEW.cancel_requested AND NOT OLD.cancel_requested THEN
        PERFORM pg_notify('attune_execution_cancel', NEW.id::text);
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER executions_cancel_notify
    AFTER UPDATE OF cancel_requested ON executions
    FOR EACH ROW EXECUTE FUNCTION attune_notify_execution_cancel();

-- Warm pools as the controllers observe them, so every server's API shows every controller's.
CREATE TABLE pool_snapshots (
    controller_id   TEXT PRIMARY KEY,
    pools           JSONB NOT NULL DEFAULT '[]'::jsonb,
    containers      JSONB NOT NULL DEFAULT '[]'::jsonb,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One naming style for failure kinds (the agent's were snake_case, the controller's kebab-case).
UPDATE executions SET failure_kind = replace(failure_kind, '_', '-') WHERE failure_kind LIKE '%\_%';
