//! Exponential backoff after transient failures, counted per object: 1 s doubling to
//! [`MAX_BACKOFF`], jittered, never shorter than an upstream's `Retry-After`.

use std::time::Duration;

use dashmap::DashMap;

/// Longest backoff after repeated transient errors.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Consecutive transient failures per object (namespace, name).
#[derive(Default)]
pub struct Backoff {
    failures: DashMap<(String, String), u32>,
}

impl Backoff {
    /// Counts one more failure of `namespace/name` and returns the delay before its next
    /// attempt, and how many attempts failed in a row.
    pub fn failed(&self, namespace: &str, name: &str, retry_after: Option<Duration>) -> (Duration, u32) {
        let attempts = {
            let mut entry = self.failures.entry((namespace.to_owned(), name.to_owned())).or_insert(0);
            *entry += 1;
            *entry
        };
        (delay(attempts, retry_after, fastrand::f64()), attempts)
    }

    /// The object succeeded (or is gone): its next failure starts from 1 s again.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.failures.remove(&(namespace.to_owned(), name.to_owned()));
    }
}

/// The delay before attempt `attempts + 1`: 1 s doubling per attempt up to [`MAX_BACKOFF`],
/// jittered by ±10 % (`jitter` in 0..1), never shorter than a requested `Retry-After`.
fn delay(attempts: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1 << attempts.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    let jittered = base.mul_f64(0.9 + jitter * 0.2).min(MAX_BACKOFF);
    retry_after.map_or(jittered, |r| r.max(jittered).min(MAX_BACKOFF))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_honours_retry_after() {
        let mid = |attempts| delay(attempts, None, 0.5);
        assert_eq!(mid(1), Duration::from_secs(1));
        assert_eq!(mid(2), Duration::from_secs(2));
        assert_eq!(mid(5), Duration::from_secs(16));
        assert_eq!(mid(40), MAX_BACKOFF, "capped");
        assert!(
            delay(1, None, 0.0) >= Duration::from_millis(900) && delay(1, None, 1.0) <= Duration::from_millis(1100)
        );
        assert_eq!(delay(1, Some(Duration::from_secs(30)), 0.5), Duration::from_secs(30), "Retry-After is a floor");
        assert_eq!(delay(1, Some(Duration::from_secs(3600)), 0.5), MAX_BACKOFF, "but capped too");
    }

    #[test]
    fn counts_per_object_until_forgotten() {
        let backoff = Backoff::default();
        assert_eq!(backoff.failed("ns", "a", None).1, 1);
        assert_eq!(backoff.failed("ns", "a", None).1, 2);
        assert_eq!(backoff.failed("ns", "b", None).1, 1, "another object counts on its own");
        backoff.forget("ns", "a");
        assert_eq!(backoff.failed("ns", "a", None).1, 1);
    }
}
