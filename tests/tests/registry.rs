//! Two linked crates registering one backend name: start-up refuses it, naming both crates,
//! rather than letting `storage.backend = "memory"` pick one of them by link order.

use externalsource_backend_memory as _;
use externalsource_core::Capabilities;
use externalsource_core::config::{ConfigError, ConfigLoader};
use externalsource_core::registry::{self, BackendContext, BackendSettings, Env};

/// A second "memory" backend, from this crate.
fn parse(_: &BackendContext<'_>) -> Result<Box<dyn BackendSettings>, ConfigError> {
    Err(ConfigError::Invalid { key: "storage.memory".into(), value: String::new(), rule: "not this one".into() })
}

externalsource_core::register_backend! {
    name: "memory",
    capabilities: Capabilities { serves_http: true, shared: false },
    note: "",
    parse: parse,
}

#[test]
fn a_duplicate_backend_name_is_refused_naming_both_crates() {
    let err = registry::check_unique().expect_err("two crates register memory");
    assert_eq!(err.name, "memory");
    assert_eq!(err.crates, "externalsource-backend-memory, externalsource-tests");
    let message = ConfigLoader::new(Env::default()).build().expect_err("memory is ambiguous").to_string();
    assert!(message.contains("externalsource-backend-memory") && message.contains("externalsource-tests"), "{message}");
    assert!(registry::describe_backends().contains("[externalsource-tests]"), "--list-backends names the crates");
}
