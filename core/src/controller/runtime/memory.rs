//! Admission of in-flight fetch memory: a reconcile reserves what its body may cost before it
//! fetches, so `concurrency` sources fetching `max_size` bodies at once cannot together exceed
//! `fetch.memory_budget` (they queue instead).
//!
//! A body of `n` bytes is reserved as `2 × n`: the body, plus one copy of it alive at the same
//! time (the transform output, or the packaged tarball built while the body is still held).
//! Before the response arrives `n` is the source's max size; a declared `Content-Length` (of an
//! unencoded body) shrinks the reservation to what it needs and pre-sizes the buffer. An archive
//! source also holds what it unpacks (up to its max size) and [`UNPACK_WORKSPACE`] beside both:
//! reserved on top.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What unpacking an archive holds beside the body and its output: inflate and deflate states,
/// read buffers and the tree's bookkeeping, reserved on top of the unpack cap. Measured without
/// it: a zip whose record declares 10 bytes and inflates towards 1 GiB grew the controller by
/// 26 MiB against its 2 × 1 MiB body + 24 MiB cap (`tests/bench/archivemem.sh`).
pub const UNPACK_WORKSPACE: u64 = 2 << 20;

/// Reservations are counted in KiB so a u32 permit count covers terabytes.
const UNIT: u64 = 1024;

/// The bytes a body of `body` bytes is reserved for.
pub fn cost_of_body(body: u64) -> u64 {
    body.saturating_mul(2)
}

/// What the budget shows a dashboard: whether admission is what holds fetches back.
#[derive(Debug, Clone, Default)]
pub struct AdmissionGauges {
    /// The budget itself (`fetch.memory_budget`), in bytes.
    pub budget: Gauge,
    /// Bytes reserved by fetches now.
    pub reserved: Gauge,
    /// Fetches waiting for room.
    pub waiting: Gauge,
}

/// The global budget.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total_units: u32,
    gauges: AdmissionGauges,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        Self::reporting(bytes, AdmissionGauges::default())
    }

    /// A budget of `bytes` that keeps `gauges` up to date.
    pub fn reporting(bytes: u64, gauges: AdmissionGauges) -> Self {
        let total_units = units(bytes).max(1);
        gauges.budget.set(gauge_bytes(total_units));
        Self { units: Arc::new(Semaphore::new(total_units as usize)), total_units, gauges }
    }

    /// What is not reserved now, in bytes.
    pub fn available(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }

    /// Waits until a body of up to `max_body` bytes fits. A body costlier than the whole budget
    /// (which the configuration rules out) reserves the whole budget, so it runs alone.
    pub async fn reserve(&self, max_body: u64) -> Reservation {
        self.reserve_with(max_body, 0).await
    }

    /// Like [`reserve`](Self::reserve), plus `extra` bytes that no declared length gives back:
    /// an archive unpacks to up to its cap whatever its compressed size.
    pub async fn reserve_with(&self, max_body: u64, extra: u64) -> Reservation {
        let extra_units = units(extra);
        let wanted = units(cost_of_body(max_body)).saturating_add(extra_units).min(self.total_units);
        // Counted while waiting, also when the waiting reconcile is dropped (shutdown).
        let waiting = Waiting::on(&self.gauges.waiting);
        // The semaphore is never closed, so acquiring only waits.
        let permit = self.units.clone().acquire_many_owned(wanted).await.ok();
        drop(waiting);
        let reserved = self.gauges.reserved.clone();
        reserved.inc_by(gauge_bytes(permit.as_ref().map_or(0, |p| p.num_permits() as u32)));
        Reservation { permit, extra_units, reserved }
    }
}

/// One fetch waiting for room, counted in a gauge for as long as it lives.
struct Waiting<'a>(&'a Gauge);

impl<'a> Waiting<'a> {
    fn on(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Memory held for one fetch until dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    /// Held whatever the body turns out to be.
    extra_units: u32,
    /// The budget's gauge of reserved bytes, given back to as the reservation shrinks and ends.
    reserved: Gauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.dec_by(gauge_bytes(self.permit.as_ref().map_or(0, |p| p.num_permits() as u32)));
    }
}

