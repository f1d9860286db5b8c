//! Drivers from other languages through the gateway: psycopg 3 (Python), node-postgres (Node)
//! and pgjdbc (Java, what DBeaver and DataGrip use). The scripts live in `tests/clients/`;
//! `scripts/test` installs their packages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::process::Command;

/// Pgjdbc from Debian's `libpostgresql-jdbc-java`, run with Java's source launcher.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

fn run_client(g: &Gateway, program: &str, script: &str, sslmode: &str) {
    run_client_with(g, program, &[], script, sslmode);
}

/// Runs `program [args...] <script>` from the script's directory against the gateway.
fn run_client_with(g: &Gateway, program: &str, args: &[&str], script: &str, sslmode: &str) {
    let root = repo_root();
    let out = Command::new(program)
        .args(args)
        .arg(root.join(script))
        .current_dir(root.join(script).parent().unwrap())
        .env("WEIR_HOST", "127.0.0.1")
        .env("WEIR_PORT", g.port.to_string())
        .env("WEIR_USER", "alice")
        .env("WEIR_PASSWORD", ALICE_TOKEN)
        .env("WEIR_DB", "app")
        .env("WEIR_SSLMODE", sslmode)
        .env("WEIR_MASKING", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test installs it): {e}"));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "{script} failed:\n{text}\n--- gateway log ---\n{}",
        g.log()
    );
    assert!(text.contains(" passed, 0 failed"), "{text}");
    eprintln!("{text}");
}

#[test]
fn psycopg3_through_the_gateway() {
    let g = Gateway::start();
    run_client(
        &g,
        "python3",
        "tests/clients/python/test_psycopg.py",
        "disable",
    );
}

#[test]
fn psycopg3_over_tls() {
    let g = Gateway::start();
    run_client(
        &g,
        "python3",
        "tests/clients/python/test_psycopg.py",
        "require",
    );
}

#[test]
fn node_postgres_through_the_gateway() {
    let g = Gateway::start();
    run_client(&g, "node", "tests/clients/node/test.js", "disable");
}

fn run_pgjdbc(sslmode: &str) {
    assert!(
        std::path::Path::new(PGJDBC_JAR).exists(),
        "{PGJDBC_JAR} is missing (scripts/test installs libpostgresql-jdbc-java)"
    );
    let g = Gateway::start();
    run_client_with(
        &g,
        "java",
        &["-cp", PGJDBC_JAR],
        "tests/clients/java/WeirJdbc.java",
        sslmode,
    );
}

#[test]
fn pgjdbc_through_the_gateway() {
    run_pgjdbc("disable");
}

#[test]
fn pgjdbc_over_tls() {
    run_pgjdbc("require");
}
