//! `attune-api`: the HTTP API (axum) — packs, actions, executions, logs, cancel, health. The
//! only crate that depends on axum; it reads and writes Postgres through the store and reaches
//! the controllers only through [`ControlPlane`].
//!
//! Every error is JSON `{"error", "detail"}` with a fitting status code. JSON bodies are
//! limited to [`AppState::max_json_bytes`] (413 `body_too_large` beyond it); an execution
//! request may carry an `Idempotency-Key` ([`idempotency`]). Every route but the health ones
//! needs a bearer token with a large enough role ([`auth`]).

use attune_protocol::api::{
    ActionView, ContainerSpec, ContainerView, CreateExecutionRequest, ErrorBody, ExecutionStatus,
    ExecutionView, List, LogChunkView, PackView, PoolView,
};
use attune_store::status_feed::StatusFeed;
use attune_store::{
    ActionRow, ExecutionFilter, ExecutionRow, IdempotencyRequest, IdempotencyState, NewPack,
    PackRow, Store, StoreError,
};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub mod agent_binary;
pub mod auth;
pub mod idempotency;
pub mod workers;

/// Default of [`AppState::max_json_bytes`] (axum's own default): 2 MiB.
pub const DEFAULT_MAX_JSON_BYTES: usize = 2 * 1024 * 1024;
/// Default of [`AppState::idempotency_key_ttl`]: 24 hours.
pub const DEFAULT_IDEMPOTENCY_KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// A key claimed by a request that never completed (its server died mid-request) is free
/// again after this; a request is never in progress that long otherwise.
pub const ABANDONED_IDEMPOTENCY_CLAIM: Duration = Duration::from_secs(60);

/// The operator's admission policy, checked when an execution is requested (the controller
/// that runs it checks again before creating anything).
pub trait Admission: Send + Sync + 'static {
    /// Whether the image allow-list admits an action's stored container settings.
    fn check_action_image(&self, container: Option<&serde_json::Value>) -> Result<(), String>;
    /// Whether an action's stored container settings stay within the operator's resource
    /// ceilings and capability allow-list; the refusal names the action, the resource, what
    /// it asks and the limit.
    fn check_action_limits(
        &self,
        action_ref: &str,
        container: Option<&serde_json::Value>,
    ) -> Result<(), String>;
}

/// Everything the handlers use.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub max_pack_bytes: u64,
    /// Largest accepted JSON request body (`server.max_json_bytes`).
    pub max_json_bytes: usize,
    /// How long an `Idempotency-Key` answers with its execution
    /// (`server.idempotency_key_ttl_seconds`); after that it is a new key.
    pub idempotency_key_ttl: Duration,
    /// The image allow-list.
    pub admission: Arc<dyn Admission>,
    /// A controller whose last heartbeat is older than this is not counted as live.
    pub controller_grace: Duration,
    /// Status changes, for requests that wait for an execution to end.
    pub status_feed: StatusFeed,
    /// Compiled parameter schemas.
    pub validators: ValidatorCache,
    /// Set when the server begins to shut down: readiness answers 503 `draining` from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// How workers enroll; `None`: this server enrolls none (503).
    pub workers: Option<workers::WorkerEnrollmentSettings>,
    /// The agent binaries it hands out (`/api/v1/agent/*`); `None`: none (404).
    pub agent_downloads: Option<agent_binary::AgentDownloads>,
}

/// Compiled parameter schemas by action, so a request does not recompile its action's schema;
/// an entry is used only for the same pack files (re-registering a pack recompiles).
#[derive(Clone, Default)]
pub struct ValidatorCache {
    compiled: Arc<std::sync::Mutex<std::collections::HashMap<String, CompiledSchema>>>,
}

/// A compiled schema and the pack digest it was compiled for.
type CompiledSchema = (String, Arc<attune_pack::ParameterValidator>);

