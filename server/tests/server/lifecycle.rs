//! Connection handling: keep-alive, slowloris defences, bounded buffering, graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use externalsource_backend_memory::MemoryStorage;
use externalsource_core::backend::host;
use externalsource_core::{Digest, Storage};
use externalsource_server::ServeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{PROMPTLY, connect_small_buffer, parse_head, read_head, read_until_closed, request_text};
use crate::doubles::ThrottledStorage;
use crate::{payload, put_artifact, start_artifacts};

fn options(header_read: u64, idle: u64, grace: u64) -> ServeOptions {
    ServeOptions {
        header_read_timeout: Duration::from_millis(header_read),
        idle_timeout: Duration::from_millis(idle),
        shutdown_grace: Duration::from_millis(grace),
        ..ServeOptions::default()
    }
}

fn content_length(headers: &[(String, String)]) -> usize {
    let (_, v) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).expect("Content-Length");
    v.parse().expect("numeric Content-Length")
}

/// Reads one response on a kept-alive connection (its body delimited by Content-Length).
async fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let (status, headers, mut body) = read_head(stream).await;
    let len = content_length(&headers);
    let mut buf = vec![0u8; 64 * 1024];
    while body.len() < len {
        let n = tokio::time::timeout(PROMPTLY, stream.read(&mut buf)).await.expect("body in time").expect("read");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&buf[..n]);
    }
    (status, body)
}

#[tokio::test]
async fn graceful_shutdown_drains_an_in_flight_download_and_refuses_new_connections() {
    // Eight 64 KiB chunks, 100 ms apart: the download is in flight for about 800 ms.
    let storage = Arc::new(ThrottledStorage::new(Duration::from_millis(100)));
    let a = put_artifact(storage.as_ref(), payload(8 * 64 * 1024)).await;
    let (mut served, _registry) = start_artifacts(storage.clone(), options(5_000, 5_000, 5_000)).await;
    let addr = served.addr;

    let mut download = TcpStream::connect(addr).await.unwrap();
    download.write_all(request_text("GET", &a.path, &[], false).as_bytes()).await.unwrap();
    let (status, headers, mut body) = read_head(&mut download).await;
    assert_eq!(status, 200);
    assert!(body.len() < a.payload.len(), "download finished before shutdown; the test proves nothing");

    served.shutdown();
    let refused_by = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // Accepted just before the listener closed, or reset while it closed: try again.
            Ok(_) | Err(_) => {
                assert!(Instant::now() < refused_by, "new connections still accepted after shutdown");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    read_until_closed(&mut download, &mut body).await;
    assert_eq!(body.len(), content_length(&headers), "in-flight download was cut short");
    assert_eq!(Digest::of(&body), a.meta.digest);
    served.finished(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    // 3.2 s of download against a 300 ms grace period.
    let storage = Arc::new(ThrottledStorage::new(Duration::from_millis(400)));
    let a = put_artifact(storage.as_ref(), payload(8 * 64 * 1024)).await;
    let (mut served, _registry) = start_artifacts(storage.clone(), options(5_000, 5_000, 300)).await;

    let mut download = TcpStream::connect(served.addr).await.unwrap();
    download.write_all(request_text("GET", &a.path, &[], true).as_bytes()).await.unwrap();
    let (status, _, mut body) = read_head(&mut download).await;
    assert_eq!(status, 200);

    let started = Instant::now();
    served.shutdown();
    served.finished(Duration::from_secs(2)).await;
    assert!(started.elapsed() >= Duration::from_millis(250), "serve returned before the grace period");
    read_until_closed(&mut download, &mut body).await;
    assert!(body.len() < a.payload.len(), "the download should have been cut at the end of the grace period");
}

#[tokio::test]
async fn header_read_timeout_closes_a_stalled_request_line() {
    let storage: Arc<dyn Storage> = Arc::new(ThrottledStorage::new(Duration::ZERO));
    let (served, _registry) = start_artifacts(storage, options(300, 10_000, 1_000)).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream.write_all(b"GET /artifacts/x HT").await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), read_until_closed(&mut stream, &mut received))
        .await
        .expect("a stalled request head must be cut off by the header-read timeout");
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before the timeout: {received:?}");
    assert!(parse_head(&received).is_none_or(|(status, _, _)| status >= 400), "{received:?}");
}

#[tokio::test]
async fn keep_alive_serves_several_requests_then_idle_timeout_closes() {
    let storage: Arc<dyn Storage> = Arc::new(ThrottledStorage::new(Duration::ZERO));
    let a = put_artifact(storage.as_ref(), payload(10_000)).await;
    let (served, _registry) = start_artifacts(storage, options(10_000, 300, 1_000)).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    for _ in 0..2 {
        stream.write_all(request_text("GET", &a.path, &[], false).as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut stream).await, (200, a.payload.clone()));
    }
    let started = Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), read_until_closed(&mut stream, &mut received))
        .await
        .expect("an idle keep-alive connection must be closed by the idle timeout");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(received.is_empty(), "{received:?}");
}

