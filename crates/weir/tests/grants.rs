//! Just-in-time access: `weir request` → approval → a grant policy sees (`context.granted`)
//! → `weir revoke` or expiry (by the clock file) closes the sessions that relied on it
//! within a second.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::time::{Duration, Instant};

/// A production target next to the harness's development one; approvals do not wait here
/// (the statement is refused at once with its request id), which keeps the flow visible.
fn gateway() -> Gateway {
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |cluster, _| {
            cluster
                .psql("app", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
                .unwrap();
            format!(
                r#"
[[target]]
name = "prod"
engine = "postgres"
environment = "production"
upstream = "127.0.0.1:{}"
database = "app"
user = "postgres"
password_file = "upstream-password"

[approvals]
timeout = "0s"
"#,
                cluster.port
            )
        },
    )
}

fn prod(g: &Gateway, user: &str, token: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=prod user={user} password={token} sslmode=disable",
        g.port
    )
}

/// `weir request` then `weir approve` by Bob: the grant's id.
fn granted(g: &Gateway, duration: &str) -> String {
    let out = g.weir(&[
        "request",
        "prod",
        "--for",
        duration,
        "--reason",
        "add the index for INC-42",
        "--as",
        "alice",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let request = stdout(&out).lines().last().unwrap().trim().to_owned();
    assert!(request.starts_with("r-"), "{}", stdout(&out));
    let listed = stdout(&g.weir(&["approvals"]));
    assert!(
        listed.contains(&request) && listed.contains("ACCESS prod FOR"),
        "{listed}"
    );
    let self_approve = g.weir(&["approve", &request, "--as", "alice"]);
    assert!(!self_approve.status.success());
    let ok = g.weir(&["approve", &request, "--as", "bob"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let grants = stdout(&g.weir(&["grants"]));
    let line = grants
        .lines()
        .find(|l| l.contains("alice") && l.contains("prod"))
        .unwrap_or_else(|| panic!("{grants}"));
    assert!(line.contains("approved by bob"), "{line}");
    line.split_whitespace().next().unwrap().to_owned()
}

/// Waits for the connection to be closed by the gateway; returns the error it ended with.
async fn closed(conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>) -> String {
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the session was not closed");
    eprintln!(
        "session closed {:?} after the grant ended",
        started.elapsed()
    );
    match ended.unwrap() {
        Err(e) => format!("{e:?}"),
        Ok(()) => String::new(),
    }
}

/// Runs `sql` until it succeeds: the gateway reads grants every 250 ms, so a grant approved
/// a moment ago may not be visible to the very next statement.
async fn once_granted(client: &tokio_postgres::Client, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.batch_execute(sql).await {
            Ok(()) => return,
            Err(e)
                if Instant::now() < deadline && format!("{e:?}").contains("approval required") =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

async fn connect(
    g: &Gateway,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) =
        tokio_postgres::connect(&prod(g, "alice", ALICE_TOKEN), tokio_postgres::NoTls)
            .await
            .unwrap();
    (client, tokio::spawn(conn))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lets_policy_through_and_revoking_it_ends_the_session() {
    let g = gateway();
    let (client, conn) = connect(&g).await;
    // Without a grant, DDL in production needs approval.
    let err = client
        .batch_execute("CREATE INDEX t_id ON t (id)")
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("weir.ddl-needs-approval-in-production"),
        "{err:?}"
    );
    let grant = tokio::task::block_in_place(|| granted(&g, "2h"));
    assert!(grant.starts_with("g-"), "{grant}");
    // The same session now holds the grant: policy lets the DDL through.
    once_granted(&client, "CREATE INDEX t_id ON t (id)").await;
    // Bob's session does not rely on Alice's grant, and survives its end.
    let (bob, bob_conn) =
        tokio_postgres::connect(&prod(&g, "bob", BOB_TOKEN), tokio_postgres::NoTls)
            .await
            .unwrap();
    let bob_conn = tokio::spawn(bob_conn);
    bob.simple_query("SELECT 1").await.unwrap();

    let out = tokio::task::block_in_place(|| g.weir(&["revoke", &grant]));
    assert!(out.status.success(), "{}", stderr(&out));
    let why = closed(conn).await;
    assert!(why.contains(&format!("access grant {grant}")), "{why}");
    assert!(why.contains("was revoked"), "{why}");
    assert!(bob.simple_query("SELECT 1").await.is_ok());
    drop(bob);
    let _ = bob_conn.await;
    // A new session has no grant: approval again.
    let (client, _conn) = connect(&g).await;
    let err = client.batch_execute("DROP INDEX t_id").await.unwrap_err();
    assert!(
        format!("{err:?}").contains("approval required") || format!("{err:?}").contains("denied"),
        "{err:?}"
    );
    assert!(tokio::task::block_in_place(|| stdout(&g.weir(&["grants"]))).is_empty());
    let trail = tokio::task::block_in_place(|| {
        stdout(&g.weir(&["audit", "search", "--decision", "revoked"]))
    });
    assert!(trail.contains(&grant), "{trail}");
    let trail = tokio::task::block_in_place(|| {
        stdout(&g.weir(&["audit", "search", "--decision", "ended_session"]))
    });
    assert!(trail.contains(&grant), "{trail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_grant_ends_its_sessions_by_the_clock() {
    let g = gateway();
    let grant = tokio::task::block_in_place(|| granted(&g, "2h"));
    let (client, conn) = connect(&g).await;
    once_granted(&client, "CREATE TABLE made_under_grant (id int)").await;
    // Two hours pass (by the clock file): the grant expires and the session is closed.
    g.set_clock_offset(2 * 3600 + 1);
    let why = closed(conn).await;
    assert!(why.contains(&format!("access grant {grant}")), "{why}");
    assert!(why.contains("expired"), "{why}");
    let trail = tokio::task::block_in_place(|| {
        stdout(&g.weir(&["audit", "search", "--decision", "expired"]))
    });
    assert!(trail.contains(&grant), "{trail}");
}
