//! Transient engine errors, end to end: a flaky proxy in front of the real engine's socket
//! fails the first create of every container (after the engine made it: the response is
//! "lost") and the first start of every container with a 500. Executions still succeed, no
//! container is left or made twice, and a permanent error (an image that is not there and
//! cannot be pulled) fails at once, without retries.
//!
//! The proxy adds `Connection: close` to every request it forwards, so each request arrives
//! on a connection of its own and none slips past it on a pooled connection.

use attune_protocol::api::ExecutionStatus;
use attune_testkit::{TestClient, TestServer};
use serde_json::json;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const ENGINE_SOCKET: &str = "/var/run/docker.sock";

/// What the proxy did.
#[derive(Default)]
struct Faults {
    faulted_creates: HashSet<String>,
    faulted_starts: HashSet<String>,
    creates: usize,
    image_pulls: usize,
}

struct FlakyEngine {
    socket: PathBuf,
    faults: Arc<Mutex<Faults>>,
    task: tokio::task::JoinHandle<()>,
}

impl FlakyEngine {
    fn start() -> FlakyEngine {
        let socket = std::env::temp_dir().join(format!(
            "attune-flaky-engine-{}-{}.sock",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        let listener = UnixListener::bind(&socket).expect("bind the proxy socket");
        let faults = Arc::new(Mutex::new(Faults::default()));
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let faults = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(client, faults).await;
                });
            }
        });
        FlakyEngine {
            socket,
            faults,
            task,
        }
    }

    fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for FlakyEngine {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Reads one request's head (up to the blank line) and as much body as Content-Length says.
async fn read_request(client: &mut UnixStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break position + 4;
        }
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Ok(Some((head, buffer)))
}

/// The same request with `Connection: close`, so the engine ends the connection after it.
fn closing(head: &str, whole: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n\r\n")
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let mut request = lines.join("\r\n").into_bytes();
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(&whole[head.len()..]);
    request
}

/// A 500 answer, as the engine gives for a failure of its own.
fn fault() -> Vec<u8> {
    let body = r#"{"message":"injected transient fault"}"#;
    format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn serve(mut client: UnixStream, faults: Arc<Mutex<Faults>>) -> std::io::Result<()> {
    let Some((head, whole)) = read_request(&mut client).await? else {
        return Ok(());
    };
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let is_post = request_line.starts_with("POST ");
    let create_name = (is_post && path.contains("/containers/create"))
        .then(|| {
            path.split_once("name=")
                .map(|(_, rest)| rest.split('&').next().unwrap_or_default().to_string())
        })
        .flatten();
    let start_id = (is_post && path.ends_with("/start"))
        .then(|| {
            path.trim_end_matches("/start")
                .rsplit('/')
                .next()
                .map(str::to_string)
        })
        .flatten();
    let (fault_create, fault_start) = {
        let mut faults = faults.lock().unwrap();
        if is_post && path.contains("/images/create") {
            faults.image_pulls += 1;
        }
        if create_name.is_some() {
            faults.creates += 1;
        }
        (
            create_name
                .clone()
                .is_some_and(|name| faults.faulted_creates.insert(name)),
            start_id
                .clone()
                .is_some_and(|id| faults.faulted_starts.insert(id)),
        )
    };
    if fault_start {
        client.write_all(&fault()).await?;
        return client.shutdown().await;
    }
    let mut engine = UnixStream::connect(ENGINE_SOCKET).await?;
    engine.write_all(&closing(&head, &whole)).await?;
    if fault_create {
        // The engine creates the container; its answer is lost on the way back.
        let mut discarded = Vec::new();
        engine.read_to_end(&mut discarded).await?;
        client.write_all(&fault()).await?;
        return client.shutdown().await;
    }
    let (mut client_read, mut client_write) = client.into_split();
    let (mut engine_read, mut engine_write) = engine.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_read, &mut engine_write).await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut engine_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
    Ok(())
}

fn pack_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/packs")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_succeed_through_transient_engine_errors_and_permanent_ones_fail_at_once() {
    let flaky = FlakyEngine::start();
    let server = TestServer::builder()
        .docker_host(&flaky.docker_host())
        .start()
        .await
        .expect("start a server behind the flaky engine");
    let _containers = server.container_guard();
    let client = TestClient::new(&server);
    client.register_dir(pack_dir("e2e")).await;
    client
        .register_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packs/hello"))
        .await;

    let mut ids = Vec::new();
    for round in 0..3 {
        ids.push(
            client
                .submit_ok("hello.greet", json!({"name": format!("flaky {round}")}))
                .await,
        );
    }
    for id in ids {
        let execution = client.wait_terminal(id).await;
        assert_eq!(
            execution.status,
            ExecutionStatus::Succeeded,
            "through a flaky engine: {execution:?}"
        );
    }
    {
        let faults = flaky.faults.lock().unwrap();
        assert!(
            faults.faulted_creates.len() >= 3 && faults.faulted_starts.len() >= 3,
            "every container's first create and start failed: {} creates, {} starts faulted",
            faults.faulted_creates.len(),
            faults.faulted_starts.len()
        );
    }

    // An image that is absent and may not be pulled is a permanent error: not retried.
    let pulls_before = flaky.faults.lock().unwrap().image_pulls;
    let missing = client.run("e2e.missing_image", json!({})).await;
    assert_eq!(missing.status, ExecutionStatus::Failed, "{missing:?}");
    let pulls = flaky.faults.lock().unwrap().image_pulls - pulls_before;
    assert!(
        pulls <= 1,
        "a permanent pull failure is tried once, not {pulls} times"
    );

    server.finish().await;
}
