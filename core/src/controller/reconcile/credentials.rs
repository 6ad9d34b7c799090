//! What a fetch takes from Secrets: raw headers (`headersSecretRef`), a CA bundle
//! (`caBundleSecretRef`), and, with the key names of Flux's sources, basic or bearer credentials
//! (`secretRef`), a client certificate and CA (`certSecretRef`) and a proxy (`proxySecretRef`).
//! A `secretRef` may instead hold OAuth2 client credentials (see [`oauth2`]).
//!
//! A missing Secret or key is a configuration problem naming both (the source stalls until the
//! Secret changes; the Secrets are watched). Values never appear in messages.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

use crate::controller::context::Context;
use crate::controller::outcome::Outcome;
use crate::controller::reconcile::error::Stop;
use crate::controller::reconcile::oauth2::{self, ClientCredentials};
use crate::controller::reconcile::plan::{self, Plan};
use crate::controller::reconcile::problem::ConfigProblem;
use crate::controller::reconcile::scope::Scope;
use crate::controller::reconcile::secret_data::{self, AUTH_FIELD, Data, invalid, missing_key, text};
use crate::controller::reconcile::workload_identity::spec as workload_identity;
use crate::controller::upstream::client::{ProxySettings, SecretBytes, TlsSettings};

/// Everything a fetch needs from Secrets.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub headers: HeaderMap,
    pub tls: TlsSettings,
    pub proxy: Option<ProxySettings>,
    /// `secretRef` asks for an OAuth2 access token (see [`oauth2`]) instead of
    /// holding a static credential.
    pub oauth2: Option<ClientCredentials>,
}

const HEADERS_FIELD: &str = "spec.generator.http.headersSecretRef";
const CA_BUNDLE_FIELD: &str = "spec.generator.http.caBundleSecretRef";
const CERT_FIELD: &str = "spec.generator.http.certSecretRef";
const PROXY_FIELD: &str = "spec.generator.http.proxySecretRef";

/// `secretRef`: `username` + `password` (basic) or `bearerToken`, as an `Authorization` value.
pub fn authorization(secret: &str, data: &Data) -> Result<HeaderValue, ConfigProblem> {
    let f = AUTH_FIELD;
    let user = text(f, secret, data, "username")?;
    let pass = text(f, secret, data, "password")?;
    let token = text(f, secret, data, "bearerToken")?;
    let value = match (user, pass, token) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(invalid(f, secret, "has both bearerToken and username/password; keep one of them"));
        }
        (None, None, Some(token)) => format!("Bearer {token}"),
        (Some(user), Some(pass), None) => {
            use base64::Engine as _;
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
        }
        (Some(_), None, None) => {
            return Err(missing_key(f, secret, "password", "basic auth needs username and password"));
        }
        (None, Some(_), None) => {
            return Err(missing_key(f, secret, "username", "basic auth needs username and password"));
        }
        (None, None, None) => {
            return Err(missing_key(f, secret, "username", "it needs username and password, or bearerToken"));
        }
    };
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| invalid(f, secret, "holds a credential that is not a valid HTTP header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// `certSecretRef`: the client identity (`tls.crt` + `tls.key`, PEM) and the CA (`ca.crt`).
pub fn client_tls(secret: &str, data: &Data) -> Result<(Option<SecretBytes>, Option<Vec<u8>>), ConfigProblem> {
    let f = CERT_FIELD;
    let (crt, key) = (data.get("tls.crt"), data.get("tls.key"));
    let identity = match (crt, key) {
        (Some(crt), Some(key)) => {
            let mut pem = crt.0.clone();
            pem.push(b'\n');
            pem.extend_from_slice(&key.0);
            Some(SecretBytes(pem))
        }
        (Some(_), None) => return Err(missing_key(f, secret, "tls.key", "a client certificate needs its key")),
        (None, Some(_)) => return Err(missing_key(f, secret, "tls.crt", "a client key needs its certificate")),
        (None, None) => None,
    };
    let ca = data.get("ca.crt").map(|v| v.0.clone());
    if identity.is_none() && ca.is_none() {
        return Err(missing_key(f, secret, "tls.crt", "it needs tls.crt and tls.key, or ca.crt"));
    }
    Ok((identity, ca))
}

/// `proxySecretRef`: `address` and optional `username` / `password`.
pub fn proxy(secret: &str, data: &Data) -> Result<ProxySettings, ConfigProblem> {
    let f = PROXY_FIELD;
    let address =
        text(f, secret, data, "address")?.ok_or_else(|| missing_key(f, secret, "address", "the proxy URL"))?;
    let url = Url::parse(address)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| invalid(f, secret, "key \"address\" must be an http:// or https:// URL with a host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            f,
            secret,
            "key \"address\" must not hold credentials; use the username and password keys",
        ));
    }
    let username = text(f, secret, data, "username")?.map(str::to_owned);
    let password = text(f, secret, data, "password")?.map(|p| SecretBytes(p.as_bytes().to_vec()));
    match (&username, &password) {
        (Some(_), None) => return Err(missing_key(f, secret, "password", "proxy auth needs username and password")),
        (None, Some(_)) => return Err(missing_key(f, secret, "username", "proxy auth needs username and password")),
        _ => {}
    }
    Ok(ProxySettings { url, username, password })
}

