//! A real HTTP(S) server on loopback that plays the upstream API: replies are set by the test,
//! requests are recorded. Honours `If-None-Match` like a real API with ETags.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

/// What the fixture answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub etag: Option<String>,
    pub headers: Vec<(String, String)>,
    /// How long the fixture waits before answering (a slow upstream).
    pub delay: Option<std::time::Duration>,
    /// A header the request must carry with this value, else 401 (an upstream that checks
    /// credentials).
    pub required: Option<(String, String)>,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self { status: 200, body: body.into(), etag: None, headers: Vec::new(), delay: None, required: None }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: Bytes::from_static(b"error"),
            etag: None,
            headers: Vec::new(),
            delay: None,
            required: None,
        }
    }

    pub fn with_delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn with_etag(mut self, etag: &str) -> Self {
        self.etag = Some(etag.to_owned());
        self
    }

    /// Answers 401 unless the request has `name: value`.
    pub fn requiring(mut self, name: &str, value: &str) -> Self {
        self.required = Some((name.to_owned(), value.to_owned()));
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A request the fixture received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The query string, if any (pages of a paged API differ only in it).
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// Status the fixture answered with.
    pub status: u16,
    /// The request body, up to [`MAX_RECORDED_BODY`] bytes (what a webhook receiver was sent).
    pub body: Bytes,
}

/// Bytes of a request body the fixture keeps.
pub const MAX_RECORDED_BODY: usize = 1 << 20;

struct State {
    reply: Reply,
    /// Replies for one path and query (`/items?page=2`), in place of `reply`.
    routes: std::collections::HashMap<String, Reply>,
    requests: Vec<Recorded>,
}

/// The running server; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Upstream {
    /// Plain HTTP.
    pub async fn start(reply: Reply) -> Self {
        Self::start_inner(reply, None, "127.0.0.1").await
    }

    /// Plain HTTP on another loopback address (such as 127.0.0.2), for egress-policy tests.
    pub async fn start_at(ip: &str, reply: Reply) -> Self {
        Self::start_inner(reply, None, ip).await
    }

    /// HTTPS with the given PEM certificate chain and key.
    pub async fn start_tls(reply: Reply, cert_pem: &str, key_pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().expect("certs");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("tls versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server cert");
        Self::start_inner(reply, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))), "127.0.0.1").await
    }

    /// HTTPS that requires a client certificate signed by `client_ca_pem` (mTLS).
    pub async fn start_mtls(reply: Reply, cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().expect("certs");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
            roots.add(ca.expect("client ca")).expect("add client ca");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .expect("server cert");
        Self::start_inner(reply, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))), "127.0.0.1").await
    }

    async fn start_inner(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>, ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind fixture");
        let addr = listener.local_addr().expect("addr");
        let state =
            Arc::new(Mutex::new(State { reply, routes: std::collections::HashMap::new(), requests: Vec::new() }));
        let stop = CancellationToken::new();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (st, token) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(s) => s, Err(_) => continue },
                    _ = token.cancelled() => return,
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(st.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self { addr, scheme, state, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://localhost:{}{path}", self.scheme, self.addr.port())
    }

    /// The URL with the bound IP address as its host (no name to resolve).
    pub fn url_by_ip(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn set(&self, reply: Reply) {
        self.state.lock().expect("fixture state").reply = reply;
    }

    /// Answers requests for exactly `path_and_query` (such as `/items?page=2`) with `reply`.
    pub fn route(&self, path_and_query: &str, reply: Reply) {
        self.state.lock().expect("fixture state").routes.insert(path_and_query.to_owned(), reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("fixture state").requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().expect("fixture state").requests.len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let body = match http_body_util::Limited::new(incoming, MAX_RECORDED_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (response, delay) = respond(&state, &Request::from_parts(parts, body));
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    Ok(response)
}

/// The response, and how long to hold it back (the reply's delay), from one look at the state.
fn respond(state: &Mutex<State>, req: &Request<Bytes>) -> (Response<Full<Bytes>>, Option<std::time::Duration>) {
    let mut st = state.lock().expect("fixture state");
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let reply = st.routes.get(path_and_query).unwrap_or(&st.reply).clone();
    let not_modified = reply.status == 200
        && reply.etag.as_deref().is_some_and(|etag| {
            req.headers().get(http::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag)
        });
    let authorized = reply.required.as_ref().is_none_or(|(name, value)| {
        req.headers().get(name.as_str()).and_then(|v| v.to_str().ok()) == Some(value.as_str())
    });
    let status = if !authorized {
        401
    } else if not_modified {
        304
    } else {
        reply.status
    };
    st.requests.push(Recorded {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers: req.headers().clone(),
        status,
        body: req.body().clone(),
    });
    let mut builder =
        Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    if let Some(etag) = &reply.etag {
        builder = builder.header(http::header::ETAG, etag);
    }
    for (name, value) in &reply.headers {
        builder = builder.header(name, value);
    }
    let body = if not_modified || !authorized { Bytes::new() } else { reply.body };
    let response = builder.body(Full::new(body)).unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    (response, reply.delay)
}

/// A CA, a server certificate for `localhost` and a client certificate, both signed by it (PEM).
pub struct MutualTls {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

pub fn mutual_tls_material() -> MutualTls {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "externalsource test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
    client.distinguished_name.push(rcgen::DnType::CommonName, "externalsource-controller");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).expect("client cert");
    MutualTls {
        ca: ca.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// A CA and a server certificate for `localhost` signed by it, as PEM: (ca, cert, key).
pub fn tls_material() -> (String, String, String) {
    let m = mutual_tls_material();
    (m.ca, m.server_cert, m.server_key)
}
