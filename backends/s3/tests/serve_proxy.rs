//! `externalsource-controller serve` over the s3 backend in proxy mode: an object put by the test
//! is served by the binary with the same headers as the other backends (ETag = digest, 206, 304).
//! Needs the binary built with the s3 feature (`cargo build -p externalsource-controller --all-features`).

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use externalsource_backend_s3::Mode;
use externalsource_core::{Digest, ObjectKey, Storage};
use support::{ACCESS_KEY, SECRET_KEY, Weed};

fn binary() -> PathBuf {
    let path = std::env::var_os("EXTERNALSOURCE_CONTROLLER_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        target.join("debug/externalsource-controller")
    });
    let listed =
        Command::new(&path).arg("--list-backends").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    match listed {
        Ok(list) if list.lines().any(|l| l.starts_with("s3 ")) => path,
        _ => panic!(
            "{} is missing or lacks the s3 backend; build it with `cargo build -p externalsource-controller --all-features`",
            path.display()
        ),
    }
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 request; returns the status line + headers (lowercased names) and the body.
fn request(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_streams_objects_from_s3_in_proxy_mode() {
    let bin = binary();
    let weed = Weed::shared().await;
    let bucket = weed.bucket().await;
    let storage = weed.storage_for(&bucket, |s| s.mode = Mode::Proxy).await;
    let body: Bytes = (0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let digest = Digest::of(&body);
    let key = ObjectKey::artifact("ns", "src", &digest).unwrap();
    storage.put(&key, body.clone(), &digest).await.unwrap();

    let (port, ops) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[server]\nbind_address = \"127.0.0.1\"\n[ops]\nbind_address = \"127.0.0.1\"\n").unwrap();
    let _serve = Serve(
        Command::new(bin)
            .args(["serve", "--config", config.to_str().unwrap()])
            .args(["--artifact-server-port", &port.to_string(), "--ops-port", &ops.to_string()])
            .args(["--advertise-url", &format!("http://127.0.0.1:{port}")])
            .env("STORAGE_BACKEND", "s3")
            .env("S3_MODE", "proxy")
            .env("S3_ENDPOINT", &weed.endpoint)
            .env("S3_BUCKET", &bucket)
            .env("S3_ACCESS_KEY_ID", ACCESS_KEY)
            .env("S3_SECRET_ACCESS_KEY", SECRET_KEY)
            .env_remove("KUBECONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let path = format!("/{key}");
    let (status, headers, got) = request(port, &path, &[]);
    assert_eq!(status, 200);
    assert_eq!(Digest::of(&got), digest, "served bytes match the digest");
    assert_eq!(header(&headers, "etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(header(&headers, "content-length"), Some("100000"));
    assert_eq!(header(&headers, "content-type"), Some("application/gzip"));
    assert_eq!(header(&headers, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&headers, "cache-control"), Some("public, max-age=31536000, immutable"));
    assert!(header(&headers, "last-modified").is_some());

    let (status, headers, got) = request(port, &path, &[("Range", "bytes=10-19")]);
    assert_eq!(status, 206);
    assert_eq!(header(&headers, "content-range"), Some("bytes 10-19/100000"));
    assert_eq!(got, body.slice(10..20));

    let (status, _, got) = request(port, &path, &[("If-None-Match", &format!("\"{digest}\""))]);
    assert_eq!((status, got.len()), (304, 0));
    assert_eq!(request(port, &format!("/artifacts/ns/src/{}.tar.gz", "0".repeat(64)), &[]).0, 404);
}
