//! `GET /metrics`: what a Prometheus scrape of a running `weir serve` sees after real psql
//! sessions — statements by decision, active sessions, audit events, failed logins — and
//! that no identity name, token or SQL text is in it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::io::{Read, Write};

/// A gateway with `http_listen` on a free port; returns it and the port.
fn gateway() -> (Gateway, u16) {
    let port = weir::cluster::free_port().unwrap();
    let mut g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |c, _| {
            c.psql(
                "app",
                "CREATE TABLE people (id int PRIMARY KEY, email text); \
                 INSERT INTO people VALUES (1, 'pat@example.com'), (2, 'sam@example.com');",
            )
            .unwrap();
            format!(
                "\n[[target]]\nname = \"prod\"\nengine = \"postgres\"\nenvironment = \"production\"\nupstream = \"127.0.0.1:{}\"\ndatabase = \"app\"\nuser = \"postgres\"\npassword_file = \"upstream-password\"\n",
                c.port
            )
        },
    );
    let config = std::fs::read_to_string(&g.config).unwrap().replacen(
        "[gateway]\n",
        &format!("[gateway]\nhttp_listen = \"127.0.0.1:{port}\"\n"),
        1,
    );
    std::fs::write(&g.config, config).unwrap();
    g.terminate();
    g.restart();
    (g, port)
}

/// One scrape: the status line, the content type and the body.
fn scrape(port: u16) -> (String, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// The value of the sample `name{labels}` (labels as printed, in order), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[test]
fn a_scrape_counts_statements_sessions_and_the_trail_and_names_nobody() {
    let (g, port) = gateway();
    let prod = g
        .conninfo("alice", ALICE_TOKEN)
        .replace("dbname=app", "dbname=prod");
    let out = g.psql(&prod, "SELECT email FROM people; SELECT 1;");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = g.psql(&prod, "DELETE FROM people;");
    assert!(
        stderr(&out).contains("weir.where-required-in-production"),
        "{}",
        stderr(&out)
    );
    let out = g.psql(&g.conninfo("alice", "not-a-token"), "SELECT 1;");
    assert!(!out.status.success());

    // A session held open while scraping is counted as active.
    let mut held = std::process::Command::new(weir::cluster::bindir().unwrap().join("psql"))
        .args([prod.as_str(), "-X", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = held.stdin.take().unwrap();
    writeln!(stdin, "SELECT 1;").unwrap();
    stdin.flush().unwrap();

    let (status, content_type, body) = (0..100)
        .find_map(|_| {
            let s = scrape(port);
            let active = sample(
                &s.2,
                "weir_sessions_active{target=\"prod\",identity_kind=\"human\",channel=\"wire\"}",
            );
            if active == Some(1.0) {
                Some(s)
            } else {
                std::thread::sleep(std::time::Duration::from_millis(50));
                None
            }
        })
        .expect("the held session is counted as active");
    drop(stdin);
    let _ = held.wait();

    assert!(status.contains("200"), "{status}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    assert_eq!(
        sample(
            &body,
            "weir_statements_total{decision=\"allow\",kind=\"select\",target=\"prod\"}"
        ),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "weir_statements_total{decision=\"deny\",kind=\"delete\",target=\"prod\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "weir_auth_failures_total{reason=\"unknown_token\"}"),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, "weir_sessions_opened_total{target=\"prod\"}").is_some_and(|n| n >= 3.0),
        "{body}"
    );
    assert!(
        sample(&body, "weir_audit_events_total").is_some_and(|n| n >= 8.0),
        "{body}"
    );
    assert!(
        sample(&body, "weir_audit_flush_seconds_count").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert!(
        sample(&body, "weir_request_duration_seconds_count").is_some_and(|n| n >= 2.0),
        "{body}"
    );
    assert!(
        sample(&body, "weir_rows_masked_total{target=\"prod\"}").is_some_and(|n| n >= 2.0),
        "{body}"
    );
    assert!(body.contains("weir_approvals_pending 0"), "{body}");
    for direction in ["to_client", "to_upstream"] {
        assert!(
            sample(
                &body,
                &format!("weir_relayed_bytes_total{{direction=\"{direction}\"}}")
            )
            .is_some_and(|n| n > 0.0),
            "{body}"
        );
    }
    assert!(
        body.contains("weir_analysis_cache_lookups_total{result=\"miss\"}"),
        "{body}"
    );
    // Nothing names an identity, a token or a statement.
    for secret in [
        "alice",
        ALICE_TOKEN,
        "not-a-token",
        "people",
        "SELECT",
        "DELETE",
        "email",
    ] {
        assert!(!body.contains(secret), "{secret} in the metrics:\n{body}");
    }
}
