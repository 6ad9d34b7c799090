//! Reading a Secret and its keys for the steps that name one (credentials, the OAuth2 client,
//! the receiver): the problems they report name the spec field, the Secret and the key, never
//! the value.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::controller::conditions::Reason;
use crate::controller::reconcile::problem::ConfigProblem;

/// A Secret's `data`.
pub type Data = BTreeMap<String, ByteString>;

/// The field whose Secret holds basic, bearer or OAuth2 client credentials.
pub const AUTH_FIELD: &str = "spec.generator.http.secretRef";

/// The data of Secret `name`, or the problem naming `field` when it does not exist.
pub async fn read(
    secrets: &Api<Secret>,
    ns: &str,
    field: &str,
    name: &str,
) -> Result<Result<Data, ConfigProblem>, kube::Error> {
    Ok(match secrets.get_opt(name).await? {
        Some(secret) => Ok(secret.data.unwrap_or_default()),
        None => Err(ConfigProblem {
            reason: Reason::SecretNotFound,
            message: format!("{field}: Secret {name:?} not found in namespace {ns:?}"),
        }),
    })
}

pub fn missing_key(field: &str, secret: &str, key: &str, why: &str) -> ConfigProblem {
    ConfigProblem {
        reason: Reason::SecretNotFound,
        message: format!("{field}: Secret {secret:?} has no key {key:?} ({why})"),
    }
}

pub fn invalid(field: &str, secret: &str, rule: &str) -> ConfigProblem {
    ConfigProblem { reason: Reason::InvalidSpec, message: format!("{field}: Secret {secret:?} {rule}") }
}

/// A key's value as text without the trailing newline files often end with.
pub fn text<'a>(field: &str, secret: &str, data: &'a Data, key: &str) -> Result<Option<&'a str>, ConfigProblem> {
    match data.get(key) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(&v.0)
            .map(|s| Some(s.trim_end_matches(['\r', '\n'])))
            .map_err(|_| invalid(field, secret, &format!("key {key:?} is not UTF-8 text"))),
    }
}
