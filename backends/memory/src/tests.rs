use externalsource_core::registry::{BackendContext, Env};
use externalsource_core::testing::Fixture;

use super::*;

const BUDGET: u64 = 16 * 1024 * 1024;

async fn fixture() -> Fixture {
    Fixture::hosted(MemoryStorage::new(BUDGET), Some("http://svc.ns.svc.cluster.local:8080")).with_budget(BUDGET)
}

externalsource_core::behaviour_suite!(fixture, with_budget);

fn parse(table: &str, env: &[(&str, &str)]) -> Result<toml::Table, String> {
    let (table, env) = (toml::from_str(table).unwrap(), Env::from_pairs(env.iter().copied()));
    let parsed = externalsource_core::backend::parse::<MemoryStorage>(&BackendContext { table: &table, env: &env });
    parsed.map(|s| s.redacted()).map_err(|e| e.to_string())
}

#[test]
fn without_the_server_urls_use_the_memory_scheme() {
    let k = ObjectKey::parse("artifacts/ns/n/abc.tar.gz").unwrap();
    assert_eq!(MemoryStorage::new(1).direct_url(&k), "memory://localhost/artifacts/ns/n/abc.tar.gz");
}

#[test]
fn settings_parse_sizes_and_name_bad_values_and_their_source() {
    assert_eq!(parse("max_bytes = \"2MiB\"", &[]).unwrap()["max_bytes"].as_str(), Some("2MiB"));
    assert_eq!(parse("max_bytes = 2097152", &[]).unwrap()["max_bytes"].as_str(), Some("2MiB"));
    assert_eq!(parse("", &[]).unwrap()["max_bytes"].as_str(), Some("1GiB"));
    assert_eq!(parse("max_bytes = 1", &[("MEMORY_MAX_BYTES", "64MiB")]).unwrap()["max_bytes"].as_str(), Some("64MiB"));
    let err = parse("max_bytes = \"lots\"", &[]).unwrap_err();
    assert!(err.contains("storage.memory.max_bytes") && err.contains("lots") && err.contains("from file"), "{err}");
    let err = parse("", &[("MEMORY_MAX_BYTES", "0")]).unwrap_err();
    assert!(err.contains("env MEMORY_MAX_BYTES") && err.contains("greater than zero"), "{err}");
    let err = parse("max_byte = 5", &[]).unwrap_err();
    assert!(err.contains("max_byte"), "{err}");
}

/// The ordered key index that `list` reads stays equal to the objects held while puts, deletes
/// and refused puts race on the same keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_index_matches_the_objects_after_racing_puts_and_deletes() {
    let storage = std::sync::Arc::new(MemoryStorage::new(4096));
    let keys: Vec<ObjectKey> =
        (0..6).map(|i| ObjectKey::parse(&format!("artifacts/ns/race-{i}/a.tar.gz")).unwrap()).collect();
    let mut tasks = Vec::new();
    for t in 0..4usize {
        let (storage, keys) = (storage.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..500usize {
                let key = &keys[(t * 7 + round) % keys.len()];
                // Every fifth body is over the whole budget: refused, and never indexed.
                let body = Bytes::from(vec![t as u8; if round % 5 == 0 { 5000 } else { 100 + round % 300 }]);
                if (round + t) % 3 == 0 {
                    storage.delete(key).await.unwrap();
                } else {
                    let _ = storage.put(key, body.clone(), &Digest::of(&body)).await;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut held: Vec<String> = storage.objects.iter().map(|e| e.key().to_string()).collect();
    held.sort();
    let listed: Vec<String> =
        storage.list("artifacts/").await.unwrap().into_iter().map(|o| o.key.to_string()).collect();
    let indexed: Vec<String> = storage.keys.read().unwrap().iter().map(|k| k.to_string()).collect();
    assert_eq!(listed, held);
    assert_eq!(indexed, held);
    let used: u64 = storage.objects.iter().map(|e| e.1.size).sum();
    assert_eq!(storage.used_bytes(), used);
}
