//! Why a call to the server failed: [`ClientError`], and the mapping from an HTTP error
//! response (status and body) to it.

use attune_protocol::api::ErrorBody;

/// Longest part of a non-JSON error body quoted in messages.
const MAX_QUOTED_BODY_CHARS: usize = 300;

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API base URL does not parse, or is not an http(s) URL.
    #[error("invalid API URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The API token cannot be sent in a header (it holds a control character).
    #[error("the API token is not valid header text (a control character in it?)")]
    InvalidToken,

    /// Nothing answered at the API URL.
    #[error("connect to the attune server at {url}: {reason}")]
    Connect { url: String, reason: String },

    /// The server answered an error status with its JSON error body.
    #[error("{method} {url}: server answered {status} {}: {}", body.error, body.detail)]
    Api {
        method: String,
        url: String,
        status: u16,
        body: ErrorBody,
    },

    /// The server (or something in front of it) answered an error status with a body that is
    /// not an [`ErrorBody`]; `body` quotes its start.
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
    /// The HTTP status of an error the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::UnexpectedResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The server's error body (`{"error", "detail"}`), when it answered one.
    pub fn error_body(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Api { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The error an error response (`status` not 2xx) stands for: [`ClientError::Api`] when
    /// the body is an [`ErrorBody`], [`ClientError::UnexpectedResponse`] quoting the body (or
    /// the status's reason when it is empty) otherwise.
    pub fn from_response(method: &str, url: &str, status: u16, body: &[u8]) -> ClientError {
        if let Ok(error_body) = serde_json::from_slice::<ErrorBody>(body) {
            return ClientError::Api {
                method: method.to_string(),
                url: url.to_string(),
                status,
                body: error_body,
            };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let quoted = if text.is_empty() {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|status| status.canonical_reason())
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
            status,
            body: quoted,
        }
    }
}

/// The innermost message of an error's source chain (e.g. "Connection refused (os error 111)").
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:8080/api/v1/packs";

    #[test]
    fn error_bodies_keep_status_and_body() {
        let error = ClientError::from_response(
            "POST",
            URL,
            409,
            br#"{"error":"conflict","detail":"pack hello already exists"}"#,
        );
        assert_eq!(error.status(), Some(409));
        assert_eq!(
            error.error_body(),
            Some(&ErrorBody {
                error: "conflict".to_string(),
                detail: "pack hello already exists".to_string(),
            })
        );
        assert_eq!(
            error.to_string(),
            "POST http://127.0.0.1:8080/api/v1/packs: server answered 409 conflict: pack hello already exists"
        );
    }

    #[test]
    fn other_error_bodies_are_quoted() {
        let error = ClientError::from_response("GET", URL, 502, b"  <html>bad gateway</html>\n");
        assert_eq!(error.status(), Some(502));
        assert_eq!(error.error_body(), None);
        assert_eq!(
            error.to_string(),
            "GET http://127.0.0.1:8080/api/v1/packs: server answered 502: <html>bad gateway</html>"
        );

        // JSON that is not an error body is quoted too.
        let error = ClientError::from_response("GET", URL, 500, br#"{"message":"boom"}"#);
        assert!(
            matches!(&error, ClientError::UnexpectedResponse { body, .. } if body == r#"{"message":"boom"}"#),
            "{error:?}"
        );
    }

    #[test]
    fn empty_bodies_name_the_status() {
        let error = ClientError::from_response("GET", URL, 404, b"");
        assert!(
            error
                .to_string()
                .ends_with("server answered 404: Not Found"),
            "{error}"
        );
        let error = ClientError::from_response("GET", URL, 599, b"   ");
        assert!(
            error
                .to_string()
                .ends_with("server answered 599: no response body"),
            "{error}"
        );
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(1_000);
        let error = ClientError::from_response("GET", URL, 500, body.as_bytes());
        let ClientError::UnexpectedResponse { body: quoted, .. } = &error else {
            panic!("unexpected {error:?}");
        };
        assert_eq!(quoted.len(), MAX_QUOTED_BODY_CHARS + 3);
        assert!(quoted.ends_with("..."), "{quoted}");
    }

    #[test]
    fn errors_without_a_response_have_no_status() {
        let error = ClientError::Connect {
            url: "http://127.0.0.1:1".to_string(),
            reason: "Connection refused (os error 111)".to_string(),
        };
        assert_eq!(error.status(), None);
        assert_eq!(error.error_body(), None);
        assert_eq!(
            error.to_string(),
            "connect to the attune server at http://127.0.0.1:1: Connection refused (os error 111)"
        );
    }
}
