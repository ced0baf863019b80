//! A worker's HTTP client of the Attune API: enrollment (`POST /api/v1/workers`, retried while
//! the API cannot be reached or answers 5xx) and pack archives by digest
//! (`GET /api/v1/packs/{ref}/archive?sha256=<digest>`). It owns the worker's bearer token
//! ([`ApiToken`]), which no message, error or debug output ever shows.
//!
//! The client is `ureq` 3: blocking and small, with no async runtime of its own (every request
//! runs in `tokio::task::spawn_blocking`), and its rustls backend takes the ring provider the
//! agent already links for lapin, so the static musl binary gains neither aws-lc nor OpenSSL
//! nor a second TLS stack. `https://` trusts the bundled public roots (webpki-root-certs, which
//! lapin links too) plus the CA certificates of `ATTUNE_AGENT_MQ_CA_FILE`. reqwest would bring
//! hyper and tower into the agent for two requests, and the workspace's architecture test keeps
//! it to the client crates. Proxies from the environment are not used: a worker talks to its
//! own API directly.

use attune_protocol::worker::{WorkerEnrolled, WorkerEnrollment};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Largest enrollment answer or error body read.
const ANSWER_LIMIT_BYTES: u64 = 1024 * 1024;
/// Largest pack archive downloaded (the API's own default limit is 16 MiB).
pub const ARCHIVE_LIMIT_BYTES: u64 = 256 * 1024 * 1024;
/// First pause between two attempts; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Attempts at one pack download while the API is unreachable or answers 5xx.
const ARCHIVE_ATTEMPTS: u32 = 3;
/// Longest wait for one pack download.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest piece of a non-JSON error body quoted in a message.
const QUOTED_BODY_CHARS: usize = 200;

/// The worker's API token: compared and sent, never shown (`Debug` prints `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ApiToken(***)")
    }
}

/// One request to the API that did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer: connection refused, timeout, TLS failure, connection lost.
    #[error("{method} {url}: {message}")]
    Transport {
        method: &'static str,
        url: String,
        message: String,
    },
    /// An HTTP answer other than the expected one.
    #[error("{method} {url}: the API answered {status}{detail}")]
    Status {
        method: &'static str,
        url: String,
        /// The status with its reason, `401 Unauthorized`.
        status: String,
        code: u16,
        /// `: <error>: <message>` from the JSON error body (or the start of another body).
        detail: String,
    },
    /// The expected status with a body that cannot be used.
    #[error("{method} {url}: {message}")]
    Body {
        method: &'static str,
        url: String,
        message: String,
    },
    #[error("invalid api url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("trust the CA certificates for the api: {0}")]
    Ca(String),
}

impl ApiError {
    /// Whether trying again later may succeed: no answer, or a 5xx (408 and 429 too).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } => true,
            ApiError::Status { code, .. } => *code >= 500 || *code == 408 || *code == 429,
            ApiError::Body { .. } | ApiError::InvalidUrl { .. } | ApiError::Ca(_) => false,
        }
    }

    /// The HTTP status of an answer, when there was one.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Why a worker could not enroll.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The API answered and refused (401, 403, 409, 422, any other 4xx) or answered something
    /// unusable: trying again will not help.
    #[error("enroll worker {name}: {source}")]
    Refused { name: String, source: ApiError },
    /// The API stayed unreachable (or kept answering 5xx) for the whole connect timeout.
    #[error("enroll worker {name}: {source} (gave up after {seconds}s)")]
    GaveUp {
        name: String,
        source: ApiError,
        seconds: u64,
    },
}

/// The API as one worker talks to it.
#[derive(Clone)]
pub struct ApiClient {
    base_url: Arc<str>,
    token: ApiToken,
    agent: ureq::Agent,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ApiClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// An answer: status and body.
struct Answer {
    code: u16,
    body: Vec<u8>,
}

impl ApiClient {
    /// A client of the API at `base_url` (`http://` or `https://`, a trailing `/` ignored);
    /// `extra_ca_pem` holds CA certificates trusted besides the public roots.
    pub fn new(
        base_url: &str,
        token: ApiToken,
        extra_ca_pem: Option<&str>,
    ) -> Result<Self, ApiError> {
        let base_url = check_base_url(base_url)?;
        let mut roots: Vec<ureq::tls::Certificate<'static>> =
            webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
                .collect();
        if let Some(pem) = extra_ca_pem {
            let before = roots.len();
            for item in ureq::tls::parse_pem(pem.as_bytes()) {
                match item.map_err(|error| ApiError::Ca(error.to_string()))? {
                    ureq::tls::PemItem::Certificate(certificate) => roots.push(certificate),
                    _ => continue,
                }
            }
            if roots.len() == before {
                return Err(ApiError::Ca("no PEM certificate found".to_string()));
            }
        }
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            // A redirect would carry the token elsewhere: it is an answer like any other.
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("attune-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self {
            base_url: base_url.into(),
            token,
            agent,
        })
    }

