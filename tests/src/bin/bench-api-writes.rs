//! The control plane's own write rate: the floor under any controller's throughput.
//!
//! For each of `--sources` existing ExternalSources (`<prefix><NNNN>`, as `tests/bench/reconcile.sh`
//! creates them), this client makes exactly the five writes the controller makes to publish a first
//! artifact, and nothing else: no watch, no read, no fetch, no packaging. With `--concurrency`
//! sources in flight it measures how many writes per second the API server and etcd on this
//! machine accept, so the controller's throughput can be stated as a fraction of what the control
//! plane allows at its writes per source.
//!
//! The writes, in the controller's order and with payloads of the controller's shape:
//! 1. the finalizer (a JSON patch of the ExternalSource's metadata, tested against an empty list);
//! 2. the ExternalArtifact (a create, owned by the source);
//! 3. the ExternalArtifact's status (a merge patch of the subresource);
//! 4. an Event (events.k8s.io/v1, as kube's `Recorder` posts it);
//! 5. the ExternalSource's status (a merge patch of the subresource, Ready=True and the artifact).
//!
//! The artifact is the one the controller publishes for the bench's sources, down to its metadata
//! (the upstream's ETag and redacted URL) and the status's `lastHandledETag`: the API server's cost
//! of a write grows with the object it stores, so the floor's objects are the controller's size.
//!
//! Prints one line: `sources <n> concurrency <c> seconds <s> writes <w> writes_per_s <r>`.
//! Uses the kubeconfig of the environment (`KUBECONFIG`).

use std::time::Instant;

use externalsource_core::controller::api::{
    API_VERSION, Artifact, ExternalArtifact, ExternalArtifactSpec, ExternalArtifactStatus, ExternalSource,
    ExternalSourceStatus, SourceRef,
};
use externalsource_core::controller::api::{ETAG_METADATA, FINALIZER, SOURCE_METADATA};
use externalsource_core::controller::reconcile::finalizer::add_patch;
use externalsource_core::controller::revision::revision;
use externalsource_core::controller::writer;
use externalsource_core::digest::Digest;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

/// Writes per source, as listed in the module documentation.
const WRITES_PER_SOURCE: u64 = 5;

struct Args {
    namespace: String,
    prefix: String,
    sources: usize,
    concurrency: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { namespace: "bench".into(), prefix: "bench-".into(), sources: 1000, concurrency: 4 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag} {value:?}: {e}"));
        match flag.as_str() {
            "--namespace" => args.namespace = value.clone(),
            "--prefix" => args.prefix = value.clone(),
            "--sources" => args.sources = number()?,
            "--concurrency" => args.concurrency = number()?.max(1),
            _ => return Err(format!("unknown flag {flag}; flags: --namespace --prefix --sources --concurrency")),
        }
    }
    Ok(args)
}

/// An ETag as nginx makes them (the bench's upstream), in the quotes HTTP gives it.
const ETAG: &str = "\"6b13bc30-57a9\"";

/// The artifact as the controller publishes it for the bench's sources: revision `<etag>@<digest>`,
/// the ETag and the redacted upstream URL in its metadata.
fn artifact(ns: &str, name: &str, now: &str) -> Artifact {
    let digest = zero_digest();
    let hex = &digest.as_str()["sha256:".len()..];
    Artifact {
        url: format!("http://127.0.0.1:9090/artifacts/{ns}/{name}/{hex}.tar.gz"),
        revision: revision(Some(ETAG), &digest),
        path: format!("artifacts/{ns}/{name}/{hex}.tar.gz"),
        digest: digest.to_string(),
        size: Some(4096),
        last_update_time: now.to_owned(),
        metadata: [
            (ETAG_METADATA.to_owned(), ETAG.to_owned()),
            (SOURCE_METADATA.to_owned(), "http://127.0.0.1:40000/data.json?source=redacted".to_owned()),
        ]
        .into(),
    }
}

