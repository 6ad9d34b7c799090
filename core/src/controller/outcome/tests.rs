//! Table-driven tests of the decisions and status transitions; no API server involved.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;

use super::*;
use crate::controller::api::ExternalSourceStatus;
use crate::isolated::transform::TransformError;
use crate::key::ObjectKey;

fn artifact(path: &str, etag: Option<&str>) -> Artifact {
    let mut metadata = std::collections::BTreeMap::new();
    if let Some(etag) = etag {
        metadata.insert("etag".to_owned(), etag.to_owned());
    }
    Artifact {
        url: format!("http://x/{path}"),
        revision: format!("{}@sha256:{path}", etag.unwrap_or("latest")),
        digest: format!("sha256:{path}"),
        path: path.to_owned(),
        size: Some(10),
        last_update_time: "2026-01-01T00:00:00Z".to_owned(),
        metadata,
    }
}

fn published(path: &str, etag: &str) -> ExternalSourceStatus {
    let mut status = ExternalSourceStatus {
        artifact: Some(artifact(path, Some(etag))),
        last_handled_e_tag: Some(etag.to_owned()),
        artifact_generation: Some(1),
        published_paths: vec![path.to_owned()],
        observed_generation: Some(1),
        ..Default::default()
    };
    conditions::set(&mut status.conditions, conditions::READY, true, Reason::Succeeded, "ok", Some(1));
    status
}

fn inputs() -> StatusInputs<'static> {
    StatusInputs { generation: Some(1), retention: 2, ..Default::default() }
}

fn status_error(code: u16) -> FetchError {
    FetchError::Status { url: "http://up/".into(), status: StatusCode::from_u16(code).unwrap(), retry_after: None }
}

fn condition(status: &ExternalSourceStatus, type_: &str) -> Option<(String, String)> {
    conditions::get(&status.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
}

/// The stored-artifact fields, which only a published Ready outcome may change.
fn stored_fields(s: &ExternalSourceStatus) -> (Option<Artifact>, Option<String>, Option<i64>, Vec<String>) {
    (s.artifact.clone(), s.last_handled_e_tag.clone(), s.artifact_generation, s.published_paths.clone())
}

/// Expected failure of a case: reason, metric kind, retry.
type Expected = (Reason, &'static str, Retry);
/// Name, current artifact, whether If-None-Match was sent, the answer, the expectation.
type FetchCase<'a> = (&'static str, Option<&'a Artifact>, bool, Unfetched<'a>, Result<(), Expected>);
/// Name, store result, `Ok(new)` or the expected failure's kind and retry.
type StoreCase = (&'static str, Stored, Result<bool, (&'static str, Retry)>);

