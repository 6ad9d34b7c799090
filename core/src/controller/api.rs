//! The API types: our `ExternalSource` (wire-compatible with the predecessor) and the subset of
//! Flux's `ExternalArtifact` that we write.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of `ExternalSource`.
pub const GROUP: &str = "source.flux.oddkin.co";
/// `apiVersion` of `ExternalSource`.
pub const API_VERSION: &str = "source.flux.oddkin.co/v1alpha1";
/// The predecessor's finalizer name, kept so objects move between the two controllers.
pub const FINALIZER: &str = "source.flux.oddkin.co/externalsource-finalizer";
/// The controller's name in Kubernetes Events (`reportingController`) and Flux events.
pub const REPORTING_CONTROLLER: &str = "externalsource-controller";
/// Flux's "reconcile now" annotation.
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
/// Metadata key of the upstream ETag in artifacts.
pub const ETAG_METADATA: &str = "etag";
/// Metadata key of the fetched URL (OCI convention Flux tooling shows).
pub const SOURCE_METADATA: &str = "org.opencontainers.image.source";
/// The CRD pattern of `interval` (Go duration syntax).
pub const INTERVAL_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Fetches an HTTP resource on an interval and publishes it as a Flux artifact.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "source.flux.oddkin.co",
    version = "v1alpha1",
    kind = "ExternalSource",
    namespaced,
    status = "ExternalSourceStatus",
    // `kubectl get extsrc`; `es` is taken by external-secrets' ExternalSecret. The categories are
    // Flux's sources', so `kubectl get fluxcd-sources` lists ExternalSources beside them.
    shortname = "extsrc",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-sources",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.artifact.revision","priority":1}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.artifact.url","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSourceSpec {
    /// How often the source is fetched, in Go duration syntax (`30s`, `5m`, `1h30m`). Values below
    /// the controller's minimum are raised to it.
    #[schemars(schema_with = "interval_schema")]
    pub interval: String,
    /// Suspends fetching; the last artifact stays published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Path of the payload inside the artifact; relative, without `..` (default `data`). With
    /// `format: archive`, the directory the unpacked tree is placed under (default: the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_path: Option<String>,
    /// What the payload is: `file` (default; it becomes the one file at `destinationPath`) or
    /// `archive` (a `.tar.gz`, `.tar` or `.zip` unpacked and repackaged as a deterministic tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<PayloadFormat>,
    /// Which part of an archive becomes the artifact (`format: archive` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSpec>,
    /// Retries for hooks (predecessor field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "max_retries_schema")]
    pub max_retries: Option<i32>,
    /// Commands run before and after the request (predecessor field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksSpec>,
    /// Where the data comes from.
    pub generator: GeneratorSpec,
    /// Total timeout of the fetch, in Go duration syntax; defaults to the controller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Largest payload accepted (decoded bytes), e.g. `10MiB`; defaults to the controller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
    /// Reshapes a JSON payload before packaging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformSpec>,
    /// A webhook that makes the controller fetch at once when the upstream says it changed
    /// (push instead of poll); served on the controller's receiver listener at
    /// `status.webhookPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<ReceiverSpec>,
    /// Checks the payload must pass before it is published. They see the response as received
    /// (after the post-request hooks, before `transform`); a payload that fails one is not
    /// published: `Ready=False` reason `ValidationFailed`, and the last good artifact stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<ValidateSpec>,
}

/// `spec.receiver`: how a push is authenticated.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverSpec {
    /// How a push proves it knows the token: `generic` (the token-derived URL path alone),
    /// `generic-hmac` (`X-Signature: sha256=<HMAC-SHA256 of the body>`), `github`
    /// (`X-Hub-Signature-256`) or `gitlab` (`X-Gitlab-Token` equal to the token).
    #[serde(rename = "type")]
    pub type_: ReceiverType,
    /// A Secret in the source's namespace whose key `token` holds the shared secret; the
    /// webhook path is derived from it.
    pub secret_ref: SecretReference,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiverType {
    Generic,
    GenericHmac,
    Github,
    Gitlab,
}

fn interval_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "minLength": 2, "pattern": INTERVAL_PATTERN })
}