/// A digest of the right shape; nothing reads the bytes behind it.
fn zero_digest() -> Digest {
    Digest::of(b"")
}

/// The message of the controller's Ready condition and Event for the artifact.
fn stored_message() -> String {
    format!("stored artifact for revision '{}'", revision(Some(ETAG), &zero_digest()))
}

fn ready(now: Timestamp, generation: i64) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "Succeeded".into(),
        message: stored_message(),
        last_transition_time: Time(now),
        observed_generation: Some(generation),
    }
}

/// The five writes for one source.
async fn publish(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error> {
    let sources: Api<ExternalSource> = Api::namespaced(client.clone(), ns);
    let artifacts: Api<ExternalArtifact> = Api::namespaced(client.clone(), ns);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let now = Timestamp::now();
    let published = artifact(ns, name, &now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());

    // The controller's own patch for a source without finalizers.
    let finalizer = add_patch(&[], FINALIZER)?;
    let es = sources.patch(name, &writer::patch(), &Patch::Json::<()>(finalizer)).await?;
    let generation = es.metadata.generation.unwrap_or(1);

    let mut ea = ExternalArtifact::new(
        name,
        ExternalArtifactSpec {
            source_ref: Some(SourceRef {
                api_version: API_VERSION.into(),
                kind: "ExternalSource".into(),
                name: name.to_owned(),
                namespace: ns.to_owned(),
            }),
        },
    );
    ea.metadata.namespace = Some(ns.to_owned());
    ea.metadata.owner_references = es.controller_owner_ref(&()).map(|r| vec![r]);
    ea.metadata.labels = Some([("app.kubernetes.io/managed-by".into(), "externalsource-controller".into())].into());
    artifacts.create(&writer::post(), &ea).await?;
    let ea_status = ExternalArtifactStatus { artifact: Some(published.clone()), conditions: vec![ready(now, 1)] };
    artifacts.patch_status(name, &writer::patch(), &Patch::Merge(json!({ "status": ea_status }))).await?;

    let event = Event {
        // Named as kube's Recorder names events: the object's name and a timestamp.
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.to_owned()),
            ..Default::default()
        },
        action: Some("Reconciling".into()),
        reason: Some("NewArtifact".into()),
        note: Some(stored_message()),
        type_: Some("Normal".into()),
        event_time: Some(MicroTime(now)),
        reporting_controller: Some("externalsource-controller".into()),
        reporting_instance: Some("bench-api-writes".into()),
        regarding: Some(ObjectReference {
            api_version: Some(API_VERSION.into()),
            kind: Some("ExternalSource".into()),
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            uid: es.meta().uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    events.create(&writer::post(), &event).await?;

    let status = ExternalSourceStatus {
        conditions: vec![ready(now, generation)],
        published_paths: vec![published.path.clone()],
        last_handled_e_tag: Some(ETAG.to_owned()),
        artifact: Some(published),
        artifact_generation: Some(generation),
        observed_generation: Some(generation),
        ..Default::default()
    };
    sources.patch_status(&es.name_any(), &writer::patch(), &Patch::Merge(json!({ "status": status }))).await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench-api-writes: {e}");
            std::process::exit(2);
        }
    };
    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("bench-api-writes: no Kubernetes client: {e}");
            std::process::exit(1);
        }
    };
    let names: Vec<String> = (0..args.sources).map(|i| format!("{}{i:04}", args.prefix)).collect();
    let start = Instant::now();
    let done = stream::iter(names.iter().map(|name| publish(&client, &args.namespace, name)))
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await;
    let seconds = start.elapsed().as_secs_f64();
    if let Err(e) = done {
        eprintln!("bench-api-writes: a write failed: {e}");
        std::process::exit(1);
    }
    let writes = args.sources as u64 * WRITES_PER_SOURCE;
    println!(
        "sources {} concurrency {} seconds {seconds:.2} writes {writes} writes_per_s {:.1}",
        args.sources,
        args.concurrency,
        writes as f64 / seconds
    );
}
