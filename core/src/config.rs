//! Configuration: built-in defaults < TOML file < environment < flags.
//!
//! All sources are merged into one TOML table first, remembering where each key came from, and
//! the merged table is then validated in one place. So an error always names the key, the value,
//! where the value came from, and the rule it broke, whatever the source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::registry::{self, BackendContext, BackendSettings, Env};
use crate::units::{self, format_duration, format_size};

/// Default location of the configuration file, read when present and no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/externalsource/config.toml";

/// Default name of the artifact Service (the seed's).
pub const DEFAULT_SERVICE_NAME: &str = "flux-externalsource-controller-artifacts";

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

/// The artifact server (seed step 1).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub enabled: bool,
    pub bind_address: String,
    pub port: u16,
    pub service_name: String,
    pub service_namespace: String,
    /// Replaces the in-cluster base URL, for out-of-cluster runs and other layouts.
    pub advertise_url: Option<String>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the listeners keep accepting while readiness is already false.
    pub shutdown_delay: Duration,
    /// Open connections of the artifact listener at most; beyond it new ones get a 503.
    pub max_connections: u32,
    /// Bytes per second below which a client that holds up a download is cut; 0 disables.
    pub min_send_rate: u64,
}

impl ServerConfig {
    /// The base URL consumers download from, or `None` when the server is disabled.
    pub fn base_url(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        Some(match &self.advertise_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}.{}.svc.cluster.local:{}", self.service_name, self.service_namespace, self.port),
        })
    }
}

/// Health, readiness and metrics endpoints, on their own port so a NetworkPolicy can keep the
/// artifact port to Flux and the metrics port to Prometheus.
#[derive(Debug, Clone, PartialEq)]
pub struct OpsConfig {
    pub bind_address: String,
    pub port: u16,
    /// Duration histograms per source (Flux's way), or per namespace: the page is about 3.7 KiB
    /// per source with them and 0.6 KiB without.
    pub per_source_histograms: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    pub concurrency: u16,
    pub min_interval: Duration,
    pub retention: u16,
    /// Failed attempts at deleting a source's stored artifacts before its finalizer is released
    /// anyway (with a Warning Event naming what was left behind), so a broken store cannot hang
    /// a namespace deletion.
    pub finalizer_attempts: u32,
    /// Reconciles of one namespace at once, below `concurrency` so one tenant cannot hold every
    /// slot.
    pub namespace_concurrency: u16,
    pub leader_election: bool,
    pub lease_name: String,
    pub pod_name: String,
    /// Only ExternalSources matching this label selector are reconciled (sharding, like Flux's
    /// `--watch-label-selector`); `None`: all.
    pub watch_label_selector: Option<String>,
    /// notification-controller's event address, like Flux controllers' `--events-addr`
    /// (`http://notification-controller.flux-system.svc.cluster.local./`); `None`: only
    /// Kubernetes Events are recorded.
    pub events_addr: Option<String>,
    /// How long a lease nobody renews stays held (client-go's `LeaseDuration`).
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it steps down; below `lease_duration`
    /// so it has stopped before anyone may take the lease.
    pub renew_deadline: Duration,
    /// Pause between acquire or renew attempts.
    pub retry_period: Duration,
    /// With a store that is not shared: how long a new leader (or a restarted single replica)
    /// waits for its first pass to re-store every published artifact before it turns Ready
    /// anyway; until then the missing artifacts answer 503 with `Retry-After`.
    pub restore_timeout: Duration,
    /// The memory the process may use; `None`: the cgroup limit, read at start-up.
    pub memory_limit: Option<u64>,
    /// What start-up does when the configuration may need more than the limit.
    pub memory_check: MemoryCheck,
}

/// `controller.memory_check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryCheck {
    /// Refuse to start: the kernel would kill the pod, store and all, under load.
    Refuse,
    /// Log a warning and start.
    Warn,
}

/// What the process may resident-use besides the store, fetches and transforms (runtime, caches
/// of watched objects, connection buffers), counted in [`Config::memory_need`].
pub const BASELINE_MEMORY: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct FetchConfig {
    pub timeout: Duration,
    /// The longest `spec.timeout` a source may ask for.
    pub max_timeout: Duration,
    pub max_size: u64,
    pub user_agent: String,
    /// Networks fetches never connect to (on any redirect hop).
    pub deny_cidrs: Vec<IpNet>,
    /// When set, the only networks fetches connect to (the deny list still applies).
    pub allow_cidrs: Option<Vec<IpNet>>,
    /// Bytes of fetched bodies and their copies in memory at once (see `controller::memory`).
    pub memory_budget: u64,
}

