//! Configuration: built-in defaults < TOML file < environment < flags.
//!
//! Every key is declared once, in `sections.rs`: its type and rule, default, environment
//! variable, flag and documentation. All sources are merged into one TOML table first,
//! remembering where each key came from, and each section is then read from it by the same
//! [reader](reader::Layered) as every backend's table; [`Config::check`] holds the rules across
//! keys. So an error always names the key, the value, where the value came from, and the rule
//! it broke, whatever the source.

mod codec;
pub mod declare;
mod label_selector;
pub mod reader;
pub mod reference;
mod sections;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use ipnet::IpNet;

pub use self::declare::Key;
use self::declare::Section;
use self::reader::Layered;
pub use self::sections::{
    ControllerConfig, FetchConfig, HooksConfig, LogConfig, LogFormat, MemoryCheck, OpsConfig, ReceiverConfig,
    ServerConfig, StorageConfig, TransformConfig,
};
use crate::backend::{EnvVar, Invalid};
use crate::registry::{self, BackendContext, BackendSettings, Env};
use crate::units::{format_duration, format_size};

/// Default location of the configuration file, read when present and no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/externalsource/config.toml";

/// Default name of the artifact Service (the seed's).
pub const DEFAULT_SERVICE_NAME: &str = "flux-externalsource-controller-artifacts";

/// What the process may resident-use besides the store, fetches and transforms (runtime, caches
/// of watched objects, connection buffers), counted in [`Config::memory_need`].
pub const BASELINE_MEMORY: u64 = 64 << 20;

/// Where `hook-executor` reads its whitelist by default.
pub const DEFAULT_HOOK_WHITELIST: &str = "/etc/externalsource/hooks/whitelist.toml";

/// Where `hook-executor` makes each run's private directory by default.
pub const DEFAULT_HOOK_RUN_DIR: &str = "/tmp/externalsource-hooks";

/// The default `fetch.memory_budget` unless twice `fetch.max_size` is more.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;

/// Link-local networks and the cloud metadata addresses: the default `fetch.deny_cidrs`.
/// 169.254.169.254 (AWS, GCP, Azure, …) lies in 169.254.0.0/16; fd00:ec2::254 is AWS's IPv6
/// metadata endpoint.
pub const DEFAULT_DENY_CIDRS: &[&str] = &["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"];

/// A configuration that cannot be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {key} = {value}: {rule}")]
    Invalid { key: String, value: String, rule: String },
    #[error("unknown configuration key {key} (from {source_name}); known keys of [{table}] are: {known}")]
    UnknownKey { key: String, source_name: String, table: String, known: String },
    #[error("unknown storage backend {name:?}; linked backends: {linked}")]
    UnknownBackend { name: String, linked: String },
    #[error(transparent)]
    DuplicateBackend(#[from] crate::registry::DuplicateBackend),
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The effective configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub ops: OpsConfig,
    pub backend: &'static str,
    pub storage: Box<dyn BackendSettings>,
    /// Bytes of artifacts one namespace may store, when set.
    pub namespace_quota: Option<u64>,
    pub controller: ControllerConfig,
    pub fetch: FetchConfig,
    pub transform: TransformConfig,
    pub hooks: HooksConfig,
    pub log: LogConfig,
    pub receiver: ReceiverConfig,
}

/// A table of the configuration file: its name, its doc comment and its keys.
pub struct SectionDoc {
    pub name: &'static str,
    pub doc: &'static str,
    pub keys: Vec<Key>,
}

fn section<S: Section>() -> SectionDoc {
    SectionDoc { name: S::NAME, doc: S::DOC, keys: S::keys() }
}

/// The sections of the core's configuration, in order (backends declare their own).
pub fn sections() -> Vec<SectionDoc> {
    vec![
        section::<ServerConfig>(),
        section::<OpsConfig>(),
        section::<ReceiverConfig>(),
        section::<StorageConfig>(),
        section::<ControllerConfig>(),
        section::<FetchConfig>(),
        section::<TransformConfig>(),
        section::<HooksConfig>(),
        section::<LogConfig>(),
    ]
}