#[test]
fn answers_without_a_body() {
    let current = artifact("a", Some("\"v1\""));
    let timeout = FetchError::Timeout { url: "http://up/".into(), timeout: Duration::from_secs(1) };
    let throttled = FetchError::Status {
        url: "http://up/".into(),
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after: Some(Duration::from_secs(7)),
    };
    let not_found = status_error(404);
    let cases: Vec<FetchCase<'_>> = vec![
        ("304 to a conditional request: still current", Some(&current), true, Unfetched::NotModified, Ok(())),
        (
            "304 without If-None-Match",
            Some(&current),
            false,
            Unfetched::NotModified,
            Err((Reason::FetchFailed, "unexpected_not_modified", Retry::Backoff { after: None })),
        ),
        (
            "304 while nothing is stored",
            None,
            false,
            Unfetched::NotModified,
            Err((Reason::FetchFailed, "unexpected_not_modified", Retry::Backoff { after: None })),
        ),
        (
            "timeout backs off",
            Some(&current),
            true,
            Unfetched::Failed(&timeout),
            Err((Reason::FetchFailed, "fetch_timeout", Retry::Backoff { after: None })),
        ),
        (
            "429 honours Retry-After",
            Some(&current),
            true,
            Unfetched::Failed(&throttled),
            Err((Reason::FetchFailed, "fetch_status", Retry::Backoff { after: Some(Duration::from_secs(7)) })),
        ),
        (
            "404 waits for the interval",
            None,
            false,
            Unfetched::Failed(&not_found),
            Err((Reason::FetchFailed, "fetch_status", Retry::AtInterval)),
        ),
    ];
    for (name, current, sent, answer, expected) in cases {
        let outcome = after_fetch(current, Some("\"v1\""), sent, answer);
        match (expected, &outcome) {
            (Ok(()), Outcome::Ready { artifact, etag, new }) => {
                assert_eq!(artifact.path, "a", "{name}");
                assert_eq!(etag.as_deref(), Some("\"v1\""), "{name}");
                assert!(!new, "{name}");
            }
            (Err((reason, kind, retry)), Outcome::Failed(f)) => {
                assert_eq!((f.reason, f.kind, f.retry), (reason, kind, retry), "{name}");
            }
            (expected, got) => panic!("{name}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn a_filter_that_does_not_compile_stalls_naming_the_field() {
    let got = after_store(Stored::TransformFailed(TransformError::Compile("1 parse error(s)".into())), None);
    let Outcome::Stalled { problem, recheck_at_interval } = got else { panic!("{got:?}") };
    assert_eq!(problem.reason, Reason::InvalidSpec);
    assert!(!recheck_at_interval, "only a spec change helps");
    assert_eq!(problem.message, "spec.transform.jq does not compile: 1 parse error(s)");
}

#[test]
fn store_results() {
    let key = ObjectKey::parse("artifacts/ns/s/x.tar.gz").unwrap();
    let over = StorageError::OverBudget { key: key.clone(), size: 900, used: 600, budget: 1000 };
    let cases: Vec<StoreCase> = vec![
        ("new object", Stored::New(artifact("b", Some("\"v2\""))), Ok(true)),
        ("same bytes", Stored::Same(artifact("a", Some("\"v1\""))), Ok(false)),
        (
            "transform limit",
            Stored::TransformFailed(TransformError::CpuExceeded(2)),
            Err(("transform", Retry::AtInterval)),
        ),
        (
            "transform bad payload",
            Stored::TransformFailed(TransformError::Input("x".into())),
            Err(("transform", Retry::AtInterval)),
        ),
        (
            "worker failed to start",
            Stored::TransformFailed(TransformError::Worker("EAGAIN".into())),
            Err(("transform", Retry::Backoff { after: None })),
        ),
        (
            "outage",
            Stored::Failed(StorageError::Unavailable { operation: "put", key: "k".into(), message: "down".into() }),
            Err(("unavailable", Retry::Backoff { after: None })),
        ),
        ("over budget", Stored::Failed(over), Err(("over_budget", Retry::AtInterval))),
        (
            "disk full",
            Stored::Failed(StorageError::NoSpace { operation: "put", key: "k".into(), message: "ENOSPC".into() }),
            Err(("no_space", Retry::AtInterval)),
        ),
        (
            "denied",
            Stored::Failed(StorageError::AccessDenied { key: "k".into(), message: "no".into() }),
            Err(("access_denied", Retry::AtInterval)),
        ),
        (
            "corrupt",
            Stored::Failed(StorageError::Corrupt { key, message: "bad".into() }),
            Err(("corrupt", Retry::AtInterval)),
        ),
    ];
    for (name, stored, expected) in cases {
        match (expected, after_store(stored, Some("\"v2\""))) {
            (Ok(expect_new), Outcome::Ready { etag, new, .. }) => {
                assert_eq!(new, expect_new, "{name}");
                assert_eq!(etag.as_deref(), Some("\"v2\""), "{name}: the ETag that answered");
            }
            (Err((kind, retry)), Outcome::Failed(f)) => {
                assert_eq!((f.kind, f.retry), (kind, retry), "{name}");
                let expected_reason =
                    if kind == "transform" { Reason::TransformFailed } else { Reason::StorageOperationFailed };
                assert_eq!(f.reason, expected_reason, "{name}");
            }
            (expected, got) => panic!("{name}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn over_budget_message_names_needed_available_and_budget() {
    let key = ObjectKey::parse("artifacts/ns/s/x.tar.gz").unwrap();
    let f = storage_failure(&StorageError::OverBudget { key, size: 900, used: 600, budget: 1000 });
    assert!(f.message.contains("needs 900 bytes"), "{}", f.message);
    assert!(f.message.contains("only 400 of"), "{}", f.message);
    assert!(f.message.contains("1000-byte budget"), "{}", f.message);
}

#[test]
fn no_failure_changes_what_is_stored() {
    let old = published("a", "\"v1\"");
    let failures = [
        Outcome::Suspended,
        Outcome::Stalled {
            problem: ConfigProblem { reason: Reason::InvalidSpec, message: "spec.x: bad".into() },
            recheck_at_interval: false,
        },
        after_fetch(None, None, false, Unfetched::NotModified),
        after_fetch(None, None, false, Unfetched::Failed(&status_error(500))),
        after_fetch(None, None, false, Unfetched::Failed(&status_error(404))),
        after_store(Stored::TransformFailed(TransformError::Run("x".into())), Some("\"v2\"")),
        after_store(Stored::TransformFailed(TransformError::Compile("x".into())), Some("\"v2\"")),
        after_store(
            Stored::Failed(StorageError::Unavailable { operation: "put", key: "k".into(), message: "m".into() }),
            Some("\"v2\""),
        ),
        validation_failure(&predicate_refusal()),
    ];
    for outcome in failures {
        let mut inputs = inputs();
        inputs.generation = Some(2);
        inputs.previously_published = Some("elsewhere");
        let next = next_status(&old, &outcome, &inputs);
        assert_eq!(stored_fields(&next), stored_fields(&old), "{outcome:?} changed the stored fields");
        assert_eq!(condition(&next, conditions::READY).unwrap().0, "False", "{outcome:?}");
        assert_eq!(next.observed_generation, Some(2));
        for c in &next.conditions {
            assert_eq!(c.observed_generation, Some(2), "{outcome:?}: condition {} lacks the generation", c.type_);
        }
    }
}

#[test]
fn ready_records_artifact_etag_generation_and_history_together() {
    let old = published("a", "\"v1\"");
    let outcome = after_store(Stored::New(artifact("b", Some("\"v2\""))), Some("\"v2\""));
    let mut inputs = inputs();
    inputs.generation = Some(3);
    let next = next_status(&old, &outcome, &inputs);
    assert_eq!(next.artifact.as_ref().unwrap().path, "b");
    assert_eq!(next.last_handled_e_tag.as_deref(), Some("\"v2\""));
    assert_eq!(next.artifact_generation, Some(3));
    assert_eq!(next.published_paths, ["b", "a"]);
    assert_eq!(condition(&next, conditions::READY), Some(("True".into(), "Succeeded".into())));
    assert!(condition(&next, conditions::RECONCILING).is_none());
    assert!(condition(&next, conditions::STALLED).is_none());

    // An upstream that stops sending an ETag clears the recorded one.
    let untagged = after_store(Stored::New(artifact("c", None)), None);
    let after = next_status(&next, &untagged, &inputs);
    assert_eq!(after.last_handled_e_tag, None);
    assert_eq!(after.published_paths, ["c", "b"], "retention 2 keeps the current and the previous");
}

#[test]
fn history_counts_what_the_external_artifact_pointed_at() {
    // Our status still says "a" (a status write was lost) but the ExternalArtifact points at "b".
    let old = published("a", "\"v1\"");
    let outcome = after_store(Stored::New(artifact("c", None)), None);
    let inputs = StatusInputs { previously_published: Some("b"), retention: 3, ..inputs() };
    assert_eq!(next_status(&old, &outcome, &inputs).published_paths, ["c", "b", "a"]);
    let inputs = StatusInputs { previously_published: Some("b"), retention: 2, ..inputs };
    assert_eq!(next_status(&old, &outcome, &inputs).published_paths, ["c", "b"]);
    // Republishing the current artifact does not duplicate it.
    let same = after_store(Stored::Same(artifact("a", Some("\"v1\""))), Some("\"v1\""));
    let inputs = StatusInputs { previously_published: Some("a"), retention: 2, ..inputs };
    assert_eq!(next_status(&old, &same, &inputs).published_paths, ["a"]);
}

#[test]
fn conditions_follow_kstatus() {
    let old = published("a", "\"v1\"");
    let backoff = after_fetch(None, None, false, Unfetched::Failed(&status_error(503)));
    let next = next_status(&old, &backoff, &inputs());
    assert_eq!(condition(&next, conditions::RECONCILING), Some(("True".into(), "ProgressingWithRetry".into())));
    assert!(condition(&next, conditions::STALLED).is_none());

    let at_interval = after_fetch(None, None, false, Unfetched::Failed(&status_error(403)));
    let next = next_status(&next, &at_interval, &inputs());
    assert!(condition(&next, conditions::RECONCILING).is_none(), "nothing in progress until the interval");

    let stalled = Outcome::Stalled {
        problem: ConfigProblem { reason: Reason::SecretNotFound, message: "Secret \"x\" not found".into() },
        recheck_at_interval: false,
    };
    let next = next_status(&next, &stalled, &inputs());
    assert_eq!(condition(&next, conditions::STALLED), Some(("True".into(), "SecretNotFound".into())));
    assert_eq!(condition(&next, conditions::READY), Some(("False".into(), "SecretNotFound".into())));

    let progressing = progressing_status(&next, Some(2)).expect("a new generation is announced");
    assert_eq!(condition(&progressing, conditions::RECONCILING), Some(("True".into(), "Progressing".into())));
    assert_eq!(conditions::get(&progressing.conditions, conditions::RECONCILING).unwrap().observed_generation, Some(2));
    assert!(progressing_status(&next, Some(1)).is_none(), "an observed generation is not announced again");

    let interval = StatusInputs { interval_warning: Some("raised"), ..inputs() };
    let ready = after_store(Stored::Same(artifact("a", None)), None);
    let next = next_status(&progressing, &ready, &interval);
    assert_eq!(condition(&next, conditions::INTERVAL_RAISED), Some(("True".into(), "BelowMinimum".into())));
    assert!(condition(&next, conditions::RECONCILING).is_none());
    assert!(condition(&next, conditions::STALLED).is_none());
    let next = next_status(&next, &ready, &inputs());
    assert!(condition(&next, conditions::INTERVAL_RAISED).is_none());
}

#[test]
fn the_external_artifact_follows_the_outcome_but_keeps_its_artifact_on_failure() {
    let old = ExternalArtifactStatus { artifact: Some(artifact("a", None)), conditions: Vec::new() };
    let failed = after_fetch(None, None, false, Unfetched::Failed(&status_error(500)));
    let next = next_artifact_status(&old, &failed, Some(1)).unwrap();
    assert_eq!(next.artifact, old.artifact);
    let ready = conditions::get(&next.conditions, conditions::READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "FetchFailed"));
    let published = after_store(Stored::New(artifact("b", None)), None);
    let next = next_artifact_status(&next, &published, Some(1)).unwrap();
    assert_eq!(next.artifact.unwrap().path, "b");
    assert!(next_artifact_status(&old, &Outcome::Suspended, Some(1)).is_none());
}

fn object(path: &str, age_secs: u64) -> ObjectSummary {
    ObjectSummary {
        key: ObjectKey::parse(path).unwrap(),
        size: 1,
        last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_secs),
    }
}

fn keys(objects: Vec<ObjectSummary>) -> Vec<String> {
    objects.into_iter().map(|o| o.key.to_string()).collect()
}

#[test]
fn garbage_keeps_what_was_published_not_what_is_newest() {
    let d = "artifacts/ns/s/";
    let objects = vec![
        object(&format!("{d}current.tar.gz"), 50),
        object(&format!("{d}previous.tar.gz"), 100),
        object(&format!("{d}older.tar.gz"), 200),
        // Stored after the current one but never published (its publish failed).
        object(&format!("{d}unpublished.tar.gz"), 10),
    ];
    let keep = [format!("{d}current.tar.gz"), format!("{d}previous.tar.gz")];
    let known = [format!("{d}previous.tar.gz"), format!("{d}older.tar.gz")];
    assert_eq!(
        keys(garbage(objects.clone(), &keep, &known, false, 2)),
        [format!("{d}unpublished.tar.gz"), format!("{d}older.tar.gz")],
        "the unpublished revision goes first, then the one beyond retention"
    );
    // A status from before publishedPaths: the newest objects by time fill the retention.
    let keep = [format!("{d}current.tar.gz")];
    assert_eq!(
        keys(garbage(objects, &keep, &[], true, 2)),
        [format!("{d}previous.tar.gz"), format!("{d}older.tar.gz")],
        "legacy: the newest other object (here the unpublished one) is kept"
    );
}

#[test]
fn a_whitelist_refusal_stalls_while_a_busy_executor_backs_off() {
    use crate::controller::hooks::chain::{HookFailure, Phase};
    use crate::isolated::hook_executor::protocol::{CallError, FailureKind};
    let failure = |kind| HookFailure {
        hook: "h".into(),
        phase: Phase::PostRequest,
        attempts: 1,
        error: CallError::Failed { kind, message: "environment variable \"LD_PRELOAD\" of \"/usr/bin/jq\" ...".into() },
    };
    let Outcome::Stalled { problem, recheck_at_interval } = hook_failure(&failure(FailureKind::Refused)) else {
        panic!("a refusal is a spec problem")
    };
    assert_eq!(problem.reason, Reason::HookFailed);
    assert!(problem.message.contains("LD_PRELOAD"), "{}", problem.message);
    assert!(recheck_at_interval, "a whitelist change can resolve it without a spec change");
    let Outcome::Failed(f) = hook_failure(&failure(FailureKind::Busy)) else { panic!("busy is transient") };
    assert_eq!((f.reason, f.retry), (Reason::HookFailed, Retry::Backoff { after: None }));
}

fn predicate_refusal() -> Rejection {
    use crate::controller::reconcile::validate::rules::Verdict;
    Rejection::Predicate { expression: ".items | length > 0".into(), verdict: Verdict::Other("false".into()) }
}

#[test]
fn a_refused_payload_is_validation_failed_until_the_interval() {
    let outcome = validation_failure(&predicate_refusal());
    let Outcome::Failed(f) = &outcome else { panic!("{outcome:?}") };
    assert_eq!((f.reason, f.kind, f.retry), (Reason::ValidationFailed, "validation", Retry::AtInterval));
    assert_eq!(f.message, "spec.validate.jq \".items | length > 0\" yielded false, not true");
    assert_eq!(
        outcome.message(),
        "spec.validate.jq \".items | length > 0\" yielded false, not true; retrying at the next interval"
    );
    // The ExternalArtifact keeps its artifact; only its Ready condition says why nothing new came.
    let old = ExternalArtifactStatus { artifact: Some(artifact("a", None)), conditions: Vec::new() };
    let next = next_artifact_status(&old, &outcome, Some(2)).unwrap();
    assert_eq!(next.artifact, old.artifact);

    // A limit of the sandbox is the payload's failure too; a sandbox that cannot start backs off.
    let unchecked = |error| Rejection::Unchecked { rule: "spec.validate.jq \".\"".into(), error };
    let Outcome::Failed(f) = validation_failure(&unchecked(TransformError::CpuExceeded(2))) else { panic!() };
    assert_eq!((f.reason, f.retry), (Reason::ValidationFailed, Retry::AtInterval));
    assert_eq!(f.message, "spec.validate.jq \".\" exceeded 2s CPU (transform.max_cpu)");
    let Outcome::Failed(f) = validation_failure(&unchecked(TransformError::Worker("EAGAIN".into()))) else { panic!() };
    assert_eq!(f.retry, Retry::Backoff { after: None });
    // A rule that does not compile waits for the spec (or its ConfigMap) to change.
    let outcome = validation_failure(&unchecked(TransformError::Compile("1 parse error(s)".into())));
    assert!(
        matches!(&outcome, Outcome::Stalled { problem, recheck_at_interval: false } if problem.reason == Reason::InvalidSpec),
        "{outcome:?}"
    );
}
