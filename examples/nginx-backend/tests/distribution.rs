//! The distribution binary: the stock controller with this backend linked beside the stock ones.

use std::process::Command;

fn controller(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_externalsource-controller-nginx"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run the distribution binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_binary_links_the_nginx_backend_beside_the_stock_ones() {
    let (code, listed) = controller(&[], &["--list-backends"]);
    assert_eq!(code, 0, "{listed}");
    assert!(listed.lines().any(|l| l == "nginx shared [example-nginx-backend]"), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("memory ")), "{listed}");
}

#[test]
fn its_settings_print_redacted_and_a_missing_url_is_a_configuration_error() {
    let env = [
        ("STORAGE_BACKEND", "nginx"),
        ("NGINX_URL", "http://nginx.store.svc:8080/artifacts/"),
        ("NGINX_USERNAME", "controller"),
        ("NGINX_PASSWORD", "hunter2"),
    ];
    let (code, printed) = controller(&env, &["--print-config"]);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("[storage.nginx]") && printed.contains("url = \"http://nginx.store.svc:8080/artifacts\""));
    assert!(printed.contains("password = \"<redacted>\"") && !printed.contains("hunter2"), "{printed}");
    let (code, error) = controller(&[("STORAGE_BACKEND", "nginx")], &["--print-config"]);
    assert_eq!(code, 2, "{error}");
    assert!(error.contains("storage.nginx") && error.contains("url"), "{error}");
}
