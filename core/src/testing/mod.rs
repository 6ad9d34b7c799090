//! The behaviour suite every storage backend passes, public so third-party backends run it too.
//!
//! In a backend crate's tests (with `tokio` as a dev-dependency):
//!
//! ```ignore
//! async fn fixture() -> externalsource_core::testing::Fixture {
//!     Fixture::hosted(MyBackend::open(&settings, &ctx).await.unwrap(), Some("http://svc:8080"))
//! }
//! externalsource_core::behaviour_suite!(fixture);
//! // or, for a backend with a byte budget of `Fixture::budget` bytes:
//! externalsource_core::behaviour_suite!(fixture, with_budget);
//! ```

pub mod faults;

pub use faults::{Fault, FaultInjector, Operation, Times};

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::digest::Digest;
use crate::key::ObjectKey;
use crate::storage::{Storage, StorageError};

/// A backend under test, plus whatever must live as long as it (temp dirs, servers).
pub struct Fixture {
    pub storage: Arc<dyn Storage>,
    /// The byte budget the backend was built with, for the over-budget case.
    pub budget: Option<u64>,
    /// What every URL the backend gives starts with, the key following: the base URL it was
    /// built with plus `/` for a backend the controller's server serves, its own direct URL
    /// base otherwise. Required by the URL case.
    pub url_base: Option<String>,
    pub guard: Box<dyn Any + Send>,
}

impl Fixture {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage, budget: None, url_base: None, guard: Box::new(()) }
    }

    /// A backend as the controller hosts it, its server at `base_url` (`None`: server disabled).
    /// The URL base is declared for a backend the server serves; one that does not serve
    /// declares its own with [`Fixture::with_url_base`].
    pub fn hosted<B: crate::backend::Backend>(backend: B, base_url: Option<&str>) -> Self {
        let url_base =
            base_url.filter(|_| backend.capabilities().serves_http).map(|b| format!("{}/", b.trim_end_matches('/')));
        let storage = Arc::new(crate::backend::Hosted::new(backend, base_url));
        Self { storage, budget: None, url_base, guard: Box::new(()) }
    }

    /// Declares the URL base (see [`Fixture::url_base`]).
    pub fn with_url_base(mut self, base: impl Into<String>) -> Self {
        self.url_base = Some(base.into());
        self
    }

    pub fn with_guard(mut self, guard: impl Any + Send) -> Self {
        self.guard = Box::new(guard);
        self
    }

    pub fn with_budget(mut self, budget: u64) -> Self {
        self.budget = Some(budget);
        self
    }
}

/// Generates one `#[tokio::test]` per behaviour case for a fixture constructor.
#[macro_export]
macro_rules! behaviour_suite {
    ($fixture:ident $(, $extra:ident)?) => {
        mod behaviour_suite {
            $crate::behaviour_suite!(@cases $fixture;
                put_then_get_returns_the_same_bytes_and_digest,
                get_of_a_range_returns_exactly_that_range,
                stat_reports_size_digest_and_time,
                missing_objects_are_not_found,
                list_returns_objects_under_a_prefix_in_order,
                delete_removes_and_is_idempotent,
                overwrite_replaces_the_object,
                concurrent_puts_and_gets_see_whole_objects,
                only_exact_keys_are_objects,
                empty_and_large_objects_round_trip,
                url_names_the_key
                $(, $extra)?);
        }
    };
    (@cases $fixture:ident; $($case:ident),*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = super::$fixture().await;
                $crate::testing::cases::$case(&fixture).await;
            }
        )*
    };
}

/// Deterministic bytes that do not compress (xorshift), so a packaged artifact is about as large
/// as its payload and a wrong range shows as wrong content.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).expect("test key is valid")
}

/// Puts computing the digest first, as packaging does before the controller puts.
pub trait PutBytes {
    fn put_bytes(
        &self,
        key: &ObjectKey,
        body: Bytes,
    ) -> impl std::future::Future<Output = Result<crate::ObjectMeta, StorageError>> + Send;
}

impl<S: Storage + ?Sized> PutBytes for S {
    async fn put_bytes(&self, key: &ObjectKey, body: Bytes) -> Result<crate::ObjectMeta, StorageError> {
        let digest = Digest::of(&body);
        self.put(key, body, &digest).await
    }
}

async fn put(s: &Arc<dyn Storage>, k: &ObjectKey, body: Bytes) -> Result<crate::ObjectMeta, StorageError> {
    s.put_bytes(k, body).await
}

fn payload(seed: u8, len: usize) -> Bytes {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>().into()
}

/// The cases, one function each so failures name the behaviour.
pub mod cases {
    use super::*;

