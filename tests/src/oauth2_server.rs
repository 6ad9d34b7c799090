//! A real OAuth2 server for the client-credentials tests, Ory Hydra (built by
//! `tests/oauth2/hydra.sh`, found through `OAUTH2_SERVER_BIN`), on loopback with its in-memory
//! store; and a [`ProtectedUpstream`] that serves its payload only to a bearer token that Hydra's
//! introspection endpoint (RFC 7662) calls active with the scope it requires, and answers 401 to
//! anything else, as a resource server behind an OAuth2 server does.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::process::ChildProcess;
pub use crate::protected_upstream::ProtectedUpstream;
use crate::protected_upstream::Verify;
use crate::{eventually, free_port};

/// The Hydra binary: `OAUTH2_SERVER_BIN`, as `tests/oauth2/hydra.sh` prints it.
pub fn server_binary() -> String {
    match std::env::var("OAUTH2_SERVER_BIN") {
        Ok(bin) if std::path::Path::new(&bin).is_file() => bin,
        _ => panic!(
            "OAUTH2_SERVER_BIN is not set to the Ory Hydra binary: build it with \
             `export OAUTH2_SERVER_BIN=$(bash tests/oauth2/hydra.sh)`"
        ),
    }
}

/// A running Hydra (public and admin APIs on loopback); killed when dropped.
pub struct OAuth2Server {
    pub public_port: u16,
    pub admin_port: u16,
    http: reqwest::Client,
    _process: ChildProcess,
    _dir: tempfile::TempDir,
}

impl OAuth2Server {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (public_port, admin_port) = (free_port(), free_port());
        let mut command = Command::new(server_binary());
        command
            .args(["serve", "all", "--dev"])
            .current_dir(dir.path())
            .env("DSN", "memory")
            .env("SERVE_PUBLIC_HOST", "127.0.0.1")
            .env("SERVE_PUBLIC_PORT", public_port.to_string())
            .env("SERVE_ADMIN_HOST", "127.0.0.1")
            .env("SERVE_ADMIN_PORT", admin_port.to_string())
            .env("URLS_SELF_ISSUER", format!("http://127.0.0.1:{public_port}"))
            .env("SECRETS_SYSTEM", "a-test-only-system-secret-of-32-bytes")
            .env("SQA_OPT_OUT", "true")
            .env("LOG_LEVEL", "warn");
        let process = ChildProcess::spawn("hydra", command, &dir.path().join("hydra.log"));
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{admin_port}/health/ready");
        eventually("hydra ready", Duration::from_secs(60), || async {
            process.assert_running();
            let ok = http.get(&ready).send().await.ok()?.status().is_success();
            ok.then_some(())
        })
        .await;
        Self { public_port, admin_port, http, _process: process, _dir: dir }
    }

    /// The token endpoint (RFC 6749 §3.2).
    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/oauth2/token", self.public_port)
    }

    /// Registers a client that may use the client credentials grant for `scopes` (space
    /// separated), authenticating with HTTP Basic.
    pub async fn create_client(&self, id: &str, secret: &str, scopes: &str) {
        let response = self
            .http
            .post(format!("http://127.0.0.1:{}/admin/clients", self.admin_port))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(
                json!({
                    "client_id": id,
                    "client_secret": secret,
                    "grant_types": ["client_credentials"],
                    "scope": scopes,
                    "token_endpoint_auth_method": "client_secret_basic",
                })
                .to_string(),
            )
            .send()
            .await
            .expect("create client");
        assert!(response.status().is_success(), "hydra: creating client {id}: {}", response.status());
    }

    /// Revokes `token` (RFC 7009) as client `id`.
    pub async fn revoke(&self, id: &str, secret: &str, token: &str) {
        let response = self
            .http
            .post(format!("http://127.0.0.1:{}/oauth2/revoke", self.public_port))
            .basic_auth(id, Some(secret))
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(token_form(token).expect("a token issued by hydra"))
            .send()
            .await
            .expect("revoke");
        assert!(response.status().is_success(), "hydra: revoking a token: {}", response.status());
    }

    fn introspection_url(&self) -> String {
        format!("http://127.0.0.1:{}/admin/oauth2/introspect", self.admin_port)
    }
}

impl ProtectedUpstream {
    /// Serves `payload` to tokens `server` calls active with `scope`.
    pub async fn start(server: &OAuth2Server, scope: &str, payload: &str) -> Self {
        let introspect = Arc::new((reqwest::Client::new(), server.introspection_url(), scope.to_owned()));
        let verify: Verify = Arc::new(move |token: String| {
            let introspect = introspect.clone();
            Box::pin(async move { active_with_scope(&introspect, &token).await })
        });
        Self::start_verifying(|_origin| verify, payload).await
    }
}

/// Whether the OAuth2 server calls `token` active and granted `scope` (RFC 7662).
async fn active_with_scope(introspect: &(reqwest::Client, String, String), token: &str) -> bool {
    let (http, url, scope) = introspect;
    let Some(form) = token_form(token) else { return false };
    let request = http.post(url).header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(form);
    let Ok(response) = request.send().await else { return false };
    let Ok(bytes) = response.bytes().await else { return false };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return false };
    let granted = body["scope"].as_str().unwrap_or("").split(' ').any(|s| s == scope);
    body["active"].as_bool() == Some(true) && granted
}

/// `token=<token>` as a form body, for tokens shaped like Hydra's (`ory_at_…`: base64url and dots,
/// which a form carries as they are); `None` for anything else, which no server here issued.
fn token_form(token: &str) -> Option<String> {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        .then(|| format!("token={token}"))
}
