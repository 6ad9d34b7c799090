//! The Kubernetes side: the wiring of the kube-runtime `Controller` (this module) and what it runs.
//!
//! - [`api`] and [`conditions`]: the resource types, the names we use on them, the conditions;
//! - [`context`]: what every reconcile shares;
//! - [`reconcile`](mod@reconcile): the entry point and its steps (plan, credentials, hooks, fetch, transform,
//!   package, store), the finalizer and cleanup; [`outcome`]: the pure decisions between them;
//! - [`finish`]: the single writer of a reconcile's results (statuses, garbage collection,
//!   Event) and of when it runs next; [`publish`]: the ExternalArtifact; [`writer`]: how writes
//!   are made (field manager, status patches);
//! - [`receiver`]: the push receiver's side of `spec.receiver` (paths, signatures, requests);
//! - [`upstream`]: the HTTP client that fetches, its egress policy and URL redaction;
//! - [`hooks`]: the reconciler's side of `spec.hooks` (the executor is in
//!   [`isolated`](crate::isolated));
//! - [`events`]: Kubernetes Events and Flux events;
//! - [`runtime`]: leader election, metrics, the memory budget, the restore pass, lenient parsing.

pub mod api;
pub mod conditions;
pub mod context;
pub mod events;
pub mod finish;
pub mod hooks;
pub mod outcome;
pub mod publish;
pub mod receiver;
pub mod reconcile;
pub mod requests;
pub mod revision;
pub mod runtime;
pub mod upstream;
pub mod writer;

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};

use api::{ExternalArtifact, ExternalSource, FINALIZER, REQUESTED_AT};
use context::Context;
use reconcile::{error_policy, reconcile};

