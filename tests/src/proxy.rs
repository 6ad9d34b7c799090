//! A real forward HTTP proxy on loopback: absolute-form requests for `http://` targets and
//! `CONNECT` tunnels for `https://` ones, optionally requiring `Proxy-Authorization: Basic`.
//! Records the targets it was asked for.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub port: u16,
    targets: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl Proxy {
    /// `credentials`: the `user:password` clients must present, if any.
    pub async fn start(credentials: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let expected = credentials.map(|c| {
            use base64::Engine as _;
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(c))
        });
        let targets = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (t, token) = (targets.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(s) => s, Err(_) => continue },
                    _ = token.cancelled() => return,
                };
                let (t, expected) = (t.clone(), expected.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, expected.as_deref(), &t).await;
                });
            }
        });
        Self { port, targets, stop }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `host:port` of every request it forwarded or tunnelled.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().expect("proxy state").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(mut client: TcpStream, expected: Option<&str>, targets: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 || head.len() > 64 << 10 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let auth = headers.iter().find_map(|h| {
        let (name, value) = h.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization").then(|| value.trim())
    });
    if expected.is_some() && auth != expected {
        client
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method == "CONNECT" {
        targets.lock().expect("proxy state").push(target.to_owned());
        let mut upstream = TcpStream::connect(target).await?;
        client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    // Absolute form: `GET http://host:port/path HTTP/1.1`; forwarded in origin form, one request
    // per connection.
    let Some(rest) = target.strip_prefix("http://") else {
        client.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
        return Ok(());
    };
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    targets.lock().expect("proxy state").push(authority.to_owned());
    let mut upstream = TcpStream::connect(authority).await?;
    let mut forwarded = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        let name = h.split(':').next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(name.as_str(), "proxy-authorization" | "proxy-connection" | "connection") {
            forwarded.push_str(h);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    upstream.write_all(forwarded.as_bytes()).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
