//! The requests one reconcile makes of the Kubernetes API, pinned request by request.
//!
//! In the style of kube-rs controller-rs's `ApiServerVerifier`: the reconcile's `kube::Client`
//! talks to [`MockApiServer`], an in-process stand-in for the API server that keeps the objects
//! it is sent (creates, merge patches, JSON patches, deletes) and logs every request. Only the API
//! server is stood in for: the upstream is a real HTTP fixture on loopback, storage is the real
//! memory backend, and the reconcile is the one `controller::run` drives.
//!
//! Each case compares the whole log with the expected list, so a request added to (or dropped
//! from) a reconcile fails it: "five writes for a new source, none in steady state" is checked
//! here without a control plane, besides by the benchmark against a real one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use externalsource_backend_memory::MemoryStorage;
use externalsource_core::Storage;
use externalsource_core::backend::host;
use externalsource_core::controller::api::{ExternalSource, REPORTING_CONTROLLER};
use externalsource_core::controller::context::{Context, Settings};
use externalsource_core::controller::events::kubernetes::EventRecorder;
use externalsource_core::controller::hooks::spec::HookDefaults;
use externalsource_core::controller::reconcile::plan::Defaults;
use externalsource_core::controller::reconcile::reconcile;
use externalsource_core::controller::runtime::metrics::Metrics;
use externalsource_core::controller::upstream::client::Fetcher;
use externalsource_core::controller::upstream::egress::EgressPolicy;
use externalsource_core::isolated::transform::sandbox::Sandbox;
use externalsource_tests::controller::test_transform_limits;
use externalsource_tests::fixture::{Reply, Upstream};
use externalsource_tests::process::controller_binary;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::core::PartialObjectMeta;
use serde_json::{Value, json};

const NS: &str = "team";
const NAME: &str = "s";
const SOURCES: &str = "/apis/source.flux.oddkin.co/v1alpha1/namespaces/team/externalsources";
const ARTIFACTS: &str = "/apis/source.toolkit.fluxcd.io/v1/namespaces/team/externalartifacts";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team/events";

/// One request as the API server saw it: method, path (no query) and, for a write, what it
/// changes (the top-level keys of a merge patch, `metadata.*` keys one level down, or the
/// operations of a JSON patch other than its tests).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    method: Method,
    path: String,
    changes: Vec<String>,
}

fn call(method: Method, path: impl Into<String>, changes: &[&str]) -> Call {
    Call { method, path: path.into(), changes: changes.iter().map(|c| (*c).to_owned()).collect() }
}

#[derive(Default)]
struct State {
    /// Objects by their path (the status subresource is the same object).
    objects: BTreeMap<String, Value>,
    log: Vec<Call>,
    version: u64,
}

/// A mock of the Kubernetes API server, in process: a store of JSON objects answering what a
/// reconcile asks (get, create, merge and JSON patches with `resourceVersion` preconditions,
/// delete), and a log of every request. It knows nothing of this controller's types.
#[derive(Clone, Default)]
struct MockApiServer(Arc<Mutex<State>>);

