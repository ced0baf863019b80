//! What the worker tests share: a tiny HTTP/1.1 server on 127.0.0.1:0 (plain, or HTTPS with
//! the test CA of `fixtures/tls`) that records every request and answers from a handler, pack
//! archives built by hand (good ones, and ones with `..`, absolute paths or links that
//! `tar::Builder` would refuse to write), and sha256 hex.

#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The token the tests' workers send.
pub const TOKEN: &str = "worker-test-token-5f3a";

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(existing, _)| existing == name)
            .map(|(_, value)| value.as_str())
    }
}

/// An answer: status line, content type and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
        }
    }

    pub fn bytes(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: "application/x-tar",
            body,
        }
    }
}

type Handler = dyn Fn(&Request, usize) -> Reply + Send + Sync;

/// A server answering every request with `handler(request, index of the request)`.
pub struct TestServer {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Stop,
}

enum Stop {
    Task(tokio::task::JoinHandle<()>),
    /// The TLS server's thread: the flag, then a connection to wake its accept.
    Thread(Arc<AtomicBool>, std::net::SocketAddr),
}

/// The test CA (PEM) the HTTPS server's certificate is signed by.
pub const TEST_CA_PEM: &str = include_str!("../fixtures/tls/ca.pem");

impl TestServer {
    pub async fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorded = Arc::clone(&recorded);
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let _ = serve_one(stream, &recorded, &*handler).await;
                });
            }
        });
        Self {
            url,
            requests,
            stop: Stop::Task(task),
        }
    }

    /// The same over TLS (certificate for 127.0.0.1 from [`TEST_CA_PEM`]), served from a
    /// thread of its own.
    pub fn start_tls(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certificates: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(include_bytes!("../fixtures/tls/server.pem"))
                .collect::<Result<_, _>>()
                .unwrap();
        let key =
            PrivateKeyDer::from_pem_slice(include_bytes!("../fixtures/tls/server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let recorded = Arc::clone(&requests);
        let stopped = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stopped);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let Ok(connection) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(connection, stream);
                if serve_one_blocking(&mut tls, &recorded, &handler).is_ok() {
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        Self {
            url: format!("https://{address}"),
            requests,
            stop: Stop::Thread(stopped, address),
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        match &self.stop {
            Stop::Task(task) => task.abort(),
            Stop::Thread(stopped, address) => {
                stopped.store(true, Ordering::SeqCst);
                let _ = std::net::TcpStream::connect(address);
            }
        }
    }
}

/// The method, target, headers and content length of a request head.
fn parse_head(head: &[u8]) -> (String, String, Vec<(String, String)>, usize) {
    let head = String::from_utf8_lossy(head).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let target = request_line.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    (method, target, headers, length)
}

/// Records `request`, asks the handler, and gives the answer's bytes.
fn answer(request: Request, recorded: &Mutex<Vec<Request>>, handler: &Handler) -> Vec<u8> {
    let index = {
        let mut recorded = recorded.lock().unwrap();
        recorded.push(request.clone());
        recorded.len() - 1
    };
    let reply = handler(&request, index);
    let mut bytes = format!(
        "HTTP/1.1 {} Test\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&reply.body);
    bytes
}

fn serve_one_blocking(
    stream: &mut (impl Read + Write),
    recorded: &Mutex<Vec<Request>>,
    handler: &Handler,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let header_end = loop {
        let mut chunk = [0_u8; 4096];
        let length = stream.read(&mut chunk)?;
        if length == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..length]);
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at;
        }
    };
    let (method, target, headers, length) = parse_head(&buffer[..header_end]);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0_u8; length - body.len()];
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    let request = Request {
        method,
        target,
        headers,
        body,
    };
    stream.write_all(&answer(request, recorded, handler))?;
    stream.flush()
}

async fn serve_one(
    mut stream: TcpStream,
    recorded: &Mutex<Vec<Request>>,
    handler: &Handler,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let header_end = loop {
        let mut chunk = [0_u8; 4096];
        let length = stream.read(&mut chunk).await?;
        if length == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..length]);
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at;
        }
    };
    let (method, target, headers, length) = parse_head(&buffer[..header_end]);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0_u8; length - body.len()];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    let request = Request {
        method,
        target,
        headers,
        body,
    };
    stream
        .write_all(&answer(request, recorded, handler))
        .await?;
    stream.shutdown().await
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// One entry of a hand-built archive.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

/// An uncompressed tar of `entries`, names written as they are (no checks, so archives with
/// `..` or absolute paths can be made).
pub fn archive(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let (name, kind, data, mode): (&str, tar::EntryType, &[u8], u32) = match entry {
            Entry::Dir(name) => (name, tar::EntryType::Directory, &[], 0o755),
            Entry::File(name, data, mode) => (name, tar::EntryType::Regular, data, *mode),
            Entry::Symlink(name, _) => (name, tar::EntryType::Symlink, &[], 0o777),
            Entry::HardLink(name, _) => (name, tar::EntryType::Link, &[], 0o644),
        };
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        if let Entry::Symlink(_, target) | Entry::HardLink(_, target) = entry {
            let field = &mut header.as_old_mut().linkname;
            field[..target.len()].copy_from_slice(target.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A small pack: an executable entry point that prints a data file of the pack.
pub fn hello_pack(greeting: &str) -> Vec<u8> {
    let script = b"#!/bin/sh\ncat \"$ATTUNE_PACK_DIR/data/greeting.txt\"\n";
    archive(&[
        Entry::Dir("actions"),
        Entry::Dir("data"),
        Entry::File("pack.yaml", b"ref: hello\n", 0o644),
        Entry::File("actions/run.sh", script, 0o755),
        Entry::File("data/greeting.txt", greeting.as_bytes(), 0o644),
    ])
}
