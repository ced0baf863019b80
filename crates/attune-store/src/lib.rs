//! `attune-store`: Postgres access (packs, actions, executions and their logs, agents), the
//! only crate that depends on sqlx.
//!
//! Every change of an execution's status goes through [`Store::transition`], which applies the
//! one table of legal transitions (`ExecutionStatus::allowed_next`) as a conditional update, so
//! an illegal or repeated transition (a redelivered message, a race) changes nothing.

use attune_protocol::api::{ExecutionStatus, ExecutionView, LogChunkView};
use attune_protocol::{AgentRegistration, OutputStream};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::FromRow;
use std::time::Duration;

pub mod status_feed;
#[cfg(feature = "test-database")]
pub mod testing;

/// Errors from the store that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

/// Handle on the database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

/// A pack row without its archive.
#[derive(Debug, Clone, FromRow)]
pub struct PackRow {
    pub id: i64,
    #[sqlx(rename = "ref")]
    pub pack_ref: String,
    pub label: String,
    pub description: String,
    pub version: String,
    pub archive_sha256: String,
    pub registered_at: DateTime<Utc>,
}

/// An action as stored.
#[derive(Debug, Clone, FromRow)]
pub struct ActionRow {
    pub id: i64,
    pub pack_id: i64,
    pub pack_ref: String,
    /// Digest of the pack's files (warm containers are per pack version).
    pub pack_sha256: String,
    #[sqlx(rename = "ref")]
    pub action_ref: String,
    pub label: String,
    pub description: String,
    pub runner_type: String,
    pub runtime: String,
    pub entry_point: String,
    pub entry_point_path: String,
    pub parameters_schema: Value,
    pub secret_parameters: Vec<String>,
    pub parameter_delivery: String,
    pub parameter_format: String,
    pub timeout_seconds: i64,
    pub container: Option<Value>,
    pub enabled: bool,
    pub isolation: Option<String>,
    pub pool: Option<Value>,
    pub idempotent: bool,
}

