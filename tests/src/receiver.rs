//! The controller binary with its receiver listener on, against a control plane, and what a
//! webhook sender does: derive the path, sign a body, push. Shared by the receiver's tests and
//! its benchmark (`bench-receiver`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use externalsource_core::controller::api::ExternalSource;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::process::{ChildProcess, controller_binary, wait_http_ok};
use crate::{ControlPlane, eventually, free_port};

/// One controller process (no leader election, memory store) and its three listeners.
pub struct ReceiverController {
    pub process: ChildProcess,
    pub receiver_port: u16,
    pub server_port: u16,
    pub ops_port: u16,
}

impl ReceiverController {
    /// Starts it with `min_interval` and waits for `/readyz`. Its log goes to `dir`.
    pub async fn start(cp: &ControlPlane, namespace: &str, dir: &Path, min_interval: &str) -> Self {
        let controller = Self::spawn(cp, namespace, dir, min_interval, None);
        let ready = format!("http://127.0.0.1:{}/readyz", controller.ops_port);
        wait_http_ok(&controller.process, &ready, Duration::from_secs(60)).await;
        controller
    }

    /// One of several replicas electing a leader as `identity` (Lease in `namespace`); waits for
    /// `/healthz` only, since a replica that does not lead a private store is never Ready.
    pub async fn start_replica(cp: &ControlPlane, namespace: &str, dir: &Path, identity: &str) -> Self {
        let controller = Self::spawn(cp, namespace, dir, "1s", Some(identity));
        let health = format!("http://127.0.0.1:{}/healthz", controller.ops_port);
        wait_http_ok(&controller.process, &health, Duration::from_secs(60)).await;
        controller
    }

    fn spawn(cp: &ControlPlane, namespace: &str, dir: &Path, min_interval: &str, identity: Option<&str>) -> Self {
        let (server_port, ops_port, receiver_port) = (free_port(), free_port(), free_port());
        let election = match identity {
            Some(name) => format!(
                "leader_election = true\npod_name = \"{name}\"\nlease_duration = \"4s\"\nrenew_deadline = \"2s\"\n\
                 retry_period = \"500ms\"\n"
            ),
            None => "leader_election = false\n".to_owned(),
        };
        let name = identity.unwrap_or("controller");
        let text = format!(
            "[server]\nbind_address = \"127.0.0.1\"\nport = {server_port}\nshutdown_delay = \"0s\"\n\
             advertise_url = \"http://127.0.0.1:{server_port}\"\n\
             [ops]\nbind_address = \"127.0.0.1\"\nport = {ops_port}\n\
             [receiver]\nenabled = true\nbind_address = \"127.0.0.1\"\nport = {receiver_port}\n\
             [controller]\n{election}min_interval = \"{min_interval}\"\n\
             [log]\nlevel = \"info,externalsource_core::controller::receiver=debug\"\n[storage]\nbackend = \"memory\"\n"
        );
        let config: PathBuf = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).expect("write config");
        let mut cmd = Command::new(controller_binary());
        cmd.args(["run", "--config"]).arg(&config);
        for var in ["RUST_LOG", "STORAGE_BACKEND", "LEADER_ELECTION", "POD_NAME", "LOG_FORMAT", "RECEIVER_ENABLED"] {
            cmd.env_remove(var);
        }
        cmd.env("KUBECONFIG", cp.kubeconfig_path())
            .env("POD_NAMESPACE", namespace)
            .env("NO_COLOR", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        let process = ChildProcess::spawn(name, cmd, &dir.join(format!("{name}.log")));
        Self { process, receiver_port, server_port, ops_port }
    }

    /// The receiver's URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.receiver_port)
    }
}

/// `/hook/<hex sha256 of token + name + namespace>`, computed here as Flux documents it.
pub fn expected_path(token: &str, name: &str, namespace: &str) -> String {
    format!("/hook/{}", hex::encode(Sha256::digest(format!("{token}{name}{namespace}").as_bytes())))
}

/// `sha256=<hex HMAC-SHA256(token, body)>`.
pub fn signature(token: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("hmac key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Secret with key `token`.
pub async fn create_token_secret(client: &kube::Client, namespace: &str, name: &str, token: &str) {
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"token": token}})).expect("secret");
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &secret).await.expect("create Secret");
}

/// POSTs `body` with `headers`; the status code.
pub async fn push(client: &reqwest::Client, url: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    let mut request = client.post(url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Waits for `status.webhookPath`.
pub async fn webhook_path(api: &Api<ExternalSource>, name: &str) -> String {
    eventually(&format!("{name} status.webhookPath"), Duration::from_secs(30), || async {
        api.get(name).await.ok()?.status?.webhook_path
    })
    .await
}

/// Pushes until the receiver knows the path (it learns it from its watch, a moment after the
/// status is written); the status of the first push that was not a 404.
pub async fn push_when_known(client: &reqwest::Client, url: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    eventually(&format!("the receiver to know {url}"), Duration::from_secs(30), || async {
        let status = push(client, url, headers, body).await;
        (status != 404 && status != 0).then_some(status)
    })
    .await
}