/// Every key of the core's configuration, section by section.
pub fn keys() -> Vec<Key> {
    sections().into_iter().flat_map(|s| s.keys).collect()
}

/// Environment variables the core reads, with the key each one sets. Backends read their own.
pub static ENV_KEYS: LazyLock<Vec<(&'static str, String)>> =
    LazyLock::new(|| keys().into_iter().filter_map(|k| Some((k.env?, k.path.to_owned()))).collect());

/// The core's environment variables as the reader applies them (text; each key's rule parses it).
static ENV_VARS: LazyLock<Vec<EnvVar>> =
    LazyLock::new(|| keys().into_iter().filter_map(|k| Some(EnvVar::text(k.env?, k.path))).collect());

/// A TOML syntax error with its position but without the quoted source line, which may hold a
/// secret (an unterminated `secret_access_key = "…`).
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{message} at line {line}, column {column}")
        }
        None => message.to_owned(),
    }
}

/// A CIDR, or a bare address as a single-address network.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>().ok().or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// [`DEFAULT_DENY_CIDRS`] as networks.
pub fn default_deny_cidrs() -> Vec<IpNet> {
    DEFAULT_DENY_CIDRS.iter().filter_map(|c| parse_cidr(c)).collect()
}

/// Builds a [`Config`] from layered sources.
#[derive(Debug, Default)]
pub struct ConfigLoader {
    layered: Layered,
    env: Env,
}

impl ConfigLoader {
    pub fn new(env: Env) -> Self {
        Self { layered: Layered::default(), env }
    }

    /// Reads a TOML file. With `explicit == false` a missing file is fine (the default path).
    pub fn file(mut self, path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(source) => {
                return Err(ConfigError::Read { path: path.to_owned(), source });
            }
        };
        let parsed: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(&text, &e),
        })?;
        let source = format!("file {}", path.display());
        if let Some((table, other)) = parsed.iter().find(|(_, v)| !v.is_table()) {
            return Err(ConfigError::Invalid {
                key: table.clone(),
                value: other.to_string(),
                rule: format!("top-level keys must be tables ({source})"),
            });
        }
        self.layered.merge(parsed, &source);
        Ok(self)
    }

    /// Applies the environment variables of [`ENV_KEYS`].
    pub fn environment(mut self) -> Self {
        // Text values cannot fail to apply: each key's rule parses them when it is read.
        let _ = self.layered.apply_env(ENV_VARS.iter(), &self.env);
        self
    }

    /// Sets a key from a string (flags and environment), typed later by validation.
    pub fn set_str(&mut self, key: &str, value: &str, source: &str) {
        self.layered.set(key, toml::Value::String(value.to_owned()), source);
    }

    /// Reads every section, builds the selected backend's settings and checks the rules across
    /// keys.
    pub fn build(mut self) -> Result<Config, ConfigError> {
        let root = &mut self.layered;
        let mut storage_table = root.take("storage")?;
        let backend_tables = take_backend_tables(&mut storage_table)?;
        let server = ServerConfig::read(&root.take("server")?)?;
        let ops = OpsConfig::read(&root.take("ops")?)?;
        let receiver = ReceiverConfig::read(&root.take("receiver")?)?;
        let storage = StorageConfig::read(&storage_table)?;
        let controller = ControllerConfig::read(&root.take("controller")?)?;
        let fetch = FetchConfig::read(&root.take("fetch")?)?;
        let transform_table = root.take("transform")?;
        let mut transform = TransformConfig::read(&transform_table)?;
        if !transform_table.table().contains_key("concurrency") {
            // Half the reconcile slots: filters are CPU-bound and the machine has other work.
            transform.concurrency = usize::from(controller.concurrency / 2).max(1);
        }
        let hooks = HooksConfig::read(&root.take("hooks")?)?;
        let log = LogConfig::read(&root.take("log")?)?;
        reject_unknown_tables(root)?;
        let descriptor = registry::find(&storage.backend)?;
        let empty = toml::Table::new();
        let table = backend_tables.get(descriptor.name).unwrap_or(&empty);
        let settings = (descriptor.parse)(&BackendContext { table, env: &self.env })?;
        let config = Config {
            server,
            ops,
            backend: descriptor.name,
            storage: settings,
            namespace_quota: storage.namespace_quota,
            controller,
            fetch,
            transform,
            hooks,
            log,
            receiver,
        };
        config.check().map_err(|bad| self.across_keys_error(bad))?;
        Ok(config)
    }

    /// A rule across keys broken: named with the source of the key it names.
    fn across_keys_error(&self, bad: Invalid) -> ConfigError {
        self.layered.invalid(bad.key, Some(format!("{:?}", bad.value)), bad.rule)
    }
}

