//! Approvals while the client waits, with real clients: psql and tokio-postgres hold a
//! statement open while `weir approvals | approve | deny` decide it from another process.
//! Time moves by the gateway's clock file, never by sleeping.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::time::{Duration, Instant};

const CAROL_TOKEN: &str = "carol-oncall-token";
const DAVE_TOKEN: &str = "dave-agent-token";

const POLICY: &str = r#"
@id("test.deletes-need-approval")
@outcome("approve")
@reason("deletes need a second pair of eyes")
forbid (principal, action == Weir::Action::"delete", resource);

@id("test.oncall-approves-itself")
permit (principal in Weir::Group::"oncall", action == Weir::Action::"auto_approve", resource);
"#;

fn gateway() -> Gateway {
    gateway_waiting("120s")
}

fn gateway_waiting(timeout: &'static str) -> Gateway {
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |cluster, dir| {
            cluster
                .psql(
                    "app",
                    "CREATE TABLE items (id int PRIMARY KEY, name text);
                     INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20) g;",
                )
                .unwrap();
            std::fs::write(dir.join("approve.cedar"), POLICY).unwrap();
            format!(
                r#"
[[identity.static]]
name = "carol"
kind = "human"
groups = ["oncall"]
token = "{CAROL_TOKEN}"

[[identity.static]]
name = "dave"
kind = "agent"
groups = ["dba"]
token = "{DAVE_TOKEN}"

[policy]
files = ["approve.cedar"]

[approvals]
timeout = "{timeout}"
auto_repeat_window = "1h"
approvers = ["dba"]
"#
            )
        },
    )
}

/// The pending requests (`weir approvals`), once there are `n`: (id, whole line).
fn pending(g: &Gateway, n: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = g.weir(&["approvals"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let lines: Vec<(String, String)> = stdout(&out)
            .lines()
            .map(|l| {
                (
                    l.split_whitespace().next().unwrap().to_owned(),
                    l.to_owned(),
                )
            })
            .collect();
        if lines.len() == n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} pending requests, have {lines:?}\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rows(g: &Gateway, sql: &str) -> String {
    g.cluster.psql("app", sql).unwrap().trim().to_owned()
}

fn approval_events(g: &Gateway, id: &str) -> Vec<String> {
    let out = g.weir(&["audit", "export", "--format", "jsonl"]);
    stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let body = &v["event"];
            (body["event"] == "approval" && (body["id"] == id || body["rode_on"] == id))
                .then(|| body["decision"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

#[test]
fn an_approval_releases_the_waiting_statement() {
    let g = gateway();
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            g.psql(
                &g.alice(),
                "\\set VERBOSITY verbose\nDELETE FROM items WHERE id = 1;\nSELECT count(*) FROM items;\n",
            )
        });
        let p = pending(&g, 1);
        let (id, line) = &p[0];
        assert!(id.starts_with("r-"), "{line}");
        assert!(line.contains("alice"), "{line}");
        assert!(line.contains("test.deletes-need-approval"), "{line}");
        assert!(line.contains("DELETE FROM items WHERE id = $1"), "{line}");
        // Still waiting: nothing ran.
        assert_eq!(rows(&g, "SELECT count(*) FROM items WHERE id = 1"), "1");
        assert!(!client.is_finished());
        // Not everyone may approve.
        let refused = g.weir(&["approve", id, "--as", "alice"]);
        assert!(!refused.status.success());
        assert!(
            stderr(&refused).contains("alice may not approve"),
            "{}",
            stderr(&refused)
        );
        let ok = g.weir(&["approve", id, "--as", "bob"]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        let out = client.join().unwrap();
        let so = stdout(&out);
        let se = stderr(&out);
        assert!(so.contains("19"), "{so}\n{se}");
        assert!(
            se.contains(&format!("waiting for approval of request {id}")),
            "{se}"
        );
        assert_eq!(rows(&g, "SELECT count(*) FROM items WHERE id = 1"), "0");
        // Approving twice does nothing.
        let again = g.weir(&["approve", id, "--as", "bob"]);
        assert!(
            stderr(&again).contains("already approved (by bob)"),
            "{}",
            stderr(&again)
        );
        assert_eq!(
            approval_events(&g, id),
            ["requested", "approved", "released"]
        );
    });
}

#[test]
fn denial_and_timeout_reach_the_client_as_42501_naming_the_request() {
    let g = gateway();
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            g.psql(
                &g.alice(),
                "\\set VERBOSITY verbose\nDELETE FROM items WHERE id = 2;\n",
            )
        });
        let id = pending(&g, 1)[0].0.clone();
        let no_reason = g.weir(&["deny", &id, "--as", "bob"]);
        assert!(!no_reason.status.success());
        let out = g.weir(&[
            "deny",
            &id,
            "--as",
            "bob",
            "--reason",
            "not during the freeze",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let se = stderr(&client.join().unwrap());
        assert!(
            se.contains(&format!(
                "ERROR:  42501: weir: approval request {id} was denied by bob: not during the freeze"
            )),
            "{se}"
        );
        assert_eq!(approval_events(&g, &id), ["requested", "denied"]);

        // Nobody answers: the wait ends when the clock passes the timeout.
        let client = s.spawn(|| {
            g.psql(
                &g.alice(),
                "\\set VERBOSITY verbose\nDELETE FROM items WHERE id = 3;\n",
            )
        });
        let id = pending(&g, 1)[0].0.clone();
        g.set_clock_offset(121);
        let se = stderr(&client.join().unwrap());
        assert!(
            se.contains(&format!(
                "ERROR:  42501: weir: approval request {id} timed out"
            )),
            "{se}"
        );
        let late = g.weir(&["approve", &id, "--as", "bob"]);
        assert!(!late.status.success());
        assert!(stderr(&late).contains("expired"), "{}", stderr(&late));
        assert_eq!(approval_events(&g, &id), ["requested", "expired"]);
        assert_eq!(
            rows(&g, "SELECT count(*) FROM items WHERE id IN (2, 3)"),
            "2"
        );
    });
}

