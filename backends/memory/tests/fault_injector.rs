//! The storage fault injector over a real backend: it fails exactly what it is told to, holds
//! calls at a gate, and passes everything else through unchanged.

use std::time::Duration;

use externalsource_backend_memory::MemoryStorage;
use externalsource_core::backend::host;
use externalsource_core::testing::{Fault, FaultInjector, Operation, PutBytes, Times};
use externalsource_core::{ObjectKey, Storage, StorageError};

fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).unwrap()
}

#[tokio::test]
async fn fails_the_chosen_calls_and_passes_the_rest_through() {
    let faults = FaultInjector::new(host(MemoryStorage::new(1 << 20), None));
    let k = key("artifacts/ns/s/a.tar.gz");
    faults.fail(Operation::Put, Fault::Unavailable, Times::Next(2));
    faults.fail(Operation::Stat, Fault::Corrupt, Times::Next(1));
    for _ in 0..2 {
        assert!(matches!(
            faults.put_bytes(&k, "x".into()).await,
            Err(StorageError::Unavailable { operation: "put", .. })
        ));
    }
    assert!(matches!(faults.stat(&k).await, Err(StorageError::Corrupt { .. })));
    assert!(matches!(faults.stat(&k).await, Err(StorageError::NotFound(_))), "the failed puts stored nothing");
    faults.put_bytes(&k, "x".into()).await.expect("the third put reaches the backend");
    assert_eq!(faults.get(&k, None).await.unwrap().collect().await.unwrap(), "x");

    faults.fail(Operation::Put, Fault::OverBudget { used: 10, budget: 20 }, Times::Always);
    faults.fail(Operation::List, Fault::StoreMissing, Times::Always);
    faults.fail(Operation::Delete, Fault::AccessDenied, Times::Always);
    for _ in 0..3 {
        match faults.put_bytes(&k, "yy".into()).await {
            Err(StorageError::OverBudget { size: 2, used: 10, budget: 20, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(faults.list("artifacts/").await, Err(StorageError::StoreMissing { .. })));
    assert!(matches!(faults.delete(&k).await, Err(StorageError::AccessDenied { .. })));
    assert_eq!(faults.failures(Operation::Put), 5);
    faults.clear();
    faults.delete(&k).await.expect("cleared");
    assert_eq!(faults.list("artifacts/").await.unwrap().len(), 0);
}

#[tokio::test]
async fn a_gate_holds_calls_until_opened() {
    let faults = FaultInjector::new(host(MemoryStorage::new(1 << 20), None));
    let gate = faults.hold(Operation::Put);
    let k = key("artifacts/ns/s/b.tar.gz");
    let held = tokio::spawn({
        let (faults, k) = (faults.clone(), k.clone());
        async move { faults.put_bytes(&k, "held".into()).await }
    });
    tokio::time::timeout(Duration::from_secs(5), gate.reached()).await.expect("the put reached the gate");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!held.is_finished(), "held at the gate");
    assert!(matches!(faults.stat(&k).await, Err(StorageError::NotFound(_))), "other operations pass");
    gate.open();
    held.await.unwrap().expect("the put completes once opened");
    assert_eq!(faults.stat(&k).await.unwrap().size, 4);
}
