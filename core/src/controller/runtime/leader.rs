//! Leader election with a `coordination.k8s.io` Lease: only the holder reconciles.
//!
//! The semantics are client-go's, because they are what makes a lease safe between processes
//! whose clocks disagree and whose API calls can hang:
//! - **Expiry is judged on our own clock**: a candidate remembers when it last saw the lease
//!   record change and treats the lease as expired only once `leaseDurationSeconds` have passed
//!   on its monotonic clock without a change. The holder's `renewTime` (the holder's wall clock)
//!   is written for humans and never compared with ours, so clock skew cannot steal a live lease.
//! - **Every renewal has a deadline**: the holder tries to renew every `retry_every`, each attempt
//!   bounded by what is left of `renew_deadline` (shorter than the lease) since its last
//!   successful renewal began. Once that deadline passes, [`LeaderElector::hold`] returns and the
//!   process stops reconciling and turns not-Ready, while a standby must still wait out the full
//!   lease duration after the last renewal it saw: there is never a moment with two leaders.
//!
//! Optimistic concurrency (resourceVersion on replace) makes acquisition safe without locks, and
//! the holder gives the lease up on shutdown so a successor does not wait for expiry.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta};
use tokio::time::Instant;

use crate::controller::writer;

/// Lease timings: client-go's defaults (15 s lease, 10 s renew deadline, 2 s retry).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How long a lease stays valid after its last observed change.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it gives leadership up; below
    /// `lease_duration`, so it stops before anyone else may start.
    pub renew_deadline: Duration,
    /// Pause between acquisition attempts, and between renewals.
    pub retry_every: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// The parts of a lease record whose change proves its holder alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    acquire_time: Option<String>,
    transitions: Option<i32>,
    duration_secs: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0.to_string()),
            transitions: spec.lease_transitions,
            duration_secs: spec.lease_duration_seconds,
        }
    }
}

/// What a candidate may do with a lease it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Ours: renew it.
    Renew,
    /// Free, or its holder has not renewed for a whole lease duration on our clock: take it.
    Take,
    /// Someone else holds it and may still be alive.
    Wait,
}

/// The decision, from the record's holder and how long (on our clock) the record has not
/// changed. A lease without a holder is free; one we have only just seen is not expired, however
/// old its `renewTime` looks.
pub fn verdict(holder: Option<&str>, me: &str, unchanged_for: Duration, lease_duration: Duration) -> Verdict {
    match holder {
        Some(h) if h == me => Verdict::Renew,
        None => Verdict::Take,
        Some(_) if unchanged_for > lease_duration => Verdict::Take,
        Some(_) => Verdict::Wait,
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    /// The record last read and when (our clock) it was first seen in that state.
    observed: Mutex<Option<(Record, Instant)>>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, timings: Timings) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timings,
            observed: Mutex::new(None),
        }
    }

    /// Remembers `record`; returns how long it has been unchanged.
    fn observe(&self, record: Record) -> Duration {
        let now = Instant::now();
        let mut observed = self.observed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match observed.as_ref() {
            Some((seen, since)) if *seen == record => now.duration_since(*since),
            _ => {
                *observed = Some((record, now));
                Duration::ZERO
            }
        }
    }

    /// One attempt to take or renew the lease; `Ok(true)` when we hold it afterwards. Bounded by
    /// `renew_deadline`, so a hung API server cannot hold it forever.
    pub async fn try_acquire(&self) -> Result<bool, AttemptError> {
        self.attempt(self.timings.renew_deadline).await
    }

    async fn attempt(&self, deadline: Duration) -> Result<bool, AttemptError> {
        match tokio::time::timeout(deadline, self.attempt_unbounded()).await {
            Ok(result) => result.map_err(AttemptError::Kube),
            Err(_) => Err(AttemptError::TimedOut(deadline)),
        }
    }

    async fn attempt_unbounded(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let duration_secs = self.timings.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&writer::post(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let record = Record::of(spec);
        let lease_duration = record
            .duration_secs
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timings.lease_duration, Duration::from_secs);
        let holder = record.holder.clone();
        let unchanged_for = self.observe(record);
        let verdict = verdict(holder.as_deref(), &self.identity, unchanged_for, lease_duration);
        if verdict == Verdict::Wait {
            return Ok(false);
        }
        if verdict == Verdict::Take {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(MicroTime(now));
        match self.api.replace(&self.name, &writer::post(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until we hold the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => tracing::debug!(lease = %self.name, "another replica leads"),
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.timings.retry_every).await;
        }
    }

    /// Renews every `retry_every` and returns as soon as leadership may be lost: a renewal was
    /// refused, or `renew_deadline` passed since the last successful renewal began (each attempt
    /// is cut off at that deadline, however the API server behaves).
    pub async fn hold(&self) {
        let mut renewed_at = Instant::now();
        loop {
            tokio::time::sleep(self.timings.retry_every).await;
            let left = self.timings.renew_deadline.saturating_sub(renewed_at.elapsed());
            if left.is_zero() {
                tracing::error!(lease = %self.name, "could not renew the lease before the renew deadline; giving up leadership");
                return;
            }
            let started = Instant::now();
            match self.attempt(left).await {
                Ok(true) => renewed_at = started,
                Ok(false) => {
                    tracing::error!(lease = %self.name, "leadership lost to another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "renewing the lease failed");
                    if renewed_at.elapsed() >= self.timings.renew_deadline {
                        tracing::error!(lease = %self.name, "could not renew the lease before the renew deadline; giving up leadership");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up (on shutdown), if we still hold it; bounded by the renew deadline.
    pub async fn release(&self) {
        let give_up = async {
            let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
            let Some(spec) = lease.spec.as_mut() else { return };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return;
            }
            spec.holder_identity = None;
            spec.renew_time = None;
            if let Err(e) = self.api.replace(&self.name, &writer::post(), &lease).await {
                tracing::warn!(lease = %self.name, error = %e, "releasing the lease failed");
            }
        };
        if tokio::time::timeout(self.timings.renew_deadline, give_up).await.is_err() {
            tracing::warn!(lease = %self.name, "releasing the lease timed out; it expires on its own");
        }
    }
}

/// Why one election attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Kube(kube::Error),
    #[error("no answer from the API server within {0:?}")]
    TimedOut(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn expiry_is_judged_by_how_long_we_saw_no_change() {
        let s = Duration::from_secs;
        assert_eq!(verdict(Some("me"), "me", s(100), LEASE), Verdict::Renew);
        assert_eq!(verdict(None, "me", Duration::ZERO, LEASE), Verdict::Take, "a released lease is free at once");
        assert_eq!(verdict(Some("other"), "me", Duration::ZERO, LEASE), Verdict::Wait, "just seen: alive");
        assert_eq!(verdict(Some("other"), "me", s(15), LEASE), Verdict::Wait, "exactly the lease: still valid");
        assert_eq!(verdict(Some("other"), "me", s(16), LEASE), Verdict::Take);
    }

    #[test]
    fn the_renew_deadline_ends_before_anyone_may_take_over() {
        let t = Timings::default();
        assert!(t.renew_deadline + t.retry_every <= t.lease_duration, "{t:?}");
    }
}
