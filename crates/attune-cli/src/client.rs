//! A typed client of the Attune server's HTTP API, one method per endpoint.

use attune_protocol::api::{
    ActionView, ContainerView, CreateExecutionRequest, ErrorBody, ExecutionStatus, ExecutionView,
    List, LogChunkView, PackView, PoolView,
};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Content type of pack uploads.
pub const TAR_CONTENT_TYPE: &str = "application/x-tar";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest part of a non-JSON error body quoted in messages.
const MAX_QUOTED_BODY_CHARS: usize = 300;

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API base URL does not parse.
    #[error("invalid API URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// Nothing answered at the API URL.
    #[error(
        "could not connect to the attune server at {url} ({reason}); is it running? start it, or point --api-url / ATTUNE_API_URL at it"
    )]
    Connect { url: String, reason: String },

    /// The server answered with an error body.
    #[error("{detail}")]
    Api {
        status: u16,
        error: String,
        detail: String,
    },

    /// The server answered with an error that is not an [`ErrorBody`].
    #[error("{method} {url}: server answered {status}: {body}")]
    UnexpectedResponse {
        method: String,
        url: String,
        status: u16,
        body: String,
    },

    /// The request failed after connecting (timeout, broken connection).
    #[error("{method} {url}: {reason}")]
    Request {
        method: String,
        url: String,
        reason: String,
    },

    /// A success response did not have the expected shape.
    #[error("{method} {url}: unexpected response body: {reason}")]
    Decode {
        method: String,
        url: String,
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of an error answered by the server.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::UnexpectedResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// Filters of `GET /api/v1/executions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionFilter {
    pub status: Option<ExecutionStatus>,
    pub action: Option<String>,
    pub limit: Option<u32>,
}

