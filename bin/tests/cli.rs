//! The binary as a user runs it: configuration precedence, validation messages, backends, CRD.

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_externalsource-controller"));
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn printed(o: &Output) -> toml::Table {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(o));
    stdout(o).parse().expect("--print-config prints TOML")
}

fn get<'a>(t: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut v = t.get(path.split('.').next().unwrap()).unwrap();
    for part in path.split('.').skip(1) {
        v = v.get(part).unwrap_or_else(|| panic!("{path} missing"));
    }
    v
}

#[test]
fn defaults_then_file_then_env_then_flags() {
    let t = printed(&run(&["--print-config"], &[]));
    assert_eq!(get(&t, "server.port").as_integer(), Some(8080));
    assert_eq!(get(&t, "server.service_name").as_str(), Some("flux-externalsource-controller-artifacts"));
    let default_backend = if cfg!(feature = "memory") || cfg!(all(feature = "filesystem", feature = "s3")) {
        "memory"
    } else if cfg!(feature = "filesystem") {
        "filesystem"
    } else {
        "s3"
    };
    if default_backend != "s3" {
        assert_eq!(get(&t, "storage.backend").as_str(), Some(default_backend));
    }

    let file = config_file("[server]\nport = 9000\nservice_namespace = \"from-file\"\n[controller]\nconcurrency = 7\n");
    let path = file.path().to_str().unwrap();
    let t = printed(&run(&["--config", path, "--print-config"], &[]));
    assert_eq!(get(&t, "server.port").as_integer(), Some(9000));
    assert_eq!(get(&t, "controller.concurrency").as_integer(), Some(7));
    assert_eq!(get(&t, "ops.per_source_histograms").as_bool(), Some(true), "Flux's per-object histograms by default");
    let aggregated = config_file("[ops]\nper_source_histograms = false\n");
    let t = printed(&run(&["--config", aggregated.path().to_str().unwrap(), "--print-config"], &[]));
    assert_eq!(get(&t, "ops.per_source_histograms").as_bool(), Some(false));
    let bad = config_file("[ops]\nper_source_histograms = \"some\"\n");
    let o = run(&["--config", bad.path().to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ops.per_source_histograms"), "{}", stderr(&o));

    let env = [("ARTIFACT_SERVER_PORT", "9100"), ("POD_NAMESPACE", "from-env"), ("SERVICE_NAME", "svc")];
    let t = printed(&run(&["--config", path, "--print-config"], &env));
    assert_eq!(get(&t, "server.port").as_integer(), Some(9100), "env beats file");
    assert_eq!(get(&t, "server.service_namespace").as_str(), Some("from-env"));
    assert_eq!(get(&t, "server.service_name").as_str(), Some("svc"));

    let t = printed(&run(&["--config", path, "--print-config", "--artifact-server-port", "9200"], &env));
    assert_eq!(get(&t, "server.port").as_integer(), Some(9200), "flag beats env");
}

#[test]
fn invalid_values_fail_start_up_naming_key_value_and_rule() {
    for (args, env, expect) in [
        (vec!["--artifact-server-port", "70000"], vec![], vec!["server.port", "70000", "1 to 65535", "flag"]),
        (
            vec![],
            vec![("ARTIFACT_SERVER_PORT", "0")],
            vec!["server.port", "\"0\"", "1 to 65535", "env ARTIFACT_SERVER_PORT"],
        ),
        (vec![], vec![("ARTIFACT_SERVER_ENABLED", "maybe")], vec!["server.enabled", "maybe", "true or false"]),
        (vec![], vec![("HTTP_TIMEOUT", "soon")], vec!["fetch.timeout", "soon", "duration"]),
        (vec![], vec![("FETCH_MAX_SIZE", "huge")], vec!["fetch.max_size", "huge", "byte size"]),
        (vec![], vec![("STORAGE_BACKEND", "tape")], vec!["unknown storage backend", "tape", "linked backends: "]),
        (vec!["--log-format", "xml"], vec![], vec!["log.format", "xml"]),
        (vec!["--advertise-url", "ftp://x"], vec![], vec!["server.advertise_url", "ftp://x", "http"]),
        (
            vec!["--watch-label-selector", "team in a"],
            vec![],
            vec!["controller.watch_label_selector", "team in a", "parenthesised list", "flag --watch-label-selector"],
        ),
    ] {
        let mut a = args.clone();
        a.push("--print-config");
        let o = run(&a, &env);
        assert_eq!(o.status.code(), Some(2), "{a:?} {env:?} should fail: {}", stdout(&o));
        let err = stderr(&o);
        for needle in expect {
            assert!(err.contains(needle), "{a:?} {env:?}: {err:?} lacks {needle:?}");
        }
    }
}

#[test]
fn unknown_keys_and_tables_are_errors() {
    let file = config_file("[server]\nprot = 1\n");
    let o = run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("server.prot") && stderr(&o).contains("port"), "{}", stderr(&o));
    let file = config_file("[storage.memory]\nmax_bytes = \"1MiB\"\nbogus = 1\n");
    let o = run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("storage.memory") && stderr(&o).contains("bogus"), "{}", stderr(&o));
    let o = run(&["--config", "/nonexistent/config.toml", "--print-config"], &[]);
    assert_eq!(o.status.code(), Some(2), "an explicit file must exist");
}

