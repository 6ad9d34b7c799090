//! Every key of the core's configuration, declared once: the tables of the configuration file,
//! with each key's type, rule, default, environment variable, flag and documentation
//! (`docs/configuration.md` is generated from these declarations).

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::codec::{AbsPath, Bool, Choice, Choices, Cidrs, DnsLabel, Int, Opt, Port, Selector, Size, Span, Text, Url};
use super::declare::section;
use super::{
    DEFAULT_HOOK_RUN_DIR, DEFAULT_HOOK_WHITELIST, DEFAULT_MEMORY_BUDGET, DEFAULT_SERVICE_NAME, default_backend,
    default_deny_cidrs, hostname,
};

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

section! {
    /// The artifact server Flux downloads from.
    pub struct ServerConfig in "server" {
        /// Whether the artifact server runs.
        enabled: bool as Bool = true, env "ARTIFACT_SERVER_ENABLED", flag "artifact-server-enabled";
        /// Address the artifact server listens on.
        bind_address: String as Text = "0.0.0.0".to_owned();
        /// Port of the artifact server.
        port: u16 as Port = 8080, env "ARTIFACT_SERVER_PORT", flag "artifact-server-port";
        /// Name of the artifact Service, part of the in-cluster URL.
        service_name: String as DnsLabel = DEFAULT_SERVICE_NAME.to_owned(), env "SERVICE_NAME";
        /// Namespace of the artifact Service, part of the in-cluster URL.
        service_namespace: String as DnsLabel = "flux-system".to_owned(), env "POD_NAMESPACE";
        /// URL consumers download from, replacing the in-cluster Service URL (for out-of-cluster
        /// runs and other layouts).
        advertise_url: Option<String> as Opt<Url> = None, env "ARTIFACT_SERVER_ADVERTISE_URL", flag "advertise-url",
            shown "`http://{service_name}.{service_namespace}.svc.cluster.local:{port}`";
        /// Longest time a client may take to send a request head (slowloris defence); also how
        /// long an idle keep-alive connection waits for its next request.
        header_read_timeout: Duration as Span<100> = secs(10);
        /// A connection that neither reads nor writes for this long is closed.
        idle_timeout: Duration as Span<100> = secs(60);
        /// After shutdown, how long responses in flight may take to finish. Below the pod's
        /// termination grace period (30s by default in Kubernetes) less `shutdown_delay`.
        shutdown_grace: Duration as Span<0> = secs(20);
        /// After SIGTERM, how long the listeners keep accepting while readiness is already false.
        shutdown_delay: Duration as Span<0> = secs(5);
        /// Open connections of the artifact listener at most; beyond it a new connection gets
        /// `503` with `Retry-After: 1`.
        max_connections: u32 as Int<u32, 1, 1_000_000> = 4096;
        /// Bytes per second below which a client that holds up a download is cut; 0 disables.
        min_send_rate: u64 as Size<0> = 1024;
    }
}

section! {
    /// Health, readiness and metrics endpoints, on their own port so a NetworkPolicy can
    /// keep the artifact port to Flux and the metrics port to Prometheus.
    pub struct OpsConfig in "ops" {
        /// Address of the ops endpoints.
        bind_address: String as Text = "0.0.0.0".to_owned();
        /// Port of `/healthz`, `/readyz`, `/metrics` and `/metrics/totals`.
        port: u16 as Port = 8081, env "OPS_PORT", flag "ops-port";
        /// Duration histograms per source (Flux's way); `false`: the reconcile, request and hook
        /// duration histograms have one series per namespace (`name=""`). The metrics page is
        /// about 3.7 KiB per source with them and 0.6 KiB without.
        per_source_histograms: bool as Bool = true;
    }
}

section! {
    /// The push receiver: the webhooks of sources with `spec.receiver`, on their own listener so
    /// that only it needs to be reachable from outside the cluster (an Ingress to this port).
    /// Every replica serves it and asks for the reconcile through the API, so the leader fetches
    /// whichever replica received the push.
    pub struct ReceiverConfig in "receiver" {
        /// Whether the receiver listener runs (off by default: an opt-in entry point).
        enabled: bool as Bool = false, env "RECEIVER_ENABLED", flag "receiver-enabled";
        /// Address the receiver listens on.
        bind_address: String as Text = "0.0.0.0".to_owned();
        /// Port of the receiver (notification-controller's receiver port).
        port: u16 as Port = 9292, env "RECEIVER_PORT", flag "receiver-port";
        /// Largest request body accepted; a larger push is refused with 413 before any
        /// signature is computed over it.
        max_body: u64 as Size<1> = 1 << 20;
        /// Open connections of the receiver listener at most; beyond it a new connection gets
        /// `503` with `Retry-After: 1`.
        max_connections: u32 as Int<u32, 1, 1_000_000> = 256;
    }
}

