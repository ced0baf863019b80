//! How the CLI talks to the server: the shared typed client (`attune-client`), and the CLI's
//! own wording of its errors.

pub use attune_client::{ApiClient, ClientError, ExecutionFilter};

/// The message `attune` prints (after `error: `) for a failed call: the server's own detail
/// for an error it answered, a hint at `--api-url` when nothing answered, and the client's
/// message otherwise.
pub fn error_message(error: &ClientError) -> String {
    match error {
        ClientError::Connect { url, reason } => format!(
            "could not connect to the attune server at {url} ({reason}); is it running? start it, or point --api-url / ATTUNE_API_URL at it"
        ),
        ClientError::Api { body, .. } if body.detail.is_empty() => body.error.clone(),
        ClientError::Api { body, .. } => body.detail.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_read_as_their_detail() {
        let error = ClientError::from_response(
            "POST",
            "http://127.0.0.1:8080/api/v1/packs",
            409,
            br#"{"error":"conflict","detail":"pack hello already exists"}"#,
        );
        assert_eq!(error_message(&error), "pack hello already exists");
        let error = ClientError::from_response(
            "GET",
            "http://127.0.0.1:8080/api/v1/pools",
            500,
            br#"{"error":"internal","detail":""}"#,
        );
        assert_eq!(error_message(&error), "internal");
    }

    #[test]
    fn other_errors_keep_the_clients_message() {
        let error = ClientError::from_response(
            "GET",
            "http://127.0.0.1:8080/api/v1/packs",
            502,
            b"<html>bad gateway</html>",
        );
        assert_eq!(
            error_message(&error),
            "GET http://127.0.0.1:8080/api/v1/packs: server answered 502: <html>bad gateway</html>"
        );
        let error = ApiClient::new("ftp://example.test").expect_err("not http");
        assert!(
            error_message(&error).starts_with("invalid API URL"),
            "{error}"
        );
    }

    #[test]
    fn connection_failures_point_at_the_api_url() {
        let error = ClientError::Connect {
            url: "http://127.0.0.1:9".to_string(),
            reason: "Connection refused (os error 111)".to_string(),
        };
        assert_eq!(
            error_message(&error),
            "could not connect to the attune server at http://127.0.0.1:9 (Connection refused (os error 111)); is it running? start it, or point --api-url / ATTUNE_API_URL at it"
        );
    }
}
