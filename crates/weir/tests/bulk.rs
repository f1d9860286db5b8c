//! The zero-config guard for destructive batch writes: in production every UPDATE, DELETE
//! and MERGE runs under `[policy] bulk_write_rows` (default 1000); over it the write is rolled
//! back and waits for approval naming the exact count. A key-equality write runs without the
//! bracket (PostgreSQL's own log shows it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::time::{Duration, Instant};

fn gateway(extra: &str) -> Gateway {
    let extra = extra.to_owned();
    Gateway::start_custom(
        Options {
            fast: true,
            settings: vec![("log_statement".into(), "all".into())],
        },
        move |c, _| {
            c.psql(
                "app",
                "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL DEFAULT 'new');
                 INSERT INTO orders (id) SELECT generate_series(1, 1500);
                 CREATE TABLE pairs (a int, b int, note text, PRIMARY KEY (a, b));
                 INSERT INTO pairs SELECT i, i, '' FROM generate_series(1, 10) i;",
            )
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

[[identity.static]]
name = "claude"
kind = "agent"
groups = ["agents"]
token = "claude-test-token"

[approvals]
timeout = "60s"
approvers = ["dba"]
{extra}
"#,
                c.port
            )
        },
    )
}

fn prod(g: &Gateway, user: &str, token: &str) -> String {
    g.conninfo(user, token).replace("dbname=app", "dbname=prod")
}

fn sql(g: &Gateway, q: &str) -> String {
    g.cluster.psql("app", q).unwrap().trim().to_owned()
}

fn pending(g: &Gateway) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = stdout(&g.weir(&["approvals"]));
        if let Some(line) = out.lines().next() {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no pending request\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_where_that_restricts_nothing_waits_with_the_exact_count() {
    let g = gateway("");
    let alice = prod(&g, "alice", ALICE_TOKEN);
    // Denied: nothing changed.
    std::thread::scope(|s| {
        let client = s.spawn(|| g.psql(&alice, "DELETE FROM orders WHERE id > 0;\n"));
        let line = pending(&g);
        assert!(
            line.contains("this DELETE would change 1,500 rows, more than the 1,000 allowed (weir.bulk-write-needs-approval-in-production)"),
            "{line}"
        );
        assert_eq!(sql(&g, "SELECT count(*) FROM orders"), "1500");
        let id = line.split_whitespace().next().unwrap().to_owned();
        assert!(g
            .weir(&["deny", &id, "--as", "bob", "--reason", "no"])
            .status
            .success());
        let out = client.join().unwrap();
        // The waiting client was told the request, the count and the rule.
        assert!(
            stderr(&out).contains(&format!("waiting for approval of request {id} (weir.bulk-write-needs-approval-in-production: this DELETE would change 1,500 rows")),
            "{}",
            stderr(&out)
        );
    });
    assert_eq!(sql(&g, "SELECT count(*) FROM orders"), "1500");
    // Approved: runs for real.
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            g.psql(
                &alice,
                "UPDATE orders SET status = 'x' WHERE status <> 'x';\n",
            )
        });
        let line = pending(&g);
        assert!(line.contains("would change 1,500 rows"), "{line}");
        let id = line.split_whitespace().next().unwrap().to_owned();
        assert!(g.weir(&["approve", &id, "--as", "bob"]).status.success());
        let out = client.join().unwrap();
        assert_eq!(stdout(&out).trim(), "UPDATE 1500", "{}", stderr(&out));
    });
    assert_eq!(
        sql(&g, "SELECT count(*) FROM orders WHERE status = 'x'"),
        "1500"
    );
    // Within the bound: runs, in autocommit, in the client's transaction (a savepoint) and
    // through the extended protocol.
    let out = g.psql(
        &alice,
        "UPDATE orders SET status = 'y' WHERE id <= 10;\nBEGIN;\nDELETE FROM orders WHERE id BETWEEN 11 AND 20;\nCOMMIT;\n",
    );
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["UPDATE 10", "BEGIN", "DELETE 10", "COMMIT"],
        "{}",
        stderr(&out)
    );
    let log = std::fs::read_to_string(g.cluster.log_path()).unwrap();
    assert!(
        log.contains("SAVEPOINT weir_row_bound"),
        "no savepoint in the client's transaction"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&alice, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let n = c
            .execute(
                "UPDATE orders SET status = $1 WHERE id > $2 AND id <= $3",
                &[&"z", &20i32, &25i32],
            )
            .await
            .unwrap();
        assert_eq!(n, 5);
    });
    // policy check names the bound.
    let check = g.weir(&[
        "policy",
        "check",
        "--as",
        "alice",
        "--target",
        "prod",
        "DELETE FROM orders WHERE id > 0",
    ]);
    assert_eq!(
        stdout(&check).trim(),
        "bound 1000 weir.bulk-write-needs-approval-in-production"
    );
}

