//! The static agent binaries over HTTP, for containers that fetch their agent instead of
//! getting it from a volume or put_archive (Kubernetes, remote engines, the wrapper script
//! `scripts/attune-agent-wrapper.sh`):
//!
//! - `GET /api/v1/agent/binary?arch=x86_64|aarch64|arm64[&name=attune-sensor-agent]` streams the
//!   binary (never loaded into memory) with `Content-Length` and `Repr-Digest: sha-256=:…:`
//!   (RFC 9530);
//! - `GET /api/v1/agent/binary.sha256?arch=…` its digest as `sha256sum` prints it;
//! - `GET /api/v1/agent/info` every architecture with size, sha256, version and availability.
//!
//! A binary is looked up in `agent.binary_dir` as `<name>-<arch>`, then as the generic `<name>`
//! (only for the architecture of the server's own agent build, x86_64); the architecture and the
//! name are enums, never text put into a path. Open to anyone by default, as upstream; with
//! `agent.bootstrap_token` set, the token is required in `X-Agent-Token` or `?token=` (compared in
//! constant time, never logged).

use crate::ApiError;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use subtle::ConstantTimeEq;

/// An architecture agents are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// `x86_64` (also `amd64`) or `aarch64` (also `arm64`).
    pub fn parse(text: &str) -> Option<Arch> {
        match text {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// Which binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum AgentName {
    #[serde(rename = "attune-agent")]
    Agent,
    #[serde(rename = "attune-sensor-agent")]
    SensorAgent,
}

impl AgentName {
    pub const ALL: [AgentName; 2] = [AgentName::Agent, AgentName::SensorAgent];

    pub fn parse(text: &str) -> Option<AgentName> {
        match text {
            "attune-agent" => Some(AgentName::Agent),
            "attune-sensor-agent" => Some(AgentName::SensorAgent),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentName::Agent => "attune-agent",
            AgentName::SensorAgent => "attune-sensor-agent",
        }
    }
}

/// Where the binaries are and who may fetch them.
#[derive(Clone)]
pub struct AgentDownloads {
    dir: PathBuf,
    bootstrap_token: Option<Arc<String>>,
    /// sha256 by file, valid while its length and modification time stay the same.
    digests: Arc<Mutex<HashMap<PathBuf, CachedDigest>>>,
}

/// A file's length, modification time and sha256.
type CachedDigest = (u64, SystemTime, [u8; 32]);

impl AgentDownloads {
    /// Binaries in `dir`; `bootstrap_token` (when set and not empty) is required to fetch them.
    pub fn new(dir: PathBuf, bootstrap_token: Option<String>) -> AgentDownloads {
        AgentDownloads {
            dir,
            bootstrap_token: bootstrap_token
                .filter(|token| !token.is_empty())
                .map(Arc::new),
            digests: Arc::default(),
        }
    }

    fn check_token(&self, headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
        let Some(expected) = &self.bootstrap_token else {
            return Ok(());
        };
        let given = headers
            .get("x-agent-token")
            .map(|value| value.as_bytes())
            .or(query.map(str::as_bytes));
        let Some(given) = given else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "agent_token_required",
                "this server hands out agent binaries only with its bootstrap token: send it in X-Agent-Token (or ?token=)",
            ));
        };
        // Length differences leak only the length; the comparison itself is constant time.
        if given.len() == expected.len() && bool::from(given.ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "agent_token_invalid",
                "the agent bootstrap token is not valid",
            ))
        }
    }

    /// The file of `name` for `arch`, if there is one.
    fn locate(&self, name: AgentName, arch: Arch) -> Option<PathBuf> {
        let specific = self
            .dir
            .join(format!("{}-{}", name.as_str(), arch.as_str()));
        if specific.is_file() {
            return Some(specific);
        }
        let generic = self.dir.join(name.as_str());
        (arch == Arch::X86_64 && generic.is_file()).then_some(generic)
    }

    /// The sha256 of `path`, computed once per version of the file, reading it in chunks.
    async fn digest(&self, path: &Path) -> std::io::Result<(u64, [u8; 32])> {
        let metadata = tokio::fs::metadata(path).await?;
        let modified = metadata.modified()?;
        let length = metadata.len();
        if let Some((cached_length, cached_modified, digest)) = self
            .digests
            .lock()
            .expect("digests lock")
            .get(path)
            .copied()
        {
            if cached_length == length && cached_modified == modified {
                return Ok((length, digest));
            }
        }
        let owned = path.to_path_buf();
        let digest = tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 32]> {
            use std::io::Read;
            let mut file = std::fs::File::open(owned)?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = file.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                hasher.update(&buffer[..read]);
            }
            Ok(hasher.finalize().into())
        })
        .await
        .map_err(std::io::Error::other)??;
        self.digests
            .lock()
            .expect("digests lock")
            .insert(path.to_path_buf(), (length, modified, digest));
        Ok((length, digest))
    }
}

#[derive(Debug, Deserialize)]
pub struct BinaryQuery {
    arch: Option<String>,
    name: Option<String>,
    token: Option<String>,
}

fn not_found(detail: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
}

