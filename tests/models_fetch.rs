//! `concierge models fetch NAME` against a fake Hugging Face hub on
//! 127.0.0.1 that speaks the hub's HTTP interface: the tree listing with the
//! LFS sha256, and `resolve` downloads with `Range`. The first download
//! breaks half-way; the second run resumes from where it stopped.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

const MODEL: &str = "qwen2.5-0.5b-instruct-q8_0";
const REPO: &str = "Qwen/Qwen2.5-0.5B-Instruct-GGUF";
const FILE: &str = "qwen2.5-0.5b-instruct-q8_0.gguf";

#[derive(Clone)]
struct Hub {
    content: Arc<Vec<u8>>,
    /// The sha256 the listing reports (the real one unless a test lies).
    reported_sha: String,
    /// Range headers seen, in order.
    ranges: Arc<Mutex<Vec<Option<String>>>>,
    /// Whether the next download breaks half-way.
    break_next: Arc<Mutex<bool>>,
}

async fn tree(
    State(hub): State<Hub>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
) -> Response {
    if format!("{owner}/{name}") != REPO {
        return StatusCode::NOT_FOUND.into_response();
    }
    let listing = serde_json::json!([
        {"type": "file", "oid": "0123", "size": 1500, "path": "README.md"},
        {"type": "file", "oid": "4567", "size": hub.content.len(), "path": FILE,
         "lfs": {"oid": hub.reported_sha, "size": hub.content.len(), "pointerSize": 135}}
    ]);
    axum::Json(listing).into_response()
}

async fn resolve(
    State(hub): State<Hub>,
    UrlPath((owner, name, file)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if format!("{owner}/{name}") != REPO || file != FILE {
        return StatusCode::NOT_FOUND.into_response();
    }
    let range = headers
        .get("range")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    hub.ranges.lock().unwrap().push(range.clone());
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    let body = hub.content[start..].to_vec();
    let total = body.len();
    let broken = std::mem::take(&mut *hub.break_next.lock().unwrap());
    let stream_body = if broken {
        // Half the bytes, then the connection fails.
        let half = body[..total / 2].to_vec();
        Body::from_stream(futures::stream::iter(vec![
            Ok::<_, std::io::Error>(half),
            Err(std::io::Error::other("connection reset by the fake hub")),
        ]))
    } else {
        Body::from(body)
    };
    let status = if start > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    Response::builder()
        .status(status)
        .header("content-length", total.to_string())
        .body(stream_body)
        .unwrap()
}

fn serve(hub: Hub) -> SocketAddr {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let app = Router::new()
                .route("/api/models/{owner}/{name}/tree/main", get(tree))
                .route("/{owner}/{name}/resolve/main/{file}", get(resolve))
                .with_state(hub);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ready_tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    ready_rx.recv().unwrap()
}

fn hub_with(content: Vec<u8>, lie: bool) -> Hub {
    let sha: String = Sha256::digest(&content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Hub {
        content: Arc::new(content),
        reported_sha: if lie { "ab".repeat(32) } else { sha },
        ranges: Arc::default(),
        break_next: Arc::new(Mutex::new(true)),
    }
}

fn fetch(address: SocketAddr, dir: &std::path::Path) -> std::process::Output {
    Command::new(support::binary())
        .args(["--data-dir"])
        .arg(dir.join("data"))
        .args(["models", "fetch", MODEL, "--dir"])
        .arg(dir)
        .env("HF_ENDPOINT", format!("http://{address}"))
        .output()
        .unwrap()
}

#[test]
fn a_broken_download_resumes_and_the_file_is_checked() {
    let content: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let hub = hub_with(content.clone(), false);
    let address = serve(hub.clone());
    let dir = tempfile::tempdir().unwrap();
    let output = fetch(address, dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("100%") && stderr.contains("sha256 verified"),
        "{stderr}"
    );
    assert!(stderr.contains("Apache-2.0"), "{stderr}");
    assert_eq!(std::fs::read(dir.path().join(FILE)).unwrap(), content);
    assert!(!dir.path().join(format!("{FILE}.partial")).exists());
    let ranges = hub.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0].as_deref(), Some("bytes=0-"));
    let resumed_at: usize = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap();
    assert!(resumed_at > 0 && resumed_at < content.len(), "{ranges:?}");

    // Fetching again finds the verified file and downloads nothing.
    let output = fetch(address, dir.path());
    assert!(output.status.success());
    assert_eq!(hub.ranges.lock().unwrap().len(), 2);
}

#[test]
fn a_sha256_mismatch_keeps_no_file_and_says_so() {
    let hub = hub_with(vec![7u8; 100_000], true);
    *hub.break_next.lock().unwrap() = false;
    let address = serve(hub);
    let dir = tempfile::tempdir().unwrap();
    let output = fetch(address, dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("sha256 mismatch"), "{stderr}");
    assert!(!dir.path().join(FILE).exists());
    assert!(!dir.path().join(format!("{FILE}.partial")).exists());
}

#[test]
fn an_unknown_name_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(support::binary())
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["models", "fetch", "no-such-model", "--dir"])
        .arg(dir.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("unknown model") && stderr.contains(MODEL),
        "{stderr}"
    );
    let list = Command::new(support::binary())
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["models", "list"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&list.stdout);
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["name"], MODEL);
    assert!(first["license"].is_string() && first["approx_mb"].is_number());
}
