//! Reading a Secret's keys for the credentials step and the OAuth2 client: the problems they
//! report name the spec field, the Secret and the key, never the value.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

use crate::controller::conditions::Reason;
use crate::controller::reconcile::problem::ConfigProblem;

/// A Secret's `data`.
pub type Data = BTreeMap<String, ByteString>;

/// The field whose Secret holds basic, bearer or OAuth2 client credentials.
pub const AUTH_FIELD: &str = "spec.generator.http.secretRef";

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