impl MockApiServer {
    fn client(&self) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.answer(request).await) }
        });
        kube::Client::new(service, "default")
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `object` at `path` as if a client had created it.
    fn seed(&self, path: &str, mut object: Value) {
        let mut state = self.state();
        state.version += 1;
        object["metadata"]["resourceVersion"] = json!(state.version.to_string());
        state.objects.insert(path.to_owned(), object);
    }

    fn object(&self, path: &str) -> Option<Value> {
        self.state().objects.get(path).cloned()
    }

    /// The requests since the last call.
    fn take_log(&self) -> Vec<Call> {
        std::mem::take(&mut self.state().log)
    }

    async fn answer(&self, request: Request<kube::client::Body>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.expect("request body").to_bytes();
        let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("JSON body") };
        let path = parts.uri.path().to_owned();
        let json_patch =
            parts.headers.get(http::header::CONTENT_TYPE).is_some_and(|t| t == "application/json-patch+json");
        let mut state = self.state();
        state.log.push(Call { method: parts.method.clone(), path: path.clone(), changes: changes(&body, json_patch) });
        let object_path = path.strip_suffix("/status").unwrap_or(&path).to_owned();
        match parts.method {
            Method::GET => match state.objects.get(&object_path) {
                Some(object) => reply(StatusCode::OK, object),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            Method::POST => {
                let name = body["metadata"]["name"].as_str().expect("a created object names itself").to_owned();
                let object_path = format!("{path}/{name}");
                if state.objects.contains_key(&object_path) {
                    return status(StatusCode::CONFLICT, "AlreadyExists");
                }
                let mut object = body;
                state.version += 1;
                let version = state.version;
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                object["metadata"]["uid"] = json!(format!("uid-{version}"));
                object["metadata"]["generation"] = json!(1);
                state.objects.insert(object_path, object.clone());
                reply(StatusCode::CREATED, &object)
            }
            Method::PATCH => {
                state.version += 1;
                let version = state.version.to_string();
                let Some(object) = state.objects.get_mut(&object_path) else {
                    return status(StatusCode::NOT_FOUND, "NotFound");
                };
                if json_patch {
                    // The API server reads an absent list as null; the crate needs it spelled out.
                    if object["metadata"].get("finalizers").is_none() {
                        object["metadata"]["finalizers"] = Value::Null;
                    }
                    let ops: json_patch::Patch = serde_json::from_value(body).expect("JSON patch");
                    if json_patch::patch(object, &ops).is_err() {
                        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
                    }
                } else {
                    let wanted = body["metadata"]["resourceVersion"].as_str();
                    if wanted.is_some_and(|v| Some(v) != object["metadata"]["resourceVersion"].as_str()) {
                        return status(StatusCode::CONFLICT, "Conflict");
                    }
                    json_patch::merge(object, &body);
                }
                object["metadata"]["resourceVersion"] = json!(version);
                reply(StatusCode::OK, object)
            }
            Method::DELETE => match state.objects.remove(&object_path) {
                Some(object) => reply(StatusCode::OK, &object),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            other => panic!("the mock API server was sent {other} {path}"),
        }
    }
}

/// What a write changes, as [`Call::changes`] describes it.
fn changes(body: &Value, json_patch: bool) -> Vec<String> {
    if json_patch {
        let ops = body.as_array().map(Vec::as_slice).unwrap_or_default();
        let mut changes = Vec::new();
        for op in ops.iter().filter(|op| op["op"] != "test") {
            changes.push(format!("{} {}", op["op"].as_str().unwrap_or(""), op["path"].as_str().unwrap_or("")));
        }
        return changes;
    }
    let Some(fields) = body.as_object() else { return Vec::new() };
    let mut changes = Vec::new();
    for (key, value) in fields {
        match (key.as_str(), value.as_object()) {
            ("metadata", Some(metadata)) => changes.extend(metadata.keys().map(|k| format!("metadata.{k}"))),
            _ => changes.push(key.clone()),
        }
    }
    changes
}

fn reply(code: StatusCode, object: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(object).expect("JSON");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(http::header::CONTENT_TYPE, "application/json".parse().expect("header"));
    response
}

fn status(code: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("mock API server: {reason}"), "reason": reason, "code": code.as_u16(),
    });
    reply(code, &body)
}

/// A reconcile context as the binary builds it, on the mock's client and a new memory store.
fn context(api: &MockApiServer) -> Arc<Context> {
    context_on(api, host(MemoryStorage::new(16 << 20), Some("http://127.0.0.1:9")))
}

