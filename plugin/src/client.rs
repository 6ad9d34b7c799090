//! A Kubernetes client from kubectl's connection flags: `--kubeconfig` (else `KUBECONFIG`, else
//! `~/.kube/config`, else in-cluster), `--context`, and the namespace the command works in.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::cli::Connection;
use crate::error::PluginError;

/// The client and the namespace to use when `-n` is not given (the context's, else `default`).
pub async fn connect(flags: &Connection) -> Result<(Client, String), PluginError> {
    let options = KubeConfigOptions { context: flags.context.clone(), ..KubeConfigOptions::default() };
    let config = match &flags.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|source| PluginError::ReadKubeconfig { path: path.clone(), source })?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|source| PluginError::LoadKubeconfig { context: flags.context.clone(), source })?
        }
        None if flags.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|source| PluginError::LoadKubeconfig { context: flags.context.clone(), source })?,
        None => Config::infer().await?,
    };
    let namespace = flags.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(PluginError::Client)?;
    Ok((client, namespace))
}