fn max_retries_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "integer", "format": "int32", "minimum": 0, "maximum": 10, "default": 3 })
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    #[default]
    File,
    Archive,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSpec {
    /// Leading path segments removed from every entry first, like `tar --strip-components`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "strip_components_schema")]
    pub strip_components: Option<i32>,
    /// Then only this directory of the archive is kept, its contents at the artifact's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn strip_components_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "integer", "format": "int32", "minimum": 0, "maximum": 32 })
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HooksSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_request: Vec<HookSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_request: Vec<HookSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookSpec {
    pub name: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryPolicy {
    Ignore,
    Retry,
    Fail,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct GeneratorSpec {
    #[serde(rename = "type")]
    pub type_: GeneratorType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGeneratorSpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorType {
    Http,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGeneratorSpec {
    /// The URL fetched (http or https).
    pub url: String,
    /// HTTP method (default GET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A Secret in the same namespace whose keys and values are sent as request headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretReference>,
    /// A Secret key holding PEM certificates added to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeyReference>,
    /// Upstream credentials, with Flux's keys: `username` and `password` (HTTP basic) or
    /// `bearerToken`. Sent only to the URL's origin (redirects elsewhere are refused). Or OAuth2
    /// client credentials: `tokenURL`, `clientID`, `clientSecret`, optional `scopes` and
    /// `audience`; an access token is then obtained and sent as a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// TLS material, with Flux's keys: `tls.crt` and `tls.key` (a client certificate, for
    /// upstreams that require mTLS) and/or `ca.crt` (added to the system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretReference>,
    /// An HTTP proxy, with Flux's keys: `address` (an http:// or https:// URL) and optionally
    /// `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<SecretReference>,
    /// Skips TLS verification; for tests only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Workload identity: a ServiceAccount of the source's namespace whose short-lived token
    /// (TokenRequest API) is sent as a bearer token, only to the URL's origin. Cannot be combined
    /// with `secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The audience of the ServiceAccount token (default: the URL's origin, such as
    /// `https://api.example.com`); only with `serviceAccountName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Follows the upstream's pages and merges their items into one JSON array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination: Option<PaginationSpec>,
}

/// How the next page is found, and which part of each page is kept.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaginationSpec {
    /// `link`: the RFC 8288 `Link: <url>; rel="next"` header (GitHub, GitLab). `jq`: the `next`
    /// expression over each page.
    #[serde(rename = "type")]
    pub type_: PaginationType,
    /// With `type: jq`: a jq expression over each page yielding the next page's URL (relative
    /// URLs are resolved against the page's) or null on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// A jq expression selecting each page's array of items (default `.`, the page itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<String>,
    /// Pages fetched at most (default 10, at most the controller's `fetch.max_pages`); a next
    /// page beyond it fails the fetch rather than publishing a truncated list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pages: Option<u32>,
}

/// How a paged upstream names its next page.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PaginationType {
    Link,
    Jq,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretReference {
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyReference {
    pub name: String,
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TransformSpec {
    /// A jq expression applied to the JSON payload.
    pub jq: String,
}

/// `spec.validate`: every rule set must pass, in this order.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidateSpec {
    /// The media type the response must declare in `Content-Type`, such as `application/json`:
    /// type and subtype compared without case, parameters such as `charset` ignored. Catches an
    /// HTML login page answered with 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// A jq expression over the JSON payload that must yield exactly one value, `true`, such as
    /// `.items | length > 0`. It runs in the transform sandbox, under its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jq: Option<String>,
    /// A JSON Schema (draft 4 to 2020-12; 2020-12 without `$schema`) the JSON payload must
    /// satisfy, read from a ConfigMap of the source's namespace. Checked in the transform
    /// sandbox; references to other documents are not loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchemaSpec>,
}

/// Where the JSON Schema of `spec.validate.jsonSchema` is kept.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JsonSchemaSpec {
    /// The ConfigMap (in the source's namespace) and its key holding the schema document.
    pub config_map_ref: ConfigMapKeyReference,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ConfigMapKeyReference {
    pub name: String,
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSourceStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The published artifact (the one the ExternalArtifact points at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// The upstream ETag the published artifact was fetched with; sent as `If-None-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_e_tag: Option<String>,
    /// The generation whose spec produced the published artifact; `If-None-Match` is only sent
    /// while it is the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_generation: Option<i64>,
    /// Storage paths of the last published artifacts, newest (the current one) first; garbage
    /// collection keeps these and deletes everything else the source stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The value of the `reconcile.fluxcd.io/requestedAt` annotation last handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// Where `spec.receiver` listens on the receiver listener: `/hook/<sha256 of the token, the
    /// name and the namespace>`. Point the upstream's webhook at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_path: Option<String>,
}

/// An artifact, in Flux's shape (also used in `ExternalArtifact.status.artifact`).
///
/// Flux's schema requires only `url`, `revision`, `path` and `lastUpdateTime`, and the Go
/// predecessor wrote ExternalSource artifacts with neither `digest`, `path` nor `size`: objects we
/// did not write must still parse (one that does not would stop every list of its kind). An
/// absent `digest` or `path` reads as empty, which names no stored artifact, so such a source is
/// fetched and published again on its first reconcile. Every artifact this controller writes has
/// all of them.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub url: String,
    pub revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Bytes of the served `.tar.gz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    pub last_update_time: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Flux's `ExternalArtifact` (source.toolkit.fluxcd.io/v1); Flux owns the CRD.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "source.toolkit.fluxcd.io",
    version = "v1",
    kind = "ExternalArtifact",
    namespaced,
    status = "ExternalArtifactStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalArtifactSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<SourceRef>,
}

/// Flux requires only `kind` and `name`; the others are optional there (we always write them).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalArtifactStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Flux's CRD has no `observedGeneration` here; a field it would prune must not exist, or
    /// every comparison with the stored status would see a difference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CRD of `ExternalSource` as YAML, exactly as committed under `deploy/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&ExternalSource::crd())
}
