//! `attune-store`: Postgres access (packs, actions, executions and their logs, agents), the
//! only crate that depends on sqlx.
//!
//! Every change of an execution's status goes through [`Store::transition`], which applies the
//! one table of legal transitions (`ExecutionStatus::allowed_next`) as a conditional update, so
//! an illegal or repeated transition (a redelivered message, a race) changes nothing.

use attune_protocol::api::{
    ContainerView, ExecutionStatus, ExecutionView, Isolation, LogChunkView, PoolView,
};
use attune_protocol::output::{bytes_into_text, text_to_bytes};
use attune_protocol::{
    AgentRegistration, FailureKind, OutputStream, ParameterDelivery, ParameterFormat, Runtime,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::FromRow;
use std::time::Duration;

pub mod runtimes;
pub mod secrets;
pub mod status_feed;
#[cfg(feature = "test-database")]
pub mod testing;
pub mod tokens;
pub mod workers;

/// Errors from the store that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value does not decode (a corrupt row).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the database could not be reached or stopped answering (connection refused or
    /// lost, pool exhausted, server shutting down): trying the same statement later may work.
    /// Errors the database returned about the statement or its data are not.
    pub fn is_unreachable(&self) -> bool {
        let StoreError::Database(error) = self else {
            return false;
        };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(database) => database.code().is_some_and(|code| {
                // 08: connection exception; 57P01-57P03: shutdown, crash, cannot connect now;
                // 53300: too many connections.
                code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
            }),
            _ => false,
        }
    }
}

/// Handle on the database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// Seals secret parameters as executions are written; `None` writes them as given.
    keyring: Option<std::sync::Arc<secrets::Keyring>>,
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
    #[sqlx(try_from = "StoredName")]
    pub runtime: Runtime,
    pub entry_point: String,
    pub entry_point_path: String,
    pub parameters_schema: Value,
    pub secret_parameters: Vec<String>,
    #[sqlx(try_from = "StoredName")]
    pub parameter_delivery: ParameterDelivery,
    #[sqlx(try_from = "StoredName")]
    pub parameter_format: ParameterFormat,
    pub timeout_seconds: i64,
    pub container: Option<Value>,
    pub enabled: bool,
    #[sqlx(try_from = "OptionalStoredName")]
    pub isolation: Option<Isolation>,
    pub pool: Option<Value>,
    pub idempotent: bool,
}

/// An execution as stored.
#[derive(Debug, Clone, FromRow)]
pub struct ExecutionRow {
    pub id: i64,
    pub action_ref: String,
    pub action_id: Option<i64>,
    #[sqlx(try_from = "StoredName")]
    pub status: ExecutionStatus,
    pub parameters: Value,
    pub secret_parameters: Vec<String>,
    pub image: Option<String>,
    pub container_id: Option<String>,
    pub agent_id: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: Option<i64>,
    /// The bytes the action wrote, as output text (`attune_protocol::output`).
    #[sqlx(try_from = "StoredOutput")]
    pub stdout: String,
    #[sqlx(try_from = "StoredOutput")]
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub result: Option<Value>,
    pub error: Option<String>,
    #[sqlx(try_from = "FailureKindName")]
    pub failure_kind: Option<FailureKind>,
    pub cancel_requested: bool,
    pub retry_of: Option<i64>,
    /// The controller that claimed it (and its containers).
    pub controller_id: Option<String>,
    /// Bumped at each change of owner; the owner's writes carry it (see [`Fence`]).
    pub lease_epoch: i64,
    /// When its container was chosen (the base of the agent start deadline).
    pub placed_at: Option<DateTime<Utc>>,
    /// Until when its agent's last heartbeat keeps it alive.
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub requested_at: DateTime<Utc>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The long-lived worker it was routed to (no controller owns it then).
    pub worker_name: Option<String>,
    /// Why it still waits for a worker.
    pub waiting_reason: Option<String>,
}

