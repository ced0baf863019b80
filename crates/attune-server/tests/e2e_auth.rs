//! Who may call the API, against a real server: every route but the health ones refuses a
//! missing, malformed, unknown or revoked token (401, JSON body, `WWW-Authenticate: Bearer`);
//! each role may do its work and is refused more (403); tokens are listed and revoked by id and
//! kept only as hashes; the first start writes one admin token (mode 0600), a second server on
//! the same database none.

use attune_protocol::api::{ErrorBody, Role};
use attune_testkit::{admin_token_file, psql, TestClient, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Every route with a request a caller of each role could send.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/packs"),
    ("POST", "/api/v1/packs"),
    ("GET", "/api/v1/actions"),
    ("GET", "/api/v1/actions/hello.greet"),
    ("GET", "/api/v1/executions"),
    ("POST", "/api/v1/executions"),
    ("GET", "/api/v1/executions/1"),
    ("GET", "/api/v1/executions/1/logs"),
    ("POST", "/api/v1/executions/1/cancel"),
    ("GET", "/api/v1/pools"),
    ("GET", "/api/v1/containers"),
    ("GET", "/api/v1/whoami"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/1"),
];

async fn call(client: &TestClient, method: &str, path: &str) -> reqwest::Response {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    client
        .http
        .request(method, client.url(path))
        .json(&json!({}))
        .send()
        .await
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

async fn refused(response: reqwest::Response, status: StatusCode, what: &str) -> ErrorBody {
    assert_eq!(response.status(), status, "{what}");
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|value| value.to_str().unwrap()),
            Some("Bearer"),
            "{what}"
        );
    }
    response
        .json()
        .await
        .unwrap_or_else(|error| panic!("{what}: JSON error body: {error}"))
}

fn hello_pack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packs/hello")
}

#[tokio::test]
async fn every_route_but_health_refuses_a_missing_malformed_unknown_or_revoked_token() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let admin = TestClient::new(&server);
    let anonymous = TestClient::for_url(&server.base_url, None);
    for path in ["/livez", "/readyz"] {
        let answer = anonymous
            .http
            .get(anonymous.url(path))
            .send()
            .await
            .unwrap();
        assert_ne!(
            answer.status(),
            StatusCode::UNAUTHORIZED,
            "{path} is public"
        );
    }
    for (method, path) in ROUTES {
        let body = refused(
            call(&anonymous, method, path).await,
            StatusCode::UNAUTHORIZED,
            path,
        )
        .await;
        assert_eq!(body.error, "unauthorized");
        assert!(
            body.detail.contains("Authorization: Bearer"),
            "{path}: {body:?}"
        );
    }
    let malformed = anonymous
        .http
        .get(anonymous.url("/api/v1/packs"))
        .header("authorization", format!("Basic {}", server.admin_token))
        .send()
        .await
        .unwrap();
    let body = refused(malformed, StatusCode::UNAUTHORIZED, "basic auth").await;
    assert!(body.detail.contains("Bearer <token>"), "{body:?}");
    let forged = format!("attune_{}", "0".repeat(64));
    let stranger = TestClient::for_url(&server.base_url, Some(&forged));
    for (method, path) in ROUTES {
        let body = refused(
            call(&stranger, method, path).await,
            StatusCode::UNAUTHORIZED,
            path,
        )
        .await;
        assert!(
            body.detail.contains("not valid (unknown or revoked)"),
            "{body:?}"
        );
    }

    // A token works until it is revoked, then at once no more.
    let created = admin
        .api()
        .create_token("short-lived", Role::Viewer)
        .await
        .unwrap();
    let holder = TestClient::for_url(&server.base_url, Some(&created.token));
    assert_eq!(holder.api().whoami().await.unwrap().name, "short-lived");
    let revoked = admin.api().revoke_token(created.view.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    let body = refused(
        call(&holder, "GET", "/api/v1/packs").await,
        StatusCode::UNAUTHORIZED,
        "revoked",
    )
    .await;
    assert!(body.detail.contains("revoked"), "{body:?}");
    // Still listed, never with the token itself.
    let listed: serde_json::Value = admin.get_json("/api/v1/tokens").await;
    let text = listed.to_string();
    assert!(
        text.contains("short-lived") && !text.contains(&created.token),
        "{text}"
    );
    assert!(!text.contains(&server.admin_token), "{text}");
    let missing = admin
        .api()
        .revoke_token(9_999)
        .await
        .unwrap_err()
        .to_string();
    assert!(missing.contains("token 9999 not found"), "{missing}");
    server.finish().await;
}