/// A table that is no section of the configuration file.
fn reject_unknown_tables(root: &Layered) -> Result<(), ConfigError> {
    match root.table().keys().next() {
        None => Ok(()),
        Some(table) => Err(ConfigError::UnknownKey {
            key: table.clone(),
            source_name: root.source(table),
            table: "top level".to_owned(),
            known: sections().iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Splits `[storage.<backend>]` tables off `[storage]`; names must be linked backends.
fn take_backend_tables(storage: &mut Layered) -> Result<BTreeMap<String, toml::Table>, ConfigError> {
    let names: Vec<String> = storage.table().iter().filter(|(_, v)| v.is_table()).map(|(k, _)| k.clone()).collect();
    let mut out = BTreeMap::new();
    for name in names {
        if registry::find(&name).is_err() {
            return Err(ConfigError::UnknownBackend { name, linked: registry::backend_names().join(", ") });
        }
        let table = storage.take(&name)?.table().clone();
        out.insert(name, table);
    }
    Ok(out)
}

/// `memory` when linked; otherwise the only linked backend (a slim build needs no setting).
fn default_backend() -> String {
    let names = registry::backend_names();
    match names.as_slice() {
        [only] if !names.contains(&"memory") => (*only).to_owned(),
        _ => "memory".to_owned(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "externalsource-controller".to_owned())
}

impl Config {
    /// The rules across keys (a key's own rule is its type's): the first one broken, with the
    /// key it names.
    pub fn check(&self) -> Result<(), Invalid> {
        let (server, ops, c) = (&self.server, &self.ops, &self.controller);
        if server.enabled && ops.port == server.port && ops.bind_address == server.bind_address {
            return Err(Invalid::new(OpsConfig::port, ops.port, format!("must differ from {}", ServerConfig::port)));
        }
        self.check_receiver()?;
        if c.namespace_concurrency > c.concurrency {
            let rule = format!("must be an integer from 1 to {}", c.concurrency);
            return Err(Invalid::new(ControllerConfig::namespace_concurrency, c.namespace_concurrency, rule));
        }
        // client-go's rule: a leader gives up renewing before its lease can lapse, and tries
        // more than once within that deadline.
        if c.renew_deadline >= c.lease_duration {
            let rule = format!(
                "must be shorter than {} ({})",
                ControllerConfig::lease_duration,
                format_duration(c.lease_duration)
            );
            return Err(Invalid::new(ControllerConfig::renew_deadline, format_duration(c.renew_deadline), rule));
        }
        if c.retry_period.mul_f64(1.2) >= c.renew_deadline {
            let rule = format!(
                "must be shorter than {} ({}) divided by 1.2, so a renewal is retried in time",
                ControllerConfig::renew_deadline,
                format_duration(c.renew_deadline)
            );
            return Err(Invalid::new(ControllerConfig::retry_period, format_duration(c.retry_period), rule));
        }
        self.check_limits()
    }

    /// The receiver's port is its own: neither the artifact server's nor the ops port.
    fn check_receiver(&self) -> Result<(), Invalid> {
        let (r, server, ops) = (&self.receiver, &self.server, &self.ops);
        if !r.enabled {
            return Ok(());
        }
        if server.enabled && r.port == server.port && r.bind_address == server.bind_address {
            let rule = format!("must differ from {}", ServerConfig::port);
            return Err(Invalid::new(ReceiverConfig::port, r.port, rule));
        }
        if r.port == ops.port && r.bind_address == ops.bind_address {
            return Err(Invalid::new(ReceiverConfig::port, r.port, format!("must differ from {}", OpsConfig::port)));
        }
        Ok(())
    }

    /// [`check`](Self::check)'s rules on fetches, transforms and hooks.
    fn check_limits(&self) -> Result<(), Invalid> {
        let (fetch, t, h) = (&self.fetch, &self.transform, &self.hooks);
        // One body of the largest size and its packaged copy must fit.
        if fetch.memory_budget < fetch.max_size.saturating_mul(2) {
            let rule = format!(
                "must be at least twice {} ({}): a body of that size and its packaged copy",
                FetchConfig::max_size,
                format_size(fetch.max_size)
            );
            return Err(Invalid::new(FetchConfig::memory_budget, format_size(fetch.memory_budget), rule));
        }
        if fetch.timeout > fetch.max_timeout {
            let rule = format!("must not exceed {} ({})", FetchConfig::max_timeout, format_duration(fetch.max_timeout));
            return Err(Invalid::new(FetchConfig::timeout, format_duration(fetch.timeout), rule));
        }
        if t.concurrency > usize::from(self.controller.concurrency) {
            let rule = format!("must be an integer from 1 to {}", self.controller.concurrency);
            return Err(Invalid::new(TransformConfig::concurrency, t.concurrency, rule));
        }
        if t.max_cpu > t.timeout {
            let rule = format!("must not exceed {} ({})", TransformConfig::timeout, format_duration(t.timeout));
            return Err(Invalid::new(TransformConfig::max_cpu, format_duration(t.max_cpu), rule));
        }
        if h.namespace_concurrency > h.concurrency {
            let rule = format!("must be an integer from 1 to {}", h.concurrency);
            return Err(Invalid::new(HooksConfig::namespace_concurrency, h.namespace_concurrency, rule));
        }
        if h.default_timeout > h.max_timeout {
            let rule = format!("must not exceed {} ({})", HooksConfig::max_timeout, format_duration(h.max_timeout));
            return Err(Invalid::new(HooksConfig::default_timeout, format_duration(h.default_timeout), rule));
        }
        Ok(())
    }

    /// The most memory this configuration may use at once, term by term (the key that sets each
    /// term, and its bytes). `serve` only holds the store.
    pub fn memory_need(&self, controller: bool) -> Vec<(String, u64)> {
        let mut terms = vec![("baseline".to_owned(), BASELINE_MEMORY)];
        terms.extend(self.storage.resident_memory().filter(|(_, bytes)| *bytes > 0));
        if controller {
            terms.push((FetchConfig::memory_budget.to_owned(), self.fetch.memory_budget));
            let t = &self.transform;
            terms.push((
                format!(
                    "{} × {} ({} × {})",
                    TransformConfig::concurrency,
                    TransformConfig::max_memory,
                    t.concurrency,
                    format_size(t.max_memory)
                ),
                (t.concurrency as u64).saturating_mul(t.max_memory),
            ));
        }
        terms
    }

    /// The effective configuration as TOML, with secrets redacted (for `--print-config`).
    pub fn to_toml(&self) -> String {
        let section = StorageConfig { backend: self.backend.to_owned(), namespace_quota: self.namespace_quota };
        let mut storage = section.entries();
        storage.push((self.backend, toml::Value::Table(self.storage.redacted())));
        let printed = Ordered(vec![
            (ServerConfig::NAME, Ordered(self.server.entries())),
            (OpsConfig::NAME, Ordered(self.ops.entries())),
            (StorageConfig::NAME, Ordered(storage)),
            (ControllerConfig::NAME, Ordered(self.controller.entries())),
            (FetchConfig::NAME, Ordered(self.fetch.entries())),
            (TransformConfig::NAME, Ordered(self.transform.entries())),
            (HooksConfig::NAME, Ordered(self.hooks.entries())),
            (LogConfig::NAME, Ordered(self.log.entries())),
            (ReceiverConfig::NAME, Ordered(self.receiver.entries())),
        ]);
        toml::to_string(&printed).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// A table whose keys are printed in the order given (a [`toml::Table`] would sort them).
struct Ordered<V>(Vec<(&'static str, V)>);

impl<V: serde::Serialize> serde::Serialize for Ordered<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}
