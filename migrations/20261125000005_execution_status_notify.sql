-- Every status change is announced on the `attune_execution_status` channel as "<id>:<status>",
-- so API requests waiting for an execution to end wake at once, whichever server stored it.
CREATE FUNCTION attune_notify_execution_status() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('attune_execution_status', NEW.id::text || ':' || NEW.status);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER executions_status_notify
    AFTER INSERT OR UPDATE OF status ON executions
    FOR EACH ROW EXECUTE FUNCTION attune_notify_execution_status();