impl ValidatorCache {
    fn validator(
        &self,
        action: &ActionRow,
    ) -> Result<Arc<attune_pack::ParameterValidator>, attune_pack::ParameterError> {
        let mut compiled = self.compiled.lock().expect("validator cache lock");
        if let Some((pack_sha256, validator)) = compiled.get(&action.action_ref) {
            if *pack_sha256 == action.pack_sha256 {
                return Ok(validator.clone());
            }
        }
        let validator = Arc::new(attune_pack::ParameterValidator::from_schema(
            &action.action_ref,
            &action.parameters_schema,
        )?);
        compiled.insert(
            action.action_ref.clone(),
            (action.pack_sha256.clone(), validator.clone()),
        );
        Ok(validator)
    }
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }

    fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error.to_string(),
            detail: self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(detail) => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
            other => {
                tracing::error!(error = %other, "database error in request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    other.to_string(),
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "request body is not valid JSON for this endpoint: {}",
                rejection.body_text()
            ),
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body of at most [`AppState::max_json_bytes`]: every JSON endpoint takes its
/// body through this, so a larger one is 413 naming the limit, whatever the endpoint.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!(
                        "the request body is larger than the limit of {} bytes (server.max_json_bytes)",
                        state.max_json_bytes
                    ),
                ))
            }
            Err(rejection) => Err(rejection.into()),
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves (requests in flight finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let pack_body_limit = state.max_pack_bytes as usize + 1;
    let json_body_limit = state.max_json_bytes;
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route(
            "/api/v1/packs",
            get(list_packs)
                .post(register_pack)
                .layer(DefaultBodyLimit::max(pack_body_limit)),
        )
        .route("/api/v1/actions", get(list_actions))
        .route("/api/v1/actions/{action_ref}", get(get_action))
        .route(
            "/api/v1/executions",
            get(list_executions).post(create_execution),
        )
        .route("/api/v1/executions/{id}", get(get_execution))
        .route("/api/v1/executions/{id}/logs", get(execution_logs))
        .route("/api/v1/executions/{id}/cancel", post(cancel_execution))
        .route("/api/v1/pools", get(list_pools))
        .route("/api/v1/workers", get(workers::list).post(workers::enroll))
        .route("/api/v1/workers/{name}", get(workers::get))
        .route("/api/v1/runtimes", get(workers::list_runtimes))
        .route("/api/v1/agent/binary", get(agent_binary::binary))
        .route(
            "/api/v1/agent/binary.sha256",
            get(agent_binary::binary_sha256),
        )
        .route("/api/v1/agent/info", get(agent_binary::info))
        .route(
            "/api/v1/packs/{pack_ref}/archive",
            get(workers::pack_archive),
        )
        .route("/api/v1/containers", get(list_containers))
        .route("/api/v1/whoami", get(auth::whoami))
        .route(
            "/api/v1/tokens",
            get(auth::list_tokens).post(auth::create_token),
        )
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(auth::revoke_token),
        )
        // Every route above needs a token of a large enough role, except the health routes.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        // Every body but a pack upload (whose route sets its own limit).
        .layer(DefaultBodyLimit::max(json_body_limit))
        .with_state(state)
}

async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers and at least one controller is live (heartbeat within
/// the grace, not stopped or lost) with every check of its own passing. `checks.docker` and
/// `checks.message_queue` sum up the live controllers' own checks; `controllers` lists each.
async fn readyz(State(state): State<AppState>) -> Response {
    let grace = state.controller_grace.as_secs_f64();
    let (database, controllers) = match state.store.list_controllers().await {
        Ok(controllers) => (Ok(()), controllers),
        Err(error) => (Err(error.to_string()), Vec::new()),
    };
    let live: Vec<_> = controllers
        .iter()
        .filter(|row| {
            row.lost_at.is_none() && row.stopped_at.is_none() && row.heartbeat_age_seconds < grace
        })
        .collect();
    let mut checks = serde_json::Map::new();
    checks.insert(
        "database".into(),
        match &database {
            Ok(()) => json!("ok"),
            Err(error) => json!(error),
        },
    );
    for name in ["message_queue", "docker"] {
        let failing: Vec<String> = live
            .iter()
            .filter(|row| row.checks[name] != "ok")
            .map(|row| format!("controller {}: {}", row.id, row.checks[name]))
            .collect();
        let value = if database.is_err() {
            json!("unknown: the database is unavailable")
        } else if live.is_empty() {
            json!(format!(
                "no live controller (none sent a heartbeat in the last {grace}s)"
            ))
        } else if failing.is_empty() {
            json!("ok")
        } else {
            json!(failing.join("; "))
        };
        checks.insert(name.into(), value);
    }
    let draining = state.draining.load(std::sync::atomic::Ordering::SeqCst);
    let ready = !draining && checks.values().all(|value| value == "ok");
    let controllers: Vec<serde_json::Value> = controllers
        .iter()
        .map(|row| {
            json!({
                "id": row.id,
                "live": live.iter().any(|live| live.id == row.id),
                "docker_host": row.docker_host,
                "engine_version": row.engine_version,
                "architecture": row.architecture,
                "capacity": row.capacity,
                "heartbeat_age_seconds": row.heartbeat_age_seconds,
                "checks": row.checks,
                "details": row.details,
            })
        })
        .collect();
    let body = json!({
        "status": if draining { "draining" } else if ready { "ready" } else { "not_ready" },
        "checks": checks,
        "controllers": controllers,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct RegisterQuery {
    #[serde(default)]
    force: bool,
}

async fn register_pack(
    State(state): State<AppState>,
    Query(query): Query<RegisterQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<PackView>)> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "pack_too_large",
                format!(
                    "pack archive is larger than the limit of {} bytes",
                    state.max_pack_bytes
                ),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                rejection.body_text(),
            )
        }
    })?;
    let limits = attune_pack::PackLimits {
        max_archive_bytes: state.max_pack_bytes,
        ..Default::default()
    };
    let pack = attune_pack::load_pack_archive(&body, &limits).map_err(pack_error)?;
    let archive = pack.to_archive().map_err(pack_error)?;
    let row = state
        .store
        .register_pack(
            NewPack {
                pack: &pack,
                archive: &archive,
            },
            query.force,
        )
        .await?;
    tracing::info!(pack = %pack.pack_ref, actions = pack.actions.len(), "pack registered");
    Ok((
        StatusCode::CREATED,
        Json(pack.to_view(attune_store::format_time(row.registered_at))),
    ))
}