    /// The API's base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Enrolls the worker: `POST /api/v1/workers`. A refusal (any 4xx) ends at once; while the
    /// API is unreachable or answers 5xx it is tried again (100 ms doubling to 2 s) until
    /// `patience` has passed.
    pub async fn enroll(
        &self,
        enrollment: &WorkerEnrollment,
        patience: Duration,
    ) -> Result<WorkerEnrolled, EnrollError> {
        let name = enrollment.name.clone();
        let url = format!("{}/api/v1/workers", self.base_url);
        let refused = |source: ApiError| EnrollError::Refused {
            name: name.clone(),
            source,
        };
        let body: Arc<[u8]> = serde_json::to_vec(enrollment)
            .map_err(|error| {
                refused(ApiError::Body {
                    method: "POST",
                    url: url.clone(),
                    message: format!("encode the enrollment: {error}"),
                })
            })?
            .into();
        let deadline = Instant::now() + patience;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            let request_url = url.clone();
            let request_body = Arc::clone(&body);
            let answered = self
                .blocking(move |client| client.post_json(&request_url, &request_body, timeout))
                .await;
            let error = match answered {
                Ok(answer) if answer.code == 201 || answer.code == 200 => {
                    return serde_json::from_slice::<WorkerEnrolled>(&answer.body).map_err(
                        |error| {
                            refused(ApiError::Body {
                                method: "POST",
                                url: url.clone(),
                                message: format!(
                                    "the API answered {} with a body that is not an enrollment: {error}",
                                    answer.code
                                ),
                            })
                        },
                    );
                }
                Ok(answer) => status_error("POST", &url, answer),
                Err(error) => error,
            };
            if !error.is_transient() {
                return Err(refused(error));
            }
            if Instant::now() + delay >= deadline {
                return Err(EnrollError::GaveUp {
                    name,
                    source: error,
                    seconds: patience.as_secs(),
                });
            }
            eprintln!(
                "attune-agent: enroll worker {name}: {error}; retrying in {} ms",
                delay.as_millis()
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// The stored archive of `pack_ref` whose sha256 is `digest`:
    /// `GET /api/v1/packs/{pack_ref}/archive?sha256={digest}` (at most
    /// [`ARCHIVE_LIMIT_BYTES`]; tried up to three times while the API is unreachable or
    /// answers 5xx). The caller checks the digest. `pack_ref` and `digest` must already be
    /// plain (letters, digits, `.`, `_`, `-`): they go into the URL as they are.
    pub async fn pack_archive(&self, pack_ref: &str, digest: &str) -> Result<Vec<u8>, ApiError> {
        let url = format!(
            "{}/api/v1/packs/{pack_ref}/archive?sha256={digest}",
            self.base_url
        );
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            let request_url = url.clone();
            let answered = self
                .blocking(move |client| {
                    client.get(&request_url, ARCHIVE_TIMEOUT, ARCHIVE_LIMIT_BYTES)
                })
                .await;
            let error = match answered {
                Ok(answer) if answer.code == 200 => return Ok(answer.body),
                Ok(answer) => status_error("GET", &url, answer),
                Err(error) => error,
            };
            if !error.is_transient() || attempt == ARCHIVE_ATTEMPTS {
                return Err(error);
            }
            eprintln!(
                "attune-agent: download pack {pack_ref}: {error}; retrying in {} ms",
                delay.as_millis()
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
            attempt += 1;
        }
    }

    /// Runs one blocking request off the async threads.
    async fn blocking<T, F>(&self, request: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&ApiClient) -> Result<T, ApiError> + Send + 'static,
    {
        let client = self.clone();
        match tokio::task::spawn_blocking(move || request(&client)).await {
            Ok(result) => result,
            Err(error) => Err(ApiError::Transport {
                method: "request",
                url: self.base_url.to_string(),
                message: format!("the request's thread failed: {error}"),
            }),
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    fn post_json(&self, url: &str, body: &[u8], timeout: Duration) -> Result<Answer, ApiError> {
        let response = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("authorization", self.bearer())
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .send(body)
            .map_err(|error| transport_error("POST", url, error))?;
        read_answer("POST", url, response, ANSWER_LIMIT_BYTES)
    }

    fn get(&self, url: &str, timeout: Duration, limit: u64) -> Result<Answer, ApiError> {
        let response = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("authorization", self.bearer())
            .call()
            .map_err(|error| transport_error("GET", url, error))?;
        read_answer("GET", url, response, limit)
    }
}

/// `url` without a trailing `/`, when it is an `http://` or `https://` URL with a host.
pub fn check_base_url(url: &str) -> Result<String, ApiError> {
    let invalid = |reason: &str| ApiError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| invalid("expected an http:// or https:// url"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(invalid("no host"));
    }
    if authority.contains('@') {
        return Err(invalid(
            "credentials do not belong in the url: the worker sends its token",
        ));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid(
            "a query or fragment does not belong in the base url",
        ));
    }
    if trimmed.parse::<ureq::http::Uri>().is_err() {
        return Err(invalid("not a valid url"));
    }
    Ok(trimmed.to_string())
}

fn transport_error(method: &'static str, url: &str, error: ureq::Error) -> ApiError {
    ApiError::Transport {
        method,
        url: url.to_string(),
        message: error.to_string(),
    }
}

fn read_answer(
    method: &'static str,
    url: &str,
    mut response: ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<Answer, ApiError> {
    let code = response.status().as_u16();
    // An error body is read within the answer limit; a body over it is cut, not an error.
    let body_limit = if (200..300).contains(&code) {
        limit
    } else {
        ANSWER_LIMIT_BYTES
    };
    let body = response
        .body_mut()
        .with_config()
        .limit(body_limit)
        .read_to_vec();
    match body {
        Ok(body) => Ok(Answer { code, body }),
        Err(ureq::Error::BodyExceedsLimit(size)) if (200..300).contains(&code) => {
            Err(ApiError::Body {
                method,
                url: url.to_string(),
                message: format!("the answer is larger than {size} bytes"),
            })
        }
        Err(_) if !(200..300).contains(&code) => Ok(Answer {
            code,
            body: Vec::new(),
        }),
        Err(error) => Err(transport_error(method, url, error)),
    }
}

/// The error for an answer with an unexpected status, quoting the API's `error` and `message`.
fn status_error(method: &'static str, url: &str, answer: Answer) -> ApiError {
    let status = match ureq::http::StatusCode::from_u16(answer.code) {
        Ok(code) => match code.canonical_reason() {
            Some(reason) => format!("{} {reason}", answer.code),
            None => answer.code.to_string(),
        },
        Err(_) => answer.code.to_string(),
    };
    ApiError::Status {
        method,
        url: url.to_string(),
        status,
        code: answer.code,
        detail: error_detail(&answer.body),
    }
}

/// `: <error>: <message>` from an error body `{"error": ..., "message": ...}` (whichever of
/// them it has), or `: <the body's start>` when it is not such JSON; empty for an empty body.
pub fn error_detail(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(body) {
        let parts: Vec<&str> = ["error", "message"]
            .iter()
            .filter_map(|field| object.get(*field).and_then(serde_json::Value::as_str))
            .filter(|text| !text.trim().is_empty())
            .collect();
        if !parts.is_empty() {
            return format!(": {}", parts.join(": "));
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut quoted: String = text.chars().take(QUOTED_BODY_CHARS).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    format!(": {quoted}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_quoted_by_their_error_and_message() {
        assert_eq!(
            error_detail(br#"{"error": "unauthorized", "message": "token is not valid"}"#),
            ": unauthorized: token is not valid"
        );
        assert_eq!(
            error_detail(br#"{"message": "name is taken"}"#),
            ": name is taken"
        );
        assert_eq!(error_detail(b"  "), "");
        assert_eq!(
            error_detail(b"<html>bad gateway</html>"),
            ": <html>bad gateway</html>"
        );
        let long = "x".repeat(500);
        assert_eq!(
            error_detail(long.as_bytes()).chars().count(),
            2 + QUOTED_BODY_CHARS + 1
        );
    }

    #[test]
    fn base_urls_are_http_or_https_with_a_host() {
        assert_eq!(
            check_base_url("http://attune:8080/").unwrap(),
            "http://attune:8080"
        );
        assert_eq!(
            check_base_url("https://api.example.com/attune").unwrap(),
            "https://api.example.com/attune"
        );
        for bad in [
            "ftp://x",
            "attune:8080",
            "http://",
            "http://user:pw@host",
            "http://host/?a=b",
        ] {
            let error = check_base_url(bad).unwrap_err().to_string();
            assert!(error.starts_with("invalid api url"), "{bad}: {error}");
            assert!(!error.contains("pw@") || bad.contains("pw@"), "{error}");
        }
    }

    #[test]
    fn tokens_never_show_in_debug_output() {
        let token = ApiToken::new("s3cr3t");
        assert_eq!(format!("{token:?}"), "ApiToken(***)");
        let client = ApiClient::new("http://127.0.0.1:1", token, None).unwrap();
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }

    #[test]
    fn statuses_tell_transient_from_final() {
        let status = |code: u16| ApiError::Status {
            method: "POST",
            url: "u".into(),
            status: code.to_string(),
            code,
            detail: String::new(),
        };
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(status(code).is_transient(), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!status(code).is_transient(), "{code}");
        }
    }
}