    pub async fn put_then_get_returns_the_same_bytes_and_digest(f: &Fixture) {
        let s = &f.storage;
        let k = key("artifacts/ns/src/one.tar.gz");
        let body = payload(1, 10_000);
        let meta = put(s, &k, body.clone()).await.expect("put");
        assert_eq!(meta.key, k);
        assert_eq!(meta.size, body.len() as u64);
        assert_eq!(meta.digest, Digest::of(&body));
        let got = s.get(&k, None).await.expect("get");
        assert_eq!(got.meta.digest, meta.digest);
        assert_eq!(got.range, None);
        assert_eq!(got.len(), body.len() as u64);
        assert_eq!(got.collect().await.expect("read"), body);
    }

    pub async fn get_of_a_range_returns_exactly_that_range(f: &Fixture) {
        let s = &f.storage;
        let k = key("artifacts/ns/src/range.tar.gz");
        let body = payload(2, 4096);
        put(s, &k, body.clone()).await.expect("put");
        for (start, end) in [(0, 0), (2, 5), (100, 4095), (4095, 4095), (0, 4095)] {
            let got = s.get(&k, Some(start..=end)).await.expect("ranged get");
            assert_eq!(got.range, Some(start..=end));
            assert_eq!(got.len(), end - start + 1);
            assert_eq!(got.meta.size, 4096, "meta describes the whole object");
            assert_eq!(got.collect().await.expect("read"), body.slice(start as usize..=end as usize));
        }
        for (start, end) in [(4096, 4096), (10, 5000), (5, 4)] {
            match s.get(&k, Some(start..=end)).await {
                Err(StorageError::RangeNotSatisfiable { size, .. }) => assert_eq!(size, 4096),
                other => panic!("range {start}-{end} gave {other:?}"),
            }
        }
    }

    pub async fn stat_reports_size_digest_and_time(f: &Fixture) {
        let s = &f.storage;
        let k = key("artifacts/ns/src/stat.tar.gz");
        let before = SystemTime::now() - Duration::from_secs(5);
        let body = payload(3, 777);
        put(s, &k, body.clone()).await.expect("put");
        let meta = s.stat(&k).await.expect("stat");
        assert_eq!(meta.size, 777);
        assert_eq!(meta.digest, Digest::of(&body));
        assert!(meta.last_modified >= before, "last_modified {:?} is before the put", meta.last_modified);
        assert!(meta.last_modified <= SystemTime::now() + Duration::from_secs(5));
    }

    pub async fn missing_objects_are_not_found(f: &Fixture) {
        let s = &f.storage;
        let k = key("artifacts/ns/none/missing.tar.gz");
        assert!(matches!(s.get(&k, None).await, Err(StorageError::NotFound(ref m)) if *m == k));
        assert!(matches!(s.stat(&k).await, Err(StorageError::NotFound(_))));
        assert!(matches!(s.get(&k, Some(0..=1)).await, Err(StorageError::NotFound(_))));
    }