fn pack_error(error: attune_pack::PackError) -> ApiError {
    use attune_pack::PackError;
    match error {
        PackError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "pack_too_large",
            error.to_string(),
        ),
        PackError::NotAnArchive { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "not_an_archive", error.to_string())
        }
        other => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_pack",
            other.to_string(),
        ),
    }
}

async fn list_packs(State(state): State<AppState>) -> ApiResult<Json<List<PackView>>> {
    let packs = state.store.list_packs().await?;
    let actions = state.store.list_actions(None).await?;
    let mut actions_by_pack: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for action in actions {
        actions_by_pack
            .entry(action.pack_id)
            .or_default()
            .push(action.action_ref);
    }
    let items = packs
        .into_iter()
        .map(|pack| pack_view(&pack, actions_by_pack.remove(&pack.id).unwrap_or_default()))
        .collect();
    Ok(Json(List { items }))
}

fn pack_view(pack: &PackRow, actions: Vec<String>) -> PackView {
    PackView {
        pack_ref: pack.pack_ref.clone(),
        label: pack.label.clone(),
        description: pack.description.clone(),
        version: pack.version.clone(),
        actions,
        registered_at: attune_store::format_time(pack.registered_at),
    }
}

fn action_view(action: &ActionRow) -> ActionView {
    ActionView {
        action_ref: action.action_ref.clone(),
        pack: action.pack_ref.clone(),
        label: action.label.clone(),
        description: action.description.clone(),
        runner_type: action.runner_type.clone(),
        entry_point: action.entry_point.clone(),
        parameters: attune_pack::redact_secret_defaults(&action.parameters_schema),
        parameter_delivery: action.parameter_delivery,
        parameter_format: action.parameter_format,
        timeout: action.timeout_seconds.max(0) as u64,
        container: action
            .container
            .clone()
            .and_then(|container| serde_json::from_value::<ContainerSpec>(container).ok()),
        isolation: action.isolation,
        pool: action
            .pool
            .clone()
            .and_then(|pool| serde_json::from_value(pool).ok()),
        idempotent: action.idempotent,
    }
}

#[derive(Debug, Deserialize)]
struct ActionQuery {
    pack: Option<String>,
}

async fn list_actions(
    State(state): State<AppState>,
    Query(query): Query<ActionQuery>,
) -> ApiResult<Json<List<ActionView>>> {
    let actions = state.store.list_actions(query.pack.as_deref()).await?;
    Ok(Json(List {
        items: actions.iter().map(action_view).collect(),
    }))
}

async fn get_action(
    State(state): State<AppState>,
    Path(action_ref): Path<String>,
) -> ApiResult<Json<ActionView>> {
    let action = state.store.get_action(&action_ref).await?;
    Ok(Json(action_view(&action)))
}