/// The binary a query names, after the token check.
async fn resolve(
    downloads: &AgentDownloads,
    headers: &HeaderMap,
    query: &BinaryQuery,
) -> Result<(AgentName, Arch, PathBuf, u64, [u8; 32]), ApiError> {
    downloads.check_token(headers, query.token.as_deref())?;
    let arch_text = query.arch.as_deref().unwrap_or("x86_64");
    let arch = Arch::parse(arch_text).ok_or_else(|| {
        not_found(format!(
            "no agent for architecture {arch_text:?}: x86_64 (amd64) and aarch64 (arm64) exist"
        ))
    })?;
    let name_text = query.name.as_deref().unwrap_or("attune-agent");
    let name = AgentName::parse(name_text).ok_or_else(|| {
        not_found(format!(
            "no binary named {name_text:?}: attune-agent and attune-sensor-agent exist"
        ))
    })?;
    let path = downloads.locate(name, arch).ok_or_else(|| {
        not_found(format!(
            "this server has no {} for {} (agent.binary_dir holds none)",
            name.as_str(),
            arch.as_str()
        ))
    })?;
    let (length, digest) = downloads.digest(&path).await.map_err(|error| {
        tracing::error!(path = %path.display(), %error, "read an agent binary");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "agent_binary_unreadable",
            format!("the {} for {} cannot be read", name.as_str(), arch.as_str()),
        )
    })?;
    Ok((name, arch, path, length, digest))
}

fn downloads_of(state: &crate::AppState) -> Result<AgentDownloads, ApiError> {
    state
        .agent_downloads
        .clone()
        .ok_or_else(|| not_found("this server hands out no agent binaries".to_string()))
}

/// `GET /api/v1/agent/binary` (and HEAD).
pub async fn binary(
    State(state): State<crate::AppState>,
    headers: HeaderMap,
    Query(query): Query<BinaryQuery>,
) -> Result<Response, ApiError> {
    let downloads = downloads_of(&state)?;
    let (name, _, path, length, digest) = resolve(&downloads, &headers, &query).await?;
    let file = tokio::fs::File::open(&path).await.map_err(|error| {
        tracing::error!(path = %path.display(), %error, "open an agent binary");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "agent_binary_unreadable",
            format!("the {} cannot be read", name.as_str()),
        )
    })?;
    let repr_digest = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(digest)
    );
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{}\"", name.as_str()))
            .expect("a static file name"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        "repr-digest",
        HeaderValue::from_str(&repr_digest).expect("base64 is a header value"),
    );
    Ok(response)
}

/// `GET /api/v1/agent/binary.sha256`: `<hex>  <name>` as `sha256sum` prints it.
pub async fn binary_sha256(
    State(state): State<crate::AppState>,
    headers: HeaderMap,
    Query(query): Query<BinaryQuery>,
) -> Result<Response, ApiError> {
    let downloads = downloads_of(&state)?;
    let (name, _, _, _, digest) = resolve(&downloads, &headers, &query).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}  {}\n", hex::encode(digest), name.as_str()),
    )
        .into_response())
}

/// One binary in `GET /api/v1/agent/info`.
#[derive(Debug, Serialize)]
pub struct BinaryInfo {
    pub name: AgentName,
    pub arch: Arch,
    pub available: bool,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// The server's version: agents are built from the same workspace.
    pub version: &'static str,
}

/// `GET /api/v1/agent/info`.
pub async fn info(
    State(state): State<crate::AppState>,
    headers: HeaderMap,
    Query(query): Query<BinaryQuery>,
) -> Result<Json<crate::List<BinaryInfo>>, ApiError> {
    let downloads = downloads_of(&state)?;
    downloads.check_token(&headers, query.token.as_deref())?;
    let mut items = Vec::new();
    for name in AgentName::ALL {
        for arch in Arch::ALL {
            let found = match downloads.locate(name, arch) {
                Some(path) => downloads.digest(&path).await.ok(),
                None => None,
            };
            items.push(BinaryInfo {
                name,
                arch,
                available: found.is_some(),
                size: found.map(|(length, _)| length),
                sha256: found.map(|(_, digest)| hex::encode(digest)),
                version: env!("CARGO_PKG_VERSION"),
            });
        }
    }
    Ok(Json(crate::List { items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_and_names_are_enums_never_paths() {
        assert_eq!(Arch::parse("arm64"), Some(Arch::Aarch64));
        assert_eq!(Arch::parse("amd64"), Some(Arch::X86_64));
        for bad in [
            "../x",
            "..%2f..%2fetc%2fpasswd",
            "%252e%252e%252f",
            "",
            "X86_64",
        ] {
            assert_eq!(Arch::parse(bad), None, "{bad}");
            assert_eq!(AgentName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_bootstrap_token_is_checked_in_constant_time_and_either_place() {
        let downloads = AgentDownloads::new(PathBuf::from("/nonexistent"), Some("s3cret".into()));
        let mut headers = HeaderMap::new();
        assert_eq!(
            downloads.check_token(&headers, None).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert!(downloads.check_token(&headers, Some("s3cret")).is_ok());
        assert!(downloads.check_token(&headers, Some("s3cre")).is_err());
        assert!(downloads
            .check_token(&headers, Some(&"x".repeat(10_000)))
            .is_err());
        headers.insert("x-agent-token", HeaderValue::from_static("s3cret"));
        assert!(downloads.check_token(&headers, None).is_ok());
        let open = AgentDownloads::new(PathBuf::from("/nonexistent"), Some(String::new()));
        assert!(
            open.check_token(&HeaderMap::new(), None).is_ok(),
            "empty means none"
        );
    }
}