    pub async fn list_returns_objects_under_a_prefix_in_order(f: &Fixture) {
        let s = &f.storage;
        for (k, seed) in [("list/a/x/2", 2), ("list/a/x/1", 1), ("list/a/y/1", 3), ("list/b/1", 4), ("list/a/xx/1", 5)]
        {
            put(s, &key(k), payload(seed, 10 + seed as usize)).await.expect("put");
        }
        let names = |v: Vec<crate::ObjectSummary>| v.into_iter().map(|m| m.key.to_string()).collect::<Vec<_>>();
        assert_eq!(names(s.list("list/a/x/").await.expect("list")), ["list/a/x/1", "list/a/x/2"]);
        assert_eq!(
            names(s.list("list/a/").await.expect("list")),
            ["list/a/x/1", "list/a/x/2", "list/a/xx/1", "list/a/y/1"]
        );
        assert!(s.list("list/zzz/").await.expect("list").is_empty());
        let listed = s.list("list/b/").await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size, 14);
        let stat = s.stat(&key("list/b/1")).await.expect("stat");
        assert_eq!(listed[0].last_modified, stat.last_modified, "list and stat agree on the time");
    }

    pub async fn delete_removes_and_is_idempotent(f: &Fixture) {
        let s = &f.storage;
        let k = key("artifacts/ns/del/x.tar.gz");
        put(s, &k, payload(5, 100)).await.expect("put");
        s.delete(&k).await.expect("delete");
        assert!(matches!(s.stat(&k).await, Err(StorageError::NotFound(_))));
        assert!(s.list("artifacts/ns/del/").await.expect("list").is_empty());
        s.delete(&k).await.expect("second delete succeeds");
    }

    pub async fn overwrite_replaces_the_object(f: &Fixture) {
        let s = &f.storage;
        let k = key("artifacts/ns/over/x.tar.gz");
        put(s, &k, payload(6, 300)).await.expect("put v1");
        let v2 = payload(7, 200);
        let meta = put(s, &k, v2.clone()).await.expect("put v2");
        assert_eq!(meta.digest, Digest::of(&v2));
        assert_eq!(s.get(&k, None).await.expect("get").collect().await.expect("read"), v2);
        let listed = s.list("artifacts/ns/over/").await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size, 200);
    }

    pub async fn concurrent_puts_and_gets_see_whole_objects(f: &Fixture) {
        let s = f.storage.clone();
        let shared = key("artifacts/ns/conc/shared.tar.gz");
        let (a, b) = (payload(8, 64 * 1024), payload(9, 48 * 1024));
        put(&s, &shared, a.clone()).await.expect("seed put");
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let s = s.clone();
            let (shared, a, b) = (shared.clone(), a.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                let own = key(&format!("artifacts/ns/conc/own-{i}.tar.gz"));
                let mine = payload(100 + i, 1000 + i as usize);
                for round in 0..10 {
                    put(&s, &own, mine.clone()).await.expect("own put");
                    assert_eq!(s.get(&own, None).await.expect("own get").collect().await.expect("read"), mine);
                    if i % 2 == 0 {
                        put(&s, &shared, if round % 2 == 0 { b.clone() } else { a.clone() }).await.expect("shared put");
                    } else {
                        let got = s.get(&shared, None).await.expect("shared get").collect().await.expect("read");
                        assert!(got == a || got == b, "a reader saw a torn object of {} bytes", got.len());
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(s.list("artifacts/ns/conc/own-").await.expect("list").len(), 8);
    }

    pub async fn only_exact_keys_are_objects(f: &Fixture) {
        let s = &f.storage;
        put(s, &key("artifacts/ns/exact/deep/x.tar.gz"), payload(10, 10)).await.expect("put");
        for k in ["artifacts/ns/exact", "artifacts/ns/exact/deep", "artifacts/ns/exact/deep/x.tar"] {
            assert!(matches!(s.stat(&key(k)).await, Err(StorageError::NotFound(_))), "{k} is not an object");
            assert!(matches!(s.get(&key(k), None).await, Err(StorageError::NotFound(_))), "{k} is not an object");
        }
        let listed = s.list("artifacts/ns/exact/").await.expect("list");
        assert_eq!(listed.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), ["artifacts/ns/exact/deep/x.tar.gz"]);
    }

    pub async fn empty_and_large_objects_round_trip(f: &Fixture) {
        let s = &f.storage;
        let empty = key("artifacts/ns/sizes/empty.tar.gz");
        let meta = put(s, &empty, Bytes::new()).await.expect("put empty");
        assert_eq!(meta.size, 0);
        assert_eq!(s.get(&empty, None).await.expect("get").collect().await.expect("read").len(), 0);
        let large = key("artifacts/ns/sizes/large.tar.gz");
        let body = payload(11, 5 * 1024 * 1024 + 3);
        put(s, &large, body.clone()).await.expect("put large");
        let got = s.get(&large, None).await.expect("get large");
        assert_eq!(got.len(), body.len() as u64);
        assert_eq!(got.collect().await.expect("read"), body);
    }

    pub async fn url_names_the_key(f: &Fixture) {
        let base = f.url_base.as_deref().expect("the fixture declares its URL base (Fixture::with_url_base)");
        for k in [key("artifacts/ns/url/abc.tar.gz"), key("artifacts/other-ns/n-2/0123abcd.tar.gz")] {
            assert_eq!(f.storage.url(&k), format!("{base}{k}"), "the URL of {k} is the base, then the key");
        }
        assert!(base.contains("://"), "{base} is not a URL");
    }

    pub async fn with_budget(f: &Fixture) {
        let s = &f.storage;
        let budget = f.budget.expect("the fixture declares its budget");
        let k = key("artifacts/ns/budget/big.tar.gz");
        match put(s, &k, payload(12, budget as usize + 1)).await {
            Err(StorageError::OverBudget { budget: b, .. }) => assert_eq!(b, budget),
            other => panic!("a put over budget gave {other:?}"),
        }
        assert!(matches!(s.stat(&k).await, Err(StorageError::NotFound(_))), "nothing is stored");
        let half = budget as usize / 2;
        put(s, &k, payload(13, half)).await.expect("half the budget fits");
        put(s, &k, payload(14, half)).await.expect("replacing counts the old object out");
        let other = key("artifacts/ns/budget/other.tar.gz");
        assert!(matches!(put(s, &other, payload(15, half + 1)).await, Err(StorageError::OverBudget { .. })));
        s.delete(&k).await.expect("delete");
        put(s, &other, payload(15, half + 1)).await.expect("deleting frees the budget");
    }
}