/// `POST /api/v1/executions`. With an `Idempotency-Key` (IETF httpapi draft): the first
/// request with a key creates the execution; a retry with the same key and body within
/// [`AppState::idempotency_key_ttl`] gets the first answer again (same status, 201, and
/// body, with `Idempotent-Replayed: true`) and creates nothing; the key with another body is
/// 422; a retry while the first is still being processed is 409. A refused request (404,
/// 409, 422) stores no answer, so its retry is processed anew.
async fn create_execution(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    let key = idempotency::key_from_headers(&headers).map_err(|reason| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", reason)
    })?;
    let fingerprint = key.as_ref().map(|_| idempotency::fingerprint(&body));
    let request: CreateExecutionRequest = serde_json::from_value(body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("request body is not valid JSON for this endpoint: {error}"),
        )
    })?;
    let (Some(key), Some(fingerprint)) = (key, fingerprint) else {
        let (action, parameters) = admit_execution(&state, &request).await?;
        let execution = state.store.create_execution(&action, &parameters).await?;
        tracing::info!(execution_id = execution.id, action = %action.action_ref, "execution requested");
        return Ok((StatusCode::CREATED, Json(execution_answer(&execution))).into_response());
    };
    let ttl = state.idempotency_key_ttl;
    let claim = state
        .store
        .claim_idempotency_key(&IdempotencyRequest {
            key: &key,
            fingerprint: &fingerprint,
            ttl,
            abandoned_after: ABANDONED_IDEMPOTENCY_CLAIM,
        })
        .await?;
    let claim = match claim {
        IdempotencyState::Claimed(claim) => claim,
        IdempotencyState::Completed {
            execution_id,
            status,
            body,
        } => {
            tracing::info!(execution_id, idempotency_key = %key, "idempotent retry answered again");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            return Ok((
                status,
                [(idempotency::IDEMPOTENT_REPLAYED, "true")],
                Json(body),
            )
                .into_response());
        }
        IdempotencyState::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_mismatch",
                format!(
                    "Idempotency-Key {key:?} was already used with another request body in the last {} s: send the same body to get its answer, or use a new key",
                    ttl.as_secs()
                ),
            ))
        }
        IdempotencyState::InProgress => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_progress",
                format!(
                    "a request with Idempotency-Key {key:?} is still being processed: retry later for its answer"
                ),
            ))
        }
    };
    // Runs to its end even if the client goes away meanwhile, so that its retry finds the
    // answer rather than a claim nobody completes.
    let task = tokio::spawn(async move {
        let created = async {
            let (action, parameters) = admit_execution(&state, &request).await?;
            Ok::<_, ApiError>(
                state
                    .store
                    .create_execution_for_key(&claim, &action, &parameters, 201, execution_answer)
                    .await?,
            )
        }
        .await;
        if created.is_err() {
            if let Err(error) = state.store.release_idempotency_key(&claim).await {
                tracing::warn!(%error, idempotency_key = %claim.key, "give back an idempotency key");
            }
        }
        created
    });
    let execution = task.await.map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("execution request failed: {error}"),
        )
    })??;
    tracing::info!(execution_id = execution.id, action = %execution.action_ref, idempotency_key = %key, "execution requested");
    Ok((StatusCode::CREATED, Json(execution_answer(&execution))).into_response())
}

/// The answer to an execution request, as given to the first request and stored with its key.
fn execution_answer(execution: &ExecutionRow) -> serde_json::Value {
    serde_json::to_value(execution.to_view()).unwrap_or_default()
}

/// The checks of an execution request: the action exists and is enabled, its image is
/// allowed, and its parameters are valid (with defaults applied).
async fn admit_execution(
    state: &AppState,
    request: &CreateExecutionRequest,
) -> ApiResult<(ActionRow, serde_json::Map<String, serde_json::Value>)> {
    let action = match state.store.get_action(&request.action).await {
        Err(StoreError::NotFound(_)) => {
            return Err(ApiError::not_found(format!(
                "action {} not found (register its pack first)",
                request.action
            )))
        }
        other => other?,
    };
    if !action.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "action_disabled",
            format!("action {} is disabled", action.action_ref),
        ));
    }
    // The operator's image allow-list (the controller checks again before creating).
    state
        .admission
        .check_action_image(action.container.as_ref())
        .map_err(|error| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "image_not_allowed",
                format!("action {}: {error}", action.action_ref),
            )
        })?;
    // The operator's ceilings and capability allow-list (the controller checks again too).
    state
        .admission
        .check_action_limits(&action.action_ref, action.container.as_ref())
        .map_err(|detail| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded", detail)
        })?;
    let parameters = state
        .validators
        .validator(&action)
        .and_then(|validator| validator.validate(request.parameters.clone()))
        .map_err(|error| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_parameters",
                format!("parameters of action {}: {error}", action.action_ref),
            )
        })?;
    Ok((action, parameters))
}

#[derive(Debug, Deserialize)]
struct GetExecutionQuery {
    /// Wait up to this many seconds (at most 60) for the execution to end before answering.
    wait_seconds: Option<f64>,
}