#[tokio::test]
async fn each_role_does_its_work_and_is_refused_more() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let admin = TestClient::new(&server);
    let mut clients = Vec::new();
    for role in [Role::Viewer, Role::Executor, Role::Editor] {
        let created = admin
            .api()
            .create_token(&format!("a {role}"), role)
            .await
            .unwrap();
        assert_eq!(created.view.role, role);
        clients.push(TestClient::for_url(&server.base_url, Some(&created.token)));
    }
    let [viewer, executor, editor] = <[TestClient; 3]>::try_from(clients).ok().unwrap();

    // Packs: an editor registers, the others may not.
    let archive = attune_pack::build_pack_archive(hello_pack()).unwrap();
    for (client, role) in [(&viewer, "viewer"), (&executor, "executor")] {
        let answer = client.upload(archive.clone(), true).await;
        let body = refused(answer, StatusCode::FORBIDDEN, role).await;
        assert_eq!(body.error, "forbidden");
        assert!(
            body.detail.contains(&format!("has the role {role}"))
                && body
                    .detail
                    .contains("POST /api/v1/packs needs the role editor"),
            "{body:?}"
        );
    }
    editor.register_dir(hello_pack()).await;

    // Executions: an executor (and above) runs and cancels, a viewer reads.
    let answer = viewer.submit("hello.greet", json!({"name": "Ada"})).await;
    refused(answer, StatusCode::FORBIDDEN, "viewer runs").await;
    let ran = executor
        .run_succeeded("hello.greet", json!({"name": "Ada"}))
        .await;
    let seen = viewer.execution(ran.id).await;
    assert_eq!(seen.stdout, ran.stdout);
    let answer = viewer.cancel(ran.id).await;
    refused(answer, StatusCode::FORBIDDEN, "viewer cancels").await;
    assert_eq!(
        executor.cancel(ran.id).await.status(),
        StatusCode::CONFLICT,
        "already ended"
    );
    editor
        .run_succeeded("hello.greet", json!({"name": "Bo"}))
        .await;

    // Tokens: only an admin.
    for (client, role) in [
        (&viewer, "viewer"),
        (&executor, "executor"),
        (&editor, "editor"),
    ] {
        for (method, path) in [
            ("GET", "/api/v1/tokens"),
            ("POST", "/api/v1/tokens"),
            ("DELETE", "/api/v1/tokens/1"),
        ] {
            let body = refused(
                call(client, method, path).await,
                StatusCode::FORBIDDEN,
                role,
            )
            .await;
            assert!(body.detail.contains("needs the role admin"), "{body:?}");
        }
    }
    let me = viewer.api().whoami().await.unwrap();
    assert_eq!((me.name.as_str(), me.role), ("a viewer", Role::Viewer));
    let tokens = admin.api().list_tokens().await.unwrap();
    assert_eq!(
        tokens.len(),
        4,
        "the first admin and three more: {tokens:?}"
    );
    server.finish().await;
}

#[tokio::test]
async fn the_first_start_writes_one_admin_token_private_and_the_database_keeps_only_hashes() {
    let first = TestServer::start(&[]).await.expect("start test server");
    let path = admin_token_file(&first.database);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
    let written = std::fs::read(&path).unwrap();
    let second = TestServer::start_sharing(&first, &[])
        .await
        .expect("second server");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        written,
        "a second start writes nothing"
    );
    assert_eq!(second.admin_token, first.admin_token);
    let admin = TestClient::new(&first);
    let tokens = admin.api().list_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(
        (tokens[0].name.as_str(), tokens[0].role),
        ("first admin", Role::Admin)
    );

    // The database holds the token's sha256, nowhere its text.
    use sha2::Digest;
    let expected = hex(&sha2::Sha256::digest(first.admin_token.as_bytes()));
    let stored = psql(
        &first.database.url,
        "SELECT encode(token_sha256, 'hex') FROM api_tokens",
    );
    assert_eq!(stored.trim(), expected);
    let dump = psql(&first.database.url, "SELECT t::text FROM api_tokens t");
    assert!(
        !dump.contains(first.admin_token.trim_start_matches("attune_")),
        "{dump}"
    );
    second.stop().await.unwrap();
    first.finish().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