/// Limits of each `spec.transform` run (see `controller::transform::sandbox`).
#[derive(Debug, Clone, PartialEq)]
pub struct TransformConfig {
    /// CPU time of one run, in whole seconds (rounded up).
    pub max_cpu: Duration,
    /// Address space of the worker process.
    pub max_memory: u64,
    /// Wall-clock time of one run.
    pub timeout: Duration,
    /// Nesting of arrays and objects in each output value.
    pub max_depth: u32,
    /// Runs at once, across all sources.
    pub concurrency: usize,
}

/// `[hooks]`: the executor that runs `spec.hooks` (see `controller::hooks`).
#[derive(Debug, Clone, PartialEq)]
pub struct HooksConfig {
    /// The executor's Unix socket; `None`: hooks are off and a source with hooks is not Ready.
    pub socket: Option<PathBuf>,
    /// The executor's whitelist file (read by `hook-executor` only).
    pub whitelist: PathBuf,
    /// Timeout of a hook that sets none.
    pub default_timeout: Duration,
    /// The longest timeout a hook may ask for.
    pub max_timeout: Duration,
    /// Hooks the executor runs at once.
    pub concurrency: usize,
    /// Hooks of one namespace the executor runs at once (at most `concurrency`).
    pub namespace_concurrency: usize,
    /// Where the executor makes each run's private directory.
    pub run_dir: PathBuf,
    /// CPU time of each process of a hook (`RLIMIT_CPU`).
    pub max_cpu: Duration,
    /// Address space of each process of a hook (`RLIMIT_AS`), bytes.
    pub max_memory: u64,
    /// Open files of each process of a hook (`RLIMIT_NOFILE`).
    pub max_open_files: u64,
    /// Processes and threads of the executor's user while a hook runs (`RLIMIT_NPROC`, counted
    /// per user ID by the kernel, not per hook).
    pub max_processes: u64,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
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
}

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

/// Environment variables the core reads, with the key each one sets. Backends read their own.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("ARTIFACT_SERVER_ENABLED", "server.enabled"),
    ("ARTIFACT_SERVER_PORT", "server.port"),
    ("ARTIFACT_SERVER_ADVERTISE_URL", "server.advertise_url"),
    ("SERVICE_NAME", "server.service_name"),
    ("POD_NAMESPACE", "server.service_namespace"),
    ("OPS_PORT", "ops.port"),
    ("STORAGE_BACKEND", "storage.backend"),
    ("CONTROLLER_CONCURRENCY", "controller.concurrency"),
    ("MIN_INTERVAL", "controller.min_interval"),
    ("LEADER_ELECTION", "controller.leader_election"),
    ("POD_NAME", "controller.pod_name"),
    ("LEASE_NAME", "controller.lease_name"),
    ("WATCH_LABEL_SELECTOR", "controller.watch_label_selector"),
    ("EVENTS_ADDR", "controller.events_addr"),
    ("HTTP_TIMEOUT", "fetch.timeout"),
    ("HTTP_USER_AGENT", "fetch.user_agent"),
    ("FETCH_MAX_SIZE", "fetch.max_size"),
    ("HOOK_EXECUTOR_SOCKET", "hooks.socket"),
    ("HOOK_WHITELIST", "hooks.whitelist"),
    ("LOG_FORMAT", "log.format"),
    ("LOG_LEVEL", "log.level"),
];

/// Builds a [`Config`] from layered sources.
#[derive(Debug, Default)]
pub struct ConfigLoader {
    table: toml::Table,
    origin: BTreeMap<String, String>,
    env: Env,
}

impl ConfigLoader {
    pub fn new(env: Env) -> Self {
        Self { table: toml::Table::new(), origin: BTreeMap::new(), env }
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
        for (table, value) in parsed {
            match value {
                toml::Value::Table(entries) => {
                    for (k, v) in entries {
                        self.set_value(&format!("{table}.{k}"), v, &source);
                    }
                }
                other => {
                    return Err(ConfigError::Invalid {
                        key: table,
                        value: other.to_string(),
                        rule: format!("top-level keys must be tables ({source})"),
                    });
                }
            }
        }
        Ok(self)
    }

    /// Applies the environment variables of [`ENV_KEYS`].
    pub fn environment(mut self) -> Self {
        let env = self.env.clone();
        for (var, key) in ENV_KEYS {
            if let Some(value) = env.get(var) {
                self.set_str(key, value, &format!("env {var}"));
            }
        }
        self
    }

