//! `[storage.s3]` and `S3_*` parsing, precedence, validation messages, redaction, and the URLs
//! and capabilities of both modes. No server needed: building the storage makes no request.

use std::time::Duration;

use externalsource_backend_s3::{Mode, S3Settings, S3Storage};
use externalsource_core::backend::{self, host};
use externalsource_core::config::{ConfigError, ConfigLoader};
use externalsource_core::registry::{BackendContext, BackendSettings, Env};
use externalsource_core::{Backend, Capabilities, ObjectKey};

fn context<'a>(table: &'a toml::Table, env: &'a Env) -> BackendContext<'a> {
    BackendContext { table, env }
}

/// What start-up reads, resolved into what the storage runs with.
fn parse(toml_text: &str, env: &[(&str, &str)]) -> Result<S3Settings, ConfigError> {
    let table: toml::Table = toml_text.parse().expect("test TOML");
    let env = Env::from_pairs(env.iter().copied());
    let config = backend::read::<S3Storage>(&context(&table, &env))?;
    Ok(S3Settings::resolve(&config).expect("read has checked it"))
}

/// The settings as the registry holds them (printable, buildable).
fn parse_boxed(toml_text: &str, env: &[(&str, &str)]) -> Box<dyn BackendSettings> {
    let table: toml::Table = toml_text.parse().expect("test TOML");
    let env = Env::from_pairs(env.iter().copied());
    let descriptor = externalsource_core::registry::find("s3").expect("s3 is linked");
    (descriptor.parse)(&context(&table, &env)).expect("valid settings")
}