#[test]
fn two_clients_wait_at_once_and_each_approval_releases_only_its_own() {
    let g = gateway();
    std::thread::scope(|s| {
        let first = s.spawn(|| g.psql(&g.alice(), "DELETE FROM items WHERE id = 4;\n"));
        pending(&g, 1);
        let second = s.spawn(|| {
            g.psql(
                &g.conninfo("bob", BOB_TOKEN),
                "DELETE FROM items WHERE name = 'item 5';\n",
            )
        });
        let p = pending(&g, 2);
        // Other sessions carry on while both wait.
        let other = g.psql(&g.alice(), "SELECT count(*) FROM items;\n");
        assert_eq!(stdout(&other).trim(), "20");
        let (second_id, _) = p.iter().find(|(_, l)| l.contains("name = $1")).unwrap();
        let (first_id, _) = p.iter().find(|(_, l)| l.contains("id = $1")).unwrap();
        // Alice approves Bob's request? She is no approver. Bob's own? Not his own either.
        let own = g.weir(&["approve", second_id, "--as", "bob"]);
        assert!(stderr(&own).contains("own request"), "{}", stderr(&own));
        // An agent in the approver group does not approve either.
        let agent = g.weir(&["approve", first_id, "--as", "dave"]);
        assert!(!agent.status.success());
        // Bob approves Alice's: only hers runs.
        assert!(g
            .weir(&["approve", first_id, "--as", "bob"])
            .status
            .success());
        let out = first.join().unwrap();
        assert!(stdout(&out).contains("DELETE 1") || stderr(&out).is_empty());
        assert_eq!(pending(&g, 1)[0].0, *second_id);
        assert!(!second.is_finished());
        assert_eq!(
            rows(&g, "SELECT count(*) FROM items WHERE id IN (4, 5)"),
            "1"
        );
        assert!(g
            .weir(&["deny", second_id, "--reason", "no"])
            .status
            .success());
        let se = stderr(&second.join().unwrap());
        assert!(se.contains("denied"), "{se}");
        assert_eq!(
            rows(&g, "SELECT count(*) FROM items WHERE id IN (4, 5)"),
            "1"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_does_not_run_when_approved_later() {
    let g = gateway();
    let client = g.connect("alice", ALICE_TOKEN).await.unwrap();
    let cancel = client.cancel_token();
    let waiting = tokio::spawn(async move {
        let r = client.execute("DELETE FROM items WHERE id = 6", &[]).await;
        (client, r)
    });
    let id = tokio::task::block_in_place(|| pending(&g, 1))[0].0.clone();
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (client, result) = waiting.await.unwrap();
    let err = result.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err:?}"
    );
    // The session goes on.
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
    tokio::task::block_in_place(|| {
        let late = g.weir(&["approve", &id, "--as", "bob"]);
        assert!(!late.status.success());
        assert!(stderr(&late).contains("cancelled"), "{}", stderr(&late));
        assert_eq!(rows(&g, "SELECT count(*) FROM items WHERE id = 6"), "1");
        assert_eq!(approval_events(&g, &id), ["requested", "cancelled"]);
    });

    // A client that goes away while waiting withdraws its request too.
    let mut psql = std::process::Command::new(g.cluster.bindir().join("psql"))
        .arg(g.alice())
        .args(["-X", "-c", "DELETE FROM items WHERE id = 7"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::task::block_in_place(|| {
        let id = pending(&g, 1)[0].0.clone();
        psql.kill().unwrap();
        psql.wait().unwrap();
        pending(&g, 0);
        let late = g.weir(&["approve", &id, "--as", "bob"]);
        assert!(stderr(&late).contains("cancelled"), "{}", stderr(&late));
        assert_eq!(rows(&g, "SELECT count(*) FROM items WHERE id = 7"), "1");
    });
}

#[test]
fn repeats_and_policy_approvals_run_without_asking() {
    let g = gateway();
    let first = std::thread::scope(|s| {
        let client = s.spawn(|| g.psql(&g.alice(), "DELETE FROM items WHERE id = 8;\n"));
        let id = pending(&g, 1)[0].0.clone();
        assert!(g.weir(&["approve", &id, "--as", "bob"]).status.success());
        client.join().unwrap();
        id
    });
    // The same statement (other constants) by the same identity runs on that approval.
    let out = g.psql(&g.alice(), "DELETE FROM items WHERE id = 9;\n");
    assert_eq!(stdout(&out).trim(), "DELETE 1", "{}", stderr(&out));
    assert_eq!(
        approval_events(&g, &first),
        ["requested", "approved", "released", "repeated"]
    );
    // Another identity does not ride on Alice's approval.
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            g.psql(
                &g.conninfo("bob", BOB_TOKEN),
                "DELETE FROM items WHERE id = 10;\n",
            )
        });
        let id = pending(&g, 1)[0].0.clone();
        assert!(g.weir(&["deny", &id, "--reason", "no"]).status.success());
        client.join().unwrap();
    });
    // Two hours on, the approval no longer covers it.
    g.set_clock_offset(2 * 3600);
    std::thread::scope(|s| {
        let client = s.spawn(|| g.psql(&g.alice(), "DELETE FROM items WHERE id = 11;\n"));
        let id = pending(&g, 1)[0].0.clone();
        assert!(g.weir(&["deny", &id, "--reason", "stale"]).status.success());
        assert!(stderr(&client.join().unwrap()).contains("stale"));
    });
    // Policy approves the on-call engineer's deletes itself, on the record.
    let out = g.psql(
        &g.conninfo("carol", CAROL_TOKEN),
        "DELETE FROM items WHERE id = 12;\n",
    );
    assert_eq!(stdout(&out).trim(), "DELETE 1", "{}", stderr(&out));
    let search = g.weir(&["audit", "search", "--decision", "auto_approved"]);
    assert!(stdout(&search).contains("carol"), "{}", stdout(&search));
    assert_eq!(
        rows(
            &g,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM items WHERE id BETWEEN 8 AND 12"
        ),
        "10,11"
    );
}

#[test]
fn with_no_wait_the_request_stays_open_and_the_retry_rides_on_its_approval() {
    let g = gateway_waiting("0s");
    let out = g.psql(
        &g.alice(),
        "\\set VERBOSITY verbose\nDELETE FROM items WHERE id = 13;\n",
    );
    let se = stderr(&out);
    assert!(
        se.contains("ERROR:  42501: weir: denied by test.deletes-need-approval: approval required"),
        "{se}"
    );
    let id = pending(&g, 1)[0].0.clone();
    assert!(
        se.contains(&format!(
            "(request {id}: once it is approved, run the statement again within 1h)"
        )),
        "{se}"
    );
    assert!(g.weir(&["approve", &id, "--as", "bob"]).status.success());
    let out = g.psql(&g.alice(), "DELETE FROM items WHERE id = 13;\n");
    assert_eq!(stdout(&out).trim(), "DELETE 1", "{}", stderr(&out));
    assert_eq!(
        approval_events(&g, &id),
        ["requested", "approved", "repeated"]
    );
}