    /// Sets a key from a string (flags and environment), typed later by validation.
    pub fn set_str(&mut self, key: &str, value: &str, source: &str) {
        self.set_value(key, toml::Value::String(value.to_owned()), source);
    }

    fn set_value(&mut self, key: &str, value: toml::Value, source: &str) {
        let (table, field) = key.split_once('.').unwrap_or((key, ""));
        let entry = self.table.entry(table).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = entry {
            t.insert(field.to_owned(), value);
        }
        self.origin.insert(key.to_owned(), source.to_owned());
    }

    /// Validates everything and parses the selected backend's settings.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut r = Reader { table: self.table, origin: self.origin, read: Default::default() };
        let backend_tables = r.take_backend_tables()?;

        let server = ServerConfig {
            enabled: r.bool("server.enabled", true)?,
            bind_address: r.string("server.bind_address", "0.0.0.0")?,
            port: r.port("server.port", 8080)?,
            service_name: r.string("server.service_name", DEFAULT_SERVICE_NAME)?,
            service_namespace: r.string("server.service_namespace", "flux-system")?,
            advertise_url: r.optional_url("server.advertise_url")?,
            header_read_timeout: r.duration("server.header_read_timeout", "10s", Duration::from_millis(100))?,
            idle_timeout: r.duration("server.idle_timeout", "60s", Duration::from_millis(100))?,
            shutdown_grace: r.duration("server.shutdown_grace", "20s", Duration::ZERO)?,
            shutdown_delay: r.duration("server.shutdown_delay", "5s", Duration::ZERO)?,
            max_connections: r.int_in("server.max_connections", 4096, 1, 1_000_000)? as u32,
            min_send_rate: r.size("server.min_send_rate", "1KiB", 0)?,
        };
        r.dns_label("server.service_name", &server.service_name)?;
        r.dns_label("server.service_namespace", &server.service_namespace)?;
        let ops = OpsConfig {
            bind_address: r.string("ops.bind_address", "0.0.0.0")?,
            port: r.port("ops.port", 8081)?,
            per_source_histograms: r.bool("ops.per_source_histograms", true)?,
        };
        if server.enabled && ops.port == server.port && ops.bind_address == server.bind_address {
            return Err(r.invalid("ops.port", &ops.port.to_string(), "must differ from server.port"));
        }
        let backend_name = r.string("storage.backend", &default_backend())?;
        let descriptor = registry::find(&backend_name)?;
        let empty = toml::Table::new();
        let table = backend_tables.get(descriptor.name).unwrap_or(&empty);
        let storage = (descriptor.parse)(&BackendContext { table, env: &self.env })?;
        let namespace_quota = r.optional_size("storage.namespace_quota")?;