/// A reconcile context on the mock's client and `storage`.
fn context_on(api: &MockApiServer, storage: Arc<dyn Storage>) -> Arc<Context> {
    let client = api.client();
    let metrics = Arc::new(Metrics::register(&mut prometheus_client::registry::Registry::default()));
    let hooks = HookDefaults {
        enabled: false,
        default_timeout: std::time::Duration::from_secs(10),
        max_timeout: std::time::Duration::from_secs(60),
    };
    let settings = Settings {
        defaults: Defaults {
            min_interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(5),
            max_timeout: std::time::Duration::from_secs(600),
            max_size: 1 << 20,
            hooks,
            workload_identity: true,
        },
        retention: 2,
        finalizer_attempts: 5,
        namespace_concurrency: 4,
        memory_budget: 64 << 20,
        namespace_quota: None,
        hook_socket: None,
        watch_label_selector: None,
        events_addr: None,
        reporting_instance: "test".into(),
    };
    Arc::new(Context::new(
        client.clone(),
        storage,
        Fetcher::with_policy("externalsource-controller/test", EgressPolicy::default()),
        settings,
        EventRecorder::new(client, REPORTING_CONTROLLER, "test"),
        metrics,
        Sandbox::new(controller_binary(), test_transform_limits()),
    ))
}

/// A new ExternalSource of `url`, as the API server stores it.
fn new_source(api: &MockApiServer, url: &str) -> Arc<ExternalSource> {
    api.seed(
        &format!("{SOURCES}/{NAME}"),
        json!({
            "apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource",
            "metadata": {"name": NAME, "namespace": NS, "uid": "source-uid", "generation": 1},
            "spec": {"interval": "10m", "generator": {"type": "http", "http": {"url": url}}},
        }),
    );
    stored_source(api)
}

/// The ExternalSource as the mock holds it now (what the next watch event would bring).
fn stored_source(api: &MockApiServer) -> Arc<ExternalSource> {
    let object = api.object(&format!("{SOURCES}/{NAME}")).expect("the source is stored");
    Arc::new(serde_json::from_value(object).expect("an ExternalSource"))
}

/// Tells the context what the ExternalArtifact watch would: the stored version of it.
fn watch_reports_artifact(api: &MockApiServer, ctx: &Context) {
    let object = api.object(&format!("{ARTIFACTS}/{NAME}")).expect("the ExternalArtifact is stored");
    let meta: PartialObjectMeta<_> = serde_json::from_value(object).expect("metadata");
    ctx.artifact_cache().observed(&meta);
}

/// What a created ExternalArtifact carries: the source's labels (none here besides ours), its
/// owner and its spec; the status comes in a write of its own.
const ARTIFACT_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.ownerReferences",
    "spec",
];
/// What a created Event carries.
const EVENT_FIELDS: &[&str] = &[
    "action",
    "apiVersion",
    "eventTime",
    "kind",
    "metadata.name",
    "metadata.namespace",
    "note",
    "reason",
    "regarding",
    "reportingController",
    "reportingInstance",
    "type",
];

/// The five writes of a first publication, after which the source is Ready.
fn first_publication() -> Vec<Call> {
    vec![
        call(Method::PATCH, format!("{SOURCES}/{NAME}"), &["add /metadata/finalizers"]),
        call(Method::POST, ARTIFACTS, ARTIFACT_FIELDS),
        call(Method::PATCH, format!("{ARTIFACTS}/{NAME}/status"), &["status"]),
        call(Method::PATCH, format!("{SOURCES}/{NAME}/status"), &["status"]),
        call(Method::POST, EVENTS, EVENT_FIELDS),
    ]
}

