//! Leader election against a real kube-apiserver, with client-go semantics: a leader whose API
//! server stops answering steps down before its lease can be taken, and expiry is judged on the
//! candidate's clock, never by comparing the holder's `renewTime` with ours.

use std::sync::Arc;
use std::time::{Duration, Instant};

use externalsource_core::controller::runtime::leader::{LeaderElector, Timings};
use externalsource_tests::{ControlPlane, eventually};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

const TIMINGS: Timings = Timings {
    lease_duration: Duration::from_secs(4),
    renew_deadline: Duration::from_secs(2),
    retry_every: Duration::from_millis(250),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_server_hangs_steps_down_before_its_lease_can_be_taken() {
    let mut cp = ControlPlane::start().await;
    let ns = cp.namespace("pause").await;
    let a = Arc::new(LeaderElector::new(cp.client(), &ns, "leader", "pod-a", TIMINGS));
    let b = LeaderElector::new(cp.client(), &ns, "leader", "pod-b", TIMINGS);
    assert!(a.try_acquire().await.unwrap());
    assert!(!b.try_acquire().await.unwrap(), "a held lease is not taken");
    let holding = tokio::spawn({
        let a = a.clone();
        async move {
            a.hold().await;
            Instant::now()
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // SIGSTOP: requests hang (no refusal, no error) until it is resumed.
    cp.pause_apiserver();
    let paused = Instant::now();
    let stepped_down = tokio::time::timeout(Duration::from_secs(10), holding)
        .await
        .expect("the leader must step down while the API server hangs")
        .unwrap();
    let after = stepped_down - paused;
    assert!(after <= TIMINGS.renew_deadline + Duration::from_millis(500), "stepped down {after:?} after the pause");
    assert!(after < TIMINGS.lease_duration, "before anyone may take the lease");
    tokio::time::sleep(TIMINGS.lease_duration).await;
    cp.resume_apiserver();

    // The standby saw no change for longer than the lease: it takes over; the old leader (whose
    // process would have exited) finds it held.
    eventually("the standby takes over", Duration::from_secs(20), || async {
        b.try_acquire().await.ok().filter(|held| *held)
    })
    .await;
    let fresh_a = LeaderElector::new(cp.client(), &ns, "leader", "pod-a", TIMINGS);
    assert!(!fresh_a.try_acquire().await.unwrap(), "exactly one leader");
    assert!(b.try_acquire().await.unwrap(), "the new leader renews");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_judged_on_the_candidates_clock_not_the_holders() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("skew").await;
    let leases: Api<Lease> = Api::namespaced(cp.client(), &ns);
    let lease = |name: &str, renewed: Timestamp| Lease {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some("holder-with-a-skewed-clock".into()),
            lease_duration_seconds: Some(4),
            acquire_time: Some(MicroTime(renewed)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    // A holder whose clock is an hour behind ours: its fresh renewal looks an hour old. Comparing
    // clocks would steal it at once; we wait for a whole lease without a change.
    let behind = Timestamp::now() - SignedDuration::from_secs(3600);
    leases.create(&PostParams::default(), &lease("behind", behind)).await.unwrap();
    let candidate = LeaderElector::new(cp.client(), &ns, "behind", "candidate", TIMINGS);
    let started = Instant::now();
    assert!(!candidate.try_acquire().await.unwrap(), "a lease just seen is alive, whatever its renewTime");
    eventually("the silent lease is taken after a lease duration", Duration::from_secs(20), || async {
        candidate.try_acquire().await.ok().filter(|held| *held)
    })
    .await;
    assert!(started.elapsed() >= TIMINGS.lease_duration, "taken after {:?}", started.elapsed());

    // A holder whose clock is an hour ahead, and which died: comparing clocks would wait an hour.
    let ahead = Timestamp::now() + SignedDuration::from_secs(3600);
    leases.create(&PostParams::default(), &lease("ahead", ahead)).await.unwrap();
    let candidate = LeaderElector::new(cp.client(), &ns, "ahead", "candidate", TIMINGS);
    assert!(!candidate.try_acquire().await.unwrap());
    let started = Instant::now();
    eventually("a dead holder's lease is taken after a lease duration", Duration::from_secs(20), || async {
        candidate.try_acquire().await.ok().filter(|held| *held)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}