#[test]
fn key_equality_writes_run_without_a_bracket() {
    // (With before-images, production writes are bracketed to capture their rows: off here.)
    let g = gateway("[audit]\nbefore_images = false\n");
    let alice = prod(&g, "alice", ALICE_TOKEN);
    let out = g.psql(
        &alice,
        "UPDATE orders SET status = 'pk-eq' WHERE id = 7;\nUPDATE pairs SET note = 'composite' WHERE a = 3 AND b = 3;\nDELETE FROM pairs WHERE b = 4 AND a = 4;\n",
    );
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["UPDATE 1", "UPDATE 1", "DELETE 1"],
        "{}",
        stderr(&out)
    );
    // PostgreSQL's log: the writes arrived on their own, no BEGIN or savepoint around them.
    let log = std::fs::read_to_string(g.cluster.log_path()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("statement: ")).collect();
    let at = lines
        .iter()
        .position(|l| l.contains("WHERE id = 7"))
        .unwrap();
    assert!(
        !lines[at - 1].contains("BEGIN") && !lines[at - 1].contains("SAVEPOINT"),
        "{:?}",
        &lines[at - 1..]
    );
    assert!(!log.contains("weir_row_bound"), "{log}");
    // Half a composite key is not a key: bracketed (and within the bound, it runs).
    let out = g.psql(&alice, "UPDATE pairs SET note = 'half' WHERE a = 5;\n");
    assert_eq!(stdout(&out).trim(), "UPDATE 1", "{}", stderr(&out));
    let log = std::fs::read_to_string(g.cluster.log_path()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("statement: ")).collect();
    let at = lines
        .iter()
        .position(|l| l.contains("note = 'half'"))
        .unwrap();
    assert!(lines[at - 1].contains("BEGIN"), "{:?}", &lines[at - 1..]);
}

#[test]
fn small_writes_run_and_agents_get_their_own_bound() {
    let g = gateway("[policy]\nagent_write_rows = 5\n");
    let alice = prod(&g, "alice", ALICE_TOKEN);
    let out = g.psql(&alice, "DELETE FROM orders WHERE id > 1490;\n");
    assert_eq!(stdout(&out).trim(), "DELETE 10", "{}", stderr(&out));
    let claude = prod(&g, "claude", "claude-test-token");
    let out = g.psql(
        &claude,
        "UPDATE orders SET status = 'agent' WHERE id <= 5;\n",
    );
    assert_eq!(stdout(&out).trim(), "UPDATE 5", "{}", stderr(&out));
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            g.psql(
                &claude,
                "UPDATE orders SET status = 'agent' WHERE id <= 6;\n",
            )
        });
        let line = pending(&g);
        assert!(
            line.contains("this UPDATE would change 6 rows, more than the 5 allowed (weir.agent-writes-bounded-in-production)"),
            "{line}"
        );
        let id = line.split_whitespace().next().unwrap().to_owned();
        assert!(g
            .weir(&["deny", &id, "--as", "bob", "--reason", "no"])
            .status
            .success());
        client.join().unwrap();
    });
    assert_eq!(
        sql(&g, "SELECT count(*) FROM orders WHERE status = 'agent'"),
        "5"
    );
    // 0 turns the bulk rule off: a big write runs.
    let g = gateway("[policy]\nbulk_write_rows = 0\n");
    let out = g.psql(
        &prod(&g, "alice", ALICE_TOKEN),
        "UPDATE orders SET status = 'all' WHERE id > 0;\n",
    );
    assert_eq!(stdout(&out).trim(), "UPDATE 1500", "{}", stderr(&out));
}
