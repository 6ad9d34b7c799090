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
