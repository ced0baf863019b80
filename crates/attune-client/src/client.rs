//! [`ApiClient`]: one method per endpoint of the server's HTTP API, plus
//! [`ApiClient::request`] for raw calls whose response the caller reads itself.

use crate::error::{root_cause, ClientError};
use attune_protocol::api::{
    ActionView, ContainerView, CreateExecutionRequest, CreateTokenRequest, CreatedToken,
    ExecutionStatus, ExecutionView, List, LogChunkView, PackView, PoolView, Role, TokenView,
    WhoAmI,
};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

/// Content type of pack uploads.
pub const TAR_CONTENT_TYPE: &str = "application/x-tar";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest wait the server accepts in `GET /api/v1/executions/{id}?wait_seconds=`.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How much longer than its wait a waiting request may take before it times out.
const WAIT_SLACK: Duration = Duration::from_secs(30);

/// Filters of `GET /api/v1/executions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionFilter {
    pub status: Option<ExecutionStatus>,
    pub action: Option<String>,
    pub limit: Option<u32>,
}

/// An answer of `/readyz` or `/livez`: its status and JSON body, whatever the status (a
/// server that is not ready answers 503 with its checks).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub status: u16,
    pub body: Value,
}

impl Health {
    /// True when the server answered 2xx (live, or ready).
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
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
        Self::build(base_url, None)
    }

    /// A client that sends `token` as `Authorization: Bearer` with every request (the header
    /// is marked sensitive, so it is never printed in debug output).
    pub fn with_token(base_url: &str, token: &str) -> Result<Self, ClientError> {
        Self::build(base_url, Some(token))
    }

    fn build(base_url: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: base_url.to_string(),
            reason,
        };
        let parsed = Url::parse(base_url).map_err(|error| invalid(error.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            return Err(invalid("must be an http:// URL".to_string()));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map_err(|_| ClientError::InvalidToken)?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|error| invalid(format!("build HTTP client: {}", root_cause(&error))))?;
        Ok(ApiClient {
            base_url: parsed,
            http,
        })
    }

    /// The API base URL, parsed (so with a trailing `/` when it has no path).
    pub fn base_url(&self) -> &str {
        self.base_url.as_str()
    }

    /// The underlying HTTP client (a handle on the same connection pool).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A raw request to `path_and_query` (e.g. `/api/v1/executions?limit=5`, `/readyz`) under
    /// the base URL, for callers that read the response themselves, whatever its status.
    pub fn request(&self, method: Method, path_and_query: &str) -> reqwest::RequestBuilder {
        let base = self.base_url.as_str().trim_end_matches('/');
        self.http.request(method, format!("{base}{path_and_query}"))
    }

    /// `<base>/<segments...>`, each segment percent-encoded.
    fn root_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `<base>/api/v1/<segments...>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut all = vec!["api", "v1"];
        all.extend_from_slice(segments);
        self.root_url(&all)
    }

    /// Sends the request and returns the answer's status and body, whatever the status.
    async fn fetch(
        &self,
        method: &Method,
        url: &Url,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), ClientError> {
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
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|error| ClientError::Request {
                method: method.to_string(),
                url: url.to_string(),
                reason: format!("read response body: {}", root_cause(&error)),
            })?;
        Ok((status, body.to_vec()))
    }

    /// Sends the request and decodes a 2xx answer's body as `T`; any other answer is an error.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let (status, body) = self.fetch(&method, &url, build).await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_response(
                method.as_str(),
                url.as_str(),
                status,
                &body,
            ));
        }
        decode(&method, &url, &body)
    }

    async fn get_list<T: DeserializeOwned>(&self, url: Url) -> Result<Vec<T>, ClientError> {
        let list: List<T> = self.send(Method::GET, url, |request| request).await?;
        Ok(list.items)
    }

    /// `GET /readyz`, whatever its status.
    pub async fn readyz(&self) -> Result<Health, ClientError> {
        self.health("readyz").await
    }

    /// `GET /livez`, whatever its status.
    pub async fn livez(&self) -> Result<Health, ClientError> {
        self.health("livez").await
    }

    async fn health(&self, endpoint: &str) -> Result<Health, ClientError> {
        let url = self.root_url(&[endpoint]);
        let (status, body) = self.fetch(&Method::GET, &url, |request| request).await?;
        match serde_json::from_slice(&body) {
            Ok(body) => Ok(Health { status, body }),
            Err(_) if !(200..300).contains(&status) => Err(ClientError::from_response(
                Method::GET.as_str(),
                url.as_str(),
                status,
                &body,
            )),
            Err(error) => Err(ClientError::Decode {
                method: Method::GET.to_string(),
                url: url.to_string(),
                reason: error.to_string(),
            }),
        }
    }

    /// `POST /api/v1/packs[?force=true]` with the pack's uncompressed tar.
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
        self.get_list(self.url(&["packs"])).await
    }

    /// `GET /api/v1/actions`.
    pub async fn list_actions(&self) -> Result<Vec<ActionView>, ClientError> {
        self.get_list(self.url(&["actions"])).await
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
    /// (at most 60 s) passes, whichever is first.
    pub async fn wait_execution(
        &self,
        execution_id: i64,
        wait: Duration,
    ) -> Result<ExecutionView, ClientError> {
        let id = execution_id.to_string();
        let wait = wait.min(MAX_WAIT);
        let wait_seconds = format!("{:.3}", wait.as_secs_f64());
        self.send(Method::GET, self.url(&["executions", &id]), |request| {
            request
                .query(&[("wait_seconds", wait_seconds.as_str())])
                .timeout(wait + WAIT_SLACK)
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
        self.get_list(url).await
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
        self.get_list(url).await
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

    /// `GET /api/v1/pools`: every live controller's warm pools.
    pub async fn list_pools(&self) -> Result<Vec<PoolView>, ClientError> {
        self.get_list(self.url(&["pools"])).await
    }

    /// `GET /api/v1/containers`: every live controller's managed containers.
    pub async fn list_containers(&self) -> Result<Vec<ContainerView>, ClientError> {
        self.get_list(self.url(&["containers"])).await
    }

    /// `GET /api/v1/workers`: every long-lived worker, online or not.
    pub async fn list_workers(
        &self,
    ) -> Result<Vec<attune_protocol::worker::WorkerView>, ClientError> {
        self.get_list(self.url(&["workers"])).await
    }

    /// `GET /api/v1/workers/{name}`.
    pub async fn get_worker(
        &self,
        name: &str,
    ) -> Result<attune_protocol::worker::WorkerView, ClientError> {
        self.send(Method::GET, self.url(&["workers", name]), |request| request)
            .await
    }

    /// `GET /api/v1/runtimes`: the runtime registry (templates, packs' runtimes, runtimes
    /// workers reported that nothing else covered).
    pub async fn list_runtimes(
        &self,
    ) -> Result<Vec<attune_protocol::api::RuntimeView>, ClientError> {
        self.get_list(self.url(&["runtimes"])).await
    }

    /// `GET /api/v1/whoami`: the token this client sends.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.send(Method::GET, self.url(&["whoami"]), |request| request)
            .await
    }

    /// `GET /api/v1/tokens` (admin).
    pub async fn list_tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        self.get_list(self.url(&["tokens"])).await
    }

    /// `POST /api/v1/tokens` (admin): the new token is in the answer, this once.
    pub async fn create_token(&self, name: &str, role: Role) -> Result<CreatedToken, ClientError> {
        let body = CreateTokenRequest {
            name: name.to_string(),
            role,
        };
        self.send(Method::POST, self.url(&["tokens"]), |request| {
            request.json(&body)
        })
        .await
    }

    /// `DELETE /api/v1/tokens/{id}` (admin).
    pub async fn revoke_token(&self, id: i64) -> Result<TokenView, ClientError> {
        let id = id.to_string();
        self.send(Method::DELETE, self.url(&["tokens", &id]), |request| {
            request
        })
        .await
    }
}

/// Decodes a success response's JSON body.
fn decode<T: DeserializeOwned>(method: &Method, url: &Url, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|error| ClientError::Decode {
        method: method.to_string(),
        url: url.to_string(),
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_protocol::api::ErrorBody;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// Answers one HTTP request on 127.0.0.1 with `status` and `body`; the task returns the
    /// request's head (request line and headers).
    async fn respond_once(status: &str, body: &str) -> (String, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("address"));
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut received = Vec::new();
            let mut buffer = [0u8; 4096];
            let head_end = loop {
                let read = stream.read(&mut buffer).await.expect("read request");
                assert!(read > 0, "connection closed mid-request");
                received.extend_from_slice(&buffer[..read]);
                if let Some(at) = received.windows(4).position(|window| window == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
            let content_length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            while received.len() < head_end + content_length {
                let read = stream.read(&mut buffer).await.expect("read body");
                assert!(read > 0, "connection closed mid-body");
                received.extend_from_slice(&buffer[..read]);
            }
            stream
                .write_all(response.as_bytes())
                .await
                .expect("write response");
            stream.shutdown().await.expect("close");
            head
        });
        (base_url, task)
    }

    fn request_line(head: &str) -> &str {
        head.lines().next().unwrap_or_default()
    }

    #[test]
    fn urls_are_built_under_the_base() {
        let client = ApiClient::new("http://127.0.0.1:8080").expect("valid URL");
        assert_eq!(
            client.url(&["actions", "hello.greet"]).as_str(),
            "http://127.0.0.1:8080/api/v1/actions/hello.greet"
        );
        assert_eq!(
            client.root_url(&["readyz"]).as_str(),
            "http://127.0.0.1:8080/readyz"
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
        let raw = client
            .request(Method::GET, "/api/v1/executions?limit=5")
            .build()
            .expect("raw request");
        assert_eq!(
            raw.url().as_str(),
            "http://example.test/attune/api/v1/executions?limit=5"
        );
    }

    #[test]
    fn invalid_base_urls_are_refused() {
        for url in ["127.0.0.1:8080", "not a url", "ftp://example.test"] {
            let error = ApiClient::new(url).expect_err(url);
            assert!(
                matches!(&error, ClientError::InvalidUrl { url: given, .. } if given == url),
                "{error:?}"
            );
            assert!(error.to_string().starts_with("invalid API URL"), "{error}");
        }
    }

    #[tokio::test]
    async fn error_answers_keep_the_status_and_error_body() {
        let (base_url, server) = respond_once(
            "422 Unprocessable Entity",
            r#"{"error":"invalid_parameters","detail":"parameter \"count\" is required"}"#,
        )
        .await;
        let client = ApiClient::new(&base_url).expect("client");
        let error = client
            .create_execution(&CreateExecutionRequest {
                action: "e2e.strict".to_string(),
                parameters: serde_json::Map::new(),
            })
            .await
            .expect_err("422 is an error");
        let head = server.await.expect("server");
        assert_eq!(request_line(&head), "POST /api/v1/executions HTTP/1.1");
        assert_eq!(error.status(), Some(422));
        assert_eq!(
            error.error_body(),
            Some(&ErrorBody {
                error: "invalid_parameters".to_string(),
                detail: "parameter \"count\" is required".to_string(),
            })
        );
        assert_eq!(
            error.to_string(),
            format!("POST {base_url}/api/v1/executions: server answered 422 invalid_parameters: parameter \"count\" is required")
        );
    }

    #[tokio::test]
    async fn error_answers_without_an_error_body_are_quoted() {
        let (base_url, server) = respond_once("502 Bad Gateway", "<html>bad gateway</html>").await;
        let client = ApiClient::new(&base_url).expect("client");
        let error = client.list_pools().await.expect_err("502 is an error");
        server.await.expect("server");
        assert_eq!(error.status(), Some(502));
        assert_eq!(error.error_body(), None);
        assert_eq!(
            error.to_string(),
            format!("GET {base_url}/api/v1/pools: server answered 502: <html>bad gateway</html>")
        );
    }

    #[tokio::test]
    async fn success_answers_of_the_wrong_shape_are_decode_errors() {
        let (base_url, server) = respond_once("200 OK", r#"{"id": "seven"}"#).await;
        let client = ApiClient::new(&base_url).expect("client");
        let error = client.get_execution(7).await.expect_err("not an execution");
        server.await.expect("server");
        assert!(matches!(error, ClientError::Decode { .. }), "{error:?}");
        assert_eq!(error.status(), None);
        assert!(
            error.to_string().starts_with(&format!(
                "GET {base_url}/api/v1/executions/7: unexpected response body: "
            )),
            "{error}"
        );
    }

    #[tokio::test]
    async fn waits_and_filters_go_into_the_query() {
        let execution = r#"{"id":7,"action":"hello.greet","status":"succeeded","requested_at":"2024-05-01T12:00:00Z"}"#;
        let (base_url, server) = respond_once("200 OK", execution).await;
        let client = ApiClient::new(&base_url).expect("client");
        let view = client
            .wait_execution(7, Duration::from_millis(1_500))
            .await
            .expect("execution");
        assert_eq!(view.status, ExecutionStatus::Succeeded);
        assert_eq!(
            request_line(&server.await.expect("server")),
            "GET /api/v1/executions/7?wait_seconds=1.500 HTTP/1.1"
        );

        let (base_url, server) = respond_once("200 OK", r#"{"items":[]}"#).await;
        let client = ApiClient::new(&base_url).expect("client");
        let filter = ExecutionFilter {
            status: Some(ExecutionStatus::Running),
            action: Some("hello.greet".to_string()),
            limit: Some(5),
        };
        assert!(client
            .list_executions(&filter)
            .await
            .expect("list")
            .is_empty());
        assert_eq!(
            request_line(&server.await.expect("server")),
            "GET /api/v1/executions?status=running&action=hello.greet&limit=5 HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn readiness_answers_whatever_the_status() {
        let (base_url, server) =
            respond_once("503 Service Unavailable", r#"{"status":"not_ready"}"#).await;
        let client = ApiClient::new(&base_url).expect("client");
        let health = client.readyz().await.expect("a 503 is an answer");
        assert_eq!(
            request_line(&server.await.expect("server")),
            "GET /readyz HTTP/1.1"
        );
        assert_eq!(health.status, 503);
        assert!(!health.is_ok());
        assert_eq!(health.body["status"], "not_ready");
    }

    #[tokio::test]
    async fn connection_failures_name_the_base_url() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("address"));
        drop(listener);
        let client = ApiClient::new(&base_url).expect("client");
        let error = client.livez().await.expect_err("nothing listens");
        let ClientError::Connect { url, reason } = &error else {
            panic!("expected a connect error: {error:?}");
        };
        assert_eq!(url, &base_url);
        assert!(!reason.is_empty());
        assert_eq!(error.status(), None);
    }
}