/// The credentials step: what the plan names, read from Secrets of the source's namespace. A
/// missing Secret or key stalls the source until the Secret changes.
pub async fn read_for(scope: &Scope<'_>, ctx: &Context, plan: &Plan) -> Result<Credentials, Stop> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &scope.namespace);
    match read(&secrets, &scope.namespace, plan).await? {
        Ok(credentials) => Ok(credentials),
        Err(problem) => Err(Outcome::Stalled { problem, recheck_at_interval: false }.into()),
    }
}

/// Reads every Secret `plan` references. `Ok(Err(_))` is a configuration problem.
pub async fn read(
    secrets: &Api<Secret>,
    ns: &str,
    plan: &Plan,
) -> Result<Result<Credentials, ConfigProblem>, kube::Error> {
    let mut out = Credentials {
        tls: TlsSettings { insecure_skip_verify: plan.insecure_skip_verify, ..Default::default() },
        ..Default::default()
    };
    // A configuration problem ends the read: `Ok(Err(problem))`.
    macro_rules! check {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(problem) => return Ok(Err(problem)),
            }
        };
    }
    macro_rules! data {
        ($field:expr, $name:expr) => {
            check!(secret_data::read(secrets, ns, $field, $name).await?)
        };
    }
    if let Some(name) = &plan.headers_secret {
        out.headers = check!(plan::headers_from_secret(name, &data!(HEADERS_FIELD, name)));
        if let Some(identity) = plan.identity.as_ref().filter(|_| out.headers.contains_key(AUTHORIZATION)) {
            return Ok(Err(ConfigProblem::invalid(
                workload_identity::ACCOUNT_FIELD,
                &identity.account,
                format!(
                    "conflicts with the Authorization key of the {HEADERS_FIELD} Secret {name:?}; keep one of them"
                ),
            )));
        }
    }
    if let Some(name) = &plan.auth_secret {
        let data = data!(AUTH_FIELD, name);
        let value = if oauth2::requested(&data) {
            out.oauth2 = Some(check!(oauth2::from_secret(name, &data)));
            None
        } else {
            Some(check!(authorization(name, &data)))
        };
        if out.headers.contains_key(AUTHORIZATION) {
            return Ok(Err(ConfigProblem::invalid(
                AUTH_FIELD,
                name,
                "conflicts with the Authorization key of the headersSecretRef Secret; set it in one place",
            )));
        }
        if let Some(value) = value {
            out.headers.insert(AUTHORIZATION, value);
        }
    }
    let mut ca = Vec::new();
    if let Some((name, key)) = &plan.ca_bundle {
        let data = data!(CA_BUNDLE_FIELD, name);
        let pem =
            check!(data.get(key).ok_or_else(|| missing_key(CA_BUNDLE_FIELD, name, key, "the CA bundle it names")));
        ca.extend_from_slice(&pem.0);
    }
    if let Some(name) = &plan.cert_secret {
        let (identity, cert_ca) = check!(client_tls(name, &data!(CERT_FIELD, name)));
        out.tls.client_identity = identity;
        if let Some(pem) = cert_ca {
            if !ca.is_empty() {
                ca.push(b'\n');
            }
            ca.extend_from_slice(&pem);
        }
    }
    out.tls.ca_bundle = (!ca.is_empty()).then_some(ca);
    if let Some(name) = &plan.proxy_secret {
        out.proxy = Some(check!(proxy(name, &data!(PROXY_FIELD, name))));
    }
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::conditions::Reason;

    fn data(pairs: &[(&str, &str)]) -> Data {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec()))).collect()
    }

    #[test]
    fn basic_and_bearer_credentials() {
        let v = authorization("creds", &data(&[("username", "flux"), ("password", "s3cret\n")])).unwrap();
        assert_eq!(v.to_str().unwrap(), "Basic Zmx1eDpzM2NyZXQ=", "base64 of flux:s3cret, trailing newline dropped");
        assert!(v.is_sensitive());
        let v = authorization("creds", &data(&[("bearerToken", "abc.def")])).unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer abc.def");
    }

    #[test]
    fn credential_problems_name_secret_and_key_without_values() {
        let e = authorization("creds", &data(&[("username", "flux")])).unwrap_err();
        assert_eq!(e.reason, Reason::SecretNotFound);
        assert!(e.message.contains("\"creds\"") && e.message.contains("\"password\""), "{}", e.message);
        let e = authorization("creds", &data(&[])).unwrap_err();
        assert!(e.message.contains("username and password, or bearerToken"), "{}", e.message);
        let e = authorization("creds", &data(&[("bearerToken", "tok-123"), ("username", "u")])).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert!(!e.message.contains("tok-123"), "{}", e.message);
        let e = authorization("creds", &data(&[("bearerToken", "bad\u{7}token")])).unwrap_err();
        assert!(!e.message.contains("bad"), "the value is not shown: {}", e.message);
    }

    #[test]
    fn client_certificate_needs_both_halves() {
        let (id, ca) = client_tls("tls", &data(&[("tls.crt", "CRT"), ("tls.key", "KEY"), ("ca.crt", "CA")])).unwrap();
        assert_eq!(id.unwrap().0, b"CRT\nKEY");
        assert_eq!(ca.unwrap(), b"CA");
        let e = client_tls("tls", &data(&[("tls.crt", "CRT")])).unwrap_err();
        assert!(e.message.contains("\"tls.key\"") && e.message.contains("\"tls\""), "{}", e.message);
        let e = client_tls("tls", &data(&[("tls.key", "KEY")])).unwrap_err();
        assert!(e.message.contains("\"tls.crt\""), "{}", e.message);
        let e = client_tls("tls", &data(&[("other", "x")])).unwrap_err();
        assert!(e.message.contains("tls.crt and tls.key, or ca.crt"), "{}", e.message);
        let (id, ca) = client_tls("tls", &data(&[("ca.crt", "CA")])).unwrap();
        assert!(id.is_none() && ca.is_some(), "a CA alone is fine");
    }

    #[test]
    fn proxy_address_and_credentials() {
        let p = proxy("px", &data(&[("address", "http://proxy.example:3128\n")])).unwrap();
        assert_eq!(p.url.as_str(), "http://proxy.example:3128/");
        assert!(p.username.is_none());
        let p =
            proxy("px", &data(&[("address", "https://proxy.example"), ("username", "u"), ("password", "p")])).unwrap();
        assert_eq!(p.username.as_deref(), Some("u"));
        assert!(!format!("{p:?}").contains("\"p\""), "the password is not in Debug: {p:?}");
        for (pairs, word) in [
            (&[("username", "u")][..], "\"address\""),
            (&[("address", "socks5://x:1080")][..], "http:// or https://"),
            (&[("address", "http://u:p@x:3128")][..], "must not hold credentials"),
            (&[("address", "http://x:3128"), ("username", "u")][..], "\"password\""),
        ] {
            let e = proxy("px", &data(pairs)).unwrap_err();
            assert!(e.message.contains(word) && e.message.contains("\"px\""), "{pairs:?}: {}", e.message);
        }
    }
}
