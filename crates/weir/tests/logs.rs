//! Structured logs: with `WEIR_LOG_FORMAT=json` (the same as `--log-format json`) every line
//! `weir serve` writes is one JSON object, a session's lines carry the session's id,
//! identity and target, and no line holds a token or the upstream password.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

#[test]
fn json_logs_carry_the_session_and_never_a_secret() {
    // `[log] format = "json"` in the config file, with no flag and no variable.
    let g = Gateway::start_with(
        Options {
            fast: true,
            ..Default::default()
        },
        "\n[log]\nformat = \"json\"\n",
    );
    let out = g.psql(&g.alice(), "SELECT 1;");
    assert!(out.status.success(), "{}", stderr(&out));
    let log = g.log();
    assert!(log.lines().count() > 3, "{log}");
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
    drop(g);

    // This file's only test: the variable reaches the gateway this process spawns.
    std::env::set_var("WEIR_LOG_FORMAT", "json");
    let g = Gateway::start();
    let out = g.psql(&g.conninfo("alice", ALICE_TOKEN), "SELECT 1;");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = g.psql(&g.conninfo("alice", "wrong-token-in-the-log?"), "SELECT 1;");
    assert!(!out.status.success());
    let upstream = std::fs::read_to_string(g.dir.path().join("upstream-password")).unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = g.log();
        if log.contains("session ended") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{log}");
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "session started")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(started["span"]["identity"], "alice", "{started}");
    assert_eq!(started["span"]["target"], "app", "{started}");
    assert!(started["span"]["id"].is_number(), "{started}");
    let ended = lines
        .iter()
        .find(|l| l["fields"]["message"] == "session ended")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(ended["span"]["identity"], "alice", "{ended}");
    for secret in [ALICE_TOKEN, "wrong-token-in-the-log?", upstream.trim()] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
}