#[tokio::test]
async fn a_slow_reader_holds_a_bounded_buffer_and_is_dropped_when_idle() {
    const SIZE: usize = 32 * 1024 * 1024;
    const BOUND: u64 = 8 * 1024 * 1024;
    let storage = Arc::new(ThrottledStorage::new(Duration::ZERO));
    let a = put_artifact(storage.as_ref(), payload(SIZE)).await;
    let (served, _registry) = start_artifacts(storage.clone(), options(5_000, 1_000, 1_000)).await;

    let mut stream = connect_small_buffer(served.addr).await;
    stream.write_all(request_text("GET", &a.path, &[], true).as_bytes()).await.unwrap();
    let (status, _, mut body) = read_head(&mut stream).await;
    assert_eq!(status, 200);

    // The client stops reading: the server pulls only what fits in its buffers and the sockets'.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pulled = storage.pulled();
    assert!(pulled < BOUND, "server pulled {pulled} bytes for a client that reads nothing");

    // No progress for longer than the idle timeout: the connection is closed.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(storage.pulled() < BOUND);
    read_until_closed(&mut stream, &mut body).await;
    assert!(body.len() < SIZE, "a stalled download must be dropped, not completed");
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503_and_the_others_are_still_served() {
    let storage: Arc<dyn Storage> = host(MemoryStorage::new(1 << 20), None);
    let a = put_artifact(storage.as_ref(), payload(1000)).await;
    let opts = ServeOptions { max_connections: 2, ..options(5_000, 5_000, 1_000) };
    let (served, _registry) = start_artifacts(storage, opts).await;
    // Two idle connections hold both slots.
    let mut first = TcpStream::connect(served.addr).await.unwrap();
    let _second = TcpStream::connect(served.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(served.addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PROMPTLY, third.read_to_end(&mut answer)).await.expect("answered at once").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("Retry-After: 1"), "{answer}");
    // A connection within the cap is served normally.
    first.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", a.path).as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut first).await;
    assert_eq!((status, body), (200, a.payload.clone()));
    // Closing one frees its slot.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = TcpStream::connect(served.addr).await.unwrap();
    fourth.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", a.path).as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut fourth).await.0, 200);
}

#[tokio::test]
async fn a_reader_below_the_minimum_rate_is_cut_though_it_never_goes_idle() {
    const SIZE: usize = 32 * 1024 * 1024;
    let storage: Arc<dyn Storage> = host(MemoryStorage::new(64 << 20), None);
    let a = put_artifact(storage.as_ref(), payload(SIZE)).await;
    // Idle timeout far away; 256 KiB/s over 500 ms windows.
    let opts = ServeOptions {
        min_send_rate: 256 * 1024,
        send_rate_window: Duration::from_millis(500),
        ..options(5_000, 30_000, 1_000)
    };
    let (served, _registry) = start_artifacts(storage, opts).await;

    // A fast reader is not affected: the whole artifact arrives.
    let mut fast = TcpStream::connect(served.addr).await.unwrap();
    fast.write_all(request_text("GET", &a.path, &[], false).as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut fast).await;
    assert_eq!((status, body.len()), (200, SIZE));

    // A reader taking 4 KiB every 100 ms (40 KiB/s) keeps the connection busy, but too slowly.
    let mut slow = connect_small_buffer(served.addr).await;
    slow.write_all(request_text("GET", &a.path, &[], true).as_bytes()).await.unwrap();
    let (status, _, mut body) = read_head(&mut slow).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed = loop {
        assert!(started.elapsed() < PROMPTLY, "a reader at 40 KiB/s must be cut below 256 KiB/s");
        tokio::time::sleep(Duration::from_millis(100)).await;
        match slow.read(&mut buf).await {
            Ok(0) | Err(_) => break started.elapsed(),
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    };
    assert!(body.len() < SIZE, "the slow download was cut, not completed");
    assert!(closed < Duration::from_secs(8), "cut after {closed:?}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout_and_does_not_delay_shutdown() {
    let storage: Arc<dyn Storage> = host(MemoryStorage::new(1 << 20), None);
    let a = put_artifact(storage.as_ref(), payload(1000)).await;
    let (mut served, _registry) = start_artifacts(storage, options(400, 10_000, 5_000)).await;
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    read_until_closed(&mut silent, &mut received).await;
    assert!(started.elapsed() >= Duration::from_millis(350), "closed after {:?}", started.elapsed());
    assert!(received.is_empty(), "{received:?}");

    // Silent connections waiting for a first byte end at once on shutdown (the grace is 5 s),
    // while one that sent a request is still answered.
    let mut waiting: Vec<TcpStream> = Vec::new();
    for _ in 0..20 {
        waiting.push(TcpStream::connect(served.addr).await.unwrap());
    }
    let mut asked = TcpStream::connect(served.addr).await.unwrap();
    asked.write_all(request_text("GET", &a.path, &[], true).as_bytes()).await.unwrap();
    let (status, _, _) = read_head(&mut asked).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    served.shutdown();
    served.finished(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown waited {:?} for silent connections",
        started.elapsed()
    );
    for mut stream in waiting {
        let mut rest = Vec::new();
        read_until_closed(&mut stream, &mut rest).await;
        assert!(rest.is_empty());
    }
}