/// Failures that stop the controller from starting. Each names what is missing: the CRD, or our
/// permission to list it; never the content of an object.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the {kind} CRD ({group}) is not installed: {source}; {hint}")]
    MissingCrd {
        kind: &'static str,
        group: &'static str,
        hint: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(
        "this controller may not list {kind}s ({group}) in every namespace: {source}; grant it the ClusterRole \
         shipped in deploy/base/rbac (or the chart's)"
    )]
    Forbidden {
        kind: &'static str,
        group: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("listing {kind}s ({group}) failed: {source}")]
    List {
        kind: &'static str,
        group: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// One CRD [`check_crds`] looks for.
struct Needed {
    kind: &'static str,
    group: &'static str,
    hint: &'static str,
}

impl Needed {
    /// Why listing failed, by the API server's answer.
    fn failure(&self, source: kube::Error) -> StartError {
        let Self { kind, group, hint } = *self;
        match &source {
            kube::Error::Api(status) if status.code == 404 => StartError::MissingCrd { kind, group, hint, source },
            kube::Error::Api(status) if status.code == 403 => StartError::Forbidden { kind, group, source },
            _ => StartError::List { kind, group, source },
        }
    }
}

/// Checks that both CRDs we use are served and listable by us, so a missing install or missing
/// RBAC fails fast and clearly. It lists metadata only: the content of an object (which another
/// producer may have written in a shape we do not expect) must never stop a start.
pub async fn check_crds(client: &kube::Client) -> Result<(), StartError> {
    let first = ListParams::default().limit(1);
    let sources = Needed {
        kind: "ExternalSource",
        group: api::GROUP,
        hint: "install it with `kubectl apply -k deploy/default` or `externalsource-controller crd | kubectl apply -f -`",
    };
    let listed = Api::<ExternalSource>::all(client.clone()).list_metadata(&first).await;
    listed.map_err(|e| sources.failure(e))?;
    let artifacts =
        Needed { kind: "ExternalArtifact", group: "source.toolkit.fluxcd.io", hint: "it ships with Flux 2.7 or later" };
    let listed = Api::<ExternalArtifact>::all(client.clone()).list_metadata(&first).await;
    listed.map_err(|e| artifacts.failure(e))?;
    Ok(())
}

/// What triggers a reconcile of an ExternalSource: a spec change (generation), Flux's
/// requestedAt annotation, the loss of our finalizer and deletion; never our own writes.
pub(crate) fn trigger_hash(es: &ExternalSource) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    es.metadata.generation.hash(&mut h);
    es.annotations().get(REQUESTED_AT).hash(&mut h);
    // Our finalizer is added by the first reconcile itself (see `reconcile::finalizer`): only its removal
    // from a source already reconciled (it has a status) is news. Hashing the list would
    // reconcile every new source twice.
    let finalizer_lost = es.status.is_some() && !es.finalizers().iter().any(|f| f == FINALIZER);
    finalizer_lost.hash(&mut h);
    // Labels and chosen annotations are copied to the ExternalArtifact: a change is published
    // without waiting.
    es.labels().hash(&mut h);
    publish::metadata::copied_annotations(es).hash(&mut h);
    es.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Names of the Secrets a source reads.
fn referenced_secrets(es: &ExternalSource) -> impl Iterator<Item = &str> {
    let http = es.spec.generator.http.as_ref();
    http.into_iter()
        .flat_map(|h| {
            [
                h.headers_secret_ref.as_ref(),
                h.secret_ref.as_ref(),
                h.cert_secret_ref.as_ref(),
                h.proxy_secret_ref.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(|r| r.name.as_str())
            .chain(h.ca_bundle_secret_ref.as_ref().map(|r| r.name.as_str()))
        })
        .chain(es.spec.receiver.as_ref().map(|r| r.secret_ref.name.as_str()))
}

/// Names of the ConfigMaps a source reads (the JSON Schema of `spec.validate`).
fn referenced_config_maps(es: &ExternalSource) -> impl Iterator<Item = &str> {
    let validate = es.spec.validate.as_ref();
    validate.and_then(|v| v.json_schema.as_ref()).map(|s| s.config_map_ref.name.as_str()).into_iter()
}

/// A metadata-only watch of the objects of kind `K` (no data is cached, a Secret's least of
/// all), and the sources each change concerns: those of its namespace that `refers` says name it.
#[allow(clippy::type_complexity, reason = "the two halves Controller::watches_stream takes")]
fn referenced_by<K>(
    client: &kube::Client,
    sources: reflector::Store<ExternalSource>,
    refers: fn(&ExternalSource, &str) -> bool,
) -> (
    impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static,
    impl Fn(PartialObjectMeta<K>) -> Vec<ObjectRef<ExternalSource>> + Send + Sync + 'static,
)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let changes = watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .touched_objects();
    let concerned = move |object: PartialObjectMeta<K>| {
        let (ns, name) = (object.namespace(), object.name_any());
        sources
            .state()
            .into_iter()
            .filter(|es| es.namespace() == ns && refers(es, &name))
            .map(|es| ObjectRef::from_obj(es.as_ref()))
            .collect::<Vec<_>>()
    };
    (changes, concerned)
}

/// Changes of ExternalArtifacts worth a reconcile of their owner: a new generation (someone
/// edited the spec) or a deletion. Our own status writes do not bump the generation, and our own
/// creations are not changes, so neither echoes back as a reconcile. Metadata is all this needs
/// (owner, generation, UID): the API server sends no status, we parse none.
///
/// Every version it sees goes to the [`publish::cache::ArtifactCache`], which is what lets a reconcile skip
/// reading an ExternalArtifact nobody changed, and a reconcile request set on one is handed on to
/// its ExternalSource (see [`requests`]).
fn artifact_changes(
    client: kube::Client,
    config: watcher::Config,
    ctx: Arc<Context>,
    sources: reflector::Store<ExternalSource>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<ExternalArtifact>, watcher::Error>> + Send + 'static {
    let requester = ctx.client.clone();
    let hand_on = move |ea: &PartialObjectMeta<ExternalArtifact>| {
        if let Some(request) = requests::forward(ea, &sources) {
            tokio::spawn(request.send(requester.clone()));
        }
    };
    watcher(Api::<PartialObjectMeta<ExternalArtifact>>::all(client), config).default_backoff().filter_map(
        move |event| {
            let cache = &ctx.artifacts;
            let relevant = match event {
                Ok(watcher::Event::Init) => {
                    cache.relist_started();
                    None
                }
                Ok(watcher::Event::InitApply(ea)) => {
                    cache.relisted(&ea);
                    hand_on(&ea);
                    None
                }
                Ok(watcher::Event::InitDone) => {
                    cache.relist_done();
                    None
                }
                // A spec edit of a known ExternalArtifact (see `ArtifactCache::observed`).
                Ok(watcher::Event::Apply(ea)) => {
                    hand_on(&ea);
                    cache.observed(&ea).then_some(Ok(ea))
                }
                Ok(watcher::Event::Delete(ea)) => {
                    cache.deleted(&ea);
                    Some(Ok(ea))
                }
                Err(e) => Some(Err(e)),
            };
            std::future::ready(relevant)
        },
    )
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, concurrency: u16, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let (reader, writer) = reflector::store();
    // A shard watches only its sources, and their ExternalArtifacts, which carry the same labels.
    let shard = |config: watcher::Config| match &ctx.settings.watch_label_selector {
        Some(selector) => config.labels(selector),
        None => config,
    };
    // Each source is parsed on its own (see `readable`): one that does not parse is reported and
    // skipped instead of failing every list.
    let unreadable = runtime::readable::Reported::default();
    let listed = Api::<runtime::readable::Readable<ExternalSource>>::all(client.clone());
    let sources = watcher(listed, shard(watcher::Config::default().any_semantic()))
        .default_backoff()
        .filter_map(move |event| std::future::ready(event.map(|e| unreadable.filter(e)).transpose()))
        // The cache keeps every source for the controller's lifetime; managed fields are the
        // bulk of an object (parsed into JSON maps) and nothing here reads them.
        .modify(|es| es.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(trigger_hash, Default::default());
    // Changes of the Secrets and ConfigMaps (JSON Schemas) a source names reconcile it.
    let (secrets, secret_mapper) =
        referenced_by::<Secret>(&client, reader.clone(), |es, name| referenced_secrets(es).any(|s| s == name));
    let (config_maps, config_map_mapper) =
        referenced_by::<ConfigMap>(&client, reader.clone(), |es, name| referenced_config_maps(es).any(|c| c == name));
    let artifacts = artifact_changes(client, shard(watcher::Config::default()), ctx.clone(), reader.clone());
    Controller::for_stream(sources, reader)
        .owns_stream(artifacts)
        .watches_stream(secrets, secret_mapper)
        .watches_stream(config_maps, config_map_mapper)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