async fn get_execution(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<GetExecutionQuery>,
) -> ApiResult<Json<ExecutionView>> {
    let execution_id = parse_execution_id(&id)?;
    let wait = match query.wait_seconds {
        None => None,
        Some(seconds) if (0.0..=60.0).contains(&seconds) => Some(Duration::from_secs_f64(seconds)),
        Some(seconds) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_wait",
                format!("wait_seconds {seconds} is outside 0..=60"),
            ))
        }
    };
    // Subscribe before reading, so a change between the read and the wait is not missed.
    let changes = state.status_feed.subscribe();
    let execution = state.store.get_execution(execution_id).await?;
    match wait {
        Some(wait) if !execution.status().is_terminal() => {
            StatusFeed::wait_terminal(changes, execution_id, wait).await;
            Ok(Json(
                state.store.get_execution(execution_id).await?.to_view(),
            ))
        }
        _ => Ok(Json(execution.to_view())),
    }
}

fn parse_execution_id(id: &str) -> ApiResult<i64> {
    id.parse::<i64>().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("execution id {id:?} is not a number"),
        )
    })
}

#[derive(Debug, Deserialize)]
struct ExecutionQuery {
    status: Option<String>,
    action: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

async fn list_executions(
    State(state): State<AppState>,
    Query(query): Query<ExecutionQuery>,
) -> ApiResult<Json<List<ExecutionView>>> {
    let status =
        match query.status.as_deref() {
            None | Some("") => None,
            Some(name) => Some(name.parse::<ExecutionStatus>().map_err(|reason| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_status", reason)
            })?),
        };
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            format!("limit {limit} is outside 1..=1000"),
        ));
    }
    let filter = ExecutionFilter {
        status,
        action_ref: query.action.filter(|action| !action.is_empty()),
        limit,
        before_id: query.before,
    };
    let rows = state.store.list_executions(&filter).await?;
    Ok(Json(List {
        items: rows.iter().map(|row| row.to_view()).collect(),
    }))
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    after_seq: Option<i64>,
    limit: Option<i64>,
}

async fn execution_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Json<List<LogChunkView>>> {
    let execution_id = parse_execution_id(&id)?;
    state.store.get_execution(execution_id).await?;
    let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
    let items = state
        .store
        .logs_after(execution_id, query.after_seq, limit)
        .await?;
    Ok(Json(List { items }))
}

async fn cancel_execution(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ExecutionView>)> {
    let execution_id = parse_execution_id(&id)?;
    let current = state.store.get_execution(execution_id).await?;
    if current.status().is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!(
                "execution {execution_id} already ended with status {}",
                current.status
            ),
        ));
    }
    let marked = state.store.request_cancel(execution_id).await?;
    if marked.status() == ExecutionStatus::Requested {
        let fields = attune_store::TransitionFields::error(
            attune_protocol::FailureKind::Canceled,
            "canceled before it was scheduled",
        );
        if let Some(row) = state
            .store
            .transition(execution_id, ExecutionStatus::Canceled, fields)
            .await?
        {
            tracing::info!(execution_id, "execution canceled before scheduling");
            return Ok((StatusCode::ACCEPTED, Json(row.to_view())));
        }
    }
    let row = state.store.get_execution(execution_id).await?;
    tracing::info!(execution_id, "cancel requested");
    Ok((StatusCode::ACCEPTED, Json(row.to_view())))
}

/// Every live controller's warm pools, from the snapshots they store with their heartbeats.
async fn list_pools(State(state): State<AppState>) -> ApiResult<Json<List<PoolView>>> {
    let (items, _) = state.store.pool_snapshots().await?;
    Ok(Json(List { items }))
}

/// Warm pool containers from the controllers' snapshots, per-execution containers from live
/// executions (with the controller that owns each).
async fn list_containers(State(state): State<AppState>) -> ApiResult<Json<List<ContainerView>>> {
    let (_, mut items) = state.store.pool_snapshots().await?;
    let pooled: std::collections::HashSet<String> =
        items.iter().map(|view| view.container_id.clone()).collect();
    for execution in state.store.live_executions().await? {
        let Some(container_id) = execution.container_id.clone() else {
            continue;
        };
        if pooled.contains(&container_id) {
            continue;
        }
        items.push(ContainerView {
            controller_id: execution.controller_id.clone().unwrap_or_default(),
            container_id,
            state: execution.status.to_string(),
            pool: None,
            execution_id: Some(execution.id),
            agent_id: execution.agent_id.clone(),
            image: execution.image.clone().unwrap_or_default(),
            uses: 1,
        });
    }
    Ok(Json(List { items }))
}