        let default_pod = hostname();
        let concurrency = r.int_in("controller.concurrency", 4, 1, 1024)?;
        let controller = ControllerConfig {
            concurrency: concurrency as u16,
            // Three quarters of the slots by default: a quarter stays free for other tenants.
            namespace_concurrency: r.int_in(
                "controller.namespace_concurrency",
                (concurrency * 3 / 4).max(1),
                1,
                concurrency,
            )? as u16,
            min_interval: r.duration("controller.min_interval", "1m", Duration::from_secs(1))?,
            retention: r.int_in("controller.retention", 2, 1, 100)? as u16,
            finalizer_attempts: r.int_in("controller.finalizer_attempts", 5, 1, 1000)? as u32,
            leader_election: r.bool("controller.leader_election", true)?,
            lease_name: r.string("controller.lease_name", "externalsource-controller-leader")?,
            pod_name: r.string("controller.pod_name", &default_pod)?,
            watch_label_selector: match r.raw("controller.watch_label_selector") {
                None => None,
                Some(_) => Some(r.label_selector("controller.watch_label_selector")?),
            },
            events_addr: r.optional_url("controller.events_addr")?,
            lease_duration: r.duration("controller.lease_duration", "15s", Duration::from_secs(1))?,
            renew_deadline: r.duration("controller.renew_deadline", "10s", Duration::from_millis(500))?,
            retry_period: r.duration("controller.retry_period", "2s", Duration::from_millis(100))?,
            restore_timeout: r.duration("controller.restore_timeout", "2m", Duration::ZERO)?,
            memory_limit: r.optional_size("controller.memory_limit")?,
            memory_check: match r.string("controller.memory_check", "refuse")?.as_str() {
                "refuse" => MemoryCheck::Refuse,
                "warn" => MemoryCheck::Warn,
                other => return Err(r.invalid("controller.memory_check", other, "must be \"refuse\" or \"warn\"")),
            },
        };
        r.dns_label("controller.lease_name", &controller.lease_name)?;
        // client-go's rule: a leader gives up renewing before its lease can lapse, and tries
        // more than once within that deadline.
        if controller.renew_deadline >= controller.lease_duration {
            let text = format_duration(controller.renew_deadline);
            let rule = format!(
                "must be shorter than controller.lease_duration ({})",
                format_duration(controller.lease_duration)
            );
            return Err(r.invalid("controller.renew_deadline", &text, &rule));
        }
        if controller.retry_period.mul_f64(1.2) >= controller.renew_deadline {
            let text = format_duration(controller.retry_period);
            let rule = format!(
                "must be shorter than controller.renew_deadline ({}) divided by 1.2, so a renewal is retried in time",
                format_duration(controller.renew_deadline)
            );
            return Err(r.invalid("controller.retry_period", &text, &rule));
        }
        let max_size = r.size("fetch.max_size", "64MiB", 1)?;
        // One body of the largest size and its packaged copy must fit.
        let one_fetch = max_size.saturating_mul(2);
        let fetch = FetchConfig {
            timeout: r.duration("fetch.timeout", "30s", Duration::from_secs(1))?,
            max_timeout: r.duration("fetch.max_timeout", "10m", Duration::from_secs(1))?,
            max_size,
            user_agent: r
                .string("fetch.user_agent", concat!("externalsource-controller/", env!("CARGO_PKG_VERSION")))?,
            deny_cidrs: r.cidrs("fetch.deny_cidrs")?.unwrap_or_else(default_deny_cidrs),
            allow_cidrs: r.cidrs("fetch.allow_cidrs")?,
            memory_budget: r.size("fetch.memory_budget", &format_size(one_fetch.max(DEFAULT_MEMORY_BUDGET)), 1)?,
        };
        if fetch.memory_budget < one_fetch {
            let text = format_size(fetch.memory_budget);
            let rule = format!(
                "must be at least twice fetch.max_size ({}): a body of that size and its packaged copy",
                format_size(max_size)
            );
            return Err(r.invalid("fetch.memory_budget", &text, &rule));
        }
        if fetch.timeout > fetch.max_timeout {
            let text = format_duration(fetch.timeout);
            let rule = format!("must not exceed fetch.max_timeout ({})", format_duration(fetch.max_timeout));
            return Err(r.invalid("fetch.timeout", &text, &rule));
        }
        let transform = TransformConfig {
            max_cpu: r.duration("transform.max_cpu", "2s", Duration::from_secs(1))?,
            max_memory: r.size("transform.max_memory", "256MiB", 64 << 20)?,
            timeout: r.duration("transform.timeout", "10s", Duration::from_secs(1))?,
            max_depth: r.int_in("transform.max_depth", 512, 1, 100_000)? as u32,
            // Half the reconcile slots: filters are CPU-bound and the machine has other work.
            concurrency: r.int_in("transform.concurrency", (concurrency / 2).max(1), 1, concurrency)? as usize,
        };
        if transform.max_cpu > transform.timeout {
            let text = format_duration(transform.max_cpu);
            let rule = format!("must not exceed transform.timeout ({})", format_duration(transform.timeout));
            return Err(r.invalid("transform.max_cpu", &text, &rule));
        }
        let hooks = HooksConfig {
            socket: match r.raw("hooks.socket") {
                None => None,
                Some(_) => Some(r.absolute_path("hooks.socket", "")?),
            },
            whitelist: r.absolute_path("hooks.whitelist", DEFAULT_HOOK_WHITELIST)?,
            default_timeout: r.duration("hooks.default_timeout", "30s", Duration::from_secs(1))?,
            max_timeout: r.duration("hooks.max_timeout", "5m", Duration::from_secs(1))?,
            concurrency: r.int_in("hooks.concurrency", 2, 1, 64)? as usize,
            namespace_concurrency: 0,
            run_dir: r.absolute_path("hooks.run_dir", DEFAULT_HOOK_RUN_DIR)?,
            max_cpu: r.duration("hooks.max_cpu", "30s", Duration::from_secs(1))?,
            max_memory: r.size("hooks.max_memory", "512MiB", 16 << 20)?,
            max_open_files: r.int_in("hooks.max_open_files", 64, 8, 65_536)? as u64,
            max_processes: r.int_in("hooks.max_processes", 256, 1, 4_194_304)? as u64,
        };
        // Half the executor's slots by default: one namespace leaves the other half to the rest.
        let hooks = HooksConfig {
            namespace_concurrency: r.int_in(
                "hooks.namespace_concurrency",
                (hooks.concurrency as i64 / 2).max(1),
                1,
                hooks.concurrency as i64,
            )? as usize,
            ..hooks
        };
        if hooks.default_timeout > hooks.max_timeout {
            let text = format_duration(hooks.default_timeout);
            let rule = format!("must not exceed hooks.max_timeout ({})", format_duration(hooks.max_timeout));
            return Err(r.invalid("hooks.default_timeout", &text, &rule));
        }
        let log = LogConfig {
            format: match r.string("log.format", "text")?.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(r.invalid("log.format", other, "must be \"text\" or \"json\""));
                }
            },
            level: r.string("log.level", "info")?,
        };
        // The keys just read are the known ones: the reader is the only list of them.
        r.reject_unknown()?;
        Ok(Config {
            server,
            ops,
            backend: descriptor.name,
            storage,
            namespace_quota,
            controller,
            fetch,
            transform,
            hooks,
            log,
        })
    }
}

