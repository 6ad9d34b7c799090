//! How many hooks run at once: at most `hooks.namespace_concurrency` for one namespace and
//! `hooks.concurrency` in total, so one tenant's hooks (slow, hostile or just many) cannot take
//! every slot of the executor every tenant shares.
//!
//! A run first takes its namespace's slot, then a shared one; so a namespace waiting holds no
//! shared slot, and every other namespace keeps at least `concurrency - namespace_concurrency`.
//! Over its namespace's cap a run waits, as a reconcile waits for any other busy resource, but
//! only up to `max_wait`: then it is refused with [`Busy`], a retryable failure (the hook's
//! `retryPolicy` and the reconcile's backoff apply), rather than queueing without end while its
//! controller waits on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type Namespaces = Arc<Mutex<HashMap<String, Arc<Semaphore>>>>;

/// The slots one run holds until it is dropped.
#[derive(Debug)]
pub struct Admitted {
    shared: Option<OwnedSemaphorePermit>,
    own: Option<OwnedSemaphorePermit>,
    namespaces: Namespaces,
    namespace: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.take();
        self.own.take();
        forget_idle(&self.namespaces, &self.namespace);
    }
}

/// No slot came free within the wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the hook executor is busy: namespace {namespace:?} {what}; waited {waited:?} for a slot (hooks.namespace_concurrency \
     = {per_namespace}, hooks.concurrency = {total})"
)]
pub struct Busy {
    pub namespace: String,
    pub what: &'static str,
    pub waited: Duration,
    pub per_namespace: usize,
    pub total: usize,
}

/// The executor's slots.
#[derive(Debug)]
pub struct Admission {
    shared: Arc<Semaphore>,
    namespaces: Namespaces,
    total: usize,
    per_namespace: usize,
    max_wait: Duration,
}

impl Admission {
    pub fn new(total: usize, per_namespace: usize, max_wait: Duration) -> Self {
        let total = total.max(1);
        let per_namespace = per_namespace.clamp(1, total);
        Self {
            shared: Arc::new(Semaphore::new(total)),
            namespaces: Arc::new(Mutex::new(HashMap::new())),
            total,
            per_namespace,
            max_wait,
        }
    }

    /// Waits (at most `max_wait` in all) for a slot of `namespace` and a shared one.
    pub async fn admit(&self, namespace: &str) -> Result<Admitted, Busy> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.max_wait;
        let busy = |what| Busy {
            namespace: namespace.to_owned(),
            what,
            waited: started.elapsed(),
            per_namespace: self.per_namespace,
            total: self.total,
        };
        let own = self.namespace(namespace);
        let acquired = tokio::time::timeout_at(deadline, own.clone().acquire_owned()).await;
        let what = match acquired {
            Ok(Ok(ns)) => match tokio::time::timeout_at(deadline, self.shared.clone().acquire_owned()).await {
                Ok(Ok(shared)) => {
                    return Ok(Admitted {
                        shared: Some(shared),
                        own: Some(ns),
                        namespaces: self.namespaces.clone(),
                        namespace: namespace.to_owned(),
                    });
                }
                _ => "has a slot of its own free, but every shared slot stayed taken",
            },
            _ => "already runs as many hooks as it may",
        };
        drop(own);
        forget_idle(&self.namespaces, namespace);
        Err(busy(what))
    }

    fn namespace(&self, namespace: &str) -> Arc<Semaphore> {
        let mut map = self.namespaces.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(namespace.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_namespace))).clone()
    }

    /// Namespaces with hooks in flight.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.namespaces.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Drops the semaphore of a namespace nobody holds or waits for, so the map holds only the
/// namespaces with hooks in flight.
fn forget_idle(namespaces: &Namespaces, namespace: &str) {
    let mut map = namespaces.lock().unwrap_or_else(PoisonError::into_inner);
    // Referenced only by the map: no run holds a permit (a permit holds its Arc) or waits.
    if map.get(namespace).is_some_and(|s| Arc::strong_count(s) == 1) {
        map.remove(namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_namespace_cannot_take_every_slot() {
        let admission = Admission::new(3, 2, Duration::from_secs(5));
        let hostile: Vec<_> = vec![admission.admit("a").await.unwrap(), admission.admit("a").await.unwrap()];
        // A third run of `a` waits for `a`'s own slot, and is refused when none comes free.
        let started = tokio::time::Instant::now();
        let busy = admission.admit("a").await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(busy.to_string().contains("namespace \"a\" already runs as many hooks as it may"), "{busy}");
        // Meanwhile another namespace gets the remaining shared slot at once.
        let started = tokio::time::Instant::now();
        let other = admission.admit("b").await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        // With every shared slot taken, `c` waits, and gets one as soon as one is released.
        let waiter = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let got = admission.admit("c").await.map(drop);
            (got, started.elapsed(), admission)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(hostile);
        let (got, waited, admission) = waiter.await.unwrap();
        assert_eq!((got, waited), (Ok(()), Duration::from_secs(1)));
        assert_eq!(admission.tracked(), 1, "only b still holds a slot");
        drop(other);
        assert_eq!(admission.tracked(), 0, "idle namespaces are forgotten");
    }
}