#[test]
fn leader_election_timings_follow_client_go_rules() {
    for (text, expect) in [
        (
            "lease_duration = \"10s\"\nrenew_deadline = \"10s\"",
            ["controller.renew_deadline", "10s", "shorter than controller.lease_duration (10s)"],
        ),
        (
            "renew_deadline = \"2s\"\nretry_period = \"2s\"",
            ["controller.retry_period", "2s", "controller.renew_deadline (2s) divided by 1.2"],
        ),
    ] {
        let file = config_file(&format!("[controller]\n{text}\n"));
        let o = run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]);
        assert_eq!(o.status.code(), Some(2), "{text}");
        for needle in expect {
            assert!(stderr(&o).contains(needle), "{text}: {} lacks {needle:?}", stderr(&o));
        }
    }
    let file = config_file(
        "[controller]\nlease_duration = \"4s\"\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\nrestore_timeout = \"30s\"\n",
    );
    let t = printed(&run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]));
    assert_eq!(get(&t, "controller.lease_duration").as_str(), Some("4s"));
    assert_eq!(get(&t, "controller.retry_period").as_str(), Some("500ms"));
    assert_eq!(get(&t, "controller.restore_timeout").as_str(), Some("30s"));
}

#[test]
fn list_backends_prints_each_linked_backend_with_capabilities() {
    let o = run(&["--list-backends"], &[]);
    assert!(o.status.success());
    let mut expected = Vec::new();
    if cfg!(feature = "filesystem") {
        expected.push("filesystem serves_http (shared = true on a ReadWriteMany volume makes it shared) [externalsource-backend-filesystem]");
    }
    if cfg!(feature = "memory") {
        expected.push("memory serves_http [externalsource-backend-memory]");
    }
    if cfg!(feature = "s3") {
        expected.push("s3 shared (serves_http in mode=proxy) [externalsource-backend-s3]");
    }
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), expected);
}

#[test]
fn crd_subcommand_prints_the_committed_crd() {
    let o = run(&["crd"], &[]);
    assert!(o.status.success());
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/base/crd/source.flux.oddkin.co_externalsources.yaml"),
    )
    .unwrap();
    assert_eq!(stdout(&o), committed);
}