/// The innermost message of an error's source chain (e.g. "Connection refused (os error 111)").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// A client of one Attune server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base_url: Url,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the API at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: base_url.to_string(),
            reason,
        };
        let parsed = Url::parse(base_url).map_err(|error| invalid(error.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            return Err(invalid("must be an http:// URL".to_string()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|error| invalid(format!("build HTTP client: {}", root_cause(&error))))?;
        Ok(ApiClient {
            base_url: parsed,
            http,
        })
    }

    /// The API base URL as given.
    pub fn base_url(&self) -> &str {
        self.base_url.as_str()
    }

    /// `<base>/api/v1/<segments...>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let request = build(self.http.request(method.clone(), url.clone()));
        let response = request.send().await.map_err(|error| {
            if error.is_connect() {
                ClientError::Connect {
                    url: self.base_url.as_str().trim_end_matches('/').to_string(),
                    reason: root_cause(&error),
                }
            } else {
                ClientError::Request {
                    method: method.to_string(),
                    url: url.to_string(),
                    reason: root_cause(&error),
                }
            }
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| ClientError::Request {
                method: method.to_string(),
                url: url.to_string(),
                reason: format!("read response body: {}", root_cause(&error)),
            })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|error| ClientError::Decode {
                method: method.to_string(),
                url: url.to_string(),
                reason: error.to_string(),
            });
        }
        Err(error_from_response(&method, &url, status, &body))
    }

    /// `POST /api/v1/packs[?force=true]` with the pack's tar.
    pub async fn register_pack(
        &self,
        archive: Vec<u8>,
        force: bool,
    ) -> Result<PackView, ClientError> {
        let mut url = self.url(&["packs"]);
        if force {
            url.query_pairs_mut().append_pair("force", "true");
        }
        self.send(Method::POST, url, |request| {
            request
                .header(reqwest::header::CONTENT_TYPE, TAR_CONTENT_TYPE)
                .body(archive)
        })
        .await
    }

    /// `GET /api/v1/packs`.
    pub async fn list_packs(&self) -> Result<Vec<PackView>, ClientError> {
        let list: List<PackView> = self
            .send(Method::GET, self.url(&["packs"]), |request| request)
            .await?;
        Ok(list.items)
    }

    /// `GET /api/v1/pools`.
    pub async fn list_pools(&self) -> Result<Vec<PoolView>, ClientError> {
        let list: List<PoolView> = self
            .send(Method::GET, self.url(&["pools"]), |request| request)
            .await?;
        Ok(list.items)
    }

    /// `GET /api/v1/containers`.
    pub async fn list_containers(&self) -> Result<Vec<ContainerView>, ClientError> {
        let list: List<ContainerView> = self
            .send(Method::GET, self.url(&["containers"]), |request| request)
            .await?;
        Ok(list.items)
    }

    /// `GET /api/v1/actions`.
    pub async fn list_actions(&self) -> Result<Vec<ActionView>, ClientError> {
        let list: List<ActionView> = self
            .send(Method::GET, self.url(&["actions"]), |request| request)
            .await?;
        Ok(list.items)
    }

    /// `GET /api/v1/actions/{ref}`.
    pub async fn get_action(&self, action_ref: &str) -> Result<ActionView, ClientError> {
        self.send(Method::GET, self.url(&["actions", action_ref]), |request| {
            request
        })
        .await
    }

    /// `POST /api/v1/executions`.
    pub async fn create_execution(
        &self,
        request_body: &CreateExecutionRequest,
    ) -> Result<ExecutionView, ClientError> {
        self.send(Method::POST, self.url(&["executions"]), |request| {
            request.json(request_body)
        })
        .await
    }

    /// `GET /api/v1/executions/{id}`.
    pub async fn get_execution(&self, execution_id: i64) -> Result<ExecutionView, ClientError> {
        let id = execution_id.to_string();
        self.send(Method::GET, self.url(&["executions", &id]), |request| {
            request
        })
        .await
    }

    /// `GET /api/v1/executions/{id}?wait_seconds=`: answers when the execution ends or `wait`
    /// passes, whichever is first.
    pub async fn wait_execution(
        &self,
        execution_id: i64,
        wait: Duration,
    ) -> Result<ExecutionView, ClientError> {
        let id = execution_id.to_string();
        let wait_seconds = format!("{:.3}", wait.as_secs_f64().min(60.0));
        self.send(Method::GET, self.url(&["executions", &id]), |request| {
            request
                .query(&[("wait_seconds", wait_seconds.as_str())])
                .timeout(wait + Duration::from_secs(30))
        })
        .await
    }

    /// `GET /api/v1/executions?status=&action=&limit=`, newest first.
    pub async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Vec<ExecutionView>, ClientError> {
        let mut url = self.url(&["executions"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(status) = filter.status {
                query.append_pair("status", status.as_str());
            }
            if let Some(action) = &filter.action {
                query.append_pair("action", action);
            }
            if let Some(limit) = filter.limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let list: List<ExecutionView> = self.send(Method::GET, url, |request| request).await?;
        Ok(list.items)
    }

    /// `GET /api/v1/executions/{id}/logs[?after_seq=N]`: the chunks with `seq > after_seq`.
    pub async fn execution_logs(
        &self,
        execution_id: i64,
        after_seq: Option<u64>,
    ) -> Result<Vec<LogChunkView>, ClientError> {
        let id = execution_id.to_string();
        let mut url = self.url(&["executions", &id, "logs"]);
        if let Some(after_seq) = after_seq {
            url.query_pairs_mut()
                .append_pair("after_seq", &after_seq.to_string());
        }
        let list: List<LogChunkView> = self.send(Method::GET, url, |request| request).await?;
        Ok(list.items)
    }

    /// `POST /api/v1/executions/{id}/cancel`.
    pub async fn cancel_execution(&self, execution_id: i64) -> Result<ExecutionView, ClientError> {
        let id = execution_id.to_string();
        self.send(
            Method::POST,
            self.url(&["executions", &id, "cancel"]),
            |request| request,
        )
        .await
    }
}

fn error_from_response(method: &Method, url: &Url, status: StatusCode, body: &[u8]) -> ClientError {
    if let Ok(error_body) = serde_json::from_slice::<ErrorBody>(body) {
        let detail = if error_body.detail.is_empty() {
            error_body.error.clone()
        } else {
            error_body.detail
        };
        return ClientError::Api {
            status: status.as_u16(),
            error: error_body.error,
            detail,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let quoted = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no response body")
            .to_string()
    } else if text.chars().count() > MAX_QUOTED_BODY_CHARS {
        format!(
            "{}...",
            text.chars().take(MAX_QUOTED_BODY_CHARS).collect::<String>()
        )
    } else {
        text.to_string()
    };
    ClientError::UnexpectedResponse {
        method: method.to_string(),
        url: url.to_string(),
        status: status.as_u16(),
        body: quoted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_under_the_base() {
        let client = ApiClient::new("http://127.0.0.1:8080").expect("valid URL");
        assert_eq!(
            client.url(&["actions", "hello.greet"]).as_str(),
            "http://127.0.0.1:8080/api/v1/actions/hello.greet"
        );
        let client = ApiClient::new("http://example.test/attune/").expect("valid URL");
        assert_eq!(
            client.url(&["executions", "7", "logs"]).as_str(),
            "http://example.test/attune/api/v1/executions/7/logs"
        );
        assert_eq!(
            client.url(&["actions", "a/b?c"]).as_str(),
            "http://example.test/attune/api/v1/actions/a%2Fb%3Fc"
        );
    }

    #[test]
    fn invalid_base_urls_are_refused() {
        for url in ["127.0.0.1:8080", "not a url", "ftp://example.test"] {
            let error = ApiClient::new(url).expect_err(url);
            assert!(error.to_string().starts_with("invalid API URL"), "{error}");
        }
    }

    #[test]
    fn error_bodies_become_api_errors() {
        let url = Url::parse("http://127.0.0.1:8080/api/v1/packs").expect("url");
        let error = error_from_response(
            &Method::POST,
            &url,
            StatusCode::CONFLICT,
            br#"{"error":"conflict","detail":"pack hello already exists"}"#,
        );
        assert_eq!(error.to_string(), "pack hello already exists");
        assert_eq!(error.status(), Some(409));

        let error = error_from_response(
            &Method::GET,
            &url,
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
        );
        assert_eq!(
            error.to_string(),
            "GET http://127.0.0.1:8080/api/v1/packs: server answered 502: <html>bad gateway</html>"
        );
        let error = error_from_response(&Method::GET, &url, StatusCode::NOT_FOUND, b"");
        assert!(
            error
                .to_string()
                .ends_with("server answered 404: Not Found"),
            "{error}"
        );
    }
}
