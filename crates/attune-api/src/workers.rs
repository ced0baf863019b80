//! Long-lived workers over HTTP: enrollment (`POST /api/v1/workers`, role `worker`), the
//! worker list (`GET /api/v1/workers`, `/api/v1/workers/{name}`, role `viewer`), and pack
//! archives by digest for workers (`GET /api/v1/packs/{ref}/archive?sha256=`, role `worker`),
//! and the runtime registry workers' reports feed (`GET /api/v1/runtimes`, role `viewer`): an
//! enrollment records, `auto_detected`, the runtimes it reports that no record covers.
//!
//! Enrolling makes the worker a broker account of its own through [`WorkerAccounts`] (the
//! server wires RabbitMQ's management API behind it: this crate never talks to the broker) and
//! derives its event key from the deployment's workers secret, so every server checks its
//! events; a worker enrolling again under its name gets a new agent id, and the old one's
//! account is removed.

use crate::{ApiError, ApiResult, AppState, List};
use async_trait::async_trait;
use attune_protocol::api::RuntimeView;
use attune_protocol::signing::{agent_event_key, to_hex};
use attune_protocol::worker::{check_enrollment, WorkerEnrolled, WorkerEnrollment, WorkerView};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use std::sync::Arc;

/// What enrollment needs from the broker side (implemented by the server over RabbitMQ's
/// management API).
#[async_trait]
pub trait WorkerAccounts: Send + Sync + 'static {
    /// Makes `agent_id`'s broker account; returns the AMQP URL with its credentials.
    async fn issue(&self, agent_id: &str) -> Result<String, String>;
    /// Deletes `agent_id`'s broker account (gone is fine).
    async fn revoke(&self, agent_id: &str) -> Result<(), String>;
    /// The broker's CA certificates (PEM) for `amqps://`, if any.
    fn ca_pem(&self) -> Option<String>;
}

/// How workers enroll (`AppState::workers`).
#[derive(Clone)]
pub struct WorkerEnrollmentSettings {
    pub accounts: Arc<dyn WorkerAccounts>,
    /// The deployment's workers secret (event keys derive from it).
    pub secret: Arc<Vec<u8>>,
    pub heartbeat_seconds: u64,
    /// Where workers report (`workers.events_queue`).
    pub events_queue: String,
}

/// `POST /api/v1/workers` (role `worker`).
pub async fn enroll(
    State(state): State<AppState>,
    Extension(caller): Extension<crate::auth::Caller>,
    crate::JsonBody(enrollment): crate::JsonBody<WorkerEnrollment>,
) -> ApiResult<Response> {
    let Some(settings) = state.workers.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "workers_unavailable",
            "this server does not enroll workers (it runs no broker side)",
        ));
    };
    check_enrollment(&enrollment).map_err(|detail| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_enrollment",
            detail,
        )
    })?;
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).expect("the operating system's random source");
    let agent_id = format!("worker-{}-{}", enrollment.name, to_hex(&random));
    let mq_url = settings.accounts.issue(&agent_id).await.map_err(|error| {
        tracing::error!(worker = %enrollment.name, %error, "make a worker's broker account");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "message_queue_unavailable",
            format!(
                "make the broker account of worker {}: {error}",
                enrollment.name
            ),
        )
    })?;
    let previous = match state
        .store
        .enroll_worker(&enrollment, &agent_id, Some(caller.token_id))
        .await
    {
        Ok(previous) => previous,
        Err(error) => {
            let _ = settings.accounts.revoke(&agent_id).await;
            return Err(error.into());
        }
    };
    if let Err(error) = state
        .store
        .record_detected_runtimes(&enrollment.runtimes)
        .await
    {
        tracing::warn!(worker = %enrollment.name, %error, "record the runtimes a worker reported in the runtime registry");
    }
    if let Some(previous) = previous.filter(|previous| *previous != agent_id) {
        if let Err(error) = settings.accounts.revoke(&previous).await {
            tracing::warn!(worker = %enrollment.name, agent_id = %previous, %error, "remove the broker account of a worker's earlier enrollment");
        }
    }
    tracing::info!(worker = %enrollment.name, %agent_id, runtimes = enrollment.runtimes.len(), concurrency = enrollment.concurrency, token_id = caller.token_id, "worker enrolled");
    let enrolled = WorkerEnrolled {
        event_key: to_hex(&agent_event_key(&settings.secret, &agent_id)),
        agent_id,
        mq_url,
        mq_ca_pem: settings.accounts.ca_pem(),
        events_queue: settings.events_queue.clone(),
        heartbeat_seconds: settings.heartbeat_seconds,
    };
    Ok((StatusCode::CREATED, Json(enrolled)).into_response())
}

/// `GET /api/v1/workers`.
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<List<WorkerView>>> {
    let items = state
        .store
        .list_workers()
        .await?
        .iter()
        .map(|row| row.view())
        .collect();
    Ok(Json(List { items }))
}

/// `GET /api/v1/runtimes`: the runtime registry (templates, packs' runtimes, detected ones).
pub async fn list_runtimes(State(state): State<AppState>) -> ApiResult<Json<List<RuntimeView>>> {
    let items = state
        .store
        .list_runtimes()
        .await?
        .iter()
        .map(|row| row.view())
        .collect();
    Ok(Json(List { items }))
}

/// `GET /api/v1/workers/{name}`.
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkerView>> {
    Ok(Json(state.store.get_worker(&name).await?.view()))
}

#[derive(Debug, Deserialize)]
pub struct ArchiveQuery {
    sha256: Option<String>,
}

/// `GET /api/v1/packs/{ref}/archive?sha256=<digest>` (role `worker`): the pack's stored
/// archive when it has that digest; 409 naming both digests when the pack was replaced since.
pub async fn pack_archive(
    State(state): State<AppState>,
    Path(pack_ref): Path<String>,
    Query(query): Query<ArchiveQuery>,
) -> ApiResult<Response> {
    let (archive, digest) = state.store.pack_archive_by_ref(&pack_ref).await?;
    if let Some(wanted) = query.sha256.filter(|wanted| *wanted != digest) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "pack_changed",
            format!(
                "pack {pack_ref} is at sha256 {digest}, not {wanted} (it was registered again)"
            ),
        ));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::HeaderName::from_static("x-attune-pack-sha256"),
                digest,
            ),
        ],
        Body::from(archive),
    )
        .into_response())
}