impl Reservation {
    /// The bytes held.
    pub fn bytes(&self) -> u64 {
        self.permit.as_ref().map_or(0, |p| p.num_permits() as u64 * UNIT)
    }

    /// Gives back what a body of `body` bytes (a declared length) does not need.
    pub fn shrink_to_body(&mut self, body: u64) {
        let Some(permit) = self.permit.as_mut() else { return };
        let needed = units(cost_of_body(body)).saturating_add(self.extra_units) as usize;
        if permit.num_permits() > needed {
            let released = permit.num_permits() - needed;
            drop(permit.split(released));
            self.reserved.dec_by(gauge_bytes(released as u32));
        }
    }
}

/// `units` in bytes, as a gauge holds them.
fn gauge_bytes(units: u32) -> i64 {
    i64::from(units) * UNIT as i64
}

fn units(bytes: u64) -> u32 {
    bytes.div_ceil(UNIT).min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIB: u64 = 1 << 20;

    #[tokio::test]
    async fn extra_bytes_survive_a_declared_length() {
        let budget = MemoryBudget::new(256 * MIB);
        let mut r = budget.reserve_with(32 * MIB, 32 * MIB).await;
        assert_eq!(r.bytes(), 96 * MIB);
        r.shrink_to_body(MIB);
        assert_eq!(r.bytes(), 34 * MIB, "the body's two copies shrink, the unpacking allowance stays");
    }

    #[tokio::test]
    async fn reservations_queue_beyond_the_budget() {
        let budget = MemoryBudget::new(256 * MIB);
        let a = budget.reserve(64 * MIB).await;
        let b = budget.reserve(64 * MIB).await;
        assert_eq!((a.bytes(), b.bytes(), budget.available()), (128 * MIB, 128 * MIB, 0));
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(64 * MIB).await.bytes() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a third max-size body waits");
        drop(a);
        assert_eq!(waiting.await.unwrap(), 128 * MIB);
        drop(b);
        assert_eq!(budget.available(), 256 * MIB, "everything is given back");
    }

    #[tokio::test]
    async fn a_declared_length_gives_back_the_rest() {
        let budget = MemoryBudget::new(256 * MIB);
        let mut r = budget.reserve(64 * MIB).await;
        r.shrink_to_body(MIB);
        assert_eq!(r.bytes(), 2 * MIB);
        assert_eq!(budget.available(), 254 * MIB);
        r.shrink_to_body(32 * MIB);
        assert_eq!(r.bytes(), 2 * MIB, "never grows");
        r.shrink_to_body(0);
        assert_eq!(r.bytes(), 0);
    }

    #[tokio::test]
    async fn a_body_costlier_than_the_budget_runs_alone() {
        let budget = MemoryBudget::new(100 * MIB);
        let r = budget.reserve(64 * MIB).await;
        assert_eq!((r.bytes(), budget.available()), (100 * MIB, 0));
    }

    #[tokio::test]
    async fn the_gauges_follow_reservations_and_waiters() {
        let gauges = AdmissionGauges::default();
        let budget = MemoryBudget::reporting(256 * MIB, gauges.clone());
        let mib = |n: u64| (n * MIB) as i64;
        assert_eq!(gauges.budget.get(), mib(256));
        let mut a = budget.reserve(64 * MIB).await;
        let b = budget.reserve(64 * MIB).await;
        assert_eq!((gauges.reserved.get(), gauges.waiting.get()), (mib(256), 0));
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(64 * MIB).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gauges.waiting.get(), 1, "the third fetch waits and is counted");
        a.shrink_to_body(MIB);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gauges.waiting.get(), 1, "126 MiB given back is not enough for 128");
        drop(a);
        let c = waiter.await.unwrap();
        assert_eq!((gauges.reserved.get(), gauges.waiting.get()), (mib(256), 0));
        drop((b, c));
        assert_eq!(gauges.reserved.get(), 0, "everything is given back");
        // A waiting fetch that is dropped (its reconcile cancelled) is no longer counted.
        let held = budget.reserve(128 * MIB).await;
        let cancelled = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(MIB).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gauges.waiting.get(), 1);
        cancelled.abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!((gauges.waiting.get(), gauges.reserved.get()), (0, mib(256)));
        drop(held);
    }
}