impl ExecutionRow {
    /// The status as the protocol's enum (the column's CHECK constraint keeps it valid).
    pub fn status(&self) -> ExecutionStatus {
        self.status
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
            failure_kind: self.failure_kind,
            retry_of: self.retry_of,
            image: self.image.clone(),
            container_id: self.container_id.clone(),
            agent_id: self.agent_id.clone(),
            controller_id: self.controller_id.clone(),
            worker: self.worker_name.clone(),
            waiting_reason: self
                .waiting_reason
                .clone()
                .filter(|_| self.status() == ExecutionStatus::Requested),
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
    /// Output text (`attune_protocol::output`); the bytes it stands for are stored.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub stdout_truncated: Option<bool>,
    pub stderr_truncated: Option<bool>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub failure_kind: Option<FailureKind>,
    /// When set, the write applies only while this controller still owns the execution
    /// under this epoch.
    pub fence: Option<Fence>,
    /// Renews the agent's lease: it expires this long after the write.
    pub lease: Option<Duration>,
    /// The write comes from this agent: it applies only to an execution placed on it (or on
    /// no agent yet), so an agent cannot speak for another agent's execution.
    pub from_agent: Option<String>,
}

/// A controller's claim on an execution: its id and the epoch it claimed (or adopted) with.
/// A write carrying a stale fence changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub controller_id: String,
    pub epoch: i64,
}

impl Fence {
    /// The fence of an execution row as its owner holds it (`None` when it has no owner).
    pub fn of(row: &ExecutionRow) -> Option<Fence> {
        Some(Fence {
            controller_id: row.controller_id.clone()?,
            epoch: row.lease_epoch,
        })
    }
}

/// A controller as it registers itself.
#[derive(Debug, Clone, Default)]
pub struct ControllerRegistration {
    pub id: String,
    pub docker_host: String,
    pub engine_version: String,
    pub architecture: String,
    pub capacity: i32,
    pub events_queue: String,
}

/// A controller as stored.
#[derive(Debug, Clone, FromRow)]
pub struct ControllerRow {
    pub id: String,
    pub docker_host: String,
    pub engine_version: String,
    pub architecture: String,
    pub capacity: i32,
    pub events_queue: String,
    pub incarnation: i64,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub lost_at: Option<DateTime<Utc>>,
    pub checks: Value,
    pub details: Value,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_seconds: f64,
}

/// What a take-over did to one execution of a lost controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenOver {
    pub execution_id: i64,
    pub lost_controller_id: String,
    /// The retry queued for an idempotent action.
    pub retry_id: Option<i64>,
}

/// A stored enum name (a status, runtime, delivery or format), decoded into its enum as the
/// row is read; a name that decodes to nothing is an error, never a silent default.
#[derive(Debug, sqlx::Type)]
#[sqlx(transparent)]
pub struct StoredName(String);

/// An optional stored enum name (an action's isolation).
#[derive(Debug, sqlx::Type)]
#[sqlx(transparent)]
pub struct OptionalStoredName(Option<String>);

/// A stored value that names no variant of its enum.
#[derive(Debug, thiserror::Error)]
#[error("stored {what} {value:?} is not a known value")]
pub struct UnknownStoredName {
    what: &'static str,
    value: String,
}

fn decode_name<T: serde::de::DeserializeOwned>(
    what: &'static str,
    value: String,
) -> Result<T, UnknownStoredName> {
    enum_from_name(&value).ok_or(UnknownStoredName { what, value })
}

impl TryFrom<StoredName> for ExecutionStatus {
    type Error = UnknownStoredName;
    fn try_from(name: StoredName) -> Result<Self, Self::Error> {
        decode_name("status", name.0)
    }
}

impl TryFrom<StoredName> for Runtime {
    type Error = UnknownStoredName;
    fn try_from(name: StoredName) -> Result<Self, Self::Error> {
        decode_name("runtime", name.0)
    }
}

impl TryFrom<StoredName> for ParameterDelivery {
    type Error = UnknownStoredName;
    fn try_from(name: StoredName) -> Result<Self, Self::Error> {
        decode_name("parameter_delivery", name.0)
    }
}

impl TryFrom<StoredName> for ParameterFormat {
    type Error = UnknownStoredName;
    fn try_from(name: StoredName) -> Result<Self, Self::Error> {
        decode_name("parameter_format", name.0)
    }
}

impl TryFrom<OptionalStoredName> for Option<Isolation> {
    type Error = UnknownStoredName;
    fn try_from(name: OptionalStoredName) -> Result<Self, Self::Error> {
        name.0
            .map(|value| decode_name("isolation", value))
            .transpose()
    }
}

/// Stored output bytes (`bytea`), read as output text (`attune_protocol::output`).
#[derive(Debug, sqlx::Type)]
#[sqlx(transparent)]
pub struct StoredOutput(Vec<u8>);

impl From<StoredOutput> for String {
    fn from(output: StoredOutput) -> Self {
        bytes_into_text(output.0)
    }
}

/// A message for a `text` column: Postgres refuses NUL in text, so each becomes `\0`.
fn storable_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\\0")
    } else {
        text
    }
}

