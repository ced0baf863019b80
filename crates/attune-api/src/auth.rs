//! Who may call the API: every route but `/livez` and `/readyz` needs `Authorization: Bearer
//! <token>`, and each route needs a [`Role`] ([`required_role`]; a route not listed there needs
//! `admin`, so a new endpoint is closed until someone decides who may use it).
//!
//! Tokens are `attune_` and 64 hex digits (256 random bits from the operating system); only
//! their sha256 is stored, so a copy of the database authenticates no one. A missing, unknown
//! or revoked token is 401 (with `WWW-Authenticate: Bearer`), a role too small is 403, both as
//! the JSON error body. Tokens are never logged: only a token's id and name are.
//!
//! The first start on an empty database writes one admin token to `server.admin_token_file`
//! (mode 0600) and says where ([`bootstrap_admin_token`]); operators make the others with
//! `attune token create`.

use crate::{ApiError, ApiResult, AppState, JsonBody};
use attune_protocol::api::{CreateTokenRequest, CreatedToken, List, Role, TokenView, WhoAmI};
use attune_store::{Store, StoreError};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sha2::{Digest, Sha256};
use std::path::{Path as FilePath, PathBuf};

/// The prefix of every token (so a leaked one is recognisable by secret scanners).
pub const TOKEN_PREFIX: &str = "attune_";
/// Longest accepted token name.
const MAX_TOKEN_NAME: usize = 100;

/// The caller of a request, as its token says (a request extension after [`authenticate`]).
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: i64,
    pub name: String,
    pub role: Role,
}

/// A new token and the hash that is stored for it.
pub fn generate_token() -> (String, [u8; 32]) {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("the operating system's random source");
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(random));
    let hash = token_sha256(&token);
    (token, hash)
}

/// What is stored for a token.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The role a route needs, `None` for the public health routes. `path` is the route's
/// pattern (`/api/v1/executions/{id}/cancel`). Anything not listed needs `admin`.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    match (method, path) {
        (_, "/livez" | "/readyz") => None,
        // Containers fetch their agent before they have any token; the handlers require the
        // agent bootstrap token when the server has one (`agent_binary.rs`).
        (
            &Method::GET | &Method::HEAD,
            "/api/v1/agent/binary" | "/api/v1/agent/binary.sha256" | "/api/v1/agent/info",
        ) => None,
        (_, path) if path == "/api/v1/tokens" || path.starts_with("/api/v1/tokens/") => {
            Some(Role::Admin)
        }
        (&Method::GET, "/api/v1/whoami") => Some(Role::Viewer),
        (
            &Method::GET,
            "/api/v1/packs"
            | "/api/v1/actions"
            | "/api/v1/actions/{action_ref}"
            | "/api/v1/executions"
            | "/api/v1/executions/{id}"
            | "/api/v1/executions/{id}/logs"
            | "/api/v1/pools"
            | "/api/v1/containers"
            | "/api/v1/workers"
            | "/api/v1/workers/{name}"
            | "/api/v1/runtimes",
        ) => Some(Role::Viewer),
        // A worker's own work: enrolling, and fetching the pack files of its jobs.
        (&Method::POST, "/api/v1/workers") | (&Method::GET, "/api/v1/packs/{pack_ref}/archive") => {
            Some(Role::Worker)
        }
        (&Method::POST, "/api/v1/executions" | "/api/v1/executions/{id}/cancel") => {
            Some(Role::Executor)
        }
        (&Method::POST, "/api/v1/packs") => Some(Role::Editor),
        _ => Some(Role::Admin),
    }
}

fn unauthorized(detail: impl Into<String>) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The bearer token of a request, or why there is none.
fn bearer(headers: &HeaderMap) -> Result<&str, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err("this endpoint needs an API token: send `Authorization: Bearer <token>` (the CLI reads ATTUNE_API_TOKEN or the file `attune login` writes)");
    };
    let text = value.to_str().unwrap_or_default();
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err("the Authorization header must be `Bearer <token>`"),
    }
}

/// Middleware: authenticates the request's token and checks the route's role.
pub async fn authenticate(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = matched
        .as_ref()
        .map(|matched| matched.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let Some(needed) = required_role(request.method(), &path) else {
        return next.run(request).await;
    };
    let token = match bearer(request.headers()) {
        Ok(token) => token,
        Err(detail) => return unauthorized(detail),
    };
    let row = match state.store.token_by_hash(&token_sha256(token)).await {
        Ok(Some(row)) => row,
        Ok(None) => return unauthorized("the API token is not valid (unknown or revoked)"),
        Err(error) => return ApiError::from(error).into_response(),
    };
    if !row.role.allows(needed) {
        tracing::info!(token_id = row.id, token_name = %row.name, role = %row.role, needed = %needed, method = %request.method(), %path, "request refused: role too small");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has the role {}; {} {path} needs the role {needed}{}",
                row.name,
                row.role,
                request.method(),
                if needed == Role::Worker {
                    ""
                } else {
                    " or above"
                }
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(Caller {
        token_id: row.id,
        name: row.name,
        role: row.role,
    });
    next.run(request).await
}

/// `GET /api/v1/whoami`.
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        token_id: caller.token_id,
        name: caller.name,
        role: caller.role,
    })
}