/// An execution as stored.
#[derive(Debug, Clone, FromRow)]
pub struct ExecutionRow {
    pub id: i64,
    pub action_ref: String,
    pub action_id: Option<i64>,
    pub status: String,
    pub parameters: Value,
    pub secret_parameters: Vec<String>,
    pub image: Option<String>,
    pub container_id: Option<String>,
    pub agent_id: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub failure_kind: Option<String>,
    pub cancel_requested: bool,
    pub retry_of: Option<i64>,
    pub requested_at: DateTime<Utc>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl ExecutionRow {
    /// The status as the protocol's enum (the column's CHECK constraint keeps it valid).
    pub fn status(&self) -> ExecutionStatus {
        self.status.parse().unwrap_or(ExecutionStatus::Failed)
    }

    /// The parameters with secrets included.
    pub fn parameters_map(&self) -> Map<String, Value> {
        match &self.parameters {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        }
    }

    /// The API view: secret parameters masked.
    pub fn to_view(&self) -> ExecutionView {
        ExecutionView {
            id: self.id,
            action: self.action_ref.clone(),
            status: self.status(),
            parameters: attune_pack::redact_secrets(
                &self.parameters_map(),
                &self.secret_parameters,
            ),
            result: self.result.clone(),
            exit_code: self.exit_code,
            signal: self.signal,
            duration_ms: self.duration_ms.map(|duration| duration.max(0) as u64),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            stdout_truncated: self.stdout_truncated,
            stderr_truncated: self.stderr_truncated,
            error: self.error.clone(),
            failure_kind: self.failure_kind.clone(),
            retry_of: self.retry_of,
            image: self.image.clone(),
            container_id: self.container_id.clone(),
            agent_id: self.agent_id.clone(),
            requested_at: format_time(self.requested_at),
            scheduled_at: self.scheduled_at.map(format_time),
            started_at: self.started_at.map(format_time),
            finished_at: self.finished_at.map(format_time),
        }
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Fields written together with a status change; `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub struct TransitionFields {
    pub agent_id: Option<String>,
    pub container_id: Option<String>,
    pub image: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: Option<i64>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub stdout_truncated: Option<bool>,
    pub stderr_truncated: Option<bool>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub failure_kind: Option<String>,
}

impl TransitionFields {
    /// Only an error reason (and its kind).
    pub fn error(kind: &str, reason: impl Into<String>) -> Self {
        TransitionFields {
            error: Some(reason.into()),
            failure_kind: Some(kind.to_string()),
            ..Default::default()
        }
    }
}

/// Filters of the execution list.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub status: Option<ExecutionStatus>,
    pub action_ref: Option<String>,
    pub limit: i64,
    pub before_id: Option<i64>,
}

/// A pack and its actions, ready to store.
pub struct NewPack<'a> {
    pub pack: &'a attune_pack::Pack,
    pub archive: &'a [u8],
}

const EXECUTION_COLUMNS: &str =
    "id, action_ref, action_id, status, parameters, secret_parameters, \
    image, container_id, agent_id, exit_code, signal, duration_ms, stdout, stderr, stdout_truncated, \
    stderr_truncated, result, error, failure_kind, cancel_requested, retry_of, requested_at, scheduled_at, \
    started_at, finished_at";

const ACTION_COLUMNS: &str = "a.id, a.pack_id, p.ref AS pack_ref, \
    p.archive_sha256 AS pack_sha256, a.ref, a.label, a.description, \
    a.runner_type, a.runtime, a.entry_point, a.entry_point_path, a.parameters_schema, \
    a.secret_parameters, a.parameter_delivery, a.parameter_format, a.timeout_seconds, \
    a.container, a.enabled, a.isolation, a.pool, a.idempotent";

impl Store {
    /// Connects (retrying for a while: the database may still be starting) and migrates.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        let store = Store { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool (tests) and migrates.
    pub async fn from_pool(pool: PgPool) -> Result<Store, StoreError> {
        let store = Store { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations").run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Stores a pack with its actions; replaces an existing pack of the same ref only when
    /// `replace` is set (its actions are replaced; past executions keep their action_ref).
    pub async fn register_pack(
        &self,
        new_pack: NewPack<'_>,
        replace: bool,
    ) -> Result<PackRow, StoreError> {
        let pack = new_pack.pack;
        let mut transaction = self.pool.begin().await?;
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT id FROM packs WHERE ref = $1 FOR UPDATE")
                .bind(&pack.pack_ref)
                .fetch_optional(&mut *transaction)
                .await?;
        if existing.is_some() && !replace {
            return Err(StoreError::Conflict(format!(
                "pack {} is already registered; register with --force (?force=true) to replace it",
                pack.pack_ref
            )));
        }
        let row: PackRow = sqlx::query_as(
            "INSERT INTO packs (ref, label, description, version, archive, archive_sha256)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (ref) DO UPDATE SET label = EXCLUDED.label,
                 description = EXCLUDED.description, version = EXCLUDED.version,
                 archive = EXCLUDED.archive, archive_sha256 = EXCLUDED.archive_sha256,
                 updated_at = now()
             RETURNING id, ref, label, description, version, archive_sha256, registered_at",
        )
        .bind(&pack.pack_ref)
        .bind(&pack.label)
        .bind(&pack.description)
        .bind(&pack.version)
        .bind(new_pack.archive)
        .bind(&pack.sha256)
        .fetch_one(&mut *transaction)
        .await?;
        sqlx::query("DELETE FROM actions WHERE pack_id = $1")
            .bind(row.id)
            .execute(&mut *transaction)
            .await?;
        for action in &pack.actions {
            let container = action
                .container
                .as_ref()
                .map(|spec| serde_json::to_value(spec).unwrap_or(Value::Null));
            let taken: Option<String> = sqlx::query_scalar(
                "SELECT p.ref FROM actions a JOIN packs p ON p.id = a.pack_id WHERE a.ref = $1",
            )
            .bind(&action.action_ref)
            .fetch_optional(&mut *transaction)
            .await?;
            if let Some(owner) = taken {
                return Err(StoreError::Conflict(format!(
                    "action {} already belongs to pack {owner}",
                    action.action_ref
                )));
            }
            sqlx::query(
                "INSERT INTO actions (pack_id, ref, label, description, runner_type, runtime,
                     entry_point, entry_point_path, parameters_schema, secret_parameters,
                     parameter_delivery, parameter_format, timeout_seconds, container, enabled,
                     isolation, pool, idempotent)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                     $16, $17, $18)",
            )
            .bind(row.id)
            .bind(&action.action_ref)
            .bind(&action.label)
            .bind(&action.description)
            .bind(&action.runner_type)
            .bind(action.runtime.as_str())
            .bind(&action.entry_point)
            .bind(&action.entry_point_path)
            .bind(&action.parameters_schema)
            .bind(&action.secret_parameters)
            .bind(enum_name(&action.parameter_delivery))
            .bind(enum_name(&action.parameter_format))
            .bind(action.timeout_seconds as i64)
            .bind(container)
            .bind(action.enabled)
            .bind(action.isolation.as_ref().map(enum_name))
            .bind(
                action
                    .pool
                    .as_ref()
                    .map(|pool| serde_json::to_value(pool).unwrap_or(Value::Null)),
            )
            .bind(action.idempotent)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(row)
    }

    pub async fn list_packs(&self) -> Result<Vec<PackRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, ref, label, description, version, archive_sha256, registered_at
             FROM packs ORDER BY ref",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The stored archive of a pack.
    pub async fn pack_archive(&self, pack_id: i64) -> Result<Vec<u8>, StoreError> {
        sqlx::query_scalar("SELECT archive FROM packs WHERE id = $1")
            .bind(pack_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("pack {pack_id}")))
    }

    pub async fn list_actions(&self, pack_ref: Option<&str>) -> Result<Vec<ActionRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions a JOIN packs p ON p.id = a.pack_id
             WHERE $1::text IS NULL OR p.ref = $1 ORDER BY a.ref"
        ))
        .bind(pack_ref)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn get_action(&self, action_ref: &str) -> Result<ActionRow, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions a JOIN packs p ON p.id = a.pack_id WHERE a.ref = $1"
        ))
        .bind(action_ref)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("action {action_ref}")))
    }

    pub async fn get_action_by_id(&self, action_id: i64) -> Result<ActionRow, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions a JOIN packs p ON p.id = a.pack_id WHERE a.id = $1"
        ))
        .bind(action_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("action {action_id}")))
    }

    /// Records a new execution in `requested`.
    pub async fn create_execution(
        &self,
        action: &ActionRow,
        parameters: &Map<String, Value>,
    ) -> Result<ExecutionRow, StoreError> {
        Ok(sqlx::query_as(&format!(
            "INSERT INTO executions (action_ref, action_id, status, parameters, secret_parameters)
             VALUES ($1, $2, 'requested', $3, $4) RETURNING {EXECUTION_COLUMNS}"
        ))
        .bind(&action.action_ref)
        .bind(action.id)
        .bind(Value::Object(parameters.clone()))
        .bind(&action.secret_parameters)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Requeues an execution once: a new `requested` execution of the same action and
    /// parameters that points back at it.
    pub async fn create_retry(&self, original: &ExecutionRow) -> Result<ExecutionRow, StoreError> {
        Ok(sqlx::query_as(&format!(
            "INSERT INTO executions (action_ref, action_id, status, parameters, secret_parameters, retry_of)
             VALUES ($1, $2, 'requested', $3, $4, $5) RETURNING {EXECUTION_COLUMNS}"
        ))
        .bind(&original.action_ref)
        .bind(original.action_id)
        .bind(&original.parameters)
        .bind(&original.secret_parameters)
        .bind(original.id)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn get_execution(&self, execution_id: i64) -> Result<ExecutionRow, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1"
        ))
        .bind(execution_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("execution {execution_id}")))
    }

    /// Newest first.
    pub async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Vec<ExecutionRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::text IS NULL OR action_ref = $2)
               AND ($3::bigint IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        ))
        .bind(filter.status.map(|status| status.as_str()))
        .bind(filter.action_ref.as_deref())
        .bind(filter.before_id)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves an execution to `next` if that is legal from its current status, writing the
    /// step's timestamp and the given fields. Returns the updated row, or `None` when the
    /// execution was not in a status from which `next` may be reached.
    pub async fn transition(
        &self,
        execution_id: i64,
        next: ExecutionStatus,
        fields: TransitionFields,
    ) -> Result<Option<ExecutionRow>, StoreError> {
        let previous: Vec<&str> = ExecutionStatus::allowed_previous(next)
            .into_iter()
            .map(ExecutionStatus::as_str)
            .collect();
        let timestamp_column = match next {
            ExecutionStatus::Requested => "requested_at",
            ExecutionStatus::Scheduled => "scheduled_at",
            ExecutionStatus::Running => "started_at",
            _ => "finished_at",
        };
        let row = sqlx::query_as(&format!(
            "UPDATE executions SET status = $2, {timestamp_column} = now(),
                 agent_id = COALESCE($4, agent_id),
                 container_id = COALESCE($5, container_id),
                 image = COALESCE($6, image),
                 exit_code = COALESCE($7, exit_code),
                 signal = COALESCE($8, signal),
                 duration_ms = COALESCE($16, duration_ms),
                 stdout = COALESCE($9, stdout),
                 stderr = COALESCE($10, stderr),
                 stdout_truncated = COALESCE($11, stdout_truncated),
                 stderr_truncated = COALESCE($12, stderr_truncated),
                 result = COALESCE($13, result),
                 error = COALESCE($14, error),
                 failure_kind = COALESCE($15, failure_kind)
             WHERE id = $1 AND status = ANY($3)
             RETURNING {EXECUTION_COLUMNS}"
        ))
        .bind(execution_id)
        .bind(next.as_str())
        .bind(&previous)
        .bind(fields.agent_id)
        .bind(fields.container_id)
        .bind(fields.image)
        .bind(fields.exit_code)
        .bind(fields.signal)
        .bind(fields.stdout)
        .bind(fields.stderr)
        .bind(fields.stdout_truncated)
        .bind(fields.stderr_truncated)
        .bind(fields.result)
        .bind(fields.error)
        .bind(fields.failure_kind)
        .bind(fields.duration_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Claims up to `limit` requested executions, oldest first, moving them to `scheduled`.
    /// Safe with several servers: rows locked by another claimer are skipped.
    pub async fn claim_requested(&self, limit: i64) -> Result<Vec<ExecutionRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE executions SET status = 'scheduled', scheduled_at = now()
             WHERE id IN (SELECT id FROM executions WHERE status = 'requested'
                          ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $1)
             RETURNING {EXECUTION_COLUMNS}"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces the failure kind and reason of an execution that already ended `failed` (e.g.
    /// the agent reported a killed process and the engine then said it was an OOM kill).
    /// Returns whether a row changed.
    pub async fn reclassify_failure(
        &self,
        execution_id: i64,
        failure_kind: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE executions SET failure_kind = $2, error = $3 WHERE id = $1 AND status = 'failed'",
        )
        .bind(execution_id)
        .bind(failure_kind)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() > 0)
    }

    /// Records the container and agent chosen for an execution (before the container starts).
    pub async fn set_placement(
        &self,
        execution_id: i64,
        image: &str,
        container_id: &str,
        agent_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE executions SET image = $2, container_id = $3, agent_id = $4 WHERE id = $1",
        )
        .bind(execution_id)
        .bind(image)
        .bind(container_id)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks that a cancel was asked for; returns the row as it is now.
    pub async fn request_cancel(&self, execution_id: i64) -> Result<ExecutionRow, StoreError> {
        sqlx::query_as(&format!(
            "UPDATE executions SET cancel_requested = true WHERE id = $1
             RETURNING {EXECUTION_COLUMNS}"
        ))
        .bind(execution_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("execution {execution_id}")))
    }

    /// Executions in `scheduled` or `running` (for recovery after a restart).
    pub async fn live_executions(&self) -> Result<Vec<ExecutionRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions
             WHERE status IN ('scheduled', 'running') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Stores a live log chunk; a repeated chunk (redelivery) is ignored.
    pub async fn append_log(
        &self,
        execution_id: i64,
        seq: u64,
        stream: OutputStream,
        data: &str,
    ) -> Result<(), StoreError> {
        let stream = match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        };
        sqlx::query(
            "INSERT INTO execution_logs (execution_id, seq, stream, data) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(execution_id)
        .bind(seq as i64)
        .bind(stream)
        .bind(data)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Log chunks with `seq` above `after_seq`, in order.
    pub async fn logs_after(
        &self,
        execution_id: i64,
        after_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<LogChunkView>, StoreError> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, stream, data FROM execution_logs
             WHERE execution_id = $1 AND ($2::bigint IS NULL OR seq > $2)
             ORDER BY seq LIMIT $3",
        )
        .bind(execution_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, stream, data)| LogChunkView {
                seq: seq as u64,
                stream: if stream == "stderr" {
                    OutputStream::Stderr
                } else {
                    OutputStream::Stdout
                },
                data,
            })
            .collect())
    }

    /// Records (or refreshes) an agent's registration.
    pub async fn record_agent(&self, registration: &AgentRegistration) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agents (id, protocol_version, agent_version, agent_sha256, mode, image, runtimes)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET protocol_version = EXCLUDED.protocol_version,
                 agent_version = EXCLUDED.agent_version, agent_sha256 = EXCLUDED.agent_sha256,
                 mode = EXCLUDED.mode, image = EXCLUDED.image, runtimes = EXCLUDED.runtimes,
                 last_seen_at = now(), deregistered_at = NULL",
        )
        .bind(&registration.agent_id)
        .bind(registration.protocol_version as i32)
        .bind(&registration.agent_version)
        .bind(&registration.agent_sha256)
        .bind(&registration.mode)
        .bind(&registration.image)
        .bind(serde_json::to_value(&registration.runtimes).unwrap_or(Value::Null))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Notes that an agent is alive (heartbeat) or gone (`deregistered`).
    pub async fn touch_agent(&self, agent_id: &str, deregistered: bool) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET last_seen_at = now(),
                 deregistered_at = CASE WHEN $2 THEN now() ELSE deregistered_at END
             WHERE id = $1",
        )
        .bind(agent_id)
        .bind(deregistered)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The serde name of a unit enum variant (`ParameterDelivery::Env` → `env`).
pub fn enum_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

/// Parses a serde name back (`env` → `ParameterDelivery::Env`).
pub fn enum_from_name<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(Value::String(name.to_string())).ok()
}