section! {
    /// The backend artifacts are stored in; its own settings are the table
    /// `[storage.<backend>]`.
    pub struct StorageConfig in "storage" {
        /// Storage backend; `--list-backends` names the linked ones.
        backend: String as Text = default_backend(), env "STORAGE_BACKEND", flag "storage-backend",
            shown "`memory` when linked, else the only linked backend";
        /// Bytes of artifacts one namespace may store; unset: no quota.
        namespace_quota: Option<u64> as Opt<Size<1>> = None;
    }
}

/// `controller.memory_check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryCheck {
    /// Refuse to start: the kernel would kill the pod, store and all, under load.
    Refuse,
    /// Log a warning and start.
    Warn,
}

impl Choices for MemoryCheck {
    const NAMES: &'static [&'static str] = &["refuse", "warn"];
}

section! {
    /// Reconciling ExternalSources.
    pub struct ControllerConfig in "controller" {
        /// Reconciles at once.
        concurrency: u16 as Int<u16, 1, 1024> = 4, env "CONTROLLER_CONCURRENCY";
        /// The shortest `spec.interval` a source may ask for.
        min_interval: Duration as Span<1000> = secs(60), env "MIN_INTERVAL";
        /// Published revisions kept per source (the current one first); older stored artifacts
        /// are deleted.
        retention: u16 as Int<u16, 1, 100> = 2;
        /// Failed attempts at deleting a source's stored artifacts before its finalizer is
        /// released anyway (with a Warning Event naming what was left behind), so a broken store
        /// cannot hang a namespace deletion.
        finalizer_attempts: u32 as Int<u32, 1, 1000> = 5;
        /// Reconciles of one namespace at once, at most `concurrency`, so one tenant cannot hold
        /// every slot; a single-tenant install whose sources share one namespace can set it to
        /// `concurrency`.
        namespace_concurrency: u16 as Int<u16, 1, 1024> = (concurrency * 3 / 4).max(1),
            shown "three quarters of `concurrency`, at least 1";
        /// Whether replicas elect a leader through a Lease.
        leader_election: bool as Bool = true, env "LEADER_ELECTION";
        /// Name of the Lease replicas elect a leader with.
        lease_name: String as DnsLabel = "externalsource-controller-leader".to_owned(), env "LEASE_NAME";
        /// This replica's identity in the Lease.
        pod_name: String as Text = hostname(), env "POD_NAME", shown "the host name";
        /// Only ExternalSources matching this label selector are reconciled (sharding, like
        /// Flux's `--watch-label-selector`), e.g. `sharding.fluxcd.io/key=shard1`; unset: all.
        watch_label_selector: Option<String> as Opt<Selector> = None,
            env "WATCH_LABEL_SELECTOR", flag "watch-label-selector";
        /// notification-controller's event address, like Flux controllers' `--events-addr`
        /// (`http://notification-controller.flux-system.svc.cluster.local./`); unset: only
        /// Kubernetes Events are recorded. The deploy overlays and the chart set Flux's.
        events_addr: Option<String> as Opt<Url> = None, env "EVENTS_ADDR", flag "events-addr";
        /// How long a lease nobody renews stays held (client-go's `LeaseDuration`).
        lease_duration: Duration as Span<1000> = secs(15);
        /// How long a leader keeps trying to renew before it steps down; below `lease_duration`
        /// so it has stopped before anyone may take the lease.
        renew_deadline: Duration as Span<500> = secs(10);
        /// Pause between acquire or renew attempts.
        retry_period: Duration as Span<100> = secs(2);
        /// With a store that is not shared: how long a new leader (or a restarted single
        /// replica) waits for its first pass to re-store every published artifact before it
        /// turns Ready anyway; until then the missing artifacts answer 503 with `Retry-After`.
        restore_timeout: Duration as Span<0> = secs(120);
        /// The memory the process may use; unset: the cgroup limit, read at start-up. With
        /// `--print-config`, the configuration is checked against it.
        memory_limit: Option<u64> as Opt<Size<1>> = None, flag "memory-limit";
        /// What start-up does when the configuration may need more than the memory limit.
        memory_check: MemoryCheck as Choice<MemoryCheck> = MemoryCheck::Refuse;
    }
}

