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

    // "Things to try", top to bottom, run as printed (through a shell, as a user pastes them).
    let tries: Vec<&String> = banner
        .iter()
        .skip_while(|l| !l.starts_with("Things to try"))
        .take_while(|l| !l.starts_with("More:"))
        .filter(|l| !l.trim_start().starts_with('#') && l.starts_with("  "))
        .collect();
    assert_eq!(tries.len(), 8, "{text}");
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh = |line: &str| {
        Command::new("sh")
            .args(["-c", line.trim()])
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    // 1. A masked read.
    let out = sh(tries[0]);
    assert!(
        stdout(&out).contains("***"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // 2. A denial.
    let out = sh(tries[1]);
    assert!(
        stderr(&out).contains("weir: denied by weir.where-required-in-production"),
        "{}",
        stderr(&out)
    );
    // 3. An agent's write, refused by the demo's rule.
    let out = sh(tries[2]);
    assert!(
        stderr(&out).contains("weir: denied by demo.agents-never-write-in-production"),
        "{}",
        stderr(&out)
    );
    // 4. A statement that waits, approved from "a second terminal".
    let waiting = Command::new("sh")
        .args(["-c", tries[3].trim()])
        .env("PATH", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stdout(&sh(tries[4])).trim().is_empty() {
        assert!(Instant::now() < deadline, "no pending approval appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
    let approved = sh(tries[5]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    let done = waiting.wait_with_output().unwrap();
    assert!(
        stdout(&done).contains("CREATE INDEX"),
        "{}{}",
        stdout(&done),
        stderr(&done)
    );
    // 5. The trail verifies and holds the session's events.
    let out = sh(tries[6]);
    let verified = stdout(&out);
    let n: u64 = verified
        .strip_prefix("ok ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{verified}{}", stderr(&out)));
    assert!(n > 10, "{verified}");
    // 6. Replay of alice's last session: her approved CREATE INDEX.
    let out = sh(tries[7]);
    assert!(
        stdout(&out).to_lowercase().contains("create index"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // The MariaDB lines, when the machine has MariaDB (CI does): masked, then denied.
    let mariadb: Vec<&String> = banner
        .iter()
        .filter(|l| l.trim_start().starts_with("mariadb -h"))
        .collect();
    if weir::mariadb::Mariadb::available() {
        assert!(text.contains("shop_mysql (MariaDB, production)"), "{text}");
        assert_eq!(mariadb.len(), 2, "{text}");
        let out = sh(mariadb[0]);
        assert!(
            out.status.success() && stdout(&out).contains("***"),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        let out = sh(mariadb[1]);
        assert!(
            stderr(&out).contains("weir: denied by weir.where-required-in-production"),
            "{}",
            stderr(&out)
        );
    }

    // The console line: the page is served, and dana's token signs in to it with the
    // approvals, sessions and the trail.
    let console = banner
        .iter()
        .find(|l| l.starts_with("The web console: "))
        .unwrap_or_else(|| panic!("{text}"));
    let url = console
        .trim_start_matches("The web console: ")
        .split_whitespace()
        .next()
        .unwrap();
    let page = Command::new("curl").args(["-s", url]).output().unwrap();
    assert!(stdout(&page).contains("Weir console"), "{}", stdout(&page));
    let me = Command::new("curl")
        .args(["-s", "-X", "POST", "-d", "{\"token\":\"dana-demo-token\"}"])
        .arg(format!("{url}console/login"))
        .output()
        .unwrap();
    let me: serde_json::Value = serde_json::from_slice(&me.stdout).unwrap();
    assert_eq!(me["identity"], "dana", "{me}");
    for op in [
        "view_approvals",
        "view_sessions",
        "read_audit",
        "simulate_policy",
    ] {
        assert_eq!(me["may"][op], true, "{op}: {me}");
    }

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
