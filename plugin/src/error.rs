//! What can go wrong, each naming the object or setting involved.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read kubeconfig {}: {source}", path.display())]
    ReadKubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("cannot load the kubeconfig (context {}): {source}", context.as_deref().unwrap_or("current"))]
    LoadKubeconfig { context: Option<String>, source: kube::config::KubeconfigError },
    #[error("no kubeconfig found and not in a cluster: {0}")]
    InferConfig(#[from] kube::config::InferConfigError),
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("ExternalSource {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("{action} ExternalSource {namespace}/{name}: {source}")]
    Api { action: &'static str, namespace: String, name: String, source: kube::Error },
    #[error("listing ExternalSources in {scope}: {source}")]
    List { scope: String, source: kube::Error },
    #[error(
        "ExternalSource {namespace}/{name} is suspended: `kubectl externalsource resume {name} -n {namespace}` first"
    )]
    Suspended { namespace: String, name: String },
    #[error("ExternalSource {namespace}/{name} reconciliation failed: {reason}: {message}")]
    NotReady { namespace: String, name: String, reason: String, message: String },
    #[error(
        "timed out after {timeout:?} waiting for ExternalSource {namespace}/{name} to handle reconcile request {token} (is the controller running?)"
    )]
    Timeout { namespace: String, name: String, token: String, timeout: Duration },
    #[error("writing to stdout: {0}")]
    Output(#[from] std::io::Error),
}