section! {
    /// Requests to upstream APIs.
    pub struct FetchConfig in "fetch" {
        /// Timeout of a fetch whose source sets none.
        timeout: Duration as Span<1000> = secs(30), env "HTTP_TIMEOUT";
        /// The longest `spec.timeout` a source may ask for.
        max_timeout: Duration as Span<1000> = secs(600);
        /// The largest response body a fetch accepts (decoded bytes, counted while streaming).
        max_size: u64 as Size<1> = 64 << 20, env "FETCH_MAX_SIZE";
        /// The `User-Agent` of fetches.
        user_agent: String as Text = concat!("externalsource-controller/", env!("CARGO_PKG_VERSION")).to_owned(),
            env "HTTP_USER_AGENT", shown "`externalsource-controller/<version>`";
        /// Networks fetches never connect to (on any redirect hop): link-local networks and the
        /// cloud metadata addresses by default. A TOML array, or one comma-separated string.
        deny_cidrs: Vec<IpNet> as Cidrs = default_deny_cidrs();
        /// When set, the only networks fetches connect to (the deny list still applies). A TOML
        /// array, or one comma-separated string.
        allow_cidrs: Option<Vec<IpNet>> as Opt<Cidrs> = None;
        /// Refuse plain `http://`: a source URL with it is a configuration problem, and a
        /// redirect to it (or an OAuth2 token URL with it) fails the fetch. Proxy addresses are
        /// exempt (an `https://` target is tunnelled through them with TLS end to end).
        require_https: bool as Bool = false, env "FETCH_REQUIRE_HTTPS", flag "fetch-require-https";
        /// The most pages a paged source (`spec.generator.http.pagination.maxPages`) may ask for.
        max_pages: u32 as Int<u32, 1, 10_000> = 100;
        /// Bytes of fetched bodies in memory at once, each counted twice (the body and its
        /// packaged copy); at least twice `max_size`.
        memory_budget: u64 as Size<1> = max_size.saturating_mul(2).max(DEFAULT_MEMORY_BUDGET),
            shown "`256MiB` or twice `max_size`, whichever is more";
        /// Whether sources may fetch with a token of a ServiceAccount of their namespace
        /// (`spec.generator.http.serviceAccountName`, through the TokenRequest API; the RBAC of
        /// `deploy/` grants `create` on `serviceaccounts/token`). `false`: such a source is not
        /// Ready, naming this key.
        workload_identity: bool as Bool = true;
    }
}

section! {
    /// Limits of each run in the sandbox: `spec.transform`, and the jq and JSON Schema checks of
    /// `spec.validate`.
    pub struct TransformConfig in "transform" {
        /// CPU time of one run, in whole seconds (rounded up).
        max_cpu: Duration as Span<1000> = secs(2);
        /// Address space of the worker process.
        max_memory: u64 as Size<{ 64 << 20 }> = 256 << 20;
        /// Wall-clock time of one run.
        timeout: Duration as Span<1000> = secs(10);
        /// Nesting of arrays and objects in each output value.
        max_depth: u32 as Int<u32, 1, 100_000> = 512;
        /// Runs at once, across all sources; at most `controller.concurrency`.
        concurrency: usize as Int<usize, 1, 1024> = 2, shown "half of `controller.concurrency`, at least 1";
        /// The largest JSON Schema `spec.validate.jsonSchema` may name (the ConfigMap value).
        max_schema_size: u64 as Size<1024> = 256 << 10;
    }
}

section! {
    /// The executor that runs `spec.hooks`.
    pub struct HooksConfig in "hooks" {
        /// The executor's Unix socket; unset: hooks are off and a source with hooks is not Ready.
        socket: Option<PathBuf> as Opt<AbsPath> = None, env "HOOK_EXECUTOR_SOCKET";
        /// The executor's whitelist file (read by `hook-executor` only).
        whitelist: PathBuf as AbsPath = PathBuf::from(DEFAULT_HOOK_WHITELIST), env "HOOK_WHITELIST";
        /// Timeout of a hook that sets none.
        default_timeout: Duration as Span<1000> = secs(30);
        /// The longest timeout a hook may ask for.
        max_timeout: Duration as Span<1000> = secs(300);
        /// Hooks the executor runs at once.
        concurrency: usize as Int<usize, 1, 64> = 2;
        /// Hooks of one namespace the executor runs at once (at most `concurrency`).
        namespace_concurrency: usize as Int<usize, 1, 64> = (concurrency / 2).max(1),
            shown "half of `concurrency`, at least 1";
        /// Where the executor makes each run's private directory.
        run_dir: PathBuf as AbsPath = PathBuf::from(DEFAULT_HOOK_RUN_DIR);
        /// CPU time of each process of a hook (`RLIMIT_CPU`).
        max_cpu: Duration as Span<1000> = secs(30);
        /// Address space of each process of a hook (`RLIMIT_AS`).
        max_memory: u64 as Size<{ 16 << 20 }> = 512 << 20;
        /// Open files of each process of a hook (`RLIMIT_NOFILE`).
        max_open_files: u64 as Int<u64, 8, 65_536> = 64;
        /// Processes and threads of the executor's user while a hook runs (`RLIMIT_NPROC`,
        /// counted per user ID by the kernel, not per hook).
        max_processes: u64 as Int<u64, 1, 4_194_304> = 256;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Choices for LogFormat {
    const NAMES: &'static [&'static str] = &["text", "json"];
}

section! {
    /// The process's log.
    pub struct LogConfig in "log" {
        /// Log format.
        format: LogFormat as Choice<LogFormat> = LogFormat::Text, env "LOG_FORMAT", flag "log-format";
        /// Log filter, in `tracing`'s `EnvFilter` syntax (`info`, `externalsource_core=debug`).
        level: String as Text = "info".to_owned(), env "LOG_LEVEL";
    }
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
