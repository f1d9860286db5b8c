//! The CLI's configuration lookup (`--config`, then `$WEIR_CONFIG`, then `./weir.toml`) and
//! its error text: each error says what is wrong and what to do, once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Output};

const CONFIG: &str = r#"
[gateway]
postgres_listen = "127.0.0.1:6432"
store = "sqlite://weir.db"

[[identity.static]]
name = "alice"
kind = "human"
token = "alice-cli-token"

[[target]]
name = "app"
engine = "postgres"
environment = "development"
upstream = "127.0.0.1:5432"
database = "app"
user = "postgres"
password_env = "UNUSED_PASSWORD"
"#;

fn weir(dir: &Path, args: &[&str], config_env: Option<&Path>) -> Output {
    let mut c = Command::new(weir_bin());
    c.args(args).current_dir(dir).env_remove("WEIR_CONFIG");
    if let Some(p) = config_env {
        c.env("WEIR_CONFIG", p);
    }
    c.output().unwrap()
}

#[test]
fn the_configuration_is_found_by_flag_environment_or_working_directory() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("weir.toml"), CONFIG).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();

    // ./weir.toml
    let out = weir(home.path(), &["token", "list"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    // $WEIR_CONFIG, from another directory.
    let config = home.path().join("weir.toml");
    let out = weir(
        elsewhere.path(),
        &["token", "create", "--name", "ci", "--kind", "service"],
        Some(&config),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(home.path().join("weir.db").exists());
    // --config wins over both.
    let out = weir(
        elsewhere.path(),
        &["token", "list", "--config", config.to_str().unwrap()],
        Some(Path::new("/nonexistent/weir.toml")),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // None of them: the error says where Weir looked and what to do.
    let out = weir(elsewhere.path(), &["approvals"], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    for part in ["--config", "WEIR_CONFIG", "weir.toml"] {
        assert!(err.contains(part), "{err}");
    }
}

#[test]
fn an_unreadable_configuration_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(
        dir.path(),
        &["token", "list", "--config", "/nonexistent/weir.toml"],
        None,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/weir.toml"), "{err}");
}

#[test]
fn audit_verify_prints_its_two_lines_apart_when_the_streams_are_joined() {
    // A gateway that has written a trail (and its signing key).
    let g = Gateway::start();
    assert!(g.psql(&g.alice(), "SELECT 1;\n").status.success());
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' audit verify --config '{}' 2>&1",
            weir_bin(),
            g.config.display()
        ))
        .env_remove("WEIR_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok ") && l.ends_with(" events")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("signed checkpoints verified")),
        "{text}"
    );
}