/// The (key, value, rule) of an `Invalid` error.
fn invalid(result: Result<S3Settings, ConfigError>) -> (String, String, String) {
    match result {
        Err(ConfigError::Invalid { key, value, rule }) => (key, value, rule),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn defaults_with_only_a_bucket() {
    let s = parse(r#"bucket = "artifacts""#, &[]).unwrap();
    assert_eq!(s.bucket, "artifacts");
    assert_eq!(s.region, "us-east-1");
    assert_eq!(s.endpoint, None);
    assert!(!s.path_style, "AWS uses virtual-host addressing by default");
    assert_eq!(s.prefix, "");
    assert_eq!(s.mode, Mode::Direct);
    assert_eq!(s.public_url, None);
    assert_eq!(s.timeout, Duration::from_secs(30));
    assert_eq!(s.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.max_attempts, 2);
    assert_eq!(s.credentials, None, "no keys: the standard AWS chain applies");
}

#[test]
fn every_toml_key_is_read() {
    let s = parse(
        r#"
        bucket = "artifacts"
        region = "eu-west-3"
        endpoint = "https://s3.example.internal:9000/"
        path_style = false
        prefix = "clusters/prod/"
        mode = "proxy"
        public_url = "https://cdn.example.com/artifacts/"
        timeout = "10s"
        connect_timeout = "500ms"
        max_attempts = 3
        access_key_id = "AKID"
        secret_access_key = "s3cr3t"
        "#,
        &[],
    )
    .unwrap();
    assert_eq!(s.region, "eu-west-3");
    assert_eq!(s.endpoint.as_deref(), Some("https://s3.example.internal:9000"));
    assert!(!s.path_style);
    assert_eq!(s.prefix, "clusters/prod/");
    assert_eq!(s.mode, Mode::Proxy);
    assert_eq!(s.public_url.as_deref(), Some("https://cdn.example.com/artifacts"));
    assert_eq!(s.timeout, Duration::from_secs(10));
    assert_eq!(s.connect_timeout, Duration::from_millis(500));
    assert_eq!(s.max_attempts, 3);
    let c = s.credentials.unwrap();
    assert_eq!((c.access_key_id.as_str(), c.secret_access_key.expose().as_str()), ("AKID", "s3cr3t"));
}

#[test]
fn predecessor_environment_overrides_the_file() {
    let s = parse(
        r#"
        bucket = "from-file"
        region = "eu-west-1"
        mode = "proxy"
        prefix = "file"
        "#,
        &[
            ("S3_BUCKET", "from-env"),
            ("S3_REGION", "us-west-2"),
            ("S3_ENDPOINT", "minio.minio.svc:9000"),
            ("S3_USE_SSL", "false"),
            ("S3_MODE", "direct"),
            ("S3_PREFIX", "env/prefix"),
            ("S3_PUBLIC_URL", "http://public.example"),
            ("S3_ACCESS_KEY_ID", "AKENV"),
            ("S3_SECRET_ACCESS_KEY", "env-secret"),
            ("S3_TIMEOUT", "2s"),
            ("S3_CONNECT_TIMEOUT", "1s"),
            ("S3_MAX_ATTEMPTS", "1"),
        ],
    )
    .unwrap();
    assert_eq!(s.bucket, "from-env");
    assert_eq!(s.region, "us-west-2");
    assert_eq!(s.endpoint.as_deref(), Some("http://minio.minio.svc:9000"), "bare host + S3_USE_SSL=false");
    assert!(s.path_style, "an endpoint defaults to path style, as the predecessor always used");
    assert_eq!(s.mode, Mode::Direct);
    assert_eq!(s.prefix, "env/prefix/");
    assert_eq!(s.public_url.as_deref(), Some("http://public.example"));
    assert_eq!(s.credentials.unwrap().secret_access_key.expose(), "env-secret");
    assert_eq!(s.timeout, Duration::from_secs(2));
    assert_eq!(s.max_attempts, 1);
}

#[test]
fn bare_endpoint_defaults_to_https_and_path_style_can_be_turned_off() {
    let s = parse(r#"bucket = "b-1""#, &[("S3_ENDPOINT", "s3.example.com"), ("S3_PATH_STYLE", "False")]).unwrap();
    assert_eq!(s.endpoint.as_deref(), Some("https://s3.example.com"));
    assert!(!s.path_style);
    // Go's ParseBool spellings, as the predecessor read them.
    for (text, want) in [("1", true), ("t", true), ("TRUE", true), ("0", false), ("f", false), ("FALSE", false)] {
        let s = parse(r#"bucket = "b-1""#, &[("S3_PATH_STYLE", text)]).unwrap();
        assert_eq!(s.path_style, want, "S3_PATH_STYLE={text}");
    }
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let s = parse(r#"bucket = "from-file""#, &[("S3_BUCKET", ""), ("S3_ENDPOINT", "")]).unwrap();
    assert_eq!(s.bucket, "from-file");
    assert_eq!(s.endpoint, None);
}

/// File, environment, then the expected key, a piece of the value and a piece of the rule.
type InvalidCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str, &'a str);

#[test]
fn invalid_values_name_key_value_source_and_rule() {
    let cases: &[InvalidCase<'_>] = &[
        ("", &[], "storage.s3.bucket", "default", "required"),
        (r#"bucket = "Bad_Bucket""#, &[], "storage.s3.bucket", "\"Bad_Bucket\" (from file)", "S3 bucket name"),
        ("bucket = 7", &[], "storage.s3.bucket", "7 (from file)", "expected a string"),
        (
            r#"bucket = "b-1""#,
            &[("S3_MODE", "sideways")],
            "storage.s3.mode",
            "\"sideways\" (from env S3_MODE)",
            "`direct` or `proxy`",
        ),
        (
            r#"bucket = "b-1""#,
            &[("S3_PATH_STYLE", "maybe")],
            "storage.s3.path_style",
            "\"maybe\" (from env S3_PATH_STYLE)",
            "true/false",
        ),
        (r#"bucket = "b-1""#, &[("S3_USE_SSL", "sure")], "storage.s3.use_ssl", "sure", "true/false"),
        (
            r#"bucket = "b-1"
            timeout = "5 parsecs""#,
            &[],
            "storage.s3.timeout",
            "5 parsecs",
            "not a duration",
        ),
        (
            r#"bucket = "b-1"
            timeout = "10ms""#,
            &[],
            "storage.s3.timeout",
            "10ms",
            "at least 100ms",
        ),
        (
            r#"bucket = "b-1"
            timeout = "1s"
            connect_timeout = "2s""#,
            &[],
            "storage.s3.connect_timeout",
            "2s",
            "must not exceed storage.s3.timeout",
        ),
        (r#"bucket = "b-1""#, &[("S3_PREFIX", "../escape")], "storage.s3.prefix", "../escape", "relative key prefix"),
        (
            r#"bucket = "b-1"
            prefix = "/abs""#,
            &[],
            "storage.s3.prefix",
            "/abs",
            "relative key prefix",
        ),
        (
            r#"bucket = "b-1""#,
            &[("S3_PUBLIC_URL", "ftp://x")],
            "storage.s3.public_url",
            "ftp://x",
            "http:// or https://",
        ),
        (
            r#"bucket = "b-1""#,
            &[("S3_ENDPOINT", "https://h/path")],
            "storage.s3.endpoint",
            "https://h/path",
            "without a path",
        ),
        (
            r#"bucket = "b-1""#,
            &[("S3_ENDPOINT", "https://h"), ("S3_USE_SSL", "false")],
            "storage.s3.endpoint",
            "https://h",
            "use_ssl is false",
        ),
        (r#"bucket = "b-1""#, &[("S3_REGION", "EU West")], "storage.s3.region", "EU West", "region name"),
        (
            r#"bucket = "b-1"
            max_attempts = 0"#,
            &[],
            "storage.s3.max_attempts",
            "0",
            "from 1 to 10",
        ),
        (r#"bucket = "b-1""#, &[("S3_ACCESS_KEY_ID", "AK")], "storage.s3.access_key_id", "AK", "secret_access_key"),
    ];
    for (file, env, key, value, rule) in cases {
        let (k, v, r) = invalid(parse(file, env));
        assert_eq!(k, *key, "{file} {env:?}");
        assert!(v.contains(value), "value {v:?} should contain {value:?}");
        assert!(r.contains(rule), "rule {r:?} should contain {rule:?}");
    }
}

#[test]
fn a_lone_secret_is_refused_without_showing_it() {
    let (key, value, rule) = invalid(parse(r#"bucket = "b-1""#, &[("S3_SECRET_ACCESS_KEY", "hunter2")]));
    assert_eq!(key, "storage.s3.secret_access_key");
    assert!(!value.contains("hunter2"), "{value}");
    assert!(value.contains("<redacted>"));
    assert!(rule.contains("access_key_id"));
}

#[test]
fn unknown_keys_are_rejected() {
    let (key, _, rule) = invalid(parse("bucket = \"b-1\"\ncolour = \"red\"", &[]));
    assert_eq!(key, "storage.s3");
    assert!(rule.contains("colour"), "{rule}");
}

#[test]
fn redacted_settings_hide_the_secret_and_reparse_to_the_same_settings() {
    let env = [("S3_ACCESS_KEY_ID", "AKID"), ("S3_SECRET_ACCESS_KEY", "hunter2")];
    let boxed = parse_boxed(r#"bucket = "b-1""#, &env);
    let shown = boxed.redacted();
    assert_eq!(shown["secret_access_key"].as_str(), Some("<redacted>"));
    assert_eq!(shown["access_key_id"].as_str(), Some("AKID"));
    assert!(!toml::to_string(&shown).unwrap().contains("hunter2"));
    assert!(!format!("{boxed:?}").contains("hunter2"), "Debug leaks the secret");
    assert!(!format!("{:?}", parse(r#"bucket = "b-1""#, &env).unwrap()).contains("hunter2"));
    // What --print-config shows is itself a valid [storage.s3] table.
    let env = Env::default();
    let again = backend::read::<S3Storage>(&context(&shown, &env)).unwrap();
    let again = S3Settings::resolve(&again).unwrap();
    assert_eq!(again.bucket, "b-1");
    assert_eq!(again.timeout, Duration::from_secs(30));
    assert_eq!(again.credentials.unwrap().secret_access_key.expose(), "<redacted>");
}

#[test]
fn the_core_loader_selects_s3_and_prints_it_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[storage]\nbackend = \"s3\"\n\n[storage.s3]\nbucket = \"artifacts\"\nmode = \"proxy\"\n")
        .unwrap();
    let env = Env::from_pairs([("S3_ACCESS_KEY_ID", "AKID"), ("S3_SECRET_ACCESS_KEY", "hunter2")]);
    let config = ConfigLoader::new(env).file(&path, true).unwrap().environment().build().unwrap();
    assert_eq!(config.backend, "s3");
    let printed = config.to_toml();
    assert!(printed.contains("[storage.s3]"), "{printed}");
    assert!(printed.contains("secret_access_key = \"<redacted>\""), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn the_registry_lists_s3_with_its_capabilities() {
    let line = externalsource_core::registry::describe_backends()
        .lines()
        .find(|l| l.starts_with("s3 "))
        .map(str::to_owned)
        .expect("s3 is linked");
    assert_eq!(line, "s3 shared (serves_http in mode=proxy) [externalsource-backend-s3]");
}

fn key() -> ObjectKey {
    ObjectKey::parse("artifacts/ns/src/abc.tar.gz").unwrap()
}

async fn url_of(tweak: impl FnOnce(&mut S3Settings)) -> String {
    let mut s = S3Settings::new("my-bucket");
    tweak(&mut s);
    host(S3Storage::new(s, true).await.unwrap(), Some("http://ignored-in-direct-mode")).url(&key())
}

#[tokio::test]
async fn direct_mode_urls() {
    assert_eq!(url_of(|_| {}).await, "https://my-bucket.s3.us-east-1.amazonaws.com/artifacts/ns/src/abc.tar.gz");
    assert_eq!(
        url_of(|s| {
            s.region = "eu-central-1".into();
            s.path_style = true;
        })
        .await,
        "https://s3.eu-central-1.amazonaws.com/my-bucket/artifacts/ns/src/abc.tar.gz"
    );
    assert_eq!(
        url_of(|s| {
            s.endpoint = Some("http://127.0.0.1:8333".into());
            s.path_style = true;
            s.prefix = "p/q/".into();
        })
        .await,
        "http://127.0.0.1:8333/my-bucket/p/q/artifacts/ns/src/abc.tar.gz"
    );
    assert_eq!(
        url_of(|s| s.endpoint = Some("https://s3.example.com".into())).await,
        "https://my-bucket.s3.example.com/artifacts/ns/src/abc.tar.gz"
    );
    assert_eq!(
        url_of(|s| {
            s.endpoint = Some("http://127.0.0.1:8333".into());
            s.public_url = Some("https://cdn.example.com/bucket".into());
            s.prefix = "p/".into();
        })
        .await,
        "https://cdn.example.com/bucket/p/artifacts/ns/src/abc.tar.gz"
    );
}

#[tokio::test]
async fn capabilities_and_urls_by_mode() {
    let direct = S3Storage::new(S3Settings::new("b-1"), false).await.unwrap();
    assert_eq!(direct.capabilities(), Capabilities { serves_http: false, shared: true });
    let mut proxy = S3Settings::new("b-1");
    proxy.mode = Mode::Proxy;
    proxy.prefix = "p/".into();
    let storage =
        host(S3Storage::new(proxy.clone(), true).await.unwrap(), Some("http://svc.ns.svc.cluster.local:8080/"));
    assert_eq!(storage.capabilities(), Capabilities { serves_http: true, shared: true });
    assert_eq!(storage.url(&key()), "http://svc.ns.svc.cluster.local:8080/artifacts/ns/src/abc.tar.gz");
    let err = S3Storage::new(proxy, false).await.unwrap_err();
    assert!(
        matches!(err, externalsource_core::BuildError::Config(_)),
        "a configuration problem, not an outage: {err:?}"
    );
    assert!(err.to_string().contains("storage.s3.mode") && err.to_string().contains("server.enabled"), "{err}");
}

#[tokio::test]
async fn build_through_the_trait_object() {
    let settings = parse_boxed(r#"bucket = "b-1""#, &[("S3_MODE", "proxy")]);
    let storage = settings.build(Some("http://a:1")).await.unwrap();
    assert_eq!(storage.name(), "s3");
    assert!(storage.capabilities().serves_http);
    assert!(settings.build(None).await.is_err());
}

#[test]
fn a_rejected_table_names_its_keys_never_its_values() {
    let text = "bucket = \"b-1\"\nsecret_access_key = \"wJalrXUtnFEMI-table-secret\"\naccess_key_id = \"AKIA1\"\nbukket = \"typo\"";
    let (key, value, rule) = invalid(parse(text, &[]));
    assert_eq!(key, "storage.s3");
    assert!(!value.contains("table-secret") && !rule.contains("table-secret"), "{value} / {rule}");
    assert!(value.contains("secret_access_key") && value.contains("bukket"), "names the keys: {value}");
    assert!(rule.contains("bukket"), "{rule}");
}
