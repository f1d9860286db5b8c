//! `weir demo`: starts from nothing, serves the printed psql lines, and removes everything
//! on Ctrl-C.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_runs_serves_the_printed_lines_and_cleans_up() {
    let port = weir::cluster::free_port().unwrap();
    let mut child = Command::new(weir_bin())
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child_out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(child_out).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !banner.iter().any(|l: &String| l.contains("Ctrl-C")) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo banner");
        banner.push(line);
    }
    let text = banner.join("\n");
    let data_dir = text
        .split("config: ")
        .nth(1)
        .and_then(|s| s.split("/weir.toml").next())
        .map(std::path::PathBuf::from)
        .unwrap();
    assert!(data_dir.exists());

    // Every identity line works as printed; the data holds PII to protect.
    let bindir = weir::cluster::bindir().unwrap();
    for line in banner
        .iter()
        .filter(|l| l.trim_start().starts_with("psql \"") && !l.contains("wrong"))
    {
        let conn = line.split('"').nth(1).unwrap();
        let out = Command::new(bindir.join("psql"))
            .args([
                conn,
                "-XAtc",
                "SELECT count(*) FROM customers WHERE email LIKE '%@%' AND card_number IS NOT NULL",
            ])
            .output()
            .unwrap();
        assert_eq!(stdout(&out).trim(), "1000", "{line}: {}", stderr(&out));
    }
    let wrong = banner
        .iter()
        .find(|l| l.contains("password=wrong"))
        .unwrap();
    let out = Command::new(bindir.join("psql"))
        .args([wrong.split('"').nth(1).unwrap(), "-XAtc", "SELECT 1"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );

    // Ctrl-C removes everything it made.
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!data_dir.exists(), "{} left behind", data_dir.display());
}
