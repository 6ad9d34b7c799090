//! The loader as start-up runs it: precedence, the source named in errors, the derived
//! environment, and `--print-config` reading back to the same configuration.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;

use super::{ConfigError, ConfigLoader, ENV_KEYS, keys};
use crate::backend::{Backend, OpenContext};
use crate::registry::{BuildError, Env};
use crate::storage::{ByteRange, Capabilities, ObjectBody, ObjectMeta, ObjectSummary, StorageError};
use crate::{Digest, ObjectKey};

/// A backend that stores nothing, the only one linked into these tests (the real ones are
/// crates of their own): the loader needs one to select.
struct MockNullStore;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

impl Backend for MockNullStore {
    const NAME: &'static str = "mock-null";
    const CAPABILITIES: Capabilities = Capabilities { serves_http: false, shared: false };
    type Settings = NoSettings;

    async fn open(_: &NoSettings, _: &OpenContext) -> Result<Self, BuildError> {
        Ok(Self)
    }
    async fn put(&self, _: &ObjectKey, _: Bytes, _: &Digest) -> Result<(), StorageError> {
        Ok(())
    }
    async fn get(&self, key: &ObjectKey, _: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        Err(StorageError::NotFound(key.clone()))
    }
    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        Err(StorageError::NotFound(key.clone()))
    }
    async fn delete(&self, _: &ObjectKey) -> Result<(), StorageError> {
        Ok(())
    }
    async fn list(&self, _: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        Ok(Vec::new())
    }
    fn direct_url(&self, key: &ObjectKey) -> String {
        format!("http://nowhere.invalid/{key}")
    }
}

crate::register_backend!(MockNullStore);

fn load(file: &str, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Result<super::Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, file).unwrap();
    let mut loader = ConfigLoader::new(Env::from_pairs(env.iter().copied())).file(&path, true)?.environment();
    for (key, value) in flags {
        loader.set_str(key, value, &format!("flag --{key}"));
    }
    loader.build()
}

fn invalid(result: Result<super::Config, ConfigError>) -> (String, String, String) {
    match result {
        Err(ConfigError::Invalid { key, value, rule }) => (key, value, rule),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let file = "[controller]\nconcurrency = 6\nmin_interval = \"2m\"\n";
    let c = load(file, &[], &[]).unwrap();
    assert_eq!((c.controller.concurrency, c.controller.min_interval), (6, Duration::from_secs(120)));
    let c = load(file, &[("CONTROLLER_CONCURRENCY", "8"), ("MIN_INTERVAL", "")], &[]).unwrap();
    assert_eq!(c.controller.concurrency, 8, "env beats file");
    assert_eq!(c.controller.min_interval, Duration::from_secs(120), "an empty variable is unset");
    let c = load(file, &[("CONTROLLER_CONCURRENCY", "8")], &[("controller.concurrency", "9")]).unwrap();
    assert_eq!(c.controller.concurrency, 9, "flag beats env");
}

#[test]
fn errors_name_key_value_source_and_rule() {
    let (key, value, rule) = invalid(load("[server]\nport = 70000\n", &[], &[]));
    assert_eq!(key, "server.port");
    assert!(value.starts_with("70000 (from file ") && value.ends_with("config.toml)"), "{value}");
    assert_eq!(rule, "must be an integer from 1 to 65535");
    let (key, value, rule) = invalid(load("", &[("HTTP_TIMEOUT", "10ms")], &[]));
    assert_eq!((key.as_str(), value.as_str()), ("fetch.timeout", "\"10ms\" (from env HTTP_TIMEOUT)"));
    assert_eq!(rule, "must be at least 1s");
    // A rule across keys names the source of the key it is about.
    let (key, value, rule) = invalid(load("[controller]\nlease_duration = \"5s\"\n", &[], &[]));
    assert_eq!((key.as_str(), value.as_str()), ("controller.renew_deadline", "\"10s\" (from default)"));
    assert!(rule.contains("shorter than controller.lease_duration (5s)"), "{rule}");
    let (key, value, _) = invalid(load("", &[], &[("transform.concurrency", "9")]));
    assert_eq!((key.as_str(), value.as_str()), ("transform.concurrency", "\"9\" (from flag --transform.concurrency)"));
}

#[test]
fn unknown_keys_name_the_known_ones() {
    match load("[fetch]\nmax_sise = \"1MiB\"\n", &[], &[]) {
        Err(ConfigError::UnknownKey { key, table, known, .. }) => {
            assert_eq!((key.as_str(), table.as_str()), ("fetch.max_sise", "fetch"));
            assert!(known.split(", ").any(|k| k == "max_size"), "{known}");
        }
        other => panic!("{other:?}"),
    }
    match load("[fetches]\nmax_size = 1\n", &[], &[]) {
        Err(ConfigError::UnknownKey { key, known, .. }) => {
            assert_eq!((key.as_str(), known.contains("fetch")), ("fetches", true))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn defaults_follow_the_keys_they_depend_on() {
    let c = load("[controller]\nconcurrency = 8\n[hooks]\nconcurrency = 6\n[fetch]\nmax_size = \"200MiB\"\n", &[], &[])
        .unwrap();
    assert_eq!(c.controller.namespace_concurrency, 6, "three quarters of controller.concurrency");
    assert_eq!(c.transform.concurrency, 4, "half of controller.concurrency");
    assert_eq!(c.hooks.namespace_concurrency, 3, "half of hooks.concurrency");
    assert_eq!(c.fetch.memory_budget, 400 << 20, "twice fetch.max_size");
}

#[test]
fn the_printed_configuration_reads_back_to_itself() {
    let file = "[server]\nadvertise_url = \"https://a.example/x/\"\n[fetch]\nallow_cidrs = \"10.0.0.0/8\"\n\
                [controller]\nwatch_label_selector = \"team in (a, b)\"\nmemory_check = \"warn\"\n\
                [hooks]\nsocket = \"/run/hooks.sock\"\n[log]\nformat = \"json\"\n";
    let printed = load(file, &[("MIN_INTERVAL", "90s")], &[]).unwrap().to_toml();
    let again = load(&printed, &[], &[]).unwrap();
    assert_eq!(again.to_toml(), printed);
    assert_eq!(again.controller.min_interval, Duration::from_secs(90));
    assert_eq!(again.server.base_url().as_deref(), Some("https://a.example/x"));
}

#[test]
fn environment_variables_and_flags_are_unique_and_listed() {
    let all = keys();
    let envs: BTreeSet<_> = all.iter().filter_map(|k| k.env).collect();
    assert_eq!(envs.len(), all.iter().filter(|k| k.env.is_some()).count(), "one key per variable");
    let flags: BTreeSet<_> = all.iter().filter_map(|k| k.flag).collect();
    assert_eq!(flags.len(), all.iter().filter(|k| k.flag.is_some()).count(), "one key per flag");
    assert!(ENV_KEYS.iter().any(|(var, key)| *var == "ARTIFACT_SERVER_PORT" && key == "server.port"));
    assert!(all.iter().all(|k| !k.doc.trim().is_empty()), "every key is documented");
}
