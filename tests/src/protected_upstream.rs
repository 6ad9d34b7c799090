//! An upstream API on loopback that serves its payload only to a bearer token its verifier
//! accepts, and answers 401 to anything else, as a resource server does: the verifier asks a
//! real authority (an OAuth2 server's introspection endpoint, see
//! [`oauth2_server`](crate::oauth2_server); the kube-apiserver's TokenReview API, see
//! [`ProtectedUpstream::start_token_review`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether a bearer token is accepted, as the upstream's authority says.
pub type Verify = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// What the protected upstream saw.
#[derive(Debug, Default)]
struct UpstreamState {
    payload: Bytes,
    /// Every bearer token presented, in order.
    tokens: Vec<String>,
    /// Answers of 401.
    refused: usize,
}

/// The protected upstream API; stops when dropped.
pub struct ProtectedUpstream {
    addr: SocketAddr,
    state: Arc<Mutex<UpstreamState>>,
    stop: CancellationToken,
}

impl ProtectedUpstream {
    /// Serves `payload` to the tokens accepted by the verifier `verifier` makes for the
    /// upstream's origin (`http://127.0.0.1:<port>`).
    pub async fn start_verifying(verifier: impl FnOnce(String) -> Verify, payload: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let verify = verifier(format!("http://127.0.0.1:{}", addr.port()));
        let state =
            Arc::new(Mutex::new(UpstreamState { payload: Bytes::from(payload.to_owned()), ..Default::default() }));
        let stop = CancellationToken::new();
        let (st, token) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(s) => s, Err(_) => continue },
                    _ = token.cancelled() => return,
                };
                let (st, verify) = (st.clone(), verify.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(st.clone(), verify.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, state, stop }
    }

    /// Serves `payload` to Kubernetes ServiceAccount tokens that the API server behind `client`
    /// authenticates for the upstream's own origin as audience (TokenReview,
    /// `authentication.k8s.io/v1`), as an API that trusts the cluster's service account issuer
    /// does.
    pub async fn start_token_review(client: kube::Client, payload: &str) -> Self {
        let verifier = move |origin: String| -> Verify {
            Arc::new(move |token: String| {
                let (client, audience) = (client.clone(), origin.clone());
                Box::pin(async move { authenticated_for(&client, token, &audience).await })
            })
        };
        Self::start_verifying(verifier, payload).await
    }

    /// The URL of `path`; its origin (`http://127.0.0.1:<port>`) is the default audience of a
    /// ServiceAccount token for it.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn set_payload(&self, payload: &str) {
        self.state.lock().expect("upstream state").payload = Bytes::from(payload.to_owned());
    }

    /// Every bearer token presented, in order.
    pub fn tokens(&self) -> Vec<String> {
        self.state.lock().expect("upstream state").tokens.clone()
    }

    /// Distinct bearer tokens presented, in the order first seen.
    pub fn distinct_tokens(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.tokens() {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// How many requests were answered 401.
    pub fn refused(&self) -> usize {
        self.state.lock().expect("upstream state").refused
    }
}

impl Drop for ProtectedUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(
    state: Arc<Mutex<UpstreamState>>,
    verify: Verify,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let accepted = match &token {
        Some(token) => verify(token.clone()).await,
        None => false,
    };
    let mut st = state.lock().expect("upstream state");
    if let Some(token) = token {
        st.tokens.push(token);
    }
    let response = if accepted {
        Response::new(Full::new(st.payload.clone()))
    } else {
        st.refused += 1;
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    };
    Ok(response)
}

/// Whether the API server authenticates `token` for `audience` (and says so in the audiences
/// it returns, as a TokenReview client must check). The API server caches a success for 10 s.
pub async fn authenticated_for(client: &kube::Client, token: String, audience: &str) -> bool {
    let review = TokenReview {
        spec: TokenReviewSpec { token: Some(token), audiences: Some(vec![audience.to_owned()]) },
        ..TokenReview::default()
    };
    let Ok(reviewed) = Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &review).await else {
        return false;
    };
    let Some(status) = reviewed.status else { return false };
    status.authenticated == Some(true) && status.audiences.unwrap_or_default().iter().any(|a| a == audience)
}