/// What is wrong with a label selector, if anything (the API server's grammar, checked at
/// start-up so a typo is a configuration error rather than a watch that fails later).
fn label_selector_problem(text: &str) -> Option<String> {
    let label_key = |k: &str| {
        let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
        let prefix_ok = prefix.len() <= 253
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'));
        name_ok && prefix_ok && (k.matches('/').count() <= 1) && (!k.contains('/') || !prefix.is_empty())
    };
    let label_value = |v: &str| {
        v.is_empty()
            || (v.len() <= 63
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
    };
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    for part in parts.iter().map(|p| p.trim()) {
        if part.is_empty() {
            return Some("an empty requirement".into());
        }
        let words: Vec<&str> = part.split_whitespace().collect();
        let bad_key = |k: &str| Some(format!("{k:?} is not a valid label key"));
        let bad_value = |v: &str| Some(format!("{v:?} is not a valid label value"));
        if let Some(op) = words.get(1).filter(|w| **w == "in" || **w == "notin") {
            // After the key and the operator words (a key may itself contain "in").
            let set = part[words[0].len()..].trim_start()[op.len()..].trim();
            let Some(inner) = set.strip_prefix('(').and_then(|s| s.strip_suffix(')')) else {
                return Some(format!("`{op}` needs a parenthesised list in {part:?}"));
            };
            if !label_key(words[0]) {
                return bad_key(words[0]);
            }
            if let Some(v) = inner.split(',').map(str::trim).find(|v| !label_value(v)) {
                return bad_value(v);
            }
            continue;
        }
        let (k, v) = if let Some((k, v)) = part.split_once("!=") {
            (k, Some(v))
        } else if let Some((k, v)) = part.split_once("==") {
            (k, Some(v))
        } else if let Some((k, v)) = part.split_once('=') {
            (k, Some(v))
        } else {
            (part.strip_prefix('!').unwrap_or(part), None)
        };
        if !label_key(k.trim()) {
            return bad_key(k.trim());
        }
        if let Some(v) = v.map(str::trim).filter(|v| !label_value(v)) {
            return bad_value(v);
        }
    }
    None
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

/// Typed access to the merged table; every accessor names key, value, origin and rule on error.
struct Reader {
    table: toml::Table,
    origin: BTreeMap<String, String>,
    /// Every key asked for, present or not: what `build` knows, for unknown-key errors.
    read: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl Reader {
    fn source(&self, key: &str) -> String {
        self.origin.get(key).cloned().unwrap_or_else(|| "default".to_owned())
    }

    fn invalid(&self, key: &str, value: &str, rule: &str) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            value: format!("{value:?} (from {})", self.source(key)),
            rule: rule.to_owned(),
        }
    }

    fn raw(&self, key: &str) -> Option<&toml::Value> {
        self.read.borrow_mut().insert(key.to_owned());
        let (table, field) = key.split_once('.')?;
        self.table.get(table)?.as_table()?.get(field)
    }

    /// Splits `[storage.<backend>]` tables off `[storage]`; names must be linked backends.
    fn take_backend_tables(&mut self) -> Result<BTreeMap<String, toml::Table>, ConfigError> {
        let mut out = BTreeMap::new();
        if let Some(toml::Value::Table(storage)) = self.table.get_mut("storage") {
            let names: Vec<String> = storage.iter().filter(|(_, v)| v.is_table()).map(|(k, _)| k.clone()).collect();
            for name in names {
                if let Some(toml::Value::Table(t)) = storage.remove(&name) {
                    if registry::find(&name).is_err() {
                        return Err(ConfigError::UnknownBackend { name, linked: registry::backend_names().join(", ") });
                    }
                    out.insert(name, t);
                }
            }
        }
        Ok(out)
    }

    /// Refuses a key no accessor asked for (call after reading everything).
    fn reject_unknown(&self) -> Result<(), ConfigError> {
        let read = self.read.borrow();
        let known_in = |table: &str| -> Vec<&str> {
            read.iter().filter_map(|k| k.strip_prefix(table)?.strip_prefix('.')).collect()
        };
        for (table, value) in &self.table {
            let known = known_in(table);
            let Some(entries) = value.as_table().filter(|_| !known.is_empty()) else {
                let mut tables: Vec<&str> = read.iter().filter_map(|k| Some(k.split_once('.')?.0)).collect();
                tables.dedup();
                return Err(ConfigError::UnknownKey {
                    key: table.clone(),
                    source_name: self.source(table),
                    table: "top level".to_owned(),
                    known: tables.join(", "),
                });
            };
            if let Some(field) = entries.keys().find(|f| !known.contains(&f.as_str())) {
                let key = format!("{table}.{field}");
                return Err(ConfigError::UnknownKey {
                    source_name: self.source(&key),
                    key,
                    table: table.clone(),
                    known: known.join(", "),
                });
            }
        }
        Ok(())
    }

    fn string(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.raw(key) {
            None => Ok(default.to_owned()),
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            Some(v) => Err(self.invalid(key, &v.to_string(), "must be a non-empty string")),
        }
    }

    /// A Kubernetes label selector: comma-separated `key`, `!key`, `key=value`, `key==value`,
    /// `key!=value`, `key in (a,b)` or `key notin (a,b)` requirements.
    fn label_selector(&self, key: &str) -> Result<String, ConfigError> {
        let text = self.string(key, "")?;
        match label_selector_problem(&text) {
            None => Ok(text),
            Some(problem) => Err(self.invalid(key, &text, &format!("is not a label selector: {problem}"))),
        }
    }

    /// An absolute path (a relative one would depend on the working directory).
    fn absolute_path(&self, key: &str, default: &str) -> Result<PathBuf, ConfigError> {
        let text = self.string(key, default)?;
        let path = PathBuf::from(&text);
        if !path.is_absolute() {
            return Err(self.invalid(key, &text, "must be an absolute path"));
        }
        Ok(path)
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(toml::Value::String(s)) => {
                units::parse_bool(s).ok_or_else(|| self.invalid(key, s, "must be true or false"))
            }
            Some(v) => Err(self.invalid(key, &v.to_string(), "must be true or false")),
        }
    }

    fn int_in(&self, key: &str, default: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
        let rule = format!("must be an integer from {min} to {max}");
        let value = match self.raw(key) {
            None => return Ok(default),
            Some(toml::Value::Integer(i)) => *i,
            Some(toml::Value::String(s)) => s.trim().parse().map_err(|_| self.invalid(key, s, &rule))?,
            Some(v) => return Err(self.invalid(key, &v.to_string(), &rule)),
        };
        if (min..=max).contains(&value) { Ok(value) } else { Err(self.invalid(key, &value.to_string(), &rule)) }
    }

    fn port(&self, key: &str, default: u16) -> Result<u16, ConfigError> {
        Ok(self.int_in(key, default.into(), 1, 65535)? as u16)
    }

    fn duration(&self, key: &str, default: &str, min: Duration) -> Result<Duration, ConfigError> {
        let text = self.string(key, default)?;
        let value = units::parse_duration(&text).map_err(|e| self.invalid(key, &text, &e.to_string()))?;
        if value < min {
            return Err(self.invalid(key, &text, &format!("must be at least {}", format_duration(min))));
        }
        Ok(value)
    }

    /// A list of CIDRs: a TOML array of strings, or one comma-separated string (environment).
    /// A bare address is a single-address network.
    fn cidrs(&self, key: &str) -> Result<Option<Vec<IpNet>>, ConfigError> {
        let rule = "must be a list of CIDRs such as [\"10.0.0.0/8\", \"fd00::/8\"]";
        let items: Vec<String> = match self.raw(key) {
            None => return Ok(None),
            Some(toml::Value::String(s)) => {
                s.split(',').map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()).collect()
            }
            Some(toml::Value::Array(values)) => values
                .iter()
                .map(|v| v.as_str().map(|s| s.trim().to_owned()).ok_or_else(|| self.invalid(key, &v.to_string(), rule)))
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(self.invalid(key, &v.to_string(), rule)),
        };
        items
            .iter()
            .map(|item| parse_cidr(item).ok_or_else(|| self.invalid(key, item, rule)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A size that has no default: `None` when the key is not set.
    fn optional_size(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        if self.raw(key).is_none() {
            return Ok(None);
        }
        self.size(key, "", 1).map(Some)
    }

    fn size(&self, key: &str, default: &str, min: u64) -> Result<u64, ConfigError> {
        let text = match self.raw(key) {
            Some(toml::Value::Integer(i)) => i.to_string(),
            _ => self.string(key, default)?,
        };
        let value = units::parse_size(&text).map_err(|e| self.invalid(key, &text, &e.to_string()))?;
        if value < min {
            return Err(self.invalid(key, &text, &format!("must be at least {min} bytes")));
        }
        Ok(value)
    }

    fn optional_url(&self, key: &str) -> Result<Option<String>, ConfigError> {
        if self.raw(key).is_none() {
            return Ok(None);
        }
        let url = self.string(key, "")?;
        units::check_http_url(&url).map_err(|rule| self.invalid(key, &url, rule))?;
        Ok(Some(url))
    }

    fn dns_label(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        let ok = value.len() <= 63
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !value.starts_with('-')
            && !value.ends_with('-');
        if ok {
            Ok(())
        } else {
            Err(self.invalid(key, value, "must be a DNS label (lowercase letters, digits and '-', at most 63)"))
        }
    }
}

impl Config {
    /// The effective configuration as TOML, with secrets redacted (for `--print-config`).
    /// The most memory this configuration may use at once, term by term (the key that sets each
    /// term, and its bytes). `serve` only holds the store.
    pub fn memory_need(&self, controller: bool) -> Vec<(String, u64)> {
        let mut terms = vec![("baseline".to_owned(), BASELINE_MEMORY)];
        terms.extend(self.storage.resident_memory().filter(|(_, bytes)| *bytes > 0));
        if controller {
            terms.push(("fetch.memory_budget".to_owned(), self.fetch.memory_budget));
            let t = &self.transform;
            terms.push((
                format!(
                    "transform.concurrency × transform.max_memory ({} × {})",
                    t.concurrency,
                    format_size(t.max_memory)
                ),
                (t.concurrency as u64).saturating_mul(t.max_memory),
            ));
        }
        terms
    }

    pub fn to_toml(&self) -> String {
        use toml::Value as V;
        let s = |x: &str| V::String(x.to_owned());
        let mut server = toml::Table::new();
        server.insert("enabled".into(), V::Boolean(self.server.enabled));
        server.insert("bind_address".into(), s(&self.server.bind_address));
        server.insert("port".into(), V::Integer(self.server.port.into()));
        server.insert("service_name".into(), s(&self.server.service_name));
        server.insert("service_namespace".into(), s(&self.server.service_namespace));
        if let Some(url) = &self.server.advertise_url {
            server.insert("advertise_url".into(), s(url));
        }
        server.insert("header_read_timeout".into(), s(&format_duration(self.server.header_read_timeout)));
        server.insert("idle_timeout".into(), s(&format_duration(self.server.idle_timeout)));
        server.insert("shutdown_grace".into(), s(&format_duration(self.server.shutdown_grace)));
        server.insert("shutdown_delay".into(), s(&format_duration(self.server.shutdown_delay)));
        server.insert("max_connections".into(), V::Integer(self.server.max_connections.into()));
        server.insert("min_send_rate".into(), s(&format_size(self.server.min_send_rate)));
        let mut ops = toml::Table::new();
        ops.insert("bind_address".into(), s(&self.ops.bind_address));
        ops.insert("port".into(), V::Integer(self.ops.port.into()));
        ops.insert("per_source_histograms".into(), V::Boolean(self.ops.per_source_histograms));
        let mut storage = toml::Table::new();
        storage.insert("backend".into(), s(self.backend));
        if let Some(quota) = self.namespace_quota {
            storage.insert("namespace_quota".into(), s(&format_size(quota)));
        }
        storage.insert(self.backend.into(), V::Table(self.storage.redacted()));
        let c = &self.controller;
        let mut controller = toml::Table::new();
        controller.insert("concurrency".into(), V::Integer(c.concurrency.into()));
        controller.insert("namespace_concurrency".into(), V::Integer(c.namespace_concurrency.into()));
        controller.insert("min_interval".into(), s(&format_duration(c.min_interval)));
        controller.insert("retention".into(), V::Integer(c.retention.into()));
        controller.insert("finalizer_attempts".into(), V::Integer(c.finalizer_attempts.into()));
        controller.insert("leader_election".into(), V::Boolean(c.leader_election));
        controller.insert("lease_name".into(), s(&c.lease_name));
        controller.insert("pod_name".into(), s(&c.pod_name));
        if let Some(selector) = &c.watch_label_selector {
            controller.insert("watch_label_selector".into(), s(selector));
        }
        if let Some(address) = &c.events_addr {
            controller.insert("events_addr".into(), s(address));
        }
        controller.insert("lease_duration".into(), s(&format_duration(c.lease_duration)));
        controller.insert("renew_deadline".into(), s(&format_duration(c.renew_deadline)));
        controller.insert("retry_period".into(), s(&format_duration(c.retry_period)));
        controller.insert("restore_timeout".into(), s(&format_duration(c.restore_timeout)));
        if let Some(limit) = c.memory_limit {
            controller.insert("memory_limit".into(), s(&format_size(limit)));
        }
        let check = if c.memory_check == MemoryCheck::Refuse { "refuse" } else { "warn" };
        controller.insert("memory_check".into(), s(check));
        let mut fetch = toml::Table::new();
        fetch.insert("timeout".into(), s(&format_duration(self.fetch.timeout)));
        fetch.insert("max_timeout".into(), s(&format_duration(self.fetch.max_timeout)));
        fetch.insert("max_size".into(), s(&format_size(self.fetch.max_size)));
        fetch.insert("user_agent".into(), s(&self.fetch.user_agent));
        fetch.insert("memory_budget".into(), s(&format_size(self.fetch.memory_budget)));
        let cidrs = |nets: &[IpNet]| V::Array(nets.iter().map(|n| s(&n.to_string())).collect());
        fetch.insert("deny_cidrs".into(), cidrs(&self.fetch.deny_cidrs));
        if let Some(allow) = &self.fetch.allow_cidrs {
            fetch.insert("allow_cidrs".into(), cidrs(allow));
        }
        let t = &self.transform;
        let mut transform = toml::Table::new();
        transform.insert("max_cpu".into(), s(&format_duration(t.max_cpu)));
        transform.insert("max_memory".into(), s(&format_size(t.max_memory)));
        transform.insert("timeout".into(), s(&format_duration(t.timeout)));
        transform.insert("max_depth".into(), V::Integer(t.max_depth.into()));
        transform.insert("concurrency".into(), V::Integer(t.concurrency as i64));
        let h = &self.hooks;
        let mut hooks = toml::Table::new();
        if let Some(socket) = &h.socket {
            hooks.insert("socket".into(), s(&socket.display().to_string()));
        }
        hooks.insert("whitelist".into(), s(&h.whitelist.display().to_string()));
        hooks.insert("default_timeout".into(), s(&format_duration(h.default_timeout)));
        hooks.insert("max_timeout".into(), s(&format_duration(h.max_timeout)));
        hooks.insert("concurrency".into(), V::Integer(h.concurrency as i64));
        hooks.insert("namespace_concurrency".into(), V::Integer(h.namespace_concurrency as i64));
        hooks.insert("run_dir".into(), s(&h.run_dir.display().to_string()));
        hooks.insert("max_cpu".into(), s(&format_duration(h.max_cpu)));
        hooks.insert("max_memory".into(), s(&format_size(h.max_memory)));
        hooks.insert("max_open_files".into(), V::Integer(h.max_open_files as i64));
        hooks.insert("max_processes".into(), V::Integer(h.max_processes as i64));
        let mut log = toml::Table::new();
        log.insert("format".into(), s(if self.log.format == LogFormat::Json { "json" } else { "text" }));
        log.insert("level".into(), s(&self.log.level));
        let mut root = toml::Table::new();
        for (name, table) in [
            ("server", server),
            ("ops", ops),
            ("storage", storage),
            ("controller", controller),
            ("fetch", fetch),
            ("transform", transform),
            ("hooks", hooks),
            ("log", log),
        ] {
            root.insert(name.into(), V::Table(table));
        }
        toml::to_string(&root).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::label_selector_problem;

    #[test]
    fn label_selectors_follow_the_api_servers_grammar() {
        for ok in [
            "sharding.fluxcd.io/key=shard1",
            "team==a,tier!=2",
            "team in (a, b),!legacy",
            "ingress in (x)",
            "env notin (dev),app.kubernetes.io/part-of",
            "key=",
        ] {
            assert_eq!(label_selector_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("team in a", "parenthesised list"),
            ("Team/x=y", "not a valid label key"),
            ("a=b c", "not a valid label value"),
            ("a=b,,c=d", "empty requirement"),
            ("-a=b", "not a valid label key"),
        ] {
            let problem = label_selector_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(problem.contains(why), "{bad}: {problem}");
        }
    }
}
