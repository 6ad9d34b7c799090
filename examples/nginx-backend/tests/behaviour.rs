//! The core behaviour suite against a real nginx (WebDAV module, JSON autoindex) on loopback, plus
//! what is particular to this backend: settings, a refused write, a server that is down.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use externalsource_core::backend::{self, Hosted};
use externalsource_core::registry::{BackendContext, Env};
use externalsource_core::testing::{Fixture, PutBytes};
use externalsource_core::{Backend, ObjectKey, OpenContext, Storage, StorageError};
use nginx_backend::{Nginx, NginxSettings};

/// An nginx serving a fresh directory; killed when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `methods`: the WebDAV methods allowed (none makes a read-only server).
fn nginx(methods: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = dir.path().display();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    let conf = format!(
        "daemon off; master_process off; pid {root}/nginx.pid; error_log {root}/error.log;\n\
         events {{}}\n\
         http {{ access_log off; client_body_temp_path {root}/tmp; client_max_body_size 0;\n\
           server {{ listen 127.0.0.1:{port}; root {root}/www;\n\
             location /store/ {{ dav_methods {methods}; create_full_put_path on; autoindex on; autoindex_format json; }}\n\
           }} }}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .args(["-p", &root.to_string(), "-c", "nginx.conf", "-e", &format!("{root}/error.log")])
        .spawn()
        .expect("nginx is installed (tests/run-all.sh installs it)");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::create_dir(dir.path().join("www/store")).unwrap();
    Server { child, url: format!("http://127.0.0.1:{port}/store"), _dir: dir }
}

fn read(table: &str, env: &[(&str, &str)]) -> Result<NginxSettings, String> {
    let (table, env) = (toml::from_str(table).unwrap(), Env::from_pairs(env.iter().copied()));
    backend::read::<Nginx>(&BackendContext { table: &table, env: &env }).map_err(|e| e.to_string())
}

async fn open(url: &str) -> Hosted<Nginx> {
    let settings = read(&format!("url = \"{url}\"\ntimeout = \"2s\""), &[]).unwrap();
    Hosted::new(Nginx::open(&settings, &OpenContext { artifact_server: true }).await.unwrap(), None)
}

async fn fixture() -> Fixture {
    let server = nginx("PUT DELETE");
    let storage = open(&server.url).await;
    let base = format!("{}/", server.url);
    Fixture::new(std::sync::Arc::new(storage)).with_url_base(base).with_guard(server)
}

externalsource_core::behaviour_suite!(fixture);

#[test]
fn settings_need_a_url_take_the_environment_and_never_print_the_password() {
    let err = read("", &[]).unwrap_err();
    assert!(err.contains("storage.nginx") && err.contains("missing field `url`"), "{err}");
    let err = read("url = \"ftp://x\"", &[]).unwrap_err();
    assert!(err.contains("storage.nginx.url") && err.contains("http://"), "{err}");
    let env = [("NGINX_URL", "http://dav.example/a/"), ("NGINX_USERNAME", "ci"), ("NGINX_PASSWORD", "hunter2")];
    let parsed =
        backend::parse::<Nginx>(&BackendContext { table: &toml::Table::new(), env: &Env::from_pairs(env) }).unwrap();
    let printed = toml::to_string(&parsed.redacted()).unwrap();
    assert!(printed.contains("url = \"http://dav.example/a\"") && printed.contains("<redacted>"), "{printed}");
    assert!(!printed.contains("hunter2") && !format!("{parsed:?}").contains("hunter2"), "{printed}");
}

#[tokio::test]
async fn a_refused_write_and_a_stopped_server_are_typed_errors() {
    let read_only = nginx("off");
    let key = ObjectKey::parse("artifacts/ns/s/x.tar.gz").unwrap();
    let storage = open(&read_only.url).await;
    let refused = storage.put_bytes(&key, "x".into()).await.unwrap_err();
    assert!(matches!(refused, StorageError::Unavailable { .. }), "405 is not a success: {refused:?}");
    drop(read_only);
    let err = storage.stat(&key).await.unwrap_err();
    assert!(err.is_transient(), "a server that is down is an outage: {err:?}");
    assert!(storage.list("artifacts/").await.unwrap_err().is_transient());
}