#[test]
fn serve_runs_without_kubernetes_and_stops_on_sigterm() {
    use std::io::{Read, Write};
    let port = free_port();
    let ops = free_port();
    let store = tempfile::tempdir().unwrap();
    let file = config_file(&format!(
        "[server]\nbind_address = \"127.0.0.1\"\nshutdown_delay = \"1500ms\"\n[ops]\nbind_address = \"127.0.0.1\"\n\
         [storage]\nbackend = \"filesystem\"\n[storage.filesystem]\nroot = \"{}\"\nshared = true\n",
        store.path().display()
    ));
    // Started with a low soft open-file limit (a shell lowers it, then execs the binary), so
    // the raise at start-up is visible.
    let mut child = Command::new("bash")
        .args(["-c", "ulimit -Sn 512 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_externalsource-controller")])
        .args(["serve", "--config", file.path().to_str().unwrap()])
        .args(["--artifact-server-port", &port.to_string(), "--ops-port", &ops.to_string()])
        .env_remove("KUBECONFIG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |port: u16, path: &str| -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let mut ready = None;
    for _ in 0..100 {
        ready = get(ops, "/readyz");
        if ready.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ready.unwrap_or_default().starts_with("HTTP/1.1 200"), "serve is ready without Kubernetes");
    assert!(get(port, "/artifacts/ns/n/x.tar.gz").unwrap().starts_with("HTTP/1.1 404"));
    // The soft open-file limit was raised to the hard one.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft = hard: {line}");
    assert_ne!(fields[3], "512", "raised from the inherited soft limit: {line}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let signalled = std::time::Instant::now();
    // Not Ready at once, yet both listeners still answer during the shutdown delay, so clients
    // the Service still routes here are served while endpoints update.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(get(ops, "/readyz").unwrap_or_default().starts_with("HTTP/1.1 503"), "not ready after SIGTERM");
    assert!(get(port, "/artifacts/ns/n/x.tar.gz").unwrap_or_default().starts_with("HTTP/1.1 404"), "still serving");
    assert!(signalled.elapsed() < std::time::Duration::from_millis(1200), "checked within the delay");
    let deadline = signalled + std::time::Duration::from_secs(10);
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            assert!(code.success(), "clean exit on SIGTERM: {code:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(signalled.elapsed() >= std::time::Duration::from_millis(1400), "stopped before the shutdown delay");
    assert!(get(port, "/artifacts/ns/n/x.tar.gz").is_none(), "the listener is closed once stopped");
}

#[test]
fn config_errors_never_print_secret_values() {
    // A syntax error on the secret's own line: the position is named, the line is not quoted.
    let file = config_file(
        "[storage]\nbackend = \"memory\"\n\n[fetch]\nuser_agent = \"ua\"\ntoken = \"sk-live-unterminated\n",
    );
    let o = run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("not valid TOML") && err.contains("line 6"), "{err}");
    assert!(!err.contains("sk-live"), "a secret was printed: {err}");
    // The CIDR lists: a bad entry is named with its rule.
    let file = config_file("[fetch]\ndeny_cidrs = [\"169.254.0.0/16\", \"not-a-net\"]\n");
    let o = run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("fetch.deny_cidrs") && err.contains("not-a-net") && err.contains("CIDR"), "{err}");
    let file = config_file("[fetch]\ntimeout = \"5m\"\nmax_timeout = \"1m\"\n");
    let o = run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("fetch.timeout") && stderr(&o).contains("fetch.max_timeout"), "{}", stderr(&o));
    let file = config_file("[controller]\nconcurrency = 8\n");
    let defaults = printed(&run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]));
    assert_eq!(get(&defaults, "controller.namespace_concurrency").as_integer(), Some(6), "3/4 of concurrency");
    let file = config_file("[controller]\nconcurrency = 8\nnamespace_concurrency = 9\n");
    let o = run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(o.status.code(), Some(2), "above concurrency: {}", stderr(&o));
    assert!(stderr(&o).contains("controller.namespace_concurrency"), "{}", stderr(&o));
    let file = config_file("[fetch]\nallow_cidrs = \"10.0.0.0/8, 2001:db8::/32\"\n");
    let printed = printed(&run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]));
    let allow = get(&printed, "fetch.allow_cidrs").as_array().unwrap();
    assert_eq!(allow.len(), 2);
    assert_eq!(get(&printed, "fetch.deny_cidrs").as_array().unwrap().len(), 3, "the default deny list");
}

#[test]
fn require_https_is_off_by_default_and_set_by_file_env_or_flag() {
    let off = printed(&run(&["--print-config"], &[]));
    assert_eq!(get(&off, "fetch.require_https").as_bool(), Some(false));
    let by_flag = printed(&run(&["--print-config", "--fetch-require-https", "true"], &[]));
    assert_eq!(get(&by_flag, "fetch.require_https").as_bool(), Some(true));
    let by_env = printed(&run(&["--print-config"], &[("FETCH_REQUIRE_HTTPS", "true")]));
    assert_eq!(get(&by_env, "fetch.require_https").as_bool(), Some(true));
    let file = config_file("[fetch]\nrequire_https = true\nmax_pages = 500\n");
    let by_file = printed(&run(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]));
    assert_eq!(get(&by_file, "fetch.require_https").as_bool(), Some(true));
    assert_eq!(get(&by_file, "fetch.max_pages").as_integer(), Some(500));
}

