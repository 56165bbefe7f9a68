//! Bad input at start: the binary exits with one clear line naming the problem and how to fix
//! it, not a backtrace. No stack needed.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn bridge(args: &[&str], config: Option<&str>) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("mb-cli-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger-bridge"));
    if let Some(text) = config {
        let path = dir.join("config.yaml");
        std::fs::write(&path, text.replace("DIR", &dir.display().to_string())).unwrap();
        cmd.arg("-c").arg(path);
    }
    let out = cmd.args(args).env_remove("RUST_LOG").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn config(homeserver: &str, listen: &str, database: &str) -> String {
    format!(
        "homeserver: {{url: \"{homeserver}\", server_name: example.org, startup_wait_secs: 1}}\n\
         appservice: {{listen: \"{listen}\", as_token: a, hs_token: h}}\n\
         xmpp: {{profile: standard, domain: xmpp.example.org}}\n\
         database: {{url: \"{database}\", encryption_key: \"k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", connect_attempts: 1}}\n\
         bridge: {{permissions: {{example.org: user}}}}\nlogging: {{filter: \"off\"}}\n"
    )
}

/// The error output is the one line the binary prints for the operator.
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    lines[0]
}

#[test]
fn missing_config_says_where_to_put_one() {
    let (ok, err) = bridge(&["-c", "/nonexistent/config.yaml", "run"], None);
    assert!(!ok);
    assert!(
        one_line(&err)
            .contains("no configuration at /nonexistent/config.yaml; copy config.example.yaml"),
        "{err}"
    );
}

#[test]
fn broken_config_lists_every_problem() {
    let (ok, err) = bridge(
        &["check-config"],
        Some("homeserver: {url: ftp://x}\nxmpp: {port: 0}\ndatabase: {url: \"mysql://x\"}\n"),
    );
    assert!(!ok);
    for key in [
        "homeserver.server_name",
        "homeserver.url",
        "xmpp.domain",
        "xmpp.port",
        "database.url",
        "database.encryption_key",
        "appservice.as_token",
        "bridge.permissions",
    ] {
        assert!(
            err.contains(&format!("  - {key}")),
            "{key} missing from:\n{err}"
        );
    }
}

#[test]
fn port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, err) = bridge(
        &["run"],
        Some(&config(
            "http://127.0.0.1:1",
            &addr,
            "sqlite://DIR/bridge.db",
        )),
    );
    assert!(!ok);
    assert!(
        one_line(&err).contains(&format!("cannot listen on {addr} (appservice.listen)")),
        "{err}"
    );
}

#[test]
fn unreachable_homeserver_is_one_clear_line() {
    let (ok, err) = bridge(
        &["run"],
        Some(&config(
            "http://127.0.0.1:1",
            "127.0.0.1:0",
            "sqlite://DIR/bridge.db",
        )),
    );
    assert!(!ok);
    let line = one_line(&err);
    assert!(
        line.contains("cannot reach the homeserver at http://127.0.0.1:1")
            && line.contains("(homeserver.url)"),
        "{err}"
    );
}

#[test]
fn unreachable_database_is_one_clear_line_without_the_password() {
    let (ok, err) = bridge(
        &["run"],
        Some(&config(
            "http://127.0.0.1:1",
            "127.0.0.1:0",
            "postgres://bridge:s3cret@127.0.0.1:1/bridge",
        )),
    );
    assert!(!ok);
    let line = one_line(&err);
    assert!(
        line.contains("127.0.0.1:1") && !line.contains("s3cret"),
        "{err}"
    );
}