/// The stored text of a failure kind, decoded into [`FailureKind`] as the row is read.
#[derive(Debug, sqlx::Type)]
#[sqlx(transparent)]
pub struct FailureKindName(Option<String>);

impl From<FailureKindName> for Option<FailureKind> {
    fn from(name: FailureKindName) -> Self {
        name.0.as_deref().map(FailureKind::from_name)
    }
}

impl TransitionFields {
    /// Only an error reason (and its kind).
    pub fn error(kind: FailureKind, reason: impl Into<String>) -> Self {
        TransitionFields {
            error: Some(reason.into()),
            failure_kind: Some(kind),
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
    stderr_truncated, result, error, failure_kind, cancel_requested, retry_of, controller_id, \
    lease_epoch, placed_at, lease_expires_at, requested_at, scheduled_at, started_at, finished_at, \
    worker_name, waiting_reason";

/// SQL: the action `a` names an image (its `container:`), so a controller runs it.
const HAS_IMAGE: &str = "(a.container IS NOT NULL AND a.container <> 'null'::jsonb)";

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
        let store = Store {
            pool,
            keyring: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool (tests) and migrates.
    pub async fn from_pool(pool: PgPool) -> Result<Store, StoreError> {
        let store = Store {
            pool,
            keyring: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations").run(&self.pool).await?;
        Ok(())
    }

    /// Seals secret parameters with `keyring` as executions are written, and opens them for
    /// [`Store::open_parameters`].
    pub fn with_keyring(mut self, keyring: std::sync::Arc<secrets::Keyring>) -> Store {
        self.keyring = Some(keyring);
        self
    }

    /// An execution's parameters with its secrets opened (for the agent's job only).
    pub fn open_parameters(
        &self,
        execution: &ExecutionRow,
    ) -> Result<Map<String, Value>, secrets::KeyringError> {
        let parameters = execution.parameters_map();
        match &self.keyring {
            Some(keyring) => keyring.open_parameters(&parameters, &execution.secret_parameters),
            None => Ok(parameters),
        }
    }

    /// `parameters` as stored: secrets sealed when there is a keyring.
    fn sealed(&self, action: &ActionRow, parameters: &Map<String, Value>) -> Value {
        Value::Object(match &self.keyring {
            Some(keyring) => keyring.seal_parameters(parameters, &action.secret_parameters),
            None => parameters.clone(),
        })
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
                     isolation, pool, idempotent, worker_selector, runtime_version,
                     required_worker_runtimes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                     $16, $17, $18, $19, $20, $21)",
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
            .bind(
                Some(&action.worker_selector)
                    .filter(|selector| !selector.is_empty())
                    .map(|selector| serde_json::to_value(selector).unwrap_or(Value::Null)),
            )
            .bind(&action.runtime_version)
            .bind(&action.required_worker_runtimes)
            .execute(&mut *transaction)
            .await?;
        }
        runtimes::replace_pack_runtimes(&mut transaction, pack).await?;
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
        .bind(self.sealed(action, parameters))
        .bind(&action.secret_parameters)
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
    /// execution was not in a status from which `next` may be reached (or the write's fence is
    /// stale). Every status write goes through here.
    pub async fn transition(
        &self,
        execution_id: i64,
        next: ExecutionStatus,
        fields: TransitionFields,
    ) -> Result<Option<ExecutionRow>, StoreError> {
        transition_with(&self.pool, execution_id, next, fields).await
    }

    /// Ends an execution as failed (or another terminal status) and, when `requeue` asks
    /// and the action is idempotent, queues it once more — in one transaction, and only if
    /// the terminal transition itself happened (a report that landed first wins and nothing
    /// is requeued). Returns the stored row and the retry's id.
    pub async fn finish(
        &self,
        execution_id: i64,
        next: ExecutionStatus,
        fields: TransitionFields,
        requeue: bool,
    ) -> Result<Option<(ExecutionRow, Option<i64>)>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let outcome = finish_in(&mut transaction, execution_id, next, fields, requeue).await?;
        transaction.commit().await?;
        Ok(outcome)
    }

    /// Claims up to `limit` requested executions for `controller_id`, oldest first, moving
    /// them to `scheduled` and bumping their epoch. Safe with several controllers: rows locked
    /// by another claimer are skipped.
    /// Claims up to `limit` requested executions for `controller_id`: those whose action names
    /// an image (or is gone, to fail it), and — when `imageless` (the controller has a
    /// `docker.default_image`) — those without an image that no worker could take
    /// (`waiting_reason` set by the router). The others wait for a worker.
    pub async fn claim_requested(
        &self,
        controller_id: &str,
        limit: i64,
        imageless: bool,
    ) -> Result<Vec<ExecutionRow>, StoreError> {
        let previous: Vec<&str> = ExecutionStatus::allowed_previous(ExecutionStatus::Scheduled)
            .into_iter()
            .map(ExecutionStatus::as_str)
            .collect();
        // The rows are picked in a CTE: a `WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP
        // LOCKED)` may be re-evaluated by the planner and claim more than `limit` rows.
        Ok(sqlx::query_as(&format!(
            "WITH picked AS (
                 SELECT e.id FROM executions e LEFT JOIN actions a ON a.id = e.action_id
                 WHERE e.status = 'requested'
                   AND (a.id IS NULL OR {HAS_IMAGE} OR ($4 AND e.waiting_reason IS NOT NULL))
                 ORDER BY e.id FOR UPDATE OF e SKIP LOCKED LIMIT $1)
             UPDATE executions e SET status = 'scheduled', scheduled_at = now(),
                 controller_id = $2, lease_epoch = e.lease_epoch + 1
             FROM picked WHERE e.id = picked.id AND e.status = ANY($3)
             RETURNING {}",
            EXECUTION_COLUMNS
                .split(", ")
                .map(|column| format!("e.{}", column.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(limit)
        .bind(controller_id)
        .bind(&previous)
        .bind(imageless)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces the failure kind and reason of an execution that already ended `failed` (e.g.
    /// the agent reported a killed process and the engine then said it was an OOM kill).
    /// Returns whether a row changed.
    pub async fn reclassify_failure(
        &self,
        execution_id: i64,
        failure_kind: FailureKind,
        error: &str,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE executions SET failure_kind = $2, error = $3 WHERE id = $1 AND status = 'failed'",
        )
        .bind(execution_id)
        .bind(failure_kind.as_str())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() > 0)
    }

    /// Records the container and agent chosen for an execution (before the container
    /// starts) and when. Returns false when the fence is stale (someone else owns it now).
    pub async fn set_placement(
        &self,
        execution_id: i64,
        fence: &Fence,
        image: &str,
        container_id: &str,
        agent_id: &str,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE executions SET image = $2, container_id = $3, agent_id = $4, placed_at = now()
             WHERE id = $1 AND controller_id = $5 AND lease_epoch = $6",
        )
        .bind(execution_id)
        .bind(image)
        .bind(container_id)
        .bind(agent_id)
        .bind(&fence.controller_id)
        .bind(fence.epoch)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() > 0)
    }

    /// Renews the lease of running executions whose agent sent a heartbeat.
    pub async fn renew_leases(
        &self,
        agent_id: &str,
        execution_ids: &[i64],
        lease: Duration,
    ) -> Result<Vec<i64>, StoreError> {
        if execution_ids.is_empty() {
            return Ok(Vec::new());
        }
        // Only the executions placed on this agent: an agent cannot keep another's alive.
        Ok(sqlx::query_scalar(
            "UPDATE executions SET lease_expires_at = now() + make_interval(secs => $2)
             WHERE id = ANY($1) AND status = 'running' AND agent_id = $3
             RETURNING id",
        )
        .bind(execution_ids)
        .bind(lease.as_secs_f64())
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The database's clock (deadlines are computed from stored timestamps against it).
    pub async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        Ok(sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?)
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

    /// Executions in `scheduled` or `running`, of every controller.
    pub async fn live_executions(&self) -> Result<Vec<ExecutionRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions
             WHERE status IN ('scheduled', 'running') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Executions in `scheduled` or `running` that `controller_id` owns (for recovery after
    /// a restart, and the sweep).
    pub async fn live_executions_of(
        &self,
        controller_id: &str,
    ) -> Result<Vec<ExecutionRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions
             WHERE status IN ('scheduled', 'running') AND controller_id = $1 ORDER BY id"
        ))
        .bind(controller_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Registers a controller at its start (a returning one gets a new incarnation and is no
    /// longer lost or stopped); returns the incarnation.
    pub async fn register_controller(
        &self,
        registration: &ControllerRegistration,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO controllers (id, docker_host, engine_version, architecture, capacity, events_queue)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET docker_host = EXCLUDED.docker_host,
                 engine_version = EXCLUDED.engine_version, architecture = EXCLUDED.architecture,
                 capacity = EXCLUDED.capacity, events_queue = EXCLUDED.events_queue,
                 incarnation = controllers.incarnation + 1, started_at = now(),
                 last_heartbeat_at = now(), stopped_at = NULL, lost_at = NULL
             RETURNING incarnation",
        )
        .bind(&registration.id)
        .bind(&registration.docker_host)
        .bind(&registration.engine_version)
        .bind(&registration.architecture)
        .bind(registration.capacity)
        .bind(&registration.events_queue)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The controller's secret for agents' event keys: `candidate` is stored if it has none
    /// yet (its first start), and the stored one is returned either way.
    pub async fn controller_agent_secret(
        &self,
        controller_id: &str,
        candidate: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        Ok(sqlx::query_scalar(
            "WITH inserted AS (
                 INSERT INTO controller_secrets (controller_id, agent_secret) VALUES ($1, $2)
                 ON CONFLICT (controller_id) DO NOTHING
                 RETURNING agent_secret)
             SELECT agent_secret FROM inserted
             UNION ALL
             SELECT agent_secret FROM controller_secrets WHERE controller_id = $1
             LIMIT 1",
        )
        .bind(controller_id)
        .bind(candidate)
        .fetch_one(&self.pool)
        .await?)
    }

    /// A controller's heartbeat with its current checks and details.
    pub async fn controller_heartbeat(
        &self,
        controller_id: &str,
        checks: &Value,
        details: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE controllers SET last_heartbeat_at = now(), checks = $2, details = $3,
                 lost_at = NULL
             WHERE id = $1",
        )
        .bind(controller_id)
        .bind(checks)
        .bind(details)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a controller stopped (a clean shutdown).
    pub async fn controller_stopped(&self, controller_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE controllers SET stopped_at = now() WHERE id = $1")
            .bind(controller_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every registered controller, by id.
    pub async fn list_controllers(&self) -> Result<Vec<ControllerRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, docker_host, engine_version, architecture, capacity, events_queue,
                 incarnation, started_at, last_heartbeat_at, stopped_at, lost_at, checks, details,
                 EXTRACT(EPOCH FROM now() - last_heartbeat_at)::float8 AS heartbeat_age_seconds
             FROM controllers ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Takes over the live executions of every other controller whose last heartbeat is older
    /// than `grace`: each ends `failed` with kind `controller-lost` (its epoch bumped, so the
    /// lost controller's late writes change nothing), and an idempotent one is requeued once.
    /// The lost controller is marked lost; it reaps its containers when it returns.
    pub async fn take_over_lost_controllers(
        &self,
        survivor_id: &str,
        grace: Duration,
    ) -> Result<Vec<TakenOver>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let lost: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM controllers
             WHERE id <> $1 AND lost_at IS NULL
               AND last_heartbeat_at < now() - make_interval(secs => $2)
             FOR UPDATE SKIP LOCKED",
        )
        .bind(survivor_id)
        .bind(grace.as_secs_f64())
        .fetch_all(&mut *transaction)
        .await?;
        let mut taken = Vec::new();
        for lost_id in lost {
            sqlx::query("UPDATE controllers SET lost_at = now() WHERE id = $1")
                .bind(&lost_id)
                .execute(&mut *transaction)
                .await?;
            let live: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT id, lease_epoch FROM executions
                 WHERE controller_id = $1 AND status IN ('scheduled', 'running')
                 ORDER BY id FOR UPDATE",
            )
            .bind(&lost_id)
            .fetch_all(&mut *transaction)
            .await?;
            for (execution_id, epoch) in live {
                // Bump the epoch first: whatever the lost controller still writes is fenced out.
                sqlx::query("UPDATE executions SET lease_epoch = lease_epoch + 1 WHERE id = $1")
                    .bind(execution_id)
                    .execute(&mut *transaction)
                    .await?;
                let mut fields = TransitionFields::error(
                    FailureKind::ControllerLost,
                    format!(
                        "controller {lost_id} stopped sending heartbeats for over {}s while it ran this execution; taken over by controller {survivor_id}",
                        grace.as_secs()
                    ),
                );
                fields.fence = Some(Fence {
                    controller_id: lost_id.clone(),
                    epoch: epoch + 1,
                });
                if let Some((_, retry_id)) = finish_in(
                    &mut transaction,
                    execution_id,
                    ExecutionStatus::Failed,
                    fields,
                    true,
                )
                .await?
                {
                    taken.push(TakenOver {
                        execution_id,
                        lost_controller_id: lost_id.clone(),
                        retry_id,
                    });
                }
            }
        }
        transaction.commit().await?;
        Ok(taken)
    }

    /// Replaces a controller's snapshot of its warm pools and their containers.
    pub async fn put_pool_snapshot(
        &self,
        controller_id: &str,
        pools: &[PoolView],
        containers: &[ContainerView],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pool_snapshots (controller_id, pools, containers) VALUES ($1, $2, $3)
             ON CONFLICT (controller_id) DO UPDATE SET pools = EXCLUDED.pools,
                 containers = EXCLUDED.containers, updated_at = now()",
        )
        .bind(controller_id)
        .bind(serde_json::to_value(pools).unwrap_or(Value::Null))
        .bind(serde_json::to_value(containers).unwrap_or(Value::Null))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The warm pools and their containers of every controller that is not lost or stopped.
    pub async fn pool_snapshots(&self) -> Result<(Vec<PoolView>, Vec<ContainerView>), StoreError> {
        let rows: Vec<(Value, Value)> = sqlx::query_as(
            "SELECT s.pools, s.containers FROM pool_snapshots s
             JOIN controllers c ON c.id = s.controller_id
             WHERE c.lost_at IS NULL AND c.stopped_at IS NULL ORDER BY s.controller_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut pools = Vec::new();
        let mut containers = Vec::new();
        for (pool_values, container_values) in rows {
            pools.extend(decode_list::<PoolView>(pool_values, "pool")?);
            containers.extend(decode_list::<ContainerView>(container_values, "container")?);
        }
        Ok((pools, containers))
    }

    /// Stores a live log chunk (output text; the bytes it stands for are stored); a repeated
    /// chunk (redelivery) is ignored.
    /// Stores a log chunk from `agent_id`, only for an execution placed on that agent; returns
    /// whether the execution is placed there (a redelivered chunk is kept once).
    pub async fn append_log(
        &self,
        execution_id: i64,
        agent_id: &str,
        seq: u64,
        stream: OutputStream,
        data: &str,
    ) -> Result<bool, StoreError> {
        let stream = match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        };
        let placed: Option<bool> = sqlx::query_scalar(
            "WITH placed AS (SELECT id FROM executions WHERE id = $1 AND agent_id = $5),
                  stored AS (
                      INSERT INTO execution_logs (execution_id, seq, stream, data)
                      SELECT $1, $2, $3, $4 FROM placed
                      ON CONFLICT DO NOTHING)
             SELECT true FROM placed",
        )
        .bind(execution_id)
        .bind(seq as i64)
        .bind(stream)
        .bind(text_to_bytes(data))
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(placed.is_some())
    }

    /// Log chunks with `seq` above `after_seq`, in order.
    pub async fn logs_after(
        &self,
        execution_id: i64,
        after_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<LogChunkView>, StoreError> {
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
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
                data: bytes_into_text(data),
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

    /// The binary digest an agent registered with, if it registered.
    pub async fn agent_sha256(&self, agent_id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT agent_sha256 FROM agents WHERE id = $1")
                .bind(agent_id)
                .fetch_optional(&self.pool)
                .await?,
        )
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

/// Decodes a stored JSON list; a corrupt one is an error, never silently empty.
fn decode_list<T: serde::de::DeserializeOwned>(
    value: Value,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    serde_json::from_value(value)
        .map_err(|error| StoreError::Corrupt(format!("stored {what} snapshot: {error}")))
}

/// [`Store::transition`] on any executor (a transaction included).
async fn transition_with<'e, E>(
    executor: E,
    execution_id: i64,
    next: ExecutionStatus,
    fields: TransitionFields,
) -> Result<Option<ExecutionRow>, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
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
    let (fence_controller, fence_epoch) = match &fields.fence {
        Some(fence) => (Some(fence.controller_id.clone()), Some(fence.epoch)),
        None => (None, None),
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
             result = COALESCE($13::text::json, result),
             error = COALESCE($14, error),
             failure_kind = COALESCE($15, failure_kind),
             lease_expires_at = COALESCE(now() + make_interval(secs => $19), lease_expires_at)
         WHERE id = $1 AND status = ANY($3)
           AND ($17::text IS NULL OR (controller_id = $17 AND lease_epoch = $18))
           AND ($20::text IS NULL OR agent_id IS NULL OR agent_id = $20)
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
    .bind(fields.stdout.as_deref().map(text_to_bytes))
    .bind(fields.stderr.as_deref().map(text_to_bytes))
    .bind(fields.stdout_truncated)
    .bind(fields.stderr_truncated)
    // As JSON text for the `json` column: `\u0000` stays an escape (jsonb would refuse it).
    .bind(fields.result.as_ref().map(Value::to_string))
    .bind(fields.error.map(storable_text))
    .bind(fields.failure_kind.map(FailureKind::as_str))
    .bind(fields.duration_ms)
    .bind(fence_controller)
    .bind(fence_epoch)
    .bind(fields.lease.map(|lease| lease.as_secs_f64()))
    .bind(fields.from_agent)
    .fetch_optional(executor)
    .await?;
    Ok(row)
}

/// [`Store::finish`] inside a transaction.
async fn finish_in(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    execution_id: i64,
    next: ExecutionStatus,
    fields: TransitionFields,
    requeue: bool,
) -> Result<Option<(ExecutionRow, Option<i64>)>, StoreError> {
    let eligible_kind = fields
        .failure_kind
        .is_some_and(FailureKind::requeues_idempotent);
    let Some(row) = transition_with(&mut **transaction, execution_id, next, fields).await? else {
        return Ok(None);
    };
    let ended_unfinished = matches!(next, ExecutionStatus::Failed | ExecutionStatus::Abandoned);
    if !(requeue && eligible_kind && ended_unfinished && row.retry_of.is_none()) {
        return Ok(Some((row, None)));
    }
    let idempotent: bool = match row.action_id {
        Some(action_id) => sqlx::query_scalar("SELECT idempotent FROM actions WHERE id = $1")
            .bind(action_id)
            .fetch_optional(&mut **transaction)
            .await?
            .unwrap_or(false),
        None => false,
    };
    if !idempotent {
        return Ok(Some((row, None)));
    }
    let retry_id: i64 = sqlx::query_scalar(
        "INSERT INTO executions (action_ref, action_id, status, parameters, secret_parameters, retry_of)
         VALUES ($1, $2, 'requested', $3, $4, $5) RETURNING id",
    )
    .bind(&row.action_ref)
    .bind(row.action_id)
    .bind(&row.parameters)
    .bind(&row.secret_parameters)
    .bind(row.id)
    .fetch_one(&mut **transaction)
    .await?;
    let row: ExecutionRow = sqlx::query_as(&format!(
        "UPDATE executions SET error = COALESCE(error, '') || $2 WHERE id = $1
         RETURNING {EXECUTION_COLUMNS}"
    ))
    .bind(row.id)
    .bind(format!("; requeued once as execution {retry_id}"))
    .fetch_one(&mut **transaction)
    .await?;
    Ok(Some((row, Some(retry_id))))
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

// Idempotency keys of execution requests (POST /api/v1/executions with `Idempotency-Key`).

/// A request's idempotency key and what identifies its body.
#[derive(Debug, Clone)]
pub struct IdempotencyRequest<'a> {
    pub key: &'a str,
    /// sha256 (hex) of the request body's canonical JSON.
    pub fingerprint: &'a str,
    /// A key older than this is expired: it is free for a new request (and deleted).
    pub ttl: Duration,
    /// A claim whose request never completed (its process died) is free after this.
    pub abandoned_after: Duration,
}

/// The claim of a request that holds a key, to complete with
/// [`Store::create_execution_for_key`] or give back with [`Store::release_idempotency_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: String,
    token: String,
}

/// Where a request with an idempotency key stands.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyState {
    /// The first (or, after expiry, a new) request with this key: it is this request's.
    Claimed(IdempotencyClaim),
    /// An earlier request used this key with another body.
    Mismatch,
    /// An earlier request with this key and body is still being processed.
    InProgress,
    /// An earlier request with this key and body completed with this answer.
    Completed {
        execution_id: i64,
        status: u16,
        body: Value,
    },
}

/// A stored key as [`Store::claim_idempotency_key`] reads it.
#[derive(FromRow)]
struct StoredIdempotencyKey {
    fingerprint: String,
    execution_id: Option<i64>,
    response_status: Option<i32>,
    response_body: Option<String>,
}

/// Expired keys deleted per new claim (so the table never grows past the live keys by more).
const EXPIRED_KEYS_PER_CLAIM: i64 = 100;

impl Store {
    /// Claims `request.key` for this request, first writer wins: the primary key decides
    /// between concurrent requests, and an expired key (or an abandoned claim) is taken over
    /// in the same statement. Otherwise says how the earlier request with the key stands.
    /// Deletes up to 100 expired keys first.
    pub async fn claim_idempotency_key(
        &self,
        request: &IdempotencyRequest<'_>,
    ) -> Result<IdempotencyState, StoreError> {
        let ttl = request.ttl.as_secs_f64();
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE key IN (
                 SELECT key FROM idempotency_keys
                 WHERE created_at < now() - make_interval(secs => $1)
                 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(ttl)
        .bind(EXPIRED_KEYS_PER_CLAIM)
        .execute(&self.pool)
        .await?;
        // The earlier row can vanish between the two statements (its request gave the claim
        // back, or it expired and was deleted): then try again.
        for _ in 0..3 {
            let claimed: Option<String> = sqlx::query_scalar(
                "INSERT INTO idempotency_keys (key, fingerprint, claim)
                 VALUES ($1, $2, gen_random_uuid()::text)
                 ON CONFLICT (key) DO UPDATE SET
                     fingerprint = EXCLUDED.fingerprint, claim = EXCLUDED.claim,
                     execution_id = NULL, response_status = NULL, response_body = NULL,
                     created_at = now()
                 WHERE idempotency_keys.created_at < now() - make_interval(secs => $3)
                    OR (idempotency_keys.execution_id IS NULL
                        AND idempotency_keys.created_at < now() - make_interval(secs => $4))
                 RETURNING claim",
            )
            .bind(request.key)
            .bind(request.fingerprint)
            .bind(ttl)
            .bind(request.abandoned_after.as_secs_f64())
            .fetch_optional(&self.pool)
            .await?;
            if let Some(token) = claimed {
                return Ok(IdempotencyState::Claimed(IdempotencyClaim {
                    key: request.key.to_string(),
                    token,
                }));
            }
            let earlier: Option<StoredIdempotencyKey> = sqlx::query_as(
                "SELECT fingerprint, execution_id, response_status, response_body::text
                 FROM idempotency_keys WHERE key = $1",
            )
            .bind(request.key)
            .fetch_optional(&self.pool)
            .await?;
            let Some(StoredIdempotencyKey {
                fingerprint,
                execution_id,
                response_status: status,
                response_body: body,
            }) = earlier
            else {
                continue;
            };
            if fingerprint != request.fingerprint {
                return Ok(IdempotencyState::Mismatch);
            }
            return Ok(match (execution_id, status, body) {
                (Some(execution_id), Some(status), Some(body)) => IdempotencyState::Completed {
                    execution_id,
                    status: u16::try_from(status).map_err(|_| {
                        StoreError::Corrupt(format!("idempotency key status {status}"))
                    })?,
                    body: serde_json::from_str(&body).map_err(|error| {
                        StoreError::Corrupt(format!("idempotency key answer: {error}"))
                    })?,
                },
                _ => IdempotencyState::InProgress,
            });
        }
        Ok(IdempotencyState::InProgress)
    }

    /// Records a new execution in `requested` for the request holding `claim`, and the answer
    /// (`status` and the body `answer` makes of the new row) with the key, in one transaction:
    /// a retry finds both or neither. A claim taken over meanwhile (it was abandoned) is a
    /// [`StoreError::Conflict`] and creates nothing.
    pub async fn create_execution_for_key(
        &self,
        claim: &IdempotencyClaim,
        action: &ActionRow,
        parameters: &Map<String, Value>,
        status: u16,
        answer: impl FnOnce(&ExecutionRow) -> Value,
    ) -> Result<ExecutionRow, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let row: ExecutionRow = sqlx::query_as(&format!(
            "INSERT INTO executions (action_ref, action_id, status, parameters, secret_parameters)
             VALUES ($1, $2, 'requested', $3, $4) RETURNING {EXECUTION_COLUMNS}"
        ))
        .bind(&action.action_ref)
        .bind(action.id)
        .bind(self.sealed(action, parameters))
        .bind(&action.secret_parameters)
        .fetch_one(&mut *transaction)
        .await?;
        let completed = sqlx::query(
            "UPDATE idempotency_keys
             SET execution_id = $3, response_status = $4, response_body = $5::text::json
             WHERE key = $1 AND claim = $2 AND execution_id IS NULL",
        )
        .bind(&claim.key)
        .bind(&claim.token)
        .bind(row.id)
        .bind(i32::from(status))
        .bind(answer(&row).to_string())
        .execute(&mut *transaction)
        .await?;
        if completed.rows_affected() != 1 {
            transaction.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "idempotency key {:?} was taken over by another request",
                claim.key
            )));
        }
        transaction.commit().await?;
        Ok(row)
    }

    /// Gives a claim back (its request was refused and created nothing), so a retry with the
    /// key is processed anew.
    pub async fn release_idempotency_key(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE key = $1 AND claim = $2 AND execution_id IS NULL",
        )
        .bind(&claim.key)
        .bind(&claim.token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
