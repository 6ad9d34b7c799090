//! Leader election with a `coordination.k8s.io` Lease: only the holder reconciles.
//!
//! Optimistic concurrency (resourceVersion on replace) makes acquisition safe without locks; the
//! holder renews well within the lease duration and gives the lease up on shutdown so a successor
//! does not wait for expiry.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

/// Lease timings (the usual controller-runtime defaults, scaled down).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
}

impl LeaderElector {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, timings: Timings) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), timings }
    }

    /// One attempt to take or renew the lease; `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
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
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => *renewed + SignedDuration::from_secs(secs.into()) < now,
            _ => true,
        };
        if !ours && holder.is_some() && !expired {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(MicroTime(now));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
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

    /// Renews until a renewal is refused or cannot be made within the lease duration; returns
    /// then, because another replica may take over from that moment.
    pub async fn hold(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timings.renew_every).await;
            match self.try_acquire().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "leadership lost to another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "renewing the lease failed");
                    if last_renewal.elapsed() + self.timings.renew_every >= self.timings.lease_duration {
                        tracing::error!(lease = %self.name, "could not renew the lease in time; giving up leadership");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up (on shutdown), if we still hold it.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
            tracing::warn!(lease = %self.name, error = %e, "releasing the lease failed");
        }
    }
}
