//! A raw HTTP/1.1 client over `TcpStream`: it can send what a real client would not (NUL bytes,
//! half request lines) and read responses byte by byte to observe streaming and closing.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Generous bound for anything that should happen promptly, so a hang fails instead of blocking.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// A parsed response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Reply {
    /// The single value of a header (case-insensitive name); panics if it repeats.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let first = values.next();
        assert!(values.next().is_none(), "header {name} repeats in {:?}", self.headers);
        first
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").map(|v| v.parse().expect("numeric Content-Length"))
    }
}

/// Header names and values in the order received.
pub type Headers = Vec<(String, String)>;

/// Splits a response into status, headers and the offset of the body; `None` while the head is
/// incomplete.
pub fn parse_head(bytes: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).expect("ASCII response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Some((status, headers, end + 4))
}

/// Sends `raw` as is and reads until the server closes the connection.
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> io::Result<Reply> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw).await?;
    let mut bytes = Vec::new();
    tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "server did not close the connection"))??;
    let (status, headers, at) = parse_head(&bytes)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no response head in {bytes:?}")))?;
    Ok(Reply { status, headers, body: bytes[at..].to_vec() })
}

/// Sends one request with `Connection: close` and reads the whole response.
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let raw = request_text(method, path, headers, true);
    send_raw(addr, raw.as_bytes()).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[]).await
}

pub fn request_text(method: &str, path: &str, headers: &[(&str, &str)], close: bool) -> String {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    if close {
        raw.push_str("Connection: close\r\n");
    }
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    raw
}

/// A connection whose receive buffer is small, so the server feels a client that stops reading.
pub async fn connect_small_buffer(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect")
}

/// Reads until the response head is complete; returns it and the body bytes already received.
pub async fn read_head(stream: &mut TcpStream) -> (u16, Headers, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some((status, headers, at)) = parse_head(&bytes) {
            return (status, headers, bytes[at..].to_vec());
        }
        let n = tokio::time::timeout(PROMPTLY, stream.read(&mut buf)).await.expect("head in time").expect("read");
        assert!(n > 0, "connection closed before the response head: {bytes:?}");
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// Reads until EOF or a reset (both mean the server closed), appending to `into`.
pub async fn read_until_closed(stream: &mut TcpStream, into: &mut Vec<u8>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(PROMPTLY, stream.read(&mut buf)).await.expect("server closes in time") {
            Ok(0) | Err(_) => return,
            Ok(n) => into.extend_from_slice(&buf[..n]),
        }
    }
}