/// `GET /api/v1/tokens` (admin): every token, never the token itself.
pub async fn list_tokens(State(state): State<AppState>) -> ApiResult<Json<List<TokenView>>> {
    let items = state
        .store
        .list_tokens()
        .await?
        .iter()
        .map(|row| row.to_view())
        .collect();
    Ok(Json(List { items }))
}

/// `POST /api/v1/tokens` (admin): a new token, shown in this answer only.
pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let name = request.name.trim();
    if name.is_empty() || name.len() > MAX_TOKEN_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_token_name",
            format!("a token name must be 1 to {MAX_TOKEN_NAME} printable characters"),
        ));
    }
    let (token, hash) = generate_token();
    let row = state.store.create_token(name, request.role, &hash).await?;
    tracing::info!(token_id = row.id, token_name = %row.name, role = %row.role, by = caller.token_id, "api token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            view: row.to_view(),
        }),
    ))
}

/// `DELETE /api/v1/tokens/{id}` (admin): revokes a token at once.
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenView>> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("token id must be an integer, not {id:?}"),
        )
    })?;
    let row = state.store.revoke_token(id).await?;
    tracing::info!(token_id = row.id, token_name = %row.name, by = caller.token_id, "api token revoked");
    Ok(Json(row.to_view()))
}

/// Why the first admin token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("write the first admin token to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store the first admin token: {0}")]
    Store(#[from] StoreError),
}

/// On a database without tokens, makes an admin token and writes it to `path` (mode 0600,
/// replacing a file left there); returns the path when this call made it. Of several servers
/// starting at once on one database, exactly one does.
pub async fn bootstrap_admin_token(
    store: &Store,
    path: &FilePath,
) -> Result<Option<PathBuf>, BootstrapError> {
    if !store.list_tokens().await?.is_empty() {
        return Ok(None);
    }
    let (token, hash) = generate_token();
    // Written first (to a file of its own), so a token is never stored that nobody can read.
    let pending = path.with_extension("pending");
    let write = |target: &FilePath| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(parent) = target
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(target);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)?;
        writeln!(file, "{token}")?;
        file.sync_all()
    };
    write(&pending).map_err(|source| BootstrapError::Write {
        path: pending.clone(),
        source,
    })?;
    match store
        .create_first_token("first admin", Role::Admin, &hash)
        .await
    {
        Ok(Some(row)) => {
            std::fs::rename(&pending, path).map_err(|source| BootstrapError::Write {
                path: path.to_path_buf(),
                source,
            })?;
            tracing::info!(token_id = row.id, path = %path.display(), "no API token existed: wrote the first admin token to this file (mode 0600); log in with `attune login --token-file <path>` and make others with `attune token create`");
            Ok(Some(path.to_path_buf()))
        }
        Ok(None) => {
            let _ = std::fs::remove_file(&pending);
            Ok(None)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&pending);
            Err(error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_stored_only_as_hashes() {
        let (first, first_hash) = generate_token();
        let (second, _) = generate_token();
        assert_ne!(first, second);
        assert!(first.starts_with(TOKEN_PREFIX));
        assert_eq!(first.len(), TOKEN_PREFIX.len() + 64, "256 bits in hex");
        assert_eq!(first_hash, token_sha256(&first));
        assert_ne!(&first_hash[..], first.as_bytes());
    }

    #[test]
    fn every_route_needs_the_role_its_kind_of_work_needs_and_unknown_ones_need_admin() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required_role(&get, "/livez"), None);
        assert_eq!(required_role(&get, "/readyz"), None);
        for path in [
            "/api/v1/packs",
            "/api/v1/actions/{action_ref}",
            "/api/v1/executions/{id}/logs",
            "/api/v1/containers",
            "/api/v1/whoami",
            "/api/v1/runtimes",
        ] {
            assert_eq!(required_role(&get, path), Some(Role::Viewer), "{path}");
        }
        assert_eq!(
            required_role(&post, "/api/v1/executions"),
            Some(Role::Executor)
        );
        assert_eq!(
            required_role(&post, "/api/v1/executions/{id}/cancel"),
            Some(Role::Executor)
        );
        assert_eq!(required_role(&post, "/api/v1/packs"), Some(Role::Editor));
        // The registry is written by pack registration and enrollment, never through its route.
        assert_eq!(required_role(&post, "/api/v1/runtimes"), Some(Role::Admin));
        assert_eq!(required_role(&get, "/api/v1/tokens"), Some(Role::Admin));
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/tokens/{id}"),
            Some(Role::Admin)
        );
        // Deny by default: a route nobody classified needs admin.
        assert_eq!(required_role(&post, "/api/v1/settings"), Some(Role::Admin));
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/packs"),
            Some(Role::Admin)
        );
        assert_eq!(required_role(&get, "/api/v1/secrets"), Some(Role::Admin));
    }

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(bearer(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer attune_x"),
        );
        assert_eq!(bearer(&headers).ok(), Some("attune_x"));
    }
}