#[test]
fn a_configuration_that_does_not_fit_the_memory_limit_is_refused() {
    let file = config_file("[storage.memory]\nmax_bytes = \"256MiB\"\n[fetch]\nmemory_budget = \"256MiB\"\n");
    let path = file.path().to_str().unwrap();
    // 64MiB baseline + 256MiB store + 256MiB fetches + 2 × 256MiB transforms = 1088MiB.
    let o = run(&["--config", path, "--print-config", "--memory-limit", "1GiB"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let message = stderr(&o);
    assert!(
        message.contains(
            "may use up to 1088MiB (baseline 64MiB + storage.memory.max_bytes 256MiB + fetch.memory_budget 256MiB + \
             transform.concurrency × transform.max_memory (2 × 256MiB) 512MiB) but the memory limit is 1GiB \
             (from controller.memory_limit)"
        ),
        "{message}"
    );
    // Fits once a term shrinks; `serve` holds only the store.
    printed(&run(&["--config", path, "--print-config", "--memory-limit", "1100MiB"], &[]));
    printed(&run(&["--config", path, "--print-config", "--memory-limit", "400MiB", "serve"], &[]));
    // Refused at start-up too, before anything else is touched (no Kubernetes here).
    let o = run(&["--config", path, "--memory-limit", "512MiB"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("but the memory limit is 512MiB"), "{}", stderr(&o));
    // Or only warned about.
    let warn = config_file(
        "[storage.memory]\nmax_bytes = \"256MiB\"\n[controller]\nmemory_check = \"warn\"\nmemory_limit = \"512MiB\"\n",
    );
    printed(&run(&["--config", warn.path().to_str().unwrap(), "--print-config"], &[]));
}

#[test]
fn serve_refuses_a_store_that_is_not_shared() {
    let store = tempfile::tempdir().unwrap();
    for (table, backend) in [
        (String::new(), "memory"),
        (
            format!(
                "[storage]\nbackend = \"filesystem\"\n[storage.filesystem]\nroot = \"{}\"\n",
                store.path().display()
            ),
            "filesystem",
        ),
    ] {
        let (ops, port) = (free_port(), free_port());
        let file = config_file(&format!("[ops]\nport = {ops}\n[server]\nport = {port}\n{table}"));
        let o = run(&["serve", "--config", file.path().to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(1), "{backend}: {}", stderr(&o));
        let err = stderr(&o);
        for needle in ["`serve`", &format!("the {backend} store is private"), "storage.filesystem.shared = true"] {
            assert!(err.contains(needle), "{backend}: {err:?} lacks {needle:?}");
        }
    }
}

/// Writes `count` artifacts of `size` bytes, each named by its digest, under `root`.
fn fill_store(root: &std::path::Path, count: u32, size: usize) {
    for i in 0..count {
        let body: Vec<u8> =
            (0..size as u32).map(|j| (j.wrapping_mul(2_654_435_761) ^ i.wrapping_mul(97)) as u8).collect();
        let dir = root.join(format!("artifacts/ns/s{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{}.tar.gz", externalsource_core::Digest::of(&body).hex())), &body).unwrap();
    }
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start-up does not read the store: 20,000 artifacts are indexed from their names, `/healthz`
/// answers within a second, Ready follows, and the content is verified in the background (a
/// corrupt artifact is removed, never served). Run as an unprivileged user, so a directory it
/// may not read is a real permission error: logged and skipped, not fatal.
#[test]
fn start_up_with_20000_artifacts_is_fast_and_survives_unreadable_entries() {
    const ARTIFACTS: u32 = 20_000;
    let store = tempfile::tempdir().unwrap();
    fill_store(store.path(), ARTIFACTS, 4096);
    let corrupt =
        store.path().join(format!("artifacts/ns/bad/{}.tar.gz", externalsource_core::Digest::of(b"promised").hex()));
    std::fs::create_dir_all(corrupt.parent().unwrap()).unwrap();
    std::fs::write(&corrupt, b"tampered").unwrap();
    let locked = store.path().join("artifacts/locked");
    std::fs::create_dir_all(&locked).unwrap();
    fill_store(&locked, 1, 16);
    let unprivileged = 65534u32;
    assert!(
        Command::new("chown")
            .args(["-R", &format!("{unprivileged}:{unprivileged}")])
            .arg(store.path())
            .status()
            .unwrap()
            .success()
    );
    assert!(Command::new("chown").args(["-R", "0:0"]).arg(&locked).status().unwrap().success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();

    let ops = free_port();
    let port = free_port();
    let file = config_file(&format!(
        "[server]\nbind_address = \"127.0.0.1\"\nport = {port}\nshutdown_delay = \"0s\"\n[ops]\nbind_address = \"127.0.0.1\"\nport = {ops}\n\
         [storage]\nbackend = \"filesystem\"\n[storage.filesystem]\nroot = \"{}\"\nshared = true\n[log]\nformat = \"json\"\n",
        store.path().display()
    ));
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let started = std::time::Instant::now();
    let mut child = KillOnDrop(
        Command::new("setpriv")
            .args(["--reuid", &unprivileged.to_string(), "--regid", &unprivileged.to_string(), "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_externalsource-controller"))
            .args(["serve", "--config", file.path().to_str().unwrap()])
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let mut healthy_at = None;
    let ready_at = loop {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "never became ready");
        assert!(child.0.try_wait().unwrap().is_none(), "exited: {}", std::fs::read_to_string(log.path()).unwrap());
        if healthy_at.is_none() && http_status(ops, "/healthz") == Some(200) {
            healthy_at = Some(started.elapsed());
        }
        if http_status(ops, "/readyz") == Some(200) {
            break started.elapsed();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let healthy_at = healthy_at.unwrap_or(ready_at);
    eprintln!("{ARTIFACTS} artifacts: /healthz after {healthy_at:?}, Ready after {ready_at:?}");
    assert!(healthy_at < std::time::Duration::from_secs(1), "/healthz first answered after {healthy_at:?}");
    assert!(ready_at < std::time::Duration::from_secs(5), "Ready after {ready_at:?}");
    let bad_path = corrupt.strip_prefix(store.path()).unwrap().to_str().unwrap().to_owned();
    assert_eq!(http_status(port, &format!("/{bad_path}")), Some(404), "a corrupt artifact is never served");
    let good = std::fs::read_dir(store.path().join("artifacts/ns/s7")).unwrap().next().unwrap().unwrap().path();
    let good_path = good.strip_prefix(store.path()).unwrap().to_str().unwrap().to_owned();
    assert_eq!(http_status(port, &format!("/{good_path}")), Some(200));
    let verified = loop {
        let text = std::fs::read_to_string(log.path()).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("filesystem store verified")) {
            break line.to_owned();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "verification never finished: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
    assert!(child.0.wait().unwrap().success());
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(!corrupt.exists(), "the corrupt artifact was removed so it is rebuilt");
    // Every artifact but the one already hashed when it was served.
    assert!(verified.contains(&format!("\"verified\":{}", ARTIFACTS - 1)), "{verified}");
    let skipped =
        text.lines().find(|l| l.contains("cannot read a store entry; skipped")).unwrap_or_else(|| panic!("{text}"));
    assert!(skipped.contains("artifacts/locked"), "{skipped}");
}

/// A configuration problem only building the storage finds (s3 proxy mode needs the artifact
/// server) is a configuration error: exit 2, naming the key, like every other.
#[test]
fn a_backend_that_cannot_be_built_from_its_settings_is_a_configuration_error() {
    if !cfg!(feature = "s3") {
        return;
    }
    let ops = free_port().to_string();
    let o = run(
        &["serve"],
        &[
            ("STORAGE_BACKEND", "s3"),
            ("S3_BUCKET", "artifacts"),
            ("S3_MODE", "proxy"),
            ("S3_ENDPOINT", "http://127.0.0.1:1"),
            ("ARTIFACT_SERVER_ENABLED", "false"),
            ("OPS_PORT", &ops),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("storage.s3.mode") && err.contains("server.enabled"), "{err}");
}