fn ready(es: &ExternalSource) -> bool {
    let conditions = es.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

#[tokio::test]
async fn a_new_source_costs_five_writes_and_no_read() {
    let upstream = Upstream::start(Reply::ok("payload").with_etag("\"v1\"")).await;
    let api = MockApiServer::default();
    let ctx = context(&api);
    let es = new_source(&api, &upstream.url("/data"));
    reconcile(es, ctx.clone()).await.expect("the reconcile succeeds");
    assert_eq!(api.take_log(), first_publication());
    assert!(ready(&stored_source(&api)), "the source is Ready");
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn an_unchanged_source_in_steady_state_costs_no_request() {
    let upstream = Upstream::start(Reply::ok("payload").with_etag("\"v1\"")).await;
    let api = MockApiServer::default();
    let ctx = context(&api);
    reconcile(new_source(&api, &upstream.url("/data")), ctx.clone()).await.expect("first reconcile");
    api.take_log();
    watch_reports_artifact(&api, &ctx);

    // At the interval: the upstream answers 304 to the recorded ETag, and nothing is written.
    reconcile(stored_source(&api), ctx.clone()).await.expect("steady reconcile");
    assert_eq!(api.take_log(), vec![], "no read and no write in steady state");
    assert_eq!(upstream.requests().last().map(|r| r.status), Some(304));

    // The same bytes under a new ETag: the same revision, so the ExternalArtifact is left alone;
    // only the ETag recorded in the source's status changes.
    upstream.set(Reply::ok("payload").with_etag("\"v2\""));
    reconcile(stored_source(&api), ctx.clone()).await.expect("same bytes");
    assert_eq!(api.take_log(), vec![call(Method::PATCH, format!("{SOURCES}/{NAME}/status"), &["status"])]);

    // A process that did not publish it (a restart, a new leader) reads the ExternalArtifact
    // once, and writes nothing.
    let fresh = context_on(&api, ctx.storage.clone());
    reconcile(stored_source(&api), fresh).await.expect("after a restart");
    assert_eq!(api.take_log(), vec![call(Method::GET, format!("{ARTIFACTS}/{NAME}"), &[])]);
}

#[tokio::test]
async fn a_failed_fetch_writes_the_status_and_an_event_only() {
    let upstream = Upstream::start(Reply::status(500)).await;
    let api = MockApiServer::default();
    let ctx = context(&api);
    // A transient failure: written down, and retried with backoff.
    let _ = reconcile(new_source(&api, &upstream.url("/data")), ctx.clone()).await;
    assert_eq!(
        api.take_log(),
        vec![
            call(Method::PATCH, format!("{SOURCES}/{NAME}"), &["add /metadata/finalizers"]),
            // Nothing to publish: the ExternalArtifact is only looked at, never created.
            call(Method::GET, format!("{ARTIFACTS}/{NAME}"), &[]),
            call(Method::PATCH, format!("{SOURCES}/{NAME}/status"), &["status"]),
            call(Method::POST, EVENTS, EVENT_FIELDS),
        ]
    );
    assert!(!ready(&stored_source(&api)));

    // The same failure again: the status says so already; the Event is counted on.
    let _ = reconcile(stored_source(&api), ctx.clone()).await;
    let log = api.take_log();
    assert!(!log.iter().any(|c| c.path.ends_with("/status")), "an unchanged failure is not written again: {log:?}");
    assert!(!log.iter().any(|c| c.method == Method::POST), "no new object: {log:?}");
}

#[tokio::test]
async fn a_deletion_removes_the_artifact_then_the_finalizer() {
    let upstream = Upstream::start(Reply::ok("payload").with_etag("\"v1\"")).await;
    let api = MockApiServer::default();
    let ctx = context(&api);
    reconcile(new_source(&api, &upstream.url("/data")), ctx.clone()).await.expect("first reconcile");
    api.take_log();
    let stored = ctx.storage.list(&externalsource_core::key::artifact_dir(NS, NAME)).await.expect("list");
    assert_eq!(stored.len(), 1, "one revision stored");

    let mut deleting = (*stored_source(&api)).clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    reconcile(Arc::new(deleting), ctx.clone()).await.expect("cleanup");
    assert_eq!(
        api.take_log(),
        vec![
            call(Method::GET, format!("{ARTIFACTS}/{NAME}"), &[]),
            call(Method::DELETE, format!("{ARTIFACTS}/{NAME}"), &[]),
            call(Method::PATCH, format!("{SOURCES}/{NAME}"), &["remove /metadata/finalizers/0"]),
        ]
    );
    let left = ctx.storage.list(&externalsource_core::key::artifact_dir(NS, NAME)).await.expect("list");
    assert!(left.is_empty(), "stored revisions are deleted");
    assert!(api.object(&format!("{ARTIFACTS}/{NAME}")).is_none());
}
